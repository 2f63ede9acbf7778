"""Checking hand-written gradients: :func:`gradcheck` compares a module's (or a function's)
analytic backward with central finite differences in float64."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .nn import init as _init
from .nn.modules import Module

__all__ = ["gradcheck", "GradcheckError", "GradcheckResult"]


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an analytic gradient disagrees with finite differences."""


@dataclass
class GradcheckResult:
    """What :func:`gradcheck` found. ``ok`` is also the truth value; ``str()`` is the report."""

    ok: bool
    checked: int
    worst_name: str
    worst_index: tuple
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    atol: float
    rtol: float

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        return (
            f"gradcheck {verdict}: {self.checked} partial derivatives checked (central differences, float64)\n"
            f"  worst element: {self.worst_name}[{', '.join(map(str, self.worst_index))}]\n"
            f"    analytic {self.analytic:.10g}   numeric {self.numeric:.10g}\n"
            f"    |error| {self.abs_error:.3g}   relative {self.rel_error:.3g}   "
            f"(allowed: {self.atol:g} + {self.rtol:g} * |numeric|)"
        )


def _as_tuple(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _float64(a: Any) -> Any:
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        return np.array(a, dtype=np.float64, copy=True)
    return a


def gradcheck(
    module_or_function: Module | Callable[..., Any],
    inputs: Any,
    *,
    backward: Callable[..., Any] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    seed: int = 0,
    check_parameters: bool = True,
    raise_exception: bool = True,
) -> GradcheckResult:
    """Checks the analytic backward against central finite differences, in float64.

    For a :class:`fastopt.nn.Module` (a layer, a ``Sequential``, or a loss taking
    ``(input, target)``): a float64 copy of the module is used (the module itself is left
    untouched), the forward output is contracted with a random cotangent ``v`` (normal, from
    ``seed``; a number for a scalar loss), and ``backward(v)``'s input gradient (of the first
    input) and the parameter gradients it accumulates are compared with
    ``(L(a + eps) - L(a - eps)) / (2 eps)`` for every element ``a`` of the input and of every
    parameter, where ``L = sum(v * forward(...))``. Every evaluation starts from the same
    state (a fresh copy of the module, random generators rewound), so dropout masks and
    running statistics do not drift.

    For a plain function ``f(*inputs)``, pass ``backward(grad_output, *inputs)`` returning the
    gradient of each float input (one array, or a tuple in the order of the float inputs).

    An element fails when ``|analytic - numeric| > atol + rtol * |numeric|``. Returns a
    :class:`GradcheckResult` describing the worst element; raises :class:`GradcheckError`
    with that report when an element fails and ``raise_exception`` is true.
    """
    args = tuple(_float64(a) for a in _as_tuple(inputs))
    if not args or not isinstance(args[0], np.ndarray):
        raise TypeError("inputs must be an ndarray or a tuple whose first element is an ndarray")
    rng = np.random.default_rng(seed)
    default_state = copy.deepcopy(_init._default_rng.bit_generator.state)

    if isinstance(module_or_function, Module):
        if backward is not None:
            raise ValueError("backward is only for plain functions: a module has its own")
        template = copy.deepcopy(module_or_function).double()
        if args[0].dtype != np.float64:
            raise TypeError(f"the first input must be a float array (it is differentiated), got dtype {args[0].dtype}")
        wrt = [0]
        param_names = [n for n, _ in template.named_parameters()] if check_parameters else []

        def run(perturb: tuple[str, int, tuple, float] | None = None, v: Any = None):
            _init._default_rng.bit_generator.state = copy.deepcopy(default_state)
            m = copy.deepcopy(template)
            a = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
            if perturb is not None:
                kind, i, idx, h = perturb
                target = a[i] if kind == "input" else dict(m.named_parameters())[param_names[i]].data
                target[idx] += h
            out = m(*a)
            if v is None:
                return out
            grad_in = m.backward(v)
            params = dict(m.named_parameters())
            pgrads = [params[n].grad for n in param_names]
            return out, [grad_in], pgrads

    else:
        if not callable(module_or_function):
            raise TypeError(f"module_or_function must be a fastopt.nn.Module or a callable, got {type(module_or_function).__name__}")
        if backward is None:
            raise ValueError("a plain function needs backward=: backward(grad_output, *inputs) -> gradient(s)")
        fn = module_or_function
        wrt = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype == np.float64]
        param_names = []

        def run(perturb: tuple[str, int, tuple, float] | None = None, v: Any = None):
            _init._default_rng.bit_generator.state = copy.deepcopy(default_state)
            a = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
            if perturb is not None:
                _, i, idx, h = perturb
                a[i][idx] += h
            out = fn(*a)
            if v is None:
                return out
            grads = backward(v, *a)
            grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
            if len(grads) != len(wrt):
                raise ValueError(f"backward returned {len(grads)} gradients for {len(wrt)} float inputs")
            return out, grads, []

    out0 = np.asarray(run())
    v = rng.standard_normal(out0.shape) if out0.ndim else float(rng.uniform(0.5, 1.5))
    vv = np.asarray(v, dtype=np.float64)
    _, grads_in, grads_p = run(v=(v if not isinstance(v, np.ndarray) else v.astype(out0.dtype)))

    def objective(perturb) -> float:
        return float(np.sum(np.asarray(run(perturb), dtype=np.float64) * vv))

    targets: list[tuple[str, str, int, tuple, np.ndarray | None]] = []
    for k, i in enumerate(wrt):
        targets.append((f"input {i}", "input", i, args[i].shape, grads_in[k]))
    for j, n in enumerate(param_names):
        shape = dict(template.named_parameters())[n].shape
        targets.append((f"parameter {n!r}", "param", j, shape, grads_p[j]))

    worst: tuple[float, str, tuple[int, ...], float, float] = (-1.0, "", (), 0.0, 0.0)
    checked = 0
    for name, kind, i, shape, analytic in targets:
        if analytic is None:
            analytic = np.zeros(shape)
        analytic = np.asarray(analytic, dtype=np.float64)
        if analytic.shape != shape:
            raise ValueError(f"the analytic gradient of {name} has shape {analytic.shape}, expected {shape}")
        for idx in np.ndindex(*shape):
            num = (objective((kind, i, idx, eps)) - objective((kind, i, idx, -eps))) / (2 * eps)
            ana = float(analytic[idx])
            score = abs(ana - num) / (atol + rtol * abs(num))
            checked += 1
            if not np.isfinite(score):
                score = np.inf
            if score > worst[0]:
                worst = (score, name, idx, ana, num)
    _init._default_rng.bit_generator.state = default_state

    score, name, idx, ana, num = worst
    abs_err = abs(ana - num)
    result = GradcheckResult(
        ok=bool(score <= 1.0),
        checked=checked,
        worst_name=name,
        worst_index=tuple(int(i) for i in idx),
        analytic=ana,
        numeric=num,
        abs_error=abs_err,
        rel_error=abs_err / abs(num) if num else float("inf") if abs_err else 0.0,
        atol=atol,
        rtol=rtol,
    )
    if not result.ok and raise_exception:
        raise GradcheckError(str(result))
    return result
