"""Hooks, named parameters, strict loading, 0-d array lr, and state exchange with torch."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry
from conftest import assert_close


def simple(cls=fo.optim.Adam, **kw):
    ps = [fo.Parameter(np.arange(4.0)), fo.Parameter(np.ones((2, 3)))]
    for p in ps:
        p.grad = np.full(p.shape, 0.5)
    return ps, cls(ps, **kw)


class TestHooks:
    def test_step_hooks_order_arguments_and_removal(self):
        ps, opt = simple()
        calls = []
        h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre1", a[0] is o, dict(k))))
        h2 = opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre2",)))
        h3 = opt.register_step_post_hook(lambda o, a, k: calls.append(("post", float(o.state[ps[0]]["step"]))))
        opt.step()
        assert calls == [("pre1", True, {}), ("pre2",), ("post", 1.0)]
        h1.remove()
        h1.remove()  # twice is harmless
        calls.clear()
        opt.step(grads=[np.ones(4), np.ones((2, 3))])
        assert calls == [("pre2",), ("post", 2.0)]
        h2.remove()
        h3.remove()
        calls.clear()
        opt.step()
        assert calls == []

    def test_pre_hook_can_replace_arguments(self):
        ps, opt = simple(fo.optim.SGD, lr=1.0)
        before = ps[0].data.copy()
        zero = [np.zeros(4), np.zeros((2, 3))]
        opt.register_step_pre_hook(lambda o, a, k: (a, {"grads": zero}))
        opt.step()
        np.testing.assert_array_equal(ps[0].data, before)  # stepped with the hook's zero grads

    def test_pre_hook_bad_return(self):
        ps, opt = simple()
        opt.register_step_pre_hook(lambda o, a, k: 42)
        with pytest.raises(RuntimeError, match="must return None or a tuple"):
            opt.step()

    def test_closure_passes_through_hooks(self):
        ps, opt = simple(fo.optim.SGD, lr=0.1)
        seen = []
        opt.register_step_pre_hook(lambda o, a, k: seen.append(len(a)))
        assert opt.step(lambda: 3.5) == 3.5 and seen == [2]

    def test_state_dict_hooks(self):
        ps, opt = simple()
        opt.step()
        calls = []
        opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
        opt.register_state_dict_post_hook(lambda o, sd: calls.append("post"))
        opt.register_state_dict_post_hook(lambda o, sd: dict(sd, extra=1))
        opt.register_state_dict_post_hook(lambda o, sd: calls.append("first"), prepend=True)
        sd = opt.state_dict()
        assert calls == ["pre", "first", "post"] and sd["extra"] == 1

    def test_load_state_dict_hooks(self):
        ps, opt = simple()
        opt.step()
        sd = opt.state_dict()
        calls = []

        def halve_lr(o, s):
            s = copy.deepcopy(s)
            for g in s["param_groups"]:
                g["lr"] = g["lr"] / 2
            calls.append("pre")
            return s

        opt.register_load_state_dict_pre_hook(halve_lr)
        handle = opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
        opt.load_state_dict(sd)
        assert calls == ["pre", "post"] and opt.param_groups[0]["lr"] == 5e-4
        handle.remove()
        with opt.register_load_state_dict_post_hook(lambda o: calls.append("ctx")):
            opt.load_state_dict(sd)
        opt.load_state_dict(sd)
        assert calls == ["pre", "post", "pre", "ctx", "pre"]


class TestNamedParams:
    def test_names_in_groups_and_state_dict(self):
        w, b = fo.Parameter(np.zeros((2, 2))), fo.Parameter(np.zeros(2))
        opt = fo.optim.SGD([("fc.weight", w), ("fc.bias", b)], lr=0.1, momentum=0.9)
        assert opt.param_groups[0]["params"] == [w, b]
        assert opt.param_groups[0]["param_names"] == ["fc.weight", "fc.bias"]
        w.grad, b.grad = np.ones((2, 2)), np.ones(2)
        opt.step()
        sd = opt.state_dict()
        assert sd["param_groups"][0]["param_names"] == ["fc.weight", "fc.bias"]
        assert sd["param_groups"][0]["params"] == [0, 1]

    def test_mixing_named_and_unnamed(self):
        w, b = fo.Parameter(np.zeros(2)), fo.Parameter(np.zeros(2))
        with pytest.raises(ValueError, match="Some param names are missing"):
            fo.optim.SGD([("w", w), b], lr=0.1)
        opt = fo.optim.SGD([("w", w)], lr=0.1)
        with pytest.raises(ValueError, match="cannot add param group without names"):
            opt.add_param_group({"params": [b]})

    def test_strict_loading_names_the_first_mismatch(self):
        w, b = fo.Parameter(np.zeros((2, 2))), fo.Parameter(np.zeros(2))
        opt = fo.optim.Adam([("fc.weight", w), ("fc.bias", b)])
        w.grad, b.grad = np.ones((2, 2)), np.ones(2)
        opt.step()
        sd = opt.state_dict()
        opt.load_state_dict(sd, strict=True)  # its own dict loads
        renamed = copy.deepcopy(sd)
        renamed["param_groups"][0]["param_names"][1] = "fc.b"
        with pytest.raises(ValueError, match=r"\['param_names'\]\[1\]: the state dict has 'fc.b', the optimizer 'fc.bias'"):
            opt.load_state_dict(renamed, strict=True)
        opt.load_state_dict(renamed)  # torch's positional behaviour without strict: the saved names win
        assert opt.param_groups[0]["param_names"] == ["fc.weight", "fc.b"]
        opt.load_state_dict(sd)
        reshaped = copy.deepcopy(sd)
        reshaped["state"][1]["exp_avg"] = np.zeros(3)
        with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg'\] has shape \(3,\)"):
            opt.load_state_dict(reshaped, strict=True)
        retyped = copy.deepcopy(sd)
        retyped["state"][0]["exp_avg_sq"] = retyped["state"][0]["exp_avg_sq"].astype(np.float32)
        with pytest.raises(ValueError, match="has dtype float32 but its parameter has dtype float64"):
            opt.load_state_dict(retyped, strict=True)
        opt.load_state_dict(retyped)  # cast without strict
        assert opt.state[w]["exp_avg_sq"].dtype == np.float64


@pytest.mark.parametrize("cls", [fo.optim.SGD, fo.optim.Adam, fo.optim.AdamW])
def test_lr_as_0d_array_gives_identical_results(cls):
    runs = []
    for lr in (0.01, np.array(0.01)):
        kw = {"momentum": 0.9} if cls is fo.optim.SGD else {}
        p = fo.Parameter(np.linspace(-1, 1, 33))
        opt = cls([p], lr=lr, **kw)
        sched = fo.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        for t in range(20):
            p.grad = np.sin(p.data * (t + 1))
            opt.step()
            sched.step()
        runs.append(p.data.copy())
        if isinstance(lr, np.ndarray):
            assert opt.param_groups[0]["lr"] is lr  # filled in place, as torch fills a Tensor lr
            assert opt.param_groups[0]["initial_lr"] == 0.01
    assert runs[0].tobytes() == runs[1].tobytes()


TORCH_CASES = [(n, kw) for n, kw in registry.configs(torch_only=True)]


def _grads(step, shapes, dtype=np.float64):
    rng = np.random.default_rng(step)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


@pytest.mark.parametrize("name,kw", TORCH_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CASES)])
@pytest.mark.parametrize("direction", ["fastopt_to_torch", "torch_to_fastopt"])
def test_switch_framework_mid_run(torch, name, kw, direction):
    shapes = [(5, 3), (4,)]
    # torch casts NAdam's float32 mu_product to the parameters' dtype when loading, which
    # changes its arithmetic for float64 parameters; with float32 ones nothing is cast.
    dtype = np.float32 if name in ("NAdam", "ASGD") else np.float64  # (ASGD's eta and mu likewise)
    init = [np.random.default_rng(9).standard_normal(s).astype(dtype) for s in shapes]
    # the reference: fastopt all the way
    ref = [fo.Parameter(a.copy()) for a in init]
    ref_opt = getattr(fo.optim, name)(ref, **kw)
    for t in range(30):
        for p, g in zip(ref, _grads(t, shapes, dtype)):
            p.grad = g
        ref_opt.step()

    def fo_run(params, opt, steps):
        for t in steps:
            for p, g in zip(params, _grads(t, shapes, dtype)):
                p.grad = g
            opt.step()

    def torch_run(params, opt, steps):
        for t in steps:
            for p, g in zip(params, _grads(t, shapes, dtype)):
                p.grad = torch.from_numpy(g)
            opt.step()

    if direction == "fastopt_to_torch":
        a = [fo.Parameter(x.copy()) for x in init]
        oa = getattr(fo.optim, name)(a, **kw)
        fo_run(a, oa, range(15))
        b = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in a]
        ob = getattr(torch.optim, name)(b, foreach=False, **kw)
        ob.load_state_dict(fo.optim.to_torch_state_dict(oa.state_dict()))
        torch_run(b, ob, range(15, 30))
        final = [p.detach().numpy() for p in b]
        states = [{k: v.numpy() for k, v in ob.state[p].items() if v is not None} for p in b]
    else:
        a = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in init]
        oa = getattr(torch.optim, name)(a, foreach=False, **kw)
        torch_run(a, oa, range(15))
        b = [fo.Parameter(p.detach().numpy().copy()) for p in a]
        ob = getattr(fo.optim, name)(b, **kw)
        ob.load_state_dict(oa.state_dict())
        if name != "SGD":
            assert all(s["step"].dtype == np.float32 and s["step"].shape == () for s in ob.state.values())
        if name == "NAdam":
            assert all(s["mu_product"].dtype == np.float32 for s in ob.state.values())
        fo_run(b, ob, range(15, 30))
        final = [p.data for p in b]
        states = [dict(ob.state[p]) for p in b]
    for x, r, st, rp in zip(final, ref, states, ref):
        assert_close(np.asarray(x), r.data, "param")
        for k, v in ref_opt.state[rp].items():
            assert_close(np.asarray(st[k]), np.asarray(v), k)


def test_to_torch_state_dict_copies_and_needs_a_dict(torch):
    ps, opt = simple()
    opt.step()
    sd = opt.state_dict()
    tsd = fo.optim.to_torch_state_dict(sd)
    assert isinstance(tsd["state"][0]["exp_avg"], torch.Tensor)
    assert tsd["state"][0]["step"].dtype == torch.float32 and tsd["state"][0]["step"].dim() == 0
    tsd["state"][0]["exp_avg"].add_(1.0)
    assert not np.shares_memory(sd["state"][0]["exp_avg"], tsd["state"][0]["exp_avg"].numpy())
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        fo.optim.to_torch_state_dict([1])


OPTIMIZER_NAMES = [n for n in fo.optim.__all__ if isinstance(getattr(fo.optim, n), type) and n != "Optimizer"]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_dropping_an_optimizer_frees_its_state_at_once(name):
    """No reference cycles: the state buffers (often as large as the model) go when the last
    reference to the optimizer goes, not at some later run of the cyclic garbage collector."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        p = fo.Parameter(np.linspace(-1.0, 1.0, 12).reshape(3, 4))
        kw = {"lr": 0.1} if name == "SGD" else {}
        if name == "SGD":
            kw["momentum"] = 0.9
        opt = getattr(fo.optim, name)([p], **kw)
        sched = fo.optim.lr_scheduler.StepLR(opt, step_size=2) if name != "LBFGS" else None

        def closure():
            p.grad = 2.0 * p.data
            return float((p.data**2).sum())

        for _ in range(3):
            if name == "LBFGS":
                opt.step(closure)
            else:
                closure()
                opt.step()
                sched.step()
        buffers = [v for v in opt.state[p].values() if isinstance(v, np.ndarray) and v.size > 1]
        assert buffers, f"{name} keeps no array state to watch"
        refs = [weakref.ref(opt)] + [weakref.ref(b) for b in buffers]
        del opt, sched, buffers
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()
