"""Search fixtures: a real small index (tiny model, a few sample images), an engine, an app, a real server.

The model is trained once per session and the shared index built once; tests
that change an index build their own with `make_index`. `start_server` runs
the real `lookalike serve` in a subprocess on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, fill_folder, sample_images, train_tiny, write_jpeg
from fastapi.testclient import TestClient
from PIL import Image

from encoder import ModelConfig, TrainConfig, train
from indexer import build_index
from search.api import Settings, create_app
from search.engine import Engine

#: Paths in the shared corpus whose folder names hold SQL LIKE wildcards, and one that the wildcards would match.
WILDCARD_PATHS = ("odd%dir/w1.jpg", "odd_dir/w2.jpg", "oddXdir/w3.jpg")


@dataclass(frozen=True)
class Corpus:
    folder: Path  # the indexed folder
    index: Path  # its index directory
    outside: Path  # an image outside the folder, reachable through the symlink `link.jpg` inside it


@pytest.fixture(scope="session")
def search_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny autoencoder (1 epoch on 9 sample images): poor embeddings, real code paths."""
    return train_tiny(tmp_path_factory, "search-model")


@pytest.fixture(scope="session")
def make_index(search_model: Path) -> Callable[[Path], Path]:
    """Index `folder` (into folder/.lookalike) with the tiny model; returns the index directory."""

    def make(folder: Path) -> Path:
        build_index(folder, model_dir=search_model, progress=False, workers=1)
        return folder / ".lookalike"

    return make


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, make_index: Callable[[Path], Path]) -> Corpus:
    """The shared index: 12 sample images in 3 class folders, 3 images in folders named with LIKE
    wildcards, and `link.jpg`, a symlink to an image outside the folder. Tests must not change it."""
    base = tmp_path_factory.mktemp("corpus")
    folder = base / "images"
    fill_folder(folder)
    for i, rel in enumerate(WILDCARD_PATHS):
        write_jpeg(folder / rel, (96, 64), seed=100 + i)
    outside = write_jpeg(base / "outside" / "secret.jpg", (80, 60), seed=7)
    (folder / "link.jpg").symlink_to(outside)
    return Corpus(folder, make_index(folder), outside)


@pytest.fixture(scope="session")
def engine(corpus: Corpus) -> Iterator[Engine]:
    eng = Engine(corpus.index, device="cpu", reload_check_s=0)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def ids(engine: Engine) -> dict[str, int]:
    """Catalog path -> id of every indexed image in the shared corpus."""
    with engine.catalog.engine.connect() as c:
        return dict(c.exec_driver_sql("SELECT path, id FROM images WHERE status = 'ok'").all())


@pytest.fixture(scope="session")
def client(corpus: Corpus, engine: Engine) -> Iterator[TestClient]:
    """The real app over the shared engine, no token."""
    with TestClient(create_app(Settings(index=corpus.index), engine)) as c:
        yield c


@pytest.fixture(scope="session")
def app_client(corpus: Corpus, engine: Engine) -> Callable[..., TestClient]:
    """A client for the app built with other settings (`Settings(index=..., **overrides)`), same engine."""

    def make(engine_: Engine | None = None, **overrides) -> TestClient:
        return TestClient(create_app(Settings(index=corpus.index, **overrides), engine_ or engine))

    return make


# ---------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen | None  # None: a server in this process

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def run_server(index: Path, env: dict[str, str] | None = None, startup_s: float = 90) -> Iterator[Server]:
    """`python -m search serve --index INDEX --port N` on 127.0.0.1; yields once /healthz answers."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    for _attempt in range(3):  # the free port can be taken between our probe and the server's bind
        port = free_port()
        log = open(index.parent / f"server-{port}.log", "w+b")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "search", "serve", "--index", str(index), "--port", str(port), "--device", "cpu"],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", port, proc)
        deadline = time.monotonic() + startup_s
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if server.get("/healthz", timeout=2)[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                log.seek(0)
                output = log.read().decode(errors="replace")
                _stop(proc)
                if "address already in use" in output.lower():
                    continue
                raise RuntimeError(f"`lookalike serve` did not come up on port {port}:\n{output}")
            yield server
            return
        finally:
            _stop(proc)
            log.close()
    raise RuntimeError("no free port for `lookalike serve` after 3 tries")


#: The shared server's upload cap: above every sample image, small enough to test cheaply.
SERVER_MAX_UPLOAD = 1_000_000


def index_ids(index: Path) -> dict[str, int]:
    """Catalog path -> id of every indexed image, read straight from the SQLite catalog."""
    with contextlib.closing(sqlite3.connect(f"file:{index / 'catalog.sqlite'}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT path, id FROM images WHERE status = 'ok'").fetchall())


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, make_index: Callable[[Path], Path]) -> Corpus:
    """The real server's own index (9 sample images): the index-swap test adds images to it while it serves,
    so tests against `server` must not assume its size."""
    base = tmp_path_factory.mktemp("live")
    folder = base / "images"
    fill_folder(folder, 3)
    outside = write_jpeg(base / "outside" / "secret.jpg", (80, 60), seed=7)
    (folder / "link.jpg").symlink_to(outside)
    return Corpus(folder, make_index(folder), outside)


@pytest.fixture(scope="session")
def server(live: Corpus) -> Iterator[Server]:
    """The real `lookalike serve` (a subprocess) over the `live` index, no token."""
    with run_server(live.index, {"LOOKALIKE_MAX_UPLOAD_BYTES": str(SERVER_MAX_UPLOAD)}) as s:
        yield s


TOKEN = "correct horse battery staple"


@pytest.fixture(scope="session")
def token_server(corpus: Corpus, engine: Engine) -> Iterator[Server]:
    """A real uvicorn server in a thread of this process, over the shared engine, requiring `TOKEN`.

    Cheaper to start than a second subprocess (nothing to import again)."""
    import uvicorn

    app = create_app(Settings(index=corpus.index, api_token=TOKEN), engine)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"in-process uvicorn did not start on port {port}")
        time.sleep(0.05)
    yield Server(f"http://127.0.0.1:{port}", port, None)
    srv.should_exit = True
    thread.join(10)


#: An id no catalog row has.
MISSING = 987_654

#: The multipart boundary of the raw and chunked uploads the tests write by hand.
BOUNDARY = "lookalike-test-boundary"


def multipart(data: bytes, name: str = "query.png") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# ---------------------------------------------------------------- the reports' folder


#: The reports' model: small enough to train in seconds, enough to tell drawings from noise.
REPORTS_MODEL = ModelConfig(image_size=32, channels=(8, 16), latent_dim=16)


@pytest.fixture(scope="session")
def reports_planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reports' folder, indexed: 16 drawings from data/, a byte-identical copy, a resized JPEG copy
    and a noise image (test_reports.py's findings, test_report_formats.py's formats, CLI and HTTP)."""
    root = tmp_path_factory.mktemp("reports") / "images"
    drawings = sample_images(8, ("birds", "chess"))
    for src in drawings:
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    rel = [f"{p.parent.name}/{p.name}" for p in drawings]
    (root / "copies").mkdir()
    shutil.copy(root / rel[0], root / "copies" / "same.png")
    img = Image.open(root / rel[1]).convert("RGBA")
    white = Image.new("RGBA", img.size, "white")
    white.alpha_composite(img)
    white.convert("RGB").resize((img.width * 4 // 5, img.height * 4 // 5)).save(
        root / "copies" / "smaller.jpg", quality=85
    )
    (root / "odd").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the model's size: no blur
    Image.fromarray(noise).save(root / "odd" / "noise.png")
    model = root.parent / "model"  # learns the drawings; the noise is unlike anything it saw
    train_dir = root.parent / "train"
    for p in drawings:
        (train_dir / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, train_dir / p.parent.name / p.name)
    train(train_dir, model, REPORTS_MODEL, TrainConfig(epochs=30, batch_size=4, seed=0), progress=False)
    index = root.parent / "index"
    build_index(root, index, model, progress=False, workers=1)
    return {"root": root, "index": index, "original": rel[0], "resized_of": rel[1], "drawings": rel}
