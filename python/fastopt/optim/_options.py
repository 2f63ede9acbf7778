"""Each optimizer option's check, declared once and shared by every optimizer that takes the
option (torch's messages). An optimizer lists its options in ``_options``; the base class runs
their checks when a group is added or loaded, then the optimizer's own ``_validate_extra``."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["CHECKS", "validate", "real", "check_bool", "check_betas", "check_nonnegative"]


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


def check_betas(betas: Any, name: str = "betas") -> None:
    """torch's checks of a ``betas`` pair, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair of floats, got {betas!r}")
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
    )},
}


def validate(group: dict[str, Any], options: tuple[str, ...]) -> None:
    """Runs the check of each of ``options`` on the group's value."""
    for name in options:
        CHECKS[name](group[name], name)
