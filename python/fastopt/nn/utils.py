"""Gradient clipping with torch.nn.utils' names and semantics.

The norm over all gradients is one multi-threaded Rust reduction, accumulated in double
precision in fixed blocks, so it does not depend on the thread count; scaling and clamping are
one in-place Rust pass each. The clip coefficient is computed as torch computes it, in the
gradients' dtype: ``min(1, max_norm * (1 / (total_norm + 1e-6)))``.
"""

from __future__ import annotations

import math
import numbers
import types
import warnings
from typing import Any

import numpy as np

from .. import _fastopt
from ..backends import is_device_array
from ..parameter import FLOAT_DTYPES, Parameter, is_half

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]

def _as_list(tensors: Any, what: str) -> list:
    if isinstance(tensors, (np.ndarray, Parameter)) or is_device_array(tensors):
        return [tensors]
    if isinstance(tensors, (set, frozenset)):
        raise TypeError(f"{what} must be an ordered collection, not a set")
    return list(tensors)


def _by_dtype(arrays: list[np.ndarray], what: str) -> dict[np.dtype, list[np.ndarray]]:
    groups: dict[np.dtype, list[np.ndarray]] = {}
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{what}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES and not is_half(a.dtype):
            raise TypeError(f"{what}[{i}] has dtype {a.dtype}; gradients must be float32, float64, float16 or "
                            "bfloat16 (ml_dtypes)")
        groups.setdefault(a.dtype, []).append(a)
    return groups


def _norm(group: list[np.ndarray], norm_type: float) -> float:
    """The norm of one dtype's arrays; the kernel reads 16-bit ones as their exact float32
    values and accumulates their norm as float32 arrays' (torch rounds each tensor's norm to
    the 16-bit dtype)."""
    return _fastopt.total_norm(group, norm_type)


def _scale_(group: list[np.ndarray], coef: float) -> None:
    """Multiplies every element by ``coef`` in place; 16-bit ones in float32, rounded once."""
    _fastopt.scale_(group, coef)


def _combine(norms: list[float], norm_type: float) -> float:
    """The norm of per-dtype norms (only with mixed dtypes)."""
    if norm_type == math.inf:
        return max(norms) if not any(math.isnan(n) for n in norms) else math.nan
    if norm_type == -math.inf:
        return min(norms) if not any(math.isnan(n) for n in norms) else math.nan
    if norm_type == 0:
        return float(sum(norms))
    return float(sum(n**norm_type for n in norms) ** (1.0 / norm_type))


def _device(arrays: list, what: str) -> Any:
    """The CUDA backend, for a list of CuPy arrays (all of them must be)."""
    from ..backends import cuda  # noqa: PLC0415 (only for CuPy arrays)

    for i, a in enumerate(arrays):
        if not is_device_array(a):
            raise TypeError(f"{what}[{i}] is {type(a).__name__}, but {what}[0] is a CuPy array: pass one kind")
    return cuda


def _check_finite(total: Any, norm_type: float) -> None:
    """torch's error for a NaN or infinite total norm (``error_if_nonfinite``); a CuPy
    norm is read from the GPU for it."""
    if not math.isfinite(float(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )


def get_total_norm(tensors: Any, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> np.floating:
    """The ``norm_type`` norm of all elements of ``tensors`` (gradient arrays) together, as a
    numpy scalar of their dtype (float64 when dtypes are mixed, float32 for none or for
    float16/bfloat16 gradients, whose norm is accumulated from their exact float32 values).

    ``norm_type``: 2, 1, ``inf``, ``-inf``, 0 or any p > 0. As in torch, the result is the
    norm of the per-tensor norms (for 0: the number of tensors with a non-zero element). With
    ``error_if_nonfinite`` a NaN or infinite norm raises RuntimeError, as torch."""
    arrays = _as_list(tensors, "tensors")
    norm_type = float(norm_type)
    if not arrays:
        return np.float32(0.0)
    if is_device_array(arrays[0]):
        # CuPy arrays: a 0-d CuPy array, computed on the device (norm_type 2, 1, inf or p > 0)
        total = _device(arrays, "tensors").total_norm(arrays, norm_type)
        if error_if_nonfinite:
            _check_finite(total, norm_type)  # (waits for the GPU, as torch's check does)
        return total
    groups = _by_dtype(arrays, "tensors")
    if math.isinf(norm_type) and any(a.size == 0 for a in arrays):
        raise RuntimeError(
            f"cannot compute the {'' if norm_type > 0 else '-'}inf norm of an empty gradient because the operation "
            "does not have an identity (as torch)"
        )
    if norm_type == 0:
        # torch takes the norm of the per-tensor norms, which for p=0 counts the tensors that
        # have a non-zero element (not the non-zero elements).
        norms = [float(sum(_norm([a], 0.0) > 0 for a in group)) for group in groups.values()]
    else:
        norms = [_norm(group, norm_type) for group in groups.values()]
    if len(norms) == 1:
        dtype = next(iter(groups))
        total = (np.float32 if is_half(dtype) else dtype.type)(norms[0])
    else:
        total = np.float64(_combine(norms, norm_type))
    if error_if_nonfinite:
        _check_finite(total, norm_type)
    return total


def clip_coefficient(max_norm: float, total_norm: np.floating) -> np.floating:
    """torch's ``clamp(max_norm / (total_norm + 1e-6), max=1.0)``, in ``total_norm``'s dtype
    and order of operations (its division by a tensor is a reciprocal and a multiplication)."""
    t = total_norm.dtype.type
    coef = (t(1.0) / (total_norm + t(1e-6))) * t(max_norm)
    return np.minimum(coef, t(1.0))


def _grads_of(parameters: Any) -> list[np.ndarray]:
    params = _as_list(parameters, "parameters")
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(
                f"parameters[{i}] is a {type(p).__name__}; pass fastopt.Parameter objects "
                "(for bare gradient arrays use get_total_norm and clip_grads_with_norm_ on them)"
            )
    return [p.grad for p in params if p.grad is not None]


def clip_grads_with_norm_(parameters: Any, max_norm: float, total_norm: Any) -> None:
    """Scales the gradients of ``parameters`` in place by ``min(1, max_norm / (total_norm +
    1e-6))``. ``parameters`` may also be a list of gradient arrays."""
    items = _as_list(parameters, "parameters")
    grads = [p.grad for p in items if p.grad is not None] if all(isinstance(p, Parameter) for p in items) else items
    if not grads:
        return
    if is_device_array(grads[0]):
        cuda = _device(grads, "grads")
        xp = cuda.require()
        t = xp.asarray(total_norm)
        coef = xp.minimum((1.0 / (t + t.dtype.type(1e-6))) * t.dtype.type(max_norm), 1.0).astype(np.float64)
        cuda.scale_(grads, coef)
        return
    total = total_norm if isinstance(total_norm, np.floating) else np.float64(total_norm)
    coef = float(clip_coefficient(float(max_norm), total))
    for group in _by_dtype(grads, "grads").values():
        _scale_(group, coef)


def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> np.floating:
    """Scales the gradients of ``parameters`` in place so that their total ``norm_type`` norm is
    at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``); returns the norm before clipping.

    One read pass for the norm and one pass to scale. To clip inside the optimizer's own pass
    instead, use ``optimizer.step(max_grad_norm=...)``.

    Example:

    >>> p = fo.Parameter(np.zeros(2))
    >>> p.grad = np.array([3.0, 4.0])
    >>> float(fo.nn.utils.clip_grad_norm_([p], max_norm=1.0))  # the norm before clipping
    5.0
    >>> np.round(p.grad, 6)
    array([0.6, 0.8])
    """
    if isinstance(parameters, types.GeneratorType):
        parameters = list(parameters)
        if not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=2)
    grads = _grads_of(parameters)
    if grads and is_device_array(grads[0]):
        # CuPy arrays: norm, coefficient and scaling on the device, without waiting for it
        total = _device(grads, "grads").clip_grad_norm_(grads, float(max_norm), norm_type)
        if error_if_nonfinite:
            _check_finite(total, norm_type)
        return total
    total = get_total_norm(grads, norm_type, error_if_nonfinite)
    clip_grads_with_norm_(grads, max_norm, total)
    return total


def clip_grad_value_(parameters: Any, clip_value: float) -> None:
    """Clamps every gradient element of ``parameters`` into ``[-clip_value, clip_value]``
    (torch's ``clamp_(min=-clip_value, max=clip_value)``: with a negative ``clip_value`` the
    bounds cross and every element that is not NaN becomes ``clip_value``, as in torch)."""
    grads = _grads_of(parameters)
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"clip_value must be a real number, got {type(clip_value).__name__}")
    clip_value = float(clip_value)
    if grads and is_device_array(grads[0]):
        _device(grads, "grads")
        for g in grads:  # (min(max(g, -v), v): NaN stays NaN, crossed bounds give v, as torch's clamp)
            g.clip(-clip_value, clip_value, out=g)
        return
    if clip_value < 0:
        groups = _by_dtype(grads, "grads")  # checks every gradient before any changes
        for group in groups.values():
            for g in group:
                np.copyto(g, clip_value, where=~np.isnan(g))
        return
    for group in _by_dtype(grads, "grads").values():
        _fastopt.clamp_(group, clip_value)  # (16-bit ones clamped in float32, rounded once: torch's result)
