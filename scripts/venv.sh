# Sourced by the README's two commands: makes sure the project's virtual environment exists and
# sets PY to its Python. Nothing is installed outside it, so the commands work with a system
# Python that refuses global installs ("externally-managed-environment", PEP 668).
#
#   FASTOPT_VENV  the environment's folder (default: .venv in the repository root); an existing
#                 virtual environment (or conda env) there is reused as it is
#   PYTHON        the Python that creates it (default: python3; 3.11 or newer)
VENV=${FASTOPT_VENV:-.venv}
BASE_PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "fastopt needs Python 3.11 or newer; '$BASE_PY' is $("$BASE_PY" --version 2>&1 || echo missing)." >&2
        echo "Set PYTHON=/path/to/python3.11 (or newer)." >&2
        exit 1
    fi
    echo "Creating the virtual environment $VENV with $("$BASE_PY" --version 2>&1) (FASTOPT_VENV to change)" >&2
    if ! "$BASE_PY" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package
        # (python3-venv). Make the environment without pip, then bring pip in from a wheel
        # that the system's pip downloads (downloading is allowed where installing is not).
        rm -rf "$VENV"
        "$BASE_PY" -m venv --without-pip "$VENV"
        wheels=$(mktemp -d)
        if ! "$BASE_PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" pip; then
            rm -rf "$VENV" "$wheels"
            echo "Could not create $VENV: this Python has neither ensurepip nor pip." >&2
            echo "Install python3-venv (Debian/Ubuntu: apt-get install python3-venv) and run again." >&2
            exit 1
        fi
        whl=$(ls "$wheels"/pip-*.whl)
        "$VENV/bin/python" "$whl/pip" install --quiet --no-index "$whl"
        rm -rf "$wheels"
    fi
fi
PY="$VENV/bin/python"
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"

# install_fastopt EXTRAS: builds fastopt's wheel exactly as a release is built (abi3, one wheel
# for CPython 3.11+, linked against glibc 2.17 through zig: manylinux2014), checks its platform
# tag with auditwheel, and installs it into the environment with the given extras. Sets WHEEL.
install_fastopt() {
    "$PY" -m pip install --quiet --upgrade "maturin>=1.14,<2" "ziglang>=0.13" "auditwheel>=6"
    echo "Building fastopt's Rust extension (release, manylinux2014 abi3 wheel); the first build" >&2
    echo "compiles for a few minutes, later ones take seconds..." >&2
    rm -f dist/fastopt-*.whl
    "$PY" -m maturin build --release --zig --compatibility manylinux2014 --out dist
    WHEEL=$(ls dist/fastopt-*-cp311-abi3-manylinux*.whl)
    if ! "$PY" -m auditwheel show "$WHEEL" | tr -s ' \n' ' ' | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"'; then
        "$PY" -m auditwheel show "$WHEEL" >&2
        echo "$WHEEL is not manylinux2014 (glibc 2.17) compatible" >&2
        exit 1
    fi
    echo "Installing $WHEEL with [$1] into $VENV (the first time downloads the dependencies: torch, for the tests, is about 4 GB)..." >&2
    "$PY" -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
    "$PY" -m pip install --quiet "$WHEEL[$1]"
}
