#!/usr/bin/env bash
# Installs fastopt with its demo extra (matplotlib for the figures, tqdm for the progress bar)
# into the project's virtual environment (.venv, or FASTOPT_VENV; created with PYTHON, default
# python3), building the Rust extension, and runs the demo. Options go to `fastopt demo`
# (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

install_fastopt demo
"$PY" -m fastopt demo "$@"
