"""Prodigy against the authors' prodigyopt: parameters, state and the estimate's group values
over 100 steps, several configurations and groups, float32 and float64; non-finite
gradients; state dicts both ways; the functional form."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from conftest import assert_close

STEPS = 100
SHAPES = [(), (7,), (33, 31), (40_000,)]  # (the last spans several blocks of the reduction)

CASES = [
    {},
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, decouple=False, betas=(0.8, 0.99)),
    dict(betas=(0.0, 0.99), eps=1e-6),
    dict(use_bias_correction=True, safeguard_warmup=True, growth_rate=1.02, d_coef=2.0, beta3=0.9),
    dict(lr=0.5, d0=1e-4, weight_decay=0.01),
]
GROUP_KEYS = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")


def _gradients(rng, shapes, targets, params, dtype):
    """A pull towards fixed targets plus noise (pure noise leaves the estimate at d0)."""
    return [np.asarray(np.asarray(p) - c + 0.3 * rng.standard_normal(s), dtype)
            for p, c, s in zip(params, targets, shapes)]


def _run_both(torch, prodigyopt, groups_of, kw, dtype, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    p0 = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    targets = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt = fo.optim.Prodigy(groups_of(ps), **kw)
    ref = prodigyopt.Prodigy(groups_of(ts), **kw)
    for _ in range(steps):
        grads = _gradients(rng, SHAPES, targets, [t.detach().numpy() for t in ts], dtype)
        for p, t, g in zip(ps, ts, grads):
            p.grad = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        ref.step()
    return opt, ref, ps, ts, p0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_the_authors_package(torch, prodigyopt, threads, kw, dtype, capsys):
    opt, ref, ps, ts, p0 = _run_both(torch, prodigyopt, lambda xs: xs, kw, dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for p, t, p_init in zip(ps, ts, p0):
        scale = float(np.abs(p_init).max())
        assert_close(p.data, t.detach().numpy(), "Prodigy", scale=scale, tol=tol)
        assert sorted(opt.state[p]) == sorted(ref.state[t])
        for k, v in ref.state[t].items():  # (theirs keeps s and p0 flat)
            ours = opt.state[p][k]
            want = np.asarray(v.numpy() if hasattr(v, "numpy") else v, ours.dtype).reshape(ours.shape)
            assert_close(opt.state[p][k], want, f"Prodigy {k}", scale=scale, tol=tol)
    for key in GROUP_KEYS:
        assert opt.param_groups[0][key] == pytest.approx(float(ref.param_groups[0][key]), rel=tol), key
    assert opt.param_groups[0]["d"] > 5 * opt.param_groups[0]["d0"]  # (the estimate did move)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_share_the_estimate(torch, prodigyopt, dtype, capsys):
    """Two groups with their own weight decay, eps and d0, and a third at lr 0 (it takes no
    part in the estimate but is still decayed): as the authors'."""
    def groups_of(xs):
        return [{"params": xs[:2], "weight_decay": 0.05, "eps": 1e-6}, {"params": xs[2:3], "d0": 1e-5},
                {"params": xs[3:], "lr": 0.0, "weight_decay": 0.1}]

    opt, ref, ps, ts, p0 = _run_both(torch, prodigyopt, groups_of, {"lr": 1.0}, dtype, seed=1)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for p, t, p_init in zip(ps, ts, p0):
        assert_close(p.data, t.detach().numpy(), "Prodigy", scale=float(np.abs(p_init).max()), tol=tol)
    for g, r in zip(opt.param_groups, ref.param_groups):
        for key in GROUP_KEYS:
            assert g[key] == pytest.approx(float(r[key]), rel=tol), key


def test_groups_with_another_lr_are_refused_before_anything_changes():
    a, b = fo.Parameter(np.ones(3)), fo.Parameter(np.ones(2))
    opt = fo.optim.Prodigy([{"params": [a]}, {"params": [b], "lr": 0.5}])
    a.grad, b.grad = np.ones(3), np.ones(2)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\] is 0.5: Prodigy's groups may only have"):
        opt.step()
    assert np.all(a.data == 1) and np.all(b.data == 1) and not opt.state
    assert opt.param_groups[0]["k"] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_gradient_as_the_authors(torch, prodigyopt, bad, capsys):
    """A NaN or infinite gradient element poisons the estimate (a sum over every element), so
    every element of every parameter follows it: as the authors', element for element."""
    rng = np.random.default_rng(8)
    p0 = [rng.standard_normal(6), rng.standard_normal(4)]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt, ref = fo.optim.Prodigy(ps), prodigyopt.Prodigy(ts)
    for step in range(5):
        for p, t in zip(ps, ts):
            g = np.asarray(p.data) * 0.5 + rng.standard_normal(p.data.shape)
            if step == 2 and p is ps[0]:
                g[3] = bad
            p.grad, t.grad = g.copy(), torch.tensor(g.copy())
        with np.errstate(invalid="ignore", over="ignore"):
            opt.step()
        ref.step()
    for p, t in zip(ps, ts):
        want = t.detach().numpy()
        np.testing.assert_array_equal(np.isnan(p.data), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(p.data), np.isinf(want))
        ok = np.isfinite(want)
        np.testing.assert_allclose(p.data[ok], want[ok], rtol=1e-12)
    d, want_d = opt.param_groups[0]["d"], float(ref.param_groups[0]["d"])
    assert (np.isnan(d) and np.isnan(want_d)) or d == pytest.approx(want_d, rel=1e-12)


def test_state_dict_both_ways_with_the_authors(torch, prodigyopt, capsys):
    """Our state dict (to_torch_state_dict) loads into prodigyopt and theirs into ours; both
    continue as an uninterrupted run."""
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((5, 10))  # (theirs keeps s and p0 flat: the dicts reshape them)
    p = fo.Parameter(p0.copy())
    opt = fo.optim.Prodigy([p], weight_decay=0.01)

    def grad_of(x):
        return np.asarray(x) - 1.0 + 0.1 * rng.standard_normal((5, 10))

    for _ in range(10):
        p.grad = grad_of(p.data)
        opt.step()
    t = torch.nn.Parameter(torch.tensor(p.data.copy()))
    ref = prodigyopt.Prodigy([t], weight_decay=0.01)
    ref.load_state_dict(fo.optim.to_torch_state_dict(opt.state_dict()))
    for _ in range(10):
        g = grad_of(p.data)
        p.grad, t.grad = g.copy(), torch.tensor(g.copy())
        opt.step()
        ref.step()
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-13, atol=1e-15)
    # and back: theirs into a fresh fastopt optimizer
    q = fo.Parameter(t.detach().numpy().copy())
    back = fo.optim.Prodigy([q], weight_decay=0.01)
    back.load_state_dict(ref.state_dict())
    g = grad_of(q.data)
    q.grad, t.grad = g.copy(), torch.tensor(g.copy())
    back.step()
    ref.step()
    np.testing.assert_allclose(q.data, t.detach().numpy(), rtol=1e-13, atol=1e-15)
    assert back.param_groups[0]["k"] == ref.param_groups[0]["k"] == 21


def test_functional_form_equals_the_class():
    rng = np.random.default_rng(6)
    p0 = [rng.standard_normal(5), rng.standard_normal((3, 4))]
    ps = [fo.Parameter(p.copy()) for p in p0]
    opt = fo.optim.Prodigy(ps, weight_decay=0.1, decouple=False)
    arrays = [p.copy() for p in p0]
    s = [np.zeros_like(a) for a in arrays]
    p0s = [a.copy() for a in arrays]
    m = [np.zeros_like(a) for a in arrays]
    v = [np.zeros_like(a) for a in arrays]
    steps = [np.zeros((), np.float32) for _ in arrays]
    group = dict(d=1e-6, d_max=1e-6, d_numerator=0.0, k=0)
    for _ in range(20):
        grads = [a * 0.5 + rng.standard_normal(a.shape) for a in arrays]
        for p, g in zip(ps, grads):
            p.grad = g.copy()
        opt.step()
        out = fo.optim.functional.prodigy(arrays, grads, s, p0s, m, v, steps, weight_decay=0.1, decouple=False,
                                          **group)
        group = {k: out[k] for k in ("d", "d_max", "d_numerator", "k")}
    for p, a in zip(ps, arrays):
        np.testing.assert_array_equal(p.data, a)
    for key in ("d", "d_max", "d_numerator", "k"):
        assert opt.param_groups[0][key] == group[key]


def test_bad_gradient_leaves_everything_untouched():
    p, q = fo.Parameter(np.ones(3)), fo.Parameter(np.ones(2))
    opt = fo.optim.Prodigy([p, q])
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(3,\) but params\[1\] has shape \(2,\)"):
        opt.step(grads=[np.ones(3), np.ones(3)])
    assert np.all(p.data == 1) and np.all(q.data == 1) and not opt.state
    assert opt.param_groups[0]["k"] == 0 and opt.param_groups[0]["d_numerator"] == 0.0
