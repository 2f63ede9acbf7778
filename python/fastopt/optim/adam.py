"""Adam and AdamW (torch.optim.Adam, torch.optim.AdamW)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ._engine import Rule
from ._engine import step as _step
from ._options import check_bool
from .optimizer import Optimizer, impl_flags

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam with bias correction, optional AMSGrad, L2 or decoupled weight decay
    (torch.optim.Adam: same arguments, defaults, checks, state names and update rule).

    State per parameter: ``step`` (a 0-d float32 array, as torch), ``exp_avg``,
    ``exp_avg_sq`` and with ``amsgrad`` ``max_exp_avg_sq``. Each step is one fused pass over
    the parameter, its gradient and its state, for all the tensors of a group in one call.

    With gradient :math:`g_t` (plus ``weight_decay * p`` for L2 decay, negated with
    ``maximize``), at step :math:`t`:

    .. math::

        m_t = m_{t-1} + (1 - \beta_1)(g_t - m_{t-1}), \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2,

        p_t = p_{t-1} - \frac{\mathrm{lr}}{1 - \beta_1^t}\,
              \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    (``amsgrad``: :math:`\sqrt{\max_{s \le t} v_s}` in place of :math:`\sqrt{v_t}`; decoupled
    decay multiplies :math:`p` by :math:`1 - \mathrm{lr}\cdot\mathrm{weight\_decay}` first).
    With ``cautious=True`` (C-Adam/C-AdamW, Liang et al. 2024, beyond torch) the step
    :math:`\Delta_t` above is kept only where it goes against the gradient and rescaled:
    :math:`p_t = p_{t-1} + \Delta_t\,\phi_t\, n / (\textstyle\sum \phi_t + 1)` with
    :math:`\phi_t = [\Delta_t g_t < 0]` over the tensor's :math:`n` elements.

    Example:

    >>> w = fo.Parameter(np.array([1.0, -2.0]))
    >>> opt = fo.optim.Adam([w], lr=0.1)
    >>> w.grad = np.array([0.5, -0.5])
    >>> opt.step()
    >>> w.data  # the first step moves each element by lr (m/sqrt(v) = sign(g))
    array([ 0.9, -1.9])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    _takes_kahan = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        cautious: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        state_dtype: str | None = None, master_weights: str | None = None,
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        if cautious is not False:  # (torch's groups have no such key: it is only added when set)
            defaults["cautious"] = cautious
        defaults.update(impl_flags(foreach=foreach, fused=fused, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "eps", "betas", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay")

    _rule = "adam"
    _takes_int8 = True

    def _validate_extra(self, group):
        if "cautious" in group:
            check_bool(group["cautious"], "cautious")

    def _hyper(self, g):
        beta1, beta2 = g["betas"]
        return dict(lr=g["lr"], beta1=beta1, beta2=beta2, eps=g["eps"], weight_decay=g["weight_decay"],
                    amsgrad=g["amsgrad"], maximize=g["maximize"], decoupled_weight_decay=g["decoupled_weight_decay"],
                    cautious=g.get("cautious", False))

class AdamW(Adam):
    r"""Adam with decoupled weight decay (torch.optim.AdamW; ``weight_decay`` defaults to 1e-2):
    the parameter is multiplied by ``1 - lr*weight_decay`` before the Adam update.

    .. math::

        p \leftarrow p\,(1 - \mathrm{lr}\cdot\lambda), \quad \text{then Adam's update (no L2 term)}.

    Example:

    >>> w = fo.Parameter(np.ones(3, np.float32))
    >>> opt = fo.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = np.zeros(3, np.float32)
    >>> opt.step()
    >>> w.data  # zero gradient: only the decay, 1 - 0.1 * 0.5
    array([0.95, 0.95, 0.95], dtype=float32)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        cautious: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        state_dtype: str | None = None, master_weights: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            maximize=maximize, decoupled_weight_decay=True, cautious=cautious,
            foreach=foreach, fused=fused, capturable=capturable, differentiable=differentiable,
            state_dtype=state_dtype, master_weights=master_weights,
        )

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = False) -> None:
        super().load_state_dict(state_dict, strict=strict)
        # As torch: AdamW always decays decoupled, whatever the loaded groups say.
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


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
    cautious: bool = False,
) -> None:
    """Adam (torch.optim.adam.adam): updates ``params``, ``exp_avgs``, ``exp_avg_sqs``,
    ``max_exp_avg_sqs`` (with ``amsgrad``; may be empty otherwise) and increments
    ``state_steps`` (one-element float32 arrays, torch's ``state['step']``) in place.

    Per element, as torch: ``m = lerp(m, g, 1-beta1)``, ``v = beta2*v + (1-beta2)*g*g``,
    ``p += -lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps)``; ``weight_decay`` adds
    ``wd*p`` to the gradient, or with ``decoupled_weight_decay`` multiplies ``p`` by
    ``1 - lr*wd`` first (AdamW). ``cautious``: the cautious mask (see :class:`Adam`).

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adam([p], [g], [m], [v], None, [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("adam", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, cautious=cautious)
    if amsgrad and (max_exp_avg_sqs is None or (isinstance(max_exp_avg_sqs, (list, tuple)) and not max_exp_avg_sqs and params)):
        raise ValueError("max_exp_avg_sqs is required with amsgrad=True")
    states: list[Any] = [exp_avgs, exp_avg_sqs, max_exp_avg_sqs] if amsgrad else [exp_avgs, exp_avg_sqs]
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
    cautious: bool = False,
) -> None:
    """AdamW (torch.optim.adamw.adamw): :func:`adam` with decoupled weight decay.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adamw([p], [g], [m], [v], None, [step], lr=0.1, weight_decay=0.5)
    >>> np.round(p, 6)
    array([ 0.85, -1.8 ])
    """
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad=amsgrad, beta1=beta1,
         beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=maximize, decoupled_weight_decay=True,
         cautious=cautious)
