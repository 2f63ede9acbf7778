"""Optimizers torch lacks (AdaBound/AMSBound, Lion, AdaBelief) against NumPy references
written straight from the papers' algorithms, and every optimizer's behaviour at its
defaults on a quadratic and on Rosenbrock."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry
from conftest import assert_close

STEPS = 100
SHAPES = [(), (1,), (7,), (33,), (1023,), (20, 31)]


def adabound_ref(p, grads, lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8, weight_decay=0.0,
                 amsbound=False, decoupled_weight_decay=False, maximize=False):
    """Luo et al. (2019), Algorithm 2 (AdaBound) / AMSBound, as in the authors' code."""
    b1, b2 = betas
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = -g if maximize else g
        if weight_decay:
            if decoupled_weight_decay:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if amsbound:
            vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsbound else v) + eps
        step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        lower, upper = final_lr * (1 - 1 / (gamma * t + 1)), final_lr * (1 + 1 / (gamma * t))
        p = p - np.clip(step_size / denom, lower, upper) * m
    state = {"exp_avg": m, "exp_avg_sq": v}
    if amsbound:
        state["max_exp_avg_sq"] = vmax
    return p, state


def lion_ref(p, grads, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
    """Chen et al. (2023), Algorithm 2 (decoupled weight decay)."""
    b1, b2 = betas
    m = np.zeros_like(p)
    for g in grads:
        g = -g if maximize else g
        c = b1 * m + (1 - b1) * g
        p = p * (1 - lr * weight_decay) - lr * np.sign(c)
        m = b2 * m + (1 - b2) * g
    return p, {"exp_avg": m}


def adabelief_ref(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, decoupled_weight_decay=True,
                  maximize=False, rectify=False):
    """Zhuang et al. (2020), Algorithm 1, with the authors' decoupled decay option."""
    b1, b2 = betas
    m, s = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = -g if maximize else g
        if weight_decay:
            if decoupled_weight_decay:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        m_hat, s_hat = m / (1 - b1**t), s / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(s_hat) + eps)
    return p, {"exp_avg": m, "exp_avg_var": s}


def lamb_ref(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, bias_correction=True,
             maximize=False):
    """You et al. (2020), Algorithm 2 (LAMB), trust ratio phi(||p||)/||r|| with phi the identity
    and 1 when a norm is 0, as optax."""
    b1, b2 = betas
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = -g if maximize else g
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        bc1, bc2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
        r = (m / bc1) / (np.sqrt(v / bc2) + eps) + weight_decay * p
        pn, rn = np.linalg.norm(p.ravel()), np.linalg.norm(r.ravel())
        trust = 1.0 if pn == 0 or rn == 0 else pn / rn  # (a NaN norm: NaN, as the published code)
        p = p - lr * trust * r
    return p, {"exp_avg": m, "exp_avg_sq": v}


def adopt_ref(p, grads, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_lambda=lambda step: step**0.25,
              weight_decay=0.0, decouple=False, maximize=False):
    """The authors' ADOPT step (iShohei220/adopt, adopt.py, _single_tensor_adopt), in NumPy."""
    b1, b2 = betas
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step, g in enumerate(grads):  # (their step count before the increment)
        g = -g if maximize else g
        if weight_decay != 0 and not decouple:
            g = g + weight_decay * p
        if step == 0:
            v = v + g * g
            continue
        if weight_decay != 0 and decouple:
            p = p + p * (-lr * weight_decay)
        n = g / np.maximum(np.sqrt(v), eps)
        if clip_lambda is not None:
            c = clip_lambda(step)
            n = np.clip(n, -c, c)
        m = m + (1 - b1) * (n - m)
        p = p - lr * m
        v = v * b2 + (1 - b2) * g * g
    return p, {"exp_avg": m, "exp_avg_sq": v}


def ademamix_ref(p, grads, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None, alpha_warmup=None,
                 eps=1e-8, weight_decay=0.0, maximize=False):
    """The authors' AdEMAMix step (apple/ml-ademamix, pytorch/ademamix.py), in NumPy."""
    import math

    def f(beta, eps=1e-8):
        return math.log(0.5) / math.log(beta + eps) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    b1, b2, b3_final = betas
    m1, m2, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for step, g in enumerate(grads, 1):
        g = -g if maximize else g
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        a = alpha * step / alpha_warmup if alpha_warmup is not None and step < alpha_warmup else alpha
        if beta3_warmup is not None and step < beta3_warmup:
            w = step / float(beta3_warmup)
            b3 = f_inv((1.0 - w) * f(b1) + w * f(b3_final))
        else:
            b3 = b3_final
        m1 = m1 * b1 + (1 - b1) * g
        m2 = m2 * b3 + (1 - b3) * g
        v = v * b2 + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(bc2) + eps
        update = (m1 / bc1 + a * m2) / denom
        update = update + weight_decay * p
        p = p - lr * update
    return p, {"exp_avg_fast": m1, "exp_avg_slow": m2, "exp_avg_sq": v}


def _step_both(torch, opt, ref, ps, ts, rng, dtype, steps=STEPS):
    """``steps`` steps of a fastopt optimizer over ``ps`` and its oracle over the torch
    tensors ``ts``, with the same random gradients."""
    for _ in range(steps):
        for p, t in zip(ps, ts):
            g = np.asarray(rng.standard_normal(p.data.shape), dtype)
            p.grad = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        ref.step()


CASES = [
    ("AdaBound", adabound_ref, {}),
    ("AdaBound", adabound_ref, dict(lr=1e-2, final_lr=0.05, gamma=1e-2, weight_decay=0.1, maximize=True)),
    ("AdaBound", adabound_ref, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AMSBound", adabound_ref, dict(lr=1e-2, gamma=1e-2)),
    ("AdaBound", adabound_ref, dict(lr=1e-2, amsbound=True, weight_decay=0.05)),
    ("Lion", lion_ref, {}),
    ("Lion", lion_ref, dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=0.1, maximize=True)),
    ("AdaBelief", adabelief_ref, dict(rectify=False)),
    ("AdaBelief", adabelief_ref, dict(lr=1e-2, eps=1e-12, weight_decay=0.1, decoupled_weight_decay=False, rectify=False)),
    ("AdaBelief", adabelief_ref, dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.1, maximize=True, rectify=False)),
    ("ADOPT", adopt_ref, {}),
    ("ADOPT", adopt_ref, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, maximize=True)),
    ("ADOPT", adopt_ref, dict(lr=1e-2, weight_decay=0.1, decouple=True, clip_lambda=None, eps=1e-3)),
    ("ADOPT", adopt_ref, dict(lr=1e-2, clip_lambda=lambda step: 0.5 + 0.01 * step)),
    ("AdEMAMix", ademamix_ref, {}),
    ("AdEMAMix", ademamix_ref, dict(lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=5.0, weight_decay=0.1, maximize=True)),
    ("AdEMAMix", ademamix_ref, dict(lr=1e-2, alpha=8.0, beta3_warmup=60, alpha_warmup=40)),
    ("Lamb", lamb_ref, {}),
    ("Lamb", lamb_ref, dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    ("Lamb", lamb_ref, dict(lr=1e-2, betas=(0.8, 0.9), bias_correction=False, eps=1e-8)),
]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,ref,kw", CASES, ids=IDS)
def test_matches_the_papers_algorithm(simd_level, threads, name, ref, kw, dtype):
    rng = np.random.default_rng(0)
    p0 = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES] for _ in range(STEPS)]
    ps = [fo.Parameter(p.copy()) for p in p0]
    opt = getattr(fo.optim, name)(ps, **kw)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g
        opt.step()
    ref_kw = dict(kw, amsbound=True) if name == "AMSBound" else kw
    for i, p in enumerate(ps):
        want, state = ref(p0[i].astype(np.float64), [g[i].astype(np.float64) for g in grads], **ref_kw)
        if name == "Lion" and dtype == np.float32:
            # sign(c) may flip where c rounds to about zero in float32: at most a few lr-sized steps.
            lr = kw.get("lr", 1e-4)
            assert np.max(np.abs(p.data - want)) <= 4 * lr + 1e-5 * np.max(np.abs(want))
            continue
        tol = None
        if name == "AdEMAMix" and dtype == np.float32:
            # The slow average's 1 - beta3 (1e-4) is stored to float32's relative precision
            # over 1 - beta3, in torch as here: the bar follows from it.
            tol = 8 * float(np.finfo(np.float32).eps) / (1 - kw.get("betas", (0, 0, 0.9999))[2])
        assert_close(p.data, want.astype(dtype), f"{name} param {i}", scale=float(np.max(np.abs(p0[i]), initial=0)),
                     tol=tol)
        for k, v in state.items():
            assert_close(opt.state[p][k], v.astype(dtype), f"{name} {k} {i}", tol=tol)
        assert float(opt.state[p]["step"]) == STEPS


def test_adabound_final_lr_follows_a_scheduler():
    """The authors' workaround: the bounds use final_lr * lr / base_lr, so a schedule that
    halves the lr halves the final lr too; base_lr is kept in the group (and state dict)."""
    p = fo.Parameter(np.ones(4))
    opt = fo.optim.AdaBound([p], lr=1e-2, final_lr=0.1)
    sched = fo.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    group = opt.param_groups[0]
    assert opt._hyper(group)["final_lr"] == 0.1
    p.grad = np.full(4, 0.3)
    opt.step()
    sched.step()
    assert group["lr"] == 5e-3 and opt._hyper(group)["final_lr"] == 0.05
    assert opt.state_dict()["param_groups"][0]["base_lr"] == 1e-2
    fresh = fo.optim.AdaBound([fo.Parameter(np.ones(4))], lr=1.0)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["base_lr"] == 1e-2


ALL = [getattr(fo.optim, s.name) for s in registry.OPTIMIZERS if not (s.closure or s.matrix)]  # (Muon: test_muon.py)


def quadratic(x):
    a = np.array([1.0, 10.0])
    return float(np.sum(a * x**2)), 2 * a * x


def rosenbrock(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return float(f), g


@pytest.mark.parametrize("fn,start", [(quadratic, [1.5, -1.0]), (rosenbrock, [-1.5, 2.0])], ids=["quadratic", "rosenbrock"])
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_defaults_descend_and_maximize_ascends(cls, fn, start):
    # ASGD's default lr (1e-2) diverges on Rosenbrock from this start, in torch as here
    # (its first gradient is about 155): that one case runs at lr=1e-3.
    kw = {"lr": 1e-3} if (cls is fo.optim.ASGD and fn is rosenbrock) else {}
    # Schedule-Free SGD's default lr (1.0, the authors') is an SGD rate: above 2 / 20, the
    # quadratic's largest curvature, it diverges, in their package as here.
    if cls is fo.optim.SGDScheduleFree:
        kw = {"lr": 0.05 if fn is quadratic else 1e-5}
    # Prodigy's estimate grows without limit while ascending an unbounded objective, until it
    # overflows (the authors' too): the estimate's growth is limited here.
    if cls is fo.optim.Prodigy:
        kw = {"growth_rate": 1.02}
    with np.errstate(over="ignore", invalid="ignore"):  # ascent may run off to infinity
        _descend_or_ascend(cls, fn, start, kw)


def _descend_or_ascend(cls, fn, start, kw):
    for maximize in (False, True):
        x = fo.Parameter(np.array(start))
        opt = cls([x], maximize=maximize, **kw)
        f0, _ = fn(x.data)
        for _ in range(300):
            f, g = fn(x.data)
            x.grad = g
            opt.step()
        f1, _ = fn(x.data)
        assert (f1 > f0) if maximize else (f1 < f0), (cls.__name__, maximize, f0, f1)


def test_lamb_zero_parameter_uses_trust_one():
    """A tensor that is all zeros (a fresh bias) has ||p|| = 0: the ratio is 1, as optax."""
    b = fo.Parameter(np.zeros(5))
    opt = fo.optim.Lamb([b], lr=0.1)
    b.grad = np.full(5, 2.0)
    opt.step()
    np.testing.assert_allclose(b.data, -0.1 * 2.0 / (2.0 + 1e-6))


NONFINITE = [np.nan, np.inf, -np.inf]


def lion_official(torch, p, grads, lr, betas=(0.9, 0.99), weight_decay=0.0):
    """The authors' Lion step (google/automl, lion/lion_pytorch.py), transcribed in torch:
    the update is ``exp_avg * beta1 + grad * (1 - beta1)``, its ``sign_()``."""
    b1, b2 = betas
    p = torch.tensor(p)
    exp_avg = torch.zeros_like(p)
    for g in grads:
        g = torch.tensor(g)
        p.mul_(1 - lr * weight_decay)
        update = exp_avg * b1 + g * (1 - b1)
        p.add_(update.sign_(), alpha=-lr)
        exp_avg.mul_(b2).add_(g, alpha=1 - b2)
    return p.numpy(), exp_avg.numpy()


@pytest.mark.parametrize("bad", NONFINITE, ids=["nan", "inf", "-inf"])
def test_lion_non_finite_gradient_as_published(bad, torch, pytorch_optimizer):
    """Lion with a NaN or infinite gradient element, against the authors' code (torch's sign,
    whose CPU sign(NaN) is 0): the other elements move as usual and the bad one's parameter
    stays finite. pytorch-optimizer's Lion agrees for NaN; for an infinite element it differs
    from the authors (its interpolation is a lerp, inf + w*(g - inf) = NaN, so its sign is 0)."""
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(4)]
    grads[1][2] = bad
    p = fo.Parameter(p0.copy())
    opt = fo.optim.Lion([p], lr=0.1, weight_decay=0.01)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    want, want_m = lion_official(torch, p0.copy(), grads, lr=0.1, weight_decay=0.01)
    np.testing.assert_allclose(p.data, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(opt.state[p]["exp_avg"], want_m, rtol=1e-13)
    assert np.isfinite(p.data).all()
    if np.isnan(bad):
        t = torch.nn.Parameter(torch.tensor(p0.copy()))
        ref = pytorch_optimizer.Lion([t], lr=0.1, weight_decay=0.01, weight_decouple=True, foreach=False)
        for g in grads:
            t.grad = torch.tensor(g.copy())
            ref.step()
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("bad", NONFINITE, ids=["nan", "inf", "-inf"])
def test_lamb_non_finite_gradient_as_published(bad):
    """LAMB with a NaN or infinite gradient element: the norms are NaN (or the ratio 0 times
    an infinite direction), so the whole tensor becomes NaN, as in the paper's algorithm and
    every published implementation, never an unscaled step of the other elements."""
    rng = np.random.default_rng(6)
    p0 = rng.standard_normal(5)
    g = rng.standard_normal(5)
    g[1] = bad
    p = fo.Parameter(p0.copy())
    opt = fo.optim.Lamb([p], lr=0.1, weight_decay=0.01)
    p.grad = g.copy()
    opt.step()
    with np.errstate(invalid="ignore"):
        want, _ = lamb_ref(p0.copy(), [g], lr=0.1, weight_decay=0.01)
    np.testing.assert_array_equal(np.isnan(p.data), np.isnan(want))
    assert np.isnan(p.data).any()
    np.testing.assert_allclose(p.data[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adopt_and_ademamix_match_pytorch_optimizer(torch, pytorch_optimizer, dtype):
    """The second oracle: pytorch-optimizer's ADOPT and AdEMAMix, 100 steps. Its ADOPT counts
    steps from 1 where the authors' code counts from 0, so it is given the authors' bound
    ``(step - 1) ** 0.25``; its AdEMAMix's warm-ups are one option, left off."""
    rng = np.random.default_rng(3)
    shapes = [(7,), (33, 31)]
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(STEPS)]
    cases = [
        (fo.optim.ADOPT, dict(lr=1e-2, weight_decay=0.1),
         lambda ps: pytorch_optimizer.ADOPT(ps, lr=1e-2, weight_decay=0.1, clip_lambda=lambda s: (s - 1) ** 0.25,
                                            foreach=False)),
        (fo.optim.AdEMAMix, dict(lr=1e-2, alpha=5.0),
         lambda ps: pytorch_optimizer.AdEMAMix(ps, lr=1e-2, alpha=5.0, foreach=False)),
    ]
    for cls, kw, make in cases:
        ps = [fo.Parameter(p.copy()) for p in p0]
        ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
        opt, ref = cls(ps, **kw), make(ts)
        for step in grads:
            for p, t, g in zip(ps, ts, step):
                p.grad = g
                t.grad = torch.tensor(g.copy())
            opt.step()
            ref.step()
        for p, t, p_init in zip(ps, ts, p0):
            assert_close(p.data, t.detach().numpy(), cls.__name__, scale=float(np.abs(p_init).max()),
                         tol=1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("bad", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,ref", [("ADOPT", adopt_ref), ("AdEMAMix", ademamix_ref)])
def test_new_optimizers_non_finite_gradient_as_the_authors(name, ref, bad):
    """A NaN or infinite gradient element: where the authors' code gives NaN (or inf), so do
    we; every other element is unaffected."""
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(5)]
    grads[2][3] = bad
    p = fo.Parameter(p0.copy())
    opt = getattr(fo.optim, name)([p], lr=0.1)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    with np.errstate(invalid="ignore", over="ignore"):
        want, _ = ref(p0.copy(), grads, lr=0.1)
    np.testing.assert_array_equal(np.isnan(p.data), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(p.data), np.isinf(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(p.data[ok], want[ok], rtol=1e-12)


def c_adamw_official(torch, p, grads, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
    """The authors' C-AdamW step (kyleliang919/C-Optim, c_adamw.py, correct_bias=True), in torch."""
    import math

    b1, b2 = betas
    p = torch.tensor(p)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for step, g in enumerate(grads, 1):
        g = torch.tensor(g)
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = v.sqrt().add_(eps)
        step_size = lr * math.sqrt(1.0 - b2**step) / (1.0 - b1**step)
        mask = (m * g > 0).to(g.dtype)
        mask = mask * (mask.numel() / (mask.sum() + 1))
        p.add_((m * mask) / denom, alpha=-step_size)
        if weight_decay > 0.0:
            p.add_(p, alpha=-lr * weight_decay)
    return p.numpy(), {"exp_avg": m.numpy(), "exp_avg_sq": v.numpy()}


def cautious_adam_ref(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False,
                      maximize=False):
    """torch's Adam/AdamW step with the cautious mask of Liang et al. (2024), Algorithm 1, in
    NumPy: the step kept where it goes against the gradient, scaled by n / (kept + 1)."""
    b1, b2 = betas
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = -g if maximize else g
        if weight_decay and decoupled:
            p = p * (1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * p
        m = m + (1 - b1) * (g - m)
        v = b2 * v + (1 - b2) * g * g
        delta = -lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
        keep = delta * g < 0
        p = p + np.where(keep, delta * (p.size / (keep.sum() + 1)), 0.0)
    return p, {"exp_avg": m, "exp_avg_sq": v}


CAUTIOUS = [
    ("Adam", dict(lr=1e-2), {}),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, maximize=True), dict(weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99)), dict(weight_decay=0.1, decoupled=True, betas=(0.8, 0.99))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw,ref_kw", CAUTIOUS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CAUTIOUS)])
def test_cautious_adam_matches_the_algorithm(threads, name, kw, ref_kw, dtype):
    rng = np.random.default_rng(4)
    shapes = [(), (7,), (33, 31), (40_000,)]  # (the last split across threads in both passes)
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(30)]
    ps = [fo.Parameter(p.copy()) for p in p0]
    opt = getattr(fo.optim, name)(ps, cautious=True, **kw)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g
        opt.step()
    for i, p in enumerate(ps):
        want, state = cautious_adam_ref(p0[i].astype(np.float64), [g[i].astype(np.float64) for g in grads],
                                        lr=kw["lr"], **ref_kw)
        # (an element whose step is within rounding of zero may fall on either side of the mask)
        tol = 1e-10 if dtype == np.float64 else 1e-4
        assert_close(p.data, want.astype(dtype), f"{name} param {i}", scale=float(np.abs(p0[i]).max()), tol=tol)
        for k, v in state.items():
            assert_close(opt.state[p][k], v.astype(dtype), f"{name} {k} {i}", tol=tol)


def test_cautious_adamw_matches_the_authors(torch):
    """Against the authors' C-AdamW (their eps is added before the bias correction of the
    denominator and their decay follows the update: eps=0 and no decay make the two equal)."""
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(300)
    grads = [rng.standard_normal(300) for _ in range(50)]
    p = fo.Parameter(p0.copy())
    opt = fo.optim.AdamW([p], lr=1e-2, eps=0.0, weight_decay=0.0, cautious=True)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    want, state = c_adamw_official(torch, p0.copy(), grads, lr=1e-2, eps=0.0)
    assert_close(p.data, want, "C-AdamW", scale=float(np.abs(p0).max()))
    assert_close(opt.state[p]["exp_avg"], state["exp_avg"], "exp_avg")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cautious_lion_matches_pytorch_optimizer(torch, pytorch_optimizer, dtype):
    rng = np.random.default_rng(10)
    shapes = [(7,), (33, 31)]
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt = fo.optim.Lion(ps, lr=1e-2, weight_decay=0.1, cautious=True)
    ref = pytorch_optimizer.Lion(ts, lr=1e-2, weight_decay=0.1, weight_decouple=True, cautious=True, foreach=False)
    for _ in range(50):
        for p, t in zip(ps, ts):
            g = rng.standard_normal(p.data.shape).astype(dtype)
            p.grad = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        ref.step()
    for p, t, p_init in zip(ps, ts, p0):
        assert_close(p.data, t.detach().numpy(), "cautious Lion", scale=float(np.abs(p_init).max()),
                     tol=1e-12 if dtype == np.float64 else 1e-5)


ADABELIEF_OFFICIAL = [
    {},
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, amsgrad=True, weight_decay=0.1, decoupled_weight_decay=False),
    dict(lr=1e-2, betas=(0.8, 0.99), fixed_decay=True, weight_decay=0.01, eps=1e-12),
    dict(lr=1e-2, degenerated_to_sgd=False),
    dict(lr=1e-2, rectify=False, amsgrad=True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", ADABELIEF_OFFICIAL, ids=[str(i) for i in range(len(ADABELIEF_OFFICIAL))])
def test_adabelief_matches_the_authors_package(torch, adabelief_official, kw, dtype, capsys):
    """AdaBelief against adabelief-pytorch, 100 steps, its defaults (rectified) and options."""
    rng = np.random.default_rng(12)
    shapes = [(), (7,), (33, 31)]
    p0 = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt = fo.optim.AdaBelief(ps, **kw)
    theirs = {("weight_decouple" if k == "decoupled_weight_decay" else k): v for k, v in kw.items()}
    ref = adabelief_official(ts, print_change_log=False, **theirs)
    _step_both(torch, opt, ref, ps, ts, rng, dtype)
    capsys.readouterr()  # (their constructor prints its options)
    for p, t, p_init in zip(ps, ts, p0):
        assert_close(p.data, t.detach().numpy(), "AdaBelief", scale=float(np.abs(p_init).max()),
                     tol=1e-12 if dtype == np.float64 else 2e-5)
        for k in opt.state[p]:
            if k != "step":
                assert_close(opt.state[p][k], ref.state[t][k].numpy(), f"AdaBelief {k}",
                             tol=1e-12 if dtype == np.float64 else 2e-5)


SCHEDULEFREE = [
    ("AdamWScheduleFree", {"lr": 1e-2}),
    ("AdamWScheduleFree", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1, "warmup_steps": 10, "r": 0.5}),
    ("AdamWScheduleFree", {"lr": 3e-3, "eps": 1e-6, "weight_lr_power": 1.0}),
    ("SGDScheduleFree", {"lr": 1e-2}),
    ("SGDScheduleFree", {"lr": 5e-2, "momentum": 0.5, "weight_decay": 0.1, "warmup_steps": 10, "r": 1.0}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", SCHEDULEFREE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULEFREE)])
def test_schedulefree_matches_the_authors_package(torch, schedulefree, threads, name, kw, dtype):
    """100 steps against schedulefree's own optimizer (foreach=False), with eval()/train()
    switches every 25 steps and at the end; parameters, z and the second moment."""
    rng = np.random.default_rng(14)
    shapes = [(), (7,), (33, 31), (40_000,)]
    p0 = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt = getattr(fo.optim, name)(ps, **kw)
    ref = getattr(schedulefree, name)(ts, foreach=False, **kw)
    opt.train()
    ref.train()
    for _ in range(STEPS // 25):
        _step_both(torch, opt, ref, ps, ts, rng, dtype, steps=25)
        opt.eval(), ref.eval()
        opt.train(), ref.train()
    opt.eval()
    ref.eval()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for p, t, p_init in zip(ps, ts, p0):
        assert_close(p.data, t.detach().numpy(), name, scale=float(np.abs(p_init).max()), tol=tol)
        for k in opt.state[p]:
            assert_close(opt.state[p][k], ref.state[t][k].numpy(), f"{name} {k}", scale=float(np.abs(p_init).max()),
                         tol=tol)
    for key in ("k", "weight_sum", "lr_max", "train_mode"):
        assert opt.param_groups[0][key] == ref.param_groups[0][key], key


def test_schedulefree_train_eval_and_state_dict(torch, schedulefree):
    """eval() then train() is the identity up to rounding; the group counters travel in the
    state dict; a state dict loads into the authors' optimizer and continues identically."""
    rng = np.random.default_rng(15)
    p = fo.Parameter(rng.standard_normal(20))
    opt = fo.optim.AdamWScheduleFree([p], lr=1e-2)
    for _ in range(5):
        p.grad = rng.standard_normal(20)
        opt.step()
    y = p.data.copy()
    opt.eval()
    assert not np.allclose(p.data, y)
    opt.train()
    np.testing.assert_allclose(p.data, y, rtol=1e-13, atol=1e-15)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["k"] == 5 and sd["param_groups"][0]["train_mode"] is True
    t = torch.nn.Parameter(torch.tensor(p.data.copy()))
    ref = schedulefree.AdamWScheduleFree([t], lr=1e-2, foreach=False)
    ref.load_state_dict(fo.optim.to_torch_state_dict(sd))
    g = rng.standard_normal(20)
    p.grad, t.grad = g.copy(), torch.tensor(g.copy())
    opt.step()
    ref.step()
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("spec", [s for s in registry.OPTIMIZERS if not s.closure], ids=lambda s: s.name)
def test_trains_a_small_mlp(spec):
    """Every optimizer (its first registry configuration, Muon its matrices only and Adam
    for the biases) lowers the training loss of a small MLP on a regression task by half
    within 300 steps of full-batch training (with ``maximize``, at least doubles it)."""
    nn, F = fo.nn, fo.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = np.sin(x @ rng.standard_normal((4, 1)).astype(np.float32))
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    for p in net.parameters():
        p.data[...] = rng.standard_normal(p.data.shape).astype(np.float32) * 0.5
    kw = dict(spec.configs[0])
    if spec.name in ("SGDScheduleFree", "Rprop", "ASGD", "SGD", "Adadelta"):
        kw.setdefault("lr", 0.05)
    params = list(net.parameters())
    if spec.matrix:
        mats = [p for p in params if p.data.ndim == 2]
        opts = [getattr(fo.optim, spec.name)(mats, **kw), fo.optim.Adam([p for p in params if p.data.ndim != 2], lr=1e-2)]
    else:
        opts = [getattr(fo.optim, spec.name)(params, **kw)]

    def loss_and_grads():
        for o in opts:
            o.zero_grad()
        out = net(x)
        loss = float(F.mse_loss(out, y))
        net.backward(F.mse_loss_backward(1.0, out, y))
        return loss

    first = loss_and_grads()
    with np.errstate(all="ignore"):
        for _ in range(300):
            for o in opts:
                o.step()
            last = loss_and_grads()
    if kw.get("maximize"):
        assert last > 2 * first, (spec.name, first, last)
    else:
        assert last < 0.5 * first, (spec.name, first, last)


LAMB_VARIANTS = [
    (dict(lr=1e-2, clamp_value=10, bias_correction=False), dict(lr=1e-2, clamp_value=10, debias=False)),
    (dict(lr=1e-2, clamp_value=10, bias_correction="step", weight_decay=0.01),
     dict(lr=1e-2, clamp_value=10, debias=True, weight_decay=0.01)),
    (dict(lr=1e-2, clamp_value=0.5, bias_correction=False, betas=(0.8, 0.99)),
     dict(lr=1e-2, clamp_value=0.5, debias=False, betas=(0.8, 0.99))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw,theirs", LAMB_VARIANTS, ids=[str(i) for i in range(len(LAMB_VARIANTS))])
def test_lamb_published_variants_match_torch_optimizer(torch, torch_optimizer, kw, theirs, dtype):
    """clamp_value and the step-size bias correction against torch-optimizer's Lamb (the
    pytorch-lamb lineage), 100 steps; the norms there are in the parameter's dtype."""
    rng = np.random.default_rng(16)
    shapes = [(7,), (33, 31)]
    p0 = [np.asarray(rng.standard_normal(s) * 2, dtype) for s in shapes]
    ps = [fo.Parameter(p.copy()) for p in p0]
    ts = [torch.nn.Parameter(torch.tensor(p.copy())) for p in p0]
    opt, ref = fo.optim.Lamb(ps, **kw), torch_optimizer.Lamb(ts, **theirs)
    _step_both(torch, opt, ref, ps, ts, rng, dtype)
    for p, t, p_init in zip(ps, ts, p0):
        assert_close(p.data, t.detach().numpy(), "Lamb", scale=float(np.abs(p_init).max()),
                     tol=1e-12 if dtype == np.float64 else 3e-5)
