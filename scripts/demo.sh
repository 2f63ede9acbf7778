#!/usr/bin/env bash
# Installs fastopt with its demo extra (building the Rust extension; matplotlib for figures,
# tqdm for the progress bar) and runs the demo. Options go to `fastopt demo` (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet "maturin>=1.14,<2"
"$PY" -m pip install --quiet --no-build-isolation -e ".[demo]"
"$PY" -m fastopt demo "$@"
