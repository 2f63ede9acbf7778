"""RMSprop (torch.optim.RMSprop)."""

from __future__ import annotations

from typing import Any, Iterable

from .optimizer import Optimizer, check_bool, check_nonnegative, impl_flags

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
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr, eps, mom, wd, alpha = group["lr"], group["eps"], group["momentum"], group["weight_decay"], group["alpha"]
        check_nonnegative(lr, "lr", f"Invalid learning rate: {lr}")
        check_nonnegative(eps, "eps", f"Invalid epsilon value: {eps}")
        check_nonnegative(mom, "momentum", f"Invalid momentum value: {mom}")
        check_nonnegative(wd, "weight_decay", f"Invalid weight_decay value: {wd}")
        check_nonnegative(alpha, "alpha", f"Invalid alpha value: {alpha}")
        check_bool(group["centered"], "centered")
        check_bool(group["maximize"], "maximize")

    _rule = "rmsprop"

    def _hyper(self, g):
        return dict(lr=g["lr"], alpha=g["alpha"], eps=g["eps"], weight_decay=g["weight_decay"], momentum=g["momentum"],
                    centered=g["centered"], maximize=g["maximize"])
