"""Every optimizer's results after a long run are bit-identical to the recorded ones
(tests/golden.py), at every SIMD level this CPU has and at one and two threads."""

from __future__ import annotations

import json

import pytest

import fastopt
from fastopt import _fastopt

import golden

RECORDED = json.loads(golden.PATH.read_text())
CASES = [(n, kw, dt) for n, kw in golden.CONFIGS for dt in ("float32", "float64")]


def test_every_optimizer_is_recorded():
    recorded = {golden.key(n, kw, dt) for n, kw, dt in CASES}
    assert recorded == set(RECORDED["scalar"]) == set(RECORDED["fma"])
    names = {n for n, _ in golden.CONFIGS}
    # LBFGS takes a closure and is pinned by its own tests (tests/test_lbfgs.py); Muon takes
    # matrices and its Newton-Schulz products run on the machine's BLAS, whose summation
    # order is the machine's (tests/test_muon.py pins it against torch and a reference)
    assert names | {"LBFGS", "Muon", "Optimizer"} >= {n for n in fastopt.optim.__all__ if n[0].isupper()}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name,kwargs,dtype", CASES, ids=[golden.key(*c) for c in CASES])
def test_bit_identical_to_record(name, kwargs, dtype, threads):
    before_level, before_threads = _fastopt.simd_level(), fastopt.get_num_threads()
    fastopt.set_num_threads(threads)
    try:
        for level in _fastopt.available_simd_levels():
            cls = "scalar" if level == "scalar" else "fma"
            _fastopt.set_simd_level(level)
            got = golden.digest(name, kwargs, dtype)
            assert got == RECORDED[cls][golden.key(name, kwargs, dtype)], f"{level}, {threads} threads"
    finally:
        _fastopt.set_simd_level(before_level)
        fastopt.set_num_threads(before_threads)
