#!/usr/bin/env bash
# Every GPU measurement of the project in one run (issue 17): training images/s at 128 px,
# indexing images/s end to end on generated 640x480 JPEGs (Pillow and nvJPEG-only pipelines, and the
# real build_index: on CUDA with its GPU decode, encoder/gpu_decode.py, and again with
# LOOKALIKE_GPU_DECODE=0), query latency with the model on the GPU. Under 8 minutes on one H200.
#
#   bash bench/gpu.sh                      # writes ${OUT:-bench/results}/gpu.json and gpu.log
#   GPU_BENCH_QUICK=1 bash bench/gpu.sh    # a tiny smoke run (seconds; what the tests run, on the CPU)
#
# A bare GPU machine has torch and torchvision but not faiss, sqlalchemy, fastapi... and no
# network. The bench needs only faiss-cpu and sqlalchemy (for build_index and the faiss search)
# and SciPy (to fit the default search vector's VLAD words; the lent machines' image has it);
# carry the missing ones as wheels in .whl/ (ignored by git; the working tree and what is carried
# must stay under 64 MiB together, which a SciPy wheel, 35 MB, would break). Fill it on a machine with internet, for the
# GPU machine's Python (3.12 on the lent H200s; check with `python3 -V` there):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl faiss-cpu sqlalchemy            # (and scipy, only for a machine without it)
#
# (their other needs, numpy, packaging and typing-extensions, are already there). Without the
# wheels, the parts that need them are skipped with a line saying so; the rest still runs.
#
# Environment:
#   OUT                  folder for gpu.json and gpu.log (default bench/results)
#   GPU_BENCH_QUICK=1    tiny smoke run
#   GPU_BENCH_BUDGET_S   the Python part's time budget in seconds (default 420; quick 120)
#   GPU_BENCH_WHEELS     the wheel folder (default .whl)
#   GPU_BENCH_WITHOUT    modules the bench treats as absent, e.g. "faiss,sqlalchemy" (tests)
#   GPU_BENCH_EDITABLE   1: pip install --no-deps -e . first (default: only when wheels were installed)
#   GPU_BENCH_ARGS       more arguments for bench/gpu_bench.py (e.g. "--images 40000")
#   PYTHON               the interpreter (default .venv/bin/python if present, else python3)
#
# On the lent device machine (gpu.json and gpu.log come back from its $OUT; about 2-7 minutes):
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
OUT_DIR=${OUT:-bench/results}
WHEELS=${GPU_BENCH_WHEELS:-.whl}
QUICK=${GPU_BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    BUDGET=${GPU_BENCH_BUDGET_S:-120}
else
    BUDGET=${GPU_BENCH_BUDGET_S:-420}
fi
# shellcheck source=bench/device_lib.sh
source bench/device_lib.sh
device_log "$OUT_DIR" gpu

say "python: $PY ($("$PY" -V 2>&1)); repo $REPO; output $OUT_DIR; budget ${BUDGET} s; quick=$QUICK"
if ! "$PY" -c 'import torch, torchvision' 2>>"$LOG"; then
    say "FATAL: torch and torchvision are needed and $PY cannot import them"
    exit 1
fi

# ---- the project's missing dependencies, from carried wheels, with no network
missing=()
for pair in faiss:faiss-cpu sqlalchemy:sqlalchemy scipy:scipy; do
    mod=${pair%%:*}
    pkg=${pair#*:}
    if "$PY" -c "import $mod" 2>/dev/null; then
        say "have $pkg"
    else
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        say "installing ${missing[*]} from $WHEELS/ (no index)"
        if ! "$PY" -m pip install -q --no-index --no-cache-dir --find-links "$WHEELS" "${missing[@]}" >>"$LOG" 2>&1; then
            # a read-only or externally managed environment: a private target on PYTHONPATH instead
            say "pip could not install into $PY's environment; trying --target /tmp/lookalike-site"
            if "$PY" -m pip install -q --no-index --no-cache-dir --no-deps --target /tmp/lookalike-site \
                "$WHEELS"/*.whl >>"$LOG" 2>&1; then
                export PYTHONPATH=/tmp/lookalike-site${PYTHONPATH:+:$PYTHONPATH}
            else
                say "skip: installing ${missing[*]} failed (see $LOG); the parts that need them are skipped"
            fi
        fi
    else
        say "skip: ${missing[*]} missing and no wheels in $WHEELS/; build_index and the faiss search are skipped"
    fi
fi

# ---- the project itself: the checkout on PYTHONPATH always; an editable install (no deps, no
# network) only on a bare machine, i.e. when dependencies came from wheels, or GPU_BENCH_EDITABLE=1.
# A development environment is left as it is.
if [[ ${GPU_BENCH_EDITABLE:-$((${#missing[@]} > 0))} == 1 ]] &&
    ! (cd / && "$PY" -c 'import importlib.metadata as m; m.version("lookalike")') 2>/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
        say "installed lookalike (pip install --no-deps -e .)"
    else
        say "pip install --no-deps -e . failed (see $LOG); using PYTHONPATH=$REPO instead"
    fi
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

# ---- the measurements, within the budget (a hard stop a minute after it; partial JSON is kept)
args=(--budget-s "$BUDGET" --out "$OUT_DIR/gpu.json")
if [[ $QUICK == 1 ]]; then
    args+=(--quick)
fi
# shellcheck disable=SC2206 # GPU_BENCH_ARGS is split into words on purpose
args+=(${GPU_BENCH_ARGS:-})
rc=0
PYTHONUNBUFFERED=1 timeout --kill-after=10 $((BUDGET + 60)) "$PY" bench/gpu_bench.py "${args[@]}" 2>&1 |
    tee -a "$LOG" || rc=$?
if ((rc == 124)); then
    say "the bench ran past its budget and was stopped; $OUT_DIR/gpu.json holds the parts that finished"
elif ((rc != 0)); then
    say "the bench failed (rc $rc); see $LOG"
fi
exit "$rc"
