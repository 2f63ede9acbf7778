"""Adagrad (torch.optim.Adagrad)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .optimizer import Optimizer, _array_of, check_bool, check_nonnegative, impl_flags

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
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                a = _array_of(p)
                self.state[p] = {
                    "step": np.zeros((), np.float32),
                    "sum": np.full(a.shape, group["initial_accumulator_value"], a.dtype),
                }

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr, lr_decay, wd = group["lr"], group["lr_decay"], group["weight_decay"]
        init, eps = group["initial_accumulator_value"], group["eps"]
        check_nonnegative(lr, "lr", f"Invalid learning rate: {lr}")
        check_nonnegative(lr_decay, "lr_decay", f"Invalid lr_decay value: {lr_decay}")
        check_nonnegative(wd, "weight_decay", f"Invalid weight_decay value: {wd}")
        check_nonnegative(init, "initial_accumulator_value", f"Invalid initial_accumulator_value value: {init}")
        check_nonnegative(eps, "eps", f"Invalid epsilon value: {eps}")
        check_bool(group["maximize"], "maximize")

    _rule = "adagrad"

    def _hyper(self, g):
        return dict(lr=g["lr"], lr_decay=g["lr_decay"], weight_decay=g["weight_decay"], eps=g["eps"],
                    maximize=g["maximize"])

    def _fill(self, group):
        return {"sum": group["initial_accumulator_value"]}
