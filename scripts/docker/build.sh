#!/usr/bin/env bash
# Build the wav2vec2 image from the repository's Dockerfile.
#   FROM_IMAGE_NAME  base image (default: the Dockerfile's NGC PyTorch tag)
#   IMAGE            image name (default wav2vec2)
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=${IMAGE:-wav2vec2}

BUILD_ARGS=()
if [ -n "${FROM_IMAGE_NAME:-}" ]; then BUILD_ARGS+=(--build-arg "FROM_IMAGE_NAME=$FROM_IMAGE_NAME"); fi
cmd=(docker build "$REPO_ROOT" --rm -t "$IMAGE" ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
