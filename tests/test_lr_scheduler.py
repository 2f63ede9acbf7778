"""Learning-rate schedulers against torch.optim.lr_scheduler, step for step.

For every scheduler, with several randomized argument sets, an identical torch optimizer and
scheduler are stepped alongside for 500 steps; the lr (and momentum / beta1 where cycled) of
every param group must agree within 1e-12 relative. Also: resuming from a state dict saved
mid-way, lr_at against stepping, composite schedulers, ReduceLROnPlateau on a scripted metric,
the step-order warning and torch's argument checks.
"""

from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest

import fastopt as fo

STEPS = 500


def close(a, b, what):
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-12 * max(abs(x), abs(y), 1e-300), f"{what}: {x!r} != {y!r}"


def make_optimizers(torch, kind):
    """The same two-group optimizer in fastopt and torch."""
    groups = [dict(lr=0.1), dict(lr=0.03)]
    fp = [fo.Parameter(np.zeros(3)), fo.Parameter(np.zeros(2))]
    tp = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    if kind == "sgd":
        f = fo.optim.SGD([dict(params=[p], **g) for p, g in zip(fp, groups)], lr=0.1, momentum=0.9)
        t = torch.optim.SGD([dict(params=[p], **g) for p, g in zip(tp, groups)], lr=0.1, momentum=0.9)
    else:
        f = fo.optim.Adam([dict(params=[p], **g) for p, g in zip(fp, groups)], lr=0.1)
        t = torch.optim.Adam([dict(params=[p], **g) for p, g in zip(tp, groups)], lr=0.1)
    return f, t


def momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


# Each spec: (name, optimizer kind, factory(module, optimizer, rng) -> scheduler, resumable)
def _specs():
    specs = []

    def add(name, kind="sgd", resumable=True):
        def deco(fn):
            specs.append(pytest.param(name, kind, fn, resumable, id=name))
            return fn
        return deco

    @add("LambdaLR")
    def _(m, o, r):
        k = r.uniform(0.9, 0.999)
        return m.LambdaLR(o, [lambda e, k=k: k**e, lambda e: 1.0 / (1 + e)])

    @add("MultiplicativeLR")
    def _(m, o, r):
        k = r.uniform(0.98, 0.999)
        return m.MultiplicativeLR(o, lambda e, k=k: k)

    @add("StepLR")
    def _(m, o, r):
        return m.StepLR(o, step_size=r.randint(1, 60), gamma=r.uniform(0.3, 0.95))

    @add("MultiStepLR")
    def _(m, o, r):
        ms = sorted(r.randint(1, 450) for _ in range(4))
        return m.MultiStepLR(o, milestones=ms + ms[:1], gamma=r.uniform(0.3, 0.9))

    @add("ConstantLR")
    def _(m, o, r):
        return m.ConstantLR(o, factor=r.uniform(0.1, 0.9), total_iters=r.randint(1, 100))

    @add("LinearLR")
    def _(m, o, r):
        return m.LinearLR(o, start_factor=r.uniform(0.05, 1.0), end_factor=r.uniform(0.0, 1.0), total_iters=r.randint(1, 300))

    @add("ExponentialLR")
    def _(m, o, r):
        return m.ExponentialLR(o, gamma=r.uniform(0.97, 0.999))

    @add("PolynomialLR")
    def _(m, o, r):
        return m.PolynomialLR(o, total_iters=r.randint(1, 400), power=r.uniform(0.5, 3.0))

    @add("CosineAnnealingLR")
    def _(m, o, r):
        return m.CosineAnnealingLR(o, T_max=r.randint(10, 200), eta_min=r.choice([0.0, 1e-4]))

    @add("CosineAnnealingWarmRestarts")
    def _(m, o, r):
        return m.CosineAnnealingWarmRestarts(o, T_0=r.randint(1, 50), T_mult=r.randint(1, 3), eta_min=r.choice([0.0, 1e-3]))

    @add("CyclicLR-triangular")
    def _(m, o, r):
        return m.CyclicLR(o, base_lr=[1e-3, 2e-3], max_lr=0.1, step_size_up=r.randint(5, 50), step_size_down=r.choice([None, 17]))

    @add("CyclicLR-triangular2-adam", kind="adam")
    def _(m, o, r):
        return m.CyclicLR(o, base_lr=1e-3, max_lr=[0.1, 0.05], step_size_up=r.randint(5, 50), mode="triangular2",
                          base_momentum=0.85, max_momentum=0.95)

    @add("CyclicLR-exp_range")
    def _(m, o, r):
        return m.CyclicLR(o, base_lr=1e-3, max_lr=0.1, step_size_up=r.randint(5, 50), mode="exp_range", gamma=r.uniform(0.99, 0.999))

    @add("CyclicLR-scale_fn-iterations")
    def _(m, o, r):
        return m.CyclicLR(o, base_lr=1e-3, max_lr=0.1, step_size_up=20, scale_fn=lambda x: 1 / (1 + 0.01 * x),
                          scale_mode="iterations", cycle_momentum=False)

    @add("OneCycleLR-cos")
    def _(m, o, r):
        return m.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=STEPS, pct_start=r.uniform(0.1, 0.5))

    @add("OneCycleLR-linear-three_phase-adam", kind="adam")
    def _(m, o, r):
        return m.OneCycleLR(o, max_lr=0.1, epochs=10, steps_per_epoch=50, anneal_strategy="linear", three_phase=True,
                            div_factor=r.uniform(5, 50))

    @add("SequentialLR")
    def _(m, o, r):
        warm = m.LinearLR(o, start_factor=0.1, total_iters=20)
        cos = m.CosineAnnealingLR(o, T_max=200, eta_min=1e-4)
        exp = m.ExponentialLR(o, gamma=0.99)
        return m.SequentialLR(o, [warm, cos, exp], milestones=[20, 220])

    @add("ChainedScheduler")
    def _(m, o, r):
        return m.ChainedScheduler([m.ConstantLR(o, factor=0.5, total_iters=10), m.ExponentialLR(o, gamma=0.995),
                                   m.StepLR(o, step_size=100, gamma=0.5)])

    return specs


SPECS = _specs()


def run_both(torch, kind, factory, seed, steps=STEPS, resume_at=None):
    """Steps a fastopt and a torch scheduler side by side; returns nothing, asserts equality.
    With resume_at, the fastopt side is rebuilt from state dicts at that step."""
    fopt, topt = make_optimizers(torch, kind)
    fs = factory(fo.optim.lr_scheduler, fopt, random.Random(seed))
    ts = factory(torch.optim.lr_scheduler, topt, random.Random(seed))
    close(fs.get_last_lr(), ts.get_last_lr(), "initial lr")
    for step in range(1, steps + 1):
        if step == resume_at:
            osd, ssd = fopt.state_dict(), copy.deepcopy(fs.state_dict())
            fopt, _ = make_optimizers(torch, kind)
            fs = factory(fo.optim.lr_scheduler, fopt, random.Random(seed))
            fopt.load_state_dict(osd)
            fs.load_state_dict(ssd)
        fopt.step()
        topt.step()
        fs.step()
        ts.step()
        close(fs.get_last_lr(), ts.get_last_lr(), f"step {step} last_lr")
        close([g["lr"] for g in fopt.param_groups], [g["lr"] for g in topt.param_groups], f"step {step} lr")
        close(momenta(fopt), momenta(topt), f"step {step} momentum")
    return fs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name,kind,factory,resumable", SPECS)
def test_matches_torch_step_for_step(torch, name, kind, factory, resumable, seed):
    run_both(torch, kind, factory, seed)


@pytest.mark.parametrize("name,kind,factory,resumable", SPECS)
def test_resume_from_state_dict_mid_way(torch, name, kind, factory, resumable):
    run_both(torch, kind, factory, seed=7, resume_at=250)


@pytest.mark.parametrize("name,kind,factory,resumable", SPECS)
def test_lr_at_equals_stepping(torch, name, kind, factory, resumable):
    fopt, _ = make_optimizers(torch, kind)
    fs = factory(fo.optim.lr_scheduler, fopt, random.Random(3))
    closed = [fs.lr_at(t) for t in range(STEPS + 1)]  # asked before any step
    moments = [fs.momentum_at(t) for t in range(STEPS + 1)] if hasattr(fs, "momentum_at") else None
    close(closed[0], fs.get_last_lr(), "step 0")
    for t in range(1, STEPS + 1):
        fopt.step()
        fs.step()
        close(closed[t], fs.get_last_lr(), f"lr_at({t})")
        if moments is not None and moments[t] is not None:
            close(moments[t], momenta(fopt), f"momentum_at({t})")
    assert fs.lr_at(3) == closed[3]  # asking does not change anything
    with pytest.raises(ValueError, match="non-negative int"):
        fs.lr_at(-1)


def test_cosine_warm_restarts_fractional_epochs(torch):
    fopt, topt = make_optimizers(torch, "sgd")
    fs = fo.optim.lr_scheduler.CosineAnnealingWarmRestarts(fopt, T_0=10, T_mult=2, eta_min=1e-3)
    ts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(topt, T_0=10, T_mult=2, eta_min=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in np.arange(0, 75, 0.37):
            fs.step(float(epoch))
            ts.step(float(epoch))
            close(fs.get_last_lr(), ts.get_last_lr(), f"epoch {epoch}")


def test_epoch_argument_uses_closed_form_like_torch(torch):
    fopt, topt = make_optimizers(torch, "sgd")
    fs = fo.optim.lr_scheduler.StepLR(fopt, step_size=3, gamma=0.5)
    ts = torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in [5, 9, 2, 30]:
            fs.step(e)
            ts.step(e)
            close(fs.get_last_lr(), ts.get_last_lr(), f"epoch {e}")


@pytest.mark.parametrize("mode,threshold_mode", [("min", "rel"), ("min", "abs"), ("max", "rel"), ("max", "abs")])
def test_reduce_on_plateau_scripted_metric(torch, mode, threshold_mode):
    fopt, topt = make_optimizers(torch, "sgd")
    kw = dict(mode=mode, factor=0.5, patience=3, threshold=0.01, threshold_mode=threshold_mode, cooldown=2,
              min_lr=[1e-4, 1e-3], eps=1e-9)
    fs = fo.optim.lr_scheduler.ReduceLROnPlateau(fopt, **kw)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    rng = np.random.default_rng(0)
    metric = 1.0
    seen = []
    for step in range(300):
        # improves, then plateaus, with noise; flipped for mode="max"
        metric = metric * (0.97 if step % 40 < 15 else 1.0) + rng.normal(0, 0.002)
        value = metric if mode == "min" else -metric
        fs.step(value)
        ts.step(value)
        close(fs.get_last_lr(), ts.get_last_lr(), f"step {step}")
        seen.append(fs.get_last_lr())
    assert seen[-1] != seen[0]  # it did reduce
    assert fs.lr_at(10) == seen[9]
    with pytest.raises(ValueError, match="has not seen yet"):
        fs.lr_at(10_000)
    # resume
    sd = copy.deepcopy(fs.state_dict())
    fs2 = fo.optim.lr_scheduler.ReduceLROnPlateau(fopt, **kw)
    fs2.load_state_dict(sd)
    for v in [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]:
        fs2.step(v)
        ts.step(v)
        close(fs2.get_last_lr(), ts.get_last_lr(), "resumed")


def test_warns_when_scheduler_steps_before_optimizer():
    opt = fo.optim.SGD([np.zeros(2)], lr=0.1)
    s = fo.optim.lr_scheduler.StepLR(opt, step_size=1)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        s.step()
    # as torch: optimizer steps taken before the first scheduler existed do not count
    opt1 = fo.optim.SGD([fo.Parameter(np.zeros(2))], lr=0.1)
    opt1.step()
    s1 = fo.optim.lr_scheduler.StepLR(opt1, step_size=1)
    with pytest.warns(UserWarning, match=r"before `optimizer.step\(\)`"):
        s1.step()
    opt2 = fo.optim.SGD([fo.Parameter(np.zeros(2))], lr=0.1)
    s2 = fo.optim.lr_scheduler.StepLR(opt2, step_size=1)
    opt2.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s2.step()


def test_get_lr_outside_step_warns():
    opt = fo.optim.SGD([np.zeros(2)], lr=0.1)
    s = fo.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    with pytest.warns(UserWarning, match="get_last_lr"):
        s.get_lr()


def test_initial_lr_and_last_epoch():
    opt = fo.optim.SGD([np.zeros(2)], lr=0.1)
    s = fo.optim.lr_scheduler.StepLR(opt, step_size=2)
    assert opt.param_groups[0]["initial_lr"] == 0.1 and s.last_epoch == 0 and s.base_lrs == [0.1]
    opt2 = fo.optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        fo.optim.lr_scheduler.StepLR(opt2, step_size=2, last_epoch=5)


@pytest.mark.parametrize(
    "build,exc",
    [
        (lambda m, o: m.ConstantLR(o, factor=1.5), ValueError),
        (lambda m, o: m.LinearLR(o, start_factor=0.0), ValueError),
        (lambda m, o: m.LinearLR(o, end_factor=1.5), ValueError),
        (lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=0), ValueError),
        (lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=0), ValueError),
        (lambda m, o: m.CyclicLR(o, base_lr=0.1, max_lr=1.0, mode="bogus"), ValueError),
        (lambda m, o: m.CyclicLR(o, base_lr=[0.1, 0.2, 0.3], max_lr=1.0), ValueError),
        (lambda m, o: m.OneCycleLR(o, max_lr=0.1), ValueError),
        (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError),
        (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="cubic"), ValueError),
        (lambda m, o: m.ReduceLROnPlateau(o, factor=1.0), ValueError),
        (lambda m, o: m.ReduceLROnPlateau(o, mode="up"), ValueError),
        (lambda m, o: m.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError),
        (lambda m, o: m.LambdaLR(o, [lambda e: 1.0] * 3), ValueError),
        (lambda m, o: m.MultiplicativeLR(o, 0.5), TypeError),
        (lambda m, o: m.SequentialLR(o, [m.StepLR(o, 2)], milestones=[3]), ValueError),
        (lambda m, o: m.ChainedScheduler([]), (ValueError, IndexError)),
        (lambda m, o: m.StepLR(object(), 2), TypeError),
    ],
)
def test_invalid_arguments_raise_torchs_exception_types(torch, build, exc):
    fopt, topt = make_optimizers(torch, "sgd")
    with pytest.raises(exc):
        build(torch.optim.lr_scheduler, topt)
    with pytest.raises(exc):
        build(fo.optim.lr_scheduler, fopt)


def test_plateau_not_allowed_in_composites():
    opt = fo.optim.SGD([np.zeros(2)], lr=0.1)
    m = fo.optim.lr_scheduler
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        m.SequentialLR(opt, [m.StepLR(opt, 2), m.ReduceLROnPlateau(opt)], milestones=[3])
    other = fo.optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="same optimizer"):
        m.ChainedScheduler([m.StepLR(opt, 2), m.StepLR(other, 2)])


def test_lambdas_are_left_out_of_state_dicts_but_callable_objects_kept():
    class Decay:
        def __init__(self):
            self.rate = 0.5

        def __call__(self, e):
            return self.rate**e

    opt = fo.optim.SGD([np.zeros(2)], lr=0.1)
    d = Decay()
    s = fo.optim.lr_scheduler.LambdaLR(opt, d)
    sd = s.state_dict()
    assert sd["lr_lambdas"] == [{"rate": 0.5}] and "optimizer" not in sd
    d.rate = 0.9
    s.load_state_dict(sd)
    assert d.rate == 0.5
    s2 = fo.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    assert s2.state_dict()["lr_lambdas"] == [None]


def test_chained_lr_at_with_cosine_and_refusal_for_setting_children():
    m = fo.optim.lr_scheduler
    opt = fo.optim.SGD([fo.Parameter(np.zeros(2))], lr=0.1)
    chain = m.ChainedScheduler([m.CosineAnnealingLR(opt, T_max=50), m.ExponentialLR(opt, gamma=0.99)])
    expected = [chain.lr_at(t) for t in range(51)]
    for t in range(1, 51):
        opt.step()
        chain.step()
        close(expected[t], chain.get_last_lr(), f"chained lr_at({t})")
    with pytest.raises(ValueError, match="CosineAnnealingLR sets it"):
        chain.lr_at(51)
    opt2 = fo.optim.SGD([np.zeros(2)], lr=0.1)
    chain2 = m.ChainedScheduler([m.LambdaLR(opt2, lambda e: 0.9**e), m.ExponentialLR(opt2, gamma=0.99)])
    with pytest.raises(ValueError, match=r"lr_at\(3\) needs children that scale the lr; LambdaLR sets it"):
        chain2.lr_at(3)


def test_plot_writes_a_png(tmp_path):
    from fastopt.plot import lr_schedule  # matplotlib is in the test extras

    opt = fo.optim.SGD([{"params": [np.zeros(2)]}, {"params": [np.zeros(3)], "lr": 0.05}], lr=0.1)
    s = fo.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.1, 0.05], total_steps=200)
    out = lr_schedule(s, 200, tmp_path / "onecycle.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    out2 = lr_schedule(lambda o: fo.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2), 150,
                       tmp_path / "sgdr.png")
    assert out2.stat().st_size > 2000
    with pytest.raises(ValueError, match="positive int"):
        lr_schedule(s, 0, tmp_path / "x.png")


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from fastopt.plot import lr_schedule

    opt = fo.optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ImportError, match=r"pip install 'fastopt\[plot\]'"):
        lr_schedule(fo.optim.lr_scheduler.StepLR(opt, 5), 10, tmp_path / "x.png")
