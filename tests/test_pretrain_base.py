"""bench/pretrain_base.py's provenance: PROVENANCE.md says where the base model's training started.

The shipped base was once trained further from the base installed before it while the text said
"18 epochs" as if from random weights (the script used the product's ``init_from="auto"``). These
check the sentence for each start, from files alone (no training).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bench_module


@pytest.fixture(scope="module")
def pb():
    yield from bench_module("pretrain_base")


def _run(tmp_path: Path, init_from: str | None, start: dict | None) -> tuple[Path, Path]:
    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True)
    package = {"package": "p", "version": "1", "images": 3, "licence": "GPL-2+", "licences": ["GPL-2+"]}
    package["deb_sha256"] = "ab" * 32
    (corpus / "provenance.json").write_text(
        json.dumps({"images": 3, "seed": 0, "per_package": 3, "packages": [package]})
    )
    model = tmp_path / "model"
    model.mkdir()
    train = {"epochs": 4, "batch_size": 32, "lr": 0.002, "augment": "invariant", "siamese": 0.01, "seed": 0}
    if init_from is not None:
        train["init_from"] = init_from
    (model / "config.json").write_text(json.dumps({"meta": {"train": train}}))
    if start is not None:
        (model / "start.json").write_text(json.dumps(start))
    return corpus, model


def training_line(text: str) -> str:
    return next(x for x in text.splitlines() if x.startswith("Training:"))


def test_the_training_line_says_where_it_started(pb, tmp_path: Path) -> None:
    corpus, model = _run(tmp_path / "a", "none", {"init_from": "none", "what": pb.describe_start("none")})
    assert training_line(pb.provenance_md(corpus, model)).endswith("Started from random weights.")
    before = "the base model installed before it (6 epochs from random weights)"
    corpus, model = _run(tmp_path / "b", "base", {"init_from": "base", "what": before})
    line = training_line(pb.provenance_md(corpus, model))
    assert "4 epochs" in line and f"Started from {before}, not from random weights." in line
    # a model trained before the start was recorded: the text does not guess
    corpus, model = _run(tmp_path / "c", "auto", None)
    assert "not recorded which model" in training_line(pb.provenance_md(corpus, model))
    corpus, model = _run(tmp_path / "d", None, None)  # older still: no init_from at all
    assert training_line(pb.provenance_md(corpus, model)).endswith("Started from random weights.")


def test_a_start_from_a_model_directory_quotes_its_own_training_line(pb, tmp_path: Path) -> None:
    prior = tmp_path / "prior"
    prior.mkdir()
    (prior / "PROVENANCE.md").write_text("# x\n\nTraining: 6 epochs, seed 0. Started from random weights.\n")
    expected = f"the model in `{prior}` (6 epochs, seed 0. Started from random weights)"
    assert pb.describe_start(str(prior)) == expected
    bare = tmp_path / "bare"
    bare.mkdir()
    assert pb.describe_start(str(bare)) == f"the model in `{bare}`"
