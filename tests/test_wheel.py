"""The release wheel (built by the test command: manylinux2014, abi3) installs into a fresh
virtual environment with nothing but NumPy and works there: no compiler, no torch, no extras."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import _ci


@pytest.fixture(scope="module")
def wheel() -> Path:
    path = os.environ.get("FASTOPT_WHEEL")
    if not path:
        if _ci():
            pytest.fail("FASTOPT_WHEEL is not set: run the suite through scripts/test.sh, which builds the wheel")
        pytest.skip("FASTOPT_WHEEL is not set (scripts/test.sh builds the wheel and sets it)")
    return Path(path)


def test_wheel_tags_and_contents(wheel):
    assert wheel.name.endswith("-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
    assert "fastopt/_fastopt.abi3.so" in names and "fastopt/py.typed" in names and "fastopt/_fastopt.pyi" in names
    assert "fastopt/backends/kernels.cu" in names  # (the GPU backend compiles it on first use)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires == ["Requires-Dist: numpy>=1.24"], requires


def test_wheel_installs_and_runs_in_a_clean_environment(wheel, tmp_path):
    env_dir = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    code = (
        "import sys, numpy as np, fastopt as fo\n"
        "w = fo.Parameter(np.ones(1000, np.float32))\n"
        "opt = fo.optim.Adam([w], lr=0.1)\n"
        "w.grad = np.ones(1000, np.float32)\n"
        "opt.step()\n"
        "assert np.allclose(w.data, 0.9), w.data[:3]\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
        "print(fo.__file__)\n"
    )
    run = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert str(env_dir) in run.stdout  # imported from the clean environment, not the source tree
    info = subprocess.run([str(env_dir / "bin" / "fastopt"), "info"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "SIMD level" in info.stdout and "torch      not installed" in info.stdout
