"""fastopt.torch: fastopt's optimizers as torch.optim.Optimizer subclasses on torch models.

Oracles: torch.optim.<Name>(foreach=False) on the same model and batches (optimizers torch
has), and fastopt.optim.<Name> replaying the same gradients on NumPy copies (every
optimizer: the torch wrapper must add nothing to the arithmetic, bit for bit)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastopt as fo
from conftest import oracle
from fastopt.optim import registry

SPECS = [s for s in registry.OPTIMIZERS if not (s.closure or s.matrix)]  # (Muon: test_muon.py)
TORCH_SPECS = [s for s in SPECS if s.torch]


def _mlp(torch, dtype):
    # (no bias before a BatchNorm: its gradient would be rounding noise, which normalising
    # optimizers turn into steps of full size)
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


def _cnn(torch):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))


def _batches(torch, n, shape, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g, dtype=dtype), torch.randn(8, 3, generator=g, dtype=dtype))
            for _ in range(n)]


def _train(torch, model, opt, batches, *, scheduler=None, scaler=None, clip=None, record=None, start=0):
    losses = []
    for x, y in batches[start:]:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if record is not None:
            record.append([None if p.grad is None else p.grad.detach().numpy().copy() for p in model.parameters()])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def _params(model):
    return [p.detach().numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("spec", TORCH_SPECS, ids=[s.name for s in TORCH_SPECS])
def test_trains_a_torch_mlp_as_torch_does(torch, spec):
    import fastopt.torch as ft

    kwargs = dict(spec.configs[0])
    batches = _batches(torch, 100, (6,), torch.float64)
    runs = []
    for cls, extra in ((getattr(torch.optim, spec.torch), {"foreach": False} if spec.name != "Adafactor" else {}),
                       (getattr(ft, spec.name), {})):
        model = _mlp(torch, torch.float64)
        opt = cls(model.parameters(), **kwargs, **extra)
        runs.append((_train(torch, model, opt, batches, clip=1.0), _params(model)))
    (la, pa), (lb, pb) = runs
    np.testing.assert_allclose(lb, la, rtol=1e-8, atol=1e-12)
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_adds_nothing_to_fastopts_arithmetic(torch, spec):
    """The same gradients through fastopt.optim on NumPy copies: bit-identical parameters
    and state (float32, with a scheduler changing lr mid-run)."""
    import fastopt.torch as ft

    kwargs = dict(spec.configs[0])
    model = _cnn(torch)
    start = _params(model)
    opt = getattr(ft, spec.name)(model.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, 7, 0.5)
    grads: list = []
    _train(torch, model, opt, _batches(torch, 20, (2, 5, 5), torch.float32), scheduler=sched, record=grads)
    arrays = [fo.Parameter(a) for a in start]
    ref = getattr(fo.optim, spec.name)(arrays, **kwargs)
    ref_sched = fo.optim.lr_scheduler.StepLR(ref, 7, 0.5)
    for g in grads:
        ref.step(grads=g)
        ref_sched.step()
    for p, a in zip(model.parameters(), arrays):
        assert p.detach().numpy().tobytes() == a.data.tobytes()
        st, rst = opt.state[p], ref.state[a]
        assert set(st) == set(rst)
        for k in st:
            assert np.asarray(st[k]).tobytes() == np.asarray(rst[k]).tobytes(), k


def test_lbfgs_with_a_closure_as_torch(torch):
    import fastopt.torch as ft

    results = []
    for cls in (torch.optim.LBFGS, ft.LBFGS):
        model = _mlp(torch, torch.float64).eval()
        x, y = _batches(torch, 1, (6,), torch.float64)[0]
        opt = cls(model.parameters(), lr=0.5, max_iter=10, history_size=5, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        losses = [opt.step(closure).item() for _ in range(5)]  # (torch's LBFGS returns the first loss tensor)
        results.append((losses, _params(model), opt.state_dict()["state"][0]["n_iter"]))
    (la, pa, na), (lb, pb, nb) = results
    np.testing.assert_allclose(lb, la, rtol=1e-9)
    assert na == nb
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("flat", [False, True])
def test_grad_scaler_and_scheduler(torch, flat):
    import fastopt.torch as ft

    batches = _batches(torch, 30, (2, 5, 5), torch.float32)
    runs = []
    for cls, extra in ((torch.optim.AdamW, {"foreach": False}), (ft.AdamW, {"flat": flat})):
        model = _cnn(torch)
        opt = cls(model.parameters(), lr=1e-2, weight_decay=0.1, **extra)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        runs.append((_train(torch, model, opt, batches, scheduler=sched, scaler=scaler), _params(model)))
    (la, pa), (lb, pb) = runs
    np.testing.assert_allclose(lb, la, rtol=2e-5)
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "Adagrad"])
def test_state_dict_moves_between_torch_and_fastopt_mid_run(torch, name):
    import fastopt.torch as ft

    kwargs = {"lr": 1e-2, "momentum": 0.9} if name in ("SGD", "RMSprop") else {"lr": 1e-2}
    batches = _batches(torch, 40, (6,), torch.float64)
    # the reference: torch all the way
    model = _mlp(torch, torch.float64)
    opt = getattr(torch.optim, name)(model.parameters(), **kwargs, foreach=False)
    _train(torch, model, opt, batches)
    want = _params(model)
    for first, second in ((getattr(torch.optim, name), getattr(ft, name)), (getattr(ft, name), getattr(torch.optim, name))):
        model = _mlp(torch, torch.float64)
        a = first(model.parameters(), **kwargs)
        _train(torch, model, a, batches[:20])
        b = second(model.parameters(), **kwargs)
        b.load_state_dict(a.state_dict())
        _train(torch, model, b, batches, start=20)
        for x, y in zip(_params(model), want):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
        st = b.state_dict()["state"][0]
        assert "step" not in st or st["step"] == 40


def test_tied_frozen_gradless_and_view_parameters(torch):
    import fastopt.torch as ft

    def build():
        torch.manual_seed(3)
        emb = torch.nn.Embedding(5, 4)
        head = torch.nn.Linear(4, 5, bias=False)
        head.weight = emb.weight  # weight tying: one parameter, listed once
        frozen = torch.nn.Linear(4, 4)
        frozen.requires_grad_(False)
        unused = torch.nn.Parameter(torch.ones(3))
        base = torch.arange(10.0)
        view = torch.nn.Parameter(base[2:6])  # a parameter sharing the memory of another tensor
        return emb, head, frozen, unused, view, base

    results = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=False), lambda ps: ft.Adam(ps, lr=0.1)):
        emb, head, frozen, unused, view, base = build()
        params = list(dict.fromkeys([*emb.parameters(), *head.parameters(), *frozen.parameters(), unused, view]))
        opt = make(params)
        for t in range(5):
            opt.zero_grad()
            idx = torch.tensor([t % 5, (t + 2) % 5])
            loss = head(frozen(emb(idx))).square().mean() + (view * view).sum()
            loss.backward()
            opt.step()
        results.append([emb.weight.detach().clone(), frozen.weight.detach().clone(), unused.detach().clone(),
                        base.clone(), len(opt.state)])
    a, b = results
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6, atol=1e-7)
    assert a[4] == b[4]  # state only for the parameters that had gradients
    assert not np.array_equal(b[3].numpy()[2:6], np.arange(2.0, 6.0))  # the view's base moved with it


def test_follows_a_parameter_whose_data_is_replaced(torch):
    import fastopt.torch as ft

    model = torch.nn.Linear(3, 2)
    opt = ft.SGD(model.parameters(), lr=0.1)
    model.double()  # replaces each parameter's .data with new (float64) memory
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    for p, b in zip(model.parameters(), before):
        np.testing.assert_allclose(p.detach().numpy(), (b - 0.1).numpy())


def test_tensors_it_cannot_update_in_place_are_refused_by_name(torch):
    import fastopt.torch as ft

    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"params'\]\[0\] \('weight'\) is not contiguous"):
        ft.Adam([{"params": [torch.nn.Parameter(torch.zeros(4, 3).t())], "param_names": ["weight"]}])
    with pytest.raises(TypeError, match=r"params'\]\[0\] has dtype torch.complex64"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
    with pytest.raises(ValueError, match=r"params'\]\[0\] is on meta"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        ft.Adam(model.parameters(), lr=-1.0)
    opt = ft.Adam([model.weight], lr=0.1)
    with pytest.raises(ValueError, match="Invalid beta parameter"):
        opt.add_param_group({"params": [model.bias], "betas": (2.0, 0.9)})
    assert len(opt.param_groups) == 1
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        ft.Adam([p]).step()
    with pytest.raises(RuntimeError, match="closure"):
        ft.LBFGS(model.parameters()).step()


def test_gradients_are_read_in_place_whatever_their_layout(torch):
    """A step's new gradient tensors are read where they are (the kernel's arrays are views);
    a transposed or lazily negated gradient (``torch._neg_view``: its memory holds the other
    sign) is read as torch reads it; a gradient whose memory was swapped behind torch's
    checks (``.grad.data = ...``: another size or dtype) is refused, and nothing moves."""
    import fastopt.torch as ft

    def run(grad_of):
        torch.manual_seed(4)
        ps = [torch.nn.Parameter(torch.randn(3, 5)), torch.nn.Parameter(torch.randn(7))]
        ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt, want = ft.Adam(ps, lr=0.1), torch.optim.Adam(ref, lr=0.1, foreach=False)
        for t in range(3):
            for a, b in zip(ps, ref):
                a.grad, b.grad = grad_of(a, t), grad_of(b, t)
            opt.step()
            want.step()
            for a, b in zip(ps, ref):
                np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-6, atol=1e-7)
        return ps, opt

    ps, opt = run(lambda p, t: torch.full_like(p, 0.5 + t))
    for (p, fp) in opt._pairs:  # zero copy: the arrays the kernel read are the tensors' memory
        assert np.shares_memory(fp.grad, p.grad.numpy())

    def strided(p, t):  # not contiguous: a transpose, or every other element
        if p.dim() == 2:
            return (torch.arange(float(p.numel())).reshape(p.shape[1], p.shape[0]) - t).t()
        return (torch.arange(2.0 * p.numel()) - t)[::2]

    run(strided)
    run(lambda p, t: torch._neg_view(torch.full_like(p, 1.0 + t)))  # (negated lazily: memory holds +)

    for swap, err in [(lambda g: torch.ones(4), ValueError), (lambda g: g.double(), TypeError)]:
        p = torch.nn.Parameter(torch.ones(3, 5))
        opt = ft.Adam([p], lr=0.1)
        p.grad = torch.ones(3, 5)
        try:
            p.grad.data = swap(p.grad)
        except RuntimeError:
            continue  # (this torch refuses the swap itself)
        with pytest.raises(err):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(3, 5)) and not opt.state


def test_hooks_zero_grad_and_a_later_group(torch):
    import fastopt.torch as ft

    model = torch.nn.Linear(3, 2)
    opt = ft.SGD([model.weight], lr=0.1, momentum=0.9)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.add_param_group({"params": [model.bias], "lr": 0.5})
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    b = model.bias.detach().clone()
    opt.step()
    assert calls == ["pre", "post"]
    np.testing.assert_allclose(model.bias.detach().numpy(), (b - 0.5).numpy(), rtol=1e-6)
    opt.zero_grad()
    assert model.weight.grad is None and model.bias.grad is None
    assert set(opt.state_dict()["state"]) == {0, 1}
    assert isinstance(opt, torch.optim.Optimizer)


def test_step_hooks_and_the_profiler_range_as_torch_runs_them(torch):
    """fastopt.torch's step runs the hooks itself (torch's wrapper is skipped for speed): the
    same order as torch's own optimizers (global pre, own pre, step, own post, global post),
    a pre-hook may replace the arguments, and the profiler sees the step's range."""
    import torch.optim.optimizer as tos

    import fastopt.torch as ft

    runs = {}
    for name, cls in (("torch", torch.optim.SGD), ("fastopt", ft.SGD)):
        model = torch.nn.Linear(3, 2)
        opt = cls(model.parameters(), lr=0.1)
        calls = runs[name] = []
        handles = [tos.register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
                   tos.register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre") or ((a[0], lambda: calls.append("closure")), k))
        opt.register_step_post_hook(lambda o, a, k: calls.append(f"post {len(a)}"))
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        try:
            opt.step()
        finally:
            for h in handles:
                h.remove()
        with torch.profiler.profile() as prof:
            opt.step()
        assert any(e.name == f"Optimizer.step#{cls.__name__}.step" for e in prof.events()), name
    assert runs["fastopt"] == runs["torch"], runs
    assert runs["torch"][:5] == ["global pre", "pre", "closure", "post 2", "global post"], runs
    assert getattr(type(ft.Adam([torch.zeros(2, requires_grad=True)])).step, "hooked", False)


def test_import_fastopt_does_not_import_torch(torch):
    from conftest import run_python

    r = run_python("import sys, fastopt; assert 'torch' not in sys.modules; fastopt.optim.Adam; "
                   "opt = fastopt.torch.Adam(sys.modules['torch'].nn.Linear(2, 2).parameters()); print(type(opt).__mro__[2])")
    assert r.returncode == 0, r.stderr
    assert "torch.optim.optimizer.Optimizer" in r.stdout


@pytest.mark.parametrize("impl", ["fastopt.torch", "fastopt.torch-flat", "torch", "torch-foreach", "torch-fused"])
def test_the_benchmark_runs_each_implementation(torch, impl, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benches"))
    from benchmarks.bench_torch import SmallModel, StepAfterBackward

    bench = SmallModel()
    bench.setup(impl, 1)
    before = [p.detach().clone() for p in bench.model.parameters()]
    bench.time_step(impl, 1)
    bench.time_train_step(impl, 1)
    assert any(not torch.equal(a, p) for a, p in zip(before, bench.model.parameters()))
    for set_to_none in (True, False):
        after = StepAfterBackward()
        after.setup(impl, set_to_none)
        before = [p.detach().clone() for p in after.small.model.parameters()]
        assert after.track_step_after_backward(impl, set_to_none) > 0
        assert any(not torch.equal(a, p) for a, p in zip(before, after.small.model.parameters()))
    sys.modules.pop("benchmarks.bench_torch", None)


def test_schedulefree_on_a_torch_model_as_the_authors(torch, schedulefree):
    """fastopt.torch.AdamWScheduleFree against schedulefree's on the same MLP and batches,
    with train()/eval() switches: the group counters written by the step reach torch's
    param_groups (and the state dict)."""
    import fastopt.torch as ft

    sf = schedulefree

    batches = _batches(torch, 40, (6,), torch.float64)
    runs = []
    for make in (lambda ps: sf.AdamWScheduleFree(ps, lr=1e-2, warmup_steps=5, foreach=False),
                 lambda ps: ft.AdamWScheduleFree(ps, lr=1e-2, warmup_steps=5)):
        model = _mlp(torch, torch.float64)
        opt = make(model.parameters())
        opt.train()
        _train(torch, model, opt, batches[:20])
        opt.eval()
        opt.train()
        _train(torch, model, opt, batches, start=20)
        opt.eval()
        runs.append((_params(model), opt.param_groups[0]["k"], opt.state_dict()["param_groups"][0]["weight_sum"]))
    (pa, ka, wa), (pb, kb, wb) = runs
    assert ka == kb == 40 and wa == wb
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=1e-2, weight_decay=0.1)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
                                         ("SGD", dict(lr=1e-2)), ("Adagrad", dict(lr=1e-2))])
@pytest.mark.parametrize("flat", [False, True])
def test_16bit_models_step_as_torch_fused(torch, name, kwargs, dtype_name, flat):
    """A float16 or bfloat16 model: fastopt.torch's step equals torch's ``fused=True`` step
    bit for bit at the FMA levels (state in the parameters' dtype, sharing memory), and the
    state dict moves into torch's optimizer, which continues identically (also with
    ``flat=True``, whose buffers are in the parameters' dtype)."""
    import fastopt.torch as ft

    oracle("ml_dtypes", "the bfloat16 tests")  # (fastopt reads bfloat16 through ml_dtypes)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)
    twin = copy.deepcopy(model)
    opt = getattr(ft, name)(model.parameters(), **kwargs, flat=flat)
    ref = getattr(torch.optim, name)(twin.parameters(), fused=True, **kwargs)
    x, y = torch.randn(16, 7).to(dtype), torch.randn(16, 1).to(dtype)

    def step(m, o):
        o.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        o.step()

    exact = fo._fastopt.simd_level() != "scalar"
    for _ in range(20):
        step(model, opt)
        step(twin, ref)
        for p, q in zip(model.parameters(), twin.parameters()):
            assert p.dtype == dtype
            if exact:
                assert torch.equal(p, q)
            else:  # (the scalar level's lerp rounds twice: neighbouring 16-bit values)
                torch.testing.assert_close(p, q, rtol=0.05, atol=0.02)
    for p in model.parameters():
        for k, v in opt.state[p].items():
            if k != "step":
                assert v.dtype == dtype
    # the state dict into torch's fused optimizer: both continue alike
    other = getattr(torch.optim, name)(model.parameters(), fused=True, **kwargs)
    other.load_state_dict(opt.state_dict())
    for group in other.param_groups:  # (the loaded groups carry fastopt's fused=None)
        group["fused"] = True
    step(model, other)
    step(twin, ref)
    if exact:
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


# -- flat=True: each group's parameters and gradients in one buffer ---------------------------

def _flat_capable(name):
    return getattr(fo.optim, name)._couples is None


FLAT_SPECS = [s for s in SPECS if _flat_capable(s.name)]
FLAT_TORCH_SPECS = [s for s in FLAT_SPECS if s.torch]


def _train_zeroing(torch, model, opt, batches, **kw):
    """``_train`` with ``zero_grad(set_to_none=False)``: the gradients flat=True keeps."""
    zero = opt.zero_grad
    opt.zero_grad = lambda set_to_none=True: zero(set_to_none=False)
    try:
        return _train(torch, model, opt, batches, **kw)
    finally:
        del opt.zero_grad


def test_flat_covers_the_element_wise_optimizers():
    assert {s.name for s in SPECS} - {s.name for s in FLAT_SPECS} == {"Lamb", "Adafactor", "Prodigy"}
    assert not _flat_capable("Muon") and not _flat_capable("LBFGS")


@pytest.mark.parametrize("spec", FLAT_TORCH_SPECS, ids=[s.name for s in FLAT_TORCH_SPECS])
def test_flat_trains_a_torch_mlp_as_torch_does(torch, spec):
    """100 steps of the MLP with BatchNorm, clipped, against torch.optim.<Name>(foreach=False)
    zeroing its gradients (``set_to_none=False``, the gradients flat=True keeps); flat=True's
    loop calls the default ``zero_grad()``."""
    import fastopt.torch as ft

    kwargs = dict(spec.configs[0])
    batches = _batches(torch, 100, (6,), torch.float64)
    model = _mlp(torch, torch.float64)
    la = _train_zeroing(torch, model, getattr(torch.optim, spec.torch)(model.parameters(), **kwargs, foreach=False),
                        batches, clip=1.0)
    pa = _params(model)
    model = _mlp(torch, torch.float64)
    opt = getattr(ft, spec.name)(model.parameters(), **kwargs, flat=True)
    lb = _train(torch, model, opt, batches, clip=1.0)
    np.testing.assert_allclose(lb, la, rtol=1e-8, atol=1e-12)
    for a, b in zip(pa, _params(model)):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-10)
    assert all(p.grad is v for p, v in zip(opt._flats[0].params, opt._flats[0].views))


@pytest.mark.parametrize("spec", FLAT_SPECS, ids=[s.name for s in FLAT_SPECS])
def test_flat_is_the_per_tensor_step_bit_for_bit(torch, spec):
    """The CNN (float32, a scheduler changing lr mid-run): flat=True gives the per-tensor
    step's parameters and state bit for bit, every state tensor a view of its group's
    buffer, every counter its own tensor."""
    import fastopt.torch as ft

    kwargs = dict(spec.configs[0])
    batches = _batches(torch, 20, (2, 5, 5), torch.float32)
    runs = []
    for flat in (False, True):
        model = _cnn(torch)
        opt = getattr(ft, spec.name)(model.parameters(), **kwargs, flat=flat)
        sched = torch.optim.lr_scheduler.StepLR(opt, 7, 0.5)
        if hasattr(opt, "train"):
            opt.train()
        losses = _train_zeroing(torch, model, opt, batches, scheduler=sched)
        runs.append((losses, model, opt))
    (la, ma, oa), (lb, mb, ob) = runs
    assert la == lb
    buffers = {id(v.untyped_storage()) for st in ob.state.values() for k, v in st.items() if k not in ("step",)}
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert p.detach().numpy().tobytes() == q.detach().numpy().tobytes()
        assert set(oa.state[p]) == set(ob.state[q])
        for k, v in oa.state[p].items():
            w = ob.state[q][k]
            if isinstance(v, torch.Tensor):
                assert v.shape == w.shape and v.numpy().tobytes() == w.numpy().tobytes(), k
            else:
                assert v == w, k
    flat = ob._flats[0]
    for p, (o, n) in zip(flat.params, flat.spans):
        assert p.data_ptr() == flat.data.data_ptr() + o * 4
        for k, v in ob.state[p].items():
            if isinstance(v, torch.Tensor) and v.dim() and k != "step":
                assert v.untyped_storage().data_ptr() == ob.state[flat.params[0]][k].untyped_storage().data_ptr()
    steps = [ob.state[p]["step"] for p in flat.params if "step" in ob.state[p]]
    assert len({s.data_ptr() for s in steps}) == len(steps)  # (torch's optimizers count each one)
    assert len(buffers) >= 1


def test_flat_gradients_stay_views_and_foreign_ones_are_taken_up(torch):
    """zero_grad() zeroes the gradient buffer and keeps the views; a gradient set to None
    (``model.zero_grad()``) or assigned is copied in at the next step (None as zeros); a
    parameter without a gradient steps with zeros, as torch after
    ``zero_grad(set_to_none=False)``."""
    import fastopt.torch as ft

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    twin_a, twin_b = copy.deepcopy(a), copy.deepcopy(b)
    params = [*a.parameters(), *b.parameters()]
    opt = ft.SGD(params, lr=0.1, momentum=0.9, flat=True)
    ref = torch.optim.SGD([*twin_a.parameters(), *twin_b.parameters()], lr=0.1, momentum=0.9, foreach=False)
    for p in [*twin_a.parameters(), *twin_b.parameters()]:
        p.grad = torch.zeros_like(p)
    flat = opt._flats[0]
    views = list(flat.views)
    x = torch.randn(5, 4)
    for t in range(4):
        if t == 1:
            a.zero_grad()  # (None: backward makes new tensors, taken up at the step)
        else:
            opt.zero_grad()
        ref.zero_grad(set_to_none=False)
        a(x).square().sum().backward()  # (b gets no gradient)
        twin_a(x).square().sum().backward()
        if t == 2:
            b.weight.grad = torch.full((3, 4), 0.5)
            twin_b.weight.grad.fill_(0.5)
        opt.step()
        ref.step()
        assert all(p.grad is v for p, v in zip(params, views))
        for p, q in zip(params, [*twin_a.parameters(), *twin_b.parameters()]):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-7)
    opt.zero_grad()
    assert not flat.grad.any() and all(p.grad is v for p, v in zip(params, views))
    assert flat.data.untyped_storage().data_ptr() == a.weight.untyped_storage().data_ptr()


def test_flat_leaves_tied_frozen_and_view_parameters_as_torch_does(torch):
    """Views of other tensors and frozen parameters stay out of the buffer and step as
    torch steps them (the view's base moves with it); a tied weight is one parameter."""
    import fastopt.torch as ft

    def build():
        torch.manual_seed(3)
        emb = torch.nn.Embedding(5, 4)
        head = torch.nn.Linear(4, 5, bias=False)
        head.weight = emb.weight
        frozen = torch.nn.Linear(4, 4)
        frozen.requires_grad_(False)
        base = torch.arange(10.0)
        view = torch.nn.Parameter(base[2:6])
        return emb, frozen, view, base

    results = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=False), lambda ps: ft.Adam(ps, lr=0.1, flat=True)):
        emb, frozen, view, base = build()
        params = [emb.weight, *frozen.parameters(), view]
        opt = make(params)
        for t in range(5):
            opt.zero_grad(set_to_none=False)
            idx = torch.tensor([t % 5, (t + 2) % 5])
            loss = (frozen(emb(idx)) @ emb.weight.t()).square().mean() + (view * view).sum()
            loss.backward()
            opt.step()
        results.append([emb.weight.detach().clone(), frozen.weight.detach().clone(), base.clone()])
        if isinstance(opt, ft.Optimizer):
            assert [p is emb.weight for p in opt._flats[0].params] == [True]
    for x, y in zip(*results):
        np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam", "ASGD"])
def test_flat_state_dict_moves_to_and_from_torch_and_the_per_tensor_step(torch, name):
    """Mid-run, the state dict goes from flat=True to torch.optim and to flat=False, and
    back; the run ends where torch's own ends. (NAdam and ASGD: counters besides ``step``.)"""
    import fastopt.torch as ft

    kwargs = {"lr": 1e-2, "momentum": 0.9} if name == "SGD" else {"lr": 1e-2}
    batches = _batches(torch, 40, (6,), torch.float64)
    model = _mlp(torch, torch.float64)
    _train_zeroing(torch, model, getattr(torch.optim, name)(model.parameters(), **kwargs, foreach=False), batches)
    want = _params(model)
    flat = lambda ps: getattr(ft, name)(ps, **kwargs, flat=True)  # noqa: E731
    others = (lambda ps: getattr(torch.optim, name)(ps, **kwargs, foreach=False),
              lambda ps: getattr(ft, name)(ps, **kwargs))
    for other in others:
        for first, second in ((flat, other), (other, flat)):
            model = _mlp(torch, torch.float64)
            a = first(model.parameters())
            _train_zeroing(torch, model, a, batches[:20])
            b = second(model.parameters())
            b.load_state_dict(a.state_dict())
            _train_zeroing(torch, model, b, batches, start=20)
            for x, y in zip(_params(model), want):
                np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
            st = b.state_dict()["state"][3]
            assert "step" in st or name == "SGD"
            assert float(st.get("step", 40)) == 40


def test_flat_refuses_what_it_cannot_step_together(torch):
    import fastopt.torch as ft

    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="flat=True needs an element-wise update; Lamb"):
        ft.Lamb(model.parameters(), flat=True)
    with pytest.raises(TypeError, match="flat must be True or False"):
        ft.Adam(model.parameters(), flat="yes")
    with pytest.raises(ValueError, match="state_dtype='int8'"):
        ft.Adam(model.parameters(), flat=True, state_dtype="int8")
    with pytest.raises(ValueError, match="stochastic"):
        ft.Adam(model.parameters(), flat=True, master_weights="stochastic")
    assert model.weight.untyped_storage().nbytes() == 48  # (nothing was moved)
    # a state whose counters differ between the group's parameters cannot be stepped together
    opt = torch.optim.Adam(model.parameters(), foreach=False)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    model.bias.grad = None
    model.weight.grad.fill_(1.0)
    opt.step()
    mine = ft.Adam(model.parameters(), flat=True)
    before = mine.state_dict()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] has 'step' 1.0"):
        mine.load_state_dict(opt.state_dict())
    assert mine.state_dict() == before == {"state": {}, "param_groups": before["param_groups"]}
    # a sparse gradient: refused at the step, nothing moved
    w = model.weight.detach().clone()
    model.weight.grad = torch.ones(3, 4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        mine.step()
    assert torch.equal(model.weight.detach(), w) and not mine.state


def test_flat_follows_replaced_data_new_groups_and_16bit_models(torch):
    import fastopt.torch as ft

    model = torch.nn.Linear(3, 2)
    opt = ft.SGD([model.weight], lr=0.1, flat=True)
    opt.add_param_group({"params": [model.bias], "lr": 0.5})
    assert len([f for f in opt._flats if f is not None]) == 2
    model.double()  # (new memory: moved into new float64 buffers at the next step)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    for p, b, lr in zip(model.parameters(), before, (0.1, 0.5)):
        assert p.dtype == torch.float64 and p.grad is not None
        np.testing.assert_allclose(p.detach().numpy(), (b - lr).numpy())
    assert opt._flats[0].data.dtype == torch.float64


def test_flat_refuses_a_state_some_parameters_lack(torch):
    """A state dict where only some of a group's parameters have state (torch skipped the
    others): refused by flat=True, nothing loaded; flat=False takes it."""
    import fastopt.torch as ft

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    model.weight.grad = torch.ones(3, 4)
    opt.step()
    saved = opt.state_dict()
    mine = ft.SGD(model.parameters(), lr=0.1, momentum=0.9, flat=True)
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] has state \[\] but another parameter"):
        mine.load_state_dict(saved)
    assert not mine.state
    ft.SGD(model.parameters(), lr=0.1, momentum=0.9).load_state_dict(saved)
