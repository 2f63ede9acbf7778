#!/usr/bin/env bash
# Installs fastopt (building the Rust extension) and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet "maturin>=1.14,<2"
"$PY" -m pip install --quiet --no-build-isolation -e .
"$PY" -m fastopt demo "$@"
