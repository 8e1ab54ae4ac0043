"""Shard files (indexer/shard_file.py): a worker's result written to the index's spool folder, and
what a run does with the ones a killed run left there (indexer/embed.py ``adopt_spooled``): adopt
each file that is as the worker found it, embed the rest, remove what cannot be used. Ray's use
of them is in test_ray.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_folder
from same_index import RecordingThreads, assert_same_index

from encoder import Encoder
from encoder.decoding import decode_many
from indexer import build_index
from indexer.catalog import content_hash
from indexer.distribute import use_distributor
from indexer.layout import SHARDS
from indexer.shard_file import (
    ShardFileError,
    SpooledFile,
    read_shard_file,
    shard_name,
    spooled_names,
    write_shard_file,
)


def spool_shard(encoder: Encoder, spool: Path, paths: list[Path], model_id: str | None = None) -> str:
    """Write a shard file for `paths` as a worker does: stat, hash, decode, embed."""
    files, pixels = [], []
    for k, d in enumerate(decode_many([str(p) for p in paths], encoder.image_size, workers=0)):
        st = os.stat(paths[k])
        ok = d.pixels is not None
        files.append(
            SpooledFile(
                index=k,
                path=str(paths[k]),
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                content_hash=content_hash(paths[k]),
                error=None if ok else d.error,
                width=d.info.width if ok else 0,
                height=d.info.height if ok else 0,
                format=d.info.format if ok else None,
                decoder="test/node:1",
            )
        )
        if ok:
            pixels.append(d.pixels)
    vectors = encoder.embed_pixels(np.stack(pixels)) if pixels else np.zeros((0, encoder.dim), np.float32)
    return write_shard_file(spool, model_id or encoder.model_id, "test/node:2", files, vectors)


def test_a_shard_file_reads_back_as_written(tmp_path: Path) -> None:
    files = [
        SpooledFile(3, "/pics/a.png", 10, 20, "h1", None, 64, 32, "PNG", decoder="h/n:1"),
        SpooledFile(4, "/pics/b.png", 11, 21, "h2", "not a recognised image format", 0, 0, None, cannot_read=False),
        SpooledFile(5, "/pics/c.jpg", -1, -1, None, "cannot read file (No such file or directory)", 0, 0, None, True),
        SpooledFile(6, "/pics/ü.png", 12, 22, "h4", None, 8, 8, "PNG"),
    ]
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    name = write_shard_file(tmp_path, "model-1", "host/node:7", files, vectors)
    assert name == shard_name([f.path for f in files]) and spooled_names(tmp_path) == [name]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left beside it
    shard = read_shard_file(tmp_path, name)
    assert (shard.model_id, shard.worker, shard.files) == ("model-1", "host/node:7", files)
    np.testing.assert_array_equal(shard.vectors, vectors)
    # The same paths give the same name (a retried shard replaces its file); others another.
    assert shard_name(["/pics/a.png"]) == shard_name(["/pics/a.png"]) != shard_name(["/pics/b.png"])
    with pytest.raises(ValueError, match="3 vectors for 2 decoded"):
        write_shard_file(tmp_path, "m", "w", files, np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_shard_file_is_refused(tmp_path: Path, damage: str) -> None:
    files = [SpooledFile(0, "/p.png", 1, 2, "h", None, 4, 4, "PNG")]
    name = write_shard_file(tmp_path, "m", "w", files, np.ones((1, 4), np.float32))
    path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) - 5], "garbage": b"x" * 40, "empty": b""}[damage])
    with pytest.raises(ShardFileError, match="not a readable shard file"):
        read_shard_file(tmp_path, name)


def test_a_run_adopts_what_a_killed_run_left_in_the_spool(
    tmp_path: Path, tiny_model: Path, torch_one_thread, caplog: pytest.LogCaptureFixture
) -> None:
    folder = fill_folder(tmp_path / "pics", 4)
    (folder / "notes.png").write_text("not an image")
    paths = sorted(p for p in folder.rglob("*.png"))
    encoder = Encoder(tiny_model, "cpu")
    spool = tmp_path / "index" / SHARDS
    spool.mkdir(parents=True)
    good = [p for p in paths if p.name != "notes.png"]
    spool_shard(encoder, spool, good[:4] + [folder / "notes.png"])  # a failure in it is tried again
    spool_shard(encoder, spool, good[4:7])
    spool_shard(encoder, spool, good[7:9], model_id="another-model")  # not this model's vectors
    (spool / "shard-damaged.safetensors").write_bytes(b"\0" * 100)
    changed = good[5]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))  # touched since

    run = RecordingThreads()
    with use_distributor(run), caplog.at_level(logging.WARNING, "indexer.embed"):
        summary = build_index(folder, tmp_path / "index", tiny_model, progress=False, batch_size=4)

    adopted = good[:5] + good[6:7]
    assert summary.adopted == len(adopted) == 6
    assert sorted(run.asked) == sorted(str(p) for p in paths if p not in adopted)
    assert summary.embedded == summary.added == len(good) and len(summary.failed) == 1
    assert "shard-damaged.safetensors: not a readable shard file" in caplog.text
    assert spooled_names(spool) == []  # the adopted ones once saved; the rest at once
    local = build_index(folder, tmp_path / "local", tiny_model, progress=False)
    assert local.adopted == 0
    assert assert_same_index(tmp_path / "local", tmp_path / "index") == len(good)


def test_a_changed_file_is_embedded_again_not_adopted(tmp_path: Path, tiny_model: Path, torch_one_thread) -> None:
    """Same size and mtime are not enough: the content hash must match the file's too."""
    folder = fill_folder(tmp_path / "pics", 1)
    paths = sorted(folder.rglob("*.png"))
    encoder = Encoder(tiny_model, "cpu")
    spool = tmp_path / "index" / SHARDS
    name = spool_shard(encoder, spool, paths)
    shard = read_shard_file(spool, name)
    files = [f if k else SpooledFile(**{**f.__dict__, "content_hash": "0" * 40}) for k, f in enumerate(shard.files)]
    write_shard_file(spool, shard.model_id, shard.worker, files, shard.vectors)
    run = RecordingThreads()
    with use_distributor(run):
        summary = build_index(folder, tmp_path / "index", tiny_model, progress=False)
    assert summary.adopted == len(paths) - 1 and run.asked == [str(paths[0])]
    assert spooled_names(spool) == []


def test_the_cli_says_how_many_vectors_it_adopted(tmp_path: Path, tiny_model: Path, torch_one_thread) -> None:
    from typer.testing import CliRunner

    from search.cli import app

    folder = fill_folder(tmp_path / "pics", 1)
    paths = sorted(folder.rglob("*.png"))
    spool_shard(Encoder(tiny_model, "cpu"), folder / ".lookalike" / SHARDS, paths[:2])
    res = CliRunner().invoke(app, ["index", str(folder), "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    assert "2 vectors taken from the shard files an interrupted run left" in res.output
    again = CliRunner().invoke(app, ["index", str(folder), "--json"])
    assert again.exit_code == 0 and '"adopted": 0' in again.output
