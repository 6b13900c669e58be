#!/usr/bin/env bash
# Build manifests (.tsv), labels (.wrd, .ltr), the combined training list and dict.ltr.txt for
# LibriSpeech (or any corpus in LibriSpeech layout, e.g. the synthetic corpus).
#
# Environment (reference names and defaults, plus SUBSETS / TRAIN_SUBSETS / TRAIN_NAME):
#   DATASET_DIR    audio root holding <subset>/<spk>/<chapter>/...   (default /datasets/LibriSpeech)
#   FILELISTS_DIR  where the lists go                                   (default $DATASET_DIR)
#   EXT            audio extension, flac or wav                         (default flac)
#   SUBSETS        subsets to list          (default: the 7 LibriSpeech subsets)
#   TRAIN_SUBSETS  subsets combined, in order, into $TRAIN_NAME
#                  (default "train-clean-100 train-clean-360 train-other-500")
#   TRAIN_NAME     name of the combined training list (default train-full-960); when it is the only
#                  training subset itself, nothing is combined
#   PYTHON         interpreter (default: <repo>/.venv/bin/python when present, else python3)
# Outputs: $FILELISTS_DIR/<subset>.{tsv,wrd,ltr}, $FILELISTS_DIR/$TRAIN_NAME.{tsv,wrd,ltr},
#          $FILELISTS_DIR/dict.ltr.txt (from $TRAIN_NAME.ltr).
set -eu

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

DATASET_DIR=${DATASET_DIR:-/datasets/LibriSpeech}
FILELISTS_DIR=${FILELISTS_DIR:-$DATASET_DIR}
EXT=${EXT:-flac}
SUBSETS=${SUBSETS:-"train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"}
TRAIN_SUBSETS=${TRAIN_SUBSETS:-"train-clean-100 train-clean-360 train-other-500"}
TRAIN_NAME=${TRAIN_NAME:-train-full-960}

# a mistyped DATASET_DIR is one error line (and no directory is created for it); so is the download directory given
# instead of the LibriSpeech folder inside it (download_data.sh unpacks into $DATASET_DIR/LibriSpeech)
if [ ! -d "$DATASET_DIR" ]; then
    echo "ERROR: DATASET_DIR='$DATASET_DIR' is not a directory" >&2
    exit 1
fi
FOUND=0
for SUBSET in $SUBSETS; do
    if [ -d "$DATASET_DIR/$SUBSET" ]; then FOUND=1; fi
done
if [ "$FOUND" = 0 ] && [ -d "$DATASET_DIR/LibriSpeech" ]; then
    echo "ERROR: DATASET_DIR='$DATASET_DIR' holds none of the subsets ($SUBSETS) but a LibriSpeech folder:" \
        "use DATASET_DIR='${DATASET_DIR%/}/LibriSpeech'" >&2
    exit 1
fi

mkdir -p "$FILELISTS_DIR"

for SUBSET in $SUBSETS; do
    if [ ! -d "$DATASET_DIR/$SUBSET" ]; then
        echo "ERROR: $DATASET_DIR/$SUBSET does not exist; skipping."
        continue
    fi
    "$PYTHON" -m utils.generate_filelist --extension "$EXT" "$DATASET_DIR/$SUBSET" "$FILELISTS_DIR/$SUBSET.tsv"
    "$PYTHON" -m utils.libri_labels "$FILELISTS_DIR/$SUBSET.tsv" --output-dir "$FILELISTS_DIR" --output-name "$SUBSET"
done

PRESENT=()
MISSING=()
for SUBSET in $TRAIN_SUBSETS; do
    if [ -f "$FILELISTS_DIR/$SUBSET.tsv" ] && [ -d "$DATASET_DIR/$SUBSET" ]; then
        PRESENT+=("$SUBSET")
    else
        MISSING+=("$SUBSET")
    fi
done

if [ ${#PRESENT[@]} -eq 0 ]; then
    echo "ERROR: none of the training subsets ($TRAIN_SUBSETS) is present; $TRAIN_NAME and dict.ltr.txt not written."
    exit 1
fi
if [ ${#MISSING[@]} -gt 0 ]; then
    echo "WARNING: $TRAIN_NAME is built without: ${MISSING[*]}"
fi

if [ ${#PRESENT[@]} -eq 1 ] && [ "${PRESENT[0]}" = "$TRAIN_NAME" ]; then
    echo "$TRAIN_NAME is a single subset; nothing to combine."
else
    TSVS=()
    for SUBSET in "${PRESENT[@]}"; do TSVS+=("$FILELISTS_DIR/$SUBSET.tsv"); done
    "$PYTHON" -m utils.combine_filelists "${TSVS[@]}" -o "$FILELISTS_DIR/$TRAIN_NAME.tsv"
    for LABEL in wrd ltr; do
        FILES=()
        for SUBSET in "${PRESENT[@]}"; do FILES+=("$FILELISTS_DIR/$SUBSET.$LABEL"); done
        cat "${FILES[@]}" > "$FILELISTS_DIR/$TRAIN_NAME.$LABEL.tmp"
        mv "$FILELISTS_DIR/$TRAIN_NAME.$LABEL.tmp" "$FILELISTS_DIR/$TRAIN_NAME.$LABEL"
    done
fi

"$PYTHON" -m utils.generate_dictionary "$FILELISTS_DIR/$TRAIN_NAME.ltr" "$FILELISTS_DIR/dict.ltr.txt"
