# Sourced by the scripts that run on a lent GPU machine (bench/gpu.sh, bench/gpu_pretrain.sh),
# from the repository's root. Sets PY (the interpreter: $PYTHON, else .venv/bin/python where there
# is one, else python3, which is what a bare device machine has) and LOG (OUT_DIR/NAME.log, made
# empty), and defines say: a line to the output and to the log, naming the script.
#
#   device_log OUT_DIR NAME

device_log() {
    local out_dir=$1 name=$2
    if [[ -n ${PYTHON:-} ]]; then
        PY=$PYTHON
    elif [[ -x .venv/bin/python ]]; then
        PY=.venv/bin/python
    else
        PY=python3
    fi
    mkdir -p "$out_dir"
    LOG=$out_dir/$name.log
    : >"$LOG"
    SCRIPT_NAME=$name.sh
}

say() { echo "$SCRIPT_NAME: $*" | tee -a "$LOG"; }
