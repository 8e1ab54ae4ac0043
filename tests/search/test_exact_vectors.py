"""An approximate index's server reads the exact vectors from the generation's segments (no
``vectors.faiss`` is published for it): by-id vectors, filtered queries and the near-duplicate
report answer as they do over a flat index of the same vectors. Real images, real `build_index`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import fill_folder

from indexer import Manifest, build_index
from indexer.exact import FlatVectors, SegmentVectors
from indexer.layout import STORE
from search.engine import Engine
from search.reports import Tier, near_duplicates


def test_an_hnsw_index_answers_from_its_segments_as_a_flat_one(tmp_path: Path, search_model: Path) -> None:
    folder = fill_folder(tmp_path / "images")
    approx = tmp_path / "hnsw-index"
    build_index(folder, approx, search_model, index_type="hnsw", progress=False, workers=1)
    m = Manifest.read(approx)
    assert m is not None and m.index_type == "hnsw"
    assert not (m.files(approx) / STORE).exists() and not (approx / STORE).exists()
    # The same catalog and segments, published flat: the reference.
    flat = tmp_path / "flat-index"
    shutil.copytree(approx, flat)
    summary = build_index(folder, flat, search_model, index_type="flat", progress=False, workers=1)
    assert summary.embedded == 0 and (Manifest.read(flat).files(flat) / STORE).exists()

    ea = Engine(approx, device="cpu", reload_check_s=3600)
    ef = Engine(flat, device="cpu", reload_check_s=3600)
    try:
        assert isinstance(ea.snapshot().vectors, SegmentVectors)
        assert isinstance(ef.snapshot().vectors, FlatVectors)
        ids = ea.snapshot().vectors.ids()
        assert len(ids) == 12 and np.array_equal(ids, ef.snapshot().vectors.ids())
        for image_id in ids.tolist():
            v = ea.vector(image_id)
            assert np.array_equal(v, ef.vector(image_id))
            for prefix in ("birds/", "chess/", "letters/"):
                got = ea.search_id(image_id, k=3, path_prefix=prefix)
                want = ef.search_id(image_id, k=3, path_prefix=prefix)
                assert [h.id for h in got] == [h.id for h in want] and all(h.path.startswith(prefix) for h in got)
                np.testing.assert_allclose([h.similarity for h in got], [h.similarity for h in want], atol=1e-5)
            got = ea.search_vector(v, k=12, path_prefix="chess/")
            want = ef.search_vector(v, k=12, path_prefix="chess/")
            assert [h.id for h in got] == [h.id for h in want] and len(got) == 4
        tiers = (Tier("loose", 0.3), Tier("looser", 0.0))
        for method in ("auto", "exact"):
            got = near_duplicates(ea, tiers, phash=False, method=method)
            want = near_duplicates(ef, tiers, phash=False, method=method)
            assert got.method == want.method == "exact" and got.vectors == want.vectors == 12
            for tier in tiers:
                assert [g.as_dict() for g in got.groups[tier.name]] == [g.as_dict() for g in want.groups[tier.name]]
            assert any(got.groups[t.name] for t in tiers), "no groups at all: nothing compared"
    finally:
        ea.close()
        ef.close()
    # Nothing changed: the next run publishes nothing (the generation's vectors are its segments).
    again = build_index(folder, approx, search_model, index_type="hnsw", progress=False, workers=1)
    assert again.embedded == 0 and Manifest.read(approx).generation == m.generation
