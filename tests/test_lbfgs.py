"""L-BFGS against torch.optim.LBFGS on convex problems, with and without the strong-Wolfe line
search; bad input; resumption.

The two implementations compute the same L-BFGS iteration, but their dot products and norms sum
in different orders (fastopt: SIMD lanes whose width depends on the CPU; torch: its BLAS, which
differs between vendors), so each inner product differs by up to about n*eps relatively. How
far that moves the final parameters is a property of the problem and of the iteration (the line
search's interpolation amplifies it), not of one machine, so the tolerance is measured: the
same optimizer is rerun with every gradient perturbed by random relative amounts of n*eps, and
the parameters may differ from torch's by a few times the largest deviation those reruns show
(never less than the parity bar)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastopt as fo
from conftest import assert_close

_rng = np.random.default_rng(0)
_A = _rng.standard_normal((40, 30))
Q = _A.T @ _A / 40 + 0.1 * np.eye(30)
B = _rng.standard_normal(30)
X = _rng.standard_normal((200, 30))
Y = (_rng.random(200) < 0.5).astype(float)


def quadratic(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x @ Q @ x - B @ x, Q @ x - B


def logistic(x):
    x = np.asarray(x, dtype=np.float64)
    z = X @ x
    f = np.mean(np.logaddexp(0, z) - Y * z) + 0.01 * x @ x
    return f, X.T @ (1 / (1 + np.exp(-z)) - Y) / len(Y) + 0.02 * x


def _run(make_param, make_opt, set_grad, fn, dtype, steps=3):
    x0 = np.random.default_rng(1).standard_normal(30).astype(dtype)
    p = make_param(x0.copy())
    opt = make_opt(p)

    def closure():
        f, g = fn(np.asarray(p.data if isinstance(p, fo.Parameter) else p.detach().numpy()))
        set_grad(p, g.astype(dtype))
        return f

    losses = [float(opt.step(closure)) for _ in range(steps)]
    return p, opt, losses


_BAR = {np.float32: 1e-5, np.float64: 1e-12}


def _rounding_sensitivity(kw, fn, dtype, unperturbed, runs=8):
    """The largest relative deviation (against the buffer's scale) of the final parameters when
    every gradient the closure returns is perturbed element-wise by N(0, 1) * n * eps relatively,
    n being the length of the dot products the iteration takes: what a different summation order
    in either implementation amounts to."""
    n, eps = len(unperturbed), np.finfo(dtype).eps
    scale = float(np.max(np.abs(unperturbed))) or 1.0
    worst = 0.0
    for seed in range(runs):
        rng = np.random.default_rng(1000 + seed)

        def perturbed(x, rng=rng):
            f, g = fn(x)
            return f, g * (1 + n * eps * rng.standard_normal(g.shape))

        p, _, _ = _run(fo.Parameter, lambda p: fo.optim.LBFGS([p], **kw), lambda p, g: setattr(p, "grad", g),
                       perturbed, dtype)
        worst = max(worst, float(np.max(np.abs(p.data.astype(np.float64) - unperturbed))) / scale)
    return worst


def test_rounding_sensitivity_is_measured_not_zero():
    """The measured tolerance reacts to the problem: the strong-Wolfe quadratic (whose line
    search interpolates on nearly equal losses) amplifies rounding by orders of magnitude more
    than fixed-step L-BFGS on the same problem."""
    kw = dict(history_size=10, max_iter=15)
    x = lambda ls, lr: _run(fo.Parameter, lambda p: fo.optim.LBFGS([p], lr=lr, line_search_fn=ls, **kw),
                            lambda p, g: setattr(p, "grad", g), quadratic, np.float64)[0].data
    wolfe = _rounding_sensitivity(dict(lr=1.0, line_search_fn="strong_wolfe", **kw), quadratic, np.float64,
                                  x("strong_wolfe", 1.0))
    fixed = _rounding_sensitivity(dict(lr=0.5, line_search_fn=None, **kw), quadratic, np.float64, x(None, 0.5))
    assert 0 < fixed < 1e-13 and wolfe > 30 * fixed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("line_search_fn,lr", [(None, 0.5), ("strong_wolfe", 1.0)])
@pytest.mark.parametrize("fn", [quadratic, logistic], ids=["quadratic", "logistic"])
def test_matches_torch(torch, fn, line_search_fn, lr, dtype):
    kw = dict(lr=lr, line_search_fn=line_search_fn, history_size=10, max_iter=15)
    a, oa, la = _run(fo.Parameter, lambda p: fo.optim.LBFGS([p], **kw), lambda p, g: setattr(p, "grad", g), fn, dtype)
    b, ob, lb = _run(lambda x: torch.nn.Parameter(torch.from_numpy(x)), lambda p: torch.optim.LBFGS([p], **kw),
                     lambda p, g: setattr(p, "grad", torch.from_numpy(g)), fn, dtype)
    expected = b.detach().numpy()
    sensitivity = _rounding_sensitivity(kw, fn, dtype, a.data)
    assert_close(a.data, expected, "params", tol=max(_BAR[dtype], 4 * sensitivity))
    np.testing.assert_allclose(la, lb, rtol=1e-10 if dtype == np.float64 else 1e-5)
    sa, sb = oa.state[a], ob.state[b]
    assert set(sa) == set(sb)
    if dtype == np.float64:
        assert sa["func_evals"] == sb["func_evals"] and sa["n_iter"] == sb["n_iter"]
        assert len(sa["old_dirs"]) == len(sb["old_dirs"])
    else:  # a line-search comparison may fall the other way at float32 rounding level
        assert abs(sa["func_evals"] - sb["func_evals"]) <= 1
    # (the last direction d is near convergence: rounding noise, not compared element-wise)


def test_converges_on_rosenbrock_with_line_search():
    p = fo.Parameter(np.array([-1.5, 2.0]))
    opt = fo.optim.LBFGS([p], line_search_fn="strong_wolfe")

    def closure():
        x, y = p.data
        p.grad = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    for _ in range(10):
        opt.step(closure)
    np.testing.assert_allclose(p.data, [1.0, 1.0], atol=1e-4)


def test_maximize_ascends():
    p = fo.Parameter(np.zeros(30))
    opt = fo.optim.LBFGS([p], lr=0.1, max_iter=5, maximize=True)

    def closure():
        f, g = quadratic(p.data)
        p.grad = -g
        return -f  # the concave objective -quadratic, maximized

    first = opt.step(closure)
    assert closure() > first


def test_resume_from_state_dict_is_identical():
    def make():
        p = fo.Parameter(np.random.default_rng(2).standard_normal(30))
        return p, fo.optim.LBFGS([p], history_size=5, max_iter=4, line_search_fn="strong_wolfe")

    def closure_for(p):
        def closure():
            f, g = logistic(p.data)
            p.grad = g
            return f
        return closure

    p, opt = make()
    for _ in range(3):
        opt.step(closure_for(p))
    sd = copy.deepcopy(opt.state_dict())
    saved = p.data.copy()
    for _ in range(3):
        opt.step(closure_for(p))
    q, opt2 = make()
    q.data[...] = saved
    opt2.load_state_dict(sd)
    for _ in range(3):
        opt2.step(closure_for(q))
    assert q.data.tobytes() == p.data.tobytes()


def test_bad_input():
    p = fo.Parameter(np.zeros(3))
    opt = fo.optim.LBFGS([p])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError, match="takes only a closure"):
        opt.step(lambda: 0.0, grads=[np.zeros(3)])
    with pytest.raises(TypeError, match=r"params\[0\] must be a fastopt.Parameter"):
        fo.optim.LBFGS([np.zeros(3)])
    with pytest.raises(ValueError, match="parameter groups"):
        fo.optim.LBFGS([{"params": [fo.Parameter(np.zeros(2))]}, {"params": [fo.Parameter(np.zeros(2))]}])
    with pytest.raises(ValueError, match="only 'strong_wolfe'"):
        fo.optim.LBFGS([fo.Parameter(np.zeros(2))], line_search_fn="backtracking")
    with pytest.raises(ValueError, match="Invalid learning rate"):
        fo.optim.LBFGS([fo.Parameter(np.zeros(2))], lr=-1.0)
    with pytest.raises(ValueError, match="parameter groups"):
        opt.add_param_group({"params": [fo.Parameter(np.zeros(2))]})
