"""The distributor interface (indexer/distribute.py): shards, results, the local threads, and an index
built through another distributor that returns results out of order and regrouped."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_folder
from same_index import assert_same_index

from encoder import Encoder
from indexer import build_index
from indexer.distribute import (
    Shard,
    ShardResult,
    ThreadDistributor,
    current_distributor,
    make_shards,
    use_distributor,
)


def test_make_shards_cuts_consecutive_slices() -> None:
    shards = make_shards([f"p{i}" for i in range(7)], 3)
    assert [(s.start, s.paths) for s in shards] == [(0, ["p0", "p1", "p2"]), (3, ["p3", "p4", "p5"]), (6, ["p6"])]
    assert make_shards([], 3) == []
    with pytest.raises(ValueError, match="shard size"):
        make_shards(["p0"], 0)


def test_a_result_must_have_one_vector_per_decoded_file() -> None:
    ShardResult([0, 1], ["bad", None], [None, None], np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="2 vectors for 1 decoded"):
        ShardResult([0, 1], ["bad", None], [None, None], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="inconsistent"):
        ShardResult([0], [None, None], [None, None], np.zeros((2, 4), np.float32))


def _paths_with_a_bad_file(tmp_path: Path, per_class: int, bad_at: int) -> list[str]:
    """Sample images, `per_class` of each class, and a file that is not an image at `bad_at`."""
    folder = fill_folder(tmp_path / "pics", per_class)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    (tmp_path / "bad.png").write_text("not an image")
    paths.insert(bad_at, str(tmp_path / "bad.png"))
    return paths


def test_threads_cover_every_file_once_with_its_error(tmp_path: Path, tiny_model: Path, torch_one_thread) -> None:
    paths = _paths_with_a_bad_file(tmp_path, 2, 3)
    encoder = Encoder(tiny_model, "cpu")
    results = list(ThreadDistributor(workers=2).embed(encoder, make_shards(paths, 3), 10_000_000))
    assert [len(r.indexes) for r in results] == [3, 3, 1]
    assert [i for r in results for i in r.indexes] == list(range(len(paths)))
    errors = [e for r in results for e in r.errors]
    assert errors[3] is not None and "not a recognised image" in errors[3]
    assert sum(e is None for e in errors) == len(paths) - 1
    vectors = np.concatenate([r.vectors for r in results])
    good = [p for p in paths if not p.endswith("bad.png")]
    np.testing.assert_allclose(vectors, encoder.embed(good), atol=1e-5)
    info = results[0].infos[0]
    assert info is not None and info.format == "PNG" and info.width > 0


class Shuffled:
    """Another distributor: the local threads' results, regrouped in pairs of shards and returned
    last pair first, with the content hashes computed by the "worker" as a remote one may."""

    name = "shuffled"

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        from indexer.catalog import content_hash

        results = list(ThreadDistributor(workers=1).embed(encoder, shards, max_pixels))
        paths = [p for s in shards for p in s.paths]
        for k in reversed(range(0, len(results), 2)):
            pair = results[k : k + 2]
            indexes = [i for r in pair for i in r.indexes]
            yield ShardResult(
                indexes=indexes,
                errors=[e for r in pair for e in r.errors],
                infos=[x for r in pair for x in r.infos],
                vectors=np.concatenate([r.vectors for r in pair]),
                hashes=[content_hash(paths[i]) for i in indexes],
                worker="shuffled",
            )


def test_another_distributor_builds_the_same_index(tmp_path: Path, tiny_model: Path, torch_one_thread) -> None:
    folder = fill_folder(tmp_path / "pics", 4)
    (folder / "notes.png").write_text("not an image")
    local = build_index(folder, tmp_path / "local", tiny_model, progress=False, batch_size=3)
    assert current_distributor().name == "threads"
    with use_distributor(Shuffled()):
        assert current_distributor().name == "shuffled"
        other = build_index(folder, tmp_path / "other", tiny_model, progress=False, batch_size=3)
    assert current_distributor().name == "threads"  # only inside the block
    assert other.embedded == local.embedded == 12 and other.added == local.added == 12
    assert other.failed == local.failed == [("notes.png", "not a recognised image format")]
    assert assert_same_index(tmp_path / "local", tmp_path / "other") == 12


def test_two_embedders_give_one_embedders_results_in_order(tmp_path: Path, tiny_model: Path, torch_one_thread) -> None:
    paths = _paths_with_a_bad_file(tmp_path, 3, 4)
    encoder = Encoder(tiny_model, "cpu")
    shards = make_shards(paths, 2)
    one = list(ThreadDistributor(workers=2, embedders=1).embed(encoder, shards, 10_000_000))
    two = list(ThreadDistributor(workers=2, embedders=2).embed(encoder, shards, 10_000_000))
    assert (
        [r.indexes for r in two]
        == [r.indexes for r in one]
        == [list(range(s.start, s.start + len(s.paths))) for s in shards]
    )
    assert [r.errors for r in two] == [r.errors for r in one]
    np.testing.assert_array_equal(np.concatenate([r.vectors for r in two]), np.concatenate([r.vectors for r in one]))


def test_two_shards_embed_at_once_only_where_torch_has_one_cpu_thread(tiny_model: Path, torch_one_thread) -> None:
    import os

    import torch

    from encoder.decoding import default_backend
    from indexer.distribute import default_embedders

    encoder = Encoder(tiny_model, "cpu")
    many_threads = default_backend() == "thread" and (os.cpu_count() or 1) >= 2
    assert default_embedders(encoder, gpu_decode=False) == (2 if many_threads else 1)
    assert default_embedders(encoder, gpu_decode=True) == 1
    torch.set_num_threads(2)  # the fixture puts the count back
    assert default_embedders(encoder, gpu_decode=False) == 1
