"""The careful-NumPy peers of the benchmarks compute what the optimizers compute: a peer
that did something else would make its speed ratios meaningless."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo

from fastopt.bench import nn_peers
from fastopt.bench import peers as common

from conftest import run_python

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
    ("AdaBound", {"lr": 1e-2, "gamma": 1e-1}, lambda p, g: common.NumpyAdaBound(p, g, lr=1e-2, gamma=1e-1)),
    ("AMSBound", {"lr": 1e-2, "gamma": 1e-1}, lambda p, g: common.NumpyAdaBound(p, g, lr=1e-2, gamma=1e-1, amsbound=True)),
    ("Lion", {"lr": 1e-3}, lambda p, g: common.NumpyLion(p, g, lr=1e-3)),
    ("AdaBelief", {"lr": 1e-2, "rectify": False}, lambda p, g: common.NumpyAdaBelief(p, g, lr=1e-2)),
    ("Lamb", {"lr": 1e-2, "weight_decay": 0.01}, lambda p, g: common.NumpyLamb(p, g, lr=1e-2, weight_decay=0.01)),
    ("ADOPT", {"lr": 1e-2}, lambda p, g: common.NumpyADOPT(p, g, lr=1e-2)),
    ("AdEMAMix", {"lr": 1e-2}, lambda p, g: common.NumpyAdEMAMix(p, g, lr=1e-2)),
    ("AdamWScheduleFree", {"lr": 1e-2}, lambda p, g: common.NumpyScheduleFree(p, g, lr=1e-2)),
    ("SGDScheduleFree", {"lr": 1e-2}, lambda p, g: common.NumpyScheduleFree(p, g, lr=1e-2, adam=False)),
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



OPTAX_PEERS = [
    ("Adam", {"lr": 1e-2}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    ("SGD", {"lr": 1e-2, "momentum": 0.9}),
    ("Lion", {"lr": 1e-3}),
    ("Lamb", {"lr": 1e-2, "weight_decay": 0.01}),
    ("AdaBelief", {"lr": 1e-2}),
]


@pytest.mark.parametrize("name,kw", OPTAX_PEERS, ids=[p[0] for p in OPTAX_PEERS])
def test_optax_peer_matches_the_optimizer(name, kw):
    pytest.importorskip("optax")
    pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    step = common.optax_optimizer(name, p0.copy(), g, **kw)
    w = fo.Parameter(p0.copy())
    w.grad = g
    opt = getattr(fo.optim, name)([w], **kw)
    for _ in range(10):
        step()
        opt.step()
    np.testing.assert_allclose(step.params(), w.data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", nn_peers.ACTIVATIONS)
def test_activation_peers_compute_what_fastopt_computes(torch, name):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(4000) * 3).astype(np.float32)
    g = rng.standard_normal(4000).astype(np.float32)
    ours = np.empty_like(x)
    nn_peers.fastopt_forward(name, x, ours)()
    saved = ours.copy() if name in nn_peers.SAVES_OUTPUT else x
    ours_b = np.empty_like(x)
    nn_peers.fastopt_backward(name, g, saved, ours_b)()
    for impl in ("torch", "numpy"):
        out, out_b = np.full_like(x, np.nan), np.full_like(x, np.nan)
        getattr(nn_peers, f"{impl}_forward")(name, x, out)()
        getattr(nn_peers, f"{impl}_backward")(name, g, saved, out_b)()
        np.testing.assert_allclose(out, ours, rtol=2e-5, atol=1e-6, err_msg=f"{impl} forward")
        np.testing.assert_allclose(out_b, ours_b, rtol=2e-5, atol=1e-5, err_msg=f"{impl} backward")


@pytest.mark.parametrize("shape", [(64, 16), (4, 8, 5, 5)])
def test_batch_norm_peers_compute_what_fastopt_computes(torch, shape):
    x, g, w, b = nn_peers.batch_norm_problem(shape)
    gx, gw, gb = nn_peers.fastopt_batch_norm_step(x, g, w, b)()
    tg = nn_peers.torch_batch_norm_step(x, g, w, b)()
    _, ngx, ngw, ngb = nn_peers.numpy_batch_norm_step(x, g, w, b)()
    for got in ((tg[0].numpy(), tg[1].numpy(), tg[2].numpy()), (ngx, ngw, ngb)):
        for a, e in zip(got, (gx, gw, gb)):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


def test_benchmarks_of_fastopt_alone_never_import_torch():
    """asv's peakmem_ rows of fastopt must not count torch: setting the thread count leaves
    torch unimported, and torch takes the count when a peer imports it."""
    code = ("import sys\n"
            "from fastopt.bench import peers\n"
            "peers.set_threads(1)\n"
            "assert 'torch' not in sys.modules\n"
            "try:\n"
            "    torch = peers.import_torch()\n"
            "except ImportError:\n"
            "    print('no torch')\n"
            "else:\n"
            "    print(torch.get_num_threads())\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("1", "no torch")


def test_warm_up_calls_each_function_enough_times():
    from fastopt.bench.peers import warm_up

    counts = [0, 0]
    warm_up(lambda: counts.__setitem__(0, counts[0] + 1), lambda: counts.__setitem__(1, counts[1] + 1),
            calls=4, seconds=0)
    assert counts == [4, 4]
    n = [0]
    warm_up(lambda: n.__setitem__(0, n[0] + 1), calls=1, seconds=0.01)
    assert n[0] >= 1
