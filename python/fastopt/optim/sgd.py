"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import functional as F
from .optimizer import Optimizer, _real, check_bool, check_nonnegative

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (torch.optim.SGD).

    Same arguments, defaults, checks and update rule as torch: with momentum the first step
    stores the gradient itself as ``momentum_buffer``; later steps compute
    ``buf = momentum*buf + (1-dampening)*g``; Nesterov uses ``g + momentum*buf``.
    One fused pass over each parameter, its gradient and its buffer.
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
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        check_nonnegative(lr, "lr", f"Invalid learning rate: {lr}")
        check_nonnegative(momentum, "momentum", f"Invalid momentum value: {momentum}")
        check_nonnegative(wd, "weight_decay", f"Invalid weight_decay value: {wd}")
        _real(group["dampening"], "dampening")
        check_bool(group["nesterov"], "nesterov")
        check_bool(group["maximize"], "maximize")
        if group["nesterov"] and (momentum <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _step_group(self, group, params, arrays, grads, check_only):
        momentum = float(group["momentum"])
        buffers, fresh = None, []
        if momentum != 0:
            found = []
            for p in params:
                st = self.state.get(p)
                found.append(None if st is None else st.get("momentum_buffer"))
            buffers, fresh = F._new_buffers(arrays, found)
        F._sgd(
            arrays, grads, buffers, fresh,
            weight_decay=float(group["weight_decay"]), momentum=momentum, lr=float(group["lr"]),
            dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
            maximize=bool(group["maximize"]), check_only=check_only,
        )
        if check_only or buffers is None:
            return
        for p, b, new in zip(params, buffers, fresh):
            if new:
                self.state[p]["momentum_buffer"] = b
