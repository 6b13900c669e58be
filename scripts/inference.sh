#!/usr/bin/env bash
# Evaluate a fine-tuned model: WER on VALID_SUBSET (NUM_STEPS=0), or a timed run of NUM_STEPS batches after
# NUM_WARMUP_STEPS (inference_benchmark.sh). Every variable can be set in the environment; extra arguments are
# appended to the inference.py command. docs/SCRIPTS.md lists the variables.
#
#   FINETUNED_MODEL=results/finetune_base_960h/wav2vec2_update320000.pt VALID_SUBSET=dev-other bash scripts/inference.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DATASET_DIR=${DATASET_DIR:-/datasets/LibriSpeech}
VALID_SUBSET=${VALID_SUBSET:-test-other}
OUTPUT_DIR=${OUTPUT_DIR:-results/inference}
NUM_GPUS=${NUM_GPUS:-1}
BATCH_SIZE=${BATCH_SIZE:-8}
AMP=${AMP:-false}
FP16=${FP16:-false}
BF16=${BF16:-false}
EMA=${EMA:-0.0}
USE_EMA=${USE_EMA:-false}
SEED=${SEED:-1}
FINETUNED_MODEL=${FINETUNED_MODEL:-results/finetune_base_960h/wav2vec2_update320000.pt}
MASK_PROB=${MASK_PROB:-0.5}                 # passed as in the reference; masking is off at inference
MASK_CHANNEL_PROB=${MASK_CHANNEL_PROB:-0.25}
MAX_DURATION=${MAX_DURATION:-}
NUM_STEPS=${NUM_STEPS:-0}
NUM_WARMUP_STEPS=${NUM_WARMUP_STEPS:-0}
LOGITS_FILE=${LOGITS_FILE:-}
PREDICTION_FILE=${PREDICTION_FILE-${OUTPUT_DIR}/${VALID_SUBSET}.predictions} # set to "" for none
TORCHSCRIPT=${TORCHSCRIPT:-false}
TORCHSCRIPT_SAVE=${TORCHSCRIPT_SAVE:-false}
TORCH_COMPILE=${TORCH_COMPILE:-false}
CUDA_GRAPHS=${CUDA_GRAPHS:-false} # ours: --cuda_graphs (CUDA only)
CHUNK_SECONDS=${CHUNK_SECONDS:-} # ours: long audio in overlapping windows (--chunk_seconds); empty: whole utterances
CHUNK_OVERLAP_SECONDS=${CHUNK_OVERLAP_SECONDS:-} # ours: --chunk_overlap_seconds
LOG_FILE=${LOG_FILE:-$OUTPUT_DIR/nvlog.json}
TF32=${TF32:-} # ours: true/false -> --tf32

# --- validation ------------------------------------------------------------------------------------------------------
validate_launch
require_nonempty VALID_SUBSET
require_nonempty OUTPUT_DIR
require_int BATCH_SIZE 1
require_bool AMP
require_bool FP16
require_bool BF16
require_exclusive FP16 BF16
require_exclusive AMP BF16
require_float EMA 0
require_bool USE_EMA
require_int SEED 0
require_prob MASK_PROB
require_prob MASK_CHANNEL_PROB
[ -z "$MAX_DURATION" ] || require_float MAX_DURATION pos
require_int NUM_STEPS 0
require_int NUM_WARMUP_STEPS 0
require_bool TORCHSCRIPT
require_bool TORCHSCRIPT_SAVE
require_bool TORCH_COMPILE
require_bool CUDA_GRAPHS
require_bool_or_empty TF32
if is_true TORCHSCRIPT_SAVE; then
    die "TORCHSCRIPT_SAVE=true: exporting a TorchScript model is not supported (the reference maps it to a flag" \
        "that never existed); TORCHSCRIPT=true runs the scripted model"
fi

# --- the command -----------------------------------------------------------------------------------------------------
ARGS+=(
    --w2v_path "$FINETUNED_MODEL"
    --data "$DATASET_DIR"
    --valid_subset "$VALID_SUBSET"
    --output_dir "$OUTPUT_DIR"
    "--batch_size=$BATCH_SIZE"
    --ema "$EMA"
    --seed "$SEED"
    --steps "$NUM_STEPS"
    --warmup_steps "$NUM_WARMUP_STEPS"
    --log_file "$LOG_FILE"
)
if is_true AMP; then add_flag --amp --fp16; fi # the reference's way to ask for fp16
bool_flag FP16 --fp16
bool_flag BF16 --bf16
bool_flag USE_EMA --use_ema
opt_flag MAX_DURATION --max_duration
opt_flag PREDICTION_FILE --save_predictions
opt_flag LOGITS_FILE --save_logits
bool_flag TORCHSCRIPT --torchscript
bool_flag TORCH_COMPILE --torch_compile
bool_flag CUDA_GRAPHS --cuda_graphs
opt_flag TF32 --tf32
opt_flag CHUNK_SECONDS --chunk_seconds
opt_flag CHUNK_OVERLAP_SECONDS --chunk_overlap_seconds
# the reference's fixed flags: training-time settings without effect on an eval-mode model
ARGS+=(--mask_prob "$MASK_PROB" --mask_channel_prob "$MASK_CHANNEL_PROB" --skip_invalid_size_inputs_valid_test
    --apply_mask --mask_channel_length 64 --encoder_layerdrop 0.1 --activation_dropout 0.1 --feature_grad_mult 0.0)
device_flags

# --- files (last, so that a mistyped value is reported first; only warnings under DRY_RUN) -------------------------
require_dir DATASET_DIR
require_subset DATASET_DIR VALID_SUBSET
require_path FINETUNED_MODEL "fine-tuned checkpoint"

echo "inference: $FINETUNED_MODEL on $VALID_SUBSET, FP16=$( (is_true FP16 || is_true AMP) && echo true || echo false)," \
    "BF16=$BF16, batch size $BATCH_SIZE${MAX_DURATION:+, max duration ${MAX_DURATION}s}, steps $NUM_STEPS (warm-up $NUM_WARMUP_STEPS)"
is_dry_run || mkdir -p "$OUTPUT_DIR"
launch inference.py ${ARGS[@]+"${ARGS[@]}"} "$@"
