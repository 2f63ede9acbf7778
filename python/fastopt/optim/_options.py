"""Each optimizer option's check, declared once and shared by every optimizer that takes the
option (torch's messages). An optimizer lists its options in ``_options``; the base class runs
their checks when a group is added or loaded, then the optimizer's own ``_validate_extra``."""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["CHECKS", "DOCS", "arguments_section", "validate", "real", "check_bool", "check_betas", "check_nonnegative"]


def real(value: Any, name: str) -> float:
    """`value` as a float, or a TypeError/ValueError naming the argument (a one-element array
    is read as its element; a number too large for a float is refused)."""
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf")
    ):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value.reshape(()) if isinstance(value, np.ndarray) else value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float: {value}") from None


def check_nonnegative(value: Any, name: str, message: str) -> None:
    """torch's ``if not 0.0 <= value: raise ValueError(message)`` (NaN is rejected too)."""
    if not 0.0 <= real(value, name):
        raise ValueError(message)


def check_betas(betas: Any, name: str = "betas", count: int = 2) -> None:
    """torch's checks of a ``betas`` pair (``count=3``: a triple, AdEMAMix's), each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        what = {2: "a pair of floats", 3: "a triple of floats (beta1, beta2, beta3)"}[count]
        raise TypeError(f"{name} must be {what}, got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= real(b, f"{name}[{i}]") < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")


def check_bool(value: Any, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _nonnegative(what: str) -> Callable[[Any, str], None]:
    def check(value: Any, name: str) -> None:
        check_nonnegative(value, name, f"Invalid {what}: {value}")

    return check


#: option name -> check(value, name)
CHECKS: dict[str, Callable[[Any, str], None]] = {
    "lr": _nonnegative("learning rate"),
    "eps": _nonnegative("epsilon value"),
    "weight_decay": _nonnegative("weight_decay value"),
    "momentum": _nonnegative("momentum value"),
    "lr_decay": _nonnegative("lr_decay value"),
    "initial_accumulator_value": _nonnegative("initial_accumulator_value value"),
    "alpha": _nonnegative("alpha value"),
    "lambd": _nonnegative("lambd value"),
    "t0": _nonnegative("t0 value"),
    "momentum_decay": _nonnegative("momentum_decay value"),
    "rho": _nonnegative("rho value"),
    "final_lr": _nonnegative("final learning rate"),
    "betas": check_betas,
    **{flag: check_bool for flag in (
        "amsgrad", "maximize", "decoupled_weight_decay", "nesterov", "centered", "bias_correction", "amsbound",
        "decouple", "use_bias_correction", "safeguard_warmup",
    )},
}


def validate(group: dict[str, Any], options: tuple[str, ...]) -> None:
    """Runs the check of each of ``options`` on the group's value."""
    for name in options:
        CHECKS[name](group[name], name)


#: What each option means, written once for every optimizer that takes it (an optimizer
#: whose option means something else says so in its ``_option_docs``).
DOCS: dict[str, str] = {
    "params": "the parameters: an iterable of :class:`~fastopt.Parameter` objects or float arrays, of "
              "``(name, parameter)`` pairs, or of param-group dicts (a ``'params'`` list and options)",
    "lr": "learning rate",
    "betas": "coefficients of the running averages of the gradient and of its square (``beta1``, ``beta2``)",
    "eps": "term added to the denominator for numerical stability",
    "weight_decay": "weight decay: ``weight_decay * param`` added to the gradient (L2), or with "
                    "``decoupled_weight_decay`` the parameter multiplied by ``1 - lr * weight_decay``",
    "decoupled_weight_decay": "decay the parameter directly (AdamW style) instead of adding an L2 term to the gradient",
    "maximize": "maximize the objective (step along the gradient instead of against it)",
    "momentum": "momentum factor",
    "dampening": "dampening of the gradient's contribution to the momentum",
    "nesterov": "use Nesterov momentum",
    "amsgrad": "use the running maximum of the second moment (AMSGrad)",
    "amsbound": "use the running maximum of the second moment (AMSBound)",
    "lr_decay": "learning-rate decay: step ``t`` uses ``lr / (1 + (t - 1) * lr_decay)``",
    "initial_accumulator_value": "initial value of the sum of squared gradients",
    "alpha": "smoothing constant of the running average of the squared gradient",
    "centered": "divide by the estimated variance of the gradient (its second moment minus its mean squared)",
    "rho": "coefficient of the running averages of the squared gradient and squared update",
    "momentum_decay": "momentum decay (``psi``): the momentum coefficient at step ``t`` is "
                      "``beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``",
    "lambd": "decay term",
    "t0": "step at which averaging starts",
    "etas": "multiplicative decrease and increase factors of the step sizes (``etaminus``, ``etaplus``)",
    "step_sizes": "minimal and maximal step size",
    "final_lr": "the SGD learning rate the bounds converge to (scaled with ``lr`` by schedulers)",
    "gamma": "convergence speed of the bounds",
    "bias_correction": "divide the moments by ``1 - beta**t``",
    "cautious": "the cautious mask (Liang et al., 2024): an element moves only where its step goes against its "
                "gradient, the kept steps scaled by ``n / (kept + 1)`` over the tensor's ``n`` elements (a second "
                "pass counts them); the option is kept in the param groups only when set",
    "beta2_decay": "decay rate of the second-moment coefficient: ``beta2_t = 1 - t ** beta2_decay``",
    "d": "clipping threshold of the update's root mean square",
    "state_dtype": "the dtype of the state buffers: None (the parameters' dtype, as torch), ``'float32'`` (beside "
                   "float32, float16 or bfloat16 parameters) or ``'bfloat16'`` (beside float32 or bfloat16 parameters; "
                   "needs ml_dtypes imported); the update is computed in float32 and each stored value rounded once; "
                   "kept in the param groups only when set",
    "master_weights": "how float16/bfloat16 parameters keep what rounding drops: None (nothing, as torch), "
                      "``'kahan'`` (a compensation buffer ``kahan_comp`` in the state's dtype: the step computes "
                      "``y = (u - p) + c``, stores ``t = round(p + y)`` and keeps ``c = y - (t - p)``, as the optimi "
                      "library's Kahan summation) or ``'remainder'`` (bfloat16 parameters: an int16 buffer "
                      "``master_low_bits`` holds the low 16 bits of a float32 master, ``master = (p_bits << 16) + "
                      "low``; the step updates the master exactly as a float32 parameter and stores it split again, "
                      "the parameter being the master rounded to nearest, ties away from zero; 2 bytes per element) or "
                      "``'float32'`` (a float32 copy ``master`` of each float16/bfloat16 parameter, stepped as a float32 "
                      "parameter and stored rounded to nearest even; 4 bytes per element) or ``'stochastic'`` "
                      "(float16/bfloat16 parameters, no extra buffer: each new value rounded up or down with probability in "
                      "proportion to its distance, so rounding is unbiased on average, with random bits from a "
                      "counter-based generator keyed by the group's ``rounding_seed`` (default 0), its "
                      "``rounding_step`` (counted by each step) and the element's index: the same at any thread "
                      "count). With a master, the master "
                      "is the weight: an array written into the parameter directly is overwritten by the next step "
                      "(write new weights before the first step, or drop the optimizer's state). Kept in the param "
                      "groups only when set",
    "foreach": "accepted for compatibility with torch (fastopt always runs one fused kernel)",
    "fused": "accepted for compatibility with torch (fastopt always runs one fused kernel)",
    "capturable": "torch's CUDA-graph option: only False is supported",
    "differentiable": "torch's autograd option: only False is supported",
}


def arguments_section(cls: type, overrides: dict[str, str]) -> str:
    """The "Arguments" section of an optimizer's docstring, from its ``__init__`` signature and
    :data:`DOCS` (with ``overrides``)."""
    lines = ["Arguments:", ""]
    for p in inspect.signature(cls.__init__).parameters.values():  # type: ignore[misc]
        if p.name == "self":
            continue
        doc = overrides.get(p.name) or DOCS.get(p.name)
        if doc is None:
            raise TypeError(f"{cls.__name__}: option {p.name!r} has no description in DOCS or _option_docs")
        default = "" if p.default is inspect.Parameter.empty else f" (default ``{p.default!r}``)"
        lines.append(f"- ``{p.name}``{default}: {doc}")
    return "\n".join(lines)
