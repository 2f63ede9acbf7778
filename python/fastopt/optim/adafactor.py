"""Adafactor (torch.optim.Adafactor)."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .. import _fastopt
from ._options import check_bool, check_nonnegative, real
from .optimizer import Optimizer

__all__ = ["Adafactor"]


def _lerp_(start: np.ndarray, end: np.ndarray, weight: float) -> None:
    """torch's lerp_ with a scalar weight (its two forms), in place, in start's dtype."""
    w = start.dtype.type(weight)
    if abs(w) < 0.5:
        start += w * (end - start)
    else:
        start[...] = end - (end - start) * (start.dtype.type(1) - w)


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018) with torch.optim.Adafactor's arguments, defaults,
    checks, state (``step``; ``row_var``/``col_var`` for parameters of 2 or more dimensions,
    ``variance`` otherwise) and update rule: a relative step size, factored second moments
    with ``beta2_t = 1 - t**beta2_decay``, update clipping by ``d`` and decoupled weight
    decay.

    A parameter of 2 or more dimensions takes three Rust passes (row/column sums of the
    squared gradient and the parameter's norm; the update's norm, for the clipping by ``d``;
    the update, weight decay folded in), with only its small row/column vectors updated in
    NumPy; vectors (biases) use NumPy array operations in torch's order. The arguments are
    checked by the Rust layer before anything changes. Unlike torch (which divides by zero),
    an empty parameter is simply skipped.


    With gradient :math:`G_t` (negated with ``maximize``), at step :math:`t`, for a matrix
    (the last two axes; vectors keep a full second moment :math:`V_t` instead):

    .. math::

        \beta_{2,t} = 1 - t^{c}, \qquad
        \rho_t = \min\bigl(\mathrm{lr},\ 1/\sqrt t\bigr), \qquad
        \alpha_t = \max\bigl(\epsilon_2,\ \mathrm{RMS}(P_{t-1})\bigr)\,\rho_t,

        R_t = \beta_{2,t} R_{t-1} + (1 - \beta_{2,t})\,\mathrm{mean}_{\text{cols}}(G_t^2), \qquad
        C_t = \beta_{2,t} C_{t-1} + (1 - \beta_{2,t})\,\mathrm{mean}_{\text{rows}}(G_t^2),

        U_t = \frac{G_t}{\sqrt{\max\bigl(R_t C_t / \mathrm{mean}(R_t),\ \epsilon_1^2\bigr)}}, \qquad
        P_t = P_{t-1}(1 - \mathrm{lr}\cdot\lambda)
              - \frac{\alpha_t}{\max\bigl(1,\ \mathrm{RMS}(U_t)/d\bigr)}\, U_t

    (:math:`c` is ``beta2_decay``; :math:`R` and :math:`C` are ``row_var`` and ``col_var``).

    Example:

    >>> w = fo.Parameter(np.ones((2, 3), np.float32))
    >>> opt = fo.optim.Adafactor([w], lr=0.1)
    >>> w.grad = np.full((2, 3), 0.5, np.float32)
    >>> opt.step()
    >>> [k for k in sorted(opt.state[w])]  # factored: one variance per row and per column
    ['col_var', 'row_var', 'step']
    >>> opt.state[w]['row_var'].shape, opt.state[w]['col_var'].shape
    ((2, 1), (1, 3))
    """

    _option_docs = {
        "eps": "``(eps1, eps2)``: eps1 (None: the dtype's smallest normal) keeps the second moment "
               "positive; eps2 scales the step by the parameter's root mean square, at least eps2",
        "lr": "learning rate (relative: multiplied by ``max(eps2, rms(param))``)",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group):
        lr, decay, eps, d, wd = group["lr"], group["beta2_decay"], group["eps"], group["d"], group["weight_decay"]
        check_nonnegative(lr, "lr", f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= real(decay, "beta2_decay"):
            raise ValueError(f"beta2_decay should be <= 0 but is: {decay}")
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise TypeError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
        if eps[0] is not None and not 0.0 <= real(eps[0], "eps[0]"):
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= real(eps[1], "eps[1]"):
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= real(d, "d"):
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        check_nonnegative(wd, "weight_decay", f"weight_decay should be >= 0 but is: {wd}")
        check_bool(group["maximize"], "maximize")

    #: Several kernel calls per tensor: a step interrupted between them is not retried.
    _kernel_counts_calls = False

    @staticmethod
    def _layout(a: np.ndarray) -> dict[str, tuple]:
        """The state buffers a parameter of ``a``'s shape has, and their shapes."""
        if a.ndim > 1:
            return {"row_var": a.shape[:-1] + (1,), "col_var": a.shape[:-2] + (1,) + a.shape[-1:]}
        return {"variance": a.shape}

    def _check_state(self, i: int, a: np.ndarray, st: dict) -> None:
        """Every buffer of an existing state, before any parameter of the group changes."""
        if "step" not in st:
            raise ValueError(f"state of params[{i}] has no 'step'")
        step = np.asarray(st["step"])
        if step.size != 1 or step.dtype.kind != "f" or not (np.isfinite(step).all() and float(step.reshape(())) >= 0):
            raise ValueError(f"state of params[{i}]: 'step' must be one finite float >= 0, got {st['step']!r}")
        if not isinstance(st["step"], np.ndarray) or not st["step"].flags.writeable:
            raise ValueError(f"state of params[{i}]: 'step' must be a writeable ndarray")
        for name, shape in self._layout(a).items():
            b = st.get(name)
            if b is None:
                raise ValueError(f"state of params[{i}] has no {name!r} (a parameter of {a.ndim} dimensions needs "
                                 f"{', '.join(repr(n) for n in self._layout(a))})")
            if not isinstance(b, np.ndarray) or b.shape != shape or b.dtype != a.dtype:
                got = f"{b.shape} {b.dtype}" if isinstance(b, np.ndarray) else type(b).__name__
                raise ValueError(f"state of params[{i}]: {name!r} must be an array of shape {shape} and dtype "
                                 f"{a.dtype}, got {got}")
            if not (b.flags.c_contiguous and b.flags.writeable):
                raise ValueError(f"state of params[{i}]: {name!r} must be C-contiguous and writeable")

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        _fastopt.check_group(arrays, grads)
        items = self.state._items
        for i, (p, a) in enumerate(zip(params, arrays)):
            found = items.get(id(p))
            if found is not None and found[1]:
                self._check_state(i, a, found[1])
        if check_only:
            return
        lr, decay, (eps1, eps2), d, wd = (group["lr"], group["beta2_decay"], group["eps"], group["d"],
                                          group["weight_decay"])
        for p, a, g in zip(params, arrays, grads):
            st = self.state[p]
            if not st:
                st["step"] = np.zeros((), np.float32)
                for name, shape in self._layout(a).items():
                    st[name] = np.zeros(shape, a.dtype)
            if a.size == 0:
                st["step"] += np.float32(1)
                continue
            self._update(a, g, st, lr, decay, eps1, eps2, d, wd, group["maximize"], grad_scale)

    @staticmethod
    def _update(p, g, st, lr, decay, eps1, eps2, d, wd, maximize, grad_scale):
        t = p.dtype.type
        if grad_scale != 1.0:
            g = g * t(grad_scale)
        if maximize:
            g = -g
        st["step"] += np.float32(1)
        step = float(st["step"])
        one_minus_beta2 = step**decay
        rho = min(lr, 1 / step**0.5)
        e1 = np.finfo(p.dtype).eps if eps1 is None else eps1
        if g.ndim > 1:
            # Three Rust passes over the tensor: row/column sums of g^2 and sum(p^2); the
            # update's norm; the update itself (weight decay folded in). Only the small
            # row/column vectors are NumPy.
            rows, cols = g.shape[-2:]
            batch = g.size // (rows * cols)
            row_sq, col_sq = np.empty(batch * rows), np.empty(batch * cols)
            p_sq = _fastopt.adafactor_sums(g, p, batch, rows, cols, row_sq, col_sq)
            alpha = max(eps2, math.sqrt(p_sq) / p.size**0.5) * rho
            # torch: norm(g, dim).square_() / size, in the parameter's dtype.
            row_mean = np.square(np.sqrt(row_sq).astype(p.dtype)) / t(cols)
            _lerp_(st["row_var"], row_mean.reshape(st["row_var"].shape), one_minus_beta2)
            col_mean = np.square(np.sqrt(col_sq).astype(p.dtype)) / t(rows)
            _lerp_(st["col_var"], col_mean.reshape(st["col_var"].shape), one_minus_beta2)
            r_mean = np.maximum(st["row_var"].mean(axis=-2, keepdims=True, dtype=p.dtype), t(e1))
            args = (g, batch, rows, cols, st["row_var"].reshape(-1), st["col_var"].reshape(-1),
                    np.ascontiguousarray(r_mean.reshape(-1)), e1 * e1)
            u_sq = _fastopt.adafactor_update(*args)
            denom = max(1.0, math.sqrt(u_sq) / (g.size**0.5 * d))
            _fastopt.adafactor_update(*args, param=p, decay=1 - lr * wd if wd != 0 else 1.0, scale=-alpha / denom)
            return
        # Vectors (biases): NumPy, in torch's order of operations.
        alpha = max(eps2, float(np.linalg.norm(p.ravel())) / p.size**0.5) * rho
        if wd != 0:
            p *= t(1 - lr * wd)
        _lerp_(st["variance"], g * g, one_minus_beta2)
        var = st["variance"].copy()
        update = t(1) / np.sqrt(np.maximum(var, t(e1 * e1)))
        update *= g
        denom = max(1.0, float(np.linalg.norm(update.ravel())) / (update.size**0.5 * d))
        p += update * t(-alpha / denom)
