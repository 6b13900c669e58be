#!/usr/bin/env bash
# wav2vec 2.0 Base pre-training (the recipe of the published results: Hourglass [2,(8,4),2], 8 GPUs x 8 concatenated
# batches of 1.4M samples, 400k updates). Sets the Base values, then runs pretrain_large.sh (the engine), which reads
# every other variable; extra arguments are appended to the train.py command. docs/SCRIPTS.md lists the variables.
#
#   NUM_GPUS=8 bash scripts/pretrain_base.sh
#   PRESET=tiny MAX_TOKENS=64000 MAX_UPDATE=10 DATASET_DIR=data/synthetic/LibriSpeech TRAIN_SUBSET=train \
#       VALID_SUBSET=dev-other bash scripts/pretrain_base.sh          # a CPU smoke run (model from --preset tiny)
set -a # export everything set here to the engine
set -euo pipefail

OUTPUT_DIR=${OUTPUT_DIR:-results/pretrain_base}
MAX_TOKENS=${MAX_TOKENS:-1400000}
NUM_CONCAT_BATCHES=${NUM_CONCAT_BATCHES:-8}
UPDATE_FREQ=${UPDATE_FREQ:-1}
MAX_SAMPLE_SIZE=${MAX_SAMPLE_SIZE:-250000}
MAX_UPDATE=${MAX_UPDATE:-400000}
LEARNING_RATE=${LEARNING_RATE:-0.0005}
LOSS_WEIGHTS=${LOSS_WEIGHTS:-"0.1 10.0"}
# The Base architecture. With PRESET set (ours: base, large or tiny) the preset supplies these instead and only the
# ones set in the environment are passed.
if [ -z "${PRESET:-}" ]; then
    NORMALIZE=${NORMALIZE:-false}
    MASK_PROB=${MASK_PROB:-0.65}
    EXTRACTOR_MODE=${EXTRACTOR_MODE:-default}
    LAYER_NORM_FIRST=${LAYER_NORM_FIRST:-false}
    FINAL_DIM=${FINAL_DIM:-256}
    LATENT_TEMP=${LATENT_TEMP:-"2.0 0.5 0.999995"}
    ENCODER_LAYERDROP=${ENCODER_LAYERDROP:-0.05}
    DROPOUT_INPUT=${DROPOUT_INPUT:-0.1}
    DROPOUT_FEATURES=${DROPOUT_FEATURES:-0.1}
    DROPOUT=${DROPOUT:-0.1}
    ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-0.1}
    CONV_BIAS=${CONV_BIAS:-false}
    ENCODER_LAYERS=${ENCODER_LAYERS:-12}
    ENCODER_EMBED_DIM=${ENCODER_EMBED_DIM:-768}
    ENCODER_FFN_EMBED_DIM=${ENCODER_FFN_EMBED_DIM:-3072}
    ENCODER_ATTENTION_HEADS=${ENCODER_ATTENTION_HEADS:-12}
    FEATURE_GRAD_MULT=${FEATURE_GRAD_MULT:-0.1}
    HOURGLASS_CONFIG=${HOURGLASS_CONFIG-"[2,(8,4),2]"} # only when unset: HOURGLASS_CONFIG= gives the plain 12 layers
fi
set +a

exec bash "$(dirname "${BASH_SOURCE[0]}")/pretrain_large.sh" "$@"
