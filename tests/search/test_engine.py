"""The engine on a real small index: queries by bytes, path and id, paging, filters, hot reload.

The queries on the shared corpus run against a SQLite and a PostgreSQL catalog (see `corpus` below)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import fill_folder, sample_images, write_jpeg
from postgres import CATALOGS, url_for

from indexer import build_index
from search.engine import Engine, EngineError, Hit, NotFound

from .conftest import WILDCARD_PATHS, Corpus

BIRD = "birds/" + sorted(p.name for p in sample_images(4, ("birds",)))[0]


# The tests on the shared corpus run twice: on its SQLite catalog, then on a copy of the corpus
# indexed into a PostgreSQL catalog (tests/postgres.py). These override the session fixtures of
# the same names for this module only.
@pytest.fixture(scope="module", params=CATALOGS)
def corpus(
    request: pytest.FixtureRequest, corpus: Corpus, search_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Corpus:
    url = url_for(request, request.param, "engine")
    if url is None:
        return corpus
    folder = tmp_path_factory.mktemp("corpus-pg") / "images"
    shutil.copytree(corpus.folder, folder, symlinks=True, ignore=shutil.ignore_patterns(".lookalike"))
    build_index(folder, model_dir=search_model, progress=False, workers=1, catalog_url=url)
    return Corpus(folder, folder / ".lookalike", corpus.outside)


@pytest.fixture(scope="module")
def engine(corpus: Corpus) -> Iterator[Engine]:
    eng = Engine(corpus.index, device="cpu", reload_check_s=0)  # the index knows where its catalog is
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def ids(engine: Engine) -> dict[str, int]:
    with engine.catalog.engine.connect() as c:
        return dict(c.exec_driver_sql("SELECT path, id FROM images WHERE status = 'ok'").all())


def assert_well_formed(hits: list[Hit]) -> None:
    sims = [h.similarity for h in hits]
    assert all(-1.0 <= s <= 1.0 for s in sims)
    assert sims == sorted(sims, reverse=True)
    assert len({h.id for h in hits}) == len(hits)


def test_search_by_image_bytes(engine: Engine, corpus: Corpus, ids: dict[str, int]) -> None:
    import io

    from PIL import Image

    # the same pixels in different bytes (another encoder): not the image itself, so its best match
    buf = io.BytesIO()
    Image.open(corpus.folder / BIRD).save(buf, "PNG", compress_level=1)
    hits = engine.search_image(buf.getvalue(), k=5)
    assert len(hits) == 5
    assert_well_formed(hits)
    assert hits[0].id == ids[BIRD] and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[0].path == BIRD and hits[0].width and hits[0].height
    # the very bytes of the indexed file: that image itself, so it is excluded
    assert ids[BIRD] not in [h.id for h in engine.search_image((corpus.folder / BIRD).read_bytes(), k=5)]


def test_search_by_path_excludes_the_query(engine: Engine, corpus: Corpus, ids: dict[str, int]) -> None:
    n = len(ids)
    by_file = engine.search_image(str(corpus.folder / BIRD), k=n)  # a file: decoded, then itself excluded
    by_path = engine.search_path(BIRD, k=n)  # a catalog path, relative to the indexed root: its stored vector
    for hits in (by_file, by_path):
        assert ids[BIRD] not in {h.id for h in hits}
        assert len(hits) == n - 1
        assert_well_formed(hits)
    assert [h.id for h in by_file] == [h.id for h in by_path]


def test_search_by_unindexed_path_keeps_everything(engine: Engine, tmp_path: Path, ids: dict[str, int]) -> None:
    query = write_jpeg(tmp_path / "new.jpg", (64, 64), seed=42)
    hits = engine.search_image(query, k=100)
    assert len(hits) == len(ids)


def test_search_by_id_excludes_itself_without_decoding(
    engine: Engine, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = engine.search_path(BIRD, k=8)

    def no_decoding(*_a, **_kw):
        raise AssertionError("search_id decoded an image")

    monkeypatch.setattr(engine, "embed", no_decoding)
    monkeypatch.setattr(engine.snapshot().encoder, "load", no_decoding)
    hits = engine.search_id(ids[BIRD], k=8)
    assert ids[BIRD] not in {h.id for h in hits}
    assert [h.id for h in hits] == [h.id for h in expected]
    assert_well_formed(hits)


def test_paging_is_consistent(engine: Engine, ids: dict[str, int]) -> None:
    k = 4
    first = engine.search_id(ids[BIRD], k=2 * k)
    page1 = engine.search_id(ids[BIRD], k=k, offset=0)
    page2 = engine.search_id(ids[BIRD], k=k, offset=k)
    assert [h.id for h in page1 + page2] == [h.id for h in first]
    assert len(first) == 2 * k
    beyond = engine.search_id(ids[BIRD], k=k, offset=len(ids))
    assert beyond == []
    # the last page is short, never padded
    last = engine.search_id(ids[BIRD], k=k, offset=len(ids) - 3)
    assert len(last) == 2


def test_min_similarity(engine: Engine, ids: dict[str, int]) -> None:
    everything = engine.search_id(ids[BIRD], k=100)
    cut = everything[len(everything) // 2].similarity
    kept = engine.search_id(ids[BIRD], k=100, min_similarity=cut)
    assert kept and all(h.similarity >= cut for h in kept)
    assert [h.id for h in kept] == [h.id for h in everything if h.similarity >= cut]
    assert engine.search_id(ids[BIRD], k=100, min_similarity=1.0) == [] or all(
        h.similarity >= 1.0 - 1e-6 for h in engine.search_id(ids[BIRD], k=100, min_similarity=1.0)
    )


def test_path_prefix(engine: Engine, ids: dict[str, int]) -> None:
    hits = engine.search_id(ids[BIRD], k=100, path_prefix="letters/")
    assert hits and all(h.path.startswith("letters/") for h in hits)
    assert len(hits) == sum(p.startswith("letters/") for p in ids)
    assert_well_formed(hits)
    assert engine.search_id(ids[BIRD], k=100, path_prefix="nothing-here/") == []
    assert engine.search_id(ids[BIRD], k=100, path_prefix="LETTERS/") == []  # paths are case-sensitive
    # the filter applies before paging: offset/k page through the filtered results
    two = engine.search_id(ids[BIRD], k=2, offset=1, path_prefix="letters/")
    assert [h.id for h in two] == [h.id for h in hits[1:3]]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("odd%dir/", {"odd%dir/w1.jpg"}),
        ("odd_dir/", {"odd_dir/w2.jpg"}),
        ("odd%", {"odd%dir/w1.jpg"}),
        ("odd_", {"odd_dir/w2.jpg"}),
        ("odd", set(WILDCARD_PATHS)),
        ("%", set()),
        ("_", set()),
        ("\\", set()),
    ],
)
def test_path_prefix_wildcards_are_literal(
    engine: Engine, ids: dict[str, int], prefix: str, expected: set[str]
) -> None:
    hits = engine.search_id(ids[BIRD], k=100, path_prefix=prefix)
    assert {h.path for h in hits} == expected


def test_not_found(engine: Engine, ids: dict[str, int], tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        engine.search_id(999_999)
    with pytest.raises(NotFound):
        engine.get(-1)
    with pytest.raises(NotFound):
        engine.search_path("birds/no-such-bird.png")
    with pytest.raises(NotFound):
        engine.search_path(str(tmp_path / "elsewhere.png"))
    with pytest.raises(NotFound):
        engine.thumbnail(999_999)
    with pytest.raises(EngineError):
        engine.search_vector(np.zeros((1, 3), np.float32))  # wrong dimension
    with pytest.raises(EngineError):
        engine.search_id(ids[BIRD], k=0)


def test_file_path_refuses_a_symlink_out_of_the_folder(engine: Engine, corpus: Corpus, ids: dict[str, int]) -> None:
    assert "link.jpg" in ids  # indexed: the walk follows file symlinks
    with pytest.raises(NotFound, match="outside"):
        engine.file_path(ids["link.jpg"])
    with pytest.raises(NotFound):
        engine.thumbnail(ids["link.jpg"])
    assert engine.file_path(ids[BIRD]) == (corpus.folder / BIRD).resolve()


def test_stats(engine: Engine, ids: dict[str, int]) -> None:
    s = engine.stats()
    assert s["count"] == s["vectors"] == len(ids)
    assert s["model"]["dim"] == 8 + 16 and s["model"]["image_size"] == 32  # pooled (8, 16)-channel stages
    assert s["generation"] >= 1 and s["index_type"]
    # the similarity it takes to stand out here: read back on the scale, each at its percentile
    scale, ps = engine.snapshot().pair_scale, s["pair_scale"]
    assert ps["pairs"] == len(ids) * (len(ids) - 1) // 2
    assert ps["median"] <= ps["top_10_percent"] <= ps["top_1_percent"] <= ps["top_0_1_percent"] <= 1
    assert abs(scale.percentile([ps["top_10_percent"] + 1e-4])[0] - 90) <= 100 / ps["pairs"] + 0.5


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


def test_engine_needs_an_index(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no index"):
        Engine(tmp_path)


def test_uploaded_bytes_of_an_indexed_image_exclude_it(engine) -> None:
    """An upload byte-identical to an indexed file is that image: it is not its own neighbour."""
    rec = engine.get(engine.search_id(1, k=1)[0].id)
    data = (engine.root / rec.path).read_bytes()
    hits = engine.search_image(data, k=50)
    assert rec.id not in [h.id for h in hits]
    assert hits  # the rest of the index still comes back


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
