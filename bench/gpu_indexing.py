"""bench/gpu_bench.py's part 2: indexing pipelines, end to end, on the generated JPEGs.

Pillow (`decode_batches`) feeding `Encoder.embed_pixels`; nvJPEG (torchvision on the GPU) with
a GPU letterbox; and the real `indexer.build_index`, run in a fresh process.

Top-level imports stay light (stdlib + bench/common.py): bench/gpu_bench.py imports this
module, and its spawned workers and build_index child re-import that file. The build_index
child is started through the bench's own command line (``gpu_bench.py --build-index-child``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import rate
from gpu_report import skipped

#: The script whose --build-index-child runs `build_index_child` in a fresh process.
BENCH_SCRIPT = Path(__file__).resolve().with_name("gpu_bench.py")


def plural(backend: str) -> str:
    return backend + ("es" if backend.endswith("s") else "s")


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
    cmd = [sys.executable, str(BENCH_SCRIPT), "--build-index-child", str(folder), str(index_dir)]
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
