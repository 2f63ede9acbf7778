#!/usr/bin/env bash
# Installs everything the tests need into the project's virtual environment (.venv, or
# FASTOPT_VENV; created with PYTHON, default python3) and runs them all: the Rust core's tests,
# pytest (which also runs the examples of the README, of the docs and of the docstrings, and
# installs the wheel in a clean environment), and the documentation build with warnings as
# errors. fastopt is tested as the wheel a release ships (manylinux2014, abi3), built once.
# Works on a fresh machine with Rust and Python 3.11+; torch (about 4 GB with its CUDA
# libraries) is downloaded into the environment the first time. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

install_fastopt test,docs
export FASTOPT_WHEEL="$WHEEL"

cargo test -p fastopt-core --profile core-test
"$PY" -m pytest -q "$@"
"$PY" -m mypy  # the package against its type annotations and the compiled module's stub
# The documentation site, warnings as errors.
rm -rf docs/_build
"$PY" -m sphinx -W --keep-going -q -b html docs docs/_build/html
echo "docs built: docs/_build/html/index.html"
