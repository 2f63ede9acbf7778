"""Adafactor (torch.optim.Adafactor)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from . import _engine
from ._options import check_bool, check_nonnegative, real
from .optimizer import Optimizer

__all__ = ["Adafactor", "adafactor"]


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018) with torch.optim.Adafactor's arguments, defaults,
    checks, state (``step``; ``row_var``/``col_var`` for parameters of 2 or more dimensions,
    ``variance`` otherwise) and update rule: a relative step size, factored second moments
    with ``beta2_t = 1 - t**beta2_decay``, update clipping by ``d`` and decoupled weight
    decay.

    The whole rule runs in Rust, one call per group: a parameter of 2 or more dimensions
    takes three passes (row/column sums of the squared gradient and the parameter's norm;
    the update's norm, for the clipping by ``d``; the update, weight decay folded in), a
    vector two (the variance and both norms; the update). Every array is checked before
    anything changes. Unlike torch (which divides by zero), an empty parameter only counts
    the step.

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

    _takes_half = False  # (its own arithmetic is float32/float64 only)
    _takes_device = False  # (passes of its own: no CUDA kernels yet)

    _couples = "tensor"  # (an element's update reads its row and column)
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

    @staticmethod
    def _layout(a: np.ndarray) -> dict[str, tuple]:
        """The state buffers a parameter of ``a``'s shape has, and their shapes."""
        if a.ndim > 1:
            return {"row_var": a.shape[:-1] + (1,), "col_var": a.shape[:-2] + (1,) + a.shape[-1:]}
        return {"variance": a.shape}

    def _check_state(self, i: int, a: np.ndarray, st: dict) -> None:
        """An existing state's step and keys, before any parameter of the group changes (the
        kernel checks the buffers' shapes, dtypes and layout)."""
        if "step" not in st:
            raise ValueError(f"state of params[{i}] has no 'step'")
        step = np.asarray(st["step"])
        if step.size != 1 or step.dtype.kind != "f" or not (np.isfinite(step).all() and float(step.reshape(())) >= 0):
            raise ValueError(f"state of params[{i}]: 'step' must be one finite float >= 0, got {st['step']!r}")
        for name in self._layout(a):
            if name not in st:
                raise ValueError(f"state of params[{i}] has no {name!r} (a parameter of {a.ndim} dimensions needs "
                                 f"{', '.join(repr(n) for n in self._layout(a))})")

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        items = self.state._items
        states, created = [], []
        for i, (p, a) in enumerate(zip(params, arrays)):
            found = items.get(id(p))
            st = found[1] if found is not None else None
            if st:
                self._check_state(i, a, st)
            else:
                # Committed only once the kernel has run, so a failed step leaves no trace.
                st = {"step": np.zeros((), np.float32)}
                st.update({name: np.zeros(shape, a.dtype) for name, shape in self._layout(a).items()})
                created.extend((p, name, b) for name, b in st.items())
            states.append(st)
        self._pending = created
        (eps1, eps2) = group["eps"]
        _engine.adafactor_step(arrays, grads, [st.get("row_var") for st in states], [st.get("col_var") for st in states],
                               [st.get("variance") for st in states], [st["step"] for st in states], lr=group["lr"],
                               beta2_decay=group["beta2_decay"], eps1=eps1, eps2=eps2, d=group["d"],
                               weight_decay=group["weight_decay"], maximize=group["maximize"], grad_scale=grad_scale,
                               check_only=check_only, cache=None if check_only else self._check_cache(group))
        if created and not check_only:
            self._commit(created)

def adafactor(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    row_vars: Sequence[np.ndarray | None],
    col_vars: Sequence[np.ndarray | None],
    variances: Sequence[np.ndarray | None],
    state_steps: Sequence[np.ndarray],
    *,
    d: float = 1.0,
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    weight_decay: float = 0.0,
    eps1: float | None = None,
    eps2: float = 1e-3,
    maximize: bool = False,
    grad_scale: float = 1.0,
    check_only: bool = False,
) -> None:
    """Adafactor (torch.optim.adafactor.adafactor; see :class:`fastopt.optim.Adafactor` for
    the maths): for a parameter of 2 or more dimensions and shape ``(..., rows, cols)``,
    ``row_vars[i]`` has shape ``(..., rows, 1)`` and ``col_vars[i]`` ``(..., 1, cols)``
    (``variances[i]`` may be None); otherwise ``variances[i]`` has the parameter's shape.
    Increments ``state_steps`` in place. ``grad_scale`` multiplies every gradient as it is
    read; with ``check_only`` every argument is checked and nothing changes.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.ones((2, 3)), np.full((2, 3), 0.5)
    >>> r, c, step = np.zeros((2, 1)), np.zeros((1, 3)), np.zeros((), np.float32)
    >>> F.adafactor([p], [g], [r], [c], [None], [step], lr=0.1)
    >>> np.round(p, 4)  # step 1: rho = min(lr, 1) = 0.1, times rms(p) = 1, update rms clipped to 1
    array([[0.9, 0.9, 0.9],
           [0.9, 0.9, 0.9]])
    >>> r.ravel(), c.ravel()  # mean squares of the rows and the columns (beta2_1 = 0)
    (array([0.25, 0.25]), array([0.25, 0.25, 0.25]))
    """
    _engine.adafactor_step(params, grads, row_vars, col_vars, variances, state_steps, lr=lr, beta2_decay=beta2_decay,
                           eps1=eps1, eps2=eps2, d=d, weight_decay=weight_decay, maximize=maximize,
                           grad_scale=grad_scale, check_only=check_only, cache=None)
