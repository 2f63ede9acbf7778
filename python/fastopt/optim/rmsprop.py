"""RMSprop (torch.optim.RMSprop)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ._engine import Rule
from ._engine import step as _step
from .optimizer import Optimizer, impl_flags

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop with momentum, centering and weight decay (torch.optim.RMSprop: same arguments,
    defaults, checks, state names (``step``, ``square_avg``, ``momentum_buffer``, ``grad_avg``)
    and update rule). One fused pass over each parameter, its gradient and its state.

    .. math::

        v_t = \alpha v_{t-1} + (1 - \alpha)\, g_t^2, \qquad
        p_t = p_{t-1} - \mathrm{lr}\,\frac{g_t}{\sqrt{v_t} + \epsilon}

    (``centered``: :math:`\sqrt{v_t - \bar g_t^2}` with :math:`\bar g_t` the running mean of
    :math:`g`; ``momentum``: the quotient goes through a momentum buffer).

    Example:

    >>> w = fo.Parameter(np.zeros(2))
    >>> opt = fo.optim.RMSprop([w], lr=0.01, alpha=0.99)
    >>> w.grad = np.array([1.0, -1.0])
    >>> opt.step()
    >>> w.data  # -0.01 * g / sqrt(0.01 * g^2)
    array([-0.09999999,  0.09999999])
    """

    _takes_kahan = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        state_dtype: str | None = None, master_weights: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "eps", "momentum", "weight_decay", "alpha", "centered", "maximize")

    _rule = "rmsprop"
    _takes_int8 = True

    def _hyper(self, g):
        return dict(lr=g["lr"], alpha=g["alpha"], eps=g["eps"], weight_decay=g["weight_decay"], momentum=g["momentum"],
                    centered=g["centered"], maximize=g["maximize"])


def rmsprop(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    square_avgs: Sequence[np.ndarray],
    grad_avgs: Sequence[np.ndarray] | None,
    momentum_buffer_list: Sequence[np.ndarray] | None,
    state_steps: Sequence[np.ndarray],
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> None:
    """RMSprop (torch.optim.rmsprop.rmsprop): ``sq = alpha*sq + (1-alpha)*g*g``; the step divides
    by ``sqrt(sq) + eps`` (centered: ``sqrt(sq - ga*ga) + eps`` with ``ga`` a running mean of
    ``g``), through a momentum buffer when ``momentum > 0``. ``grad_avgs`` is needed with
    ``centered``, ``momentum_buffer_list`` with ``momentum > 0``; ``state_steps`` count.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> sq, step = np.zeros(2), np.zeros((), np.float32)
    >>> F.rmsprop([p], [g], [sq], None, None, [step], lr=0.01)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                centered=centered, maximize=maximize)
    if centered and grad_avgs is None:
        raise ValueError("grad_avgs is required with centered=True")
    if momentum > 0 and momentum_buffer_list is None:
        raise ValueError("momentum_buffer_list is required with momentum > 0")
    states: list[Any] = [square_avgs] + ([momentum_buffer_list] if momentum > 0 else []) + ([grad_avgs] if centered else [])
    _step(rule, params, grads, states, [state_steps])
