"""Every optimizer in one table: its torch counterpart or oracle, the configurations the
test suites step with, bad options, state keys and benchmark arguments.

The test suites (parity, bad input, state dicts, clipping, the step cache, the optimizer
contract, the bit-for-bit record) and the benchmark report draw their optimizer lists from
:data:`OPTIMIZERS`, so adding an optimizer here puts it through all of them; a test checks
that every optimizer in :mod:`fastopt.optim` is here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Spec", "OPTIMIZERS", "by_name", "configs", "second_lr"]


@dataclass(frozen=True)
class Spec:
    """One optimizer's entry."""

    #: Class name in :mod:`fastopt.optim`.
    name: str
    #: ``torch.optim`` class with the same update rule, or None.
    torch: str | None
    #: What its results are checked against: ``"torch"``, or the reference implementation.
    oracle: str
    #: Option sets every suite steps with (the first is the typical one).
    configs: tuple[dict[str, Any], ...]
    #: Option sets compared with torch element for element (torch optimizers only).
    parity: tuple[dict[str, Any], ...] = ()
    #: Bad options, each with the exception and the start of its message.
    bad: tuple[tuple[dict[str, Any], type, str], ...] = ()
    #: The state keys of a parameter after one step with ``configs[0]``.
    state: tuple[str, ...] = ()
    #: A state buffer the step writes and the name of its list in errors (the step cache's
    #: tests make it read-only or misshapen); None for optimizers without a fused step.
    written: tuple[str, str] | None = None
    #: Arguments for the benchmarks, and the arrays one step reads plus writes per element.
    bench: dict[str, Any] = field(default_factory=dict)
    moved: int = 0
    #: Whether ``step`` needs a closure (L-BFGS).
    closure: bool = False
    #: Whether the optimizer takes 2-D parameters only (Muon): the suites give it matrices.
    matrix: bool = False
    #: Whether every param group must have the largest lr or 0 (Prodigy, whose estimate
    #: spans the groups): the suites give its second group lr 0 (:func:`second_lr`).
    one_lr: bool = False


def _product(**axes: list[Any]) -> tuple[dict[str, Any], ...]:
    keys = list(axes)
    return tuple(dict(zip(keys, values)) for values in itertools.product(*axes.values()))


def _adam_parity() -> tuple[dict[str, Any], ...]:
    out = [dict(lr=1e-2, amsgrad=a, maximize=m, weight_decay=w) for a, m, w in
           itertools.product([False, True], [False, True], [0.0, 0.1])]
    return tuple(out + [{}])


def _sgd_parity() -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = [{}]
    for mom, damp, nest, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.5], [False, True], [0.0, 0.1], [False, True]):
        if (nest and (mom == 0 or damp != 0)) or (mom == 0 and damp != 0):
            continue
        out.append(dict(lr=1e-2, momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd, maximize=mx))
    return tuple(out)


_BAD_ADAM_LIKE = (
    ({"lr": -1e-3}, ValueError, "Invalid learning rate: -0.001"),
    ({"eps": -1.0}, ValueError, "Invalid epsilon value: -1.0"),
    ({"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
    ({"weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
)

OPTIMIZERS: tuple[Spec, ...] = (
    Spec(
        "SGD", "SGD", "torch",
        configs=({"lr": 0.1, "momentum": 0.9, "nesterov": True}, {"lr": 0.1},
                 {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}),
        parity=_sgd_parity(),
        bad=(({"lr": -0.1}, ValueError, "Invalid learning rate: -0.1"),
             ({"momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
             ({"weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
             ({"nesterov": True}, ValueError, "Nesterov momentum requires a momentum and zero dampening"),
             ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "Nesterov momentum requires"),
             ({"dampening": math.nan}, ValueError, "Invalid dampening value: nan")),
        state=("momentum_buffer",), written=("momentum_buffer", "momentum_buffer_list"),
        bench={"lr": 1e-3, "momentum": 0.9}, moved=5,
    ),
    Spec(
        "Adam", "Adam", "torch",
        configs=({"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}, {}, {"lr": 3e-2, "betas": (0.5, 0.9), "eps": 1e-6}),
        parity=_adam_parity() + (dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-6),),
        bad=_BAD_ADAM_LIKE + (({"lr": math.nan}, ValueError, "Invalid learning rate: nan"),
                              ({"lr": "0.1"}, TypeError, "lr must be a real number"),
                              ({"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
                              ({"betas": 0.9}, TypeError, "betas must be a pair"),
                              ({"amsgrad": "yes"}, TypeError, "amsgrad must be a bool")),
        state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"), written=("exp_avg_sq", "exp_avg_sqs"),
        bench={"lr": 1e-3}, moved=7,
    ),
    Spec(
        "AdamW", "AdamW", "torch",
        configs=({"lr": 1e-2, "maximize": True}, {"amsgrad": True}, {"lr": 1e-2, "cautious": True, "amsgrad": True}),
        parity=_adam_parity() + (dict(lr=3e-2, betas=(0.0, 0.5), weight_decay=0.3, amsgrad=True),),
        bad=(({"weight_decay": -0.1}, ValueError, "Invalid weight_decay value: -0.1"),),
        state=("exp_avg", "exp_avg_sq", "step"), written=("exp_avg", "exp_avgs"),
        bench={"lr": 1e-3, "weight_decay": 1e-2}, moved=7,
    ),
    Spec(
        "Adagrad", "Adagrad", "torch",
        configs=({"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.05},),
        parity=({},) + tuple(dict(lr=0.05, lr_decay=d, initial_accumulator_value=i, weight_decay=w, maximize=m, eps=1e-10)
                             for d, i, w, m in itertools.product([0.0, 0.01], [0.0, 0.1], [0.0, 0.1], [False, True])),
        bad=(({"lr_decay": -0.1}, ValueError, "Invalid lr_decay value: -0.1"),
             ({"initial_accumulator_value": -1.0}, ValueError, "Invalid initial_accumulator_value value: -1.0"),
             ({"eps": -1e-3}, ValueError, "Invalid epsilon value: -0.001")),
        state=("step", "sum"), written=("sum", "state_sums"),
        bench={"lr": 1e-2}, moved=5,
    ),
    Spec(
        "RMSprop", "RMSprop", "torch",
        configs=({"lr": 0.01, "momentum": 0.9, "centered": True, "maximize": True}, {"momentum": 0.5}),
        parity=({},) + tuple(dict(lr=1e-2, momentum=mo, centered=c, weight_decay=w, maximize=m)
                             for mo, c, w, m in itertools.product([0.0, 0.9], [False, True], [0.0, 0.1], [False, True]))
        + (dict(lr=1e-2, alpha=0.3, centered=True),),
        bad=(({"alpha": -0.5}, ValueError, "Invalid alpha value: -0.5"),
             ({"momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
             ({"centered": 1}, TypeError, "centered must be a bool")),
        state=("grad_avg", "momentum_buffer", "square_avg", "step"), written=("grad_avg", "grad_avgs"),
        bench={"lr": 1e-2}, moved=5,
    ),
    Spec(
        "Adadelta", "Adadelta", "torch",
        configs=({"lr": 0.5},),
        parity=({},) + tuple(dict(lr=0.5, rho=0.9, weight_decay=w, maximize=m) for w, m in itertools.product([0.0, 0.1], [False, True])),
        bad=(({"rho": 1.5}, ValueError, "Invalid rho value: 1.5"),),
        state=("acc_delta", "square_avg", "step"), written=("acc_delta", "acc_deltas"),
        bench={"lr": 1.0}, moved=7,
    ),
    Spec(
        "Adamax", "Adamax", "torch",
        configs=({"lr": 0.01, "weight_decay": 0.1},),
        parity=({},) + tuple(dict(lr=1e-2, weight_decay=w, maximize=m) for w, m in itertools.product([0.0, 0.1], [False, True]))
        + (dict(lr=3e-2, betas=(0.5, 0.9)),),
        bad=_BAD_ADAM_LIKE,
        state=("exp_avg", "exp_inf", "step"), written=("exp_inf", "exp_infs"),
        bench={"lr": 2e-3}, moved=7,
    ),
    Spec(
        "NAdam", "NAdam", "torch",
        configs=({"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}, {"lr": 0.01, "weight_decay": 0.1}),
        parity=({},) + tuple(dict(lr=1e-2, weight_decay=w, decoupled_weight_decay=d, maximize=m, momentum_decay=4e-3)
                             for w, m, d in itertools.product([0.0, 0.1], [False, True], [False, True]))
        + (dict(lr=1e-2, betas=(0.3, 0.99), momentum_decay=0.1),),
        bad=_BAD_ADAM_LIKE + (({"momentum_decay": -1.0}, ValueError, "Invalid momentum_decay value: -1.0"),),
        state=("exp_avg", "exp_avg_sq", "mu_product", "step"), written=("exp_avg_sq", "exp_avg_sqs"),
        bench={"lr": 2e-3}, moved=7,
    ),
    Spec(
        "RAdam", "RAdam", "torch",
        configs=({"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}, {"lr": 0.01}),
        parity=({},) + tuple(dict(lr=1e-2, weight_decay=w, decoupled_weight_decay=d, maximize=m)
                             for w, m, d in itertools.product([0.0, 0.1], [False, True], [False, True]))
        + (dict(lr=1e-2, betas=(0.9, 0.9)),),
        bad=_BAD_ADAM_LIKE,
        state=("exp_avg", "exp_avg_sq", "step"), written=("exp_avg", "exp_avgs"),
        bench={"lr": 1e-3}, moved=7,
    ),
    Spec(
        "ASGD", "ASGD", "torch",
        configs=({"lr": 0.01, "t0": 2, "weight_decay": 0.1}, {"t0": 1}),
        parity=({},) + tuple(dict(lr=1e-2, weight_decay=w, maximize=m, t0=20) for w, m in itertools.product([0.0, 0.1], [False, True]))
        + (dict(lr=5e-2, lambd=1e-3, alpha=0.5, t0=5),),
        bad=(({"lambd": -1.0}, ValueError, "Invalid lambd value: -1.0"),),
        state=("ax", "eta", "mu", "step"), written=("ax", "axs"),
        bench={"lr": 1e-2}, moved=4,
    ),
    Spec(
        "Rprop", "Rprop", "torch",
        configs=({"lr": 0.01},),
        parity=({},) + tuple(dict(lr=1e-2, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05), maximize=m) for m in (False, True)),
        bad=(({"etas": (1.2, 0.5)}, ValueError, "Invalid eta values: 1.2, 0.5"),),
        state=("prev", "step", "step_size"), written=("step_size", "step_size_ops"),
        bench={"lr": 1e-2}, moved=7,
    ),
    Spec(
        "AdaBound", None, "the authors' reference code (NumPy transcription in fastopt.bench.peers)",
        configs=({"lr": 0.01, "weight_decay": 0.1}, {}),
        bad=(({"final_lr": -0.1}, ValueError, "Invalid final learning rate: -0.1"),
             ({"gamma": 1.0}, ValueError, "Invalid gamma parameter: 1.0")),
        state=("exp_avg", "exp_avg_sq", "step"), written=("exp_avg", "exp_avgs"),
        bench={"lr": 1e-3}, moved=7,
    ),
    Spec(
        "AMSBound", None, "the authors' reference code (NumPy transcription in fastopt.bench.peers)",
        configs=({"lr": 0.01},),
        bad=(({"final_lr": -0.1}, ValueError, "Invalid final learning rate: -0.1"),),
        state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"), written=("max_exp_avg_sq", "max_exp_avg_sqs"),
        bench={"lr": 1e-3}, moved=9,
    ),
    Spec(
        "Lion", None, "the paper's Algorithm 2 (NumPy) and optax.lion",
        configs=({"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "maximize": True}, {"lr": 0.01, "cautious": True}),
        bad=(({"betas": (1.2, 0.9)}, ValueError, "Invalid beta parameter at index 0: 1.2"),
             ({"cautious": 1}, TypeError, "cautious must be a bool")),
        state=("exp_avg", "step"), written=("exp_avg", "exp_avgs"),
        bench={"lr": 1e-4}, moved=5,
    ),
    Spec(
        "AdaBelief", None, "the authors' adabelief-pytorch, the paper's Algorithm 1 (NumPy) and optax.adabelief",
        configs=({"lr": 0.01}, {"lr": 0.01, "amsgrad": True, "rectify": False},
                 {"lr": 0.01, "fixed_decay": True, "weight_decay": 0.01}),
        bad=(({"weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),),
        state=("exp_avg", "exp_avg_var", "step"), written=("exp_avg_var", "exp_avg_vars"),
        bench={"lr": 1e-3, "rectify": False}, moved=7,
    ),
    Spec(
        "ADOPT", None, "the authors' adopt code (torch transcription in the tests) and pytorch-optimizer's ADOPT",
        configs=({"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.01, "decouple": True, "weight_decay": 0.05, "maximize": True},
                 {"lr": 0.01, "clip_lambda": None}),
        bad=(({"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
             ({"clip_lambda": 0.25}, TypeError, "clip_lambda must be a function of the step or None"),
             ({"decouple": 1}, TypeError, "decouple must be a bool")),
        state=("exp_avg", "exp_avg_sq", "step"), written=("exp_avg_sq", "exp_avg_sqs"),
        bench={"lr": 1e-3}, moved=7,
    ),
    Spec(
        "AdEMAMix", None, "the authors' AdEMAMix code (torch transcription in the tests) and pytorch-optimizer's",
        configs=({"lr": 0.01}, {"lr": 0.01, "alpha": 5.0, "beta3_warmup": 10, "alpha_warmup": 10, "weight_decay": 0.1},
                 {"lr": 0.01, "maximize": True}),
        bad=(({"betas": (0.9, 0.999)}, TypeError, "betas must be a triple"),
             ({"betas": (0.9, 0.999, 1.5)}, ValueError, "Invalid beta parameter at index 2: 1.5"),
             ({"alpha_warmup": 0}, ValueError, "alpha_warmup must be None or a number of steps >= 1")),
        state=("exp_avg_fast", "exp_avg_slow", "exp_avg_sq", "step"), written=("exp_avg_slow", "exp_avg_slows"),
        bench={"lr": 1e-3}, moved=9,
    ),
    Spec(
        "AdamWScheduleFree", None, "the authors' schedulefree.AdamWScheduleFree",
        configs=({"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.01, "warmup_steps": 3, "r": 0.5, "maximize": True}),
        bad=(({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
             ({"warmup_steps": -1}, ValueError, "warmup_steps must be a number of steps >= 0"),
             ({"betas": (0.9, 1.5)}, ValueError, "Invalid beta parameter at index 1: 1.5")),
        state=("exp_avg_sq", "z"), written=("z", "zs"),
        bench={"lr": 1e-3}, moved=8,
    ),
    Spec(
        "SGDScheduleFree", None, "the authors' schedulefree.SGDScheduleFree",
        configs=({"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.05, "momentum": 0.5, "warmup_steps": 2}),
        bad=(({"momentum": 1.0}, ValueError, "Momentum must be between 0 and 1 exclusive: 1.0"),
             ({"weight_decay": -0.1}, ValueError, "Invalid weight_decay value: -0.1")),
        state=("z",), written=("z", "zs"),
        bench={"lr": 1e-2}, moved=6,
    ),
    Spec(
        "Prodigy", None, "the authors' prodigyopt.Prodigy",
        configs=({"lr": 1.0}, {"lr": 1.0, "weight_decay": 0.1, "decouple": False, "betas": (0.0, 0.99)},
                 {"lr": 0.5, "use_bias_correction": True, "safeguard_warmup": True, "growth_rate": 1.05}),
        bad=(({"d0": 0.0}, ValueError, "Invalid d0 value: 0.0"),
             ({"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
             ({"slice_p": 11}, ValueError, "slice_p=11 is not supported"),
             ({"decouple": 1}, TypeError, "decouple must be a bool")),
        state=("exp_avg", "exp_avg_sq", "p0", "s", "step"), written=("s", "s_list"),
        bench={"lr": 1.0}, moved=13, one_lr=True,
    ),
    Spec(
        "Lamb", None, "the paper's Algorithm 2 (NumPy)",
        configs=({"lr": 0.01, "weight_decay": 0.01},),
        bad=(({"eps": -1.0}, ValueError, "Invalid epsilon value: -1.0"),),
        state=("exp_avg", "exp_avg_sq", "step"), written=("exp_avg", "exp_avgs"),
        bench={"lr": 1e-3, "weight_decay": 0.01}, moved=7,
    ),
    Spec(
        "Adafactor", "Adafactor", "torch",
        configs=({"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.01, "maximize": True}),
        parity=({}, dict(lr=0.05, weight_decay=0.1, maximize=True, d=1.5), dict(beta2_decay=-0.5, eps=(1e-20, 1e-2)),
                dict(lr=1e-3, eps=(1e-30, 1e-3), weight_decay=0.01)),
        bad=(({"beta2_decay": 0.5}, ValueError, "beta2_decay should be <= 0 but is: 0.5"),
             ({"d": 0.5}, ValueError, "Clipping threshold d should be >= 1 but is: 0.5"),
             ({"eps": (-1.0, 1e-3)}, ValueError, "epsilon1 should be >= 0 but is: -1.0")),
        state=("col_var", "row_var", "step"),
    ),
    Spec(
        "Muon", "Muon", "torch",
        configs=({"lr": 0.02}, {"lr": 0.02, "nesterov": False, "weight_decay": 0.0, "ns_dtype": "float32"}),
        bad=(({"adjust_lr_fn": "bogus"}, ValueError, "Adjust learning rate function bogus is not supported"),
             ({"ns_steps": 100}, ValueError, "Number of steps must be an int in [0, 100)"),
             ({"momentum": -0.1}, ValueError, "momentum should be >= 0 but is: -0.1")),
        state=("momentum_buffer",), matrix=True,
    ),
    Spec(
        "LBFGS", "LBFGS", "torch",
        configs=({"lr": 1.0, "line_search_fn": "strong_wolfe"}, {"lr": 0.5}),
        bad=(({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),),
        closure=True,
    ),
)


def by_name(name: str) -> Spec:
    """The entry of optimizer ``name``."""
    for spec in OPTIMIZERS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def second_lr(cls: type, lr: float) -> float:
    """The lr the suites give a second param group of optimizer class ``cls``: ``lr``, or 0
    where every group must have the largest lr or 0 (:attr:`Spec.one_lr`)."""
    return 0.0 if by_name(cls.__name__).one_lr else lr


def configs(*, closure: bool = False, torch_only: bool = False, matrix: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """``(name, options)`` for every configuration of every optimizer (without L-BFGS unless
    ``closure``, without the 2-D-only Muon unless ``matrix``: the shared suites step vectors;
    with ``torch_only``, only those torch's counterpart takes: no options beyond torch's, such
    as ``cautious``)."""
    return [(s.name, dict(kw)) for s in OPTIMIZERS
            if (closure or not s.closure) and (matrix or not s.matrix) and (s.torch or not torch_only)
            for kw in s.configs if not (torch_only and set(kw) & BEYOND_TORCH)]


#: Options fastopt adds to optimizers torch has.
BEYOND_TORCH = {"cautious"}
