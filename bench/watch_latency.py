"""Keeping an index current (`lookalike index --watch`, `lookalike up`): how soon a change is served,
and what watching costs while nothing changes.

    .venv/bin/python bench/watch_latency.py [--sizes 1000,10000] [--rounds 5] [--small]

For each folder size: generates 640x480 JPEGs (bench/index_speed.py's generator, cached), indexes
them with a default-configuration model (index_speed's cached one, or --model), then times

- a manual no-change `build_index` (what each watch run costs before it finds the change);
- with `indexer.watch.keep_current` running in a thread, as `up` runs it: from a new JPEG's
  arrival in the folder (written to a hidden temporary name and renamed, as a copy tool finishes)
  to the manifest naming the generation that holds it: what a server switches to. `--rounds`
  times, then a burst of 100 arrivals at once, then one deletion;
- the watcher's CPU while nothing changes: process CPU seconds over 10 s idle.

With ``--small`` the folders hold 96x72 JPEGs instead (cached apart): a walk, a catalog and a publish
cost the same for any picture size, and 100,000 of them are made and indexed in minutes here, where
640x480 ones would take most of an hour. The arrivals are 640x480 JPEGs either way.

Prints a table, writes JSON to bench/results/watch_latency.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, machine, table, write_json
from index_speed import PER_FOLDER, _make_image, ensure_corpus, ensure_model

POLL_S = 0.01
TIMEOUT_S = 300.0


def wait_count(idx: Path, pred, since: float) -> float:
    """Seconds from `since` until the current manifest's count satisfies `pred`."""
    from indexer import Manifest

    while time.perf_counter() - since < TIMEOUT_S:
        m = Manifest.read(idx)
        if m is not None and pred(m.count):
            return time.perf_counter() - since
        time.sleep(POLL_S)
    raise TimeoutError("the change was not published")


def arrive(src: Path, dst: Path) -> None:
    """A file lands whole: copied under a hidden name (the watcher ignores it), then renamed."""
    tmp = dst.with_name("." + dst.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


SMALL = (96, 72)


def ensure_small_corpus(folder: Path, n: int) -> None:
    """`n` small JPEGs (a colour gradient and a few rectangles each, seeded) unless already there."""
    import numpy as np
    from PIL import Image, ImageDraw

    marker = folder / ".complete"  # hidden: the indexer's walk skips it
    if marker.exists() and marker.read_text().strip() == str(n):
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {n} JPEGs of {SMALL[0]}x{SMALL[1]} into {folder} ...", flush=True)
    w, h = SMALL
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    for i in range(n):
        rng = np.random.default_rng(i)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = Image.fromarray(np.broadcast_to(c0 + (c1 - c0) * ramp, (h, w, 3)).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            draw.rectangle(
                (x0, y0, x0 + int(rng.integers(8, 40)), y0 + int(rng.integers(8, 30))),
                fill=tuple(rng.integers(0, 256, 3).tolist()),
            )
        sub = folder / f"set{i // PER_FOLDER:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        img.save(sub / f"img_{i:06d}.jpg", "JPEG", quality=85)
    marker.write_text(str(n))


def one_size(n: int, workdir: Path, model: Path, rounds: int, small: bool = False) -> dict[str, Any]:
    from encoder.decoding import default_workers
    from indexer import Manifest, build_index
    from indexer.watch import FolderChanges, keep_current

    if small:
        folder = workdir / f"small-{n}"
        ensure_small_corpus(folder, n)
    else:
        folder = workdir / f"jpegs-{n}"
        ensure_corpus(folder, n, default_workers())
    shutil.rmtree(folder / "incoming", ignore_errors=True)
    spares = workdir / "spares"  # new images, not in any folder yet
    if len(list(spares.glob("*.jpg"))) < rounds + 100:
        spares.mkdir(parents=True, exist_ok=True)
        for i in range(rounds + 100):
            _make_image((str(spares / f"new_{i:04d}.jpg"), 10_000_000 + i))
    new = sorted(spares.glob("*.jpg"))
    idx = workdir / f"index-{n}"
    shutil.rmtree(idx, ignore_errors=True)
    print(f"{n}: indexing ...", flush=True)
    t0 = time.perf_counter()
    build_index(folder, idx, model, progress=False)
    full_s = time.perf_counter() - t0
    nochange = []
    for _ in range(3):
        t0 = time.perf_counter()
        build_index(folder, idx, progress=False)
        nochange.append(time.perf_counter() - t0)

    runs: list[Any] = []
    changes = FolderChanges(folder, idx).start()
    loop = threading.Thread(target=keep_current, args=(folder, idx), kwargs={"changes": changes, "on_run": runs.append})
    loop.start()
    try:
        print(f"{n}: idle CPU ...", flush=True)
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(10)
        idle_cpu = (time.process_time() - c0) / (time.perf_counter() - t0)
        (folder / "incoming").mkdir()
        single = []
        for i in range(rounds):
            count = Manifest.read(idx).count
            t0 = time.perf_counter()
            arrive(new[i], folder / "incoming" / new[i].name)
            single.append(wait_count(idx, lambda c, want=count + 1: c == want, t0))
            time.sleep(1.0)  # let the watcher settle between rounds
        run_s = [r.summary.duration_s for r in runs if r.summary is not None and r.summary.added == 1]
        count = Manifest.read(idx).count
        print(f"{n}: a burst of 100 ...", flush=True)
        t0 = time.perf_counter()
        for src in new[rounds : rounds + 100]:
            arrive(src, folder / "incoming" / src.name)
        burst_last = time.perf_counter() - t0
        burst = wait_count(idx, lambda c, want=count + 100: c == want, t0)
        time.sleep(1.0)
        count = Manifest.read(idx).count
        t0 = time.perf_counter()
        (folder / "incoming" / new[0].name).unlink()
        delete = wait_count(idx, lambda c, want=count - 1: c == want, t0)
    finally:
        changes.close()
        loop.join(TIMEOUT_S)
        shutil.rmtree(folder / "incoming", ignore_errors=True)
        shutil.rmtree(idx, ignore_errors=True)
    return {
        "images": n,
        "small": small,
        "full_index_s": round(full_s, 2),
        "nochange_run_s": [round(x, 3) for x in nochange],
        "single_arrival_s": [round(x, 3) for x in single],
        "single_run_s": [round(x, 3) for x in run_s],
        "burst_100_copy_s": round(burst_last, 3),
        "burst_100_served_s": round(burst, 3),
        "delete_served_s": round(delete, 3),
        "idle_cpu_share": round(idle_cpu, 4),
        "runs": len(runs),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="folder sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="single arrivals timed per size")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "watch_latency", help="corpora and indexes")
    ap.add_argument("--model", type=Path, help="model directory [default: index_speed's cached one]")
    ap.add_argument("--small", action="store_true", help=f"folders of {SMALL[0]}x{SMALL[1]} JPEGs (see above)")
    ap.add_argument("--out", type=Path, default=RESULTS / "watch_latency.json")
    args = ap.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = RESULTS / "index_speed" / "model-default"
        if not (model / "model.safetensors").is_file():
            ensure_model(model, ensure_folder(workdir), 512, 3, None)
    info = machine()
    print(f"machine: {describe_machine(info)}", flush=True)
    rows = [one_size(int(s), workdir, model, args.rounds, args.small) for s in args.sizes.split(",")]
    med = statistics.median
    print(
        table(
            [
                (
                    r["images"],
                    r["full_index_s"],
                    med(r["nochange_run_s"]),
                    med(r["single_arrival_s"]),
                    f"{min(r['single_arrival_s']):.2f}-{max(r['single_arrival_s']):.2f}",
                    med(r["single_run_s"]) if r["single_run_s"] else "-",
                    r["burst_100_served_s"],
                    r["delete_served_s"],
                    f"{100 * r['idle_cpu_share']:.2f}%",
                )
                for r in rows
            ],
            [
                "images",
                "full index s",
                "no-change run s",
                "1 new: served after s (median)",
                "range",
                "its run s",
                "100 new: served after s",
                "1 deleted: after s",
                "idle CPU",
            ],
        )
    )
    result = {"machine": info, "command": command_line(), "sizes": rows}
    write_json(args.out, result)
    return result


def ensure_folder(workdir: Path) -> Path:
    """A folder to train the default model on when none is cached: the smallest size's corpus."""
    from encoder.decoding import default_workers

    folder = workdir / "jpegs-1000"
    ensure_corpus(folder, 1000, default_workers())
    return folder


if __name__ == "__main__":
    main()
