"""Memory of one decode, and of a server under bursts of uploads (issue 14).

Part 1, one decode: worst-case files at the pixel cap (8000x8000 = DEFAULT_MAX_PIXELS), one
per Pillow mode, made large in pixels but tiny on disk (a gradient of one value a row
compresses to almost nothing). Each is decoded the way an upload is (`load_image(bytes, 64)`) in a fresh
subprocess; the figure is the peak RSS growth of that process over the decode: VmHWM
after it minus VmRSS before it (the peak is reset through /proc/self/clear_refs first).
With `--before REV` the same files are also decoded by encoder/images.py as it was at
git revision REV, for the before/after table.

Part 2, a server: `lookalike serve` over a tiny index, hit with `--bursts` bursts of
`--burst-size` concurrent uploads of ~20 MB images (noise: JPEGs of ~3,700 px a
side and PNGs of ~2,600); the server's RSS is sampled from
/proc/PID/status all along, and printed (and plotted) as a curve.

    .venv/bin/python bench/decode_memory.py --before 47671a1

Writes bench/results/decode_memory.json (and decode_memory.png, the RSS curve).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from common import REPO, RESULTS, describe_machine, machine
from PIL import Image

SIDE = 8000  # SIDE * SIDE == DEFAULT_MAX_PIXELS

#: (name, Pillow mode to build, file format, save options). Every one decodes to 64 Mpx.
CASES: list[tuple[str, str, str, dict]] = [
    ("1 png", "1", "PNG", {}),
    ("L png", "L", "PNG", {}),
    ("LA png", "LA", "PNG", {}),
    ("P png (transparency)", "P", "PNG", {"transparency": 0}),
    ("PA tiff", "PA", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("RGB png", "RGB", "PNG", {}),
    ("RGBA png", "RGBA", "PNG", {}),
    ("CMYK tiff", "CMYK", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("CMYK jpeg", "CMYK", "JPEG", {"quality": 50}),
    ("I;16 png", "I;16", "PNG", {}),
    ("I;16B tiff", "I;16B", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("I tiff", "I", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("F tiff", "F", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("YCbCr tiff", "YCbCr", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("RGB jpeg", "RGB", "JPEG", {"quality": 50}),
    ("RGB webp", "RGB", "WEBP", {"quality": 50}),
    ("P gif", "P", "GIF", {}),
]


def gradient(mode: str, side: int = SIDE) -> Image.Image:
    """A top-to-bottom gradient in `mode`, side x side, darkest at the top. Every row is one
    value, so the file compresses to almost nothing whatever the format."""

    def rows(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(values[:, None], (side, side)))

    y = np.arange(side, dtype=np.int64)
    if mode in ("I;16", "I;16B"):
        arr = rows((y * 65535 // (side - 1)).astype("<u2" if mode == "I;16" else ">u2"))
        return Image.frombuffer(mode, (side, side), arr, "raw", mode, 0, 1)
    if mode == "I":
        return Image.fromarray(rows((y * 65535 // (side - 1)).astype(np.int32)))
    if mode == "F":
        return Image.fromarray(rows((y / (side - 1)).astype(np.float32)))
    grey = Image.fromarray(rows((y * 255 // (side - 1)).astype(np.uint8)))
    if mode == "L":
        return grey
    if mode == "1":
        return grey.point(lambda v: 255 if v >= 128 else 0).convert("1", dither=Image.Dither.NONE)
    if mode == "P":
        return grey.convert("P", palette=Image.Palette.WEB, dither=Image.Dither.NONE)
    if mode == "PA":
        return grey.convert("P", palette=Image.Palette.WEB, dither=Image.Dither.NONE).convert("PA")
    return grey.convert(mode)


def make_cases(folder: Path, names: list[str] | None = None) -> list[tuple[str, Path]]:
    """Write the worst-case files into `folder` (kept if already there); (name, path) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, mode, fmt, opts in CASES:
        if names and name not in names:
            continue
        path = folder / (name.replace(" ", "_").replace(";", "").replace("(", "").replace(")", "") + "." + fmt.lower())
        if not path.exists():
            img = gradient(mode)
            try:
                tmp = path.with_suffix(".part")
                img.save(tmp, fmt, **opts)
                tmp.rename(path)
            except (OSError, ValueError, KeyError) as exc:
                print(f"  {name}: cannot be written ({exc}); skipped", file=sys.stderr)
                continue
            finally:
                del img
        out.append((name, path))
    return out


# ---------------------------------------------------------------- one decode, in a child process

CHILD = r"""
import importlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
mod = importlib.import_module(sys.argv[2])
path, size = sys.argv[3], int(sys.argv[4])

def status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, v = line.split(":", 1)
            d[k] = v.strip()
    return int(d["VmRSS"].split()[0]) / 1024, int(d["VmHWM"].split()[0]) / 1024

import numpy as np
from PIL import Image
Image.init()
data = open(path, "rb").read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base, _ = status()
t0 = time.perf_counter()
arr = mod.load_image(data, size)
seconds = time.perf_counter() - t0
_, peak = status()
print(json.dumps({"base_mib": base, "peak_mib": peak, "growth_mib": peak - base, "seconds": seconds,
                  "column": arr[:, size // 2, 0].tolist()}))
"""


def decode_in_child(path: Path, *, pkg_root: Path, module: str, size: int = 64, timeout: float = 300) -> dict:
    """Decode `path` with `module`.load_image in a fresh process; its peak RSS growth and time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(pkg_root), module, str(path), str(size)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def before_package(rev: str, into: Path) -> Path:
    """encoder/images.py (and errors.py) as at git revision `rev`, as package `encoder_before` under `into`."""
    pkg = into / "encoder_before"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for name in ("images.py", "errors.py"):
        text = subprocess.run(
            ["git", "show", f"{rev}:encoder/{name}"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout
        (pkg / name).write_text(text)
    return into


def decode_table(folder: Path, before: str | None, names: list[str] | None) -> list[dict]:
    cases = make_cases(folder, names)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_root = before_package(before, Path(tmp)) if before else None
        print(f"\n{'case':<22} {'file KB':>9} {'before MB':>10} {'before s':>9} {'after MB':>9} {'after s':>8}")
        for name, path in cases:
            row = {"case": name, "file_kb": round(path.stat().st_size / 1024, 1)}
            if old_root:
                row["before"] = decode_in_child(path, pkg_root=old_root, module="encoder_before.images")
            row["after"] = decode_in_child(path, pkg_root=REPO, module="encoder.images")
            rows.append(row)

            def fmt(r: dict | None, key: str, spec: str) -> str:
                if not r:
                    return "-"
                return "error" if "error" in r else format(r[key], spec)

            b, a = row.get("before"), row["after"]
            print(
                f"{name:<22} {row['file_kb']:>9,.0f} {fmt(b, 'growth_mib', ',.0f'):>10} {fmt(b, 'seconds', '.2f'):>9} "
                f"{fmt(a, 'growth_mib', ',.0f'):>9} {fmt(a, 'seconds', '.2f'):>8}",
                flush=True,
            )
            if "error" in a:
                print(f"    after: {a['error']}")
            if b and "error" in b:
                print(f"    before: {b['error']}")
    return rows


# ---------------------------------------------------------------- a server under bursts of uploads


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, ctype: str, timeout: float = 600) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


def big_upload(seed: int, fmt: str, target_bytes: int = 20 * 1024 * 1024 - 4096) -> bytes:
    """An image of noise in `fmt` (JPEG or PNG), just under `target_bytes` (the default upload cap is 20 MiB)."""
    import io

    rng = np.random.default_rng(seed)
    side = 3000
    while True:
        img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
        if buf.tell() > target_bytes:
            side = int(side * (target_bytes / buf.tell()) ** 0.5) - 8
            continue
        if buf.tell() > 0.95 * target_bytes:
            return buf.getvalue()
        side = int(side * (target_bytes / buf.tell()) ** 0.5)


def build_tiny_index(work: Path) -> Path:
    sys.path.insert(0, str(REPO))
    import shutil

    from encoder import ModelConfig, TrainConfig, train
    from indexer import build_index

    index = work / "images" / ".lookalike"
    if index.exists():
        return index
    folder = work / "images"
    for sub in ("birds", "chess", "letters"):
        for src in sorted((REPO / "data" / sub).iterdir())[:4]:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / sub / src.name)
    model = work / "model"
    train(
        folder,
        model,
        ModelConfig(image_size=64, channels=(8, 16), latent_dim=16),
        TrainConfig(epochs=1, batch_size=4, seed=0),
        progress=False,
    )
    build_index(folder, model_dir=model, progress=False, workers=1)
    return index


def server_curve(
    work: Path, bursts: int, burst_size: int, env_extra: dict[str, str], label: str, repo: Path = REPO
) -> dict:
    """RSS of a real server over `bursts` bursts of `burst_size` concurrent ~20 MB uploads."""
    import socket

    index = build_tiny_index(work)
    uploads = [big_upload(s, fmt) for s, fmt in enumerate(("JPEG", "PNG", "JPEG", "PNG"))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update({"OMP_NUM_THREADS": "1", "LOOKALIKE_ACCESS_LOG": "0", **env_extra})
    log = open(work / f"server-{port}.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "serve", "--index", str(index), "--port", str(port), "--device", "cpu"],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, float]] = []
    after_burst: list[float] = []
    statuses: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - t0, rss_mib(proc.pid)))
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(1)
        idle = rss_mib(proc.pid)
        search = url + "/search?k=5"
        bodies = [multipart(u, f"big{i}") for i, u in enumerate(uploads)]
        for b in range(bursts):
            threads = []
            results: list[int] = []
            for i in range(burst_size):
                body, ctype = bodies[(b * burst_size + i) % len(bodies)]
                t = threading.Thread(target=lambda b=body, c=ctype, out=results: out.append(post(search, b, c)))
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
            for r in results:
                statuses[r] = statuses.get(r, 0) + 1
            time.sleep(2)  # let the server settle: what is left is what it keeps
            after_burst.append(rss_mib(proc.pid))
            print(
                f"  [{label}] burst {b + 1}/{bursts}: RSS after {after_burst[-1]:,.0f} MiB, peak so far "
                f"{max(r for _, r in samples):,.0f} MiB, statuses {statuses}",
                flush=True,
            )
        stop.set()
        sampler.join()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return {
        "label": label,
        "env": env_extra,
        "upload_bytes": [len(u) for u in uploads],
        "idle_mib": idle,
        "after_burst_mib": after_burst,
        "peak_mib": max(r for _, r in samples),
        "statuses": statuses,
        "ratio_last_to_first": after_burst[-1] / after_burst[0],
        "samples": samples,
    }


def plot(curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for c in curves:
        t, r = zip(*c["samples"], strict=True)
        ax.plot(t, r, label=c["label"])
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title("lookalike serve: RSS over bursts of concurrent 20 MB uploads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="git revision whose encoder/images.py to measure as 'before'")
    ap.add_argument("--cases", nargs="*", help="only these cases (names as in the table)")
    ap.add_argument("--work", type=Path, default=RESULTS / "decode_memory", help="where the files and the index go")
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--burst-size", type=int, default=50)
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="LABEL:K=V,K=V",
        help="one server curve per option, with these environment variables (default: one plain run)",
    )
    ap.add_argument(
        "--server-repo",
        type=Path,
        default=REPO,
        help="run the server from this checkout (e.g. `git archive REV` unpacked, for a 'before' curve)",
    )
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()

    m = machine(with_torch=False)
    print(describe_machine(m))
    args.work.mkdir(parents=True, exist_ok=True)
    out: dict = {"machine": m, "command": " ".join(sys.argv)}
    if not args.skip_decode:
        out["decode"] = decode_table(args.work / "files", args.before, args.cases)
    if not args.skip_server:
        curves = []
        for spec in args.server_env or ["default:"]:
            label, _, kvs = spec.partition(":")
            env = dict(kv.split("=", 1) for kv in kvs.split(",") if kv)
            print(f"\nserver curve '{label}' {env}: {args.bursts} bursts of {args.burst_size} uploads")
            curves.append(server_curve(args.work, args.bursts, args.burst_size, env, label, args.server_repo))
            c = curves[-1]
            print(
                f"  idle {c['idle_mib']:,.0f} MiB; after each burst "
                + ", ".join(f"{v:,.0f}" for v in c["after_burst_mib"])
                + f" MiB; peak {c['peak_mib']:,.0f} MiB; last/first {c['ratio_last_to_first']:.2f}"
            )
        out["server"] = curves
        try:
            plot(curves, RESULTS / "decode_memory.png")
            print(f"plot: {RESULTS / 'decode_memory.png'}")
        except Exception as exc:  # a plot is a nicety
            print(f"no plot: {exc}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decode_memory.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'decode_memory.json'}")


if __name__ == "__main__":
    main()
