"""A picture of a query's results: the query, then its neighbours with similarity and name.

People judge "are these alike?" faster from a picture than from a table of paths,
so `lookalike query --grid out.png` writes one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from encoder.images import ImageSource, letterbox, open_image

from ..engine import Engine, Hit
from ..pair_scale import top_share

TILE = 160
#: Tiles a row: the grid wraps, so k=30 is a picture, not a 5,000-pixel strip.
COLUMNS = 6
CAPTION = 28  # pixels under each tile for two lines of text
PAD = 4
BACKGROUND = (40, 40, 40)
TEXT = (235, 235, 235)


def _tile_from_image(img: Image.Image, size: int) -> Image.Image:
    return letterbox(img, size).convert("RGB")


def _query_tile(engine: Engine, query: ImageSource | int, size: int) -> Image.Image:
    if isinstance(query, int):  # an indexed image: its cached thumbnail
        with Image.open(io.BytesIO(engine.thumbnail(query, size))) as im:
            return _tile_from_image(im.convert("RGB"), size)
    img, _ = open_image(query, max_pixels=engine.max_pixels, draft_size=size)
    return _tile_from_image(img, size)


def _short(text: str, width_px: int) -> str:
    limit = max(4, width_px // 6)  # Pillow's default bitmap font is ~6 px per character
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def result_grid(engine: Engine, query: ImageSource | int, hits: Sequence[Hit], *, size: int = TILE) -> Image.Image:
    """The query (an image source, or the id of an indexed image), then each hit, `COLUMNS` a row,
    captioned with rank, similarity (and its place among the index's pairs) and file
    name. Hits whose file has gone are drawn blank."""
    tiles = [(_query_tile(engine, query, size), "query", f"id {query}" if isinstance(query, int) else "")]
    for rank, h in enumerate(hits, 1):
        try:
            with Image.open(io.BytesIO(engine.thumbnail(h.id, size))) as im:
                tile = _tile_from_image(im.convert("RGB"), size)
        except Exception:  # noqa: BLE001 - a missing or undecodable file must not lose the whole picture
            tile = Image.new("RGB", (size, size), (90, 90, 90))
        tiles.append((tile, f"#{rank}  {h.similarity:.3f}  {top_share(h.percentile)}", os.path.basename(h.path)))
    columns = min(COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    cell_h = size + CAPTION + PAD
    grid = Image.new("RGB", (PAD + columns * (size + PAD), PAD + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, (tile, line1, line2) in enumerate(tiles):
        x, y = PAD + (i % columns) * (size + PAD), PAD + (i // columns) * cell_h
        grid.paste(tile, (x, y))
        draw.text((x + 2, y + size + 2), _short(line1, size), fill=TEXT)
        draw.text((x + 2, y + size + 14), _short(line2, size), fill=TEXT)
    return grid


def save_result_grid(
    engine: Engine, query: ImageSource | int, hits: Sequence[Hit], path: str | os.PathLike, *, size: int = TILE
) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_grid(engine, query, hits, size=size).save(out)
    return out
