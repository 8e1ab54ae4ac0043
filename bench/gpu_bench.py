"""Every GPU measurement of the project in one run (issue 17): training, indexing, query latency.

    python bench/gpu_bench.py [--quick] [--budget-s 420] [--images N] [--model DIR] [--out FILE]

Meant to be started by bench/gpu.sh, which first installs what a bare GPU machine
lacks (faiss-cpu, sqlalchemy) from carried wheels. Runs on the CPU too: parts that
need CUDA or a missing package are reported as skipped, with the reason.

1. training: the bare training step of the default model at 128 px (ModelConfig(image_size=128)):
   augment, forward + backward in bf16 autocast (channels-last on CUDA), gradient clip,
   AdamW, on random uint8 batches already on the device; images/s after warm-up.
2. indexing, end to end on generated 640x480 JPEGs (Pillow, quality 90, in a temp dir):
   - Pillow: `encoder.decoding.decode_batches` (draft + letterbox) in threads, and in
     worker processes where that is the default backend, feeding `Encoder.embed_pixels`
     (which itself runs in bf16 autocast, channels-last, on CUDA);
   - nvJPEG (CUDA only): file bytes read in threads, `torchvision.io.decode_jpeg(device="cuda")`
     in batches, letterboxed on the GPU, embedded as above: the decoder's ceiling, no product code;
   - `indexer.build_index` itself on the folder (needs faiss and sqlalchemy), in a fresh process:
     the product's default path (on CUDA: JPEGs decoded on the GPU, encoder/gpu_decode.py), and
     next to it the other decoder (`LOOKALIKE_GPU_DECODE=0` on CUDA: Pillow; on a CPU
     `LOOKALIKE_GPU_DECODE=1`: torchvision's decoder on the CPU, so the smoke run exercises it).
3. query latency: `Encoder.embed` of one uploaded JPEG (bytes), model on the best device, as the
   server runs it (bf16 autocast on CUDA), p50/p99; and a faiss flat inner-product search over
   100,000 random vectors (needs faiss).

Each part has a time budget (a share of --budget-s), so the whole run stays under 8 minutes
on one H200. The JSON (written after every part, "complete" once all ran) holds the machine,
every figure, and the issue's targets with pass/fail. The model is an untrained default-config
one unless --model is given (speed does not depend on the weights), with the default search vector
(VLAD, then centring) fitted on generated JPEGs as training would fit it: the vector users get.

Top-level imports stay light (stdlib + bench/common.py): JPEG generation and decoding
workers are started with ``spawn`` and re-import this file.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, machine, rate, table, write_json

WIDTH, HEIGHT = 640, 480
JPEG_QUALITY = 90
TRAIN_SIZE = 128
#: Issue 17's targets, for one H100/H200 with 16 cores.
TARGETS = {"training_images_per_s": 30_000, "indexing_images_per_s": 5_000}
TARGET_MACHINE = "one H100/H200 GPU with 16 CPU cores"
FAISS_VECTORS = 100_000


# ---------------------------------------------------------------- settings by device


def settings(cuda: bool, quick: bool) -> dict[str, Any]:
    """Sizes and each part's time cap (seconds) for the device; --quick is a tiny smoke run."""
    if quick:
        return {
            "train_batch": 4,
            "train_s": 1.0,
            "images": 24,
            "index_batch": 8,
            "queries": 8,
            "faiss_queries": 20,
            "fit_images": 16,
            "caps": {"training": 30, "generate": 30, "pipeline": 20, "build_index": 60, "query": 30},
        }
    if cuda:
        return {
            "train_batch": 256,
            "train_s": 20.0,
            "images": 20_000,
            "index_batch": 256,
            "queries": 300,
            "faiss_queries": 300,
            "fit_images": 512,
            "caps": {"training": 60, "generate": 90, "pipeline": 40, "build_index": 120, "query": 30},
        }
    return {
        "train_batch": 32,
        "train_s": 10.0,
        "images": 1_000,
        "index_batch": 64,
        "queries": 50,
        "faiss_queries": 100,
        "fit_images": 256,
        "caps": {"training": 60, "generate": 60, "pipeline": 40, "build_index": 120, "query": 30},
    }


class Budget:
    """The run's deadline, and each part's share of what is left."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.t0)

    def part(self, cap: float, keep: float = 0.0) -> float:
        """Seconds a part may take: its cap, or what is left once `keep` is kept for later parts."""
        return max(0.0, min(cap, self.left() - keep))


def plural(backend: str) -> str:
    return backend + ("es" if backend.endswith("s") else "s")


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def have(module: str, without: set[str]) -> str | None:
    """None when `module` can be imported, else why not (missing, or switched off with --without)."""
    if module in without:
        return f"{module} switched off (--without / GPU_BENCH_WITHOUT)"
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (bench/gpu.sh installs it from wheels in .whl/)"
    return None


def percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, round(p * (len(s) - 1)))], 3)

    return {"n": len(s), "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": round(statistics.fmean(s), 3)}


# ---------------------------------------------------------------- 1. training


def training(device: Any, batch: int, seconds: float, cap: float) -> dict[str, Any]:
    """Images/s of the project's training step at 128 px, timed for about `seconds` after warm-up."""
    import torch

    from encoder import ModelConfig, create_model
    from encoder.augment import augment_batch

    t_part = time.perf_counter()
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = create_model(ModelConfig(image_size=TRAIN_SIZE)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    cache = torch.randint(0, 256, (batch * 4, 3, TRAIN_SIZE, TRAIN_SIZE), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        x = cache[(i % 4) * batch : (i % 4 + 1) * batch].float().div_(255.0)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        inp, target = augment_batch(x, "invariant", gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _, _ = model.training_loss(inp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    warm = 5 if cuda else 2
    for i in range(warm):  # cuDNN autotuning, the allocator, AdamW's state
        step(i)
    sync()
    # Timed in chunks between synchronisations, until `seconds` have passed (or the part's cap nears).
    chunk, steps = (10 if cuda else 1), 0
    stop = t_part + cap
    t0 = time.perf_counter()
    while True:
        for _ in range(chunk):
            step(warm + steps)
            steps += 1
        sync()
        now = time.perf_counter()
        if now - t0 >= seconds or now >= stop - (now - t0) / steps * chunk:
            break
    dt = time.perf_counter() - t0
    return {
        "status": "ok",
        "model": "default conv autoencoder, ModelConfig(image_size=128)",
        "size": TRAIN_SIZE,
        "batch": batch,
        "bf16_autocast": cuda,
        "channels_last": cuda,
        "warmup_steps": warm,
        "steps": steps,
        "seconds": round(dt, 3),
        "images_per_s": rate(steps * batch, dt),
        "step": "augment_batch('invariant') + training_loss + backward + clip_grad_norm_ + AdamW, no loss read",
    }


# ---------------------------------------------------------------- 2. the corpus

_NOISE: Any = None


def _make_jpeg(job: tuple[str, int]) -> int:
    """One 640x480 JPEG at quality 90: smooth random colour fields plus sensor-like noise; returns its bytes."""
    import numpy as np
    from PIL import Image

    global _NOISE
    if _NOISE is None:  # one noise field per worker, sliced at a random offset per image: cheap and unique
        _NOISE = np.random.default_rng(os.getpid()).normal(0, 5, (HEIGHT + 64, WIDTH + 64, 3)).astype(np.int16)
    path, seed = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.int16)
    dy, dx = (int(v) for v in rng.integers(0, 64, 2))
    pixels = np.clip(base + _NOISE[dy : dy + HEIGHT, dx : dx + WIDTH], 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY)
    return os.path.getsize(path)


def generate(folder: Path, n: int, cap: float) -> dict[str, Any]:
    """Write up to `n` JPEGs into `folder` with one process per core, stopping at `cap` seconds."""
    jobs = []
    for i in range(n):
        sub = folder / f"set{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        jobs.append((str(sub / f"img_{i:06d}.jpg"), i))
    t0 = time.perf_counter()
    made, total = 0, 0
    workers = min(os.cpu_count() or 1, max(1, n // 8))
    with mp.get_context("spawn").Pool(workers) as pool:
        for size in pool.imap_unordered(_make_jpeg, jobs, chunksize=16):
            made, total = made + 1, total + size
            if time.perf_counter() - t0 > cap:
                break
        pool.terminate()
    return {
        "asked": n,
        "made": made,
        "mean_kib": round(total / max(1, made) / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
    }


def jpeg_paths(folder: Path) -> list[Path]:
    """The complete JPEGs (a stopped generation can leave a partial last file per worker: dropped)."""
    from PIL import Image

    out = []
    for p in sorted(folder.rglob("*.jpg")):
        try:
            with Image.open(p) as im:
                im.verify()
            out.append(p)
        except Exception:
            p.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- 2. indexing pipelines


def make_model(model_dir: Path, fit_images: int = 0) -> Path:
    """An untrained model of the default ModelConfig (indexing and query speed do not depend on the
    weights); with `fit_images`, its default search vector (the pooling and centring a trained model
    gets, VLAD for this configuration) fitted on that many generated JPEGs, so every part measures the
    vector users get. Without, the model's own (mean-pooled) vector."""
    from encoder import ModelConfig, create_model, save_model

    save_model(create_model(ModelConfig()), model_dir, {"note": "untrained, for bench/gpu_bench.py"})
    if fit_images:
        from encoder.decoding import decode_to_array
        from encoder.search_vector import refit_search_vector

        fit = model_dir / "fit-jpegs"
        fit.mkdir()
        paths = [fit / f"{i}.jpg" for i in range(fit_images)]
        for i, p in enumerate(paths):
            _make_jpeg((str(p), 10**6 + i))  # seeds apart from the measured folder's
        pixels, _, _ = decode_to_array(paths, ModelConfig().image_size)
        refit_search_vector(model_dir, pixels, pooling="auto")
        shutil.rmtree(fit)
    return model_dir


def load_encoder(model_dir: Path, device: Any) -> Any:
    """The product's Encoder: on CUDA it keeps its model channels-last and embeds in bf16 autocast itself."""
    from encoder import Encoder

    return Encoder(model_dir, str(device))


def autocast(device: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def pillow_pipeline(enc: Any, paths: list[Path], batch: int, workers: int, backend: str, cap: float) -> dict[str, Any]:
    """decode_batches (Pillow, draft + letterbox) -> Encoder.embed_pixels in bf16: images/s end to end."""
    import numpy as np

    from encoder.decoding import decode_batches

    done, failed, stopped = 0, 0, False
    t0 = time.perf_counter()
    for chunk in decode_batches(paths, enc.image_size, batch, workers=workers, backend=backend):
        ok = [d.pixels for d in chunk if d.pixels is not None]
        failed += len(chunk) - len(ok)
        if ok:
            enc.embed_pixels(np.stack(ok))  # bf16 autocast, channels-last on CUDA: the Encoder's own
        done += len(chunk)
        if time.perf_counter() - t0 > cap:
            stopped = done < len(paths)
            break
    dt = time.perf_counter() - t0
    return {
        "status": "ok",
        "decode": f"Pillow draft + letterbox, {workers} {plural(backend)}",
        "embed": "Encoder.embed_pixels" + (", bf16 autocast, channels-last" if enc.device.type == "cuda" else ""),
        "batch": batch,
        "images": done,
        "failed": failed,
        "stopped_at_cap": stopped,
        "seconds": round(dt, 3),
        "images_per_s": rate(done, dt),
    }


def gpu_letterbox(images: list[Any], size: int) -> Any:
    """(3, H, W) uint8 CUDA tensors -> (N, 3, size, size) float in [0, 1], channels-last, letterboxed on the GPU
    (antialiased bilinear, padded with the white background, centred as encoder.images.letterbox does)."""
    import torch
    import torch.nn.functional as F

    from encoder.images import _fit

    out = torch.ones((len(images), 3, size, size), device=images[0].device).contiguous(
        memory_format=torch.channels_last
    )
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((im.shape[1], im.shape[2]), []).append(i)
    for (h, w), idx in groups.items():
        nw, nh = _fit(w, h, size)
        x = torch.stack([images[i] for i in idx]).float().div_(255.0)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[idx, :, top : top + nh, left : left + nw] = x.clamp_(0, 1)
    return out


def embed_tensor(enc: Any, x: Any) -> Any:
    """Encoder.embed_pixels' steps on an already prepared (N, 3, S, S) device tensor."""
    import numpy as np
    import torch

    with torch.inference_mode():
        z = torch.nn.functional.normalize(enc.encode_tensor(x), dim=1).cpu().numpy()
    z = z.astype(np.float32, copy=False)
    return z if enc.calibration is None else enc.calibration.apply(z)


def nvjpeg_pipeline(enc: Any, paths: list[Path], batch: int, readers: int, cap: float) -> dict[str, Any]:
    """File bytes read in threads -> torchvision.io.decode_jpeg(device='cuda') per batch -> GPU letterbox ->
    embed in bf16 channels-last: images/s end to end."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def read(chunk: list[Path]) -> list[Any]:
        return [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in chunk]

    chunks = [paths[s : s + batch] for s in range(0, len(paths), batch)]
    done, stopped = 0, False
    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers, thread_name_prefix="bench-read") as pool:
        # A few batches are read ahead, so reading overlaps the GPU's work.
        pending = deque(pool.submit(read, c) for c in chunks[:4])
        for k in range(len(chunks)):
            data = pending.popleft().result()
            if k + 4 < len(chunks):
                pending.append(pool.submit(read, chunks[k + 4]))
            with autocast(enc.device):
                decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=enc.device)
                x = gpu_letterbox(decoded, enc.image_size)
            embed_tensor(enc, x)  # autocast as the Encoder sets it: the trunk in bf16, a VLAD pooling in fp32
            done += len(data)
            if time.perf_counter() - t0 > cap:
                stopped = done < len(paths)
                for f in pending:
                    f.cancel()
                break
    dt = time.perf_counter() - t0
    return {
        "status": "ok",
        "decode": f"torchvision.io.decode_jpeg(device='{enc.device.type}') in batches, bytes read in {readers} threads",
        "resize": f"on {enc.device.type}: antialiased bilinear + white letterbox",
        "embed": "Encoder.encode_tensor" + (", bf16 autocast, channels-last" if enc.device.type == "cuda" else ""),
        "batch": batch,
        "images": done,
        "stopped_at_cap": stopped,
        "seconds": round(dt, 3),
        "images_per_s": rate(done, dt),
    }


def build_index_child(folder: str, index_dir: str, model_dir: str, device: str) -> None:
    """In a fresh process: the real indexer.build_index on the folder; prints one JSON line."""
    import torch  # noqa: F401 - its import is not part of the timed run

    from indexer import build_index

    t0 = time.perf_counter()
    summary = build_index(folder, index_dir, model_dir, device=device, progress=False)
    wall = time.perf_counter() - t0
    d = summary.as_dict()
    keep = ("embedded", "added", "failed", "images_per_second", "duration_s", "index_type", "count")
    print(json.dumps({"wall_s": wall, "summary": {k: d[k] for k in keep if k in d}}, default=str))


def build_index_part(
    folder: Path, n: int, model_dir: Path, device: str, cap: float, gpu_decode: str | None = None
) -> dict[str, Any]:
    """build_index in a fresh process; `gpu_decode` sets LOOKALIKE_GPU_DECODE there (None: the default)."""
    import torch

    from encoder.decoding import default_backend, default_workers
    from encoder.gpu_decode import ENV_SWITCH, wants_gpu_decode

    index_dir = folder.parent / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--build-index-child", str(folder), str(index_dir)]
    cmd += [str(model_dir), device]
    env = dict(os.environ)
    env.pop(ENV_SWITCH, None)
    if gpu_decode is not None:
        env[ENV_SWITCH] = gpu_decode
    if wants_gpu_decode(torch.device(device), gpu_decode):
        decode = f"JPEGs by torchvision.io.decode_jpeg on {device} in batches (encoder/gpu_decode.py)"
    else:
        decode = f"Pillow, {default_workers()} {plural(default_backend())} (its defaults)"
    if gpu_decode is not None:
        decode += f"; {ENV_SWITCH}={gpu_decode}"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, cap), env=env)
    except subprocess.TimeoutExpired:
        return skipped(f"build_index on {n} images did not finish within its budget of {cap:.0f} s")
    outer = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build_index child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    embedded = res["summary"].get("embedded", 0)
    if embedded != n:
        raise RuntimeError(f"build_index embedded {embedded} of {n} images: {res['summary']}")
    return {
        "status": "ok",
        "what": "indexer.build_index on a fresh index (walk, hash, decode, embed, catalog, publish), fresh process",
        "device": device,
        "decode": decode,
        "images": n,
        "seconds": round(res["wall_s"], 3),
        "process_seconds": round(outer, 3),
        "images_per_s": rate(n, res["wall_s"]),
        "summary": res["summary"],
    }


# ---------------------------------------------------------------- 3. query latency


def query_embed(model_dir: Path, device: Any, jpeg: bytes, n: int, cap: float) -> dict[str, Any]:
    """Encoder.embed of one uploaded image (bytes), as the search API does: p50/p99 over `n` queries."""
    import torch

    from encoder import Encoder

    enc = Encoder(model_dir, str(device))  # as the server loads it (bf16 autocast, channels-last on CUDA)
    cuda = device.type == "cuda"
    for _ in range(5):
        enc.embed([jpeg])
    ms: list[float] = []
    t_end = time.perf_counter() + cap
    for _ in range(n):
        t0 = time.perf_counter()
        enc.embed([jpeg])  # .cpu() at its end waits for the GPU
        ms.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > t_end:
            break
    if cuda:
        torch.cuda.synchronize()
    return {
        "status": "ok",
        "what": f"Encoder.embed([bytes]) of one {WIDTH}x{HEIGHT} JPEG: decode + letterbox on the CPU, model on "
        f"{device.type}" + (" in bf16 autocast, channels-last" if cuda else ""),
        "jpeg_bytes": len(jpeg),
        **percentiles(ms),
    }


def query_faiss(dim: int, n_vectors: int, n: int, cap: float) -> dict[str, Any]:
    """faiss IndexFlatIP over `n_vectors` random unit vectors: one query, k=10, p50/p99."""
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n_vectors, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(xb)
    qs = rng.standard_normal((n + 5, dim), dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    for i in range(5):
        index.search(qs[i : i + 1], 10)
    ms: list[float] = []
    t_end = time.perf_counter() + cap
    for i in range(5, n + 5):
        t0 = time.perf_counter()
        index.search(qs[i : i + 1], 10)
        ms.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > t_end:
            break
    return {
        "status": "ok",
        "what": f"faiss IndexFlatIP, {n_vectors:,} x {dim} float32, one query, k=10, CPU",
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "vectors": n_vectors,
        "dim": dim,
        **percentiles(ms),
    }


# ---------------------------------------------------------------- machine, targets, report


def machine_info() -> dict[str, Any]:
    import torch
    import torchvision

    info = machine()
    info["cpu_count"] = os.cpu_count()
    info["torchvision"] = torchvision.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["cuda_capability"] = ".".join(str(v) for v in torch.cuda.get_device_capability(0))
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_multiprocessors"] = props.multi_processor_count
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    for mod in ("faiss", "sqlalchemy"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception:
            info[mod] = None
    return info


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the figure judged, its value and pass/fail."""
    out: dict[str, Any] = {"applies_to": TARGET_MACHINE, "measured_on": r["machine"].get("gpu") or "CPU (no GPU)"}
    tr = r.get("training", {})
    out["training_images_per_s"] = {
        "target": TARGETS["training_images_per_s"],
        "figure": "training.images_per_s",
        "measured": tr.get("images_per_s"),
        "pass": bool(tr.get("images_per_s") and tr["images_per_s"] >= TARGETS["training_images_per_s"]),
    }
    ix = r.get("indexing", {})
    best_name, best = None, 0.0
    for name in ("pillow_threads", "pillow_processes", "nvjpeg"):
        v = ix.get(name, {}).get("images_per_s") or 0.0
        if v > best:
            best_name, best = name, v
    bi = ix.get("build_index", {})
    if bi.get("images_per_s"):
        figure, value = "indexing.build_index.images_per_s", bi["images_per_s"]
    else:
        figure, value = (f"indexing.{best_name}.images_per_s" if best_name else None), best or None
    out["indexing_images_per_s"] = {
        "target": TARGETS["indexing_images_per_s"],
        "figure": figure,
        "measured": value,
        "pass": bool(value and value >= TARGETS["indexing_images_per_s"]),
        "best_pipeline": best_name,
        "best_pipeline_images_per_s": best or None,
    }
    return out


def report(r: dict[str, Any]) -> str:
    rows: list[list[Any]] = []

    def row(part: str, sec: dict[str, Any], key: str, unit: str) -> None:
        if sec.get("status") == "ok":
            rows.append([part, sec.get(key), unit, "ok"])
        else:
            rows.append([part, None, unit, f"{sec.get('status', 'not run')}: {sec.get('reason') or sec.get('error')}"])

    row(
        f"training step, {TRAIN_SIZE} px, batch {r['training'].get('batch', '')}",
        r["training"],
        "images_per_s",
        "img/s",
    )
    ix = r["indexing"]
    for name, label in (
        ("pillow_threads", "index: Pillow threads -> embed"),
        ("pillow_processes", "index: Pillow processes -> embed"),
        ("nvjpeg", "index: nvJPEG on the GPU -> embed"),
        ("build_index", "index: build_index end to end"),
        ("build_index_pillow", "index: build_index, Pillow (LOOKALIKE_GPU_DECODE=0)"),
        ("build_index_torchvision", "index: build_index, torchvision decoder on the CPU"),
    ):
        if name in ix:
            row(label, ix[name], "images_per_s", "img/s")
    q = r["query"]
    for name, label in (("embed_one", "query: Encoder.embed(bytes)"), ("faiss_flat", "query: faiss flat 100k")):
        sec = q.get(name, {})
        row(label + " p50", sec, "p50_ms", "ms")
        if sec.get("status") == "ok":
            rows.append([label + " p99", sec["p99_ms"], "ms", "ok"])
    lines = [f"machine: {describe_machine(r['machine'])}", table(rows, ["measurement", "value", "unit", "status"])]
    t = r["targets"]
    lines.append(f"\ntargets ({t['applies_to']}; measured on {t['measured_on']}):")
    for key in ("training_images_per_s", "indexing_images_per_s"):
        v = t[key]
        verdict = "PASS" if v["pass"] else "FAIL"
        lines.append(f"  {key} >= {v['target']:,}: {verdict} ({v['figure']} = {v['measured']})")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, CPU)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time budget (default 420)")
    ap.add_argument("--images", type=int, help="JPEGs to generate (default: 20000 CUDA, 1000 CPU, 24 quick)")
    ap.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    ap.add_argument("--model", type=Path, help="a model directory (default: an untrained default-config model)")
    ap.add_argument("--parts", default="training,indexing,query", help="which parts to run (default: all three)")
    ap.add_argument("--without", default=os.environ.get("GPU_BENCH_WITHOUT", ""), help="modules to treat as absent")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="the JSON file (default bench/results)")
    ap.add_argument("--build-index-child", nargs=4, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_part(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]], out: Path) -> None:
    """Run one measurement; an exception is recorded as that part's error, never the end of the run."""
    print(f"-- {key} ...", flush=True)
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:
        traceback.print_exc()
        value = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    value.setdefault("part_s", round(time.perf_counter() - t0, 2))
    section, _, name = key.partition(".")
    if name:
        results[section][name] = value
    else:
        results[section] = value
    msg = value.get("reason") or value.get("error") or ""
    print(f"   {value['status']} in {value['part_s']} s {msg}", flush=True)
    write_json(out, results)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.build_index_child:
        build_index_child(*args.build_index_child)
        return {}
    budget = Budget(args.budget_s)
    import torch

    from encoder.decoding import default_backend
    from encoder.device import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    cfg = settings(cuda, args.quick)
    caps = cfg["caps"]
    n_images = args.images or cfg["images"]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    without = {m.strip() for m in args.without.split(",") if m.strip()}
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {
        "command": command_line(),
        "complete": False,
        "quick": args.quick,
        "budget_s": args.budget_s,
        "device": str(device),
        "machine": machine_info(),
        "training": skipped("not asked (--parts)"),
        "indexing": {},
        "query": {},
    }
    print(f"machine: {describe_machine(results['machine'])}", flush=True)
    print(f"device {device}; budget {args.budget_s:.0f} s; parts {','.join(sorted(parts))}", flush=True)

    if "training" in parts:
        cap = budget.part(caps["training"])
        run_part(results, "training", lambda: training(device, cfg["train_batch"], cfg["train_s"], cap), args.out)

    with tempfile.TemporaryDirectory(prefix="lookalike-gpu-bench-") as tmp:
        tmpdir = Path(tmp)
        no_scipy = have("scipy", without)  # the VLAD words are fitted with SciPy's k-means
        fit_images = 0 if no_scipy else cfg["fit_images"]
        if args.model:
            model_dir = args.model.resolve()
        else:
            try:
                model_dir = make_model(tmpdir / "model", fit_images)
            except ImportError as exc:  # SciPy there but unusable (a wheel for another NumPy, say)
                no_scipy, fit_images = f"the VLAD fit failed: {exc}", 0
                shutil.rmtree(tmpdir / "model", ignore_errors=True)
                model_dir = make_model(tmpdir / "model")
        from encoder.checkpoint import read_config
        from encoder.vlad import VLAD_FILE

        size = read_config(model_dir)[0].image_size
        pooling = "vlad" if (model_dir / VLAD_FILE).exists() else "mean"
        what = str(model_dir) if args.model else f"untrained, default ModelConfig, {pooling} pooling"
        if not args.model and fit_images:
            what += f" fitted on {fit_images} generated JPEGs"
        elif not args.model:
            what += f" (not the default VLAD: {no_scipy})"
        results["model"] = {"dir": what, "size": size, "pooling": pooling}
        folder = tmpdir / "jpegs"
        paths: list[Path] = []

        if "indexing" in parts:
            gen = generate(folder, n_images, budget.part(caps["generate"]))
            paths = jpeg_paths(folder)
            results["indexing"]["corpus"] = {**gen, "usable": len(paths), "size": [WIDTH, HEIGHT]}
            print(f"   {len(paths)} JPEGs of {WIDTH}x{HEIGHT}, {gen['mean_kib']} KiB each, in {gen['seconds']} s")
            for p in paths:  # page cache: no pipeline pays for the disk
                p.read_bytes()
            enc = load_encoder(model_dir, device)
            batch = cfg["index_batch"]
            cap = caps["pipeline"]
            run_part(
                results,
                "indexing.pillow_threads",
                lambda: pillow_pipeline(enc, paths, batch, cores, "thread", budget.part(cap)),
                args.out,
            )
            if default_backend() == "process":
                run_part(
                    results,
                    "indexing.pillow_processes",
                    lambda: pillow_pipeline(enc, paths, batch, cores, "process", budget.part(cap)),
                    args.out,
                )
            if cuda:
                run_part(
                    results,
                    "indexing.nvjpeg",
                    lambda: nvjpeg_pipeline(enc, paths, batch, min(8, cores), budget.part(cap)),
                    args.out,
                )
            else:
                results["indexing"]["nvjpeg"] = skipped("no CUDA device: torchvision's GPU JPEG decoder needs one")
            del enc
            if cuda:
                torch.cuda.empty_cache()
            missing = have("faiss", without) or have("sqlalchemy", without)
            if missing:
                results["indexing"]["build_index"] = skipped(missing)
            else:
                run_part(
                    results,
                    "indexing.build_index",
                    lambda: build_index_part(
                        folder, len(paths), model_dir, str(device), budget.part(caps["build_index"], keep=20)
                    ),
                    args.out,
                )
                # The other decoder, side by side: Pillow on CUDA; torchvision's on a CPU (a check, not a speed).
                other, switch = ("build_index_pillow", "0") if cuda else ("build_index_torchvision", "1")
                run_part(
                    results,
                    f"indexing.{other}",
                    lambda: build_index_part(
                        folder, len(paths), model_dir, str(device), budget.part(caps["build_index"], keep=20), switch
                    ),
                    args.out,
                )
        else:
            results["indexing"] = {"status": "skipped", "reason": "not asked (--parts)"}

        if "query" in parts:
            if paths:
                jpeg = paths[0].read_bytes()
            else:
                _make_jpeg((str(tmpdir / "query.jpg"), 0))
                jpeg = (tmpdir / "query.jpg").read_bytes()
            cap = caps["query"]
            run_part(
                results,
                "query.embed_one",
                lambda: query_embed(model_dir, device, jpeg, cfg["queries"], budget.part(cap / 2)),
                args.out,
            )
            missing = have("faiss", without)
            if missing:
                results["query"]["faiss_flat"] = skipped(missing)
            else:
                from encoder import Encoder

                dim = Encoder(model_dir, "cpu").dim
                run_part(
                    results,
                    "query.faiss_flat",
                    lambda: query_faiss(dim, FAISS_VECTORS, cfg["faiss_queries"], budget.part(cap / 2)),
                    args.out,
                )
        else:
            results["query"] = {"status": "skipped", "reason": "not asked (--parts)"}

    results["targets"] = targets(results)
    results["total_s"] = round(time.perf_counter() - budget.t0, 1)
    results["complete"] = True
    write_json(args.out, results)
    print()
    print(report(results))
    print(f"\nwrote {args.out} in {results['total_s']} s")
    return results


if __name__ == "__main__":
    main()
