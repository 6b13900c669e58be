#!/usr/bin/env bash
# Download, verify and extract LibriSpeech into $DATASET_DIR (tarballs unpack into
# $DATASET_DIR/LibriSpeech/<subset>/...).
#
# Environment (reference names and defaults):
#   DATASET_DIR  destination (default /datasets/)
#   SUBSETS      subsets (default: the 7 LibriSpeech subsets)
#   PYTHON       interpreter (default: <repo>/.venv/bin/python when present, else python3)
# Extra arguments go to utils/download_librispeech.py, e.g. --skip_checksum, --skip_extract,
# -e EXTRACT_DIR, --base_url URL (mirror, local directory or file:// URL). A partial download
# (<subset>.tar.gz.tmp) is resumed; a checksum mismatch stops with an error.
set -eu

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

DATASET_DIR=${DATASET_DIR:-/datasets/}
SUBSETS=${SUBSETS:-"train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"}

# shellcheck disable=SC2086  # SUBSETS is a word list
"$PYTHON" -m utils.download_librispeech "$DATASET_DIR" --subsets $SUBSETS "$@"
