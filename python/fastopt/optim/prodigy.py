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


#: The ``prodigy`` rule's values, in the order a step renews them (the coefficients, the step
#: size and the estimate are computed in the compiled rule, from these).
_KEYS = ("group_lr", "lr", "beta1", "beta2", "beta3", "eps", "weight_decay", "decouple", "use_bias_correction",
         "safeguard_warmup", "d", "d0", "d_max", "d_numerator", "d_coef", "growth_rate", "k", "maximize", "pass", "delta",
         "denom")


def _estimated(out: list[float], k: int) -> dict[str, Any]:
    """The group values after a step from the rule's ``[d_numerator, d_denom, d, d_max, d_hat]``."""
    numerator, denom, d, d_max, d_hat = out
    return dict(d_numerator=numerator, d_denom=denom, d=d, d_max=d_max, d_hat=d_hat, k=k + 1)


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
    count), then the update (one compiled call with the estimate between the passes when
    there is one group).

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
        #: The pass the groups' steps run: 0 the whole step (one group), 1 the first pass, 2
        #: the update (several groups: the estimate spans them).
        self._pass = 0
        self._lr = lr  # (the step's largest lr)
        self._sums = [0.0, 0.0]
        #: With several groups, the first pass records each group's kernel arguments here (by
        #: ``id`` of the group), which its update takes again: the same arrays, checked once.
        self._passes: dict[int, tuple] = {}
        self._estimate: list[float] | None = None
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

    # -- the step: one call for one group; two passes over several, the estimate between ---

    def _values(self, group: dict[str, Any], mode: int) -> tuple:
        """The rule's values (by ``_KEYS``) for ``group`` in pass ``mode``: the step size's
        and the estimate's from the first group (as the authors'), the rest the group's own;
        ``d0`` the group's in the first pass (its sums), the first group's in the update."""
        g0 = self.param_groups[0]
        beta1, beta2 = g0["betas"]
        beta3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(beta2)
        delta, denom = self._sums if mode == 2 else (0.0, 0.0)
        return (group["lr"], self._lr, beta1, beta2, beta3, group["eps"], group["weight_decay"], g0["decouple"],
                g0["use_bias_correction"], group["safeguard_warmup"], g0["d"], (g0 if mode == 2 else group)["d0"],
                g0["d_max"], g0["d_numerator"], g0["d_coef"], g0["growth_rate"], g0["k"], group["maximize"], mode,
                delta, denom)

    def _rule_for(self, group: dict[str, Any], values: tuple) -> tuple[Any, tuple[str, ...]]:
        """The group's rule with ``values`` and the buffers it takes (the counter, the state,
        then a master's buffer): the group's last rule renewed with the new numbers (its
        buffers stay as they were unless ``beta1`` moved to or from 0: then a new rule)."""
        key = (id(group), "prodigy")  # (kept with the groups' rules, which pickling and copying leave out)
        master = _MASTER_BUFFERS.get(group.get("master_weights"), ())  # (a float32 master's bits, or itself)
        old = self._rules.get(key)
        if old is not None and old[0] is group and old[3] == master:
            rule = old[1].renew(values)
            if rule is not None:
                self._rules[key] = (group, rule, old[2], master)
                return rule, old[2]
        rule = Rule("prodigy", **dict(zip(_KEYS, values)))
        states, _, counters = rule.layout()
        names = tuple(counters) + tuple(states) + master
        self._rules[key] = (group, rule, names, master)
        return rule, names

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        mode = 1 if check_only else self._pass  # (the checks are the first pass's)
        if mode == 2:
            # The update: the first pass's arguments again (the same arrays, state and cache:
            # checked then, unchanged since)
            rule, _ = self._rule_for(group, self._values(group, 2))
            self._estimate = _engine._kernels.step(rule, *self._passes[id(group)])
            _count_rounding(group)
            return
        rule, names = self._rule_for(group, self._values(group, mode))
        bufs, created = self._buffers(params, arrays, names, ("step",), group)
        if created:
            source = {id(p): a for p, a in zip(params, arrays)}
            for p, name, b in created:
                if name == "p0":
                    np.copyto(b, source[id(p)])
        lists, tail = _split_masters(names, bufs, group)  # (stochastic rounding: the update rounds)
        args = (arrays, grads, lists[1:], lists[:1], None, grad_scale, False, self._check_cache(group), *tail)
        if check_only:
            _engine._kernels.step(rule, *args[:6], True, *args[7:])
            return
        if mode == 1:
            self._passes[id(group)] = args
        if group["lr"] == 0:
            self._commit(created)  # (a group at lr 0 takes no part in the estimate)
            return
        out = _engine._kernels.step(rule, *args)
        if created:
            self._commit(created)
        if mode == 1:
            self._sums[0] += out[0]
            self._sums[1] += out[1]
        elif out[1] != 0:  # (0: no gradient moved the estimate, and nothing stepped: as the authors')
            group.update(_estimated(out, group["k"]))
            _count_rounding(group)

    def _write_groups(self, per_group: list, scale: float) -> None:
        self._lr = max(g["lr"] for g in self.param_groups)
        if len(self.param_groups) == 1:
            self._pass = 0
            super()._write_groups(per_group, scale)  # (the whole step in one call)
            return
        for gi, g in enumerate(self.param_groups):
            if g["lr"] not in (self._lr, 0.0):
                raise ValueError(f"param_groups[{gi}]['lr'] is {g['lr']}: Prodigy's groups may only have the largest "
                                 f"lr ({self._lr}) or 0")
        self._pass, self._sums, self._passes, self._estimate = 1, [0.0, 0.0], {}, None
        held: BaseException | None = None
        try:
            super()._write_groups(per_group, scale)  # (holds an interrupt until every group has run)
        except _ASYNC as e:
            held = e
        try:
            if self._sums[1] != 0:  # (0: no gradient moved the estimate: the authors return here)
                self._pass = 2
                super()._write_groups(per_group, scale)
        except _ASYNC as e:
            held = held or e
        finally:
            self._pass, self._passes = 0, {}  # (lets go of the arrays)
            out, self._estimate = self._estimate, None
            if out is not None:  # (every group's update returned the same estimate)
                for g in self.param_groups:
                    g.update(_estimated(out, g["k"]))
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
    moments = [m for m in (exp_avgs if betas[0] > 0 else None, exp_avg_sqs) if m is not None]
    values = (lr, lr, betas[0], betas[1], beta3, eps, weight_decay, decouple, use_bias_correction, safeguard_warmup, d, d0,
              d_max, d_numerator, d_coef, growth_rate, k, maximize, 0, 0.0, 0.0)
    out = _engine.step(Rule("prodigy", **dict(zip(_KEYS, values))), params, grads, [s_list, p0_list, *moments],
                       [state_steps])
    assert out is not None
    if out[1] == 0:  # no gradient moved the estimate (and nothing stepped)
        return dict(d=d, d_max=d_max, d_numerator=d_numerator, d_hat=d, k=k)
    return _estimated(out, k)
