#!/usr/bin/env bash
# CTC fine-tuning: the engine of the fine-tuning recipes, with the defaults of fine-tuning the Large (LV-60)
# model on LibriSpeech 960h. The finetune_base_*.sh / finetune_vox_100h.sh wrappers set their values and run this
# script. Architecture, normalisation and Hourglass come from the pre-trained checkpoint (PRETRAINED_MODEL).
# Every variable can be set in the environment; extra arguments are appended to the train.py command.
#
#   PRETRAINED_MODEL=pretrained_models/libri960_big.pt NUM_GPUS=8 bash scripts/finetune_vox_960h.sh
#   DRY_RUN=1 bash scripts/finetune_vox_960h.sh       # print the command only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DATASET_DIR=${DATASET_DIR:-/datasets/LibriSpeech}
TRAIN_SUBSET=${TRAIN_SUBSET:-train-full-960}
VALID_SUBSET=${VALID_SUBSET:-dev-other}
OUTPUT_DIR=${OUTPUT_DIR:-results/finetune_large_960h}
default_num_gpus 8 # NUM_GPUS: 8, or 1 on a machine without CUDA
MAX_TOKENS=${MAX_TOKENS:-1280000}
NUM_CONCAT_BATCHES=${NUM_CONCAT_BATCHES:-3}
UPDATE_FREQ=${UPDATE_FREQ:-1}
MAX_UPDATE=${MAX_UPDATE:-320000}
require_int MAX_UPDATE 1 # the two defaults below derive from it
WARMUP_UPDATES=${WARMUP_UPDATES:-$((MAX_UPDATE / 10))}
HOLD_UPDATES=${HOLD_UPDATES:-$((MAX_UPDATE / 10 * 4))}
FREEZE_FINETUNE_UPDATES=${FREEZE_FINETUNE_UPDATES:-10000}
BATCH_SIZE=${BATCH_SIZE:-}
LEARNING_RATE=${LEARNING_RATE:-0.00003}
FP16=${FP16:-false}
BF16=${BF16:-false}
EMA=${EMA:-0.0}
SEED=${SEED:-1}
CUDNN_BENCHMARK=${CUDNN_BENCHMARK:-false}
PRETRAINED_MODEL=${PRETRAINED_MODEL:-pretrained_models/libri960_big.pt}
MASK_PROB=${MASK_PROB:-0.5}
MASK_CHANNEL_PROB=${MASK_CHANNEL_PROB:-0.25}
ENCODER_LAYERDROP=${ENCODER_LAYERDROP:-0.1}
NO_SAVE=${NO_SAVE:-false}
SAVE_FREQUENCY=${SAVE_FREQUENCY:-10}
EPOCHS_THIS_JOB=${EPOCHS_THIS_JOB:-}
SAVE_INTERVAL_UPDATES=${SAVE_INTERVAL_UPDATES:-} # ours: also save a resumable checkpoint every N updates
TF32=${TF32:-}                                   # ours: true/false -> --tf32 (train.py default: true)

# --- validation ------------------------------------------------------------------------------------------------------
validate_launch
require_nonempty TRAIN_SUBSET
require_nonempty OUTPUT_DIR
require_int MAX_TOKENS 1
require_int NUM_CONCAT_BATCHES 1
require_int UPDATE_FREQ 1
require_int WARMUP_UPDATES 0
require_int HOLD_UPDATES 0
require_int FREEZE_FINETUNE_UPDATES 0
require_int_or_empty BATCH_SIZE 1
require_float LEARNING_RATE pos
require_float EMA 0
require_int SEED 0
require_bool CUDNN_BENCHMARK
require_prob MASK_PROB
require_prob MASK_CHANNEL_PROB
require_prob ENCODER_LAYERDROP
require_bool NO_SAVE
require_int SAVE_FREQUENCY 1
require_int_or_empty EPOCHS_THIS_JOB 0
require_int_or_empty SAVE_INTERVAL_UPDATES 0
require_bool_or_empty TF32

# --- the command -----------------------------------------------------------------------------------------------------
ARGS+=(
    --resume
    --data "$DATASET_DIR"
    --train_subset "$TRAIN_SUBSET"
    --valid_subset "$VALID_SUBSET"
    --output_dir "$OUTPUT_DIR"
    --max_tokens "$MAX_TOKENS"
    --max_tokens_valid "$MAX_TOKENS"
    --num_concat_batches "$NUM_CONCAT_BATCHES"
    --update_freq "$UPDATE_FREQ"
    --max_update "$MAX_UPDATE"
    --warmup_updates "$WARMUP_UPDATES"
    --hold_updates "$HOLD_UPDATES"
    --freeze_finetune_updates "$FREEZE_FINETUNE_UPDATES"
)
opt_flag BATCH_SIZE --batch_size
ARGS+=(--lr "$LEARNING_RATE")
precision_flags
ARGS+=(--ema "$EMA" --seed "$SEED")
bool_flag CUDNN_BENCHMARK --cudnn_benchmark
ARGS+=(
    --w2v_path "$PRETRAINED_MODEL"
    --mask_prob "$MASK_PROB"
    --mask_channel_prob "$MASK_CHANNEL_PROB"
    --encoder_layerdrop "$ENCODER_LAYERDROP"
)
bool_flag NO_SAVE --no_save
ARGS+=(--save_frequency "$SAVE_FREQUENCY")
opt_flag EPOCHS_THIS_JOB --epochs_this_job
opt_flag SAVE_INTERVAL_UPDATES --save_interval_updates
opt_flag TF32 --tf32
# fixed recipe flags
ARGS+=(--labels ltr --adam_eps 1e-8 --lr_policy exp --initial_lr_scale 0.01 --final_lr_scale 0.05 --apply_mask
    --mask_channel_length 64 --activation_dropout 0.1 --feature_grad_mult 0.0 --dropout_input 0.0 --dropout 0.0
    --weight_decay 0.0 --mha pyt)
device_flags

# --- files (last, so that a mistyped value is reported first; only warnings under DRY_RUN) -------------------------
require_dir DATASET_DIR
require_subset DATASET_DIR TRAIN_SUBSET
require_subset DATASET_DIR TRAIN_SUBSET ltr
require_subset DATASET_DIR VALID_SUBSET
require_subset DATASET_DIR VALID_SUBSET ltr
require_path PRETRAINED_MODEL "pre-trained checkpoint"

recipe_env
echo "finetune: FP16=$FP16, BF16=$BF16, ${NUM_NODES}x${NUM_GPUS}x(${MAX_TOKENS}x${NUM_CONCAT_BATCHES})x${UPDATE_FREQ}" \
    "(nodes x GPUs x (max_tokens x concat batches) x update_freq), from $PRETRAINED_MODEL"
is_dry_run || mkdir -p "$OUTPUT_DIR"
launch train.py finetune ${ARGS[@]+"${ARGS[@]}"} "$@"
