"""Stateless in-place optimizer updates over lists of arrays (torch.optim's functional API).

Each call is one pass of the Rust kernel over all the arrays, with the GIL released. The
arrays must be C-contiguous numpy arrays of one float dtype (float32 or float64), the
buffers of each parameter's shape; written arrays must be writeable and share no memory with
any other argument. Every argument is checked before anything is written, and errors name the
argument (``grads[3] has shape (2,) but params[3] has shape (3,)``). Hyperparameters are not
range-checked here (the optimizer classes check them), as in torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _fastopt

#: The compiled kernels every optimizer step goes through (one place, so a test can stand
#: in for them and a second backend can plug in here).
_kernels = _fastopt
Rule = _fastopt.Rule

__all__ = ["adabelief", "adabound", "adadelta", "adagrad", "adam", "adamax", "adamw", "amsbound", "asgd", "lamb", "lion",
           "nadam", "radam", "rmsprop", "rprop", "sgd"]


def _step(
    rule: Any,
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    states: Sequence[Sequence[np.ndarray]],
    counters: Sequence[Sequence[np.ndarray]],
    fresh: Sequence[bool] | None = None,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: Any = None,
) -> None:
    """The one call from Python to a kernel, for every optimizer: one step of ``rule`` (a
    ``Rule``) over a group. ``states`` and ``counters`` are lists of per-parameter lists in
    the order ``rule.layout()`` gives; ``cache`` is the group's ``CheckCache``."""
    # Positional: the compiled function parses keywords slower than it checks a tensor.
    _kernels.step(rule, params, grads, states, counters, fresh, grad_scale, check_only, cache)


def adam(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    max_exp_avg_sqs: Sequence[np.ndarray] | None,
    state_steps: Sequence[np.ndarray],
    *,
    amsgrad: bool = False,
    beta1: float = 0.9,
    beta2: float = 0.999,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> None:
    """Adam (torch.optim.adam.adam): updates ``params``, ``exp_avgs``, ``exp_avg_sqs``,
    ``max_exp_avg_sqs`` (with ``amsgrad``; may be empty otherwise) and increments
    ``state_steps`` (one-element float32 arrays, torch's ``state['step']``) in place.

    Per element, as torch: ``m = lerp(m, g, 1-beta1)``, ``v = beta2*v + (1-beta2)*g*g``,
    ``p += -lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps)``; ``weight_decay`` adds
    ``wd*p`` to the gradient, or with ``decoupled_weight_decay`` multiplies ``p`` by
    ``1 - lr*wd`` first (AdamW).
    """
    rule = Rule("adam", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
    if amsgrad and (max_exp_avg_sqs is None or (isinstance(max_exp_avg_sqs, (list, tuple)) and not max_exp_avg_sqs and params)):
        raise ValueError("max_exp_avg_sqs is required with amsgrad=True")
    states = [exp_avgs, exp_avg_sqs, max_exp_avg_sqs] if amsgrad else [exp_avgs, exp_avg_sqs]
    _step(rule, params, grads, states, [state_steps])


def adamw(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    max_exp_avg_sqs: Sequence[np.ndarray] | None,
    state_steps: Sequence[np.ndarray],
    *,
    amsgrad: bool = False,
    beta1: float = 0.9,
    beta2: float = 0.999,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    eps: float = 1e-8,
    maximize: bool = False,
) -> None:
    """AdamW (torch.optim.adamw.adamw): :func:`adam` with decoupled weight decay."""
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad=amsgrad, beta1=beta1,
         beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=maximize, decoupled_weight_decay=True)


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
    """
    buffers, fresh = None, []
    if momentum != 0:
        buffers, fresh = _new_buffers(params, momentum_buffer_list)
    rule = Rule("sgd", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                maximize=maximize)
    _step(rule, params, d_p_list, [buffers] if buffers is not None else [], [], fresh or None)
    if buffers is not None:
        for i, new in enumerate(fresh):
            if new:
                momentum_buffer_list[i] = buffers[i]


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
    with ``clr = lr / (1 + (step - 1) * lr_decay)``; increments ``state_steps`` in place."""
    rule = Rule("adagrad", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize)
    _step(rule, params, grads, [state_sums], [state_steps])


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
    ``centered``, ``momentum_buffer_list`` with ``momentum > 0``; ``state_steps`` count."""
    rule = Rule("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                centered=centered, maximize=maximize)
    if centered and grad_avgs is None:
        raise ValueError("grad_avgs is required with centered=True")
    if momentum > 0 and momentum_buffer_list is None:
        raise ValueError("momentum_buffer_list is required with momentum > 0")
    states = [square_avgs] + ([momentum_buffer_list] if momentum > 0 else []) + ([grad_avgs] if centered else [])
    _step(rule, params, grads, states, [state_steps])


def adamax(params, grads, exp_avgs, exp_infs, state_steps, *, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, maximize=False) -> None:
    """Adamax (torch.optim.adamax.adamax): ``exp_inf = max(beta2*exp_inf, |g| + eps)``,
    ``p -= lr / (1 - beta1**t) * exp_avg / exp_inf``."""
    rule = Rule("adamax", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_infs], [state_steps])


def adadelta(params, grads, square_avgs, acc_deltas, state_steps, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False) -> None:
    """Adadelta (torch.optim.adadelta.adadelta)."""
    rule = Rule("adadelta", lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [square_avgs, acc_deltas], [state_steps])


def nadam(params, grads, exp_avgs, exp_avg_sqs, mu_products, state_steps, *, lr=2e-3, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False) -> None:
    """NAdam (torch.optim.nadam.nadam); ``mu_products`` are 0-d float32 arrays, as torch's."""
    rule = Rule("nadam", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps, mu_products])


def radam(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, maximize=False) -> None:
    """RAdam (torch.optim.radam.radam): Adam with the variance rectification term."""
    rule = Rule("radam", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])


def asgd(params, grads, axs, mus, etas, state_steps, *, lambd=1e-4, lr=1e-2, t0=1e6, alpha=0.75, weight_decay=0.0,
         maximize=False) -> None:
    """ASGD (torch.optim.asgd.asgd): ``p = p * (1 - lambd*eta) - eta*g``, ``ax`` the running
    average of ``p`` from step ``t0``; ``mus``, ``etas`` and ``state_steps`` are 0-d float32
    arrays, renewed in place (torch's order of arguments)."""
    rule = Rule("asgd", lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [axs], [state_steps, etas, mus])


def rprop(params, grads, prevs, step_size_ops, state_steps, *, step_size_min=1e-6, step_size_max=50.0,
          etaminus=0.5, etaplus=1.2, maximize=False) -> None:
    """Rprop (torch.optim.rprop.rprop): per-element step sizes grown by ``etaplus`` while the
    gradient keeps its sign, shrunk by ``etaminus`` when it flips; ``p -= sign(g) * size``."""
    rule = Rule("rprop", etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min,
                step_size_max=step_size_max, maximize=maximize)
    _step(rule, params, grads, [prevs, step_size_ops], [state_steps])


def adabound(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
             weight_decay=0.0, final_lr=0.1, gamma=1e-3, decoupled_weight_decay=False, maximize=False) -> None:
    """AdaBound (:class:`fastopt.optim.AdaBound`): Adam whose per-element step size is clipped
    into bounds converging to ``final_lr``."""
    rule = Rule("adabound", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, final_lr=final_lr,
                gamma=gamma, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])


def amsbound(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9,
             beta2=0.999, eps=1e-8, weight_decay=0.0, final_lr=0.1, gamma=1e-3, decoupled_weight_decay=False,
             maximize=False) -> None:
    """AMSBound (:class:`fastopt.optim.AMSBound`): :func:`adabound` with the running maximum of
    the second moment."""
    rule = Rule("amsbound", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, final_lr=final_lr,
                gamma=gamma, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], [state_steps])


def lion(params, grads, exp_avgs, state_steps, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0,
         maximize=False) -> None:
    """Lion (:class:`fastopt.optim.Lion`): ``p -= lr * sign(beta1*m + (1-beta1)*g)``, then
    ``m = beta2*m + (1-beta2)*g``, with decoupled weight decay."""
    rule = Rule("lion", lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs], [state_steps])


def adabelief(params, grads, exp_avgs, exp_avg_vars, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-16,
              weight_decay=0.0, decoupled_weight_decay=False, maximize=False) -> None:
    """AdaBelief (:class:`fastopt.optim.AdaBelief`): Adam whose second moment tracks
    ``(g - m)**2``."""
    rule = Rule("adabelief", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_vars], [state_steps])


def lamb(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
         weight_decay=0.0, bias_correction=True, maximize=False) -> None:
    """LAMB (:class:`fastopt.optim.Lamb`): Adam's direction plus decoupled weight decay, scaled
    per tensor by the trust ratio ``||p|| / ||r||``."""
    rule = Rule("lamb", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                bias_correction=bias_correction, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])
