#!/usr/bin/env bash
# One command for the embedded synthetic speech corpus: synthesise (espeak-ng) AND write the
# manifests, labels, dictionary and labelled fine-tuning subsets. Work already done is skipped.
#
# Environment:
#   OUT_DIR        corpus root (default <repo>/data/synthetic); audio and lists end up in
#                  $OUT_DIR/LibriSpeech (the training --data directory)
#   TRAIN_MINUTES  minutes of audio in the train split            (default 60)
#   EVAL_MINUTES   minutes of audio in each dev/test split        (default 4)
#   FT_MINUTES     sizes of the labelled fine-tuning lists, nested (default "10 30": train-10min, train-30min)
#   SEED           corpus seed; same seed -> identical files     (default 1)
#   JOBS           parallel synthesis workers                     (default 2)
#   FORCE          1: regenerate splits made with other settings (default 0)
#   PYTHON         interpreter (default: <repo>/.venv/bin/python when present, else python3)
# Splits: train, dev-clean, dev-other, test-clean, test-other (LibriSpeech layout).
# Lists:  train.{tsv,wrd,ltr}, <eval>.{tsv,wrd,ltr}, train-10min.*, train-30min.*, dict.ltr.txt
set -eu

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

OUT_DIR=${OUT_DIR:-$REPO_ROOT/data/synthetic}
TRAIN_MINUTES=${TRAIN_MINUTES:-60}
EVAL_MINUTES=${EVAL_MINUTES:-4}
FT_MINUTES=${FT_MINUTES:-"10 30"}
SEED=${SEED:-1}
JOBS=${JOBS:-2}
FORCE=${FORCE:-0}
SPLITS="train dev-clean dev-other test-clean test-other"

if ! command -v espeak-ng >/dev/null 2>&1; then
    echo "ERROR: espeak-ng is not installed; run: bash scripts/install_system_deps.sh" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
DATA_DIR="$OUT_DIR/LibriSpeech"

EXTRA=()
if [ "$FORCE" = "1" ]; then EXTRA+=(--force); fi
# shellcheck disable=SC2086  # SPLITS is a word list
"$PYTHON" -m utils.synthetic_corpus --out-dir "$OUT_DIR" --train-minutes "$TRAIN_MINUTES" \
    --eval-minutes "$EVAL_MINUTES" --seed "$SEED" --jobs "$JOBS" --splits $SPLITS ${EXTRA[@]+"${EXTRA[@]}"}

STAMP="$DATA_DIR/.filelists.stamp"
FINGERPRINT="seed=$SEED train=$TRAIN_MINUTES eval=$EVAL_MINUTES ft=$FT_MINUTES splits=$SPLITS"
UP_TO_DATE=0
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FINGERPRINT" ]; then
    UP_TO_DATE=1
    for SPLIT in $SPLITS; do
        if [ "$DATA_DIR/$SPLIT/.synthetic_complete.json" -nt "$STAMP" ]; then UP_TO_DATE=0; fi
    done
fi

if [ "$UP_TO_DATE" = "1" ]; then
    echo "filelists in $DATA_DIR are up to date, skipping"
else
    rm -f "$STAMP"
    DATASET_DIR="$DATA_DIR" FILELISTS_DIR="$DATA_DIR" EXT=flac SUBSETS="$SPLITS" \
        TRAIN_SUBSETS=train TRAIN_NAME=train PYTHON="$PYTHON" bash "$REPO_ROOT/scripts/generate_filelists.sh"
    # shellcheck disable=SC2086  # FT_MINUTES is a word list
    "$PYTHON" -m utils.select_subset "$DATA_DIR/train" --minutes $FT_MINUTES --seed "$SEED"
    echo "$FINGERPRINT" > "$STAMP"
fi

"$PYTHON" -m utils.validate --data "$DATA_DIR" --subset train --labels ltr | tail -n 1
FT_LISTS=""
for M in $FT_MINUTES; do FT_LISTS="$FT_LISTS${FT_LISTS:+, }train-${M}min"; done
echo "synthetic corpus ready: --data $DATA_DIR (train: train, valid: dev-clean/dev-other, fine-tune: ${FT_LISTS:-none})"
