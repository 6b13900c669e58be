# shellcheck shell=bash
# Shared helpers of the recipe scripts (sourced, never run). Every check prints "ERROR: <VAR>=<value>: <why>" on
# stderr and exits with status 2 before anything is launched.
#
# Variables read here (all optional):
#   PYTHON          interpreter (default <repo>/.venv/bin/python when present, else python3)
#   CUDA_AVAILABLE  true/false: skip the CUDA probe (`python -c 'import torch; print(torch.cuda.is_available())'`)
#   DEVICE          explicit torch device, passed as --device (no automatic --cpu then)
#   CPU             true: pass --cpu; false: never; empty (default): --cpu when CUDA is not available and DEVICE unset
#   NUM_NODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node torchrun rendezvous
#   DISTRIBUTED     launcher override (see launcher_words)
#   DRY_RUN         1/true: print the command and exit 0 without running it
#
# Functions: require_int VAR [MIN [MAX]], require_float VAR [MIN|pos], require_prob VAR, require_floats VAR N|+,
# require_bool VAR, require_choice VAR CHOICE..., require_dir VAR, require_path VAR, require_subset DIR_VAR SUBSET_VAR,
# require_exclusive A B; ARGS builders bool_flag VAR FLAG..., opt_flag VAR FLAG, list_flag VAR FLAG, precision_flags,
# device_flags; default_num_gpus N, validate_launch, launch ENTRY WORD..., write_benchmark_summary LOG OUT.

W2V_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W2V_SCRIPTS_DIR="$W2V_REPO_ROOT/scripts"

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$W2V_REPO_ROOT/.venv/bin/python" ]; then PYTHON="$W2V_REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

# ARGS collects the flags of the entry point; scripts append to it.
ARGS=()

die() {
    echo "ERROR: $*" >&2
    exit 2
}

warn() {
    echo "WARNING: $*" >&2
}

# _w2v_value VAR -> the value of the variable named VAR (empty when unset)
_w2v_value() {
    printf '%s' "${!1-}"
}

# require_int VAR [MIN [MAX]]: VAR is a (decimal) integer within [MIN, MAX]; MIN defaults to 0.
require_int() {
    local name=$1 min=${2:-0} max=${3:-} value
    value=$(_w2v_value "$name")
    [[ "$value" =~ ^-?[0-9]+$ ]] || die "$name='$value' is not an integer"
    [ "${#value}" -le 18 ] || die "$name=$value is too large"
    if [ "${value:0:1}" = "-" ]; then value=$((-10#${value#-})); else value=$((10#$value)); fi
    ((value >= min)) || die "$name=$value must be >= $min"
    if [ -n "$max" ]; then ((value <= max)) || die "$name=$value must be <= $max"; fi
}

# require_int_or_empty VAR [MIN [MAX]]: empty, or as require_int
require_int_or_empty() {
    [ -z "$(_w2v_value "$1")" ] || require_int "$@"
}

# require_float VAR [MIN]: a decimal number (1, 0.5, 5e-4, .1); with MIN, value >= MIN ("0" or "pos" for > 0)
require_float() {
    local name=$1 min=${2:-} value
    value=$(_w2v_value "$name")
    [[ "$value" =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]] || die "$name='$value' is not a number"
    case "$min" in
        "") ;;
        pos) awk -v v="$value" 'BEGIN { exit !(v + 0 > 0) }' || die "$name=$value must be > 0" ;;
        *) awk -v v="$value" -v m="$min" 'BEGIN { exit !(v + 0 >= m + 0) }' || die "$name=$value must be >= $min" ;;
    esac
}

# require_prob VAR: a number in [0, 1]
require_prob() {
    local name=$1 value
    require_float "$name" 0
    value=$(_w2v_value "$name")
    awk -v v="$value" 'BEGIN { exit !(v + 0 <= 1) }' || die "$name=$value must be <= 1 (a probability)"
}

# require_floats VAR N|+ : a space-separated list of exactly N numbers (or at least one with "+")
require_floats() {
    local name=$1 count=$2 value word n=0
    value=$(_w2v_value "$name")
    local -a words
    read -r -a words <<<"$value"
    for word in ${words[@]+"${words[@]}"}; do
        [[ "$word" =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]] ||
            die "$name='$value': '$word' is not a number"
        n=$((n + 1))
    done
    if [ "$count" = "+" ]; then
        ((n >= 1)) || die "$name='$value' must list at least one number"
    else
        ((n == count)) || die "$name='$value' must list exactly $count numbers (space-separated)"
    fi
}

# require_bool VAR: exactly "true" or "false" (what the scripts compare against)
require_bool() {
    local name=$1 value
    value=$(_w2v_value "$name")
    case "$value" in
        true | false) ;;
        *) die "$name='$value' must be true or false" ;;
    esac
}

# warn_preset_switches VAR...: with PRESET set, VAR=false cannot switch off a switch flag (--normalize, ...) that the
# preset turns on (the preset's value stays); say so instead of ignoring the variable silently
warn_preset_switches() {
    local var
    [ -n "${PRESET:-}" ] || return 0
    for var in "$@"; do
        if [ "$(_w2v_value "$var")" = false ]; then
            echo "WARNING: $var=false has no effect with PRESET=$PRESET: the preset's value applies (leave PRESET" \
                "unset to use the script's own values)" >&2
        fi
    done
}

# require_bool_or_empty VAR
require_bool_or_empty() {
    [ -z "$(_w2v_value "$1")" ] || require_bool "$1"
}

# require_choice VAR CHOICE...
require_choice() {
    local name=$1 value choice
    shift
    value=$(_w2v_value "$name")
    for choice in "$@"; do
        [ "$value" = "$choice" ] && return 0
    done
    die "$name='$value' must be one of: $*"
}

# require_nonempty VAR
require_nonempty() {
    [ -n "$(_w2v_value "$1")" ] || die "$1 must not be empty"
}

# is_dry_run: DRY_RUN is 1/true
is_dry_run() {
    case "${DRY_RUN:-}" in
        1 | true) return 0 ;;
        "" | 0 | false) return 1 ;;
        *) die "DRY_RUN='${DRY_RUN}' must be 1/true or 0/false" ;;
    esac
}

# _w2v_missing MESSAGE: an error, or only a warning under DRY_RUN (so commands can be printed anywhere)
_w2v_missing() {
    if is_dry_run; then warn "$* (ignored: DRY_RUN)"; else die "$*"; fi
}

# require_dir VAR: the directory exists
require_dir() {
    local name=$1 value
    require_nonempty "$name"
    value=$(_w2v_value "$name")
    [ -d "$value" ] || _w2v_missing "$name='$value' is not a directory"
}

# require_path VAR [WHAT]: a file or directory exists (checkpoints may be HF directories)
require_path() {
    local name=$1 what=${2:-file} value
    require_nonempty "$name"
    value=$(_w2v_value "$name")
    [ -e "$value" ] || _w2v_missing "$name='$value': $what not found"
}

# require_subset DIR_VAR SUBSET_VAR [EXT]: <DIR>/<SUBSET>.<EXT> (default tsv) exists (an empty subset is not checked)
require_subset() {
    local dir subset ext=${3:-tsv}
    dir=$(_w2v_value "$1")
    subset=$(_w2v_value "$2")
    [ -n "$subset" ] || return 0
    [ -d "$dir" ] || return 0 # already reported by require_dir
    [ -f "$dir/$subset.$ext" ] || _w2v_missing "$2='$subset': $dir/$subset.$ext not found"
}

# require_exclusive VAR_A VAR_B: not both true
require_exclusive() {
    if [ "$(_w2v_value "$1")" = true ] && [ "$(_w2v_value "$2")" = true ]; then
        die "$1=true and $2=true are mutually exclusive (choose one precision)"
    fi
}

# is_true VAR
is_true() {
    [ "$(_w2v_value "$1")" = true ]
}

# has_arg WORD: WORD already in ARGS
has_arg() {
    local a
    for a in ${ARGS[@]+"${ARGS[@]}"}; do
        [ "$a" = "$1" ] && return 0
    done
    return 1
}

# add_flag FLAG...: append flags not already present (so FP16=true FP32_POS_CONV=true gives one --fp32_pos_conv)
add_flag() {
    local f
    for f in "$@"; do
        has_arg "$f" || ARGS+=("$f")
    done
}

# bool_flag VAR FLAG...: validate VAR (when set) and append FLAG... when it is "true"
bool_flag() {
    local name=$1
    shift
    require_bool_or_empty "$name"
    if is_true "$name"; then add_flag "$@"; fi
}

# opt_flag VAR FLAG: append "FLAG value" when VAR is non-empty
opt_flag() {
    local value
    value=$(_w2v_value "$1")
    if [ -n "$value" ]; then ARGS+=("$2" "$value"); fi
}

# list_flag VAR FLAG: append FLAG followed by the words of VAR ("2.0 0.5 0.999995" -> three values)
list_flag() {
    local -a words
    read -r -a words <<<"$(_w2v_value "$1")"
    ARGS+=("$2" "${words[@]}")
}

# precision_flags: FP16/BF16 (validated, exclusive) and the FP32_* switches, as in the reference's recipes
precision_flags() {
    require_bool FP16
    require_bool BF16
    require_exclusive FP16 BF16
    if is_true FP16; then add_flag --fp16 --fp32_cosine_sim --fp32_conv_norms --fp32_pos_conv; fi
    # (ours: --fp32_cosine_sim too; BF16 contrastive logits tie with the positive otherwise, docs/DEVIATIONS.md)
    if is_true BF16; then add_flag --bf16 --fp32_pos_conv --fp32_cosine_sim; fi
    bool_flag FP32_TRANSFORMER_LAYERNORM --fp32_transformer_layernorm
    bool_flag FP32_MHA_SOFTMAX --fp32_mha_softmax
    bool_flag FP32_COSINE_SIM --fp32_cosine_sim
    bool_flag FP32_POS_CONV --fp32_pos_conv
    bool_flag FP32_CONV_NORMS --fp32_conv_norms
}

# precision_name: fp16 / bf16 / fp32 (benchmark output-directory naming)
precision_name() {
    if is_true FP16 || is_true AMP; then
        echo fp16
    elif is_true BF16; then
        echo bf16
    else
        echo fp32
    fi
}

# cuda_available: probe once (result exported as CUDA_AVAILABLE=true/false for the scripts this one calls). An
# interpreter that cannot import torch is an error here, in one line, rather than a traceback after the launch.
cuda_available() {
    if [ -z "${CUDA_AVAILABLE:-}" ]; then
        local out
        if ! out=$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null); then
            _w2v_missing "PYTHON='$PYTHON' cannot import torch: run 'make venv' in the repository (the scripts then" \
                "use its .venv) or set PYTHON to an interpreter that has the project's dependencies"
            out=False
        fi
        if [ "$out" = True ]; then CUDA_AVAILABLE=true; else CUDA_AVAILABLE=false; fi
        export CUDA_AVAILABLE
    fi
    require_bool CUDA_AVAILABLE
    [ "$CUDA_AVAILABLE" = true ]
}

# default_num_gpus N: unless NUM_GPUS is set, NUM_GPUS=N on a CUDA machine and 1 without CUDA (a CPU run is one
# process unless NUM_GPUS says otherwise). Call it in the script's own shell (not in $(...)) so the probe runs once.
default_num_gpus() {
    if [ -z "${NUM_GPUS:-}" ]; then
        if cuda_available; then NUM_GPUS=$1; else NUM_GPUS=1; fi
    fi
}

# device_flags: --device DEVICE, or --cpu (CPU=true, or CPU empty and no CUDA)
device_flags() {
    require_bool_or_empty CPU
    if [ -n "${DEVICE:-}" ]; then
        is_true CPU && die "CPU=true and DEVICE='$DEVICE' contradict each other; set only one"
        ARGS+=(--device "$DEVICE")
    elif is_true CPU; then
        add_flag --cpu
    elif [ -z "${CPU:-}" ] && ! cuda_available; then
        add_flag --cpu
    fi
}

# validate_launch: NUM_GPUS and the multi-node variables
validate_launch() {
    require_int NUM_GPUS 1
    NUM_NODES=${NUM_NODES:-1}
    require_int NUM_NODES 1
    NODE_RANK=${NODE_RANK:-0}
    require_int NODE_RANK 0 $((NUM_NODES - 1))
    require_int_or_empty MASTER_PORT 1 65535
    if ((NUM_NODES > 1)); then
        [ -n "${MASTER_ADDR:-}" ] || die "MASTER_ADDR must be set when NUM_NODES=$NUM_NODES > 1"
    fi
}

# _w2v_torchrun: torchrun next to $PYTHON when there is one (same environment), else from PATH
_w2v_torchrun() {
    local dir
    dir=$(dirname "$PYTHON")
    if [ "$dir" != . ] && [ -x "$dir/torchrun" ]; then echo "$dir/torchrun"; else echo torchrun; fi
}

# launcher_words ENTRY: fills LAUNCH with the words before the entry-point's flags.
#   DISTRIBUTED unset: NUM_GPUS=1 and NUM_NODES=1 -> PYTHON ENTRY; otherwise
#                      torchrun --nproc_per_node=NUM_GPUS [--nnodes --node_rank --master_addr --master_port] ENTRY
#   DISTRIBUTED set, starting with "-" (the reference's form, e.g. "-m torch.distributed.launch --nproc_per_node=8"):
#                      PYTHON $DISTRIBUTED ENTRY;  set to "": PYTHON ENTRY
#   DISTRIBUTED set to anything else (e.g. "torchrun --nproc_per_node=4 --standalone"): $DISTRIBUTED ENTRY
# DISTRIBUTED is split at whitespace (no quoting, no expansion).
launcher_words() {
    local entry=$1
    local -a dist
    LAUNCH=()
    if [ -n "${DISTRIBUTED+x}" ]; then
        read -r -a dist <<<"$DISTRIBUTED"
        if ((${#dist[@]} == 0)); then
            LAUNCH=("$PYTHON" "$entry")
        elif [ "${dist[0]:0:1}" = "-" ]; then
            LAUNCH=("$PYTHON" "${dist[@]}" "$entry")
        else
            LAUNCH=("${dist[@]}" "$entry")
        fi
    elif ((NUM_GPUS > 1 || NUM_NODES > 1)); then
        LAUNCH=("$(_w2v_torchrun)" "--nproc_per_node=$NUM_GPUS")
        if ((NUM_NODES > 1)); then
            LAUNCH+=("--nnodes=$NUM_NODES" "--node_rank=$NODE_RANK" "--master_addr=$MASTER_ADDR"
                "--master_port=${MASTER_PORT:-29500}")
        elif [ -n "${MASTER_PORT:-}" ]; then
            LAUNCH+=("--master_port=$MASTER_PORT")
        fi
        LAUNCH+=("$entry")
    else
        LAUNCH=("$PYTHON" "$entry")
    fi
}

# quote_words WORD...: one shell-quoted line (words made only of safe characters stay bare)
quote_words() {
    local out="" w
    for w in "$@"; do
        if [[ -n "$w" && "$w" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+="$w "
        else
            out+="'${w//\'/\'\\\'\'}' "
        fi
    done
    printf '%s\n' "${out% }"
}

# entry_point NAME: NAME relative to the working directory when run from the repository root, else absolute
entry_point() {
    if [ "$PWD" = "$W2V_REPO_ROOT" ]; then echo "$1"; else echo "$W2V_REPO_ROOT/$1"; fi
}

# launch ENTRY [WORD...]: print and run <launcher> ENTRY WORD... in place of the shell (exec); DRY_RUN: exit 0
launch() {
    local entry
    entry=$(entry_point "$1")
    shift
    launcher_words "$entry"
    local -a cmd=("${LAUNCH[@]}" "$@")
    echo "+ $(quote_words "${cmd[@]}")"
    if is_dry_run; then exit 0; fi
    exec "${cmd[@]}"
}

# cpu_run: the command runs on the CPU (--cpu, or DEVICE=cpu...)
cpu_run() {
    has_arg --cpu || [[ "${DEVICE:-}" == cpu* ]]
}

# recipe_env: the environment the reference's training scripts export. OMP_NUM_THREADS=1 (one thread per GPU process)
# is kept when set by the user and not forced on CPU runs, where the threads do the work (train.py divides the cores
# among CPU processes).
recipe_env() {
    if [ -z "${OMP_NUM_THREADS:-}" ] && ! cpu_run; then export OMP_NUM_THREADS=1; fi
    export CUDNN_V8_API_ENABLED=1
    export TORCH_CUDNN_V8_API_ENABLED=1
}

# write_benchmark_summary NVLOG OUT_JSON: the final dllogger summary records of a run -> JSON (not under DRY_RUN)
write_benchmark_summary() {
    local cmd=("$PYTHON" -m common.benchmark_summary "$1" --output "$2")
    echo "+ $(quote_words "${cmd[@]}")"
    if is_dry_run; then return 0; fi
    PYTHONPATH="$W2V_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "${cmd[@]}"
}
