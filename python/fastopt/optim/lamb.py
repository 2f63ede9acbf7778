"""LAMB (You et al., ICLR 2020)."""

from __future__ import annotations

import math

from typing import Any, Iterable

from ._engine import Rule
from ._engine import step as _step
from ._options import real
from .optimizer import Optimizer

__all__ = ["Lamb"]

class Lamb(Optimizer):
    r"""LAMB: Adam's bias-corrected direction plus decoupled weight decay,
    ``r = m_hat / (sqrt(v_hat) + eps) + weight_decay * p``, scaled per tensor by the trust
    ratio ``||p|| / ||r||`` (1 when either norm is 0; a NaN or infinite gradient element makes
    the tensor NaN, as in every published LAMB): ``p -= lr * trust * r`` (Algorithm 2 of
    the paper, as optax's ``lamb``). The published variants: ``clamp_value=10,
    bias_correction=False`` (or ``'step'``) is torch-optimizer's and pytorch-lamb's ``Lamb``
    (``debias=False``/``True``). Two passes over memory per step, both in Rust, the norms
    accumulated in double precision independently of the thread count.
    State: ``step``, ``exp_avg``, ``exp_avg_sq``. Beside bfloat16 parameters
    ``master_weights='remainder'``, ``'float32'`` (float16 too) or ``'stochastic'`` (both) as
    the single-pass optimizers: both passes read the float32 master (the trust ratio's norm
    is the master's), the second writes it.


    With gradient :math:`g_t` (negated with ``maximize``), at step :math:`t`, per tensor:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        r_t = \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda p_{t-1},

        p_t = p_{t-1} - \mathrm{lr}\, \frac{\lVert p_{t-1} \rVert}{\lVert r_t \rVert}\, r_t

    (the trust ratio is 1 when either norm is 0; ``bias_correction=False`` drops the
    :math:`1 - \beta^t` factors).

    Example:

    >>> w = fo.Parameter(np.array([3.0, 4.0]))
    >>> opt = fo.optim.Lamb([w], lr=0.1)
    >>> w.grad = np.array([1.0, 1.0])
    >>> opt.step()
    >>> np.round(w.data, 6)  # the Adam direction scaled by the trust ratio ||w|| / ||update||
    array([2.646447, 3.646447])
    """

    _couples = "tensor"  # (the trust ratio: the norms of the whole tensor)
    _takes_masters = True  # (both passes join a float32 master into the parameter tile)
    _takes_device = False  # (passes of its own: no CUDA kernels yet)
    _option_docs = {
        "weight_decay": "decoupled weight decay, added to the update direction before the trust ratio",
        "bias_correction": "True: the moments divided by ``1 - beta**t`` before the ratio (the paper's Algorithm 2, "
                           "optax's ``lamb``); ``'step'``: the step size multiplied by "
                           "``sqrt(1 - beta2**t) / (1 - beta1**t)`` after the ratio (torch-optimizer's and "
                           "pytorch-lamb's ``debias=True``); False: none (their default, the paper's v3)",
        "clamp_value": "the parameter's norm clamped to at most this in the trust ratio (torch-optimizer's and "
                       "pytorch-lamb's ``clamp_value``, 10 there); None: no clamp (the paper, optax)",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, bias_correction: bool | str = True,
                 clamp_value: float | None = None, maximize: bool = False, state_dtype: str | None = None,
                 master_weights: str | None = None) -> None:
        defaults: dict[str, Any] = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                        bias_correction=bias_correction, maximize=maximize)
        if clamp_value is not None:  # (kept in the groups only when set)
            defaults["clamp_value"] = clamp_value
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "eps", "betas", "weight_decay", "maximize")

    _rule = "lamb"

    def _validate_extra(self, group):
        if group["bias_correction"] not in (True, False, "step"):
            raise ValueError(f"bias_correction must be True, False or 'step', got {group['bias_correction']!r}")
        clamp = group.get("clamp_value")
        if clamp is not None and not real(clamp, "clamp_value") > 0:
            raise ValueError(f"clamp_value must be > 0 (or None), got {clamp}")

    def _hyper(self, g):
        beta1, beta2 = g["betas"]
        bc = g["bias_correction"]
        clamp = g.get("clamp_value")
        return dict(lr=g["lr"], beta1=beta1, beta2=beta2, eps=g["eps"], weight_decay=g["weight_decay"],
                    bias_correction=bc is True, debias_step=bc == "step",
                    clamp=math.inf if clamp is None else clamp, maximize=g["maximize"])

def lamb(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
         weight_decay=0.0, bias_correction=True, clamp_value=None, maximize=False) -> None:
    """LAMB (:class:`fastopt.optim.Lamb`): Adam's direction plus decoupled weight decay, scaled
    per tensor by the trust ratio ``||p|| / ||r||``.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.lamb([p], [g], [m], [v], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.841886, -1.841886])
    """
    rule = Rule("lamb", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                bias_correction=bias_correction is True, debias_step=bias_correction == "step",
                clamp=math.inf if clamp_value is None else clamp_value, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])
