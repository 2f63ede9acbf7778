"""Prodigy (Mishchenko & Defazio, 2024), as the authors' ``prodigyopt``."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence

import numpy as np

from . import _engine
from ._engine import Rule
from ._options import check_betas, check_bool, real
from ..parameter import as_numpy
from .optimizer import _ASYNC, _MASTER_BUFFERS, Optimizer, _array_of, _count_rounding, _split_masters

__all__ = ["Prodigy", "prodigy"]


def _stats_hyper(d: float, d0: float, dlr: float, betas: tuple[float, float], beta3: float, safeguard_warmup: bool,
                 weight_decay: float, decouple: bool, maximize: bool) -> dict[str, Any]:
    """The first pass's coefficients, computed as ``prodigyopt`` computes them."""
    beta1, beta2 = betas
    return dict(beta1=beta1, beta2=beta2, beta3=beta3, m_coef=d * (1 - beta1), v_coef=d * d * (1 - beta2),
                s_coef=(d / d0) * d if safeguard_warmup else (d / d0) * dlr,
                weight_decay=0.0 if decouple else weight_decay, maximize=maximize)


def _update_hyper(beta1: float, dlr: float, d: float, eps: float, weight_decay: float, decouple: bool,
                  maximize: bool) -> dict[str, Any]:
    """The update's coefficients (``d`` the new estimate, ``dlr`` the step's)."""
    return dict(beta1=beta1, m_rate=-dlr, g_rate=-dlr * d, d_eps=d * eps, decay=-weight_decay * dlr,
                decouple=decouple and weight_decay != 0, weight_decay=0.0 if decouple else weight_decay,
                maximize=maximize)


def _dlr(d: float, lr: float, k: int, betas: tuple[float, float], use_bias_correction: bool) -> float:
    """The step's ``d * lr`` (times Adam's bias correction with ``use_bias_correction``)."""
    beta1, beta2 = betas
    bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if use_bias_correction else 1
    return d * lr * bias_correction


def _estimate(d: float, d0: float, d_max: float, d_coef: float, growth_rate: float, numerator: float,
              denom: float) -> tuple[float, float, float]:
    """The new ``(d, d_max, d_hat)`` from the sums, as ``prodigyopt``."""
    d_hat = d_coef * numerator / denom
    if d == d0:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)
    return d, d_max, d_hat


def _param_shaped(value: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A flat ``s``/``p0`` in the parameter's shape (a single value: filled)."""
    size = math.prod(shape)
    if value.size == size:
        return value.reshape(shape)
    if value.size == 1:
        return np.full(shape, value.reshape(()), value.dtype)
    raise ValueError(f"{what} has {value.size} elements but its parameter has shape {shape}")


class Prodigy(Optimizer):
    r"""Prodigy (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner"): Adam whose step size ``d`` is estimated from the run itself, so
    ``lr`` stays at 1. Arguments, defaults, checks, group values (``d``, ``d0``, ``d_max``,
    ``d_numerator``, ``k``, ..., and after a step ``d_denom``, ``d_hat``) and state (``step``,
    ``s``, ``p0``, ``exp_avg`` when ``beta1 > 0``, ``exp_avg_sq``) as the authors'
    ``prodigyopt.Prodigy``. The estimate spans every group, so a step is two fused passes over
    all of them: the moments and the estimate's sums (float64, independent of the thread
    count), then the update.

    With gradient :math:`g_t` (plus ``weight_decay * p`` unless ``decouple``), :math:`k` steps
    taken, :math:`\hat d = d_k \cdot \mathrm{lr}` (times
    :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` with ``use_bias_correction``), and
    :math:`\beta_3 = \sqrt{\beta_2}` unless given:

    .. math::

        m_t = \beta_1 m_{t-1} + d_k (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + d_k^2 (1 - \beta_2) g_t^2, \qquad
        s_t = \beta_3 s_{t-1} + \tfrac{d_k}{d_0} \hat d\, g_t,

        r_t = \beta_3 r_{t-1} + \tfrac{d_k}{d_0} \hat d\, \langle g_t, p_0 - p_{t-1} \rangle, \qquad
        d_{k+1} = \min\Bigl(\max_{j \le k+1} \tfrac{c\, r_j}{\lVert s_j \rVert_1},\ d_k \cdot \mathrm{growth\_rate}\Bigr),

        p_t = p_{t-1} (1 - \lambda \hat d) - \hat d\, \frac{m_t}{\sqrt{v_t} + d_{k+1} \epsilon}

    (sums over every parameter of every group; :math:`c` is ``d_coef``; ``safeguard_warmup``
    uses :math:`d_k` instead of :math:`\hat d` in :math:`s`; the first step takes
    :math:`d = \max(d_0, \hat d_1)`; with :math:`\beta_1 = 0` the update is
    :math:`d_{k+1} \hat d\, g_t / (\ldots)`; the decay factor applies with ``decouple``).

    Example:

    >>> w = fo.Parameter(np.array([1.0, -2.0]))
    >>> opt = fo.optim.Prodigy([w])
    >>> for _ in range(20):
    ...     w.grad = 2 * w.data  # the gradient of sum(w**2)
    ...     opt.step()
    >>> float(opt.param_groups[0]["d"]) > 1e-6  # the estimate grew from d0
    True
    >>> bool(np.all(np.abs(w.data) < [1.0, 2.0]))
    True
    """

    # (bfloat16 parameters keep their state in bfloat16 or float32; float16 ones only in
    # float32: the distance estimate's state `s` grows past float16's range)
    _takes_half = True
    _takes_masters = True  # (both passes join a float32 master into the parameter tile)
    _takes_device = False  # (passes of its own: no CUDA kernels yet)

    _couples = "all"  # (the step-size estimate sums over every tensor)
    _option_docs = {
        "lr": "multiplier of the estimated step size (leave at 1 unless training is unstable); a group may "
              "only have this lr or 0",
        "beta3": "coefficient of the running averages of the estimate's sums (None: ``sqrt(beta2)``)",
        "eps": "term added to the denominator, times ``d``",
        "weight_decay": "weight decay: the parameter multiplied by ``1 - weight_decay * d * lr`` with ``decouple``, "
                        "otherwise ``weight_decay * param`` added to the gradient",
        "decouple": "AdamW-style decoupled weight decay",
        "use_bias_correction": "Adam's bias correction of the step size",
        "safeguard_warmup": "leave lr out of the estimate's denominator (against overshooting while lr warms up)",
        "d0": "the initial estimate of ``d``",
        "d_coef": "coefficient of the estimate (the preferred knob: 0.5 or 2 also work)",
        "growth_rate": "the most ``d`` may grow by in one step (inf: no limit)",
        "fsdp_in_use": "the authors' sharded-parameter switch: only False (fastopt's parameters are not sharded)",
        "slice_p": "the authors' memory saving (statistics on every p-th element): only 1, the full statistics",
        "maximize": "maximize the objective (beyond the authors': the gradient negated as it is read)",
    }

    #: A step changes the groups' values (d, k, ...), read by wrappers that keep their own groups.
    _steps_change_groups = True
    #: One step spans every group (the estimate needs the sums of all of them first).
    _global_step = True

    def __init__(self, params: Iterable[Any], lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False, d0: float = 1e-6,
                 d_coef: float = 1.0, growth_rate: float = float("inf"), fsdp_in_use: bool = False,
                 slice_p: int = 1, *, maximize: bool = False, state_dtype: str | None = None,
                 master_weights: str | None = None) -> None:
        if not 0.0 < real(lr, "lr"):
            raise ValueError(f"Invalid learning rate: {lr}")
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, d=d0, d0=d0, d_max=d0,
                        d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple,
                        safeguard_warmup=safeguard_warmup, fsdp_in_use=fsdp_in_use, slice_p=slice_p,
                        maximize=maximize)
        self._validate_group(defaults)
        self._phase = 1
        self._sums = [0.0, 0.0]
        self._now: dict[str, Any] = {}
        super().__init__(params, defaults, state_dtype=state_dtype, master_weights=master_weights)

    _options = ("lr", "weight_decay", "betas", "decouple", "use_bias_correction", "safeguard_warmup", "maximize")

    def _validate_extra(self, group: dict[str, Any]) -> None:
        if group.get("state_dtype") != "float32":
            for i, p in enumerate(group.get("params", ())):
                if _array_of(p).dtype == np.float16:
                    raise TypeError(f"params[{i}] has dtype float16; Prodigy keeps float16 parameters' state in float32 "
                                    "(its distance estimate's state s outgrows float16): pass state_dtype='float32'")
        if not 0.0 < real(group["d0"], "d0"):
            raise ValueError(f"Invalid d0 value: {group['d0']}")
        if not 0.0 < real(group["eps"], "eps"):
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        if group["beta3"] is not None and not 0.0 <= real(group["beta3"], "beta3") <= 1.0:
            raise ValueError(f"Invalid beta3 value: {group['beta3']}")
        if not 0.0 < real(group["d_coef"], "d_coef"):
            raise ValueError(f"Invalid d_coef value: {group['d_coef']}")
        if not 1.0 <= real(group["growth_rate"], "growth_rate"):
            raise ValueError(f"Invalid growth_rate value: {group['growth_rate']} (must be >= 1)")
        check_bool(group["fsdp_in_use"], "fsdp_in_use")
        if group["fsdp_in_use"]:
            raise ValueError("fsdp_in_use=True is not supported: fastopt's parameters are not sharded")
        slice_p = group["slice_p"]
        if not isinstance(slice_p, numbers.Integral) or isinstance(slice_p, bool) or slice_p < 1:
            raise ValueError(f"slice_p must be an int >= 1, got {slice_p!r}")
        if slice_p != 1:
            raise ValueError(f"slice_p={slice_p} is not supported: fastopt keeps the full statistics (slice_p=1)")

    # -- the authors' state layout: ``s`` and ``p0`` flat ----------------------------------

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`Optimizer.state_dict`, with ``s`` and ``p0`` flattened, as the authors
        keep them (so the dict loads into ``prodigyopt.Prodigy``)."""
        sd = super().state_dict()
        for st in sd["state"].values():
            for key in ("s", "p0"):
                if key in st:
                    st[key] = np.reshape(st[key], -1)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = False) -> None:
        """As :meth:`Optimizer.load_state_dict`; ``s`` and ``p0`` may be flat (the authors'
        layout, or :meth:`state_dict`'s) or, for ``p0``, the authors' single zero of an
        all-zero parameter. Checked before anything is loaded."""
        shapes: dict[Any, tuple[int, ...]] = {}
        for saved, group in zip(state_dict.get("param_groups", []), self.param_groups):
            for i, p in zip(saved.get("params", []), group["params"]):
                shapes[i] = _array_of(p).shape
        state = {}
        for i, st in state_dict.get("state", {}).items():
            if i in shapes and isinstance(st, dict):
                st = dict(st)
                for key in ("s", "p0"):
                    if key in st:
                        st[key] = _param_shaped(as_numpy(st[key]), shapes[i], f"state[{i}][{key!r}]")
            state[i] = st
        super().load_state_dict({**state_dict, "state": state}, strict)

    # -- the step: two passes over every group, the estimate between them -----------------

    def _plan(self) -> dict[str, Any]:
        """The values every group's first pass takes from the first group (as the authors')."""
        g0 = self.param_groups[0]
        lr = max(g["lr"] for g in self.param_groups)
        beta3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(g0["betas"][1])
        dlr = _dlr(g0["d"], lr, g0["k"], g0["betas"], g0["use_bias_correction"])
        return dict(d=g0["d"], dlr=dlr, betas=tuple(g0["betas"]), beta3=beta3, decouple=g0["decouple"], lr=lr)

    def _pass_rule(self, group: dict[str, Any], phase: int, plan: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
        """The group's rule for a pass and the buffers it takes (counters first, then the
        state, then a master's buffer): ``d`` changes every step, so the last rule of this
        group and pass takes the new numbers (the keys are ``_stats_hyper``'s or
        ``_update_hyper``'s, always in the same order; its buffers stay as they were unless
        ``beta1`` moved to or from 0, and then a new rule is built)."""
        if phase == 1:
            name, hyper = "prodigy_stats", _stats_hyper(plan["d"], group["d0"], plan["dlr"], plan["betas"],
                                                        plan["beta3"], group["safeguard_warmup"],
                                                        group["weight_decay"], plan["decouple"], group["maximize"])
        else:
            name, hyper = "prodigy_update", _update_hyper(plan["betas"][0], plan["dlr"], plan["d"], group["eps"],
                                                          group["weight_decay"], plan["decouple"], group["maximize"])
        # (kept with the groups' rules, which pickling and copying leave out)
        key = (id(group), phase)
        master = _MASTER_BUFFERS.get(group.get("master_weights"), ())  # (a float32 master's bits, or itself)
        old = self._rules.get(key)
        if old is not None and old[0] is group and old[3] == master:
            rule = old[1].renew(tuple(hyper.values()))
            if rule is not None:
                self._rules[key] = (group, rule, old[2], master)
                return rule, old[2]
        rule = Rule(name, **hyper)
        states, _, counters = rule.layout()
        names = tuple(counters) + tuple(states) + master
        self._rules[key] = (group, rule, names, master)
        return rule, names

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        phase = 1 if check_only else self._phase  # (the checks are the first pass's)
        plan = self._plan() if check_only else self._now
        rule, names = self._pass_rule(group, phase, plan)
        bufs, created = self._buffers(params, arrays, names, ("step",), group)
        if created:
            source = {id(p): a for p, a in zip(params, arrays)}
            for p, name, b in created:
                if name == "p0":
                    np.copyto(b, source[id(p)])
        if not check_only and phase == 1 and group["lr"] == 0:
            self._commit(created)  # (a group at lr 0 takes no part in the estimate)
            return
        lists, tail = _split_masters(names, bufs, group)  # (stochastic rounding: the update pass rounds)
        sums = _engine._kernels.step(rule, arrays, grads, lists[1:], lists[:1], None, grad_scale, check_only,
                                     self._check_cache(group), *tail)
        if phase == 2 and not check_only:
            _count_rounding(group)
        if created and not check_only:
            self._commit(created)
        if sums is not None and not check_only:
            dot, abs_sum = sums
            self._sums[0] += (plan["d"] / group["d0"]) * plan["dlr"] * dot
            self._sums[1] += abs_sum

    def _check_lrs(self) -> float:
        lr = max(g["lr"] for g in self.param_groups)
        for gi, g in enumerate(self.param_groups):
            if g["lr"] not in (lr, 0.0):
                raise ValueError(f"param_groups[{gi}]['lr'] is {g['lr']}: Prodigy's groups may only have the largest "
                                 f"lr ({lr}) or 0")
        return lr

    def _write_groups(self, per_group: list, scale: float) -> None:
        lr = self._check_lrs()
        g0 = self.param_groups[0]
        plan = self._now = self._plan()
        numerator = g0["d_numerator"] * plan["beta3"]
        self._phase, self._sums = 1, [0.0, 0.0]
        held: BaseException | None = None
        try:
            super()._write_groups(per_group, scale)  # (holds an interrupt until every group has run)
        except _ASYNC as e:
            held = e
        delta, denom = self._sums
        if denom == 0:  # no gradient has moved the estimate: the authors return here
            if held is not None:
                raise held
            return
        d, d_max, d_hat = plan["d"], g0["d_max"], plan["d"]
        if lr > 0.0:
            numerator += delta
            d, d_max, d_hat = _estimate(d, g0["d0"], d_max, g0["d_coef"], g0["growth_rate"], numerator, denom)
        for g in self.param_groups:
            g.update(d_numerator=numerator, d_denom=denom, d=d, d_max=d_max, d_hat=d_hat)
        self._phase, self._now = 2, dict(plan, d=d)  # (the new d; the step's dlr)
        try:
            super()._write_groups(per_group, scale)
        except _ASYNC as e:
            held = held or e
        finally:
            self._phase = 1
            for g in self.param_groups:
                g["k"] += 1
        if held is not None:
            raise held


def prodigy(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], s_list: Sequence[np.ndarray],
            p0_list: Sequence[np.ndarray], exp_avgs: Sequence[np.ndarray] | None, exp_avg_sqs: Sequence[np.ndarray],
            state_steps: Sequence[np.ndarray], *, d: float, d_max: float, d_numerator: float, k: int,
            lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
            eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True, use_bias_correction: bool = False,
            safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
            growth_rate: float = float("inf"), maximize: bool = False) -> dict[str, float]:
    """Prodigy (:class:`fastopt.optim.Prodigy`) over one group: the two passes and the
    estimate between them. ``p0_list`` holds the parameters' values at their first step;
    ``exp_avgs`` is None when ``betas[0] == 0``. Returns the group's new values (``d``,
    ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k``; as they were if no gradient
    moved the estimate).

    Example:

    >>> F = fo.optim.functional
    >>> p, g = np.array([1.0, -2.0]), np.array([0.5, -0.5])
    >>> s, m, v, step = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros((), np.float32)
    >>> out = F.prodigy([p], [g], [s], [p.copy()], [m], [v], [step], d=1e-6, d_max=1e-6, d_numerator=0.0, k=0)
    >>> out["k"], float(step)
    (1, 1.0)
    """
    beta3 = math.sqrt(betas[1]) if beta3 is None else beta3
    if not 0.0 < real(lr, "lr"):
        raise ValueError(f"Invalid learning rate: {lr}")
    check_betas(betas)
    dlr = _dlr(d, lr, k, betas, use_bias_correction)
    moments = [m for m in (exp_avgs if betas[0] > 0 else None, exp_avg_sqs) if m is not None]
    states = [s_list, p0_list, *moments]
    rule = Rule("prodigy_stats", **_stats_hyper(d, d0, dlr, betas, beta3, safeguard_warmup, weight_decay, decouple,
                                                maximize))
    sums = _engine.step(rule, params, grads, states, [state_steps])
    assert sums is not None
    out = dict(d=d, d_max=d_max, d_numerator=d_numerator, d_hat=d, k=k)
    if sums[1] == 0:
        return out
    numerator = d_numerator * beta3 + (d / d0) * dlr * sums[0]
    new_d, d_max, d_hat = _estimate(d, d0, d_max, d_coef, growth_rate, numerator, sums[1])
    rule = Rule("prodigy_update", **_update_hyper(betas[0], dlr, new_d, eps, weight_decay, decouple, maximize))
    _engine.step(rule, params, grads, states, [state_steps])
    return dict(d=new_d, d_max=d_max, d_numerator=numerator, d_denom=sums[1], d_hat=d_hat, k=k + 1)
