"""The engine over indexes that change: hot reload of a new generation, the precomputed by-id
neighbour table (used, missing, damaged and rebuilt), the published hit rows, and the pair scale
behind each hit's percentile. Each test builds its own index with the session's tiny model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_folder, sample_images, write_jpeg

from indexer import build_index
from search.engine import Engine, NotFound


def test_hot_reload_sees_a_new_generation(tmp_path: Path, make_index: Callable[[Path], Path]) -> None:
    folder = tmp_path / "pics"
    fill_folder(folder, 2, ("birds", "letters"))
    index = make_index(folder)
    eng = Engine(index, device="cpu", reload_check_s=0)
    try:
        before = eng.stats()
        assert before["count"] == 4
        new = [write_jpeg(folder / "new" / f"n{i}.jpg", (64, 64), seed=200 + i) for i in range(3)]
        shutil.copy(sample_images(1, ("fish",))[0], folder / "new" / "fish.png")
        make_index(folder)
        after = eng.stats()
        assert after["count"] == after["vectors"] == 8
        assert after["generation"] == before["generation"] + 1
        # the new images are searchable through the same Engine object, by path and by id
        hits = eng.search_image(new[0], k=10)
        assert {h.path for h in hits} >= {"new/n1.jpg", "new/n2.jpg", "new/fish.png"}
        rec = eng.get_by_path("new/fish.png")
        assert len(eng.search_id(rec.id, k=10)) == 7
        # and deletions too
        for p in new:
            p.unlink()
        make_index(folder)
        assert eng.stats()["count"] == 5
        assert {h.path for h in eng.search_id(rec.id, k=10)}.isdisjoint({"new/n0.jpg", "new/n1.jpg", "new/n2.jpg"})
    finally:
        eng.close()


def test_by_id_queries_are_answered_from_the_precomputed_table(tmp_path: Path, search_model: Path) -> None:
    from dataclasses import replace

    from indexer import build_index

    folder = tmp_path / "images"
    fill_folder(folder)
    for i in range(20):
        write_jpeg(folder / "generated" / f"{i}.jpg", (64, 48), seed=300 + i)
    build_index(folder, model_dir=search_model, progress=False, workers=1, neighbours=6)
    eng = Engine(folder / ".lookalike", device="cpu", reload_check_s=0)
    try:
        snap = eng.snapshot()
        assert snap.neighbours is not None and len(snap.neighbours) == snap.manifest.count == 32
        all_ids = snap.neighbours["id"].tolist()
        # Same answers as a live search from the stored vector.
        for image_id in all_ids:
            for k, offset, cut in ((6, 0, None), (2, 3, None), (6, 0, 0.0)):
                table = eng.search_id(image_id, k=k, offset=offset, min_similarity=cut)
                live = eng.search_vector(
                    eng.vector(image_id), k=k, offset=offset, min_similarity=cut, exclude_id=image_id
                )
                assert image_id not in [h.id for h in table]
                np.testing.assert_allclose([h.similarity for h in table], [h.similarity for h in live], atol=1e-5)
                assert {h.id for h in table} == {h.id for h in live} or len({round(h.similarity, 4) for h in live}) < k

        # And it is the table that answers: with a search index that refuses, pages within
        # the table still work, deeper pages and filtered queries need (and try) a search.
        class Refuses:
            ntotal = snap.search.ntotal

            def search(self, *a, **kw):
                raise RuntimeError("searched")

        eng._snapshot = replace(snap, search=Refuses(), vectors=_RefusingVectors(snap.vectors))
        image_id = all_ids[0]
        assert len(eng.search_id(image_id, k=6)) == 6
        assert len(eng.search_id(image_id, k=3, offset=3)) == 3
        for kw in ({"k": 7}, {"k": 2, "offset": 5}, {"k": 3, "path_prefix": "generated/"}):
            with pytest.raises(RuntimeError, match="searched"):
                eng.search_id(image_id, **kw)
    finally:
        eng.close()


class _RefusingVectors:
    """The exact vectors' lookups, but no searching."""

    def __init__(self, vectors) -> None:
        self._vectors = vectors

    def get(self, ids):
        return self._vectors.get(ids)

    def search_among(self, *a, **kw):
        raise RuntimeError("searched")


def test_an_index_without_a_table_answers_by_search(tmp_path: Path, search_model: Path) -> None:
    from indexer import build_index

    folder = fill_folder(tmp_path / "images")
    build_index(folder, model_dir=search_model, progress=False, workers=1, neighbours=0)
    assert not (folder / ".lookalike" / "neighbours.npy").exists()
    eng = Engine(folder / ".lookalike", device="cpu", reload_check_s=0)
    try:
        assert eng.snapshot().neighbours is None
        image_id = int(eng.snapshot().vectors.ids()[0])
        assert len(eng.search_id(image_id, k=5)) == 5
    finally:
        eng.close()
    # Turning the table on again is a change the next run publishes without re-embedding.
    summary = build_index(folder, model_dir=search_model, progress=False, workers=1)
    assert summary.embedded == 0 and "computed" in summary.neighbours
    assert (folder / ".lookalike" / "neighbours.npy").exists()


def published_file(index: Path, name: str) -> Path:
    """The file `name` of the generation readers open (indexer/generations.py)."""
    from indexer import Manifest

    return Manifest.read(index).files(index) / name


def test_a_deleted_or_damaged_table_is_answered_by_search_and_rebuilt(tmp_path: Path, search_model: Path) -> None:
    from indexer import build_index

    folder = fill_folder(tmp_path / "images")
    build_index(folder, model_dir=search_model, progress=False, workers=1)
    for damage in (Path.unlink, lambda table: table.write_bytes(b"\x93NUMPY not a table")):
        damage(published_file(folder / ".lookalike", "neighbours.npy"))
        eng = Engine(folder / ".lookalike", device="cpu", reload_check_s=0)
        try:
            assert eng.snapshot().neighbours is None
            image_id = int(eng.snapshot().vectors.ids()[0])
            assert len(eng.search_id(image_id, k=5)) == 5  # a live search instead
        finally:
            eng.close()
        summary = build_index(folder, model_dir=search_model, progress=False, workers=1)
        assert summary.embedded == 0 and "computed" in summary.neighbours  # nothing re-embedded, the table back
        again = Engine(folder / ".lookalike", device="cpu")
        assert again.snapshot().neighbours is not None
        again.close()


def test_a_server_engine_opens_a_new_generation_without_making_requests_wait(
    tmp_path: Path, make_index: Callable[[Path], Path]
) -> None:
    import threading
    import time

    folder = tmp_path / "pics"
    fill_folder(folder, 2, ("birds", "letters"))
    index = make_index(folder)

    class SlowToOpen(Engine):
        """Opening a generation takes a second, as a 1M-vector index does."""

        opening = threading.Event()

        def _open(self):
            if hasattr(self, "_snapshot"):
                self.opening.set()
                time.sleep(1.0)
            return super()._open()

    eng = SlowToOpen(index, device="cpu", reload_check_s=0, reload_in_background=True)
    try:
        before = eng.stats()["generation"]
        write_jpeg(folder / "new" / "n0.jpg", (64, 64), seed=400)
        make_index(folder)
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 15:
            t0 = time.monotonic()
            snap = eng.snapshot()
            answers.append(time.monotonic() - t0)
            hits = eng.search_id(int(snap.vectors.ids()[0]), k=3)  # every query is answered meanwhile
            assert len(hits) == 3
            if snap.manifest.generation > before:
                break
            time.sleep(0.02)
        assert SlowToOpen.opening.is_set(), "the new generation was never opened"
        assert eng.snapshot().manifest.generation == before + 1
        assert len(answers) > 10 and max(answers) < 0.5  # nobody waited for the one-second open
    finally:
        eng.close()


def test_hits_from_the_published_rows_and_from_the_catalog_agree(tmp_path: Path, search_model: Path) -> None:
    """Hits read their path and size from hit_rows.bin; without it (an older index, a damaged file),
    from the catalog, with the same answers."""
    from indexer import build_index
    from indexer.layout import HIT_ROWS

    folder = fill_folder(tmp_path / "images")
    build_index(folder, model_dir=search_model, progress=False, workers=1)
    index = folder / ".lookalike"
    answers = {}
    for published in (True, False):
        if not published:
            published_file(index, HIT_ROWS).unlink()
        eng = Engine(index, device="cpu", reload_check_s=0)
        try:
            assert (eng.snapshot().hit_rows is not None) == published
            assert eng.stats()["hit_rows_published"] == published
            ids = eng.snapshot().neighbours["id"].tolist()
            answers[published] = [
                eng.search_id(i, **kw)
                for i in ids
                for kw in ({"k": 5}, {"k": 3, "offset": 20}, {"k": 4, "path_prefix": "birds/"})
            ] + [eng.search_image(folder / "birds" / sorted(p.name for p in (folder / "birds").iterdir())[0], k=6)]
            with pytest.raises(NotFound):
                eng.search_id(987_654, k=3)
        finally:
            eng.close()
    assert answers[True] == answers[False]
    assert all(h.width and h.height and h.path for hits in answers[True] for h in hits)


def test_hits_show_the_rows_published_with_the_served_generation(tmp_path: Path, search_model: Path) -> None:
    """While an index run has changed the catalog but not yet published, hits keep the rows of the
    vectors being served; the next publish brings both up to date together."""
    import sqlite3

    from indexer import build_index

    folder = fill_folder(tmp_path / "images")
    build_index(folder, model_dir=search_model, progress=False, workers=1)
    index = folder / ".lookalike"
    eng = Engine(index, device="cpu", reload_check_s=0)
    try:
        query = eng.snapshot().neighbours["id"].tolist()[0]
        first = eng.search_id(query, k=3)
        with sqlite3.connect(index / "catalog.sqlite") as db:  # what a run does before it publishes
            db.execute("UPDATE images SET path = 'renamed/' || path WHERE id = ?", (first[0].id,))
        assert eng.search_id(query, k=3) == first
        assert eng.get(first[0].id).path.startswith("renamed/")  # the catalog itself is read live
    finally:
        eng.close()


def test_hits_carry_their_place_among_the_indexs_random_pairs(tmp_path: Path, search_model: Path) -> None:
    """Each hit's percentile is its similarity read on the generation's pair scale, and a new
    generation gets its own; an index of one image has no pairs: None (null in JSON)."""
    folder = fill_folder(tmp_path / "images")
    build_index(folder, model_dir=search_model, progress=False, workers=1)
    with Engine(folder / ".lookalike", device="cpu", reload_check_s=0) as eng:
        image_id = int(eng.snapshot().vectors.ids()[0])
        hits = eng.search_id(image_id, k=5)
        want = eng.snapshot().pair_scale.percentile([h.similarity for h in hits])
        np.testing.assert_allclose([h.percentile for h in hits], want)
        assert all(0 <= h.percentile <= 100 for h in hits) and hits[0].as_dict()["percentile"] is not None
        before = eng.snapshot().pair_scale.pairs
        for i in range(3):
            write_jpeg(folder / "generated" / f"{i}.jpg", (64, 48), seed=500 + i)
        build_index(folder, model_dir=search_model, progress=False, workers=1)
        assert before == 66 and eng.snapshot().pair_scale.pairs == 15 * 14 // 2

    one = tmp_path / "one"
    write_jpeg(one / "a.jpg", (64, 48), seed=1)
    build_index(one, model_dir=search_model, progress=False, workers=1)
    with Engine(one / ".lookalike", device="cpu") as eng:
        assert eng.snapshot().pair_scale is None
        (hit,) = eng.search_vector(eng.vector(int(eng.snapshot().vectors.ids()[0])), k=3)
        assert hit.percentile is None and hit.as_dict()["percentile"] is None
