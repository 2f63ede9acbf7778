"""Activations, softmax, losses and batch normalization with ``torch.nn.functional``'s names.

Every forward takes ``out=`` (a preallocated array of the input's shape and dtype; without it
a new array is returned), and every activation has a ``<name>_backward`` that maps the gradient
of the output to the gradient of the input from what the forward saved: the *output* for
``relu``, ``sigmoid``, ``tanh``, ``softmax`` and ``log_softmax``, the *input* for the others.
Where torch has an in-place variant (``relu_``, ``elu_``, ...), so does fastopt.

The element-wise work is one multi-threaded Rust pass with SIMD transcendentals (see
``rust/fastopt-core/src/math.rs`` for their measured accuracy: float32 within 2.4 ulp of the
float64 result for exp, tanh and erf, float64 within 5e-16 relative). Results are the same for
every thread count. Inputs must be float32 or float64 ndarrays; a non-contiguous input is
copied, ``out`` must be C-contiguous and must not overlap the inputs (except the documented
in-place forms). Errors are ``TypeError``/``ValueError`` naming the argument, raised before
anything is written.

Where fastopt differs from torch on purpose (more accurate, same function): ``gelu`` evaluates
``x * erfc(-x / sqrt 2) / 2`` and ``gelu(approximate='tanh')`` evaluates ``x * sigmoid(2u)``
instead of ``x * (1 + tanh(u)) / 2``, so the negative tail does not cancel; sums in softmax,
cross-entropy and BatchNorm statistics accumulate in float64.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .. import _fastopt
from ..backends import is_device_array, kernels_for, namespace
from ..parameter import FLOAT_DTYPES

__all__ = [
    "relu", "relu_", "relu_backward",
    "leaky_relu", "leaky_relu_", "leaky_relu_backward",
    "prelu", "prelu_backward",
    "elu", "elu_", "elu_backward",
    "selu", "selu_", "selu_backward",
    "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward",
    "gelu", "gelu_backward",
    "silu", "silu_backward",
    "softplus", "softplus_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "cross_entropy", "cross_entropy_backward",
    "mse_loss", "mse_loss_backward",
    "batch_norm", "batch_norm_backward", "sync_batch_norm", "sync_batch_norm_backward",
]

#: selu's constants, as torch's.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_REDUCTIONS = ("none", "mean", "sum")


# ----------------------------------------------------------------------------- checks


def _is_array(x: Any) -> bool:
    """A NumPy array, or a CuPy array (the kernels' two kinds)."""
    return isinstance(x, np.ndarray) or is_device_array(x)


def _array(x: Any, what: str) -> np.ndarray:
    """A float32/float64 C-contiguous array (a non-contiguous one is copied); a CuPy array
    stays on its GPU."""
    if not _is_array(x):
        raise TypeError(f"{what} must be a numpy.ndarray (or a CuPy array), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} has dtype {x.dtype}; fastopt kernels take float32 or float64 arrays")
    if not x.flags.c_contiguous or not getattr(x.flags, "aligned", True):
        x = namespace(x).ascontiguousarray(x)
    return x


def _host_only(x: Any, name: str) -> None:
    """Refuses a CuPy array for a function that has no CUDA kernel yet."""
    if is_device_array(x):
        raise TypeError(f"{name} takes NumPy arrays: it has no CUDA kernel yet (on the GPU: the activations, "
                        "softmax, cross_entropy and batch_norm)")


def _same_kind(x: Any, other: Any, what: str, ref: str) -> None:
    if type(other) is not type(x):
        raise TypeError(f"{what} is a {type(other).__module__.split('.')[0]} array but {ref} is a "
                        f"{type(x).__module__.split('.')[0]} array: both must live on the same device")


def _like(x: np.ndarray, other: Any, what: str, ref: str = "input") -> np.ndarray:
    other = _array(other, what)
    _same_kind(x, other, what, ref)
    if other.dtype != x.dtype:
        raise TypeError(f"{what} has dtype {other.dtype} but {ref} has dtype {x.dtype} (fastopt never casts implicitly)")
    if other.shape != x.shape:
        raise ValueError(f"{what} has shape {other.shape} but {ref} has shape {x.shape}")
    return other


def _out(x: np.ndarray, out: Any, shape: tuple | None = None) -> np.ndarray:
    shape = x.shape if shape is None else shape
    if out is None:
        return namespace(x).empty(shape, x.dtype)
    if not _is_array(out):
        raise TypeError(f"out must be a numpy.ndarray (or a CuPy array), got {type(out).__name__}")
    _same_kind(x, out, "out", "input")
    if out.dtype != x.dtype:
        raise TypeError(f"out has dtype {out.dtype} but input has dtype {x.dtype} (fastopt never casts implicitly)")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape} but must have shape {shape}")
    return out


def _inplace(x: Any) -> np.ndarray:
    if not _is_array(x):
        raise TypeError(f"input must be a numpy.ndarray (or a CuPy array), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input has dtype {x.dtype}; fastopt kernels take float32 or float64 arrays")
    if not x.flags.c_contiguous:
        raise ValueError("input must be C-contiguous to be updated in place")
    if not getattr(x.flags, "writeable", True):
        raise ValueError("input is read-only but is updated in place")
    return x


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {type(v).__name__}")
    return float(v)


def _forward(name: str, input: Any, out: Any, inplace: bool, a: float = 0.0, b: float = 0.0, c: float = 0.0) -> np.ndarray:
    if inplace:
        if out is not None:
            raise ValueError("out cannot be given with inplace=True")
        x = _inplace(input)
        kernels_for(x).act_forward(name, x, x, a, b, c)
        return x
    x = _array(input, "input")
    o = _out(x, out)
    kernels_for(x).act_forward(name, o if o is x else x, o, a, b, c)
    return o


def _backward(name: str, grad_output: Any, saved: Any, saved_name: str, out: Any, a: float = 0.0, b: float = 0.0, c: float = 0.0) -> np.ndarray:
    g = _array(grad_output, "grad_output")
    s = _like(g, saved, saved_name, "grad_output")
    o = _out(g, out)
    kernels_for(g).act_backward(name, o if o is g else g, s, o, a, b, c)
    return o


# ----------------------------------------------------------------------------- activations


def relu(input: np.ndarray, inplace: bool = False, *, out: np.ndarray | None = None) -> np.ndarray:
    """``max(x, 0)`` (NaN stays NaN).

    Example:

    >>> fo.nn.functional.relu(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    """
    return _forward("relu", input, out, inplace)


def relu_(input: np.ndarray) -> np.ndarray:
    """``relu`` in place."""
    return relu(input, inplace=True)


def relu_backward(grad_output: np.ndarray, output: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``grad_output`` where the forward's ``output`` is positive, else 0."""
    return _backward("relu", grad_output, output, "output", out)


def leaky_relu(input: np.ndarray, negative_slope: float = 0.01, inplace: bool = False, *, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` for x > 0, else ``negative_slope * x``."""
    return _forward("leaky_relu", input, out, inplace, _number(negative_slope, "negative_slope"))


def leaky_relu_(input: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    return leaky_relu(input, negative_slope, inplace=True)


def leaky_relu_backward(grad_output: np.ndarray, input: np.ndarray, negative_slope: float = 0.01, *, out: np.ndarray | None = None) -> np.ndarray:
    return _backward("leaky_relu", grad_output, input, "input", out, _number(negative_slope, "negative_slope"))


def elu(input: np.ndarray, alpha: float = 1.0, inplace: bool = False, *, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` for x > 0, else ``alpha * (exp(x) - 1)`` (computed with expm1)."""
    return _forward("elu", input, out, inplace, _number(alpha, "alpha"), 1.0, 1.0)


def elu_(input: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return elu(input, alpha, inplace=True)


def elu_backward(grad_output: np.ndarray, input: np.ndarray, alpha: float = 1.0, *, out: np.ndarray | None = None) -> np.ndarray:
    return _backward("elu", grad_output, input, "input", out, _number(alpha, "alpha"), 1.0, 1.0)


def selu(input: np.ndarray, inplace: bool = False, *, out: np.ndarray | None = None) -> np.ndarray:
    """``scale * elu(x, alpha)`` with torch's constants."""
    return _forward("elu", input, out, inplace, SELU_ALPHA, SELU_SCALE, 1.0)


def selu_(input: np.ndarray) -> np.ndarray:
    return selu(input, inplace=True)


def selu_backward(grad_output: np.ndarray, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    return _backward("elu", grad_output, input, "input", out, SELU_ALPHA, SELU_SCALE, 1.0)


def sigmoid(input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-x))``."""
    return _forward("sigmoid", input, out, False)


def sigmoid_backward(grad_output: np.ndarray, output: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``grad_output * (1 - y) * y`` from the forward's output ``y``."""
    return _backward("sigmoid", grad_output, output, "output", out)


def tanh(input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    return _forward("tanh", input, out, False)


def tanh_backward(grad_output: np.ndarray, output: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``grad_output * (1 - y * y)`` from the forward's output ``y``."""
    return _backward("tanh", grad_output, output, "output", out)


def _gelu_name(approximate: Any) -> str:
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu(input: np.ndarray, approximate: str = "none", *, out: np.ndarray | None = None) -> np.ndarray:
    r"""``x * Phi(x)`` (``approximate='none'``, exact normal CDF) or torch's tanh form.

    .. math::

        \mathrm{gelu}(x) = x\,\Phi(x) = \frac{x}{2}\,\mathrm{erfc}\!\left(-\frac{x}{\sqrt 2}\right),
        \qquad
        \mathrm{gelu}_{\tanh}(x) = \frac{x}{2}\left(1 + \tanh\!\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right)

    Example:

    >>> x = np.array([-1.0, 0.0, 1.0])
    >>> np.round(fo.nn.functional.gelu(x), 6)
    array([-0.158655,  0.      ,  0.841345])
    >>> np.round(fo.nn.functional.gelu(x, approximate='tanh'), 6)
    array([-0.158808,  0.      ,  0.841192])
    """
    return _forward(_gelu_name(approximate), input, out, False)


def gelu_backward(grad_output: np.ndarray, input: np.ndarray, approximate: str = "none", *, out: np.ndarray | None = None) -> np.ndarray:
    return _backward(_gelu_name(approximate), grad_output, input, "input", out)


def silu(input: np.ndarray, inplace: bool = False, *, out: np.ndarray | None = None) -> np.ndarray:
    """``x * sigmoid(x)``."""
    return _forward("silu", input, out, inplace)


def silu_backward(grad_output: np.ndarray, input: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    return _backward("silu", grad_output, input, "input", out)


def softplus(input: np.ndarray, beta: float = 1.0, threshold: float = 20.0, *, out: np.ndarray | None = None) -> np.ndarray:
    """``log(1 + exp(beta x)) / beta``, or ``x`` where ``beta x > threshold``."""
    return _forward("softplus", input, out, False, _number(beta, "beta"), _number(threshold, "threshold"))


def softplus_backward(grad_output: np.ndarray, input: np.ndarray, beta: float = 1.0, threshold: float = 20.0, *, out: np.ndarray | None = None) -> np.ndarray:
    return _backward("softplus", grad_output, input, "input", out, _number(beta, "beta"), _number(threshold, "threshold"))


def _channel_shape(x: np.ndarray, weight: np.ndarray) -> tuple:
    """The shape ``weight`` broadcasts to along the channel axis (axis 1; none below 2-D)."""
    if weight.ndim != 1:
        raise ValueError(f"weight must be 1-D, got shape {weight.shape}")
    if weight.size == 1:
        return (1,) * max(x.ndim, 1)
    channels = x.shape[1] if x.ndim >= 2 else 1
    if weight.size != channels:
        raise ValueError(f"weight has {weight.size} elements but input has {channels} channels (axis 1)")
    return (1, channels) + (1,) * (x.ndim - 2)


def prelu(input: np.ndarray, weight: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` for x > 0, else ``weight * x``; ``weight`` has one slope or one per channel (axis 1)."""
    _host_only(input, "prelu")
    x = _array(input, "input")
    w = _array(weight, "weight")
    if w.dtype != x.dtype:
        raise TypeError(f"weight has dtype {w.dtype} but input has dtype {x.dtype} (fastopt never casts implicitly)")
    shape = _channel_shape(x, w)
    o = _out(x, out)
    if w.size == 1:
        _fastopt.act_forward("leaky_relu", x, o, float(w.reshape(-1)[0]), 0.0, 0.0)
        return o
    np.multiply(x, w.reshape(shape), out=o)
    np.copyto(o, x, where=x > 0)
    return o


def prelu_backward(grad_output: np.ndarray, input: np.ndarray, weight: np.ndarray, *, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_input, grad_weight)``: ``grad_weight`` sums ``grad_output * x`` where x <= 0."""
    _host_only(grad_output, "prelu_backward")
    g = _array(grad_output, "grad_output")
    x = _like(g, input, "input", "grad_output")
    w = _array(weight, "weight")
    if w.dtype != g.dtype:
        raise TypeError(f"weight has dtype {w.dtype} but grad_output has dtype {g.dtype}")
    shape = _channel_shape(x, w)
    o = _out(g, out)
    neg = ~(x > 0)
    gx = np.where(neg, g * x, 0).astype(np.float64)
    if w.size == 1:
        grad_w = np.array([gx.sum()], dtype=w.dtype)
    else:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        grad_w = gx.sum(axis=axes).astype(w.dtype)
    np.multiply(g, w.reshape(shape), out=o)
    np.copyto(o, g, where=~neg)
    return o, grad_w


# ----------------------------------------------------------------------------- softmax


def _axis(x: np.ndarray, dim: Any) -> tuple[int, int, int]:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    nd = max(x.ndim, 1)
    if not -nd <= dim < nd:
        raise ValueError(f"dim {dim} is out of range for an input with {x.ndim} dimensions")
    dim = int(dim) % nd
    shape = x.shape if x.ndim else (1,)
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def softmax(input: np.ndarray, dim: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``dim``."""
    x = _array(input, "input")
    o = _out(x, out)
    kernels_for(x).softmax(x, o, *_axis(x, dim), False)
    return o


def log_softmax(input: np.ndarray, dim: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """``x - max - log(sum(exp(x - max)))`` along ``dim``."""
    x = _array(input, "input")
    o = _out(x, out)
    kernels_for(x).softmax(x, o, *_axis(x, dim), True)
    return o


def softmax_backward(grad_output: np.ndarray, output: np.ndarray, dim: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """``y * (g - sum(g * y))`` along ``dim``, from the forward's output ``y``."""
    g = _array(grad_output, "grad_output")
    y = _like(g, output, "output", "grad_output")
    o = _out(g, out)
    kernels_for(g).softmax_backward(g, y, o, *_axis(g, dim), False)
    return o


def log_softmax_backward(grad_output: np.ndarray, output: np.ndarray, dim: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """``g - exp(y) * sum(g)`` along ``dim``, from the forward's output ``y``."""
    g = _array(grad_output, "grad_output")
    y = _like(g, output, "output", "grad_output")
    o = _out(g, out)
    kernels_for(g).softmax_backward(g, y, o, *_axis(g, dim), True)
    return o


# ----------------------------------------------------------------------------- losses


def _reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def _ce_layout(input: Any, target: Any) -> tuple[np.ndarray, np.ndarray, tuple, int]:
    """Logits as (rows, classes), targets as int64 (rows,), the per-row shape, the classes."""
    x = _array(input, "input")
    xp = namespace(x)
    if not isinstance(target, xp.ndarray):
        raise TypeError(f"target must be a {xp.__name__}.ndarray of class indices (where input lives), "
                        f"got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype} (class probabilities are not supported)")
    if target.dtype == np.uint64 and target.size and int(target.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"target holds {int(target.max())}, which is no class index (uint64 beyond int64's range)")
    if x.ndim == 0:
        raise ValueError("input must have at least 1 dimension (classes)")
    if x.ndim == 1:
        if target.ndim != 0:
            raise ValueError(f"for 1-D input, target must be 0-d, got shape {target.shape}")
        return x.reshape(1, -1), target.astype(np.int64).reshape(1), (), x.shape[0]
    c = x.shape[1]
    row_shape = (x.shape[0],) + x.shape[2:]
    if target.shape != row_shape:
        raise ValueError(f"target has shape {target.shape} but must have shape {row_shape} for input of shape {x.shape}")
    if x.ndim > 2:
        x = xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(-1, c)
    return x, xp.ascontiguousarray(target, dtype=np.int64).reshape(-1), row_shape, c


def _ignore_index(value: Any) -> int:
    """``ignore_index``: an integer (a bool, a float or a string is refused, never truncated)
    within int64's range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if not np.iinfo(np.int64).min <= value <= np.iinfo(np.int64).max:
        raise ValueError(f"ignore_index must fit in int64, got {value}")
    return value


def _smoothing(label_smoothing: Any) -> float:
    s = _number(label_smoothing, "label_smoothing")
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {s}")
    return s


def cross_entropy(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Any:
    """torch's ``cross_entropy`` on logits ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)`` and
    integer class indices. ``'mean'`` divides by the number of targets that are not
    ``ignore_index`` (NaN when there are none, as torch). Returns a NumPy scalar of the
    input's dtype (``'mean'``/``'sum'``) or an array of per-sample losses (``'none'``)."""
    reduction = _reduction(reduction)
    s = _smoothing(label_smoothing)
    ignore_index = _ignore_index(ignore_index)
    x, t, row_shape, c = _ce_layout(input, target)
    xp = namespace(x)
    losses = xp.empty(t.shape[0], np.float64)
    kernels_for(x).cross_entropy(x, t, c, s, ignore_index, losses)
    if reduction == "none":
        return losses.astype(x.dtype).reshape(row_shape)
    total = losses.sum()
    if xp is not np:  # (CuPy: a 0-d array on the device, no waiting for it)
        if reduction == "sum":
            return total.astype(x.dtype)
        return (total / xp.count_nonzero(t != ignore_index)).astype(x.dtype)
    if reduction == "sum":
        return x.dtype.type(total)
    count = int(np.count_nonzero(t != ignore_index))
    return x.dtype.type(total / count if count else np.nan)


def cross_entropy_backward(
    grad_output: Any,
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The gradient of ``cross_entropy(input, target, ...)`` with respect to the logits, times
    ``grad_output`` (a number for ``'mean'``/``'sum'``, e.g. 1.0; an array of the per-sample
    shape for ``'none'``)."""
    reduction = _reduction(reduction)
    s = _smoothing(label_smoothing)
    ignore_index = _ignore_index(ignore_index)
    x0 = _array(input, "input")
    x, t, row_shape, c = _ce_layout(x0, target)
    xp, k = namespace(x), kernels_for(x)
    valid = t != ignore_index
    if reduction == "none":
        go = xp.asarray(grad_output, dtype=np.float64)
        if go.shape != row_shape:
            raise ValueError(f"grad_output has shape {go.shape} but the per-sample losses have shape {row_shape}")
        scale = xp.where(valid, go.reshape(-1), 0.0)
    elif xp is not np:  # (CuPy: the count stays on the device)
        go_d = xp.asarray(grad_output, dtype=np.float64)
        w_d = go_d if reduction == "sum" else go_d / xp.count_nonzero(valid)
        scale = xp.where(valid, w_d, 0.0)
    else:
        go_: float = _number(grad_output, "grad_output") if not isinstance(grad_output, np.ndarray) else float(grad_output)
        count = int(np.count_nonzero(valid))
        w = go_ if reduction == "sum" else (go_ / count if count else np.nan)
        scale = np.where(valid, w, 0.0)
    o = _out(x0, out)
    if x0.ndim > 2:
        tmp = xp.empty_like(x)
        k.cross_entropy_backward(x, t, c, s, ignore_index, xp.ascontiguousarray(scale), tmp)
        o[...] = xp.moveaxis(tmp.reshape(row_shape[:1] + row_shape[1:] + (c,)), -1, 1)
        return o
    k.cross_entropy_backward(x, t, c, s, ignore_index, xp.ascontiguousarray(scale), o.reshape(x.shape))
    return o


def mse_loss(input: np.ndarray, target: np.ndarray, reduction: str = "mean") -> Any:
    """``(input - target) ** 2``, reduced by ``'mean'`` (default), ``'sum'`` or ``'none'``."""
    _host_only(input, "mse_loss")
    reduction = _reduction(reduction)
    x = _array(input, "input")
    t = _like(x, target, "target")
    d = x - t
    np.multiply(d, d, out=d)
    if reduction == "none":
        return d
    total = d.sum(dtype=np.float64)
    return x.dtype.type(total if reduction == "sum" else total / d.size if d.size else np.nan)


def mse_loss_backward(grad_output: Any, input: np.ndarray, target: np.ndarray, reduction: str = "mean", *, out: np.ndarray | None = None) -> np.ndarray:
    """``2 (input - target) * grad_output`` (divided by the element count for ``'mean'``)."""
    _host_only(input, "mse_loss_backward")
    reduction = _reduction(reduction)
    x = _array(input, "input")
    t = _like(x, target, "target")
    o = _out(x, out)
    np.subtract(x, t, out=o)
    if reduction == "none":
        g = _like(x, grad_output, "grad_output")
        np.multiply(o, 2, out=o)
        np.multiply(o, g, out=o)
    else:
        g_: float = _number(grad_output, "grad_output") if not isinstance(grad_output, np.ndarray) else float(grad_output)
        factor = 2.0 * g_ / (x.size if reduction == "mean" and x.size else 1)
        np.multiply(o, x.dtype.type(factor), out=o)
    return o


# ----------------------------------------------------------------------------- batch norm


def _bn_shape(x: np.ndarray) -> tuple[int, int, int]:
    if x.ndim < 2:
        raise ValueError(f"input must have shape (N, C) or (N, C, *), got {x.shape}")
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _per_channel(v: Any, what: str, c: int, dtype: np.dtype, required: bool = True) -> np.ndarray | None:
    if v is None:
        if required:
            raise ValueError(f"{what} is required")
        return None
    if not _is_array(v):
        raise TypeError(f"{what} must be a numpy.ndarray (or a CuPy array), got {type(v).__name__}")
    if v.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} has dtype {v.dtype}; it must be float32 or float64")
    if v.shape != (c,):
        raise ValueError(f"{what} has shape {v.shape} but input has {c} channels: it must have shape ({c},)")
    return v


def _bn_forward_args(input: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, training: bool,
                     momentum: Any, eps: Any, num_batches_tracked: Any) -> tuple:
    """The checked arguments of :func:`batch_norm` and :func:`sync_batch_norm`:
    ``(x, n, c, l, eps, running_mean, running_var, weight, bias, momentum)``. Everything the
    call will write is checked before the first write."""
    x = _array(input, "input")
    n, c, l = _bn_shape(x)
    eps = _number(eps, "eps")
    # (both given or both None: _per_channel requires them when not training)
    rm: Any = _per_channel(running_mean, "running_mean", c, x.dtype, required=not training)
    rv: Any = _per_channel(running_var, "running_var", c, x.dtype, required=not training)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var must be given together")
    w = _per_channel(weight, "weight", c, x.dtype, required=False)
    b = _per_channel(bias, "bias", c, x.dtype, required=False)
    for v, name in ((w, "weight"), (b, "bias")):
        if v is not None and v.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {v.dtype} but input has dtype {x.dtype} (fastopt never casts implicitly)")
    for v, name in ((rm, "running_mean"), (rv, "running_var"), (w, "weight"), (b, "bias")):
        if v is not None:
            _same_kind(x, v, name, "input")
    xp = namespace(x)
    w = xp.ascontiguousarray(w) if w is not None else None
    b = xp.ascontiguousarray(b) if b is not None else None
    if momentum is not None:
        momentum = _number(momentum, "momentum")
    if num_batches_tracked is not None:
        if not isinstance(num_batches_tracked, np.ndarray) or num_batches_tracked.dtype.kind not in "iu" or num_batches_tracked.size != 1:
            raise TypeError("num_batches_tracked must be a one-element integer numpy array")
    if training and momentum is None and rm is not None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    if training and rm is not None:
        for v, name in ((rm, "running_mean"), (rv, "running_var")):
            if not getattr(v.flags, "writeable", True):  # (CuPy arrays are always writeable)
                raise ValueError(f"{name} is read-only but is updated in place")
        if num_batches_tracked is not None:
            if not num_batches_tracked.flags.writeable:
                raise ValueError("num_batches_tracked is read-only but is updated in place")
            if int(num_batches_tracked.reshape(-1)[0]) >= np.iinfo(num_batches_tracked.dtype).max:
                raise ValueError(
                    f"num_batches_tracked ({num_batches_tracked.dtype}) is at its largest value "
                    f"{np.iinfo(num_batches_tracked.dtype).max}: counting one more batch would overflow (use int64)"
                )
    return x, n, c, l, eps, rm, rv, w, b, momentum


def batch_norm(
    input: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
    num_batches_tracked: np.ndarray | None = None,
    return_stats: bool = False,
) -> Any:
    r"""torch's ``batch_norm`` on ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``.

    Training normalizes with the batch's biased variance and, when running statistics are
    given, updates them in place: ``running = (1 - m) * running + m * batch`` with the
    unbiased variance. ``momentum=None`` means a cumulative average: ``num_batches_tracked``
    (an integer 0-d array) is then required, is incremented, and ``m = 1 / count``; given with
    a momentum it is incremented too, as the BatchNorm modules do. Eval mode normalizes with
    the running statistics. ``return_stats=True`` returns ``(out, mean, invstd)`` (the
    input's dtype) for :func:`batch_norm_backward`.

    In training, per channel :math:`c` over the batch (and spatial) elements:

    .. math::

        y = \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}}\,w_c + b_c, \qquad
        \hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu_c, \qquad
        \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\frac{n}{n - 1}\,\sigma_c^2

    with :math:`\sigma_c^2` the biased batch variance; in eval mode the running statistics
    :math:`\hat\mu, \hat\sigma^2` take the place of :math:`\mu_c, \sigma_c^2`.

    Example:

    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> rm, rv = np.zeros(2), np.ones(2)
    >>> np.round(fo.nn.functional.batch_norm(x, rm, rv, training=True), 4)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> rm, rv  # momentum 0.1; the running variance is the unbiased one
    (array([0.2, 2. ]), array([ 1.1, 20.9]))
    """
    x, n, c, l, eps, rm, rv, w, b, momentum = _bn_forward_args(
        input, running_mean, running_var, weight, bias, training, momentum, eps, num_batches_tracked)
    # (the output is checked last: out may be the input)
    o = _out(x, out)

    dt = x.dtype
    count = n * l
    xp, kern = namespace(x), kernels_for(x)
    if training:
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        mean = xp.empty(c, np.float64)
        var = xp.empty(c, np.float64)
        if o is not x:
            # Statistics and normalization in one kernel call (one pass over memory for L > 1).
            kern.bn_train_forward(x, o, n, c, l, w, b, eps, mean, var)
            invstd = 1.0 / xp.sqrt(var + eps)
            mean_t = mean.astype(dt)
        else:
            kern.bn_stats(x, n, c, l, mean, var)
    if not training or o is x:
        if training:
            invstd = 1.0 / xp.sqrt(var + eps)
        else:
            mean = rm.astype(np.float64)
            invstd = 1.0 / xp.sqrt(rv.astype(np.float64) + eps)
        scale = invstd * (w.astype(np.float64) if w is not None else 1.0)
        shift = b.astype(dt) if b is not None else xp.zeros(c, dt)
        mean_t = mean.astype(dt)
        kern.bn_normalize(x, o, n, c, l, mean_t, scale.astype(dt), xp.ascontiguousarray(shift))

    if training and rm is not None:
        if num_batches_tracked is not None:
            num_batches_tracked[...] += 1
        counted: Any = num_batches_tracked  # (given when momentum is None: checked above)
        factor = momentum if momentum is not None else 1.0 / float(counted.reshape(-1)[0])
        rm[...] = (1.0 - factor) * rm.astype(np.float64) + factor * xp.asarray(mean)
        rv[...] = (1.0 - factor) * rv.astype(np.float64) + factor * xp.asarray(var) * (count / (count - 1))
    if return_stats:
        return o, mean_t, invstd.astype(dt)
    return o


def _merge_moments(rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Every rank's per-channel ``(count, mean, M2)`` (``rows[r]``, float64; a rank's count is
    the same for every channel) merged: the many-way form of Chan et al.'s update, sums over
    the ranks in rank order (empty ranks add nothing): ``n = sum n_r``,
    ``mean = sum n_r mean_r / n``, ``M2 = sum M2_r + sum n_r (mean_r - mean)^2``. Raises
    unless ``n > 1``."""
    counts = rows[:, 0, :1]  # (one column: the count is per rank)
    n = int(counts.sum())
    if n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {n} over all ranks")
    mean = (counts * rows[:, 1]).sum(axis=0) / n
    dev = rows[:, 1] - mean
    return n, mean, rows[:, 2].sum(axis=0) + (counts * dev * dev).sum(axis=0)


def sync_batch_norm(
    input: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    comm: Any = None,
    num_batches_tracked: np.ndarray | None = None,
    out: np.ndarray | None = None,
    return_stats: bool = False,
) -> Any:
    r"""Training-mode :func:`batch_norm` over the batch of every MPI rank of ``comm``
    (default ``MPI.COMM_WORLD``; mpi4py is imported here): each rank's per-channel count,
    mean and sum of squared deviations :math:`M_2` (float64, from the same Rust pass as
    BatchNorm) are gathered and merged, summing over the ranks in rank order,

    .. math::

        n = \sum_r n_r, \qquad \mu = \frac{1}{n} \sum_r n_r \mu_r, \qquad
        M_2 = \sum_r M_{2,r} + \sum_r n_r (\mu_r - \mu)^2,

    so every rank normalizes with the statistics of the whole batch, exactly as one process
    would (a rank may hold no rows, or one). The running statistics take the mean and the
    unbiased variance :math:`M_2 / (n - 1)` over the total count, as torch's SyncBatchNorm.
    ``return_stats=True`` returns ``(out, mean, invstd, count)`` for
    :func:`sync_batch_norm_backward`.

    Example (one rank; ``mpiexec -n N`` merges N):

    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> np.round(fo.nn.functional.sync_batch_norm(x, None, None), 4)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    _host_only(input, "sync_batch_norm")
    from ..distributed._optimizer import _comm

    comm = _comm(comm)
    x, n, c, l, eps, rm, rv, w, b, momentum = _bn_forward_args(
        input, running_mean, running_var, weight, bias, True, momentum, eps, num_batches_tracked)
    o = _out(x, out)
    dt = x.dtype
    local = np.zeros((3, c), np.float64)
    count = n * l
    if count > 0:
        mean_l, var_l = np.empty(c, np.float64), np.empty(c, np.float64)
        _fastopt.bn_stats(x, n, c, l, mean_l, var_l)
        local[0], local[1], local[2] = count, mean_l, var_l * count
    rows = np.empty((comm.size, 3, c), np.float64)
    comm.Allgather(local, rows)
    total_count, mean, m2 = _merge_moments(rows)
    var = m2 / total_count
    invstd = 1.0 / np.sqrt(var + eps)
    mean_t = mean.astype(dt)
    if count > 0:
        scale = invstd * (w.astype(np.float64) if w is not None else 1.0)
        shift = b.astype(dt) if b is not None else np.zeros(c, dt)
        _fastopt.bn_normalize(x, o, n, c, l, mean_t, scale.astype(dt), np.ascontiguousarray(shift))
    if rm is not None:
        if num_batches_tracked is not None:
            num_batches_tracked[...] += 1
        counted: Any = num_batches_tracked
        factor = momentum if momentum is not None else 1.0 / float(counted.reshape(-1)[0])
        rm[...] = (1.0 - factor) * rm.astype(np.float64) + factor * mean
        rv[...] = (1.0 - factor) * rv.astype(np.float64) + factor * m2 / (total_count - 1)
    if return_stats:
        return o, mean_t, invstd.astype(dt), total_count
    return o


def sync_batch_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    count: int,
    weight: np.ndarray | None = None,
    *,
    comm: Any = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""``(grad_input, grad_weight, grad_bias)`` of :func:`sync_batch_norm` on this rank:
    every rank's per-channel :math:`\sum dy` and :math:`\sum dy\,(x - \mu)` (float64) are
    gathered and added in rank order, then torch's input gradient

    .. math::

        dx = \Bigl(dy - \frac{\sum dy}{n} - (x - \mu)\,\sigma^{-2} \frac{\sum dy\,(x - \mu)}{n}\Bigr)\,
             \sigma^{-1} w

    with :math:`n` the total ``count`` (from ``sync_batch_norm(..., return_stats=True)``).
    ``grad_weight`` and ``grad_bias`` are this rank's own sums, as torch's: the optimizer
    wrapper reduces them with the other gradients.

    Example:

    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [8.0, 20.0]])
    >>> F = fo.nn.functional
    >>> y, mean, invstd, n = F.sync_batch_norm(x, None, None, return_stats=True)
    >>> gx, _, _ = F.sync_batch_norm_backward(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), x, mean, invstd, n)
    >>> np.round(gx, 4)  # (one rank: batch_norm_backward's)
    array([[ 0.1089, -0.0408],
           [-0.1524, -0.0408],
           [ 0.0435,  0.0816]])
    """
    _host_only(grad_output, "sync_batch_norm_backward")
    from ..distributed._optimizer import _comm

    comm = _comm(comm)
    g, x, n, c, l, m, s, w = _bn_backward_args(grad_output, input, mean, invstd, weight)
    dt = g.dtype
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 2:
        raise ValueError(f"count must be the total number of values per channel (an int >= 2), got {count!r}")
    o = _out(g, out)
    local = np.zeros((2, c), np.float64)
    if n * l > 0:
        _fastopt.bn_backward_sums(g, x, m, n, c, l, local[0], local[1])
    rows = np.empty((comm.size, 2, c), np.float64)
    comm.Allgather(local, rows)
    sums = rows[0].copy()
    for r in rows[1:]:
        sums += r
    inv = s.astype(np.float64)
    if n * l > 0:
        scale = inv * (w.astype(np.float64) if w is not None else 1.0)
        shift = sums[0] / count
        k = inv * inv * sums[1] / count
        _fastopt.bn_backward_input(g, x, o, n, c, l, m, scale.astype(dt), shift.astype(dt), k.astype(dt))
    if w is None:
        return o, None, None
    return o, (local[1] * inv).astype(w.dtype), local[0].astype(w.dtype)


def _bn_backward_args(grad_output: Any, input: Any, mean: Any, invstd: Any, weight: Any) -> tuple:
    """The checked arguments of :func:`batch_norm_backward` and
    :func:`sync_batch_norm_backward`: ``(g, x, n, c, l, mean, invstd, weight)``."""
    g = _array(grad_output, "grad_output")
    x = _like(g, input, "input", "grad_output")
    n, c, l = _bn_shape(g)
    dt = g.dtype
    m: Any = _per_channel(mean, "mean", c, dt)
    s: Any = _per_channel(invstd, "invstd", c, dt)
    if m.dtype != dt or s.dtype != dt:
        raise TypeError(f"mean and invstd must have the dtype of grad_output ({dt})")
    w = _per_channel(weight, "weight", c, dt, required=False)
    if w is not None and w.dtype != dt:
        raise TypeError(f"weight has dtype {w.dtype} but grad_output has dtype {dt} (fastopt never casts implicitly)")
    for v, name in ((m, "mean"), (s, "invstd"), (w, "weight")):
        if v is not None:
            _same_kind(g, v, name, "grad_output")
    xp = namespace(g)
    w = xp.ascontiguousarray(w) if w is not None else None
    m, s = xp.ascontiguousarray(m), xp.ascontiguousarray(s)
    return g, x, n, c, l, m, s, w


def batch_norm_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    weight: np.ndarray | None = None,
    training: bool = True,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(grad_input, grad_weight, grad_bias)`` of :func:`batch_norm`, from the ``mean`` and
    ``invstd`` it used (``return_stats=True``; in eval mode the running mean and
    ``1 / sqrt(running_var + eps)``). ``grad_weight`` and ``grad_bias`` are None when
    ``weight`` is None. Training mode includes the gradient through the batch statistics."""
    g, x, n, c, l, m, s, w = _bn_backward_args(grad_output, input, mean, invstd, weight)
    dt = g.dtype
    o = _out(g, out)
    xp, kern = namespace(g), kernels_for(g)
    sum_g = xp.empty(c, np.float64)
    sum_gx = xp.empty(c, np.float64)
    inv = s.astype(np.float64)
    if training:
        # The sums and the input gradient in one kernel call (one pass over memory for L > 1).
        kern.bn_train_backward(g, x, o, n, c, l, m, s, w, sum_g, sum_gx)
    else:
        kern.bn_backward_sums(g, x, m, n, c, l, sum_g, sum_gx)
        scale = inv * (w.astype(np.float64) if w is not None else 1.0)
        kern.bn_backward_input(g, x, o, n, c, l, m, scale.astype(dt), xp.zeros(c, dt), None)
    if w is None:
        return o, None, None
    return o, (sum_gx * inv).astype(w.dtype), sum_g.astype(w.dtype)
