"""Optimizers whose update is element-wise with a few state buffers, run by the shared fused
kernel of ``fastopt_core::optim::elementwise``: torch's Adamax, Adadelta, NAdam, RAdam, ASGD and Rprop, and
beyond torch AdaBound/AMSBound, Lion and AdaBelief."""

from __future__ import annotations

from typing import Any, Iterable

from ._engine import Rule
from ._engine import step as _step
from ._options import real
from .optimizer import Optimizer, impl_flags

__all__ = ["Adamax", "Adadelta", "NAdam", "RAdam", "ASGD", "Rprop", "AdaBound", "AMSBound", "Lion", "AdaBelief"]

class _Elementwise(Optimizer):
    """An optimizer whose rule is ``_rule``; subclasses give the hyperparameters by name."""

    _fill_values: dict[str, float] = {}

    def _fill(self, group: dict[str, Any]) -> dict[str, float]:
        """Initial values of new state (default zeros)."""
        return self._fill_values

class _AdamLike(_Elementwise):
    """Optimizers with Adam's options (lr, betas, eps, weight_decay, maximize, and
    decoupled_weight_decay where they have it): shared hyperparameters."""

    _options = ("lr", "eps", "betas", "weight_decay", "maximize")

    def _hyper(self, g):
        h = dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"], weight_decay=g["weight_decay"],
                 maximize=g["maximize"])
        if "decoupled_weight_decay" in g:
            h["decoupled_weight_decay"] = g["decoupled_weight_decay"]
        return h

class Adamax(_AdamLike):
    """Adamax, Adam's infinity-norm variant (torch.optim.Adamax: arguments, defaults, checks,
    state ``step``/``exp_avg``/``exp_inf`` and update rule).

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
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

class Adadelta(_Elementwise):
    """Adadelta (torch.optim.Adadelta: arguments, defaults, checks, state
    ``step``/``square_avg``/``acc_delta`` and update rule).

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
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

    _options = ("lr", "rho", "eps", "weight_decay", "maximize")

    def _validate_extra(self, group):
        if group["rho"] > 1.0:
            raise ValueError(f"Invalid rho value: {group['rho']}")

    def _hyper(self, g):
        return dict(lr=g["lr"], rho=g["rho"], eps=g["eps"], weight_decay=g["weight_decay"], maximize=g["maximize"])

class NAdam(_AdamLike):
    """NAdam, Adam with Nesterov momentum and momentum decay (torch.optim.NAdam: arguments,
    defaults, checks, state ``step``/``mu_product``/``exp_avg``/``exp_avg_sq`` with
    ``mu_product`` a float32 counter as in torch, and update rule).

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
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

    _options = _AdamLike._options + ("momentum_decay", "decoupled_weight_decay")

    def _hyper(self, g):
        return dict(super()._hyper(g), momentum_decay=g["momentum_decay"])

class RAdam(_AdamLike):
    """RAdam, Adam with variance rectification (torch.optim.RAdam: arguments, defaults,
    checks, state ``step``/``exp_avg``/``exp_avg_sq`` and update rule).

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
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

    _options = _AdamLike._options + ("decoupled_weight_decay",)

class ASGD(_Elementwise):
    """Averaged SGD (torch.optim.ASGD: arguments, defaults, checks, state
    ``step``/``eta``/``mu``/``ax`` with ``eta`` and ``mu`` float32 counters as in torch, and
    update rule).

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

    _rule = "asgd"
    _counters = ("step", "eta", "mu")

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                 t0: float = 1e6, weight_decay: float = 0, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

    _options = ("lr", "lambd", "alpha", "weight_decay", "t0", "maximize")

    def _fill(self, group):
        return {"eta": group["lr"], "mu": 1.0}

    def _hyper(self, g):
        return dict(lr=g["lr"], lambd=g["lambd"], alpha=g["alpha"], t0=g["t0"], weight_decay=g["weight_decay"],
                    maximize=g["maximize"])

class Rprop(_Elementwise):
    """Resilient backpropagation (torch.optim.Rprop: arguments, defaults, checks, state
    ``step``/``prev``/``step_size`` and update rule).

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
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, maximize=maximize)
        defaults.update(impl_flags(foreach=foreach, capturable=capturable, differentiable=differentiable))
        self._validate_group(defaults)
        super().__init__(params, defaults)

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
    """AdaBound (Luo et al., ICLR 2019): Adam whose per-element step size is clamped into
    ``[final_lr * (1 - 1/(gamma*t + 1)), final_lr * (1 + 1/(gamma*t))]``, so it moves from
    Adam towards SGD with lr ``final_lr``; ``amsbound=True`` is AMSBound (AMSGrad's maximum).
    As in the authors' implementation, ``final_lr`` follows the group's lr when a scheduler
    changes it: ``final_lr * lr / base_lr``, ``base_lr`` being the group's lr when it was
    added (kept in the group). State: ``step``, ``exp_avg``, ``exp_avg_sq`` (and
    ``max_exp_avg_sq``). ``decoupled_weight_decay`` (default False) multiplies the parameter by
    ``1 - lr*wd`` instead of adding L2 decay to the gradient.

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
                 amsbound: bool = False, *, decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps, weight_decay=weight_decay,
                        amsbound=amsbound, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

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
    """AdaBound with AMSGrad's running maximum of the second moment (``amsbound=True``).

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
                 decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
        super().__init__(params, lr, betas, final_lr, gamma, eps, weight_decay, True,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)

class Lion(_Elementwise):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"):
    ``p -= lr * sign(beta1*m + (1-beta1)*g)``, then ``m = beta2*m + (1-beta2)*g``, with
    decoupled weight decay. Defaults as the paper's reference (lr 1e-4, betas (0.9, 0.99)).
    State: ``step``, ``exp_avg``.

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

    _rule = "lion"

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    _options = ("lr", "betas", "weight_decay", "maximize")

    def _hyper(self, g):
        return dict(lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
                    maximize=g["maximize"])

class AdaBelief(_AdamLike):
    """AdaBelief (Zhuang et al., NeurIPS 2020, Algorithm 1): Adam with the second moment of
    ``g - m`` (plus ``eps``), both moments bias-corrected. Decoupled weight decay by default,
    as the authors' implementation. State: ``step``, ``exp_avg``, ``exp_avg_var``.

    Example:

    >>> w = fo.Parameter(np.array([1.0, -1.0]))
    >>> opt = fo.optim.AdaBelief([w], lr=0.1)
    >>> for _ in range(3):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> np.round(w.data, 6)
    array([ 0.652305, -0.652305])
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_var', 'step']
    """

    _rule = "adabelief"

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0, *, decoupled_weight_decay: bool = True,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self._validate_group(defaults)
        super().__init__(params, defaults)

    _options = _AdamLike._options + ("decoupled_weight_decay",)

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
