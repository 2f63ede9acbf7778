"""fastopt.amp.GradScaler against torch.amp.GradScaler (CPU): the same scales, growth
tracker, skipped steps and state dict, and parameters within the parity tolerance (torch
unscales the gradients in place, fastopt's step multiplies them by 1/scale as it reads them:
the same float32 products)."""
from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from conftest import assert_close


def _scaled_grads(rng, shapes, steps, bad_steps):
    out = []
    for t in range(steps):
        gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if t in bad_steps:
            gs[t % len(gs)].reshape(-1)[0] = [np.inf, np.nan, -np.inf][t % 3]
        out.append(gs)
    return out


@pytest.mark.parametrize("unscale_first", [False, True])
def test_matches_torch_gradscaler(torch, unscale_first):
    shapes = [(7,), (3, 5), ()]
    rng = np.random.default_rng(0)
    params0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = _scaled_grads(rng, shapes, 40, bad_steps={3, 4, 17, 30})
    ours = [fo.Parameter(p.copy()) for p in params0]
    theirs = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
    opt = fo.optim.Adam(ours, lr=1e-2)
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    scaler = fo.amp.GradScaler(init_scale=256.0, growth_interval=5)
    tscaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=5)
    for t, gs in enumerate(grads):
        # the gradients of a loss scaled by the scale: g * scale
        assert float(scaler.scale(np.float32(1.0))) == float(tscaler.scale(torch.tensor(1.0)))
        for p, q, g in zip(ours, theirs, gs):
            p.grad = np.asarray(g * np.float32(scaler.get_scale()), np.float32)
            q.grad = torch.from_numpy(np.asarray(g * np.float32(tscaler.get_scale()), np.float32))
        if unscale_first:
            scaler.unscale_(opt)
            tscaler.unscale_(ref)
            for p, q in zip(ours, theirs):
                np.testing.assert_array_equal(p.grad, q.grad.numpy(), f"unscaled grad at step {t}")
            fo.nn.utils.clip_grad_norm_(ours, 1.0)
            torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        scaler.step(opt)
        tscaler.step(ref)
        scaler.update()
        tscaler.update()
        assert scaler.get_scale() == tscaler.get_scale(), f"scale at step {t}"
        assert scaler.state_dict() == tscaler.state_dict()
        if ref.state:  # the same steps skipped
            assert float(opt.state[ours[1]]["step"]) == float(ref.state[theirs[1]]["step"])
    for p, q in zip(ours, theirs):
        assert_close(p.data, q.detach().numpy(), "param", scale=float(np.max(np.abs(q.detach().numpy()))))
    assert float(opt.state[ours[0]]["step"]) == float(ref.state[theirs[0]]["step"]) == 36


def test_float16_parameters_unscale_in_the_step():
    """float16 parameters and scaled float16 gradients: each step is the float32 step of the
    widened gradients times the float32 reciprocal of the scale, rounded once (torch refuses
    to unscale float16 gradients)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(33).astype(np.float16)
    ref = w.astype(np.float32)
    opt, ref_opt = fo.optim.Adam([w], lr=1e-2), fo.optim.Adam([ref], lr=1e-2)
    scaler = fo.amp.GradScaler(init_scale=2.0**12, growth_interval=3)
    for t in range(12):
        g = (rng.standard_normal(33) * 1e-6 * scaler.get_scale()).astype(np.float16)
        inv = np.float32(1.0 / np.float64(scaler.get_scale()))
        scaler.step(opt, grads=[g])
        scaler.update()
        ref_opt.step(grads=[g.astype(np.float32) * inv])
        ref[...] = ref.astype(np.float16).astype(np.float32)
        for k in ("exp_avg", "exp_avg_sq"):
            s = ref_opt.state[ref][k]
            s[...] = s.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(w.astype(np.float32), ref)
    assert scaler.get_scale() == 2.0**16  # grew at steps 3, 6, 9, 12


def test_float16_clipping_checks_in_the_norm_pass(monkeypatch):
    """``scaler.step(opt, max_grad_norm=c)`` over float16 gradients leaves out the separate
    check pass (the step's norm tells non-finite gradients): the same steps skipped as an
    element-by-element check decides, torch's scale rule, and the parameters bit for bit those
    of the same optimizer stepped with ``max_grad_norm=c, grad_scale=1/scale`` on the steps
    that check passes, including steps whose finite gradients have a norm above float16's
    largest value (65504)."""
    monkeypatch.setattr(fo.amp.GradScaler, "_non_finite", staticmethod(lambda grads: pytest.fail("checked twice")))
    rng = np.random.default_rng(3)
    shapes = [(5000,), (7, 3), (1,)]
    start = [rng.standard_normal(s).astype(np.float16) for s in shapes]
    ours, ref = [fo.Parameter(a.copy()) for a in start], [fo.Parameter(a.copy()) for a in start]
    opt, ref_opt = fo.optim.AdamW(ours, lr=1e-2), fo.optim.AdamW(ref, lr=1e-2)
    scaler = fo.amp.GradScaler(init_scale=2.0**10, growth_interval=3)
    scale, tracker, skipped, big = np.float32(2.0**10), 0, 0, 0
    for t in range(30):
        gs = [np.clip(rng.standard_normal(s) * (0.05 if t % 4 else 30.0) * float(scale), -6e4, 6e4).astype(np.float16)
              for s in shapes]
        if t in (5, 11, 12, 23):
            gs[t % 3].reshape(-1)[t % gs[t % 3].size] = [np.inf, np.nan, -np.inf][t % 3]
        for p, g in zip(ours, gs):
            p.grad = g
        scaler.step(opt, max_grad_norm=1.0)
        scaler.update()
        found = not all(np.isfinite(g.astype(np.float32)).all() for g in gs)
        if not found:
            big += float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in gs))) > 65504
            ref_opt.step(grads=gs, max_grad_norm=1.0, grad_scale=float(np.float32(1.0 / np.float64(scale))))
            assert opt.last_grad_norm == ref_opt.last_grad_norm, f"norm at step {t}"
            tracker += 1
            if tracker == 3:
                scale, tracker = np.float32(scale * np.float32(2.0)), 0
        else:
            skipped += 1
            scale, tracker = np.float32(scale * np.float32(0.5)), 0
        assert scaler.get_scale() == float(scale), f"scale at step {t}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            np.testing.assert_array_equal(a.data, b.data, f"params[{i}] at step {t}")
    assert skipped == 4 and big > 0, (skipped, big)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_the_check_tells_non_finite_elements_from_large_finite_ones(dtype):
    """The check before a step skips it exactly when an element is infinite or NaN: 5000
    elements at the dtype's largest finite magnitude (whose squares overflow float16 and
    float32, and float64's own) are stepped with; one infinity or NaN anywhere is not."""
    ml_dtypes = pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    dt = np.dtype(ml_dtypes.bfloat16) if ml_dtypes else np.dtype(dtype)
    top = float((ml_dtypes.finfo if ml_dtypes else np.finfo)(dt).max)
    huge = np.full(5000, top, dt)
    huge[::2] = -top
    cases = [(huge, False)] + [(np.where(np.arange(5000) == k, bad, huge).astype(dt), True)
                               for k, bad in ((0, np.inf), (2999, -np.inf), (4999, np.nan))]
    for grad, skipped in cases:
        w = np.zeros(5000, dt)
        opt = fo.optim.SGD([w], lr=0.0)
        scaler = fo.amp.GradScaler(init_scale=4.0, growth_interval=1000)
        scaler.step(opt, grads=[grad])
        scaler.update()
        assert scaler.get_scale() == (2.0 if skipped else 4.0), (dtype, skipped)


def test_step_checks_the_gradients_it_is_given():
    """``scaler.step(opt, grads=[...])`` checks those gradients, not the params' ``grad``."""
    w = np.ones(4, np.float16)
    opt = fo.optim.SGD([w], lr=0.1)
    scaler = fo.amp.GradScaler(init_scale=8.0)
    scaler.step(opt, grads=[np.array([1, np.inf, 1, 1], np.float16)])
    scaler.update()
    np.testing.assert_array_equal(w, np.ones(4, np.float16))
    assert scaler.get_scale() == 4.0
    scaler.step(opt, None, [np.full(4, 8.0, np.float16)])  # (grads positionally)
    scaler.update()
    np.testing.assert_array_equal(w, np.full(4, 0.8, np.float16))  # (1 - 0.1 * 8 / 4)


def test_disabled_is_a_pass_through_and_state_dict_round_trips():
    w = fo.Parameter(np.ones(3, np.float32))
    opt = fo.optim.SGD([w], lr=0.5)
    off = fo.amp.GradScaler(enabled=False)
    assert off.scale(2.0) == 2.0 and off.get_scale() == 1.0 and off.state_dict() == {}
    w.grad = np.ones(3, np.float32)
    off.step(opt)
    off.update()
    np.testing.assert_array_equal(w.data, 0.5)
    on = fo.amp.GradScaler(init_scale=8.0, growth_interval=7)
    other = fo.amp.GradScaler()
    other.load_state_dict(on.state_dict())
    assert other.state_dict() == on.state_dict()
    np.testing.assert_array_equal(on.scale([np.ones(2, np.float32), 1.5])[0], 8.0)


def test_bad_use_is_refused_as_torch():
    w = fo.Parameter(np.ones(3, np.float32))
    w.grad = np.ones(3, np.float32)
    opt = fo.optim.SGD([w], lr=0.5)
    scaler = fo.amp.GradScaler()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) is being called after step"):
        scaler.unscale_(opt)
    scaler.update()
    with pytest.raises(AssertionError, match="No inf checks were recorded"):
        scaler.update()
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, lambda: 0.0)
    for kw, exc, msg in [(dict(growth_factor=1.0), ValueError, "growth factor must be > 1.0"),
                         (dict(backoff_factor=1.0), ValueError, "backoff factor must be < 1.0"),
                         (dict(init_scale=0.0), ValueError, "init_scale must be > 0"),
                         (dict(growth_interval=0), ValueError, "growth_interval must be a positive integer"),
                         (dict(device="cuda"), ValueError, "device must be 'cpu'"),
                         (dict(init_scale="big"), TypeError, "init_scale must be a finite number")]:
        with pytest.raises(exc, match=msg):
            fo.amp.GradScaler(**kw)
    before = w.data.copy()
    with pytest.raises(ValueError, match="grad_scale must be a finite number > 0"):
        opt.step(grad_scale=0.0)
    with pytest.raises(ValueError, match="grad_scale must be a finite number > 0"):
        opt.step(grad_scale=float("nan"))
    np.testing.assert_array_equal(w.data, before)
