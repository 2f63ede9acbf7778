"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from ._engine import Rule
from ._engine import step as _step
from ._options import real
from .optimizer import Optimizer, impl_flags

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

    _takes_kahan = True

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
        state_dtype: str | None = None, master_weights: str | None = None,
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
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "momentum", "weight_decay", "nesterov", "maximize")

    def _validate_extra(self, group: dict[str, Any]) -> None:
        if math.isnan(real(group["dampening"], "dampening")):
            raise ValueError("Invalid dampening value: nan")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    _rule = "sgd"
    _takes_int8 = True
    _needs_fresh = True

    def _hyper(self, g):
        return dict(lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"], weight_decay=g["weight_decay"],
                    nesterov=g["nesterov"], maximize=g["maximize"])


def _new_buffers(params: Sequence[np.ndarray], buffers: Sequence[np.ndarray | None]) -> tuple[list, list[bool]]:
    """Zero-filled buffers where ``buffers`` has None, and which ones are new."""
    if not isinstance(buffers, (list, tuple)):
        raise TypeError(f"momentum_buffer_list must be a list, got {type(buffers).__name__}")
    if len(buffers) != len(params):
        raise ValueError(f"momentum_buffer_list has {len(buffers)} entries but params has {len(params)}")
    out, fresh = [], []
    for p, b in zip(params, buffers):
        if b is None and isinstance(p, np.ndarray):
            b = np.zeros(p.shape, p.dtype)
            fresh.append(True)
        else:
            fresh.append(False)
        out.append(b)
    return out, fresh


def sgd(
    params: Sequence[np.ndarray],
    d_p_list: Sequence[np.ndarray],
    momentum_buffer_list: list[np.ndarray | None],
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    lr: float = 1e-3,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> None:
    """SGD (torch.optim.sgd.sgd): updates ``params`` in place.

    With ``momentum != 0``, ``momentum_buffer_list`` has one entry per parameter; a ``None``
    entry is replaced (in the list) by a new buffer holding the gradient, as torch's first
    step does, and existing buffers are updated in place.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> bufs = [None]  # torch's first step: the buffer becomes a copy of the gradient
    >>> F.sgd([p], [g], bufs, lr=0.1, momentum=0.9)
    >>> np.round(p, 6)
    array([ 0.95, -1.95])
    """
    buffers: list | None = None
    fresh: list[bool] = []
    if momentum != 0:
        buffers, fresh = _new_buffers(params, momentum_buffer_list)
    rule = Rule("sgd", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                maximize=maximize)
    _step(rule, params, d_p_list, [buffers] if buffers is not None else [], [], fresh or None)
    if buffers is not None:
        for i, new in enumerate(fresh):
            if new:
                momentum_buffer_list[i] = buffers[i]
