#!/usr/bin/env bash
# Download, verify and extract LibriSpeech into $DATASET_DIR (tarballs unpack into
# $DATASET_DIR/LibriSpeech/<subset>/...).
#
# Environment (reference names and defaults):
#   DATASET_DIR  destination (default /datasets/)
#   SUBSETS      subsets (default: the 7 LibriSpeech subsets)
#   PYTHON       interpreter (default: <repo>/.venv/bin/python when present, else python3)
#   DRY_RUN      1/true: print the command (prefixed by "+ ") and exit 0 without downloading
# Extra arguments go to utils/download_librispeech.py, e.g. --skip_checksum, --skip_extract,
# -e EXTRACT_DIR, --base_url URL (mirror, local directory or file:// URL). A partial download
# (<subset>.tar.gz.tmp) is resumed; a checksum mismatch stops with an error.
set -eu

# PYTHON (default <repo>/.venv/bin/python, else python3), quote_words, is_dry_run
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
export PYTHONPATH="$W2V_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

DATASET_DIR=${DATASET_DIR:-/datasets/}
SUBSETS=${SUBSETS:-"train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"}

DRY=false
if is_dry_run; then DRY=true; fi # a value other than 1/true/0/false stops here
read -r -a SUBSET_LIST <<<"$SUBSETS"
CMD=("$PYTHON" -m utils.download_librispeech "$DATASET_DIR" --subsets ${SUBSET_LIST[@]+"${SUBSET_LIST[@]}"} "$@")
echo "+ $(quote_words "${CMD[@]}")"
if [ "$DRY" = true ]; then exit 0; fi
exec "${CMD[@]}"
