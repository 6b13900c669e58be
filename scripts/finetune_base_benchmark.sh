#!/usr/bin/env bash
# Fine-tuning throughput benchmark: NUM_WARMUP_EPOCHS + NUM_EPOCHS epochs of finetune_base_960h.sh without
# checkpoints; train.py averages the last NUM_EPOCHS epochs into its train_avg_* summary, which is then written to
# $OUTPUT_DIR/benchmark_summary.json. Extra arguments are appended to the train.py command.
#
#   BF16=true NUM_GPUS=8 bash scripts/finetune_base_benchmark.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

NUM_WARMUP_EPOCHS=${NUM_WARMUP_EPOCHS:-2}
NUM_EPOCHS=${NUM_EPOCHS:-5}
PRETRAINED_MODEL=${PRETRAINED_MODEL:-results/pretrain_base/wav2vec2_update400000.pt}
TRAIN_SUBSET=${TRAIN_SUBSET:-train-full-960}
FP16=${FP16:-false}
BF16=${BF16:-false}
default_num_gpus 8 # NUM_GPUS: 8, or 1 on a machine without CUDA
MAX_TOKENS=${MAX_TOKENS:-3200000}
NUM_CONCAT_BATCHES=${NUM_CONCAT_BATCHES:-1}
UPDATE_FREQ=${UPDATE_FREQ:-1}

require_int NUM_WARMUP_EPOCHS 0
require_int NUM_EPOCHS 1
require_int NUM_GPUS 1
require_int MAX_TOKENS 1
require_int NUM_CONCAT_BATCHES 1
require_int UPDATE_FREQ 1
require_bool FP16
require_bool BF16
require_exclusive FP16 BF16

PREC=$(precision_name)
OUTPUT_DIR=${OUTPUT_DIR:-results/finetune_base_benchmark_${NUM_GPUS}x${MAX_TOKENS}x${NUM_CONCAT_BATCHES}x${UPDATE_FREQ}_${PREC}}
NO_SAVE=true
EPOCHS_THIS_JOB=$((NUM_EPOCHS + NUM_WARMUP_EPOCHS))
export PRETRAINED_MODEL TRAIN_SUBSET FP16 BF16 NUM_GPUS MAX_TOKENS NUM_CONCAT_BATCHES UPDATE_FREQ OUTPUT_DIR NO_SAVE \
    EPOCHS_THIS_JOB

bash "$W2V_SCRIPTS_DIR/finetune_base_960h.sh" --benchmark_epochs_num "$NUM_EPOCHS" "$@"
write_benchmark_summary "$OUTPUT_DIR/nvlog.json" "$OUTPUT_DIR/benchmark_summary.json"
