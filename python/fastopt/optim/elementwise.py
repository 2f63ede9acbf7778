"""Optimizers whose update is element-wise with a few state buffers, run by the shared fused
kernel of ``fastopt_core::optim::elementwise``: torch's Adamax, Adadelta, NAdam, RAdam, ASGD and Rprop, and
beyond torch AdaBound/AMSBound, Lion, AdaBelief, ADOPT and AdEMAMix."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Iterable

from ._engine import Rule
from ._engine import step as _step
from ._options import check_betas, check_bool, check_nonnegative, real
from .optimizer import Optimizer, _array_of, impl_flags

__all__ = ["Adamax", "Adadelta", "NAdam", "RAdam", "ASGD", "Rprop", "AdaBound", "AMSBound", "Lion", "AdaBelief", "ADOPT",
           "AdEMAMix", "AdamWScheduleFree", "SGDScheduleFree", "adamw_schedulefree", "sgd_schedulefree"]

class _Elementwise(Optimizer):
    """An optimizer whose rule is ``_rule``; subclasses give the hyperparameters by name."""

    _takes_kahan = True

    _fill_values: dict[str, float] = {}

    def _fill(self, group: dict[str, Any]) -> dict[str, float]:
        """Initial values of new state (default zeros)."""
        return self._fill_values

class _AdamLike(_Elementwise):
    """Optimizers with Adam's options (lr, betas, eps, weight_decay, maximize, and
    decoupled_weight_decay where they have it): shared hyperparameters."""

    _options: tuple[str, ...] = ("lr", "eps", "betas", "weight_decay", "maximize")

    def _hyper(self, g):
        h = dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"], weight_decay=g["weight_decay"],
                 maximize=g["maximize"])
        if "decoupled_weight_decay" in g:
            h["decoupled_weight_decay"] = g["decoupled_weight_decay"]
        return h

class Adamax(_AdamLike):
    r"""Adamax, Adam's infinity-norm variant (torch.optim.Adamax: arguments, defaults, checks,
    state ``step``/``exp_avg``/``exp_inf`` and update rule).


    With gradient :math:`g_t` (plus ``weight_decay * p``, negated with ``maximize``), at step :math:`t`:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon), \qquad
        p_t = p_{t-1} - \frac{\mathrm{lr}}{1 - \beta_1^t} \frac{m_t}{u_t}

    (:math:`u` is ``exp_inf``; :math:`m` is updated with torch's ``lerp``).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.Adamax([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.715499, -0.715499])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_inf', 'step']
    """

    _rule = "adamax"

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

class Adadelta(_Elementwise):
    r"""Adadelta (torch.optim.Adadelta: arguments, defaults, checks, state
    ``step``/``square_avg``/``acc_delta`` and update rule).


    With gradient :math:`g_t` (plus ``weight_decay * p``, negated with ``maximize``):

    .. math::

        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \qquad
        \Delta_t = \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \qquad
        u_t = \rho u_{t-1} + (1 - \rho) \Delta_t^2, \qquad
        p_t = p_{t-1} - \mathrm{lr}\, \Delta_t

    (:math:`v` is ``square_avg``, :math:`u` is ``acc_delta``).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.Adadelta([w], lr=1.0)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.990309, -0.990309])
    >>> sorted(opt.state[w])
    ['acc_delta', 'square_avg', 'step']
    """

    _rule = "adadelta"

    def __init__(self, params: Iterable[Any], lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "rho", "eps", "weight_decay", "maximize")

    def _validate_extra(self, group):
        if group["rho"] > 1.0:
            raise ValueError(f"Invalid rho value: {group['rho']}")

    def _hyper(self, g):
        return dict(lr=g["lr"], rho=g["rho"], eps=g["eps"], weight_decay=g["weight_decay"], maximize=g["maximize"])

class NAdam(_AdamLike):
    r"""NAdam, Adam with Nesterov momentum and momentum decay (torch.optim.NAdam: arguments,
    defaults, checks, state ``step``/``mu_product``/``exp_avg``/``exp_avg_sq`` with
    ``mu_product`` a float32 counter as in torch, and update rule).


    With gradient :math:`g_t` (plus ``weight_decay * p`` for L2 decay, negated with
    ``maximize``), at step :math:`t`, with :math:`\psi` = ``momentum_decay``:

    .. math::

        \mu_t = \beta_1 \bigl(1 - \tfrac12\, 0.96^{t\psi}\bigr), \qquad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,

        p_t = p_{t-1}
          - \mathrm{lr}\, \frac{1 - \mu_t}{1 - \prod_{i \le t} \mu_i} \frac{g_t}{\sqrt{\hat v_t} + \epsilon}
          - \mathrm{lr}\, \frac{\mu_{t+1}}{1 - \prod_{i \le t+1} \mu_i} \frac{m_t}{\sqrt{\hat v_t} + \epsilon},
        \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}

    (``mu_product`` holds :math:`\prod_{i \le t} \mu_i` in float32, as torch; decoupled decay
    multiplies :math:`p` by :math:`1 - \mathrm{lr}\cdot\mathrm{weight\_decay}` first).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.NAdam([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.752729, -0.752729])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'mu_product', 'step']
    """

    _rule = "nadam"
    _fill_values = {"mu_product": 1.0}
    _counters = ("step", "mu_product")

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = _AdamLike._options + ("momentum_decay", "decoupled_weight_decay")

    def _hyper(self, g):
        return dict(super()._hyper(g), momentum_decay=g["momentum_decay"])

class RAdam(_AdamLike):
    r"""RAdam, Adam with variance rectification (torch.optim.RAdam: arguments, defaults,
    checks, state ``step``/``exp_avg``/``exp_avg_sq`` and update rule).


    With gradient :math:`g_t` (plus ``weight_decay * p`` for L2 decay, negated with
    ``maximize``), at step :math:`t`, after Adam's moments :math:`m_t, v_t`:

    .. math::

        \rho_\infty = \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \qquad
        \hat m_t = \frac{m_t}{1 - \beta_1^t},

        p_t = p_{t-1} - \mathrm{lr}\, \hat m_t\, r_t \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}
        \ \text{ if } \rho_t > 5, \quad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}};
        \qquad p_t = p_{t-1} - \mathrm{lr}\, \hat m_t \ \text{ otherwise.}

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.RAdam([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.462303, -0.462303])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    _rule = "radam"

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = _AdamLike._options + ("decoupled_weight_decay",)

class ASGD(_Elementwise):
    r"""Averaged SGD (torch.optim.ASGD: arguments, defaults, checks, state
    ``step``/``eta``/``mu``/``ax`` with ``eta`` and ``mu`` float32 counters as in torch, and
    update rule).


    With gradient :math:`g_t` (plus ``weight_decay * p``, negated with ``maximize``), at step
    :math:`t`, with the stored :math:`\eta_t` and :math:`\mu_t`:

    .. math::

        p_t = p_{t-1} (1 - \lambda \eta_t) - \eta_t g_t, \qquad
        a_t = a_{t-1} + \mu_t (p_t - a_{t-1}) \ (\text{a copy of } p_t \text{ while } \mu_t = 1),

        \eta_{t+1} = \frac{\mathrm{lr}}{(1 + \lambda\, \mathrm{lr}\, t)^\alpha}, \qquad
        \mu_{t+1} = \frac{1}{\max(1,\ t - t_0)}

    (:math:`a` is ``ax``, the averaged parameters).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.ASGD([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.511984, -0.511984])
    >>> sorted(opt.state[w])
    ['ax', 'eta', 'mu', 'step']
    """

    _option_docs = {"alpha": "power of the step-size decay ``eta = lr / (1 + lambd * lr * t) ** alpha``"}

    _rule = "asgd"
    _counters = ("step", "eta", "mu")

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                 t0: float = 1e6, weight_decay: float = 0, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "lambd", "alpha", "weight_decay", "t0", "maximize")

    def _fill(self, group):
        return {"eta": group["lr"], "mu": 1.0}

    def _hyper(self, g):
        return dict(lr=g["lr"], lambd=g["lambd"], alpha=g["alpha"], t0=g["t0"], weight_decay=g["weight_decay"],
                    maximize=g["maximize"])

class Rprop(_Elementwise):
    r"""Resilient backpropagation (torch.optim.Rprop: arguments, defaults, checks, state
    ``step``/``prev``/``step_size`` and update rule).


    With gradient :math:`g_t` (negated with ``maximize``) and the previous one :math:`g_{t-1}`
    (``prev``), per element:

    .. math::

        s_t = \operatorname{clip}\Bigl(s_{t-1} \cdot
          \begin{cases} \eta_+ & g_t g_{t-1} > 0 \\ \eta_- & g_t g_{t-1} < 0 \\ 1 & \text{otherwise} \end{cases},
          \ s_{\min},\ s_{\max}\Bigr), \qquad
        p_t = p_{t-1} - \operatorname{sign}(g_t)\, s_t

    where a gradient whose sign flipped is taken as 0 for this step (and stored as ``prev``).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.Rprop([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.636, -0.636])
    >>> sorted(opt.state[w])
    ['prev', 'step', 'step_size']
    """

    _rule = "rprop"

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "maximize")

    def _validate_extra(self, group):
        etas, sizes = group["etas"], group["step_sizes"]
        for name, pair in (("etas", etas), ("step_sizes", sizes)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"{name} must be a pair of floats, got {pair!r}")
            for i, v in enumerate(pair):
                real(v, f"{name}[{i}]")
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        # torch does not check these; a negative or NaN size would step uphill or poison the
        # parameters for good.
        if not 0.0 <= sizes[0] <= sizes[1]:
            raise ValueError(f"Invalid step_sizes: {sizes[0]}, {sizes[1]} (need 0 <= min <= max, no NaN)")

    def _fill(self, group):
        return {"step_size": group["lr"]}

    def _hyper(self, g):
        return dict(etaminus=g["etas"][0], etaplus=g["etas"][1], step_size_min=g["step_sizes"][0],
                    step_size_max=g["step_sizes"][1], maximize=g["maximize"])

class AdaBound(_AdamLike):
    r"""AdaBound (Luo et al., ICLR 2019): Adam whose per-element step size is clamped into
    ``[final_lr * (1 - 1/(gamma*t + 1)), final_lr * (1 + 1/(gamma*t))]``, so it moves from
    Adam towards SGD with lr ``final_lr``; ``amsbound=True`` is AMSBound (AMSGrad's maximum).
    As in the authors' implementation, ``final_lr`` follows the group's lr when a scheduler
    changes it: ``final_lr * lr / base_lr``, ``base_lr`` being the group's lr when it was
    added (kept in the group). State: ``step``, ``exp_avg``, ``exp_avg_sq`` (and
    ``max_exp_avg_sq``). ``decoupled_weight_decay`` (default False) multiplies the parameter by
    ``1 - lr*wd`` instead of adding L2 decay to the gradient.


    With gradient :math:`g_t` (plus ``weight_decay * p`` for L2 decay, negated with
    ``maximize``), at step :math:`t`:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,

        \eta_t = \operatorname{clip}\Bigl(\frac{\mathrm{lr}\sqrt{1 - \beta_2^t}}{(1 - \beta_1^t)(\sqrt{v_t} + \epsilon)},\
          \eta^{\mathrm{final}}\bigl(1 - \tfrac{1}{\gamma t + 1}\bigr),\
          \eta^{\mathrm{final}}\bigl(1 + \tfrac{1}{\gamma t}\bigr)\Bigr), \qquad
        p_t = p_{t-1} - \eta_t m_t

    (AMSBound: :math:`\max_{s \le t} v_s` in place of :math:`v_t`).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.AdaBound([w], lr=0.1, final_lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.701586, -0.701586])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0,
                 amsbound: bool = False, *, decoupled_weight_decay: bool = False, maximize: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps, weight_decay=weight_decay,
                        amsbound=amsbound, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("base_lr", self.param_groups[-1]["lr"])

    _options = _AdamLike._options + ("final_lr", "amsbound", "decoupled_weight_decay")

    def _validate_extra(self, group):
        gamma = group["gamma"]
        if not 0.0 <= real(gamma, "gamma") < 1.0:
            raise ValueError(f"Invalid gamma parameter: {gamma}")

    def _rule_name(self, group):
        return "amsbound" if group["amsbound"] else "adabound"

    def _hyper(self, g):
        base = g.get("base_lr", g["lr"])
        final_lr = g["final_lr"] * g["lr"] / base if base else g["final_lr"]
        return dict(super()._hyper(g), final_lr=final_lr, gamma=g["gamma"])

class AMSBound(AdaBound):
    r"""AdaBound with AMSGrad's running maximum of the second moment (``amsbound=True``).


    AdaBound's update (see :class:`AdaBound`) with :math:`\hat v_t = \max(\hat v_{t-1}, v_t)`
    in place of :math:`v_t`:

    .. math::

        \eta_t = \operatorname{clip}\Bigl(\frac{\mathrm{lr}\sqrt{1 - \beta_2^t}}{(1 - \beta_1^t)(\sqrt{\hat v_t} + \epsilon)},\
          \eta_l(t),\ \eta_u(t)\Bigr), \qquad p_t = p_{t-1} - \eta_t m_t

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.AMSBound([w], lr=0.1, final_lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.701586, -0.701586])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step']
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0, *,
                 decoupled_weight_decay: bool = False, maximize: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        super().__init__(params, lr, betas, final_lr, gamma, eps, weight_decay, True,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                         state_dtype=state_dtype, master_weights=master_weights)

class Lion(_Elementwise):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"):
    ``p -= lr * sign(beta1*m + (1-beta1)*g)``, then ``m = beta2*m + (1-beta2)*g``, with
    decoupled weight decay. Defaults as the paper's reference (lr 1e-4, betas (0.9, 0.99)).
    State: ``step``, ``exp_avg``. ``sign`` is torch's: 0 for NaN, so a NaN or infinite gradient
    element leaves its parameter to the weight decay, as the published implementations do.
    ``cautious=True`` keeps only the steps that go against the gradient, rescaled by
    ``n / (kept + 1)`` (Liang et al. 2024; pytorch-optimizer's ``Lion(cautious=True)``).


    With gradient :math:`g_t` (negated with ``maximize``):

    .. math::

        p_t = p_{t-1} (1 - \mathrm{lr}\cdot\lambda)
              - \mathrm{lr}\,\operatorname{sign}\bigl(\beta_1 m_{t-1} + (1 - \beta_1) g_t\bigr), \qquad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.Lion([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.7, -0.7])
    >>> sorted(opt.state[w])
    ['exp_avg', 'step']
    """

    _option_docs = {
        "betas": "``beta1`` interpolates momentum and gradient for the update's sign; ``beta2`` is "
                 "the momentum's coefficient",
        "weight_decay": "decoupled weight decay: the parameter is multiplied by ``1 - lr * weight_decay``",
    }

    _rule = "lion"
    _takes_int8 = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, cautious: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, cautious=cautious)
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "betas", "weight_decay", "maximize")

    def _validate_extra(self, group):
        check_bool(group.get("cautious", False), "cautious")

    def _hyper(self, g):
        return dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
                    maximize=g["maximize"], cautious=g.get("cautious", False))

class AdaBelief(_AdamLike):
    r"""AdaBelief (Zhuang et al., NeurIPS 2020) as the authors ship it (``adabelief-pytorch``
    0.2: the same defaults, options and state): Adam with the second moment of ``g - m``
    (plus ``eps``, kept in the state), and by default RAdam's rectification (``rectify``):
    while the variance estimate is not tractable (the first few steps), the step is SGD with
    momentum (``degenerated_to_sgd``) or none. Decoupled weight decay by default, as theirs
    (their ``weight_decouple``; ``fixed_decay`` decays by ``1 - weight_decay``).
    ``rectify=False`` is the paper's Algorithm 1 (as optax's ``adabelief``). State: ``step``,
    ``exp_avg``, ``exp_avg_var`` and with ``amsgrad`` ``max_exp_avg_var``.

    With gradient :math:`g_t` (plus ``weight_decay * p`` for L2 decay, negated with
    ``maximize``), at step :math:`t`:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        s_t = \beta_2 s_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \epsilon,

        \text{rectify=False:}\quad p_t = p_{t-1} - \frac{\mathrm{lr}}{1 - \beta_1^t}
              \frac{m_t}{\sqrt{s_t} / \sqrt{1 - \beta_2^t} + \epsilon},

        \text{rectify=True:}\quad p_t = \begin{cases}
              p_{t-1} - \mathrm{lr}\, r_t\, \dfrac{m_t}{\sqrt{s_t} + \epsilon} & \rho_t \ge 5 \\
              p_{t-1} - \dfrac{\mathrm{lr}}{1 - \beta_1^t}\, m_t & \text{otherwise (degenerated\_to\_sgd)}
          \end{cases}

    with RAdam's :math:`\rho_\infty = 2 / (1 - \beta_2) - 1`,
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)` and
    :math:`r_t = \sqrt{(1 - \beta_2^t)\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} / (1 - \beta_1^t)`
    (:math:`s` is ``exp_avg_var``; ``amsgrad``: its running maximum in the unrectified
    denominator, as their code).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.AdaBelief([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)  # the first steps are SGD with momentum (rectification)
    array([ 0.462303, -0.462303])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_var', 'step']
    """

    _rule = "adabelief"
    _takes_int8 = True
    _option_docs = {
        "amsgrad": "use the running maximum of the second moment (AMSGrad) in the unrectified denominator",
        "rectify": "RAdam's rectification (the authors' default): SGD with momentum, or no step, while the "
                   "variance is not tractable, then the rectified step",
        "degenerated_to_sgd": "with ``rectify``, take SGD-with-momentum steps while the variance is not "
                              "tractable (False: no step)",
        "fixed_decay": "with decoupled decay, multiply the parameter by ``1 - weight_decay`` (not scaled by ``lr``)",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0, amsgrad: bool = False, *,
                 decoupled_weight_decay: bool = True, fixed_decay: bool = False, rectify: bool = True,
                 degenerated_to_sgd: bool = True, maximize: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay, fixed_decay=fixed_decay, rectify=rectify,
                        degenerated_to_sgd=degenerated_to_sgd, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = _AdamLike._options + ("decoupled_weight_decay", "amsgrad")

    def _validate_extra(self, group):
        for name in ("fixed_decay", "rectify", "degenerated_to_sgd"):
            check_bool(group.get(name, name != "fixed_decay"), name)

    def _hyper(self, g):
        # (a state dict from before these options: the authors' defaults)
        return dict(super()._hyper(g), amsgrad=g["amsgrad"], fixed_decay=g.get("fixed_decay", False),
                    rectify=g.get("rectify", True), degenerated_to_sgd=g.get("degenerated_to_sgd", True))


def _default_clip(step: float) -> float:
    """ADOPT's default clipping bound: ``step ** 0.25`` (the authors' ``clip_lambda``)."""
    return step**0.25


class ADOPT(_AdamLike):
    r"""ADOPT (Taniguchi et al., NeurIPS 2024, "ADOPT: Modified Adam Can Converge with Any
    beta2 with the Optimal Rate"), as the authors' ``adopt`` package: the gradient is
    normalised by the *previous* second moment (so it is independent of the current
    gradient), clipped, then averaged into the momentum; the first step only initialises the
    second moment. Arguments, defaults and state (``step``, ``exp_avg``, ``exp_avg_sq``) as the
    authors'. One fused pass per step.

    With gradient :math:`g_t` (plus ``weight_decay * p`` unless ``decouple``, negated with
    ``maximize``), :math:`v_0 = g_0^2` at the first step, then at step :math:`t \ge 1`:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1)\,
              \operatorname{clip}\Bigl(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},\ c_t\Bigr), \qquad
        p_t = p_{t-1}(1 - \mathrm{lr}\cdot\lambda_d) - \mathrm{lr}\, m_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

    with :math:`c_t` = ``clip_lambda(t)`` (default :math:`t^{1/4}`; None: no clipping) and
    :math:`\lambda_d` the weight decay when ``decouple``.

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.ADOPT([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)  # the first step only measured the gradient
    array([ 0.9711, -0.9711])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    _rule = "adopt"
    _option_docs = {
        "betas": "coefficients of the momentum of the normalised gradient and of the running average of its square",
        "clip_lambda": "the clipping bound of the normalised gradient as a function of the step count ``t`` "
                       "(``t ** 0.25`` by default; None: no clipping)",
        "decouple": "decay the parameter directly (``p -= lr * weight_decay * p``, not at the first step) "
                    "instead of adding an L2 term to the gradient",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
                 eps: float = 1e-6, clip_lambda: Callable[[float], float] | None = _default_clip,
                 weight_decay: float = 0.0, decouple: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, state_dtype: str | None = None, master_weights: str | None = None) -> None:
        if clip_lambda is not None and not callable(clip_lambda):
            raise TypeError(f"clip_lambda must be a function of the step or None, got {type(clip_lambda).__name__}")
        self.clip_lambda = clip_lambda
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused))
        self._validate_group(defaults)
        self._clip = -1.0
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = _AdamLike._options

    def _validate_extra(self, group):
        check_bool(group["decouple"], "decouple")

    def _hyper(self, g):
        h = super()._hyper(g)
        if self.clip_lambda is _default_clip:  # (computed per tensor in the kernel)
            return dict(h, decouple=g["decouple"], clip=-1.0, clip_power=0.25)
        return dict(h, decouple=g["decouple"], clip=self._clip, clip_power=-1.0)

    def _clip_at(self, step: float) -> float:
        """This step's clipping bound for tensors that have made ``step`` steps (negative:
        none): the authors' ``clip_lambda(step)``."""
        if self.clip_lambda is None or step == 0:
            return -1.0
        c = real(self.clip_lambda(step), "clip_lambda(step)")
        if not c >= 0.0:
            raise ValueError(f"clip_lambda({step:g}) must be >= 0, got {c}")
        return c

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        if self.clip_lambda is _default_clip or self.clip_lambda is None:
            return super()._step_group(group, params, arrays, grads, check_only, grad_scale)
        # A caller's bound depends on each tensor's step count: tensors are stepped together
        # per count (one kernel call in the usual case, where the whole group has the same).
        items = self.state._items
        steps = []
        for p in params:
            found = items.get(id(p))
            st = found[1].get("step") if found is not None else None
            steps.append(float(st) if st is not None else 0.0)
        for step in sorted(set(steps)):
            clip = self._clip_at(step)
            if clip != self._clip or self._rules.get(id(group)) is None:
                self._clip = clip
                self._rules.pop(id(group), None)
            if len(set(steps)) == 1:
                super()._step_group(group, params, arrays, grads, check_only, grad_scale)
            else:
                pick = [i for i, s in enumerate(steps) if s == step]
                super()._step_group(group, [params[i] for i in pick], [arrays[i] for i in pick],
                                    [grads[i] for i in pick], check_only, grad_scale)


class AdEMAMix(_Elementwise):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024, "The AdEMAMix Optimizer: Better, Faster,
    Older"), as the authors' implementation: Adam's fast momentum plus ``alpha`` times a slow
    momentum (``beta3``, close to 1) that keeps gradients from many steps ago, over Adam's
    bias-corrected denominator; optional linear warm-ups of ``alpha`` and of ``beta3`` (in
    half-life). Arguments, defaults and state (``step``, ``exp_avg_fast``, ``exp_avg_slow``,
    ``exp_avg_sq``) as the authors'. One fused pass per step.

    With gradient :math:`g_t` (negated with ``maximize``), at step :math:`t`:

    .. math::

        m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1 - \beta_1) g_t, \qquad
        m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1 - \beta_3) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,

        p_t = p_{t-1} - \mathrm{lr}\Bigl(\frac{m^{(1)}_t / (1 - \beta_1^t) + \alpha\, m^{(2)}_t}
              {\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon} + \lambda\, p_{t-1}\Bigr)

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.AdEMAMix([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.701467, -0.701467])
    >>> sorted(opt.state[w])
    ['exp_avg_fast', 'exp_avg_slow', 'exp_avg_sq', 'step']
    """

    _rule = "ademamix"
    _options = ("lr", "eps", "weight_decay", "maximize")
    _option_docs = {
        "betas": "``(beta1, beta2, beta3)``: coefficients of the fast momentum, of the second moment and of "
                 "the slow momentum",
        "alpha": "weight of the slow momentum",
        "beta3_warmup": "steps over which ``beta3`` rises from ``beta1`` (linearly in half-life); None: none",
        "alpha_warmup": "steps over which ``alpha`` rises linearly from 0; None: none",
        "weight_decay": "weight decay: ``weight_decay * param`` added to the update (scaled by ``lr``)",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 2.0, beta3_warmup: int | None = None, alpha_warmup: int | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 state_dtype: str | None = None, master_weights: str | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, alpha=alpha, beta3_warmup=beta3_warmup, alpha_warmup=alpha_warmup,
                        eps=eps, weight_decay=weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    def _validate_extra(self, group):
        check_betas(group["betas"], count=3)
        check_nonnegative(group["alpha"], "alpha", f"Invalid alpha value: {group['alpha']}")
        for name in ("beta3_warmup", "alpha_warmup"):
            v = group[name]
            if v is not None and not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name} must be None or a number of steps >= 1, got {v!r}")

    def _hyper(self, g):
        b1, b2, b3 = g["betas"]
        return dict(lr=g["lr"], beta1=b1, beta2=b2, beta3=b3, alpha=g["alpha"],
                    beta3_warmup=float(g["beta3_warmup"] or 0), alpha_warmup=float(g["alpha_warmup"] or 0),
                    eps=g["eps"], weight_decay=g["weight_decay"], maximize=g["maximize"])


class _ScheduleFree(_Elementwise):
    """Schedule-Free optimizers (Defazio et al., 2024), as the authors' ``schedulefree``
    package: a step's constants come from counters the group keeps (``k``, ``weight_sum``,
    ``lr_max``, ``train_mode``, ``scheduled_lr``, their names), and :meth:`train` /
    :meth:`eval` move the parameters between the training point ``y`` and the average ``x``."""

    _takes_kahan = False  # (train()/eval() move the parameters without the compensation)

    _rule = "schedulefree"
    _needs_fresh = True  # (a new state starts with z = the parameter)
    #: A step changes the group's counters (read by wrappers that keep their own groups).
    _steps_change_groups = True
    _adam = False
    _option_docs = {
        "warmup_steps": "steps of linear learning-rate warm-up (no schedule is needed after it)",
        "r": "power of the step count in the averaging weights (0: weights follow the lr)",
        "weight_lr_power": "power of the largest lr so far in the averaging weights",
        "foreach": "accepted for compatibility with the authors' package (fastopt always runs one fused kernel)",
    }

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], *, state_dtype: str | None = None) -> None:
        # In train mode from the start: with no state yet, the training point and the average
        # are the same (the authors' start in eval mode and refuse to step before train()).
        defaults.update(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        self._validate_group(defaults)
        super().__init__(params, defaults, state_dtype=state_dtype)

    _options: tuple[str, ...] = ("lr", "weight_decay", "maximize")

    def _validate_extra(self, group):
        check_nonnegative(group["r"], "r", f"Invalid r value: {group['r']}")
        check_nonnegative(group["weight_lr_power"], "weight_lr_power",
                          f"Invalid weight_lr_power value: {group['weight_lr_power']}")
        w = group["warmup_steps"]
        if not (isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 0):
            raise ValueError(f"warmup_steps must be a number of steps >= 0, got {w!r}")
        check_bool(group["train_mode"], "train_mode")

    def _beta1(self, g):
        raise NotImplementedError

    #: ``(group, self._next(group))`` while that group steps (computed once per step).
    _stepping: tuple | None = None
    #: The rule's hyperparameters, in the order of :meth:`_values`.
    _KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay", "ckp1", "bc2", "adam", "maximize")

    def _values(self, g) -> tuple:
        """The rule's hyperparameters for ``g`` (by ``_KEYS``), from the group's counters."""
        now = self._stepping
        lr, ckp1, bc2, _, _ = now[1] if now is not None and now[0] is g else self._next(g)
        beta1, beta2, eps = (*g["betas"], g["eps"]) if self._adam else (g["momentum"], 0.0, 0.0)
        return (lr, beta1, beta2, eps, g["weight_decay"], ckp1, bc2, self._adam, g["maximize"])

    def _hyper(self, g):
        return dict(zip(self._KEYS, self._values(g)))

    def _rule_of(self, group):
        # A step changes the group's counters, hence the rule's numbers, every time: the
        # group's rule is renewed with them directly (the same rule over the same names,
        # which take no buffer of their own choosing but ``adam``, the class's), skipping the
        # comparisons that tell whether an option changed.
        entry = self._rules.get(id(group))
        if entry is not None and entry[0] is group:
            rule = entry[3].renew(self._values(group))
            if rule is not None:
                entry = self._rules[id(group)] = (group, None, None, rule, *entry[4:])
                return entry
        return super()._rule_of(group)

    def _next(self, g) -> tuple[float, float, float, float, float]:
        """This step's (lr, ckp1, bc2) and the group's new (lr_max, weight_sum), as theirs."""
        k = g["k"]
        lr = g["lr"] * ((k + 1) / g["warmup_steps"] if k < g["warmup_steps"] else 1.0)
        lr_max = max(lr, g["lr_max"])
        weight = ((k + 1) ** g["r"]) * (lr_max ** g["weight_lr_power"])
        weight_sum = g["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        bc2 = 1 - g["betas"][1] ** (k + 1) if self._adam else 1.0
        return lr, ckp1, bc2, lr_max, weight_sum

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError("Optimizer was not in train mode when step is called. Please insert .train() and "
                               ".eval() calls on the optimizer. See documentation for details.")
        now = self._next(group)
        self._stepping = (group, now)
        calls = self.__dict__.get("_host_calls")
        if calls is not None:
            calls.pop(id(group), None)  # (the base records this step's call, if it may be repeated)
        try:
            super()._step_group(group, params, arrays, grads, check_only, grad_scale)
        finally:
            self._stepping = None
        if not check_only:
            self._advance(group, now)

    # A step's call repeats (Optimizer._repeat_call) with the rule renewed by the step's numbers.
    _repeats_calls = True
    #: The numbers of a repeated call's step, between :meth:`_call_rule` and :meth:`_called`.
    _repeating: tuple | None = None

    def _call_rule(self, group, rule):
        if not self.param_groups[0]["train_mode"]:
            return None  # (the full path says why not)
        now = self._next(group)
        self._stepping = (group, now)
        try:
            rule = rule.renew(self._values(group))
        finally:
            self._stepping = None
        self._repeating = now
        return rule

    def _called(self, group):
        now, self._repeating = self._repeating, None
        self._advance(group, now)

    def _advance(self, group, now) -> None:
        """The group's counters after a step; a recorded call of this step's takes the
        group's new values as its own (the next step's call is the same but for the rule's
        numbers, which :meth:`_call_rule` renews)."""
        lr, _, _, lr_max, weight_sum = now
        group.update(k=group["k"] + 1, lr_max=lr_max, weight_sum=weight_sum, scheduled_lr=lr)
        calls: dict[int, tuple] = self.__dict__.get("_host_calls", {})
        call = calls.get(id(group))
        if call is not None and call[0] is group:
            calls[id(group)] = call[:5] + (list(group.values()),) + call[6:]

    def _switch(self, train: bool) -> None:
        with self._lock:
            for group in self.param_groups:
                if group["train_mode"] == train:
                    continue
                beta1 = self._beta1(group)
                weight = (1 - beta1) if train else (1 - 1 / beta1)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "z" in st:
                        a = _array_of(p)
                        a += a.dtype.type(weight) * (st["z"] - a)  # p.lerp_(z, weight)
                group["train_mode"] = train

    def train(self) -> None:
        """Moves the parameters to the training point ``y`` (call before training steps)."""
        self._switch(True)

    def eval(self) -> None:
        """Moves the parameters to the average ``x`` (call before evaluating or saving)."""
        self._switch(False)


class AdamWScheduleFree(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled"), as the authors'
    ``schedulefree.AdamWScheduleFree``: no learning-rate schedule; the parameters are an
    interpolation between an average of the iterates (the point to evaluate) and the Adam
    sequence ``z``. Call :meth:`eval` before evaluating or saving and :meth:`train` before
    training again, as theirs (it starts in train mode: before the first step the two points
    are the same; theirs starts in eval mode and refuses to step before ``train()``).
    Arguments, defaults, group counters and state (``z``, ``exp_avg_sq``) as theirs; one fused
    pass per step.

    With gradient :math:`g_t` at the training point :math:`y_t`, at step :math:`t = k + 1`,
    :math:`\gamma_t` the warmed-up lr and :math:`c_{t+1} = w_t / \sum_{s \le t} w_s` with
    :math:`w_t = t^r \max_{s \le t}\gamma_s^{p}`:

    .. math::

        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        \hat g_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda y_t,

        y_{t+1} = (1 - c_{t+1})\, y_t + c_{t+1} z_t + \gamma_t\bigl(\beta_1 (1 - c_{t+1}) - 1\bigr)\hat g_t, \qquad
        z_{t+1} = z_t - \gamma_t \hat g_t

    (:meth:`eval` sets :math:`x = y + (1 - 1/\beta_1)(z - y)`, :meth:`train` goes back).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.AdamWScheduleFree([w], lr=0.1)
    >>> opt.train()
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> opt.eval()
    >>> np.round(w.data, 6)
    array([ 0.806141, -0.806141])
    >>> sorted(opt.state[w]), opt.param_groups[0]["k"]
    (['exp_avg_sq', 'z'], 3)
    """

    _adam = True

    def __init__(self, params: Iterable[Any], lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = None, *, maximize: bool = False,
                 state_dtype: str | None = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power, foreach=foreach, maximize=maximize),
                                          state_dtype=state_dtype)

    _options = _ScheduleFree._options + ("betas", "eps")

    def _beta1(self, g):
        return g["betas"][0]


class SGDScheduleFree(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio et al., 2024), as the authors'
    ``schedulefree.SGDScheduleFree``: :class:`AdamWScheduleFree` without the second moment
    (:math:`\hat g_t = g_t + \lambda y_t`, ``momentum`` in the place of :math:`\beta_1`).
    State: ``z``.

    .. math::

        y_{t+1} = (1 - c_{t+1})\, y_t + c_{t+1} z_t + \gamma_t\bigl(\mu (1 - c_{t+1}) - 1\bigr)\hat g_t, \qquad
        z_{t+1} = z_t - \gamma_t \hat g_t

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.SGDScheduleFree([w], lr=0.1)
    >>> opt.train()
    >>> w.grad = 2 * w.data
    >>> opt.step()
    >>> np.round(w.data, 6)  # y: the first step moves by lr * (momentum * 0 - 1) * g
    array([ 0.8, -0.8])
    """

    _option_docs = dict(_ScheduleFree._option_docs, momentum="interpolation between the average and ``z`` (in (0, 1))")

    def __init__(self, params: Iterable[Any], lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, foreach: bool | None = None, *,
                 maximize: bool = False, state_dtype: str | None = None) -> None:
        if not 0.0 < real(momentum, "momentum") < 1.0:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power, foreach=foreach, maximize=maximize),
                                          state_dtype=state_dtype)

    def _validate_extra(self, group):
        super()._validate_extra(group)
        if not 0.0 < real(group["momentum"], "momentum") < 1.0:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {group['momentum']}")

    def _beta1(self, g):
        return g["momentum"]


def adamax(params, grads, exp_avgs, exp_infs, state_steps, *, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, maximize=False) -> None:
    """Adamax (torch.optim.adamax.adamax): ``exp_inf = max(beta2*exp_inf, |g| + eps)``,
    ``p -= lr / (1 - beta1**t) * exp_avg / exp_inf``.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, u, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adamax([p], [g], [m], [u], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("adamax", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_infs], [state_steps])

def adadelta(params, grads, square_avgs, acc_deltas, state_steps, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False) -> None:
    """Adadelta (torch.optim.adadelta.adadelta).

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> v, u, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adadelta([p], [g], [v], [u], [step], lr=1.0)
    >>> np.round(p, 6)
    array([ 0.996838, -1.996838])
    """
    rule = Rule("adadelta", lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [square_avgs, acc_deltas], [state_steps])

def nadam(params, grads, exp_avgs, exp_avg_sqs, mu_products, state_steps, *, lr=2e-3, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False) -> None:
    """NAdam (torch.optim.nadam.nadam); ``mu_products`` are 0-d float32 arrays, as torch's.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step, mu = np.zeros(2), np.zeros(2), np.zeros((), np.float32), np.ones((), np.float32)
    >>> F.nadam([p], [g], [m], [v], [mu], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.894355, -1.894355])
    """
    rule = Rule("nadam", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps, mu_products])

def radam(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, maximize=False) -> None:
    """RAdam (torch.optim.radam.radam): Adam with the variance rectification term.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.radam([p], [g], [m], [v], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.95, -1.95])
    """
    rule = Rule("radam", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])

def asgd(params, grads, axs, mus, etas, state_steps, *, lambd=1e-4, lr=1e-2, t0=1e6, alpha=0.75, weight_decay=0.0,
         maximize=False) -> None:
    """ASGD (torch.optim.asgd.asgd): ``p = p * (1 - lambd*eta) - eta*g``, ``ax`` the running
    average of ``p`` from step ``t0``; ``mus``, ``etas`` and ``state_steps`` are 0-d float32
    arrays, renewed in place (torch's order of arguments).

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> ax, mu, eta, step = np.zeros(2), np.ones((), np.float32), np.full((), 0.1, np.float32), np.zeros((), np.float32)
    >>> F.asgd([p], [g], [ax], [mu], [eta], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.94999, -1.94998])
    """
    rule = Rule("asgd", lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [axs], [state_steps, etas, mus])

def rprop(params, grads, prevs, step_size_ops, state_steps, *, step_size_min=1e-6, step_size_max=50.0,
          etaminus=0.5, etaplus=1.2, maximize=False) -> None:
    """Rprop (torch.optim.rprop.rprop): per-element step sizes grown by ``etaplus`` while the
    gradient keeps its sign, shrunk by ``etaminus`` when it flips; ``p -= sign(g) * size``.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> prev, size, step = np.zeros(2), np.full(2, 0.1), np.zeros((), np.float32)
    >>> F.rprop([p], [g], [prev], [size], [step])
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("rprop", etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min,
                step_size_max=step_size_max, maximize=maximize)
    _step(rule, params, grads, [prevs, step_size_ops], [state_steps])

def adabound(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
             weight_decay=0.0, final_lr=0.1, gamma=1e-3, decoupled_weight_decay=False, maximize=False) -> None:
    """AdaBound (:class:`fastopt.optim.AdaBound`): Adam whose per-element step size is clipped
    into bounds converging to ``final_lr``.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adabound([p], [g], [m], [v], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("adabound", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, final_lr=final_lr,
                gamma=gamma, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])

def amsbound(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9,
             beta2=0.999, eps=1e-8, weight_decay=0.0, final_lr=0.1, gamma=1e-3, decoupled_weight_decay=False,
             maximize=False) -> None:
    """AMSBound (:class:`fastopt.optim.AMSBound`): :func:`adabound` with the running maximum of
    the second moment.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, vmax, step = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.amsbound([p], [g], [m], [v], [vmax], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("amsbound", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, final_lr=final_lr,
                gamma=gamma, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], [state_steps])

def lion(params, grads, exp_avgs, state_steps, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0,
         maximize=False, cautious=False) -> None:
    """Lion (:class:`fastopt.optim.Lion`): ``p -= lr * sign(beta1*m + (1-beta1)*g)``, then
    ``m = beta2*m + (1-beta2)*g``, with decoupled weight decay.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, step = np.zeros(2), np.zeros((), np.float32)
    >>> F.lion([p], [g], [m], [step], lr=0.1)
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("lion", lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, maximize=maximize, cautious=cautious)
    _step(rule, params, grads, [exp_avgs], [state_steps])

def adabelief(params, grads, exp_avgs, exp_avg_vars, state_steps, *, max_exp_avg_vars=None, lr=1e-3, beta1=0.9,
              beta2=0.999, eps=1e-16, weight_decay=0.0, decoupled_weight_decay=True, fixed_decay=False, amsgrad=False,
              rectify=True, degenerated_to_sgd=True, maximize=False) -> None:
    """AdaBelief (:class:`fastopt.optim.AdaBelief`, the authors' defaults): Adam whose second
    moment tracks ``(g - m)**2``, rectified as RAdam unless ``rectify=False``;
    ``max_exp_avg_vars`` is required with ``amsgrad``.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, s, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adabelief([p], [g], [m], [s], [step], lr=0.1, rectify=False)
    >>> np.round(p, 6)
    array([ 0.888889, -1.888889])
    """
    rule = Rule("adabelief", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay, fixed_decay=fixed_decay, amsgrad=amsgrad,
                rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, maximize=maximize)
    if amsgrad and not max_exp_avg_vars and params:
        raise ValueError("max_exp_avg_vars is required with amsgrad=True")
    states = [exp_avgs, exp_avg_vars, max_exp_avg_vars] if amsgrad else [exp_avgs, exp_avg_vars]
    _step(rule, params, grads, states, [state_steps])


def adopt(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9, beta2=0.9999, eps=1e-6,
          clip=None, weight_decay=0.0, decouple=False, maximize=False) -> None:
    """ADOPT (:class:`fastopt.optim.ADOPT`): on a tensor's first step ``exp_avg_sq = g*g`` only;
    then the gradient over ``max(sqrt(exp_avg_sq), eps)``, clipped to ``[-clip, clip]`` (None:
    not clipped), into the momentum, ``p -= lr * exp_avg``, and ``exp_avg_sq`` updated.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.adopt([p], [g], [m], [v], [step], lr=0.1)  # first step: v = g*g
    >>> F.adopt([p], [g], [m], [v], [step], lr=0.1, clip=1.0)
    >>> np.round(p, 6)
    array([ 0.99, -1.99])
    """
    rule = Rule("adopt", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decouple=decouple,
                clip=-1.0 if clip is None else clip, clip_power=-1.0, maximize=maximize)
    _step(rule, params, grads, [exp_avgs, exp_avg_sqs], [state_steps])


def ademamix(params, grads, exp_avg_fasts, exp_avg_slows, exp_avg_sqs, state_steps, *, lr=1e-3, beta1=0.9,
             beta2=0.999, beta3=0.9999, alpha=2.0, beta3_warmup=None, alpha_warmup=None, eps=1e-8,
             weight_decay=0.0, maximize=False) -> None:
    """AdEMAMix (:class:`fastopt.optim.AdEMAMix`): Adam's bias-corrected fast momentum plus
    ``alpha`` times a slow one, over Adam's denominator.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> m1, m2, v, step = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> F.ademamix([p], [g], [m1], [m2], [v], [step], lr=0.1, alpha=0.0)  # alpha 0: Adam
    >>> np.round(p, 6)
    array([ 0.9, -1.9])
    """
    rule = Rule("ademamix", lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha,
                beta3_warmup=float(beta3_warmup or 0), alpha_warmup=float(alpha_warmup or 0), eps=eps,
                weight_decay=weight_decay, maximize=maximize)
    _step(rule, params, grads, [exp_avg_fasts, exp_avg_slows, exp_avg_sqs], [state_steps])


def adamw_schedulefree(params, grads, zs, exp_avg_sqs, *, lr, ckp1, step, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, fresh=None, maximize=False) -> None:
    """One Schedule-Free AdamW step (:class:`fastopt.optim.AdamWScheduleFree`) at the training
    point: ``lr`` is this step's (warmed-up) rate, ``ckp1`` the averaging weight
    ``w_t / sum(w)``, ``step`` the step number ``k + 1``; ``fresh`` (one flag per parameter)
    starts a new ``z`` at the parameter.

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> z, v = np.zeros(2), np.zeros(2)
    >>> F.adamw_schedulefree([p], [g], [z], [v], lr=0.1, ckp1=1.0, step=1, fresh=[True])
    >>> np.round(p, 6), np.round(z, 6)  # first step: y = z = p - lr * g / |g|
    (array([ 0.9, -1.9]), array([ 0.9, -1.9]))
    """
    rule = Rule("schedulefree", lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, ckp1=ckp1,
                bc2=1 - beta2**step, adam=True, maximize=maximize)
    _step(rule, params, grads, [zs, exp_avg_sqs], [], fresh)


def sgd_schedulefree(params, grads, zs, *, lr, ckp1, momentum=0.9, weight_decay=0.0, fresh=None,
                     maximize=False) -> None:
    """One Schedule-Free SGD step (:class:`fastopt.optim.SGDScheduleFree`): as
    :func:`adamw_schedulefree` without the second moment.

    Example:

    >>> F = fo.optim.functional
    >>> p, g, z = np.array([1.0, -2.0]), np.array([0.5, -0.5]), np.zeros(2)
    >>> F.sgd_schedulefree([p], [g], [z], lr=0.1, ckp1=1.0, fresh=[True])
    >>> np.round(p, 6)
    array([ 0.95, -1.95])
    """
    rule = Rule("schedulefree", lr=lr, beta1=momentum, beta2=0.0, eps=0.0, weight_decay=weight_decay, ckp1=ckp1,
                bc2=1.0, adam=False, maximize=maximize)
    _step(rule, params, grads, [zs], [], fresh)
