#!/usr/bin/env bash
# Inference latency/throughput benchmark: NUM_WARMUP_REPEATS + NUM_REPEATS passes over VALID_SUBSET with inference.sh
# (the warm-up batches are not measured); inference.py logs throughput and latency percentiles, whose final summary
# is written to $OUTPUT_DIR/benchmark_summary.json. Extra arguments are appended to the inference.py command.
#
#   FINETUNED_MODEL=results/finetune_base_960h/wav2vec2_update320000.pt BATCH_SIZE=16 BF16=true \
#       bash scripts/inference_benchmark.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DATASET_DIR=${DATASET_DIR:-/datasets/LibriSpeech}
VALID_SUBSET=${VALID_SUBSET:-test-other}
BF16=${BF16:-false}
FP16=${FP16:-false}
AMP=${AMP:-false}
NUM_GPUS=${NUM_GPUS:-1}
BATCH_SIZE=${BATCH_SIZE:-1}
NUM_REPEATS=${NUM_REPEATS:-10}
NUM_WARMUP_REPEATS=${NUM_WARMUP_REPEATS:-2}

require_int NUM_GPUS 1
require_int BATCH_SIZE 1
require_int NUM_REPEATS 1
require_int NUM_WARMUP_REPEATS 0
require_bool FP16
require_bool BF16
require_bool AMP
require_exclusive FP16 BF16
require_exclusive AMP BF16
require_dir DATASET_DIR

PREC=$(precision_name)
OUTPUT_DIR=${OUTPUT_DIR:-results/base_inference_benchmark_bs${BATCH_SIZE}_${PREC}}
LABELS="$DATASET_DIR/$VALID_SUBSET.ltr"
if [ -f "$LABELS" ]; then
    NUM_SAMPLES=$(wc -l <"$LABELS")
    NUM_SAMPLES=$((NUM_SAMPLES + 0))
    ((NUM_SAMPLES > 0)) || die "VALID_SUBSET='$VALID_SUBSET': $LABELS is empty"
else
    _w2v_missing "VALID_SUBSET='$VALID_SUBSET': $LABELS not found (the utterance count comes from it)"
    NUM_SAMPLES=1
fi
NUM_BATCHES=$(((NUM_SAMPLES + BATCH_SIZE - 1) / BATCH_SIZE))
NUM_STEPS=$((NUM_BATCHES * NUM_REPEATS))
NUM_WARMUP_STEPS=$((NUM_BATCHES * NUM_WARMUP_REPEATS))
# a timed run needs no predictions file unless asked for
PREDICTION_FILE=${PREDICTION_FILE:-}
echo "inference benchmark: $NUM_SAMPLES utterances, batch size $BATCH_SIZE -> $NUM_BATCHES batches;" \
    "$NUM_WARMUP_REPEATS + $NUM_REPEATS passes = $NUM_WARMUP_STEPS warm-up + $NUM_STEPS measured steps"
export DATASET_DIR VALID_SUBSET BF16 FP16 AMP NUM_GPUS BATCH_SIZE OUTPUT_DIR NUM_STEPS NUM_WARMUP_STEPS PREDICTION_FILE

bash "$W2V_SCRIPTS_DIR/inference.sh" "$@"
write_benchmark_summary "${LOG_FILE:-$OUTPUT_DIR/nvlog.json}" "$OUTPUT_DIR/benchmark_summary.json"
