#!/usr/bin/env bash
# Fine-tune the pre-trained Large (LV-60) model on LibriSpeech train-clean-100 (80k updates; effective batch 2 concatenated batches per GPU).
# Sets the values below (each can be overridden from the environment), then runs finetune_vox_960h.sh (the engine),
# which reads every other variable; extra arguments are appended to the train.py command. See docs/SCRIPTS.md.
set -a # export everything set here to the engine
set -euo pipefail

TRAIN_SUBSET=${TRAIN_SUBSET:-train-clean-100}
OUTPUT_DIR=${OUTPUT_DIR:-results/finetune_large_100h}
MAX_TOKENS=${MAX_TOKENS:-1280000}
NUM_CONCAT_BATCHES=${NUM_CONCAT_BATCHES:-2}
UPDATE_FREQ=${UPDATE_FREQ:-1}
MAX_UPDATE=${MAX_UPDATE:-80000}
MASK_PROB=${MASK_PROB:-0.5}
MASK_CHANNEL_PROB=${MASK_CHANNEL_PROB:-0.5}
set +a

exec bash "$(dirname "${BASH_SOURCE[0]}")/finetune_vox_960h.sh" "$@"
