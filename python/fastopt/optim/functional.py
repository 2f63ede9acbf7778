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

from ..backends import for_arrays

__all__ = ["adadelta", "adagrad", "adam", "adamax", "adamw", "nadam", "radam", "rmsprop", "sgd"]


def _adam(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    max_exp_avg_sqs: Sequence[np.ndarray] | None,
    state_steps: Sequence[np.ndarray],
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    decoupled_weight_decay: bool,
    check_only: bool = False,
    grad_scale: float = 1.0,
    cache: Any = None,
) -> None:
    """The kernel call behind :func:`adam`, :func:`adamw` and the optimizer classes
    (positional, as it runs once per step). ``cache``: a ``_fastopt.CheckCache`` the optimizer
    keeps per group, so a step over the same arrays confirms instead of re-checking them."""
    # Positional: the compiled function parses keywords slower than it checks a tensor.
    for_arrays(params).adam_step(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_scale, check_only, cache,
    )


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
    _adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        amsgrad, beta1, beta2, lr, weight_decay, eps, maximize, decoupled_weight_decay,
    )


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
    _adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        amsgrad, beta1, beta2, lr, weight_decay, eps, maximize, True,
    )


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


def _sgd(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    buffers: Sequence[np.ndarray] | None,
    fresh: Sequence[bool],
    weight_decay: float,
    momentum: float,
    lr: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    check_only: bool = False,
    grad_scale: float = 1.0,
    cache: Any = None,
) -> None:
    for_arrays(params).sgd_step(
        params, grads, buffers, fresh,
        lr, momentum, dampening, weight_decay, nesterov, maximize, grad_scale, check_only, cache,
    )


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
    _sgd(params, d_p_list, buffers, fresh, weight_decay, momentum, lr, dampening, nesterov, maximize)
    if buffers is not None:
        for i, new in enumerate(fresh):
            if new:
                momentum_buffer_list[i] = buffers[i]


def _adagrad(params, grads, state_sums, state_steps, lr, weight_decay, lr_decay, eps, maximize,
             check_only=False, grad_scale=1.0, cache=None) -> None:
    for_arrays(params).adagrad_step(
        params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize, grad_scale, check_only,
        cache,
    )


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
    _adagrad(params, grads, state_sums, state_steps, lr, weight_decay, lr_decay, eps, maximize)


def _rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps, lr, alpha, eps,
             weight_decay, momentum, centered, maximize, check_only=False, grad_scale=1.0, cache=None) -> None:
    for_arrays(params).rmsprop_step(
        params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps,
        lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale, check_only, cache,
    )


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
    _rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps,
             lr, alpha, eps, weight_decay, momentum, centered, maximize)


def _elementwise(name, params, grads, states, counters, hyper, check_only=False, grad_scale=1.0, cache=None) -> None:
    for_arrays(params).elementwise_step(name, params, grads, states, counters, hyper, grad_scale, check_only, cache)


def adamax(params, grads, exp_avgs, exp_infs, state_steps, *, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, maximize=False) -> None:
    """Adamax (torch.optim.adamax.adamax): ``exp_inf = max(beta2*exp_inf, |g| + eps)``,
    ``p -= lr / (1 - beta1**t) * exp_avg / exp_inf``."""
    _elementwise("adamax", params, grads, [exp_avgs, exp_infs], [state_steps],
                 dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize))


def adadelta(params, grads, square_avgs, acc_deltas, state_steps, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False) -> None:
    """Adadelta (torch.optim.adadelta.adadelta)."""
    _elementwise("adadelta", params, grads, [square_avgs, acc_deltas], [state_steps],
                 dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))


def nadam(params, grads, exp_avgs, exp_avg_sqs, mu_products, state_steps, *, lr=2e-3, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False) -> None:
    """NAdam (torch.optim.nadam.nadam); ``mu_products`` are 0-d float32 arrays, as torch's."""
    _elementwise("nadam", params, grads, [exp_avgs, exp_avg_sqs], [state_steps, mu_products],
                 dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))


def radam(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, maximize=False) -> None:
    """RAdam (torch.optim.radam.radam): Adam with the variance rectification term."""
    _elementwise("radam", params, grads, [exp_avgs, exp_avg_sqs], [state_steps],
                 dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))
