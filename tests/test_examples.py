"""Every example a user reads runs: the ``python`` code blocks of the README and of the
documentation pages (each page's blocks in order, in one namespace, in a temporary folder),
and the ``>>>`` examples in the package's docstrings (doctests)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

import fastopt
from conftest import run_python

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
PAGES = [p for p in PAGES if "_build" not in p.parts]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_pages_have_examples():
    counted = {p.relative_to(ROOT).as_posix(): len(blocks(p)) for p in PAGES}
    assert counted["README.md"] >= 1 and counted["docs/guide/training.md"] >= 3, counted


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page, tmp_path, monkeypatch):
    if "import torch" in page.read_text():
        pytest.importorskip("torch")
    from fastopt.backends import cuda

    # Examples that import CuPy need a GPU: a page whose first example does is a GPU page,
    # skipped whole without one (benches/gpu_check.py runs docs/guide/gpu.md's examples on a
    # GPU); elsewhere only such an example is left out.
    gpu = cuda.available()
    if not gpu and "import cupy" in blocks(page)[0][1]:
        pytest.skip("the page's examples run on a GPU (CuPy and a CUDA device)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__example__"}
    for line, code in blocks(page):
        if not gpu and "import cupy" in code:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"{page.relative_to(ROOT)} line {line}: {type(e).__name__}: {e}") from e


def _modules() -> list[str]:
    names = ["fastopt"]
    for info in pkgutil.walk_packages(fastopt.__path__, "fastopt."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def test_docstring_examples_exist():
    found = 0
    for name in _modules():
        module = importlib.import_module(name)
        found += sum(len(t.examples) for t in doctest.DocTestFinder().find(module, name))
    assert found >= 20


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={"np": np, "fo": fastopt}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples in {name} failed"


def test_submodules_load_on_attribute_access():
    """``import fastopt as fo; fo.plot`` works without importing the submodule by name (PEP 562)."""
    code = ("import sys, fastopt as fo\n"
            "assert 'fastopt.data' not in sys.modules\n"
            "print(fo.data.spiral, fo.testing.gradcheck, fo.plot.lr_schedule, fo.bench.bandwidth, fo.demo.REGISTRY)\n"
            "assert 'plot' in dir(fo)\n"
            "try:\n    fo.nonexistent\nexcept AttributeError as e:\n    print(e)\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "module 'fastopt' has no attribute 'nonexistent'" in out.stdout
