#!/usr/bin/env bash
# Installs everything the tests need and runs them all: the Rust core's tests, then pytest.
# Works on a fresh machine with Rust and Python 3.11+ (torch, ~3 GB, is downloaded once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

"$PY" -m pip install --quiet "maturin>=1.14,<2"
# Builds the extension once (release, abi3) and installs the package with its test extras.
"$PY" -m pip install --quiet --no-build-isolation -e ".[test]"

cargo test -p fastopt-core --release
"$PY" -m pytest -q "$@"
