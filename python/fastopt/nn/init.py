"""Weight initializers with ``torch.nn.init``'s names, arguments and formulas.

Each fills a float32/float64 ndarray (or a :class:`fastopt.Parameter`'s data) in place and
returns it. ``generator=`` takes a ``numpy.random.Generator``; calls with generators seeded
alike fill arrays alike. Without one, a process-wide generator is used (seed it with
:func:`manual_seed`). Values are drawn in float64 and rounded to the array's dtype.

Gains (``calculate_gain``): linear/conv/sigmoid 1, tanh 5/3, relu sqrt(2),
leaky_relu sqrt(2 / (1 + slope^2)), selu 3/4. Bounds: ``xavier_uniform_`` U(-a, a) with
``a = gain sqrt(6 / (fan_in + fan_out))``; ``kaiming_uniform_`` U(-b, b) with
``b = gain sqrt(3 / fan)``; the normal variants use std ``gain sqrt(2 / (fan_in + fan_out))``
and ``gain / sqrt(fan)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..parameter import FLOAT_DTYPES, Parameter
from .functional import _number

__all__ = [
    "calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
    "eye_", "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
    "orthogonal_", "sparse_", "manual_seed",
]

_default_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seeds the generator used when a call gets no ``generator=``."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def _rng(generator: Any) -> np.random.Generator:
    if generator is None:
        return _default_rng
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return generator


def _tensor(tensor: Any) -> np.ndarray:
    if isinstance(tensor, Parameter):
        tensor = tensor.data
    if not isinstance(tensor, np.ndarray):
        raise TypeError(f"tensor must be a numpy.ndarray or fastopt.Parameter, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tensor has dtype {tensor.dtype}; initializers fill float32 or float64 arrays")
    if not tensor.flags.writeable:
        raise ValueError("tensor is read-only but is filled in place")
    return tensor


_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def calculate_gain(nonlinearity: str, param: Any = None) -> float:
    """The recommended gain for a nonlinearity (torch's table)."""
    if nonlinearity in _LINEAR or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _fill(t: np.ndarray, values: np.ndarray) -> np.ndarray:
    t[...] = values.reshape(t.shape)
    return t


def uniform_(tensor: Any, a: float = 0.0, b: float = 1.0, generator: Any = None) -> np.ndarray:
    """Fills with U(a, b)."""
    t = _tensor(tensor)
    return _fill(t, _rng(generator).uniform(_number(a, "a"), _number(b, "b"), t.size))


def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, generator: Any = None) -> np.ndarray:
    """Fills with N(mean, std^2)."""
    t = _tensor(tensor)
    std = _number(std, "std")
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")
    return _fill(t, _rng(generator).normal(_number(mean, "mean"), std, t.size))


def trunc_normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0, generator: Any = None) -> np.ndarray:
    """Fills with N(mean, std^2) truncated to [a, b] (exact, by rejection)."""
    t = _tensor(tensor)
    mean, std, a, b = (_number(v, k) for v, k in ((mean, "mean"), (std, "std"), (a, "a"), (b, "b")))
    if not a < b:
        raise ValueError(f"a must be less than b, got a={a}, b={b}")
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("mean is more than 2 std from [a, b] in nn.init.trunc_normal_. "
                      "The distribution of values may be incorrect.", stacklevel=2)
    rng = _rng(generator)
    out = np.empty(t.size)
    filled = 0
    while filled < t.size:
        draw = rng.normal(mean, std, max(2 * (t.size - filled), 64))
        keep = draw[(draw >= a) & (draw <= b)][: t.size - filled]
        out[filled:filled + keep.size] = keep
        filled += keep.size
    return _fill(t, out)


def constant_(tensor: Any, val: float) -> np.ndarray:
    t = _tensor(tensor)
    t[...] = _number(val, "val")
    return t


def ones_(tensor: Any) -> np.ndarray:
    return constant_(tensor, 1.0)


def zeros_(tensor: Any) -> np.ndarray:
    return constant_(tensor, 0.0)


def eye_(tensor: Any) -> np.ndarray:
    """The identity in a 2-D array (ones on the diagonal)."""
    t = _tensor(tensor)
    if t.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    t[...] = np.eye(*t.shape, dtype=t.dtype)
    return t


def dirac_(tensor: Any, groups: int = 1) -> np.ndarray:
    """The Dirac delta of a 3-, 4- or 5-D convolution weight (identity per group)."""
    t = _tensor(tensor)
    if t.ndim not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if t.shape[0] % groups != 0:
        raise ValueError("dim 0 must be divisible by groups")
    per = t.shape[0] // groups
    t[...] = 0
    centre = tuple(s // 2 for s in t.shape[2:])
    for g in range(groups):
        for d in range(min(per, t.shape[1])):
            t[(g * per + d, d) + centre] = 1
    return t


def _fans(t: np.ndarray) -> tuple[int, int]:
    if t.ndim < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = math.prod(t.shape[2:])
    return t.shape[1] * receptive, t.shape[0] * receptive


def _fan(t: np.ndarray, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _fans(t)
    return fan_in if mode == "fan_in" else fan_out


def xavier_uniform_(tensor: Any, gain: float = 1.0, generator: Any = None) -> np.ndarray:
    t = _tensor(tensor)
    fan_in, fan_out = _fans(t)
    a = math.sqrt(3.0) * _number(gain, "gain") * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill(t, _rng(generator).uniform(-a, a, t.size))


def xavier_normal_(tensor: Any, gain: float = 1.0, generator: Any = None) -> np.ndarray:
    t = _tensor(tensor)
    fan_in, fan_out = _fans(t)
    std = _number(gain, "gain") * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill(t, _rng(generator).normal(0.0, std, t.size))


def _kaiming_std(t: np.ndarray, a: Any, mode: str, nonlinearity: str) -> float | None:
    if 0 in t.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return None
    return calculate_gain(nonlinearity, a) / math.sqrt(_fan(t, mode))


def kaiming_uniform_(tensor: Any, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator: Any = None) -> np.ndarray:
    t = _tensor(tensor)
    std = _kaiming_std(t, a, mode, nonlinearity)
    if std is None:
        return t
    bound = math.sqrt(3.0) * std
    return _fill(t, _rng(generator).uniform(-bound, bound, t.size))


def kaiming_normal_(tensor: Any, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator: Any = None) -> np.ndarray:
    t = _tensor(tensor)
    std = _kaiming_std(t, a, mode, nonlinearity)
    if std is None:
        return t
    return _fill(t, _rng(generator).normal(0.0, std, t.size))


def orthogonal_(tensor: Any, gain: float = 1, generator: Any = None) -> np.ndarray:
    """A (semi-)orthogonal matrix from the QR decomposition of a Gaussian one, as torch:
    rows of the 2-D view ``(shape[0], rest)`` are orthonormal (or its columns, if fewer)."""
    t = _tensor(tensor)
    if t.ndim < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if t.size == 0:
        return t
    rows = t.shape[0]
    cols = t.size // rows
    flat = _rng(generator).normal(0.0, 1.0, (rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(t, q * _number(gain, "gain"))


def sparse_(tensor: Any, sparsity: float, std: float = 0.01, generator: Any = None) -> np.ndarray:
    """N(0, std^2) with ``ceil(sparsity * rows)`` zeros in every column of a 2-D array."""
    t = _tensor(tensor)
    if t.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    sparsity = _number(sparsity, "sparsity")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be between 0 and 1, got {sparsity}")
    rows, cols = t.shape
    zeros = int(math.ceil(sparsity * rows))
    rng = _rng(generator)
    values = rng.normal(0.0, _number(std, "std"), (rows, cols))
    for c in range(cols):
        values[rng.permutation(rows)[:zeros], c] = 0
    return _fill(t, values)
