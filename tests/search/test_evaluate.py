"""Retrieval-quality evaluation: metrics by hand, labels, near-duplicates, baselines, a whole run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from encoder import create_model, save_model
from encoder.errors import LookalikeError
from search.evaluation import (
    NEAR_DUPLICATE_TRANSFORMS,
    EvaluationError,
    ModelSpec,
    evaluate,
    fit_pca,
    fit_pixels,
    near_duplicate_bytes,
    nearest_neighbours,
    read_labelled_folder,
    retrieval_metrics,
    spec_from_arg,
    to_markdown,
    write_report,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_nearest_neighbours_exclude_the_query_itself() -> None:
    v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    nn = nearest_neighbours(v, 2)
    assert nn[:, 0].tolist() == [1, 0, 3, 2]
    assert all(i not in row for i, row in enumerate(nn))
    assert nearest_neighbours(v, 1, queries=v)[:, 0].tolist() == [0, 1, 2, 3]


def test_metrics_by_hand() -> None:
    # Labels a a a b b c; c has no other member and is not a query.
    v = np.array([[1, 0, 0], [0.95, 0.3, 0], [0, 1, 0], [0.9, 0.4, 0], [0, 0.95, 0.3], [0, 0, 1]], dtype=np.float32)
    labels = ["a", "a", "a", "b", "b", "c"]
    m = retrieval_metrics(v, labels, k=2)
    assert m["queries"] == 5
    # By cosine: 0 -> [1, 3]; 1 -> [3, 0]; 2 -> [4, 3]; 3 -> [1, 0]; 4 -> [2, 3]
    assert nearest_neighbours(v, 2)[:5].tolist() == [[1, 3], [3, 0], [4, 3], [1, 0], [2, 3]]
    rel = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [0, 1]])
    assert m["precision_at_1"] == pytest.approx(rel[:, 0].mean())
    assert m["precision_at_2"] == pytest.approx(rel.mean())
    # AP@2 = sum P@i rel_i / min(2, R): R = 2 for a's, 1 for b's.
    ap = [1 / 2, (1 / 2) / 2, 0, 0, (1 / 2) / 1]
    assert m["map_at_2"] == pytest.approx(np.mean(ap))


def test_perfect_embedding_scores_one() -> None:
    labels = ["x"] * 5 + ["y"] * 5
    v = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5) + np.random.default_rng(0).normal(0, 0.01, (10, 2))
    m = retrieval_metrics(v, labels, k=4)
    assert m["precision_at_1"] == m["precision_at_4"] == m["map_at_4"] == 1.0


def test_labels_from_folders_and_from_labels_csv(tiny_folder: Path) -> None:
    corpus = read_labelled_folder(tiny_folder)
    assert sorted(set(corpus.labels)) == ["birds", "chess", "letters"] and len(corpus) == 12
    rows = ["path,kind"] + [
        f"{p.relative_to(tiny_folder).as_posix()},{'even' if i % 2 else 'odd'}" for i, p in enumerate(corpus.paths)
    ]
    (tiny_folder / "labels.csv").write_text("\n".join(rows) + "\n")
    by_csv = read_labelled_folder(tiny_folder, label_column="kind")
    assert sorted(set(by_csv.labels)) == ["even", "odd"] and "kind" in by_csv.label_source
    with pytest.raises(EvaluationError, match="nope"):
        read_labelled_folder(tiny_folder, label_column="nope")
    assert len(read_labelled_folder(tiny_folder, max_images=6, seed=1)) == 6


@pytest.mark.parametrize("transform", NEAR_DUPLICATE_TRANSFORMS)
def test_near_duplicates_decode_and_differ(tiny_folder: Path, transform: str) -> None:
    path = sorted(tiny_folder.rglob("*.png"))[0]
    data = near_duplicate_bytes(path, transform, np.random.default_rng(0))
    img = Image.open(io.BytesIO(data)).convert("RGB")
    original = Image.open(path).convert("RGBA")
    if transform == "flip":
        assert img.size == original.size
        white = Image.new("RGBA", original.size, "white")
        white.alpha_composite(original)
        assert np.array_equal(np.asarray(img), np.asarray(ImageOps.mirror(white.convert("RGB"))))
    if transform == "crop":
        assert img.width < original.width


def test_baselines() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    pca = fit_pca(pixels, 5)
    assert pca(pixels).shape == (20, 5)
    centred = fit_pixels(pixels)(pixels)
    assert centred.shape == (20, 192) and np.allclose(centred.mean(axis=0), 0, atol=1e-5)


def test_hog_colour_baseline_sees_shape_and_colour_apart() -> None:
    """HOG (scikit-image's) ignores a colour swap; the histogram ignores a shift; the search
    vector is both parts, centred and at unit length each."""
    from skimage.feature import hog

    from search.evaluation import fit_hog_colour, hog_colour_features

    img = np.full((32, 32, 3), 255, np.uint8)
    img[8:24, 8:16] = (200, 30, 30)  # a red bar
    swapped = img[..., ::-1].copy()  # the same bar in blue
    shifted = np.roll(img, 8, axis=1)  # the red bar moved right
    (h, c) = hog_colour_features(np.stack([img, swapped, shifted]))
    grey = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    expected = np.sqrt(hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
    assert np.allclose(h[0], expected / np.linalg.norm(expected), atol=1e-5)
    assert np.allclose(c[0], c[2]) and not np.allclose(c[0], c[1])  # colour: the shift is invisible
    assert not np.allclose(h[0], h[2])  # shape: the shift is seen
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    v = fit_hog_colour(corpus)(np.stack([img, swapped]))
    assert v.shape == (2, len(h[0]) + 512)
    assert np.allclose(np.linalg.norm(v, axis=1), np.sqrt(2), atol=1e-5)  # two unit-length parts


def test_spec_parsing(tmp_path: Path) -> None:
    spec = spec_from_arg("vae:beta=0.5,channels=16/32,min_steps=50,augment=none")
    assert spec.kind == "vae" and spec.overrides == {"beta": 0.5, "channels": (16, 32)}
    assert spec.train_overrides == {"min_steps": 50, "augment": "none"}
    assert spec_from_arg(str(tmp_path)).model_dir == tmp_path
    with pytest.raises(ValueError, match="key=value"):
        spec_from_arg("vae:beta")


def test_a_whole_evaluation_is_repeatable(tiny_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("conv", image_size=32, channels=(8, 16), latent_dim=8, embedding="multiscale").eval()
    save_model(model, tmp_path / "saved")
    trained = ModelSpec(
        "tiny-vae",
        kind="vae",
        overrides={"image_size": 32, "channels": (8, 16), "latent_dim": 8},
        train_overrides={"epochs": 1, "batch_size": 4},
    )
    runs = [
        evaluate(tiny_folder, [tmp_path / "saved", trained], work_dir=tmp_path / f"w{i}", near_duplicates=4, seed=3)
        for i in range(2)
    ]
    names = [m.name for m in runs[0].methods]
    assert names == ["saved", "pixels 32px", "pca-24 32px", "hog+colour 32px", "tiny-vae", "pca-8 32px"]
    for a, b in zip(runs[0].methods, runs[1].methods, strict=True):
        assert a.metrics == b.metrics and a.near_duplicate_recall_at_1 == b.near_duplicate_recall_at_1
    saved = runs[0].method("saved")
    assert saved.dim == 24 and 0 <= saved.metrics["map_at_10"] <= 1
    assert set(saved.near_duplicate_recall_at_1) == {*NEAR_DUPLICATE_TRANSFORMS, "mean"}
    paths = write_report(runs[0], tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["images"] == 12 and set(data["ratios"]) == {"saved", "tiny-vae"}
    assert paths["chart"].stat().st_size > 0 and "| saved |" in paths["markdown"].read_text()
    assert to_markdown(runs[0]).count("\n") == 2 + len(names)


def test_too_few_labels_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "one" / f"{i}.png")
    with pytest.raises(EvaluationError, match="2 labels"):
        evaluate(tmp_path, [], near_duplicates=0)


def test_evaluation_errors_are_user_errors(tiny_folder: Path, tmp_path: Path) -> None:
    # The CLI's user_errors wrapper turns a LookalikeError into a one-line message (exit 2); anything else is a bug.
    assert issubclass(EvaluationError, LookalikeError)
    with pytest.raises(LookalikeError, match="not a folder") as caught:
        evaluate(tmp_path / "missing", [], near_duplicates=0)
    assert isinstance(caught.value, EvaluationError) and "\n" not in str(caught.value)
    with pytest.raises(LookalikeError, match="needs a work_dir"):
        evaluate(tiny_folder, ["vae"], near_duplicates=0)
