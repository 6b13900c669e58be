#!/usr/bin/env bash
# The whole job on the embedded synthetic corpus, on CPU: corpus -> pretrain (tiny) -> fine-tune -> infer -> WER.
#
#   bash scripts/demo.sh            (or `make demo`, which also builds .venv)
#
# Every stage resumes when interrupted and is skipped when finished with the same settings; a stage whose settings
# changed is rerun from scratch (its old output is moved aside), never silently reused.
#
# Environment (defaults in brackets):
#   RESULTS_DIR     [results/demo]   all outputs: checkpoints, dllogger logs, TensorBoard events, PNG curves
#   DATA_DIR        [data/synthetic] corpus root (LibriSpeech layout under $DATA_DIR/LibriSpeech)
#   TRAIN_MINUTES   [60]   unlabelled pretraining audio       FT_SUBSET [train]  labelled fine-tuning list (1 h)
#   PT_UPDATES      [1200] pretraining updates                FT_UPDATES [1600]       fine-tuning updates
#   PT_LR           [0.001]                                   FT_LR      [0.002]
#                   (pretraining at 0.002 collapsed the transformer in 3 runs of 4; 0.001 did not in 5 of 5: docs/RESULTS.md)
#   MAX_TOKENS      [300000] samples per batch                 THREADS    [all cores]
#   SEED            [1]    seed of pretraining and fine-tuning (init, masks, negatives, batch order)
#   HOURGLASS       []     e.g. "[1,(2,2),1]": pretrain the tiny model with a Hourglass encoder
#   SKIP_PRETRAIN   [0]    1: fine-tune from random initialisation (for the study in docs/RESULTS.md)
#   INIT_CHECKPOINT []     fine-tune from this pretrained checkpoint instead of pretraining here
#   DECODER         [lm]   lm: CTC beam search with a lexicon and a 4-gram word LM estimated from the transcripts of the
#                          (unlabelled) pretraining audio, $DATA/train.wrd; greedy: argmax decoding (the reference's).
#                          Both WERs are logged and printed either way when DECODER=lm.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

RESULTS_DIR=${RESULTS_DIR:-results/demo}
DATA_DIR=${DATA_DIR:-data/synthetic}
TRAIN_MINUTES=${TRAIN_MINUTES:-60}
FT_SUBSET=${FT_SUBSET:-train}
PT_UPDATES=${PT_UPDATES:-1200}
FT_UPDATES=${FT_UPDATES:-1600}
PT_LR=${PT_LR:-0.001}
FT_LR=${FT_LR:-0.002}
HOURGLASS=${HOURGLASS:-}
INIT_CHECKPOINT=${INIT_CHECKPOINT:-}
MAX_TOKENS=${MAX_TOKENS:-300000}
SKIP_PRETRAIN=${SKIP_PRETRAIN:-0}
DECODER=${DECODER:-lm}
THREADS=${THREADS:-$(nproc)}
SEED=${SEED:-1}
export OMP_NUM_THREADS=$THREADS

for v in TRAIN_MINUTES PT_UPDATES FT_UPDATES MAX_TOKENS THREADS SEED; do
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then echo "ERROR: $v must be a positive integer, got '${!v}'" >&2; exit 2; fi
done
case "$SKIP_PRETRAIN" in 0|1) ;; *) echo "ERROR: SKIP_PRETRAIN must be 0 or 1, got '$SKIP_PRETRAIN'" >&2; exit 2;; esac
case "$DECODER" in lm|greedy) ;; *) echo "ERROR: DECODER must be lm or greedy, got '$DECODER'" >&2; exit 2;; esac

mkdir -p "$RESULTS_DIR"
START=$(date +%s)
DATA="$DATA_DIR/LibriSpeech"

# run_stage NAME CMD... : skip when $RESULTS_DIR/NAME/.done holds the same command; rerun cleanly if it changed
run_stage() {
    local name=$1; shift
    local dir="$RESULTS_DIR/$name" sig
    sig=$(printf '%q ' "$@")
    if [ -f "$dir/.done" ] && [ "$(cat "$dir/.done")" = "$sig" ]; then
        echo "== $name: already done (delete $dir/.done to rerun)"; return 0
    fi
    if [ -d "$dir" ] && [ -f "$dir/.cmd" ] && [ "$(cat "$dir/.cmd")" != "$sig" ]; then
        local old="$dir.stale.$(date +%s)"
        echo "== $name: settings changed; moving the old output to $old"
        mv "$dir" "$old"
    fi
    mkdir -p "$dir"
    printf '%s' "$sig" > "$dir/.cmd"
    echo "== $name: $sig"
    "$@"
    printf '%s' "$sig" > "$dir/.done"
}

echo "== corpus: $DATA ($TRAIN_MINUTES min of training audio)"
OUT_DIR="$DATA_DIR" TRAIN_MINUTES="$TRAIN_MINUTES" PYTHON="$PYTHON" bash scripts/make_synthetic_corpus.sh

COMMON=(--data "$DATA" --cpu --num_workers 1 --log_frequency 25 --max_tokens "$MAX_TOKENS" --seed "$SEED")

if [ -n "$INIT_CHECKPOINT" ]; then
    [ -f "$INIT_CHECKPOINT" ] || { echo "ERROR: INIT_CHECKPOINT=$INIT_CHECKPOINT does not exist" >&2; exit 2; }
    INIT="$INIT_CHECKPOINT"
elif [ "$SKIP_PRETRAIN" = 0 ]; then
    HG=()
    [ -n "$HOURGLASS" ] && HG=(--hourglass_transformer "$HOURGLASS")
    run_stage pretrain "$PYTHON" train.py pretrain --preset tiny "${HG[@]}" "${COMMON[@]}" \
        --train_subset train --valid_subset dev-clean --output_dir "$RESULTS_DIR/pretrain" \
        --max_sample_size 250000 --min_sample_size 16000 --update_freq 1 \
        --max_update "$PT_UPDATES" --warmup_updates $((PT_UPDATES / 10)) --lr "$PT_LR" --clip_norm 25 \
        --save_frequency 1 --save_interval_updates 100 --resume
    INIT="$RESULTS_DIR/pretrain/wav2vec2_update$PT_UPDATES.pt"
    # a collapsed encoder (top-layer effective rank of ~2) is the usual reason fine-tuning stalls at blank output
    echo "== pretrained model: effective rank of each layer on 8 dev-clean utterances"
    "$PYTHON" -m utils.layer_rank "$INIT" --data "$DATA" --subset dev-clean --warn_below 4 \
        | tee "$RESULTS_DIR/pretrain/layer_rank.txt"
else
    run_stage random_init "$PYTHON" -m wav2vec2.init_checkpoint --preset tiny --out "$RESULTS_DIR/random_init/model.pt"
    INIT="$RESULTS_DIR/random_init/model.pt"
fi

run_stage finetune "$PYTHON" train.py finetune "${COMMON[@]}" --w2v_path "$INIT" \
    --train_subset "$FT_SUBSET" --valid_subset dev-clean --output_dir "$RESULTS_DIR/finetune" \
    --update_freq 1 --max_update "$FT_UPDATES" --lr "$FT_LR" --lr_policy exp \
    --warmup_updates $((FT_UPDATES / 10)) --hold_updates $((FT_UPDATES * 4 / 10)) \
    --initial_lr_scale 0.01 --final_lr_scale 0.05 --adam_eps 1e-8 --weight_decay 0 \
    --apply_mask --mask_prob 0.3 --mask_channel_prob 0.05 --mask_channel_length 16 \
    --feature_grad_mult 1.0 --dropout 0.0 --dropout_input 0.0 --activation_dropout 0.1 --encoder_layerdrop 0.0 \
    --save_frequency 5 --save_interval_updates 100 --resume

DECODE=()
if [ "$DECODER" = lm ]; then
    run_stage lm "$PYTHON" -m common.ngram_lm --text "$DATA/train.wrd" --dict "$DATA/dict.ltr.txt" --order 4 \
        --out_dir "$RESULTS_DIR/lm"
    DECODE=(--lexicon "$RESULTS_DIR/lm/lexicon.txt" --lm_path "$RESULTS_DIR/lm/lm.arpa")
fi

MODEL="$RESULTS_DIR/finetune/wav2vec2_update$FT_UPDATES.pt"
for split in test-clean test-other; do
    run_stage "infer_$split" "$PYTHON" inference.py --w2v_path "$MODEL" --data "$DATA" --valid_subset "$split" \
        --labels ltr --cpu --batch_size 8 --num_workers 1 --output_dir "$RESULTS_DIR/infer_$split" \
        --save_predictions "$RESULTS_DIR/infer_$split/predictions.tsv" "${DECODE[@]}"
done

echo "== curves"
for stage in pretrain finetune; do
    if [ -f "$RESULTS_DIR/$stage/nvlog.json" ]; then
        "$PYTHON" -m common.plotting "$RESULTS_DIR/$stage/nvlog.json" --out "$RESULTS_DIR/plots/$stage" \
            --csv "$RESULTS_DIR/plots/$stage/curves.csv" || true
    fi
done

"$PYTHON" -m utils.demo_summary --results "$RESULTS_DIR" --data "$DATA" --started "$START"
