"""The baseline the near-duplicate report is compared with: imagehash's pHash alone.

pHash (64 bits, of the image composited on white) of every image, cached per corpus; all pairs at
Hamming distance <= each of :data:`PHASH_DISTANCES`, grouped by connected components (``cc``) and
by keeper-centred stars (``star``: the best remaining image by resolution, then file size, takes
every remaining image within the distance). Used by bench/near_duplicates_cross.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from dedupe_corpora import on_white

PHASH_DISTANCES = (4, 8, 10)


def _phash_one(path: Path) -> tuple[int, int, int]:
    import imagehash
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        img = on_white(im)
    bits = imagehash.phash(img).hash.flatten()
    code = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return code, img.width * img.height, path.stat().st_size


def phashes(base: Path, folder: Path, paths: list[str]) -> dict[str, tuple[int, int, int]]:
    """{path: (64-bit pHash, pixels, file size)}, cached in base/phash.json."""
    cache = base / "phash.json"
    have: dict[str, list[int]] = json.loads(cache.read_text()) if cache.exists() else {}
    missing = [p for p in paths if p not in have]
    for p in missing:
        have[p] = list(_phash_one(folder / p))
    if missing:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(have))
        tmp.replace(cache)
    return {p: tuple(have[p]) for p in paths}  # type: ignore[misc]


_POP8 = np.array([bin(x).count("1") for x in range(256)], dtype=np.uint8)


def hamming_matrix(codes: np.ndarray) -> np.ndarray:
    """(n, n) uint8 Hamming distances of (n,) uint64 codes (fine for a few thousand)."""
    b = codes.astype(">u8").view(np.uint8).reshape(len(codes), 8)
    out = np.empty((len(codes), len(codes)), dtype=np.uint8)
    for s in range(0, len(codes), 256):
        out[s : s + 256] = _POP8[b[s : s + 256, None, :] ^ b[None, :, :]].sum(axis=2, dtype=np.uint8)
    return out


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components with more than one member (the product's vectorised union-find)."""
    from search.reports import connected_components

    labels = connected_components(n, i, j)
    groups: dict[int, list[int]] = {}
    for x, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(x)
    return [g for g in groups.values() if len(g) > 1]


def stars(dist: np.ndarray, limit: int, order: list[int]) -> list[list[int]]:
    """Keeper-centred groups: in `order` (best keeper first), each image not yet grouped
    takes every image not yet grouped within `limit` of it."""
    free = np.ones(len(dist), dtype=bool)
    out = []
    for k in order:
        if not free[k]:
            continue
        near = np.flatnonzero(free & (dist[k] <= limit))
        free[near] = False
        if len(near) > 1:
            out.append([k, *(int(x) for x in near if x != k)])
    return out


def phash_groups(info: dict[str, tuple[int, int, int]]) -> dict[str, list[list[str]]]:
    paths = sorted(info)
    codes = np.array([info[p][0] for p in paths], dtype=np.uint64)
    dist = hamming_matrix(codes)
    order = sorted(range(len(paths)), key=lambda x: (-info[paths[x]][1], -info[paths[x]][2], paths[x]))
    out = {}
    for d in PHASH_DISTANCES:
        i, j = np.nonzero(np.triu(dist <= d, 1))
        out[f"pHash cc <={d}"] = [[paths[x] for x in g] for g in components(len(paths), i, j)]
        out[f"pHash star <={d}"] = [[paths[x] for x in g] for g in stars(dist, d, order)]
    return out
