#!/usr/bin/env bash
# Issue 18's written-down GPU test, the pretraining half: the base model's recipe with the "strong"
# views, for 24 epochs (the shipped base model's length), once with the default trunk and once with
# a trunk twice as wide, on the pretraining corpus as the trainer sees it (bench/pretrain_pack.py).
# The fine-tunes and the verdict run afterwards on the development machine, with the rule in
# docs/benchmarks.md ("A trunk twice as wide"):
#
#   .venv/bin/python bench/pretrain_pack.py          # once: bench/results/corpora/pretrain64, 37.0 MiB
#   run(command="bash bench/gpu_pretrain.sh", carry=["bench/results/corpora/pretrain64"], timeout_s=480)
#   bash bench/gpu_pretrain.sh --unpack DIR          # DIR: where the run's files came back; each
#                                                    # model goes to bench/results/base_model/gpu-ARM
#   OMP_NUM_THREADS=1 .venv/bin/python bench/base_model_eval.py --arms finetune --seeds 0,1 \
#       --base bench/results/base_model/gpu-wide --out bench/results/gpu_wide_eval      # and gpu-ctrl
#
# Needs torch, torchvision, safetensors, scipy, pillow and tqdm, which the lent machines' image has;
# nothing of faiss, sqlalchemy or fastapi (pretraining is the encoder package alone). Run bench/gpu.sh
# first in a session that has a GPU: its figures come first. Each arm's model comes back as
# ARM.tar.gz (weights, config, training log: the search-vector files are fitted again on each
# folder by the fine-tune), with gpu_pretrain.log and gpu_pretrain.json; the device returns at most
# 8 files, each under 16 MiB.
#
# Environment:
#   OUT                    where the files go (default bench/results/gpu_pretrain)
#   GPU_PRETRAIN_CORPUS    the packed corpus (default bench/results/corpora/pretrain64)
#   GPU_PRETRAIN_EPOCHS    epochs per arm (default 24)
#   GPU_PRETRAIN_ARMS      "NAME:CHANNELS ..." (default "ctrl:16,32,64,128 wide:32,64,128,256")
#   GPU_PRETRAIN_DEVICE    cuda (default) or cpu (the tests)
#   GPU_PRETRAIN_BUDGET_S  each arm's hard time limit in seconds (default 200)
#   PYTHON                 the interpreter (default .venv/bin/python if present, else python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == --unpack ]]; then
    # back on the development machine: each ARM.tar.gz into DEST/gpu-ARM
    src=${2:?usage: bench/gpu_pretrain.sh --unpack DIR [DEST, default bench/results/base_model]}
    for tarball in "$src"/*.tar.gz; do
        arm=$(basename "$tarball" .tar.gz)
        dest=${3:-bench/results/base_model}/gpu-$arm
        mkdir -p "$dest"
        tar -xzf "$tarball" -C "$dest"
        echo "gpu_pretrain.sh: $tarball -> $dest"
    done
    exit 0
fi

OUT_DIR=${OUT:-bench/results/gpu_pretrain}
CORPUS=${GPU_PRETRAIN_CORPUS:-bench/results/corpora/pretrain64}
EPOCHS=${GPU_PRETRAIN_EPOCHS:-24}
ARMS=${GPU_PRETRAIN_ARMS:-"ctrl:16,32,64,128 wide:32,64,128,256"}
DEVICE=${GPU_PRETRAIN_DEVICE:-cuda}
BUDGET=${GPU_PRETRAIN_BUDGET_S:-200}
# shellcheck source=bench/device_lib.sh
source bench/device_lib.sh
device_log "$OUT_DIR" gpu_pretrain

if [[ ! -f $CORPUS/pack.json ]]; then
    say "FATAL: no packed corpus at $CORPUS (make it with bench/pretrain_pack.py and carry it)"
    exit 1
fi
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH}
say "python $PY ($("$PY" -V 2>&1)); corpus $CORPUS; $EPOCHS epochs; device $DEVICE; arms: $ARMS"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 | tee -a "$LOG"

rc=0
for spec in $ARMS; do
    arm=${spec%%:*}
    channels=${spec#*:}
    work=$(mktemp -d)
    start=$(date +%s)
    if PYTHONUNBUFFERED=1 timeout --kill-after=10 "$BUDGET" "$PY" bench/pretrain_base.py --corpus "$CORPUS" \
        --epochs "$EPOCHS" --augment strong --init-from none --channels "$channels" --device "$DEVICE" \
        --quiet --out "$work/$arm" >>"$LOG" 2>&1; then
        tar -czf "$OUT_DIR/$arm.tar.gz" -C "$work/$arm" model.safetensors config.json train_log.json start.json
        say "$arm ($channels): $(($(date +%s) - start)) s -> $OUT_DIR/$arm.tar.gz"
    else
        rc=1
        say "$arm ($channels) failed or ran past ${BUDGET} s; the end of its log:"
        tail -n 20 "$LOG"
    fi
    rm -rf "$work"
done

# one JSON of what each arm did, read from the training logs inside the tarballs
"$PY" - "$OUT_DIR" <<'EOF' | tee -a "$LOG"
import json, sys, tarfile
from pathlib import Path

out = Path(sys.argv[1])
arms = {}
for tarball in sorted(out.glob("*.tar.gz")):
    with tarfile.open(tarball) as tar:
        log = json.load(tar.extractfile("train_log.json"))
    arms[tarball.name[: -len(".tar.gz")]] = {
        "channels": log["model"]["channels"],
        "device": log["device"],
        "epochs_run": log["epochs_run"],
        "images": log["images"],
        "train_images_per_second": log["train_images_per_second"],
        "train_seconds": round(sum(h.get("seconds", 0) for h in log["history"]), 1),
        "best_val_loss": log["best_val_loss"],
    }
(out / "gpu_pretrain.json").write_text(json.dumps(arms, indent=2) + "\n")
for name, a in arms.items():
    print(f"{name}: {a['channels']} on {a['device']}, {a['epochs_run']} epochs in {a['train_seconds']} s, "
          f"{a['train_images_per_second']} images/s, best validation loss {a['best_val_loss']:.4f}")
EOF
exit "$rc"
