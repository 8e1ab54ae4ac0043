"""The engine on a real small index: queries by bytes, path and id, paging, filters, errors, stats
(indexes that change, the by-id table and the published rows: test_engine_generations.py).

The queries on the shared corpus run against a SQLite and a PostgreSQL catalog (see `corpus` below)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_images, write_jpeg
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
