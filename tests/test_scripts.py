"""The README's commands set up their own virtual environment: scripts/venv.sh creates it with
the given Python, also where that Python lacks venv's pip bootstrap (Debian and Ubuntu without
python3-venv), reuses an existing one, and refuses a Python older than 3.11."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _source_venv(tmp_path: Path, python: str, venv: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTOPT_VENV": str(venv), "PYTHON": python}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["bash", "-c", 'set -euo pipefail; source scripts/venv.sh; echo "PY=$PY"'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _fake_python(tmp_path: Path, body: str) -> str:
    path = tmp_path / "python3"
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_creates_the_environment_and_reuses_it(tmp_path):
    venv = tmp_path / "env"
    first = _source_venv(tmp_path, sys.executable, venv)
    assert first.returncode == 0, first.stderr
    assert f"PY={venv}/bin/python" in first.stdout and "Creating the virtual environment" in first.stderr
    assert (venv / "pyvenv.cfg").exists()
    assert subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True).returncode == 0
    again = _source_venv(tmp_path, sys.executable, venv)
    assert again.returncode == 0 and "Creating" not in again.stderr


def test_without_ensurepip_pip_comes_from_a_downloaded_wheel(tmp_path):
    """A Python whose `-m venv` fails as Debian's does without python3-venv."""
    fake = _fake_python(tmp_path, (
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ "$3" != "--without-pip" ]; then\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not available." >&2\n'
        '  exit 1\n'
        'fi\n'
        f'exec {sys.executable} "$@"\n'
    ))
    venv = tmp_path / "env"
    out = _source_venv(tmp_path, fake, venv)
    assert out.returncode == 0, out.stderr
    version = subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and str(venv) in version.stdout


def test_refuses_an_old_python(tmp_path):
    fake = _fake_python(tmp_path, 'if [ "$1" = "--version" ]; then echo "Python 3.8.10"; exit 0; fi\nexit 1\n')
    out = _source_venv(tmp_path, fake, tmp_path / "env")
    assert out.returncode != 0 and "needs Python 3.11 or newer" in out.stderr
    assert not (tmp_path / "env").exists()
