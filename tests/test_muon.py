"""Muon against torch.optim.Muon (to bfloat16 rounding: both run the Newton-Schulz iteration
in bfloat16), against a float64 NumPy reference with ns_dtype='float32', and the optimizer
contract on matrices (the shared suites step vectors, which Muon refuses, as torch's)."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim.muon import _adjusted_lr, round_to_bfloat16

SHAPES = [(16, 16), (40, 12), (12, 40)]  # square, tall, wide
# torch's own test configurations for Muon (test/optim: lr, weight decay, momentum, nesterov,
# the lr adjustments, fewer steps and another eps), and other coefficients.
CONFIGS = [
    {},
    {"lr": 0.02},
    {"lr": 0.02, "weight_decay": 0.0},
    {"lr": 0.02, "nesterov": False},
    {"lr": 0.02, "adjust_lr_fn": "original"},
    {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw"},
    {"lr": 0.02, "adjust_lr_fn": "spectral_unclamped"},
    {"lr": 0.02, "momentum": 0.9, "ns_steps": 3, "eps": 1e-5},
    {"lr": 0.02, "ns_coefficients": (3.0, -3.2, 1.2)},
]
STEPS = 50


def _run(torch, kw, dtype, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt, ref = fo.optim.Muon(ps, **kw), torch.optim.Muon(ts, **kw)
    worst = 0.0
    for _ in range(steps):
        for p, t in zip(ps, ts):
            g = rng.standard_normal(p.data.shape).astype(dtype)
            p.grad = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        ref.step()
        for p, t in zip(ps, ts):
            worst = max(worst, float(np.abs(p.data - t.detach().numpy()).max()))
    return ps, ts, opt, ref, worst


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_matches_torch_to_bfloat16_rounding(torch, kw, dtype):
    """50 steps on square, tall and wide matrices. Both sides round every matrix of the
    iteration to bfloat16 but sum the products in their own order, so an element of the
    orthogonalised update may differ by a bfloat16 rounding step (2**-8 relative, the
    update's elements being about 1): the bar is a few of those per step's lr. Measured
    worst here 2.3e-4 at lr 0.02 (about 3 such steps); the momentum buffers are identical at
    the FMA levels."""
    ps, ts, opt, ref, worst = _run(torch, kw, dtype)
    lr = kw.get("lr", 1e-3)
    bound = max(8 * _adjusted_lr(lr, kw.get("adjust_lr_fn"), s) * 2.0**-8 for s in SHAPES)
    assert worst <= bound, (worst, bound)
    for p, t in zip(ps, ts):
        # the buffers' lerp rounds once, as torch's, at the FMA levels (identical there); the
        # scalar level rounds the product and the sum separately
        want = ref.state[t]["momentum_buffer"].numpy()
        got = opt.state[p]["momentum_buffer"]
        if fo.simd_level() == "scalar":
            np.testing.assert_allclose(got, want, rtol=0, atol=4 * float(np.finfo(dtype).eps) * np.abs(want).max())
        else:
            np.testing.assert_array_equal(got, want)


def _reference(p, grads, lr, weight_decay=0.1, momentum=0.95, nesterov=True, coefficients=(3.4445, -4.7750, 2.0315),
               eps=1e-7, ns_steps=5):
    """torch's Muon step, transcribed in float64 NumPy (the iteration without any rounding)."""
    a, b, c = coefficients
    buf = np.zeros_like(p)
    for g in grads:
        buf = buf + (1 - momentum) * (g - buf)
        u = g + momentum * (buf - g) if nesterov else buf
        x = u.T if u.shape[0] > u.shape[1] else u
        x = x / max(np.linalg.norm(x), eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        x = x.T if u.shape[0] > u.shape[1] else x
        p = p * (1 - lr * weight_decay) - _adjusted_lr(lr, None, p.shape) * x
    return p, buf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_iteration_matches_a_float64_reference(dtype):
    """ns_dtype='float32': the iteration in float32, against the same algorithm in float64:
    within float32 rounding, grown by the five quintic steps."""
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        p0 = rng.standard_normal(shape)
        grads = [rng.standard_normal(shape) for _ in range(20)]
        p = fo.Parameter(p0.astype(dtype))
        opt = fo.optim.Muon([p], lr=0.02, ns_dtype="float32")
        for g in grads:
            p.grad = g.astype(dtype)
            opt.step()
        want, buf = _reference(p0, [g.astype(dtype).astype(np.float64) for g in grads], lr=0.02)
        # each step: the update within float32 rounding (2**-23 relative, a few times over the
        # iteration) times lr, and a float32 parameter's own rounding
        unit = 2.0**-23 if dtype == np.float32 else 0.0
        np.testing.assert_allclose(p.data, want, rtol=0, atol=20 * (0.02 * 16 * 2.0**-23 + 2 * unit * np.abs(want).max()))
        eps = float(np.finfo(dtype).eps)
        np.testing.assert_allclose(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=8 * eps * np.abs(buf).max())


def test_bfloat16_rounding_is_round_to_nearest_even(torch):
    x = np.concatenate([np.random.default_rng(2).standard_normal(10_000).astype(np.float32) * 1e3,
                        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, 1e-40, 1.00390625, 1.01171875], np.float32)])
    want = torch.tensor(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_to_bfloat16(x), want)


def test_bad_input_changes_nothing(torch):
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters whereas we found a parameter with size"):
        fo.optim.Muon([fo.Parameter(np.zeros(3))])
    with pytest.raises(ValueError, match="Adjust learning rate function bogus is not supported"):
        fo.optim.Muon([fo.Parameter(np.zeros((2, 2)))], adjust_lr_fn="bogus")
    with pytest.raises(ValueError, match="ns_dtype must be one of"):
        fo.optim.Muon([fo.Parameter(np.zeros((2, 2)))], ns_dtype="float16")
    a, b = np.ones((3, 4)), np.ones((4, 3))
    opt = fo.optim.Muon([a, b], lr=0.1)
    # a wrong dtype in the second gradient: found before anything is written
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float32"):
        opt.step(grads=[np.ones((3, 4)), np.ones((4, 3), np.float32)])
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(4, 3\) but params\[0\] has shape \(3, 4\)"):
        opt.step(grads=[np.ones((4, 3)), np.ones((4, 3))])
    assert (a == 1).all() and (b == 1).all() and len(opt.state) == 0


def _steps(opt, params, rng, n, **step_kw):
    for _ in range(n):
        for p in params:
            p.grad = rng.standard_normal(p.data.shape)
        opt.step(**step_kw)


def test_state_dict_checkpoint_and_torch_exchange(torch, tmp_path):
    """Resume from a state dict (and a checkpoint file) equals the uninterrupted run bit for
    bit; the state dict loads into torch.optim.Muon, which continues as torch does."""
    make = lambda: [fo.Parameter(np.random.default_rng(3).standard_normal(s)) for s in SHAPES]  # noqa: E731
    whole = make()
    opt = fo.optim.Muon(whole, lr=0.02)
    _steps(opt, whole, np.random.default_rng(4), 10)
    half = make()
    first = fo.optim.Muon(half, lr=0.02)
    rng = np.random.default_rng(4)
    _steps(first, half, rng, 5)
    fo.save({"opt": first.state_dict()}, tmp_path / "muon.fo")
    second = fo.optim.Muon(half, lr=0.02)
    second.load_state_dict(fo.load(tmp_path / "muon.fo")["opt"])
    _steps(second, half, rng, 5)
    for x, y in zip(whole, half):
        assert x.data.tobytes() == y.data.tobytes()
    ts = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in half]
    ref = torch.optim.Muon(ts, lr=0.02)
    ref.load_state_dict(fo.optim.to_torch_state_dict(second.state_dict()))
    g = [np.random.default_rng(5).standard_normal(s) for s in SHAPES]
    for p, t, gi in zip(half, ts, g):
        p.grad, t.grad = gi, torch.tensor(gi)
    second.step()
    ref.step()
    for p, t in zip(half, ts):
        assert np.abs(p.data - t.detach().numpy()).max() <= 8 * 0.02 * 2.0**-8 * 2


def test_clipping_scheduler_and_hooks():
    """step(max_grad_norm=) equals clip_grad_norm_ then step, bit for bit; a scheduler's lr
    takes effect; step hooks run."""
    rng = np.random.default_rng(6)
    start = [rng.standard_normal(s) for s in SHAPES]
    grads = [rng.standard_normal(s) * 10 for s in SHAPES]
    a = [fo.Parameter(x.copy()) for x in start]
    b = [fo.Parameter(x.copy()) for x in start]
    oa, ob = fo.optim.Muon(a, lr=0.02), fo.optim.Muon(b, lr=0.02)
    for p, g in zip(a, grads):
        p.grad = g.copy()
    oa.step(max_grad_norm=1.0)
    for p, g in zip(b, grads):
        p.grad = g.copy()
    fo.nn.utils.clip_grad_norm_(b, 1.0)
    ob.step()
    for x, y in zip(a, b):
        assert x.data.tobytes() == y.data.tobytes()
    calls = []
    oa.register_step_post_hook(lambda o, args, kw: calls.append(o.param_groups[0]["lr"]))
    sched = fo.optim.lr_scheduler.StepLR(oa, step_size=1, gamma=0.5)
    for _ in range(2):
        for p, g in zip(a, grads):
            p.grad = g.copy()
        oa.step()
        sched.step()
    assert calls == [0.02, 0.01]


def test_descends_on_a_matrix_least_squares():
    rng = np.random.default_rng(7)
    target = rng.standard_normal((8, 5))
    w = fo.Parameter(np.zeros((8, 5)))
    opt = fo.optim.Muon([w], lr=0.05, weight_decay=0.0)
    before = float(np.sum((w.data - target) ** 2))
    for _ in range(100):
        w.grad = 2 * (w.data - target)
        opt.step()
    assert float(np.sum((w.data - target) ** 2)) < 0.05 * before


def test_fastopt_torch_muon_on_a_torch_model(torch):
    """fastopt.torch.Muon against torch.optim.Muon on a bias-free MLP, 30 steps."""
    import fastopt.torch as ft

    results = []
    for cls in (torch.optim.Muon, ft.Muon):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 3, bias=False))
        opt = cls(model.parameters(), lr=0.02)
        g = torch.Generator().manual_seed(1)
        for _ in range(30):
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        results.append([p.detach().numpy().copy() for p in model.parameters()])
    for a, b in zip(*results):
        assert np.abs(a - b).max() <= 30 * 8 * 0.02 * 2.0**-8
