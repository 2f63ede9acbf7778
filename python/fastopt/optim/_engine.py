"""The one hop from Python to a kernel: every optimizer step calls ``_kernels.step`` with a
``Rule`` (the rule's name and one group's typed hyperparameters) and the group's arrays.
``_kernels`` is the compiled module; it is named here once, so a test can stand in for it and
a second backend would plug in here."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _fastopt

_kernels = _fastopt
Rule = _fastopt.Rule


def step(
    rule: Any,
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    states: Sequence[Sequence[np.ndarray]],
    counters: Sequence[Sequence[np.ndarray]],
    fresh: Sequence[bool] | None = None,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: Any = None,
) -> list[float] | None:
    """One step of ``rule`` over a group. ``states`` and ``counters`` are lists of
    per-parameter lists in the order ``rule.layout()`` gives; ``cache`` is the group's
    ``CheckCache``. Returns None, or ``prodigy``'s values (its first pass's sums, or
    the new estimate)."""
    # Positional: the compiled function parses keywords slower than it checks a tensor.
    return _kernels.step(rule, params, grads, states, counters, fresh, grad_scale, check_only, cache)


def adafactor_step(*args: Any, **kwargs: Any) -> None:
    """Adafactor's step (its state is not shaped like its parameters, so it is not a
    ``Rule``): see :func:`fastopt.optim.adafactor.adafactor`."""
    _kernels.adafactor_step(*args, **kwargs)
