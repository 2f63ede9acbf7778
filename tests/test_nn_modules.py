"""fastopt.nn modules: gradients against finite differences (gradcheck) and against torch.nn
(weights copied across, train and eval mode), torch's default initialization in distribution,
the Module contract (names, state_dict, modes, accumulation), training end to end, and bad
input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastopt as fo
from fastopt import nn
from fastopt.testing import GradcheckError, gradcheck

def _x(shape, dtype=np.float64, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------- gradcheck

LAYERS = {
    "Linear": (lambda: nn.Linear(4, 3), (5, 4)),
    "Linear3d": (lambda: nn.Linear(4, 3), (2, 3, 4)),
    "LinearNoBias": (lambda: nn.Linear(4, 3, bias=False), (5, 4)),
    "ReLU": (lambda: nn.ReLU(), (4, 5)),
    "ReLUInplace": (lambda: nn.ReLU(inplace=True), (4, 5)),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), (4, 5)),
    "LeakyReLUInplace": (lambda: nn.LeakyReLU(0.2, inplace=True), (4, 5)),
    "PReLU1": (lambda: nn.PReLU(), (4, 5)),
    "PReLUc": (lambda: nn.PReLU(3, init=0.1), (4, 3, 2)),
    "ELU": (lambda: nn.ELU(0.7), (4, 5)),
    "ELUInplace": (lambda: nn.ELU(0.7, inplace=True), (4, 5)),
    "SELU": (lambda: nn.SELU(), (4, 5)),
    "Sigmoid": (lambda: nn.Sigmoid(), (4, 5)),
    "Tanh": (lambda: nn.Tanh(), (4, 5)),
    "GELU": (lambda: nn.GELU(), (4, 5)),
    "GELUtanh": (lambda: nn.GELU("tanh"), (4, 5)),
    "SiLU": (lambda: nn.SiLU(), (4, 5)),
    "SiLUInplace": (lambda: nn.SiLU(inplace=True), (4, 5)),
    "Softplus": (lambda: nn.Softplus(2.0, 5.0), (4, 5)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), (6, 3)),
    "BatchNorm1dL": (lambda: nn.BatchNorm1d(3), (4, 3, 5)),
    "BatchNorm1dNoAffine": (lambda: nn.BatchNorm1d(3, affine=False), (6, 3)),
    "BatchNorm1dNoStats": (lambda: nn.BatchNorm1d(3, track_running_stats=False), (6, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(2), (3, 2, 3, 2)),
    "Dropout": (lambda: nn.Dropout(0.4, generator=np.random.default_rng(5)), (4, 6)),
    "DropoutDefaultGenerator": (lambda: nn.Dropout(0.4), (4, 6)),
    "Flatten": (lambda: nn.Flatten(), (2, 3, 4)),
    "Sequential": (lambda: nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.2), nn.Linear(5, 2)), (6, 3)),
}


def _perturbed_params(m: nn.Module, seed: int = 0) -> nn.Module:
    """Moves BatchNorm's weight/bias and running statistics off their initial values so the
    checks cover the general case."""
    rng = np.random.default_rng(seed)
    for name, p in m.named_parameters():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            p.data[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else rng.standard_normal(p.shape)
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape)
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape)
    return m


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradcheck_layers(name, mode):
    make, shape = LAYERS[name]
    m = _perturbed_params(make()).train(mode == "train")
    x = _x(shape, scale=1.5, seed=hash(name) % 1000)
    x[np.abs(x) < 1e-3] = 0.5  # away from ReLU's kink
    result = gradcheck(m, x)
    assert result.ok and result.checked >= x.size


def test_gradcheck_leaves_module_untouched():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.3))
    before = m.state_dict()
    state = nn.init._default_rng.bit_generator.state
    gradcheck(m, _x((5, 3)))
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert m[0].weight.dtype == np.float32 and m[0].weight.grad is None
    assert nn.init._default_rng.bit_generator.state == state


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_losses(reduction):
    logits = _x((6, 4), scale=2.0)
    target = np.array([0, 3, 1, 2, 2, 0])
    assert gradcheck(nn.CrossEntropyLoss(reduction=reduction), (logits, target))
    assert gradcheck(nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.2, ignore_index=1), (logits, target))
    assert gradcheck(nn.CrossEntropyLoss(reduction=reduction), (_x((3, 4, 2)), np.array([[0, 1], [3, 3], [2, 0]])))
    assert gradcheck(nn.MSELoss(reduction=reduction), (_x((5, 3)), _x((5, 3), seed=9)))


def test_gradcheck_functions_and_report():
    F = nn.functional
    x = _x(7)
    assert gradcheck(F.softplus, x, backward=lambda g, x: F.softplus_backward(g, x))
    # Two float inputs, one gradient each.
    assert gradcheck(lambda a, b: a * b, (x, _x(7, seed=3)), backward=lambda g, a, b: (g * b, g * a))
    # A wrong backward is caught, and the report names the worst element.
    with pytest.raises(GradcheckError, match=r"FAILED.*\n.*worst element: input 0\[\d\]"):
        gradcheck(F.elu, x, backward=lambda g, x: F.elu_backward(g, x) * 1.001)
    r = gradcheck(F.elu, x, backward=lambda g, x: F.elu_backward(g, x) * 1.001, raise_exception=False)
    assert not r and r.rel_error == pytest.approx(1e-3, rel=1e-3)
    assert "analytic" in str(r) and "numeric" in str(r)


def test_gradcheck_catches_wrong_parameter_gradient():
    class Bad(nn.Linear):
        def backward(self, grad_output):
            gx = super().backward(grad_output)
            self.bias.grad *= 2
            return gx

    with pytest.raises(GradcheckError, match="parameter 'bias'"):
        gradcheck(Bad(3, 2), _x((4, 3)))


def test_gradcheck_bad_arguments():
    with pytest.raises(ValueError, match="backward="):
        gradcheck(np.tanh, _x(3))
    with pytest.raises(ValueError, match="only for plain functions"):
        gradcheck(nn.ReLU(), _x(3), backward=lambda g, x: g)
    with pytest.raises(TypeError, match="inputs"):
        gradcheck(nn.ReLU(), [1.0, 2.0])


# ----------------------------------------------------------------------------- torch parity


def _torch_twin(torch, m: nn.Module):
    """The torch.nn module with the same configuration and our weights and buffers."""
    tnn = torch.nn
    kind = type(m).__name__
    if kind == "Linear":
        t = tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    elif kind in ("ReLU", "Sigmoid", "Tanh", "SELU", "SiLU"):
        t = getattr(tnn, kind)()
    elif kind == "LeakyReLU":
        t = tnn.LeakyReLU(m.negative_slope)
    elif kind == "ELU":
        t = tnn.ELU(m.alpha)
    elif kind == "GELU":
        t = tnn.GELU(approximate=m.approximate)
    elif kind == "Softplus":
        t = tnn.Softplus(m.beta, m.threshold)
    elif kind == "PReLU":
        t = tnn.PReLU(m.num_parameters)
    elif kind in ("BatchNorm1d", "BatchNorm2d"):
        t = getattr(tnn, kind)(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    elif kind == "Flatten":
        t = tnn.Flatten(m.start_dim, m.end_dim)
    elif kind == "Sequential":
        t = tnn.Sequential(*[_torch_twin(torch, c) for c in m])
    else:
        raise AssertionError(kind)
    floats = [p.dtype for p in m.parameters()] + [b.dtype for b in m.buffers() if b.dtype.kind == "f"]
    dtype = floats[0] if floats else np.float64
    t = t.double() if dtype == np.float64 else t.float()
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    return t


def _close(actual, expected, dtype, what, scale=0.0):
    """Within 1e-11 (float64) / 2e-5 (float32) relative to the larger of the element and
    ``scale`` (default: the largest magnitude of ``expected``)."""
    expected = np.asarray(expected)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    scale = max(float(np.max(np.abs(expected), initial=0.0)), scale, 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def _compare(torch, m, t, x, steps=3):
    """Several forward/backward rounds; outputs, input and parameter gradients (accumulated
    over the rounds) and buffers agree."""
    dtype = x.dtype
    for k in range(steps):
        xk = x * (1 + 0.1 * k)
        y = m(xk.copy())
        xt = torch.from_numpy(xk.copy()).requires_grad_(True)
        yt = t(xt)
        _close(y, yt.detach().numpy(), dtype, f"output, round {k}")
        g = _x(y.shape, dtype, seed=k + 7)
        gx = m.backward(g)
        yt.backward(torch.from_numpy(g))
        _close(gx, xt.grad.numpy(), dtype, f"input gradient, round {k}")
    tp = dict(t.named_parameters())
    # A gradient that is zero in exact arithmetic (a bias followed by BatchNorm) is rounding
    # noise on both sides: compare it on the scale of the module's largest gradient.
    scale = max((float(np.abs(q.grad.numpy()).max()) for q in tp.values()), default=0.0)
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        _close(p.grad, tp[name].grad.numpy(), dtype, f"{name}.grad", scale)
    tb = dict(t.named_buffers())
    for name, b in m.named_buffers():
        np.testing.assert_allclose(b, tb[name].numpy(), rtol=1e-11 if dtype == np.float64 else 2e-5, err_msg=name)


PARITY = {k: v for k, v in LAYERS.items() if not k.startswith("Dropout") and k != "Sequential"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(PARITY))
def test_module_matches_torch(torch, name, mode, dtype):
    make, shape = PARITY[name]
    m = _perturbed_params(make().to(dtype)).train(mode == "train")
    t = _torch_twin(torch, m).train(mode == "train")
    _compare(torch, m, t, _x(shape, dtype, scale=2.0, seed=11))


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_batchnorm_running_stats_and_eval_match_torch(torch, momentum):
    m = nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64)
    t = _torch_twin(torch, m)
    for k in range(5):
        x = _x((4, 3, 2, 5), seed=k, scale=1 + k) + k
        m(x)
        t(torch.from_numpy(x))
    assert int(m.num_batches_tracked) == 5
    np.testing.assert_allclose(m.running_mean, t.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(m.running_var, t.running_var.numpy(), rtol=1e-12)
    m.eval(), t.eval()
    _compare(torch, m, t, _x((2, 3, 2, 5), seed=99), steps=1)


def test_sequential_mlp_matches_torch(torch):
    m = nn.Sequential(nn.Linear(3, 8, dtype=np.float64), nn.BatchNorm1d(8, dtype=np.float64), nn.GELU(),
                      nn.Linear(8, 8, dtype=np.float64), nn.PReLU(8, dtype=np.float64), nn.Flatten(), nn.Linear(8, 2, dtype=np.float64))
    t = _torch_twin(torch, m)
    _compare(torch, m, t, _x((10, 3)))
    m.eval(), t.eval()
    _compare(torch, m, t, _x((4, 3), seed=3), steps=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"label_smoothing": 0.1}, {"ignore_index": 2}, {"reduction": "none"}])
def test_cross_entropy_loss_matches_torch(torch, kw, dtype):
    logits = _x((7, 4), dtype, scale=3.0)
    target = np.array([0, 1, 2, 3, 2, 1, 0])
    crit = nn.CrossEntropyLoss(**kw)
    loss = crit(logits, target)
    lt = torch.from_numpy(logits.copy()).requires_grad_(True)
    tl = torch.nn.CrossEntropyLoss(**kw)(lt, torch.from_numpy(target))
    _close(loss, tl.detach().numpy(), dtype, "loss")
    go = _x(7, dtype, seed=4) if kw.get("reduction") == "none" else None
    grad = crit.backward(go)
    tl.backward(torch.from_numpy(go) if go is not None else None)
    _close(grad, lt.grad.numpy(), dtype, "logits gradient")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(torch, reduction):
    a, b = _x((5, 3)), _x((5, 3), seed=2)
    crit = nn.MSELoss(reduction)
    loss = crit(a, b)
    at = torch.from_numpy(a.copy()).requires_grad_(True)
    tl = torch.nn.MSELoss(reduction=reduction)(at, torch.from_numpy(b))
    _close(loss, tl.detach().numpy(), np.float64, "loss")
    go = _x((5, 3), seed=5) if reduction == "none" else None
    tl.backward(torch.from_numpy(go) if go is not None else None)
    _close(crit.backward(go), at.grad.numpy(), np.float64, "grad")


# ----------------------------------------------------------------------------- dropout


def test_dropout_semantics():
    x = np.ones((200, 500))
    d = nn.Dropout(0.3, generator=np.random.default_rng(0))
    y = d(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_array_equal(y[kept], 1 / 0.7)
    g = _x(x.shape)
    np.testing.assert_array_equal(d.backward(g), g * y)  # same mask, same scale
    # Seeded: the same generator seed gives the same mask; eval mode is the identity.
    y2 = nn.Dropout(0.3, generator=np.random.default_rng(0))(x)
    np.testing.assert_array_equal(y, y2)
    d.eval()
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(d.backward(g), g)
    assert np.all(nn.Dropout(1.0)(x) == 0) and np.array_equal(nn.Dropout(0.0)(x), x)
    nn.init.manual_seed(3)
    a = nn.Dropout(0.5)(x)
    nn.init.manual_seed(3)
    np.testing.assert_array_equal(a, nn.Dropout(0.5)(x))


def test_dropout_inplace_and_torch_scale(torch):
    x = np.full((1000, 100), 2.0, np.float32)
    y = nn.Dropout(0.25, inplace=True, generator=np.random.default_rng(1))(x)
    assert y is x
    yt = torch.nn.Dropout(0.25)(torch.full((1000, 100), 2.0))
    # The same set of values: 0 and 2 / (1 - p), in the same proportion within sampling error.
    assert set(np.unique(y)) == set(np.unique(yt.numpy()))
    assert abs((y == 0).mean() - (yt.numpy() == 0).mean()) < 0.01


# ----------------------------------------------------------------------------- initialization


def _ks_uniform(values, a, b):
    v = np.sort(values.ravel())
    cdf = (v - a) / (b - a)
    n = len(v)
    d = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    return d * math.sqrt(n)


def test_default_init_matches_torch_in_distribution(torch):
    m = nn.Linear(400, 300, generator=np.random.default_rng(0))
    torch.manual_seed(0)  # (a statistical test: torch's draw must not depend on the tests run before)
    t = torch.nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    for ours, theirs in ((m.weight.data, t.weight.detach().numpy()), (m.bias.data, t.bias.detach().numpy())):
        assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
        assert _ks_uniform(ours, -bound, bound) < 2.0  # Kolmogorov-Smirnov, alpha ~ 1e-3
        assert _ks_uniform(theirs, -bound, bound) < 2.0
        assert abs(ours.std() - theirs.std()) < 0.05 * bound
    assert m.weight.shape == tuple(t.weight.shape) and m.weight.dtype == np.float32
    p = nn.PReLU(4)
    np.testing.assert_array_equal(p.weight.data, torch.nn.PReLU(4).weight.detach().numpy())
    bn, tbn = nn.BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, tbn.state_dict()[k].numpy(), err_msg=k)
    # Seeded: the same generator seed gives the same weights.
    a = nn.Linear(5, 4, generator=np.random.default_rng(7))
    b = nn.Linear(5, 4, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)


# ----------------------------------------------------------------------------- the Module contract


def _mlp(dtype=np.float32, seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(2, 6, dtype=dtype, generator=g), nn.BatchNorm1d(6, dtype=dtype), nn.ReLU(),
                         nn.Linear(6, 3, dtype=dtype, generator=g))


def test_names_and_state_dict_match_torch(torch):
    m = _mlp()
    t = _torch_twin(torch, m)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert list(m.state_dict()) == list(t.state_dict())
    assert [n for n, _ in m.named_buffers()] == [n for n, _ in t.named_buffers()]
    # torch's state_dict loads into ours (tensors accepted), and ours into torch.
    t2 = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    m.load_state_dict(t2.state_dict())
    for k, v in t2.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v.numpy(), err_msg=k)
    assert len(list(m.parameters())) == 6 and len(list(m.modules())) == 5 and len(list(m.children())) == 4


def test_load_state_dict_in_place_strict_and_checked():
    m = _mlp()
    w = m[0].weight.data
    sd = _mlp(seed=5).state_dict()
    m.load_state_dict(sd)
    assert m[0].weight.data is w and np.array_equal(w, sd["0.weight"])
    before = m.state_dict()
    bad = dict(sd)
    bad["3.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="size mismatch for 3.weight"):
        m.load_state_dict(bad)
    missing = {k: v for k, v in sd.items() if k != "1.running_var"}
    with pytest.raises(KeyError, match="1.running_var"):
        m.load_state_dict(missing)
    extra = dict(sd, extra=np.zeros(1))
    with pytest.raises(KeyError, match="extra"):
        m.load_state_dict(extra)
    for k, v in m.state_dict().items():  # nothing written by the failed loads
        np.testing.assert_array_equal(v, before[k])
    keys = m.load_state_dict(missing, strict=False)
    assert keys.missing_keys == ["1.running_var"] and keys.unexpected_keys == []
    with pytest.raises(TypeError, match="mapping"):
        m.load_state_dict([1, 2])


def test_train_eval_zero_grad_and_accumulation():
    m = _mlp(np.float64)
    assert all(c.training for c in m.modules())
    m.eval()
    assert not any(c.training for c in m.modules())
    m.train()
    x = _x((8, 2))
    g = _x((8, 3), seed=1)
    m(x)
    m.backward(g)
    first = [p.grad.copy() for p in m.parameters()]
    m(x)
    m.backward(g)
    for p, f in zip(m.parameters(), first):
        np.testing.assert_allclose(p.grad, 2 * f, rtol=1e-12, atol=1e-15)  # accumulated, as torch
    m.zero_grad(set_to_none=False)
    assert all(np.all(p.grad == 0) for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match="boolean"):
        m.train("yes")


def test_optimizer_takes_module_parameters_and_repr():
    m = _mlp()
    opt = fo.optim.SGD(m.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = _x((8, 2), np.float32), np.arange(8) % 3
    before = m[0].weight.data.copy()
    crit(m(x), y)
    m.backward(crit.backward())
    opt.step()
    assert not np.array_equal(before, m[0].weight.data)
    text = repr(m)
    assert "(0): Linear(in_features=2, out_features=6, bias=True)" in text and "(1): BatchNorm1d(6" in text


def test_to_dtype_and_custom_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.body(x))

        def backward(self, g):
            return self.body.backward(self.head.backward(g))

    net = Net().double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert [n for n, _ in net.named_parameters()] == ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    assert gradcheck(net, _x((5, 3)))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error_and_touches_nothing():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="in_features=3"):
        lin(np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="float64 but the module's parameters are float32"):
        lin(np.zeros((4, 3)))
    with pytest.raises(TypeError, match="input must be a numpy.ndarray"):
        lin([[1.0, 2.0, 3.0]])
    with pytest.raises(RuntimeError, match="backward was called before forward"):
        nn.Linear(3, 2).backward(np.zeros((4, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.ReLU().backward(np.zeros(3))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.CrossEntropyLoss().backward()
    lin(np.zeros((4, 3), np.float32))
    w = lin.weight.data.copy()
    with pytest.raises(ValueError, match="grad_output has shape"):
        lin.backward(np.zeros((4, 3), np.float32))
    assert lin.weight.grad is None and np.array_equal(w, lin.weight.data)
    bn = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="4 channels|num_features=4"):
        bn(np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        bn(np.zeros((5, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        nn.BatchNorm2d(4)(np.zeros((5, 4), np.float32))
    assert int(bn.num_batches_tracked) == 0 and np.all(bn.running_mean == 0)
    crit = nn.CrossEntropyLoss()
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="out of range for 4 classes"):
        crit(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="target has shape"):
        crit(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(2, 3, dtype=np.int32)
    with pytest.raises(ValueError, match="no in-place form"):
        nn.Sigmoid(inplace=True)
    with pytest.raises(TypeError, match="Sequential takes"):
        nn.Sequential(nn.ReLU(), np.tanh)
    with pytest.raises(ValueError, match="Flatten"):
        nn.Flatten(2)(np.zeros((2, 3), np.float32))


def test_reduction_none_backward_needs_grad_output():
    crit = nn.CrossEntropyLoss(reduction="none")
    crit(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="needs grad_output"):
        crit.backward()


# ----------------------------------------------------------------------------- training end to end


def test_demo_mlp_reaches_97_percent_on_spiral_with_adam():
    from fastopt import demo

    cfg = demo.DemoConfig()  # the default demo settings
    splits = demo.prepare_data(cfg)[:4]
    result = demo.train("Adam", cfg, splits)
    assert result.test_accuracy >= 0.97, result.test_accuracy
    assert result.train_loss < result.train_curve[0] / 5


def test_training_follows_torch_loss_curve(torch):
    """The same MLP (with BatchNorm) trained by fastopt and by torch from identical weights
    and batches, Adam under a cosine schedule, float64: the loss curves agree within 1e-8
    relative over 200 steps."""
    from fastopt import data

    x, y = data.spiral(300, noise=0.1, seed=0, dtype=np.float64)
    x = data.Standardizer().fit_transform(x)
    g = np.random.default_rng(0)
    f64 = np.float64
    m = nn.Sequential(nn.Linear(2, 32, dtype=f64, generator=g), nn.BatchNorm1d(32, dtype=f64), nn.ReLU(),
                      nn.Linear(32, 32, dtype=f64, generator=g), nn.BatchNorm1d(32, dtype=f64), nn.Tanh(),
                      nn.Linear(32, 2, dtype=f64, generator=g))
    t = _torch_twin(torch, m)
    opt = fo.optim.Adam(m.parameters(), lr=1e-2)
    sched = fo.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    topt = torch.optim.Adam(t.parameters(), lr=1e-2)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=200)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    ours, theirs = [], []
    batches = data.MiniBatches(x, y, batch_size=50, seed=1, drop_last=True)
    while len(ours) < 200:
        for xb, yb in batches:
            ours.append(float(crit(m(xb), yb)))
            m.backward(crit.backward())
            opt.step(), opt.zero_grad(), sched.step()
            tl = tcrit(t(torch.from_numpy(xb)), torch.from_numpy(yb))
            theirs.append(float(tl.detach()))
            tl.backward()
            topt.step(), topt.zero_grad(), tsched.step()
            if len(ours) == 200:
                break
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)
    assert np.mean(ours[-20:]) < np.mean(ours[:20]) / 1.5  # it trains
