"""fastopt.nn.functional against torch: activations (forward, backward, in place), softmax,
losses and batch_norm, at every SIMD level and thread count, on random and adversarial
inputs; bad input."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import fastopt
import fastopt.nn.functional as F

DTYPES = [np.float32, np.float64]

# name: (forward, backward, torch function name/kwargs, backward takes the output)
ACTS = {
    "relu": (F.relu, F.relu_backward, ("relu", {}), True),
    "leaky_relu": (lambda x, **k: F.leaky_relu(x, 0.2, **k), lambda g, s, **k: F.leaky_relu_backward(g, s, 0.2, **k), ("leaky_relu", {"negative_slope": 0.2}), False),
    "elu": (lambda x, **k: F.elu(x, 1.3, **k), lambda g, s, **k: F.elu_backward(g, s, 1.3, **k), ("elu", {"alpha": 1.3}), False),
    "selu": (F.selu, F.selu_backward, ("selu", {}), False),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, ("sigmoid", {}), True),
    "tanh": (F.tanh, F.tanh_backward, ("tanh", {}), True),
    "gelu": (F.gelu, F.gelu_backward, ("gelu", {}), False),
    "gelu_tanh": (lambda x, **k: F.gelu(x, "tanh", **k), lambda g, s, **k: F.gelu_backward(g, s, "tanh", **k), ("gelu", {"approximate": "tanh"}), False),
    "silu": (F.silu, F.silu_backward, ("silu", {}), False),
    "softplus": (lambda x, **k: F.softplus(x, 2.0, 15.0, **k), lambda g, s, **k: F.softplus_backward(g, s, 2.0, 15.0, **k), ("softplus", {"beta": 2.0, "threshold": 15.0}), False),
}
IN_PLACE = {"relu": F.relu_, "leaky_relu": lambda x: F.leaky_relu_(x, 0.2), "elu": lambda x: F.elu_(x, 1.3), "selu": F.selu_}

ADVERSARIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-300, -1e-300, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, 7.5, -7.5,
               15.0, 15.01, -15.0, 20.0, -20.0, 30.0, -30.0, 88.7, -88.7, 89.0, -89.0, 104.0, -104.0,
               700.0, -700.0, 750.0, -750.0, 1e30, -1e30, 3e38, -3e38, np.inf, -np.inf, np.nan]


@functools.lru_cache(maxsize=4)
def _exact_gelu(data: bytes) -> np.ndarray:
    import mpmath

    def exact(v):
        if not math.isfinite(v):
            return v if v > 0 else math.nan
        with mpmath.workdps(40):
            return float(mpmath.mpf(v) / 2 * mpmath.erfc(-mpmath.mpf(v) / mpmath.sqrt(2)))
    return np.array([exact(v) for v in np.frombuffer(data, np.float64)])


def accurate_reference(torch, name, x64):
    """torch's float64 result, except for gelu, whose torch formula 0.5 x (1 + erf(x / sqrt 2))
    cancels for negative x (relative error up to 1e-3 in float64 at x = -7.5): there the
    exact form is evaluated in 40-digit arithmetic (mpmath, a dependency of torch) and the
    tanh form as x * sigmoid(2u)."""
    if name == "gelu":
        return _exact_gelu(x64.tobytes())
    if name == "gelu_tanh":
        with np.errstate(over="ignore", invalid="ignore"):
            u = math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)
            return x64 / (1 + np.exp(-2 * u))
    return torch_fn(torch, name)(torch.from_numpy(x64)).numpy()


def torch_fn(torch, name):
    fname, kw = ACTS[name][2]
    fn = getattr(torch.nn.functional, fname)
    return lambda t: fn(t, **kw)


def inputs(dtype, n=20011, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 4
    x[: len(ADVERSARIAL)] = ADVERSARIAL
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual, np.float64).reshape(-1)
    expected = np.asarray(expected, np.float64).reshape(-1)
    assert actual.shape == expected.shape
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    with np.errstate(invalid="ignore"):
        ok = same | (np.abs(actual - expected) <= rtol * np.abs(expected) + atol)
    if not ok.all():
        i = np.flatnonzero(~ok)[0]
        raise AssertionError(f"{what}: {np.sum(~ok)} elements differ; first at flat index {i}: {actual.flat[i]!r} vs {expected.flat[i]!r}")


@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_torch_in_float64(torch, name, dtype, simd_level, threads):
    """The result is within a few ulp of torch's float64 result rounded (accuracy), and has
    NaN/inf where torch's result in the same dtype has them."""
    fwd = ACTS[name][0]
    x = inputs(dtype)
    ref = accurate_reference(torch, name, x.astype(np.float64))
    got = fwd(x)
    assert got.dtype == dtype and got.shape == x.shape
    # Within 4 ulp of the rounded exact result (below 1e-36 in float32: absolute); gelu within
    # 6 (its erfc is within 4.4); the tanh form's negative tail is ill-conditioned in the
    # rounding of u = sqrt(2/pi) (x + 0.044715 x^3): there the bound grows like |u| ulp.
    eps = np.finfo(dtype).eps
    x64 = np.nan_to_num(x.astype(np.float64), posinf=0, neginf=0)
    with np.errstate(over="ignore", invalid="ignore"):
        cond = 6 * np.abs(0.8 * (x64 + 0.044715 * x64**3)) if name == "gelu_tanh" else 0.0
        rtol = eps * ((6 if name == "gelu" else 4) + np.nan_to_num(cond, posinf=1e300))
    close(got, ref.astype(dtype), rtol, 1e-36 if dtype == np.float32 else 1e-300, name)
    same_dtype = torch_fn(torch, name)(torch.from_numpy(x)).numpy()
    # Specials as torch's own dtype, except gelu(+inf) = +inf (torch: inf in float64 and its
    # scalar path, NaN in its vectorized float32 path) and gelu(3e38) = 3e38 (torch float32
    # overflows in x * (1 + erf)).
    exempt = (np.abs(x) > 1e38) & name.startswith("gelu")
    assert np.array_equal(np.isnan(got) & ~exempt, np.isnan(same_dtype) & ~exempt), name
    assert np.array_equal(np.isinf(got) & ~exempt, np.isinf(same_dtype) & ~exempt), name
    if name.startswith("gelu"):
        assert np.all(got[x == np.inf] == np.inf) and np.all(np.isfinite(got[np.isfinite(x)]))


@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_torch_autograd(torch, name, dtype, simd_level, threads):
    fwd, bwd, _, saves_output = ACTS[name]
    x = inputs(dtype, seed=1)
    x = x[np.isfinite(x) & (np.abs(x) < 1e4)]
    g = np.random.default_rng(2).standard_normal(x.size).astype(dtype)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    torch_fn(torch, name)(xt).backward(torch.from_numpy(g.astype(np.float64)))
    ref = xt.grad.numpy()
    y = fwd(x)
    got = bwd(g, y if saves_output else x)
    assert got.dtype == dtype
    if dtype == np.float32:
        # From the float32 forward output (relu/sigmoid/tanh) the rounding of y enters.
        close(got, ref, 2e-6, 2e-7 * np.abs(g).max(), name)
        return
    else:
        # torch's own float64 formulas cancel in gelu's tails (absolute error ~1e-16 * |g|).
        close(got, ref, 1e-13, 1e-14 * np.abs(g).max(), name)


@pytest.mark.parametrize("name", ACTS)
def test_out_and_in_place_forms_agree(name):
    fwd, bwd, _, saves_output = ACTS[name]
    x = inputs(np.float32, 5000, seed=3)
    want = fwd(x)
    out = np.full_like(x, 7)
    assert fwd(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    if name in IN_PLACE:
        y = x.copy()
        assert IN_PLACE[name](y) is y
        np.testing.assert_array_equal(y, want)
    g = np.random.default_rng(4).standard_normal(x.size).astype(np.float32)
    s = want if saves_output else x
    gx = bwd(g, s)
    g2 = g.copy()
    assert bwd(g2, s, out=g2) is g2  # the gradient updated in place
    np.testing.assert_array_equal(g2, gx)


@pytest.mark.parametrize("name", ACTS)
def test_results_do_not_depend_on_thread_count(name):
    fwd, bwd, _, saves_output = ACTS[name]
    x = inputs(np.float32, 300_007, seed=5)
    g = np.random.default_rng(6).standard_normal(x.size).astype(np.float32)
    results = []
    before = fastopt.get_num_threads()
    try:
        for n in (1, 2, 3):
            fastopt.set_num_threads(n)
            y = fwd(x)
            results.append((y, bwd(g, y if saves_output else x)))
    finally:
        fastopt.set_num_threads(before)
    for y, gx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(gx, results[0][1])


def test_shapes_are_kept_and_non_contiguous_inputs_are_copied():
    x = np.random.default_rng(7).standard_normal((6, 5, 4)).astype(np.float64)
    for view in (x.transpose(2, 0, 1), x[:, ::2], x[..., 1]):
        np.testing.assert_array_equal(F.tanh(view), F.tanh(np.ascontiguousarray(view)))
        assert F.sigmoid(view).shape == view.shape
    assert F.relu(np.array(-2.0, np.float32)).shape == ()
    assert F.gelu(np.zeros((0, 3))).shape == (0, 3)


def test_prelu_matches_torch(torch):
    rng = np.random.default_rng(8)
    for shape, wsize in (((4, 3), 3), ((4, 3, 5), 3), ((2, 3, 4, 4), 1), ((7,), 1)):
        x = rng.standard_normal(shape)
        w = rng.uniform(0.05, 0.5, wsize)
        g = rng.standard_normal(shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(w).requires_grad_(True)
        yt = torch.nn.functional.prelu(xt, wt)
        yt.backward(torch.from_numpy(g))
        np.testing.assert_allclose(F.prelu(x, w), yt.detach().numpy(), rtol=1e-15)
        gx, gw = F.prelu_backward(g, x, w)
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-15)
        np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 50), 1), ((3, 50), 0), ((4, 6, 5), 1), ((4, 6, 5), -1), ((2, 3, 4, 5), 2), ((5000, 10), 1)])
def test_softmax_and_log_softmax_match_torch(torch, dtype, shape, dim, threads):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 20).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    tol = (1e-6, 1e-7) if dtype == np.float32 else (1e-14, 1e-16)
    for fwd, bwd, tfn in ((F.softmax, F.softmax_backward, torch.softmax), (F.log_softmax, F.log_softmax_backward, torch.log_softmax)):
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        yt = tfn(xt, dim)
        yt.backward(torch.from_numpy(g.astype(np.float64)))
        y = fwd(x, dim)
        # log-probabilities near 0 carry the rounding of log(sum): absolute, a few eps.
        close(y, yt.detach().numpy(), tol[0], tol[1] if fwd is F.softmax else 8 * np.finfo(dtype).eps, fwd.__name__)
        # g - sum(g y) cancels: absolute bound relative to the gradient's scale.
        close(bwd(g, y, dim), xt.grad.numpy(), tol[0] * 10, 10 * np.finfo(dtype).eps * np.abs(g).max(), bwd.__name__)


def test_softmax_special_values_as_torch(torch):
    x = np.array([[0.0, -np.inf, 1.0], [np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0], [-np.inf, -np.inf, 0.0], [1e30, -1e30, 0.0]], np.float32)
    for fwd, tfn in ((F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)):
        want = tfn(torch.from_numpy(x), 1).numpy()
        close(fwd(x, 1), want, 1e-6, 0, fwd.__name__)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(64, 10), (10,), (8, 5, 3, 2)])
def test_cross_entropy_matches_torch(torch, dtype, reduction, smoothing, shape):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    c = shape[1] if len(shape) > 1 else shape[0]
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = rng.integers(0, c, tshape)
    if len(shape) > 1:
        t.reshape(-1)[::7] = -100
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    lt = torch.nn.functional.cross_entropy(xt, torch.from_numpy(t), reduction=reduction, label_smoothing=smoothing)
    go = rng.standard_normal(tshape) if reduction == "none" else 0.7
    lt.backward(torch.as_tensor(go, dtype=torch.float64))
    loss = F.cross_entropy(x, t, reduction=reduction, label_smoothing=smoothing)
    assert np.asarray(loss).dtype == dtype
    tol = (2e-6, 1e-6) if dtype == np.float32 else (1e-13, 1e-14)
    close(np.asarray(loss, np.float64).reshape(-1), lt.detach().numpy().reshape(-1), *tol, "loss")
    grad = F.cross_entropy_backward(go, x, t, reduction=reduction, label_smoothing=smoothing)
    assert grad.shape == x.shape and grad.dtype == dtype
    close(grad, xt.grad.numpy(), *tol, "grad")


def test_cross_entropy_all_ignored_is_nan_like_torch(torch):
    x = np.zeros((3, 4))
    t = np.full(3, -100)
    assert np.isnan(F.cross_entropy(x, t))
    assert np.isnan(torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(t)).item())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(torch, reduction):
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((2, 30, 7))
    g = rng.standard_normal((30, 7)) if reduction == "none" else 1.5
    xt = torch.from_numpy(x).requires_grad_(True)
    lt = torch.nn.functional.mse_loss(xt, torch.from_numpy(y), reduction=reduction)
    lt.backward(torch.as_tensor(g))
    np.testing.assert_allclose(F.mse_loss(x, y, reduction), lt.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(F.mse_loss_backward(g, x, y, reduction), xt.grad.numpy(), rtol=1e-13)


# ----------------------------------------------------------------------------- batch norm

BN_SHAPES = [(256, 33), (8, 5, 17), (4, 3, 6, 7), (300, 20)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_torch(torch, dtype, shape, affine, threads):
    rng = np.random.default_rng(12)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm_t, rv_t = torch.from_numpy(rm.astype(np.float64)), torch.from_numpy(rv.astype(np.float64))
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(w.astype(np.float64)).requires_grad_(True) if affine else None
    bt = torch.from_numpy(b.astype(np.float64)).requires_grad_(True) if affine else None
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training=True, momentum=0.2, eps=1e-4)
    yt.backward(torch.from_numpy(g.astype(np.float64)))

    y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-4, return_stats=True)
    tol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)
    close(y, yt.detach().numpy(), *tol, "output")
    close(rm, rm_t.numpy(), *tol, "running_mean")
    close(rv, rv_t.numpy(), *tol, "running_var")
    gx, gw, gb = F.batch_norm_backward(g, x, mean, invstd, w, training=True)
    close(gx, xt.grad.numpy(), tol[0] * 10, tol[1] * 10, "grad_input")
    if affine:
        close(gw, wt.grad.numpy(), *tol, "grad_weight")
        close(gb, bt.grad.numpy(), *tol, "grad_bias")
    else:
        assert gw is None and gb is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_eval_matches_torch(torch, dtype, shape):
    rng = np.random.default_rng(13)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(w.astype(np.float64)).requires_grad_(True)
    bt = torch.from_numpy(b.astype(np.float64)).requires_grad_(True)
    yt = torch.nn.functional.batch_norm(xt, torch.from_numpy(rm.astype(np.float64)), torch.from_numpy(rv.astype(np.float64)), wt, bt, training=False)
    yt.backward(torch.from_numpy(g.astype(np.float64)))
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=False, return_stats=True)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    tol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)
    close(y, yt.detach().numpy(), *tol, "output")
    gx, gw, gb = F.batch_norm_backward(g, x, mean, invstd, w, training=False)
    close(gx, xt.grad.numpy(), *tol, "grad_input")
    close(gw, wt.grad.numpy(), *tol, "grad_weight")
    close(gb, bt.grad.numpy(), *tol, "grad_bias")


def test_batch_norm_cumulative_average_matches_torch_module(torch):
    rng = np.random.default_rng(14)
    bn = torch.nn.BatchNorm1d(6, momentum=None, dtype=torch.float64)
    rm, rv = np.zeros(6), np.ones(6)
    nbt = np.zeros((), np.int64)
    for step in range(5):
        x = rng.standard_normal((10, 6, 3)) * (step + 1)
        yt = bn(torch.from_numpy(x))
        y = F.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=nbt)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert int(nbt) == int(bn.num_batches_tracked) == 5
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(512, 8), (16, 4, 100)])
def test_batch_norm_float32_statistics_are_stable_at_large_mean(shape):
    """mean 1e4, std 1 in float32: a sum of squares would lose the variance entirely."""
    rng = np.random.default_rng(15)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    y, mean, invstd = F.batch_norm(x, None, None, training=True, return_stats=True)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    x64 = x.astype(np.float64)
    want_var = x64.var(axis=axes)
    np.testing.assert_allclose(1.0 / invstd.astype(np.float64) ** 2 - 1e-5, want_var, rtol=1e-5)
    np.testing.assert_allclose(mean, x64.mean(axis=axes), rtol=1e-7)
    # and the output is standardized
    np.testing.assert_allclose(y.astype(np.float64).var(axis=axes), 1.0, rtol=1e-3)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument_and_changes_nothing():
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    x0 = x.copy()
    with pytest.raises(TypeError, match="input"):
        F.relu([1.0, 2.0])
    with pytest.raises(TypeError, match="input"):
        F.sigmoid(np.arange(4))
    with pytest.raises(ValueError, match="out"):
        F.tanh(x, out=np.empty((4, 3)))
    with pytest.raises(TypeError, match="out"):
        F.tanh(x, out=np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="out"):
        F.tanh(x, out=x.T)  # not C-contiguous
    overlap = np.zeros(20)
    src = overlap[:12].reshape(3, 4)
    src[...] = x
    with pytest.raises(ValueError, match="share memory"):
        F.sigmoid(src, out=overlap[4:16].reshape(3, 4))
    np.testing.assert_array_equal(src, x)
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.relu_(ro)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="erf")
    with pytest.raises(TypeError, match="negative_slope"):
        F.leaky_relu(x, "0.1")
    with pytest.raises(ValueError, match="grad_output"):
        F.tanh_backward(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match="dim"):
        F.softmax(x, 2)
    with pytest.raises(TypeError, match="dim"):
        F.softmax(x, None)
    np.testing.assert_array_equal(x, x0)


def test_bad_losses_and_batch_norm_input():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"target\[2\] = 3"):
        F.cross_entropy(x, np.array([0, 1, 3, 2]))
    with pytest.raises(ValueError, match="target"):
        F.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="target"):
        F.cross_entropy(x, np.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, np.zeros(4, int), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, np.zeros(4, int), label_smoothing=1.5)
    with pytest.raises(ValueError, match="target"):
        F.mse_loss(x, np.zeros((3, 4)))
    out = np.full((4, 3), 7.0)
    with pytest.raises(ValueError, match=r"target\[0\] = 5"):
        F.cross_entropy_backward(1.0, x, np.array([5, 0, 0, 0]), out=out)
    with pytest.raises(ValueError, match="grad_output"):
        F.cross_entropy_backward(np.ones(3), x, np.zeros(4, int), reduction="none", out=out)
    np.testing.assert_array_equal(out, 7.0)
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.ones((1, 3)), rm, rv, training=True)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, np.zeros(4), rv)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        F.batch_norm(x, rm, rv, training=True, momentum=None)
    with pytest.raises(TypeError, match="weight"):
        F.batch_norm(x, rm, rv, weight=[1, 1, 1])
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


# ----------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

ANY_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(ACTS)), dtype=st.sampled_from(DTYPES))
def test_property_any_shape_layout_and_value(torch, data, name, dtype):
    """Any shape (0-d, empty, up to 4-D), any float32-representable values, contiguous or a
    strided view: the shape is kept, a view gives what its contiguous copy gives, and the
    values are those of torch's float64 function within the forward test's bar."""
    base = data.draw(hnp.arrays(dtype, data.draw(SHAPES), elements=ANY_FLOATS))
    x = base
    if base.ndim >= 1 and data.draw(st.booleans()):
        x = base[::-1] if base.ndim == 1 else np.swapaxes(base, 0, -1)
    fwd = ACTS[name][0]
    y = fwd(x)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, fwd(np.ascontiguousarray(x)))
    if name.startswith("gelu") or x.size == 0:
        return
    ref = torch_fn(torch, name)(torch.from_numpy(np.array(x, np.float64, order="C", copy=True))).numpy().astype(dtype)
    close(y, ref, 4 * np.finfo(dtype).eps, 1e-36 if dtype == np.float32 else 1e-300, name)


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), elements=st.floats(-1e3, 1e3)), data=st.data())
def test_property_softmax_is_a_distribution(x, data):
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    p = F.softmax(x, dim)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=dim), 1.0, rtol=1e-13)
    np.testing.assert_allclose(np.exp(F.log_softmax(x, dim)), p, rtol=1e-12, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), c=st.integers(1, 9), l=st.integers(1, 9), mean=st.floats(-1e4, 1e4), std=st.floats(1e-2, 1e2))
def test_property_batch_norm_standardizes(n, c, l, mean, std):
    x = np.random.default_rng(n * 100 + c).standard_normal((n, c, l)) * std + mean
    if np.ptp(x, axis=(0, 2)).min() < 1e-6 * std:
        return
    y = F.batch_norm(x, None, None, training=True, eps=0.0)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1.0, rtol=1e-9)
