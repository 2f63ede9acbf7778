"""The careful-NumPy peers of the benchmarks compute what the optimizers compute: a peer
that did something else would make its speed ratios meaningless."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt as fo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from benchmarks import common  # noqa: E402

PEERS = [
    ("Adam", {"lr": 1e-2}, lambda p, g: common.NumpyAdam(p, g, lr=1e-2)),
    ("SGD", {"lr": 1e-2, "momentum": 0.9}, lambda p, g: common.NumpySGD(p, g, lr=1e-2, momentum=0.9)),
    ("Adagrad", {"lr": 1e-2}, lambda p, g: common.NumpyAdagrad(p, g, lr=1e-2)),
    ("RMSprop", {"lr": 1e-2}, lambda p, g: common.NumpyRMSprop(p, g, lr=1e-2)),
    ("Adadelta", {"lr": 1.0}, lambda p, g: common.NumpyAdadelta(p, g, lr=1.0)),
    ("Adamax", {"lr": 2e-3}, lambda p, g: common.NumpyAdamax(p, g, lr=2e-3)),
    ("NAdam", {"lr": 2e-3}, lambda p, g: common.NumpyNAdam(p, g, lr=2e-3)),
    ("RAdam", {"lr": 1e-3}, lambda p, g: common.NumpyRAdam(p, g, lr=1e-3)),
    ("ASGD", {"lr": 1e-2, "t0": 5}, lambda p, g: common.NumpyASGD(p, g, lr=1e-2, t0=5)),
    ("Rprop", {"lr": 1e-2}, lambda p, g: common.NumpyRprop(p, g, lr=1e-2)),
]


@pytest.mark.parametrize("name,kw,make", PEERS, ids=[p[0] for p in PEERS])
def test_numpy_peer_matches_the_optimizer(name, kw, make):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(1000)
    peer_p, peer_g = p0.copy(), np.empty(1000)
    peer = make(peer_p, peer_g)
    w = fo.Parameter(p0.copy())
    opt = getattr(fo.optim, name)([w], **kw)
    for _ in range(20):
        g = rng.standard_normal(1000)
        peer_g[...] = g
        peer.step()
        w.grad = g
        opt.step()
    np.testing.assert_allclose(peer_p, w.data, rtol=1e-9, atol=1e-12)
