"""Shared fixtures: torch as the oracle, and running a test under every SIMD level and
thread count."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastopt
from fastopt import _fastopt


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def torch():
    """The torch module. Outside CI a missing torch skips the test; in CI (CI=true) it fails,
    so parity can never pass by being skipped."""
    try:
        import torch as _torch
    except ImportError:
        if _ci():
            pytest.fail("torch is required for the parity tests in CI (pip install torch)")
        pytest.skip("torch is not installed")
    _torch.set_num_threads(1)
    return _torch


def oracle(module: str, what: str):
    """Imports an oracle package: a missing one skips the test, except in CI (CI=true), where
    it fails, so a comparison can never pass by being skipped."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        if _ci():
            pytest.fail(f"{module} is required for {what} in CI (it is in the test extra)")
        pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="session")
def pytorch_optimizer(torch):
    """pytorch-optimizer, oracle of the optimizers torch lacks (ADOPT, AdEMAMix, the cautious
    variants, Lion's non-finite behaviour)."""
    return oracle("pytorch_optimizer", "the pytorch-optimizer oracle tests")


@pytest.fixture(scope="session")
def adabelief_official(torch):
    """The authors' AdaBelief (adabelief-pytorch)."""
    return oracle("adabelief_pytorch", "the AdaBelief oracle test").AdaBelief


@pytest.fixture(scope="session")
def torch_optimizer(torch):
    """torch-optimizer (pytorch-lamb's LAMB with its clamp and debias options)."""
    return oracle("torch_optimizer", "the LAMB variant oracle test")


@pytest.fixture(scope="session")
def prodigyopt(torch):
    """The authors' Prodigy (prodigyopt)."""
    return oracle("prodigyopt", "the Prodigy oracle tests")


@pytest.fixture(scope="session")
def schedulefree(torch):
    """The authors' Schedule-Free optimizers (schedulefree)."""
    return oracle("schedulefree", "the Schedule-Free oracle tests")


LEVELS = _fastopt.available_simd_levels()


@pytest.fixture(params=LEVELS)
def simd_level(request):
    """Runs the test at each SIMD level this CPU has, restoring the default after."""
    before = _fastopt.simd_level()
    _fastopt.set_simd_level(request.param)
    yield request.param
    _fastopt.set_simd_level(before)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = fastopt.get_num_threads()
    fastopt.set_num_threads(request.param)
    yield request.param
    fastopt.set_num_threads(before)


def run_python(code: str, env: dict | None = None, timeout: int = 120):
    """Runs ``code`` in a fresh interpreter (this one's), with ``env`` added to the
    environment; returns the CompletedProcess (text output captured)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_close(
    actual: np.ndarray, expected: np.ndarray, what: str = "", scale: float = 0.0, tol: float | None = None
) -> None:
    """The parity bar: float64 within 1e-12 and float32 within 1e-5, relative to the larger
    of |expected| and the buffer's scale (the largest of its magnitudes and ``scale``, e.g. the
    initial parameter's), element by element; ``tol`` overrides the bar where a test derives its
    own from the problem.

    The scale term keeps elements that pass near zero from turning a last-bit difference
    in an intermediate into a large relative error."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if actual.size == 0:
        return
    if tol is None:
        tol = 1e-12 if expected.dtype == np.float64 else 1e-5
    scale = max(float(np.max(np.abs(expected))), scale) or 1.0
    bound = tol * np.maximum(np.abs(expected), scale)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    same_nan = np.isnan(actual) & np.isnan(expected)
    bad = ~((err <= bound) | same_nan)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} elements differ; first at flat index {i}: "
            f"{actual.flat[i]!r} vs {expected.flat[i]!r} (tolerance {bound.flat[i]:.3g})"
        )
