"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .optimizer import Optimizer, _real, check_bool, check_nonnegative, impl_flags

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum (torch.optim.SGD).

    Same arguments, defaults, checks and update rule as torch: with momentum the first step
    stores the gradient itself as ``momentum_buffer``; later steps compute
    ``buf = momentum*buf + (1-dampening)*g``; Nesterov uses ``g + momentum*buf``.
    One fused pass over each parameter, its gradient and its buffer.

    With gradient :math:`g_t` (plus ``weight_decay * p``), momentum :math:`\mu` and
    dampening :math:`\tau`:

    .. math::

        b_1 = g_1, \qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, g_t, \qquad
        p_t = p_{t-1} - \mathrm{lr}\cdot d_t,

    with :math:`d_t = b_t` (:math:`g_t + \mu b_t` with ``nesterov``; :math:`g_t` without momentum).

    Example:

    >>> w = fo.Parameter(np.zeros(2))
    >>> opt = fo.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     w.grad = np.ones(2)
    ...     opt.step()
    >>> w.data  # -0.1 * 1, then -0.1 * (0.9 * 1 + 1)
    array([-0.29, -0.29])
    >>> opt.state[w]['momentum_buffer']
    array([1.9, 1.9])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        defaults.update(impl_flags(foreach=foreach, fused=fused, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        check_nonnegative(lr, "lr", f"Invalid learning rate: {lr}")
        check_nonnegative(momentum, "momentum", f"Invalid momentum value: {momentum}")
        check_nonnegative(wd, "weight_decay", f"Invalid weight_decay value: {wd}")
        if math.isnan(_real(group["dampening"], "dampening")):
            raise ValueError("Invalid dampening value: nan")
        check_bool(group["nesterov"], "nesterov")
        check_bool(group["maximize"], "maximize")
        if group["nesterov"] and (momentum <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    _rule = "sgd"
    _needs_fresh = True

    def _hyper(self, g):
        return dict(lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"], weight_decay=g["weight_decay"],
                    nesterov=g["nesterov"], maximize=g["maximize"])
