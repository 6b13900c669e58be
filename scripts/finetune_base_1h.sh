#!/usr/bin/env bash
# Fine-tune the pre-trained Base model on the Libri-light 1h subset (train-1h; 13k updates).
# Sets the values below (each can be overridden from the environment), then runs finetune_vox_960h.sh (the engine),
# which reads every other variable; extra arguments are appended to the train.py command. See docs/SCRIPTS.md.
set -a # export everything set here to the engine
set -euo pipefail

DATASET_DIR=${DATASET_DIR:-/datasets/LibriSpeech}
TRAIN_SUBSET=${TRAIN_SUBSET:-train-1h}
OUTPUT_DIR=${OUTPUT_DIR:-results/finetune_base_1h}
PRETRAINED_MODEL=${PRETRAINED_MODEL:-results/pretrain_base/wav2vec2_update400000.pt}
MAX_TOKENS=${MAX_TOKENS:-3200000}
NUM_CONCAT_BATCHES=${NUM_CONCAT_BATCHES:-1}
UPDATE_FREQ=${UPDATE_FREQ:-1}
LEARNING_RATE=${LEARNING_RATE:-0.00005}
FREEZE_FINETUNE_UPDATES=${FREEZE_FINETUNE_UPDATES:-10000}
MAX_UPDATE=${MAX_UPDATE:-13000}
MASK_PROB=${MASK_PROB:-0.65}
MASK_CHANNEL_PROB=${MASK_CHANNEL_PROB:-0.25}
set +a

exec bash "$(dirname "${BASH_SOURCE[0]}")/finetune_vox_960h.sh" "$@"
