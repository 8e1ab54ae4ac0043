"""Indexing on a real Ray cluster of two nodes on localhost (indexer/ray_embed.py): the same index as
the local threads make (catalog ids included), results through shard files, an embedding actor killed
mid-run, a driver that dies and the next run adopting its workers' shard files, the CLI's --ray, and
the errors a user sees (Ray missing, a node that cannot read a file the driver can, or write its
shard files).

One cluster for the module: two nodes of two (logical) CPUs each and a small object store, so it fits
a 2-core, 24 GB machine: two embedding actors of one CPU each, so that results can come back out of
order, and the other two CPUs for decoding tasks."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, fill_folder
from same_index import RecordingThreads, assert_same_index, index_state
from typer.testing import CliRunner

from encoder import Encoder
from indexer import IndexBuildError, build_index
from indexer.distribute import Shard, ShardResult, make_shards, use_distributor
from indexer.layout import SHARDS
from indexer.ray_embed import (
    INSTALL_HINT,
    Embedder,
    RayDistributor,
    _node_error_line,
    _refuse_unseen_files,
    decode_block,
    import_ray,
)
from indexer.shard_file import spooled_names

OBJECT_STORE = 150 * 2**20


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node and a second node on this machine, this process connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 2, "object_store_memory": OBJECT_STORE}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield c.address
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus (169 images) plus a file that is not an image."""
    root = tmp_path_factory.mktemp("ray") / "data"
    shutil.copytree(DATA, root, ignore=shutil.ignore_patterns(".lookalike"))
    (root / "notes.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def local_index(corpus: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus indexed by this machine's threads: what every Ray run must match."""
    index_dir = tmp_path_factory.mktemp("local") / "index"
    summary = build_index(corpus, index_dir, tiny_model, progress=False)
    assert summary.failed == [("notes.png", "not a recognised image format")]
    return index_dir


def good_images(folder: Path) -> int:
    return len([p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg"} and p.name != "notes.png"])


def test_ray_builds_the_index_the_threads_build(
    cluster: str, corpus: Path, local_index: Path, tiny_model: Path, tmp_path: Path
) -> None:
    ray_run = RayDistributor(cluster)
    with use_distributor(ray_run):
        on_ray = build_index(corpus, tmp_path / "ray", tiny_model, progress=False, batch_size=16)
    n = good_images(corpus)
    assert n >= 160
    assert on_ray.embedded == on_ray.added == n
    assert on_ray.failed == [("notes.png", "not a recognised image format")]
    assert ray_run.duplicates == 0 and ray_run.timings["first_result"] > 0
    # Decoding ran in tasks of its own, on the other node (the actor holds its node's only CPU).
    assert ray_run.embedders and ray_run.decoders.isdisjoint(ray_run.embedders)
    nodes = {w.rsplit(":", 1)[0] for w in ray_run.decoders | ray_run.embedders}
    assert len(nodes) == 2, ray_run.decoders | ray_run.embedders
    # The vectors came back as shard files in the index's spool, each removed once saved.
    assert ray_run.spooled >= 3 and spooled_names(tmp_path / "ray" / SHARDS) == []
    # Results come in shard order (Ray Data's preserve_order), so the catalog ids are the threads' too.
    assert assert_same_index(local_index, tmp_path / "ray", with_ids=True) == n


class DriverDies(Exception):
    pass


class KillTheDriver:
    """Ray, with the driver "dying" (an exception out of build_index) once two results are in."""

    name = "ray, driver killed"

    def __init__(self, inner: RayDistributor) -> None:
        self.inner = inner

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        for k, result in enumerate(self.inner.embed(encoder, shards, max_pixels, spool)):
            if k == 2:
                raise DriverDies
            yield result


def test_a_run_after_the_driver_died_adopts_the_workers_shard_files(
    cluster: str, corpus: Path, local_index: Path, tiny_model: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "died"
    never = 3600.0  # no store save in the first run: every row it committed is re-done by the second
    with use_distributor(KillTheDriver(RayDistributor(cluster))), pytest.raises(DriverDies):
        build_index(corpus, index_dir, tiny_model, progress=False, batch_size=8, checkpoint_every_s=never)
    assert len(spooled_names(index_dir / SHARDS)) >= 2  # at least the two results the driver had taken in
    again = RecordingThreads()
    with use_distributor(again):
        summary = build_index(corpus, index_dir, tiny_model, progress=False, batch_size=8)
    n = good_images(corpus)
    # Every good file embedded once: adopted from a shard file, or asked of the threads, never both.
    asked_good = [p for p in again.asked if not p.endswith("notes.png")]
    assert summary.adopted >= 16 and summary.embedded == n == summary.adopted + len(asked_good)
    assert spooled_names(index_dir / SHARDS) == []
    assert assert_same_index(local_index, index_dir) == n


def test_a_node_that_cannot_write_shard_files_says_so_in_one_line(
    cluster: str, tiny_model: Path, tmp_path: Path
) -> None:
    """The actor's own check (one machine cannot make a node that does not see the driver's folder)."""
    not_a_folder = tmp_path / "spool"
    not_a_folder.write_text("a file where the spool should be")
    embedder = Embedder(str(tiny_model), Encoder(tiny_model, "cpu").model_id, "cpu", 1, spool=str(not_a_folder))
    batch = decode_block(
        {"index": np.array([0]), "path": np.array([str(DATA / "birds" / "blackbird.png")], dtype=object)},
        size=embedder.encoder.image_size,
        max_pixels=10_000_000,
    )
    with pytest.raises(RuntimeError) as err:
        embedder(batch)
    line = _node_error_line(err.value)
    assert line is not None and f"cannot write shard files to {not_a_folder}" in line and "same path" in line


class KillTheEmbedder:
    """Ray, with the embedding actor's process killed (SIGKILL) as soon as its first result is in."""

    name = "ray, one worker killed"

    def __init__(self, inner: RayDistributor) -> None:
        self.inner = inner
        self.killed: int | None = None
        self.workers_after: set[str] = set()

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        for result in self.inner.embed(encoder, shards, max_pixels, spool):
            if self.killed is None:
                self.killed = int(result.worker.split(",")[0].rsplit(":", 1)[1])
                os.kill(self.killed, signal.SIGKILL)
            else:
                self.workers_after.add(result.worker)
            yield result


def test_a_killed_embedding_actor_is_restarted_and_nothing_is_lost_or_doubled(
    cluster: str, corpus: Path, local_index: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run = KillTheEmbedder(RayDistributor(cluster))
    with use_distributor(run):
        # Small shards: most of them are still to decode when the first result comes back.
        summary = build_index(corpus, tmp_path / "killed", tiny_model, progress=False, batch_size=8)
    assert run.killed is not None
    # Results after the kill came from a restarted actor (another process), not only from before it.
    assert any(f":{run.killed}" not in w for w in run.workers_after), run.workers_after
    n = good_images(corpus)
    assert summary.embedded == summary.added == n and len(summary.failed) == 1
    rows, vectors = index_state(tmp_path / "killed")
    assert sum(r[0] == "ok" for r in rows.values()) == len(vectors) == n  # each file once, each with a vector
    assert assert_same_index(local_index, tmp_path / "killed", with_ids=True) == n


def test_cli_index_with_ray_address(cluster: str, tiny_model: Path, tmp_path: Path) -> None:
    from search.cli import app

    folder = fill_folder(tmp_path / "pics")
    res = CliRunner().invoke(
        app, ["index", str(folder), "--model", str(tiny_model), "--ray-address", cluster, "--batch-size", "4", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert '"embedded": 12' in res.output


def test_an_actor_that_loads_another_model_stops_the_run_in_one_line(
    cluster: str, tiny_model: Path, tmp_path: Path
) -> None:
    folder = fill_folder(tmp_path / "pics", 1)
    encoder = Encoder(tiny_model, "cpu")
    encoder.model_id = "0123456789abcdef"  # the driver's model is not the one the nodes read at its path
    shards = make_shards(sorted(str(p) for p in folder.rglob("*.png")), 4)
    with pytest.raises(IndexBuildError) as err:
        list(RayDistributor(cluster).embed(encoder, shards, 10_000_000))
    message = str(err.value)
    assert "\n" not in message
    assert f"reads another model at {tiny_model.resolve()}" in message and "0123456789abcdef" in message


def test_a_node_that_cannot_read_a_file_the_driver_can_stops_the_run(tmp_path: Path) -> None:
    seen = tmp_path / "seen here.png"
    seen.write_bytes(b"x")
    rows = {
        "path": np.array([str(tmp_path / "gone.png"), str(seen)], dtype=object),
        "node": np.array(["host/abcd1234", "host/abcd1234"], dtype=object),
        "cannot_read": np.array([True, False]),
        "error": np.array(["cannot read file (No such file or directory)", ""], dtype=object),
    }
    _refuse_unseen_files(rows)  # gone for the driver too: that file fails, as on one machine
    rows["cannot_read"] = np.array([False, True])
    with pytest.raises(IndexBuildError) as err:
        _refuse_unseen_files(rows)
    message = str(err.value)
    assert "\n" not in message
    assert "node host/abcd1234 cannot read" in message and str(seen) in message and "same path" in message


def test_without_ray_the_cli_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from search.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(IndexBuildError, match="pip install 'lookalike\\[ray\\]'"):
        import_ray()
    folder = fill_folder(tmp_path / "pics", 1)
    res = CliRunner().invoke(app, ["index", str(folder), "--ray"])
    assert res.exit_code == 2
    assert INSTALL_HINT in res.output
    assert not (folder / ".lookalike" / "catalog.sqlite").exists()  # said before any work
