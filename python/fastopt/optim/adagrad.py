"""Adagrad (torch.optim.Adagrad)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..backends import namespace
from ._engine import Rule
from ._engine import step as _step
from .optimizer import ABSMAX, Optimizer, _array_of, _filled_codes, _quantized, impl_flags

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad with lr decay, weight decay and an initial accumulator (torch.optim.Adagrad:
    same arguments, defaults, checks, state and update rule). As torch, the state
    (``step``, ``sum`` filled with ``initial_accumulator_value``) exists from construction.
    Sparse gradients are not supported (NumPy has none).

    .. math::

        s_t = s_{t-1} + g_t^2, \qquad
        p_t = p_{t-1} - \frac{\mathrm{lr}}{1 + (t-1)\,\mathrm{lr\_decay}}\,\frac{g_t}{\sqrt{s_t} + \epsilon}

    Example:

    >>> w = fo.Parameter(np.zeros(2))
    >>> opt = fo.optim.Adagrad([w], lr=1.0)
    >>> w.grad = np.array([2.0, -4.0])
    >>> opt.step()
    >>> w.data  # g / sqrt(g^2): one lr per element on the first step
    array([-1.,  1.])
    >>> opt.state[w]['sum']
    array([ 4., 16.])
    """

    _takes_kahan = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
        state_dtype: str | None = None, master_weights: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            maximize=maximize,
        )
        defaults.update(impl_flags(foreach=foreach, fused=fused, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)
        for group in self.param_groups:
            for p in group["params"]:
                a = _array_of(p)
                init = group["initial_accumulator_value"]
                if _quantized(group, a):  # (8-bit codes, with their blocks' absmax)
                    codes, absmax = _filled_codes(a.shape, init, True)
                    self.state[p] = {"step": np.zeros((), np.float32), "sum": codes, "sum" + ABSMAX: absmax}
                else:  # (where the parameter lives: NumPy or CuPy)
                    xp = namespace(a)
                    self.state[p] = {"step": xp.zeros((), np.float32),
                                     "sum": xp.full(a.shape, init, self._state_dtype(group, a))}

    _options = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize")

    _rule = "adagrad"
    _takes_int8 = True

    def _hyper(self, g):
        return dict(lr=g["lr"], lr_decay=g["lr_decay"], weight_decay=g["weight_decay"], eps=g["eps"],
                    maximize=g["maximize"])

    def _fill(self, group):
        return {"sum": group["initial_accumulator_value"]}


def adagrad(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    state_sums: Sequence[np.ndarray],
    state_steps: Sequence[np.ndarray],
    *,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    lr_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
) -> None:
    """Adagrad (torch.optim.adagrad.adagrad): ``sum += g*g``, ``p -= clr * g / (sqrt(sum) + eps)``
    with ``clr = lr / (1 + (step - 1) * lr_decay)``; increments ``state_steps`` in place.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> s, step = np.zeros(2), np.zeros((), np.float32)
    >>> F.adagrad([p], [g], [s], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("adagrad", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize)
    _step(rule, params, grads, [state_sums], [state_steps])
