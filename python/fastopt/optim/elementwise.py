"""Optimizers whose update is element-wise with a few state buffers (Adamax, Adadelta, NAdam,
RAdam), run by the shared fused kernel of ``fastopt_core::optim::elementwise``."""

from __future__ import annotations

from typing import Any, Iterable

from .. import _fastopt
from . import functional as F
from .optimizer import Optimizer, check_betas, check_bool, check_nonnegative

__all__ = ["Adamax", "Adadelta", "NAdam", "RAdam"]


class _Elementwise(Optimizer):
    """Runs the kernel named ``_kernel``; subclasses give the hyperparameters by name."""

    _kernel = ""
    _fill: dict[str, float] = {}

    def _hyper(self, group: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        states, counters = _fastopt.elementwise_layout(self._kernel)
        counters, states = tuple(counters), tuple(states)
        bufs, created = self._buffers(params, arrays, counters + states, self._fill, counters)
        k = len(counters)
        F._elementwise(self._kernel, arrays, grads, bufs[k:], bufs[:k], self._hyper(group), check_only, grad_scale)
        if not check_only:
            self._commit(created)


def _adam_like_checks(group: dict[str, Any]) -> None:
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    check_nonnegative(lr, "lr", f"Invalid learning rate: {lr}")
    check_nonnegative(eps, "eps", f"Invalid epsilon value: {eps}")
    check_betas(group["betas"])
    check_nonnegative(wd, "weight_decay", f"Invalid weight_decay value: {wd}")
    check_bool(group["maximize"], "maximize")


class Adamax(_Elementwise):
    """Adamax, Adam's infinity-norm variant (torch.optim.Adamax: arguments, defaults, checks,
    state ``step``/``exp_avg``/``exp_inf`` and update rule)."""

    _kernel = "adamax"

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group):
        _adam_like_checks(group)

    def _hyper(self, g):
        return dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                    weight_decay=g["weight_decay"], maximize=g["maximize"])


class Adadelta(_Elementwise):
    """Adadelta (torch.optim.Adadelta: arguments, defaults, checks, state
    ``step``/``square_avg``/``acc_delta`` and update rule)."""

    _kernel = "adadelta"

    def __init__(self, params: Iterable[Any], lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group):
        lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
        check_nonnegative(lr, "lr", f"Invalid learning rate: {lr}")
        check_nonnegative(rho, "rho", f"Invalid rho value: {rho}")
        if rho > 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative(eps, "eps", f"Invalid epsilon value: {eps}")
        check_nonnegative(wd, "weight_decay", f"Invalid weight_decay value: {wd}")
        check_bool(group["maximize"], "maximize")

    def _hyper(self, g):
        return dict(lr=g["lr"], rho=g["rho"], eps=g["eps"], weight_decay=g["weight_decay"], maximize=g["maximize"])


class NAdam(_Elementwise):
    """NAdam, Adam with Nesterov momentum and momentum decay (torch.optim.NAdam: arguments,
    defaults, checks, state ``step``/``mu_product``/``exp_avg``/``exp_avg_sq`` with
    ``mu_product`` a float32 counter as in torch, and update rule)."""

    _kernel = "nadam"
    _fill = {"mu_product": 1.0}
    _counters = ("step", "mu_product")

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group):
        _adam_like_checks(group)
        md = group["momentum_decay"]
        check_nonnegative(md, "momentum_decay", f"Invalid momentum_decay value: {md}")
        check_bool(group["decoupled_weight_decay"], "decoupled_weight_decay")

    def _hyper(self, g):
        return dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"], weight_decay=g["weight_decay"],
                    momentum_decay=g["momentum_decay"], decoupled_weight_decay=g["decoupled_weight_decay"],
                    maximize=g["maximize"])


class RAdam(_Elementwise):
    """RAdam, Adam with variance rectification (torch.optim.RAdam: arguments, defaults,
    checks, state ``step``/``exp_avg``/``exp_avg_sq`` and update rule)."""

    _kernel = "radam"

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group):
        _adam_like_checks(group)
        check_bool(group["decoupled_weight_decay"], "decoupled_weight_decay")

    def _hyper(self, g):
        return dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"], weight_decay=g["weight_decay"],
                    decoupled_weight_decay=g["decoupled_weight_decay"], maximize=g["maximize"])
