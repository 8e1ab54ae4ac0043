"""The published hit rows (indexer/hit_rows.py): the file, its checks, and how `lookalike index` keeps it current."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_folder

from indexer import build_index
from indexer.hit_rows import ROW_DTYPE, HitRows, read_hit_rows, write_hit_rows
from indexer.layout import HIT_ROWS

ROWS = [(7, "b/δ.jpg", 640, 480), (2, "a/1.png", None, None), (40, "c/odd name.gif", 1, 2), (3, "", 5, 6)]


def test_rows_by_id(tmp_path: Path) -> None:
    rows = HitRows.build(ROWS)
    expected = {i: (p, w, h) for i, p, w, h in ROWS}
    assert rows.get([40, 2, 7, 3]) == {i: expected[i] for i in (40, 2, 7, 3)}
    assert rows.get([1, 5, 41, -3, 2**62]) == {}  # ids that are not there, below, between and above
    assert rows.get([]) == {}
    write_hit_rows(rows, tmp_path / HIT_ROWS)
    back = read_hit_rows(tmp_path / HIT_ROWS)
    assert back is not None and len(back) == 4
    assert back.get([3, 7, 2, 40, 8]) == {i: expected[i] for i in (3, 7, 2, 40)}
    assert isinstance(back.rows.base, np.memmap) or isinstance(back.paths.base, np.memmap)  # mapped, not read


def test_no_rows(tmp_path: Path) -> None:
    write_hit_rows(HitRows.build([]), tmp_path / HIT_ROWS)
    back = read_hit_rows(tmp_path / HIT_ROWS)
    assert back is not None and len(back) == 0 and back.get([1]) == {}


def test_surrogate_escaped_names_round_trip(tmp_path: Path) -> None:
    name = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # a Latin-1 file name, as os.listdir returns it
    write_hit_rows(HitRows.build([(1, name, 1, 1)]), tmp_path / HIT_ROWS)
    assert read_hit_rows(tmp_path / HIT_ROWS).get([1]) == {1: (name, 1, 1)}


def _damaged(path: Path) -> dict[str, bytes]:
    good = path.read_bytes()
    out = {
        "empty": b"",
        "truncated": good[:-3],
        "trailing bytes": good + b"\0",
        "not npy": b"GIF89a" + good[6:],
    }
    # Rows out of order, and path offsets past the end of the paths: each a well-formed .npy pair.
    for name, edit in (("ids not increasing", ("id", [5, 3])), ("offsets past the paths", ("end", [2, 99]))):
        rows = np.zeros(2, ROW_DTYPE)
        rows["id"], rows["end"] = [1, 2], [1, 2]
        rows[edit[0]] = edit[1]
        out[name] = _npy(rows) + _npy(np.frombuffer(b"ab", np.uint8))
    out["wrong dtype"] = _npy(np.zeros(2, [("id", "<i8"), ("end", "<i4")])) + _npy(np.zeros(0, np.uint8))
    out["object array"] = _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True) + _npy(np.zeros(0, np.uint8))
    return out


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_a_damaged_file_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / HIT_ROWS
    write_hit_rows(HitRows.build(ROWS), path)
    for name, data in _damaged(path).items():
        bad = tmp_path / f"bad-{name}.bin"
        bad.write_bytes(data)
        assert read_hit_rows(bad) is None, name
    assert read_hit_rows(tmp_path / "missing.bin") is None


def _catalog_rows(index: Path) -> dict[int, tuple[str, int, int]]:
    with sqlite3.connect(index / "catalog.sqlite") as db:
        rows = db.execute("SELECT id, path, width, height FROM images WHERE status = 'ok'")
        return {i: (p, w, h) for i, p, w, h in rows}


def _published(index: Path) -> dict[int, tuple[str, int, int]]:
    rows = read_hit_rows(index / HIT_ROWS)
    assert rows is not None
    return rows.get(rows.ids.tolist())


def test_index_runs_keep_the_rows_current(tmp_path: Path, tiny_model: Path) -> None:
    folder = fill_folder(tmp_path / "images")
    index = folder / ".lookalike"
    build_index(folder, model_dir=tiny_model, progress=False, workers=1)
    assert _published(index) == _catalog_rows(index) and len(_catalog_rows(index)) == 12

    # A move, a deletion and a corrupt file: the rows follow the catalog's indexed images.
    first, second = sorted(p for p in folder.rglob("*.png") if ".lookalike" not in p.parts)[:2]
    shutil.move(first, folder / "moved.png")
    second.unlink()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    summary = build_index(folder, model_dir=tiny_model, progress=False, workers=1)
    assert summary.moved == 1 and summary.removed == 1 and len(summary.failed) == 1
    published = _published(index)
    assert published == _catalog_rows(index) and len(published) == 11
    assert "moved.png" in {p for p, _, _ in published.values()}


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_missing_rows_are_written_again_without_rebuilding_anything(
    tmp_path: Path, tiny_model: Path, damage: str
) -> None:
    folder = fill_folder(tmp_path / "images")
    index = folder / ".lookalike"
    build_index(folder, model_dir=tiny_model, progress=False, workers=1)
    store_before = (index / "vectors.faiss").stat().st_mtime_ns
    generation = _generation(index)
    if damage == "delete":
        (index / HIT_ROWS).unlink()
    else:
        (index / HIT_ROWS).write_bytes(b"\x93NUMPY garbage")
    summary = build_index(folder, model_dir=tiny_model, progress=False, workers=1)
    assert summary.embedded == 0
    assert _published(index) == _catalog_rows(index)
    assert (index / "vectors.faiss").stat().st_mtime_ns == store_before  # the store was not written again
    assert _generation(index) == generation + 1  # but servers are told to reopen


def _generation(index: Path) -> int:
    import json

    return json.loads((index / "manifest.json").read_text())["generation"]
