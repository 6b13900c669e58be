#!/usr/bin/env bash
# Start a container with all GPUs (interactive on a terminal): DATASET_DIR is mounted at /datasets (the scripts' default
# DATASET_DIR=/datasets/LibriSpeech then works), the repository at /workspace/wav2vec2 (results/ lands in it).
#   DATASET_DIR  host directory with LibriSpeech/ (default <repo>/datasets)
#   IMAGE        image (default wav2vec2:latest)
# Arguments replace the default command (bash), e.g.: bash scripts/docker/run.sh bash scripts/pretrain_base.sh
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATASET_DIR=${DATASET_DIR:-$REPO_ROOT/datasets}
IMAGE=${IMAGE:-wav2vec2:latest}

if [ ! -d "$DATASET_DIR" ]; then
    echo "ERROR: DATASET_DIR='$DATASET_DIR' is not a directory (download the data first, or set DATASET_DIR)" >&2
    exit 2
fi
DATASET_DIR=$(cd "$DATASET_DIR" && pwd)
if [ $# -eq 0 ]; then set -- bash; fi

# PYTHON=python: the image's interpreter (with its CUDA torch, apex and dllogger), not a host .venv that the mounted
# checkout may carry (the scripts would otherwise prefer it)
# -t only with a terminal: docker refuses -t when stdin is not one ("the input device is not a TTY"), e.g. in a batch
# job (sbatch, nohup, CI) running `bash scripts/docker/run.sh bash scripts/pretrain_base.sh`
if [ -t 0 ]; then INTERACTIVE=-it; else INTERACTIVE=-i; fi
cmd=(docker run "$INTERACTIVE" --rm --gpus all --ipc=host
    --env PYTHONDONTWRITEBYTECODE=1 --env PYTHON=python
    -v "$DATASET_DIR:/datasets"
    -v "$REPO_ROOT:/workspace/wav2vec2"
    "$IMAGE" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
