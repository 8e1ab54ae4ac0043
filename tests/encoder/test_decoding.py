"""Parallel decoding: threads, processes and in-process give the same answers, in order."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import encoder.decoding as decoding
from encoder.decoding import decode_many, decode_to_array


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """24 good images of different sizes and formats, with bad files among them."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    paths: list[Path] = []
    for i in range(24):
        arr = rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), dtype=np.uint8)
        p = root / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
        if i % 7 == 3:
            bad = root / f"{i:02d}-bad.jpg"
            bad.write_bytes(b"" if i % 2 else b"not an image at all")
            paths.append(bad)
    return paths


def _run(paths: list[Path], **kw) -> list[tuple[int, str, bytes | None, str | None]]:
    return [
        (d.index, d.path, None if d.pixels is None else d.pixels.tobytes(), d.error)
        for d in decode_many(paths, 32, **kw)
    ]


@pytest.mark.parametrize(("backend", "workers"), [("thread", 2), ("thread", 5), ("process", 2)])
def test_backends_agree_with_in_process_decoding(mixed_folder: list[Path], backend: str, workers: int) -> None:
    expected = _run(mixed_folder, workers=0)
    got = _run(mixed_folder, workers=workers, backend=backend, prefetch=3)
    assert got == expected
    assert [i for i, *_ in got] == list(range(len(mixed_folder)))  # input order
    errors = [e for *_, e in got if e is not None]
    assert len(errors) == sum(1 for p in mixed_folder if "bad" in p.name) and all(errors)


def test_decode_to_array_skips_and_reports_bad_files(mixed_folder: list[Path]) -> None:
    pixels, ok, failed = decode_to_array(mixed_folder, 16, workers=2)
    assert pixels.shape == (len(ok), 16, 16, 3) and pixels.dtype == np.uint8
    assert {p.name for p, _ in failed} == {p.name for p in mixed_folder if "bad" in p.name}
    assert ok == [p for p in mixed_folder if "bad" not in p.name]


def test_threads_stay_bounded_and_stop_when_the_consumer_does(
    mixed_folder: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    lock = threading.Lock()
    real = decoding._decode_one

    def counting(job):
        nonlocal calls
        with lock:
            calls += 1
        return real(job)

    monkeypatch.setattr(decoding, "_decode_one", counting)
    many = mixed_folder * 10
    it = decode_many(many, 16, workers=2, backend="thread", prefetch=4)
    next(it)
    it.close()  # the consumer gives up after one image
    # Only what was already queued (prefetch) or running (workers) may have been decoded.
    assert calls <= 1 + 4 + 2 < len(many)


def test_unknown_backend_is_refused(mixed_folder: list[Path]) -> None:
    with pytest.raises(ValueError, match="unknown decoding backend"):
        list(decode_many(mixed_folder[:2], 16, workers=1, backend="gpu"))
