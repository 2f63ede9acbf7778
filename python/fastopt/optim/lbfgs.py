"""L-BFGS (torch.optim.LBFGS), with torch's strong-Wolfe line search."""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

import numpy as np

from .. import _fastopt
from ..parameter import Parameter
from ._options import CHECKS, check_bool, check_nonnegative
from .optimizer import Optimizer, locked


def _absmax(a: np.ndarray) -> np.floating:
    """max |a_i| without allocating |a| (Rust infinity norm)."""
    return a.dtype.type(_fastopt.total_norm([a], float("inf"))) if a.size else a.dtype.type(0)


def _dot(a: np.ndarray, b: np.ndarray) -> np.floating:
    """a . b in Rust (double-precision accumulation), as a scalar of the vectors' dtype."""
    return a.dtype.type(_fastopt.dot(a, b))

__all__ = ["LBFGS"]


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimum of the cubic through (x1, f1, g1) and (x2, f2, g2), within bounds (torch's)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's line search satisfying the strong Wolfe conditions (bracketing, then zoom)."""
    d_norm = _absmax(d)
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = _dot(g_new, d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = _dot(g_new, d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = _dot(g_new, d)
        ls_iter += 1
        if f_new > f + c1 * t * gtd or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


class LBFGS(Optimizer):
    r"""L-BFGS (torch.optim.LBFGS: arguments, defaults, one param group, ``step(closure)``
    evaluating the closure up to ``max_eval`` times, ``line_search_fn=None|'strong_wolfe'``,
    and the same state: ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
    ``prev_flat_grad``, ``prev_loss``, ``func_evals``, ``n_iter``).

    Parameters must be :class:`fastopt.Parameter` objects whose ``.grad`` the closure sets.
    The vector arithmetic runs on one flat vector: dot products and ``y += a*x`` updates in
    Rust (double-precision dot accumulation, FMA updates as torch's ``add_``), the rest as
    NumPy operations, in the parameters' dtype as torch's does in theirs.


    With the flat gradient :math:`g_k` and the last ``history_size`` pairs
    :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i`, the direction is
    :math:`d_k = -H_k g_k`, :math:`H_k` applied by the two-loop recursion:

    .. math::

        q \leftarrow g_k;\quad \text{for } i = k-1, \dots, k-m:\ \
        a_i = \rho_i s_i^\top q,\ q \leftarrow q - a_i y_i, \qquad \rho_i = \frac{1}{y_i^\top s_i},

        r \leftarrow \frac{s_{k-1}^\top y_{k-1}}{y_{k-1}^\top y_{k-1}}\, q;\quad
        \text{for } i = k-m, \dots, k-1:\ \ r \leftarrow r + s_i (a_i - \rho_i y_i^\top r), \qquad d_k = -r,

    then :math:`x_{k+1} = x_k + t\, d_k` with :math:`t = \mathrm{lr}` (the first iteration:
    :math:`\min(1, 1/\lVert g \rVert_1)\,\mathrm{lr}`) or the strong-Wolfe line search's step.

    Example:

    >>> w = fo.Parameter(np.array([3.0, -1.0]))
    >>> opt = fo.optim.LBFGS([w], line_search_fn='strong_wolfe')
    >>> def closure():
    ...     w.grad = np.array([2.0, 20.0]) * w.data  # f = x^2 + 10 y^2
    ...     return float(w.data[0] ** 2 + 10 * w.data[1] ** 2)
    >>> loss = opt.step(closure)
    >>> np.allclose(w.data, 0.0, atol=1e-6)
    True
    """

    _takes_half = False  # (its own arithmetic is float32/float64 only)
    _takes_device = False  # (passes of its own: no CUDA kernels yet)

    _couples = "all"  # (the direction comes from every parameter's history)
    _option_docs = {
        "lr": "learning rate (the step along the search direction; with a line search, its first trial)",
        "max_iter": "maximal number of iterations per ``step``",
        "max_eval": "maximal number of closure evaluations per ``step`` (default ``max_iter * 1.25``)",
        "tolerance_grad": "stop when the largest absolute gradient element is at most this",
        "tolerance_change": "stop when the step or the change of the loss is at most this",
        "history_size": "number of past updates kept to approximate the inverse Hessian",
        "line_search_fn": "``None`` (fixed step ``lr``) or ``'strong_wolfe'``",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None, *, maximize: bool = False) -> None:
        CHECKS["lr"](lr, "lr")
        for name, value in (("max_iter", max_iter), ("history_size", history_size), ("max_eval", max_eval)):
            if value is None and name == "max_eval":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        check_nonnegative(tolerance_grad, "tolerance_grad", f"Invalid tolerance_grad: {tolerance_grad}")
        check_nonnegative(tolerance_change, "tolerance_change", f"Invalid tolerance_change: {tolerance_change}")
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError("only 'strong_wolfe' is supported")
        check_bool(maximize, "maximize")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn,
                        maximize=maximize)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        for i, p in enumerate(self._params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a fastopt.Parameter: LBFGS reads the gradients the closure sets")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        super().add_param_group(param_group)

    def _flat_array(self, n: int, dtype: np.dtype) -> np.ndarray:
        """An array for a gathered gradient, recycled from earlier ones nothing refers to
        any more (a fresh multi-megabyte array costs a page fault per 4 KiB on every
        iteration; CPython's reference count tells exactly when one is free)."""
        pool = self.__dict__.setdefault("_flat_pool", [])
        for a in pool:
            # References: the pool's list, the loop variable and getrefcount's argument.
            if sys.getrefcount(a) == 3 and a.shape == (n,) and a.dtype == dtype:
                return a
        a = np.empty(n, dtype)
        if len(pool) < 8:
            pool.append(a)
        return a

    def _gather_flat_grad(self) -> np.ndarray:
        dtype = self._params[0].dtype if self._params else np.dtype(np.float64)
        flat = self._flat_array(sum(p.size for p in self._params), dtype)
        offset = 0
        for p in self._params:
            part = flat[offset : offset + p.size]
            if p.grad is None:
                part[...] = 0
            else:
                np.copyto(part, p.grad.reshape(-1))
            offset += p.size
        if self.param_groups[0]["maximize"]:
            np.negative(flat, out=flat)
        return flat

    def _add_grad(self, step_size, update: np.ndarray) -> None:
        offset = 0
        for p in self._params:
            n = p.size
            _fastopt.axpy_(p.data, float(step_size), update[offset : offset + n].reshape(p.shape))
            offset += n

    def _directional_evaluate(self, closure, x, t, d):
        self._add_grad(t, d)
        loss = float(closure())
        if self.param_groups[0]["maximize"]:
            loss = -loss
        flat_grad = self._gather_flat_grad()
        for p, data in zip(self._params, x):
            p.data[...] = data
        return loss, flat_grad

    @locked
    def step(self, closure: Callable[[], Any] | None = None, grads: Any = None, **options: Any) -> Any:
        """Runs up to ``max_iter`` L-BFGS iterations; ``closure`` (required) re-evaluates the
        model, sets the gradients and returns the loss. Returns the first loss."""
        if closure is None or not callable(closure):
            raise TypeError("LBFGS.step needs a closure that re-evaluates the model and returns the loss")
        if grads is not None or options:
            raise TypeError("LBFGS.step takes only a closure (the closure sets the gradients)")
        self._opt_called = True
        if len(self._params) == 0:
            return closure()
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size, maximize = group["line_search_fn"], group["history_size"], group["maximize"]
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        orig_loss = closure()
        loss = -float(orig_loss) if maximize else float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if _absmax(flat_grad) <= tolerance_grad:
            return orig_loss
        # (None before the first iteration, which sets them before any use)
        d: Any = state.get("d")
        t: Any = state.get("t")
        old_dirs: Any = state.get("old_dirs")
        old_stps: Any = state.get("old_stps")
        ro: Any = state.get("ro")
        H_diag: Any = state.get("H_diag")
        prev_flat_grad: Any = state.get("prev_flat_grad")
        prev_loss: Any = state.get("prev_loss")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            # Work arrays are kept in the state and reused (a fresh 8 MB array costs its page
            # faults on every iteration): q holds the direction d, two spares take the next
            # (y, s) pair, and a full history hands its oldest pair back as the spares.
            # (Kept outside the state, which state_dict() exports as torch's.)
            buf = self.__dict__.get("_work")
            if buf is None or buf["q"].shape != flat_grad.shape or buf["q"].dtype != flat_grad.dtype:
                buf = self.__dict__["_work"] = {k: np.empty_like(flat_grad) for k in ("q", "y", "s", "prev")}
            if state["n_iter"] == 1:
                d = np.negative(flat_grad, out=buf["q"])
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = np.subtract(flat_grad, prev_flat_grad, out=buf["y"])
                s = np.multiply(d, t, out=buf["s"])
                ys = _dot(y, s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        buf["y"], buf["s"] = old_dirs.pop(0), old_stps.pop(0)
                        ro.pop(0)
                    else:
                        buf["y"], buf["s"] = np.empty_like(y), np.empty_like(s)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / _dot(y, y)
                num_old = len(old_dirs)
                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]
                # The two-loop recursion, each update fused with the next iteration's dot
                # product (one pass over memory instead of two; the same arithmetic).
                q = np.negative(flat_grad, out=buf["q"])
                dtype = q.dtype.type
                if num_old:
                    sq = _dot(old_stps[num_old - 1], q)
                for i in range(num_old - 1, -1, -1):
                    al[i] = sq * ro[i]
                    if i > 0:
                        sq = dtype(_fastopt.axpy_dot(q, float(-al[i]), old_dirs[i], old_stps[i - 1]))
                    else:
                        _fastopt.axpy_(q, float(-al[i]), old_dirs[i])
                d = r = np.multiply(q, H_diag, out=q)
                if num_old:
                    yr = _dot(old_dirs[0], r)
                for i in range(num_old):
                    be_i = yr * ro[i]
                    if i + 1 < num_old:
                        yr = dtype(_fastopt.axpy_dot(r, float(al[i] - be_i), old_stps[i], old_dirs[i + 1]))
                    else:
                        _fastopt.axpy_(r, float(al[i] - be_i), old_stps[i])
            prev_flat_grad = buf["prev"]
            np.copyto(prev_flat_grad, flat_grad)
            prev_loss = loss
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / flat_grad.dtype.type(_fastopt.total_norm([flat_grad], 1.0))) * lr
            else:
                t = lr
            gtd = _dot(flat_grad, d)
            if gtd > -tolerance_change:
                break
            ls_func_evals = 0
            if line_search_fn is not None:
                # The line search's starting point, in arrays kept across iterations (a fresh
                # copy per iteration cost its page faults every time).
                x_init = self.__dict__.get("_x_init")
                if x_init is None or any(a.shape != p.data.shape or a.dtype != p.data.dtype for a, p in zip(x_init, self._params)):
                    x_init = self.__dict__["_x_init"] = [np.empty_like(p.data) for p in self._params]
                for a, p in zip(x_init, self._params):
                    np.copyto(a, p.data)

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                self._add_grad(t, d)
                opt_cond = _absmax(flat_grad) <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    loss = closure()
                    loss = -float(loss) if maximize else float(loss)
                    flat_grad = self._gather_flat_grad()
                    opt_cond = _absmax(flat_grad) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            # max|d*t| == |t| * max|d| exactly (rounding is monotone), without a temporary
            if abs(t) * _absmax(d) <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break
        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss
