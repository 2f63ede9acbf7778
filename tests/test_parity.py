"""Parity with torch.optim (single-tensor path, foreach=False) over 100 steps.

The configuration matrix is every combination of the flags torch's own optimizer tests
exercise (torch/testing/_internal/common_optimizers.py), plus betas that take torch's second
lerp form. Each configuration runs over one group holding tensors of every awkward shape
(0-d, empty, 1, 7, 31, 1023, 2-D) under every SIMD level and 1 and 2 threads, and over one
2**20+3-element tensor (the multi-threaded, chunked path). Parameters AND every state buffer
are compared. torch's results are computed once per configuration and reused.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry
from conftest import assert_close

STEPS = 100
SMALL_SHAPES = [(), (0,), (1,), (7,), (31,), (1023,), (33, 31)]
LARGE_SHAPES = [(2**20 + 3,)]


# Every torch optimizer's parity configurations, from the registry (Adafactor and L-BFGS
# have their own tests below and in test_lbfgs.py).
CONFIGS = [(spec.name, kw) for spec in registry.OPTIMIZERS if spec.name not in ("Adafactor", "LBFGS", "Muon")
           for kw in spec.parity]
IDS = [f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for c, kw in CONFIGS]


@functools.lru_cache(maxsize=8)
def _problem(shapes, dtype, seed=0):
    """Initial params and STEPS gradients per param (read-only: neither side writes grads).

    Large tensors draw from a pool of 4 random arrays scaled per step, which keeps the
    gradients varied without generating 1e8 random numbers per configuration."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[] for _ in range(STEPS)]
    for s in shapes:
        if int(np.prod(s)) > 100_000:
            pool = [rng.standard_normal(s).astype(dtype) for _ in range(4)]
            scales = rng.uniform(0.1, 3.0, STEPS)
            for t in range(STEPS):
                grads[t].append((pool[t % 4] * scales[t]).astype(dtype))
        else:
            for t in range(STEPS):
                grads[t].append(rng.standard_normal(s).astype(dtype))
    for g in grads:
        for a in g:
            a.flags.writeable = False
    return params, grads


@functools.lru_cache(maxsize=None)
def _torch_run(cls_name, kwargs_items, shapes, dtype_name):
    import torch

    params0, grads = _problem(shapes, dtype_name)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
    opt = getattr(torch.optim, cls_name)(tparams, foreach=False, **dict(kwargs_items))
    for step_grads in grads:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
    params = [tp.detach().numpy().copy() for tp in tparams]
    state = [
        {k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in opt.state[tp].items()}
        for tp in tparams
    ]
    return params, state


def _fastopt_run(cls_name, kwargs, shapes, dtype):
    params0, grads = _problem(tuple(shapes), np.dtype(dtype).name)
    params = [fo.Parameter(p.copy()) for p in params0]
    opt = getattr(fo.optim, cls_name)(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
    return [p.data for p in params], [opt.state[p] for p in params]


def _compare(cls_name, kwargs, shapes, dtype):
    ref_params, ref_state = _torch_run(cls_name, tuple(sorted(kwargs.items())), tuple(shapes), np.dtype(dtype).name)
    params, state = _fastopt_run(cls_name, kwargs, shapes, dtype)
    params0, _ = _problem(tuple(shapes), np.dtype(dtype).name)
    for i, (p, rp, st, rst) in enumerate(zip(params, ref_params, state, ref_state)):
        scale = float(np.max(np.abs(params0[i]))) if params0[i].size else 0.0
        assert_close(p, rp, f"param {i} shape {shapes[i]}", scale=scale)
        expected_keys = {k for k, v in rst.items() if v is not None}
        assert set(st) == expected_keys, f"state {i}: keys {sorted(st)} != torch's {sorted(expected_keys)}"
        for k in expected_keys:
            if k == "step":
                assert st[k].dtype == np.float32 and st[k].shape == ()
                assert float(st[k]) == float(rst[k]) == STEPS
            else:
                assert_close(st[k], rst[k], f"state {i} {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls_name,kwargs", CONFIGS, ids=IDS)
def test_small_shapes_every_level_and_thread_count(torch, simd_level, threads, cls_name, kwargs, dtype):
    _compare(cls_name, kwargs, SMALL_SHAPES, dtype)


# The per-element arithmetic of every configuration is covered above at every level; the
# large tensor checks chunking and threading, with the configurations that use every buffer.
LARGE_CONFIGS = [
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("Adam", {}),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.5)),
    ("SGD", {}),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1)),
    ("Adamax", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    ("Adadelta", dict(lr=0.5, weight_decay=0.1)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1)),
    ("ASGD", dict(lr=1e-2, weight_decay=0.1, t0=10)),
    ("Rprop", dict(lr=1e-2, maximize=True)),
]
LARGE_IDS = [f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for c, kw in LARGE_CONFIGS]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls_name,kwargs", LARGE_CONFIGS, ids=LARGE_IDS)
def test_large_tensor_chunked_across_threads(torch, threads, cls_name, kwargs, dtype):
    _compare(cls_name, kwargs, LARGE_SHAPES, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_groups_with_different_options(torch, dtype):
    params0, grads = _problem(((17,), (5, 3), (64,)), np.dtype(dtype).name, seed=3)
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
    topt = torch.optim.Adam(
        [{"params": tp[:2], "lr": 5e-2, "amsgrad": True}, {"params": tp[2:], "weight_decay": 0.2, "betas": (0.8, 0.95)}],
        lr=1e-2, foreach=False,
    )
    fp = [fo.Parameter(p.copy()) for p in params0]
    fopt = fo.optim.Adam(
        [{"params": fp[:2], "lr": 5e-2, "amsgrad": True}, {"params": fp[2:], "weight_decay": 0.2, "betas": (0.8, 0.95)}],
        lr=1e-2,
    )
    for g in grads:
        for a, b, gi in zip(tp, fp, g):
            a.grad = torch.from_numpy(gi.copy())
            b.grad = gi
        topt.step()
        fopt.step()
    for a, b in zip(tp, fp):
        assert_close(b.data, a.detach().numpy(), "param")
        for k, v in topt.state[a].items():
            assert_close(fopt.state[b][k], v.numpy(), k)


def test_sgd_two_groups_and_skipped_grads(torch):
    """Momentum in one group, none in the other; a param whose grad is None is skipped
    (no state, no change), as torch does."""
    params0, grads = _problem(((9,), (4,), (6,)), "float64", seed=5)
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
    fp = [fo.Parameter(p.copy()) for p in params0]
    topt = torch.optim.SGD([{"params": tp[:2], "momentum": 0.9, "nesterov": True}, {"params": tp[2:]}], lr=0.1, foreach=False)
    fopt = fo.optim.SGD([{"params": fp[:2], "momentum": 0.9, "nesterov": True}, {"params": fp[2:]}], lr=0.1)
    for step, g in enumerate(grads[:20]):
        for i, (a, b, gi) in enumerate(zip(tp, fp, g)):
            skip = i == 1 and step < 10  # param 1 has no gradient for 10 steps
            a.grad = None if skip else torch.from_numpy(gi.copy())
            b.grad = None if skip else gi
        topt.step()
        fopt.step()
    for a, b in zip(tp, fp):
        assert_close(b.data, a.detach().numpy(), "param")
        assert set(fopt.state[b]) == {k for k, v in topt.state[a].items() if v is not None}
    assert "momentum_buffer" in fopt.state[fp[1]]
    assert_close(fopt.state[fp[1]]["momentum_buffer"], topt.state[tp[1]]["momentum_buffer"].numpy(), "buffer")


def test_functional_api_matches_torch_functional(torch):
    from torch.optim.adam import adam as t_adam
    from torch.optim.sgd import sgd as t_sgd

    rng = np.random.default_rng(11)
    p = rng.standard_normal(50)
    g = rng.standard_normal(50)
    # Adam, functional, 3 steps
    fp, fm, fv, fx, fs = p.copy(), np.zeros(50), np.zeros(50), np.zeros(50), np.zeros((), np.float32)
    tp, tm, tv, tx = (torch.from_numpy(a.copy()) for a in (p, np.zeros(50), np.zeros(50), np.zeros(50)))
    ts = torch.tensor(0.0)
    for _ in range(3):
        fo.optim.functional.adam([fp], [g], [fm], [fv], [fx], [fs], amsgrad=True, beta1=0.9, beta2=0.99,
                                 lr=0.1, weight_decay=0.01, eps=1e-8, maximize=False)
        t_adam([tp], [torch.from_numpy(g)], [tm], [tv], [tx], [ts], foreach=False, amsgrad=True, beta1=0.9,
               beta2=0.99, lr=0.1, weight_decay=0.01, eps=1e-8, maximize=False)
    assert_close(fp, tp.numpy(), "adam param")
    assert_close(fx, tx.numpy(), "max_exp_avg_sq")
    assert float(fs) == float(ts) == 3.0
    # SGD, functional: None buffers are filled in the list, as torch does
    fp2, tp2 = p.copy(), torch.from_numpy(p.copy())
    fbufs, tbufs = [None], [None]
    for _ in range(3):
        fo.optim.functional.sgd([fp2], [g], fbufs, weight_decay=0.0, momentum=0.9, lr=0.1, dampening=0.1,
                                nesterov=False, maximize=False)
        t_sgd([tp2], [torch.from_numpy(g)], tbufs, foreach=False, weight_decay=0.0, momentum=0.9, lr=0.1,
              dampening=0.1, nesterov=False, maximize=False)
    assert isinstance(fbufs[0], np.ndarray)
    assert_close(fp2, tp2.numpy(), "sgd param")
    assert_close(fbufs[0], tbufs[0].numpy(), "sgd buffer")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls_name,kwargs", LARGE_CONFIGS, ids=LARGE_IDS)
def test_results_do_not_depend_on_thread_count(cls_name, kwargs, dtype):
    """Bit-identical params and state with 1 and 2 threads (the 2**20+3 tensor is split
    across threads; small tensors in the same group are not)."""
    shapes = [(2**20 + 3,), (1023,), (7,)]
    runs = []
    before = fo.get_num_threads()
    try:
        for threads in (1, 2):
            fo.set_num_threads(threads)
            params, state = _fastopt_run(cls_name, kwargs, shapes, dtype)
            runs.append((params, state))
    finally:
        fo.set_num_threads(before)
    (p1, s1), (p2, s2) = runs
    for a, b, sa, sb in zip(p1, p2, s1, s2):
        assert a.tobytes() == b.tobytes()
        assert set(sa) == set(sb)
        for k in sa:
            assert np.asarray(sa[k]).tobytes() == np.asarray(sb[k]).tobytes(), k


# Adafactor: torch divides by zero on an empty parameter, so its shapes leave (0,) out and
# add a 3-D one (factored statistics over the last two axes).
ADAFACTOR_SHAPES = [(), (1,), (7,), (1023,), (33, 31), (3, 4, 5)]
ADAFACTOR_CONFIGS = list(registry.by_name("Adafactor").parity)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", ADAFACTOR_CONFIGS, ids=[str(i) for i in range(len(ADAFACTOR_CONFIGS))])
def test_adafactor_matches_torch(torch, threads, kwargs, dtype):
    _compare("Adafactor", kwargs, ADAFACTOR_SHAPES, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adafactor_large_tensors(torch, dtype):
    _compare("Adafactor", dict(lr=1e-2, weight_decay=0.01), [(2**20 + 3,), (512, 640)], dtype)
