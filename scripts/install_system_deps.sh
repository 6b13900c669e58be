#!/usr/bin/env bash
# Install the system (non-Python) dependencies of the data tools.
#
# Currently only `espeak-ng`, the speech synthesiser used by utils/synthetic_corpus.py
# (scripts/make_synthetic_corpus.sh) to build the embedded synthetic speech corpus.
# LibriSpeech download / filelist tools need nothing beyond the Python environment.
#
# Behaviour:
#   * does nothing when `espeak-ng` is already on PATH;
#   * on Debian/Ubuntu runs `apt-get update` and `apt-get install -y --no-install-recommends espeak-ng`,
#     directly when run as root, through `sudo` otherwise (when sudo is available);
#   * otherwise prints what to install and exits with status 1.
#
# Environment: APT_GET (default apt-get), SUDO (default: sudo when not root, empty when root).
set -euo pipefail

if command -v espeak-ng >/dev/null 2>&1; then
    echo "espeak-ng already installed: $(command -v espeak-ng) ($(espeak-ng --version 2>/dev/null | head -n 1))"
    exit 0
fi

APT_GET=${APT_GET:-apt-get}
if ! command -v "$APT_GET" >/dev/null 2>&1; then
    echo "ERROR: espeak-ng is missing and '$APT_GET' is not available on this system." >&2
    echo "       Install the 'espeak-ng' package with your system's package manager" >&2
    echo "       (e.g. 'brew install espeak-ng', 'dnf install espeak-ng'), then re-run." >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=${SUDO:-}
elif command -v sudo >/dev/null 2>&1; then
    SUDO=${SUDO:-sudo}
else
    echo "ERROR: espeak-ng is missing; run this script as root (or install sudo):" >&2
    echo "       $APT_GET update && $APT_GET install -y --no-install-recommends espeak-ng" >&2
    exit 1
fi

echo "Installing espeak-ng with $APT_GET ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO "$APT_GET" update
$SUDO "$APT_GET" install -y --no-install-recommends espeak-ng

if ! command -v espeak-ng >/dev/null 2>&1; then
    echo "ERROR: installation finished but espeak-ng is still not on PATH." >&2
    exit 1
fi
echo "espeak-ng installed: $(command -v espeak-ng) ($(espeak-ng --version 2>/dev/null | head -n 1))"
