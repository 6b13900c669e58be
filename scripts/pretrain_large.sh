#!/usr/bin/env bash
# wav2vec 2.0 pre-training: the engine of the pre-training recipes, with the Large (LV-60 style) defaults.
# pretrain_base.sh sets the Base values and runs this script. Every variable below can be set in the environment;
# extra command-line arguments are appended to the train.py command. docs/SCRIPTS.md lists them all.
#
#   NUM_GPUS=8 DATASET_DIR=/datasets/LibriSpeech bash scripts/pretrain_large.sh
#   PRESET=tiny NUM_GPUS=1 MAX_TOKENS=64000 MAX_UPDATE=10 DATASET_DIR=... bash scripts/pretrain_large.sh  # CPU demo
#   DRY_RUN=1 bash scripts/pretrain_large.sh         # print the command only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# --- data, output, launch ---------------------------------------------------------------------------------------------
DATASET_DIR=${DATASET_DIR:-/datasets/LibriSpeech}
TRAIN_SUBSET=${TRAIN_SUBSET:-train-full-960}
VALID_SUBSET=${VALID_SUBSET:-dev-other}
OUTPUT_DIR=${OUTPUT_DIR:-results/pretrain_large}
default_num_gpus 8 # NUM_GPUS: 8, or 1 on a machine without CUDA
# --- batching and schedule -------------------------------------------------------------------------------------------
MAX_TOKENS=${MAX_TOKENS:-1200000}
NUM_CONCAT_BATCHES=${NUM_CONCAT_BATCHES:-1}
UPDATE_FREQ=${UPDATE_FREQ:-16}
MIN_SAMPLE_SIZE=${MIN_SAMPLE_SIZE:-32000}
MAX_SAMPLE_SIZE=${MAX_SAMPLE_SIZE:-320000}
MAX_UPDATE=${MAX_UPDATE:-800000}
WARMUP_UPDATES=${WARMUP_UPDATES:-32000}
OPTIMIZER=${OPTIMIZER:-adam}
LEARNING_RATE=${LEARNING_RATE:-0.005}
LOSS_WEIGHTS=${LOSS_WEIGHTS:-"0.1 0.0"}
# --- precision, seed, checkpoints ------------------------------------------------------------------------------------
FP16=${FP16:-false}
BF16=${BF16:-false}
EMA=${EMA:-0.0}
SEED=${SEED:-}
CUDNN_BENCHMARK=${CUDNN_BENCHMARK:-false}
NO_SAVE=${NO_SAVE:-false}
SAVE_FREQUENCY=${SAVE_FREQUENCY:-1}
EPOCHS_THIS_JOB=${EPOCHS_THIS_JOB:-}
SAVE_INTERVAL_UPDATES=${SAVE_INTERVAL_UPDATES:-} # ours: also save a resumable checkpoint every N updates
TF32=${TF32:-}                                   # ours: true/false -> --tf32 (train.py default: true)
# --- model: PRESET (ours) takes every architecture/dropout/masking value from train.py's preset; the variables
# below are then passed only when set in the environment. Without PRESET the Large values below apply.
PRESET=${PRESET:-}
if [ -z "$PRESET" ]; then
    NORMALIZE=${NORMALIZE:-true}
    MASK_PROB=${MASK_PROB:-0.65}
    EXTRACTOR_MODE=${EXTRACTOR_MODE:-layer_norm}
    LAYER_NORM_FIRST=${LAYER_NORM_FIRST:-true}
    FINAL_DIM=${FINAL_DIM:-768}
    LATENT_TEMP=${LATENT_TEMP:-"2.0 0.1 0.999995"}
    ENCODER_LAYERDROP=${ENCODER_LAYERDROP:-0.0}
    DROPOUT_INPUT=${DROPOUT_INPUT:-0.0}
    DROPOUT_FEATURES=${DROPOUT_FEATURES:-0.0}
    DROPOUT=${DROPOUT:-0.0}
    ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-0.0}
    CONV_BIAS=${CONV_BIAS:-true}
    ENCODER_LAYERS=${ENCODER_LAYERS:-24}
    ENCODER_EMBED_DIM=${ENCODER_EMBED_DIM:-1024}
    ENCODER_FFN_EMBED_DIM=${ENCODER_FFN_EMBED_DIM:-4096}
    ENCODER_ATTENTION_HEADS=${ENCODER_ATTENTION_HEADS:-16}
    FEATURE_GRAD_MULT=${FEATURE_GRAD_MULT:-1.0}
    # HOURGLASS_CONFIG: unset or empty -> plain transformer stack (no flag)
fi

# --- validation ------------------------------------------------------------------------------------------------------
validate_launch
require_nonempty TRAIN_SUBSET
require_nonempty OUTPUT_DIR
require_int MAX_TOKENS 1
require_int NUM_CONCAT_BATCHES 1
require_int UPDATE_FREQ 1
require_int MIN_SAMPLE_SIZE 0
require_int MAX_SAMPLE_SIZE 1
require_int MAX_UPDATE 1
require_int WARMUP_UPDATES 0
require_choice OPTIMIZER adam
require_float LEARNING_RATE pos
require_floats LOSS_WEIGHTS +
require_float EMA 0
require_int_or_empty SEED 0
require_bool CUDNN_BENCHMARK
require_bool NO_SAVE
require_int SAVE_FREQUENCY 1
require_int_or_empty EPOCHS_THIS_JOB 0
require_int_or_empty SAVE_INTERVAL_UPDATES 0
require_bool_or_empty TF32
if [ -n "$PRESET" ]; then require_choice PRESET base large tiny; fi
for var in NORMALIZE LAYER_NORM_FIRST CONV_BIAS; do
    [ -z "${!var:-}" ] || require_bool "$var"
done
warn_preset_switches NORMALIZE LAYER_NORM_FIRST CONV_BIAS
for var in MASK_PROB ENCODER_LAYERDROP DROPOUT_INPUT DROPOUT_FEATURES DROPOUT ATTENTION_DROPOUT; do
    [ -z "${!var:-}" ] || require_prob "$var"
done
for var in FINAL_DIM ENCODER_LAYERS ENCODER_EMBED_DIM ENCODER_FFN_EMBED_DIM ENCODER_ATTENTION_HEADS; do
    [ -z "${!var:-}" ] || require_int "$var" 0
done
[ -z "${FEATURE_GRAD_MULT:-}" ] || require_float FEATURE_GRAD_MULT 0
[ -z "${LATENT_TEMP:-}" ] || require_floats LATENT_TEMP 3
[ -z "${EXTRACTOR_MODE:-}" ] || require_choice EXTRACTOR_MODE default layer_norm

# --- the command -----------------------------------------------------------------------------------------------------
ARGS+=(--resume)
opt_flag PRESET --preset
ARGS+=(
    --data "$DATASET_DIR"
    --train_subset "$TRAIN_SUBSET"
    --valid_subset "$VALID_SUBSET"
    --output_dir "$OUTPUT_DIR"
    --max_tokens "$MAX_TOKENS"
    --max_tokens_valid "$MAX_TOKENS"
    --num_concat_batches "$NUM_CONCAT_BATCHES"
    --update_freq "$UPDATE_FREQ"
    --min_sample_size "$MIN_SAMPLE_SIZE"
    --max_sample_size "$MAX_SAMPLE_SIZE"
    --max_update "$MAX_UPDATE"
    --warmup_updates "$WARMUP_UPDATES"
    --optimizer "$OPTIMIZER"
    --lr "$LEARNING_RATE"
)
list_flag LOSS_WEIGHTS --loss_weights
precision_flags
ARGS+=(--ema "$EMA")
opt_flag SEED --seed
bool_flag CUDNN_BENCHMARK --cudnn_benchmark
bool_flag NORMALIZE --normalize
opt_flag MASK_PROB --mask_prob
opt_flag EXTRACTOR_MODE --extractor_mode
bool_flag LAYER_NORM_FIRST --layer_norm_first
opt_flag FINAL_DIM --final_dim
[ -z "${LATENT_TEMP:-}" ] || list_flag LATENT_TEMP --latent_temp
opt_flag ENCODER_LAYERDROP --encoder_layerdrop
opt_flag DROPOUT_INPUT --dropout_input
opt_flag DROPOUT_FEATURES --dropout_features
opt_flag DROPOUT --dropout
opt_flag ATTENTION_DROPOUT --attention_dropout
bool_flag CONV_BIAS --conv_bias
opt_flag ENCODER_LAYERS --encoder_layers
opt_flag ENCODER_EMBED_DIM --encoder_embed_dim
opt_flag ENCODER_FFN_EMBED_DIM --encoder_ffn_embed_dim
opt_flag ENCODER_ATTENTION_HEADS --encoder_attention_heads
opt_flag FEATURE_GRAD_MULT --feature_grad_mult
if [ -n "${HOURGLASS_CONFIG:-}" ]; then
    ARGS+=(--hourglass_transformer "$HOURGLASS_CONFIG")
elif [ -n "$PRESET" ] && [ -n "${HOURGLASS_CONFIG+x}" ]; then
    ARGS+=(--hourglass_transformer "") # an explicit empty value turns a preset's Hourglass off
fi
bool_flag NO_SAVE --no_save
ARGS+=(--save_frequency "$SAVE_FREQUENCY")
opt_flag EPOCHS_THIS_JOB --epochs_this_job
opt_flag SAVE_INTERVAL_UPDATES --save_interval_updates
opt_flag TF32 --tf32
# fixed recipe flags
ARGS+=(--clip_norm 25 --weight_decay 0.01 --lr_policy poly --lr_poly_power 1.0 --skip_invalid_size_inputs_valid_test
    --infonce --quantize_targets --mha pyt)
device_flags

# --- files (last, so that a mistyped value is reported first; only warnings under DRY_RUN) -------------------------
require_dir DATASET_DIR
require_subset DATASET_DIR TRAIN_SUBSET
require_subset DATASET_DIR VALID_SUBSET

recipe_env
echo "pretrain: FP16=$FP16, BF16=$BF16, ${NUM_NODES}x${NUM_GPUS}x(${MAX_TOKENS}x${NUM_CONCAT_BATCHES})x${UPDATE_FREQ}" \
    "(nodes x GPUs x (max_tokens x concat batches) x update_freq)${PRESET:+, preset $PRESET}"
is_dry_run || mkdir -p "$OUTPUT_DIR"
launch train.py pretrain ${ARGS[@]+"${ARGS[@]}"} "$@"
