"""Near-duplicates when the search vector is VLAD: the report compares the scan's copy vectors
(the model's own vector, which copies of one picture keep), cached with the rest of the scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoder import Encoder, ModelConfig, TrainConfig, train
from encoder.calibration import fit_calibration
from encoder.decoding import decode_to_array
from encoder.search_vector import refit_search_vector
from indexer import build_index
from search.engine import Engine
from search.reports import CACHE_FILE, Tier, near_duplicates, whiten
from search.reports.scan import scan_images

TINY = ModelConfig(image_size=32, channels=(8, 16), latent_dim=16)


@pytest.fixture(scope="module")
def vlad_index(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 drawings from data/ and a resized JPEG copy of one, indexed with a tiny model given VLAD."""
    from conftest import sample_images

    base = tmp_path_factory.mktemp("copies")
    root = base / "images"
    drawings = sample_images(8, ("birds", "chess", "letters"))
    for src in drawings:
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / src.parent.name / src.name)
    original = f"{drawings[1].parent.name}/{drawings[1].name}"
    img = Image.open(root / original).convert("RGBA")
    white = Image.new("RGBA", img.size, "white")
    white.alpha_composite(img)
    (root / "copies").mkdir()
    white.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4)).save(
        root / "copies" / "small.jpg", quality=80
    )
    model = base / "model"
    train(root, model, TINY, TrainConfig(epochs=20, batch_size=8, seed=0), progress=False)
    pixels, _, _ = decode_to_array(sorted(root.rglob("*.*")), TINY.image_size, workers=0)
    refit_search_vector(model, pixels, pooling="vlad")
    build_index(root, base / "index", model, progress=False, workers=1)
    return {"index": base / "index", "model": model, "original": original, "copy": "copies/small.jpg"}


def test_a_vlad_model_has_copy_vectors_and_the_scan_keeps_them(vlad_index: dict) -> None:
    enc = Encoder(vlad_index["model"], "cpu")
    assert enc.has_copy_vectors and enc.vlad is not None
    with Engine(vlad_index["index"]) as engine:
        scan = scan_images(engine, workers=1)
        assert scan.vectors is not None and scan.vectors.shape == (len(scan.ids), enc.model.embedding_dim)
        assert np.allclose(np.linalg.norm(scan.vectors, axis=1), 1.0, atol=1e-5)
        one = engine.get_by_path(vlad_index["original"])
        pixels = enc.load(engine.root / one.path)[None]
        assert np.allclose(scan.vectors[list(scan.ids).index(one.id)], enc.copy_vectors(pixels)[0], atol=1e-5)
        assert (engine.index_dir / CACHE_FILE).exists()
        again = scan_images(engine, workers=1)  # read back from the cache
        assert np.array_equal(again.ids, scan.ids) and np.array_equal(again.vectors, scan.vectors)


def test_near_duplicates_compare_copy_vectors_not_the_vlad_search_vectors(vlad_index: dict) -> None:
    with Engine(vlad_index["index"]) as engine:
        orig, copy = engine.get_by_path(vlad_index["original"]).id, engine.get_by_path(vlad_index["copy"]).id
        scan = scan_images(engine, workers=1)
        copies = whiten(fit_calibration(scan.vectors, "centre").apply(scan.vectors))  # as the model's own vector is
        at = {int(x): n for n, x in enumerate(scan.ids)}
        expected = float(copies[at[orig]] @ copies[at[copy]])
        ids = engine.snapshot().vectors.ids()
        search = whiten(engine.snapshot().vectors.get(ids))
        by_search = float(search[list(ids).index(orig)] @ search[list(ids).index(copy)])
        assert abs(expected - by_search) > 1e-3  # the two would tell apart which one the report used
        for phash in (True, False):  # without hashes the scan still runs, for the copy vectors
            near = near_duplicates(engine, (Tier("planted", expected - 1e-3),), k=8, phash=phash)
            assert "copy vectors" in near.similarity
            group = next(g for g in near.groups["planted"] if copy in {m.id for m in g.members})
            assert group.keeper.id == orig
            member = next(m for m in group.others if m.id == copy)
            assert member.similarity == pytest.approx(expected, abs=1e-4)


def test_a_model_with_the_mean_pooling_scans_no_copy_vectors(tmp_path: Path) -> None:
    from conftest import fill_folder

    root = fill_folder(tmp_path / "images", 2)
    model = tmp_path / "model"
    train(root, model, TINY, TrainConfig(epochs=1, batch_size=4, seed=0, pooling="mean"), progress=False)
    build_index(root, tmp_path / "index", model, progress=False, workers=1)
    with Engine(tmp_path / "index") as engine:
        assert not engine.snapshot().encoder.has_copy_vectors
        assert scan_images(engine, workers=1).vectors is None
        assert "search vectors" in near_duplicates(engine, phash=False).similarity
