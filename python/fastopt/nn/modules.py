"""Modules in the modular forward/backward style: each layer is an object whose ``forward(x)``
computes its output and keeps what the gradient needs, and whose ``backward(grad_output)``
returns the gradient of the input and *adds* the gradients of its parameters into
``Parameter.grad`` (as torch's autograd accumulates ``.grad``).

A network is a chain of such modules (:class:`Sequential`); training is
``loss = criterion(model(x), y); model.backward(criterion.backward()); opt.step();
model.zero_grad()``. The arithmetic is :mod:`fastopt.nn.functional`'s (Rust kernels) plus
NumPy matrix products for :class:`Linear`.

Default initialization follows torch's in distribution: ``Linear`` draws weight and bias from
U(-1/sqrt(in_features), 1/sqrt(in_features)) (torch's ``kaiming_uniform_(a=sqrt(5))``),
``PReLU`` starts at 0.25, BatchNorm at weight 1, bias 0, running mean 0 and variance 1.
Random draws take ``generator=`` (a ``numpy.random.Generator``), else the generator that
:func:`fastopt.nn.init.manual_seed` seeds.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any, Iterator, NamedTuple

import numpy as np

from ..parameter import FLOAT_DTYPES, Parameter, as_numpy
from . import functional as F
from . import init

__all__ = [
    "Module", "Linear", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "Sigmoid", "Tanh", "GELU",
    "SiLU", "Softplus", "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm", "Dropout", "Flatten", "Sequential",
    "CrossEntropyLoss", "MSELoss",
]


def _dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)


def _input(module: "Module", x: Any, dtype: np.dtype | None) -> np.ndarray:
    """The forward input: a float ndarray of the module's dtype (no silent cast)."""
    if isinstance(x, Parameter):
        x = x.data
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{type(module).__name__}: input must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{type(module).__name__}: input has dtype {x.dtype}; it must be float32 or float64")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{type(module).__name__}: input has dtype {x.dtype} but the module's parameters are {dtype} "
            "(convert one of them: fastopt never casts implicitly)"
        )
    return x


def _accumulate(p: Parameter, g: np.ndarray) -> None:
    """``p.grad += g``, creating ``p.grad`` (a copy of ``g``) when it is None; then the
    parameter's post-accumulate hooks."""
    g = np.asarray(g, dtype=p.dtype).reshape(p.shape)
    if p.grad is None:
        p.grad = np.array(g, copy=True)
    else:
        np.add(p.grad, g, out=p.grad)
    p._grad_accumulated()


class _IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictKeyError(KeyError, ValueError):
    """Missing or unexpected keys in ``load_state_dict(strict=True)``: a KeyError (as a key
    lookup) and a ValueError (as every other bad value fastopt refuses)."""


def _converted(key: str, value: Any, dst: np.ndarray) -> np.ndarray:
    """``value`` (an ndarray, a torch CPU tensor, or anything NumPy converts) as a new array of
    ``dst``'s dtype and shape; TypeError/ValueError naming ``key`` otherwise."""
    try:
        v = as_numpy(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"state_dict[{key!r}] cannot be read as an array: {e}") from None
    if v.dtype.kind not in "biuf":
        raise TypeError(f"state_dict[{key!r}] has dtype {v.dtype}; a module's arrays take numbers")
    if v.shape != dst.shape:
        raise ValueError(f"size mismatch for {key}: the checkpoint has shape {v.shape}, the module {dst.shape}")
    out = np.empty_like(dst)
    with np.errstate(all="ignore"):
        np.copyto(out, v, casting="unsafe")
    return out


class Module:
    """Base class: parameters, buffers and child modules registered by attribute assignment,
    as in torch.

    Subclasses implement ``forward(*inputs)`` (keeping what ``backward`` needs) and
    ``backward(grad_output)`` (returning the input gradient and accumulating parameter
    gradients into ``Parameter.grad``). ``module(x)`` calls ``forward``. ``backward`` uses
    the most recent ``forward``; calling it before any forward is a ``RuntimeError``.
    """

    training: bool
    _parameters: OrderedDict[str, Any]
    _buffers: OrderedDict[str, Any]
    _modules: OrderedDict[str, Any]
    _cache: Any

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)

    # -- registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError("Module.__init__() must be called before assigning attributes")
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Adds ``param`` under ``name`` (None: the slot exists, as torch's ``bias=False``)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"param must be a fastopt.Parameter or None, got {type(param).__name__}")
        setattr(self, name, param)
        if param is None:
            self._parameters[name] = None

    def register_buffer(self, name: str, array: np.ndarray | None) -> None:
        """Adds a non-trainable array saved in ``state_dict`` (e.g. BatchNorm's running mean)."""
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"array must be a numpy.ndarray or None, got {type(array).__name__}")
        object.__setattr__(self, name, array)
        self._buffers[name] = array

    # -- traversal
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        yield from self._modules.items()

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """``(name, parameter)`` pairs, names dotted as torch's (``0.weight``, ``2.bias``);
        a parameter shared by two modules is listed once."""
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_prefix, m in mods:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        mods = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_prefix, m in mods:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # -- modes and gradients
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears every parameter's gradient (``None``, or zeros with ``set_to_none=False``)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.fill(0)

    # -- dtype
    def to(self, dtype: Any) -> "Module":
        """Converts every float parameter and buffer to ``dtype`` (float32/float64) in place
        of the module (the Parameter objects stay; their data are new arrays; gradients are
        dropped). Integer buffers (``num_batches_tracked``) are kept."""
        dt = _dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.dtype != dt:
                    p.grad = None
                    p.data = p.data.astype(dt)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype in FLOAT_DTYPES and b.dtype != dt:
                    m.register_buffer(name, b.astype(dt))
            object.__setattr__(m, "_cache", None)
        return self

    def double(self) -> "Module":
        return self.to(np.float64)

    def float(self) -> "Module":
        return self.to(np.float32)

    # -- state
    def state_dict(self, prefix: str = "") -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers by dotted name (torch's keys), as copies."""
        sd: OrderedDict[str, np.ndarray] = OrderedDict()
        for mod_prefix, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is not None:
                    sd[f"{mod_prefix}.{name}" if mod_prefix else name] = p.data.copy()
            for name, b in m._buffers.items():
                if b is not None:
                    sd[f"{mod_prefix}.{name}" if mod_prefix else name] = b.copy()
        return sd

    def _state_targets(self) -> "OrderedDict[str, np.ndarray]":
        t: OrderedDict[str, np.ndarray] = OrderedDict()
        for mod_prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    t[f"{mod_prefix}.{name}" if mod_prefix else name] = p.data
            for name, b in m._buffers.items():
                if b is not None:
                    t[f"{mod_prefix}.{name}" if mod_prefix else name] = b
        return t

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> _IncompatibleKeys:
        """Copies values into the existing arrays (so optimizers holding the parameters see
        them). Values may be ndarrays or anything ``np.asarray`` takes (torch CPU tensors
        included) and are converted to each array's dtype, as torch's ``copy_``. Shapes must
        match; with ``strict`` the keys must match exactly. Everything is checked before
        anything is written. Returns ``(missing_keys, unexpected_keys)``."""
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        targets = self._state_targets()
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise StateDictKeyError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        values = {}
        for k, dst in targets.items():
            if k not in state_dict:
                continue
            values[k] = _converted(k, state_dict[k], dst)
        # Every value is converted and checked above; only now is anything written.
        for k, v in values.items():
            np.copyto(targets[k], v)
        return _IncompatibleKeys(missing, unexpected)

    # -- calling
    def forward(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, grad_output: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement backward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def _saved(self) -> Any:
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward was called before forward")
        return self._cache

    def _grad_output(self, grad_output: Any, like: Any) -> np.ndarray:
        if not isinstance(grad_output, np.ndarray):
            raise TypeError(f"{type(self).__name__}: grad_output must be a numpy.ndarray, got {type(grad_output).__name__}")
        if grad_output.shape != like.shape:
            raise ValueError(
                f"{type(self).__name__}: grad_output has shape {grad_output.shape} but the forward output has shape {like.shape}"
            )
        if grad_output.dtype != like.dtype:
            raise TypeError(
                f"{type(self).__name__}: grad_output has dtype {grad_output.dtype} but the forward output has dtype {like.dtype}"
            )
        return grad_output

    def __deepcopy__(self, memo: dict) -> "Module":
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new

    # -- printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


# ----------------------------------------------------------------------------- layers


class Linear(Module):
    """``y = x @ weight.T + bias`` on inputs of shape ``(*, in_features)``; ``weight`` has
    shape ``(out_features, in_features)`` as torch's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: Any = np.float32, generator: Any = None) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        dt = _dtype(dtype)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dt))
        init.uniform_(self.weight, -bound, bound, generator=generator)
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dt))
            init.uniform_(self.bias, -bound, bound, generator=generator)
        else:
            self.register_parameter("bias", None)

    def forward(self, input: np.ndarray) -> np.ndarray:
        x = _input(self, input, self.weight.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input has shape {x.shape}; its last dimension must be in_features={self.in_features}")
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        object.__setattr__(self, "_cache", (x, y.shape))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, shape = self._saved()
        g = self._grad_output(grad_output, _Shape(shape, self.weight.dtype))
        g2 = g.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        _accumulate(self.weight, g2.T @ x2)
        if self.bias is not None:
            _accumulate(self.bias, g2.sum(axis=0))
        return g @ self.weight.data

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Shape:
    """Stands for a forward output that was not kept (only its shape and dtype are needed)."""

    def __init__(self, shape: tuple, dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, dtype


# ----------------------------------------------------------------------------- activations


class _Activation(Module):
    """An element-wise activation: ``_fn(x, **kw)`` forward, ``_bwd(g, saved, **kw)`` backward,
    where ``saved`` is the output (``_saves_output``) or the input."""

    _saves_output = False
    _inplace_ok = False
    _fn: Any
    _bwd: Any

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        if inplace and not self._inplace_ok:
            raise ValueError(f"{type(self).__name__} has no in-place form")
        self.inplace = bool(inplace)

    def _kw(self) -> dict:
        return {}

    def forward(self, input: np.ndarray) -> np.ndarray:
        x = _input(self, input, None)
        kw = self._kw()
        if self.inplace:
            # The output overwrites the input; keep a copy where backward needs the input.
            saved_in = None if self._saves_output else x.copy()
            y = type(self)._fn(x, inplace=True, **kw)
            saved = y if self._saves_output else saved_in
        else:
            y = type(self)._fn(x, **kw)
            saved = y if self._saves_output else x
        object.__setattr__(self, "_cache", (saved, y.shape, y.dtype))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        saved, shape, dtype = self._saved()
        g = self._grad_output(grad_output, _Shape(shape, dtype))
        return type(self)._bwd(g, saved, **self._kw())

    def extra_repr(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._kw().items()]
        if self.inplace:
            parts.append("inplace=True")
        return ", ".join(parts)


class ReLU(_Activation):
    _fn, _bwd = staticmethod(F.relu), staticmethod(F.relu_backward)
    _saves_output = _inplace_ok = True


class LeakyReLU(_Activation):
    _fn, _bwd = staticmethod(F.leaky_relu), staticmethod(F.leaky_relu_backward)
    _inplace_ok = True

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.negative_slope = F._number(negative_slope, "negative_slope")

    def _kw(self) -> dict:
        return {"negative_slope": self.negative_slope}


class ELU(_Activation):
    _fn, _bwd = staticmethod(F.elu), staticmethod(F.elu_backward)
    _inplace_ok = True

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.alpha = F._number(alpha, "alpha")

    def _kw(self) -> dict:
        return {"alpha": self.alpha}


class SELU(_Activation):
    _fn, _bwd = staticmethod(F.selu), staticmethod(F.selu_backward)
    _inplace_ok = True


class Sigmoid(_Activation):
    _fn, _bwd = staticmethod(F.sigmoid), staticmethod(F.sigmoid_backward)
    _saves_output = True


class Tanh(_Activation):
    _fn, _bwd = staticmethod(F.tanh), staticmethod(F.tanh_backward)
    _saves_output = True


class GELU(_Activation):
    _fn, _bwd = staticmethod(F.gelu), staticmethod(F.gelu_backward)

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        F._gelu_name(approximate)
        self.approximate = approximate

    def _kw(self) -> dict:
        return {"approximate": self.approximate}


class SiLU(_Activation):
    _fn, _bwd = staticmethod(F.silu), staticmethod(F.silu_backward)
    _inplace_ok = True


class Softplus(_Activation):
    _fn, _bwd = staticmethod(F.softplus), staticmethod(F.softplus_backward)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = F._number(beta, "beta")
        self.threshold = F._number(threshold, "threshold")

    def _kw(self) -> dict:
        return {"beta": self.beta, "threshold": self.threshold}


class PReLU(Module):
    """``x`` for x > 0, else ``weight * x``; ``num_parameters`` slopes (1, or one per channel
    on axis 1), initialized to ``init``."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *, dtype: Any = np.float32) -> None:
        super().__init__()
        self.num_parameters = _positive_int(num_parameters, "num_parameters")
        self.weight = Parameter(np.full(self.num_parameters, F._number(init, "init"), _dtype(dtype)))

    def forward(self, input: np.ndarray) -> np.ndarray:
        x = _input(self, input, self.weight.dtype)
        y = F.prelu(x, self.weight.data)
        object.__setattr__(self, "_cache", (x, y.shape))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, shape = self._saved()
        g = self._grad_output(grad_output, _Shape(shape, self.weight.dtype))
        gx, gw = F.prelu_backward(g, x, self.weight.data)
        _accumulate(self.weight, gw)
        return gx

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


# ----------------------------------------------------------------------------- batch norm


class _BatchNorm(Module):
    _dims: tuple[int, ...] = ()
    running_mean: Any
    running_var: Any
    num_batches_tracked: Any

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = F._number(eps, "eps")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if momentum is not None:
            momentum = F._number(momentum, "momentum")
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dt = _dtype(dtype)
        c = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(c, dt))
            self.bias = Parameter(np.zeros(c, dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, dt))
            self.register_buffer("running_var", np.ones(c, dt))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _param_dtype(self) -> np.dtype | None:
        if self.weight is not None:
            return self.weight.dtype
        return self.running_mean.dtype if self.running_mean is not None else None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def forward(self, input: np.ndarray) -> np.ndarray:
        x = _input(self, input, self._param_dtype())
        if x.ndim not in self._dims:
            raise ValueError(f"{type(self).__name__}: expected {' or '.join(f'{d}-D' for d in self._dims)} input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[1]} channels (axis 1) but num_features={self.num_features}")
        # torch: batch statistics in training, and in eval when no running statistics are kept.
        use_batch = self.training or self.running_mean is None
        update = self.training and self.track_running_stats
        w = self.weight.data if self.weight is not None else None
        b = self.bias.data if self.bias is not None else None
        y, mean, invstd = F.batch_norm(
            x,
            self.running_mean if (update or not use_batch) else None,
            self.running_var if (update or not use_batch) else None,
            w, b, use_batch, self.momentum, self.eps,
            num_batches_tracked=self.num_batches_tracked if update else None,
            return_stats=True,
        )
        object.__setattr__(self, "_cache", (x, mean, invstd, use_batch))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, mean, invstd, use_batch = self._saved()
        g = self._grad_output(grad_output, x)
        w = self.weight.data if self.weight is not None else None
        gx, gw, gb = F.batch_norm_backward(g, x, mean, invstd, w, training=use_batch)
        if self.weight is not None:
            _accumulate(self.weight, gw)  # type: ignore[arg-type]  # (given with weight)
            _accumulate(self.bias, gb)  # type: ignore[arg-type]
        return gx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """BatchNorm over ``(N, C)`` or ``(N, C, L)``: torch's ``BatchNorm1d`` (biased variance
    to normalize, unbiased into ``running_var``, ``momentum=None`` = cumulative average over
    ``num_batches_tracked``, running statistics in eval mode)."""

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over ``(N, C, H, W)``: torch's ``BatchNorm2d``."""

    _dims = (4,)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span every MPI rank of ``comm`` (torch's
    ``SyncBatchNorm``; default ``MPI.COMM_WORLD``, mpi4py imported on the first training
    forward): on ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` inputs, each rank normalizes
    its shard with the mean and variance of the whole global batch
    (:func:`fastopt.nn.functional.sync_batch_norm`), and its backward uses the sums of every
    rank. A rank may hold an empty or one-row shard. In eval mode it is BatchNorm with the
    running statistics. The weight and bias gradients are this rank's own, for the optimizer
    wrapper to reduce (:class:`fastopt.distributed.DistributedOptimizer`), as torch's.

    Example (one rank):

    >>> bn = fo.nn.SyncBatchNorm(2, dtype=np.float64)
    >>> np.round(bn(np.array([[1.0, 10.0], [3.0, 30.0]])), 4)
    array([[-1., -1.],
           [ 1.,  1.]])
    """

    _dims = (2, 3, 4)
    #: The communicator (None: ``MPI.COMM_WORLD``).
    comm: Any

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, comm: Any = None, *, dtype: Any = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype)
        object.__setattr__(self, "comm", comm)

    def forward(self, input: np.ndarray) -> np.ndarray:
        if not self.training:
            return super().forward(input)
        x = _input(self, input, self._param_dtype())
        if x.ndim not in self._dims:
            raise ValueError(f"SyncBatchNorm: expected 2-D, 3-D or 4-D input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: input has {x.shape[1]} channels (axis 1) but num_features={self.num_features}")
        w = self.weight.data if self.weight is not None else None
        b = self.bias.data if self.bias is not None else None
        track = self.track_running_stats
        y, mean, invstd, count = F.sync_batch_norm(
            x, self.running_mean if track else None, self.running_var if track else None, w, b, self.momentum,
            self.eps, comm=self.comm, num_batches_tracked=self.num_batches_tracked if track else None,
            return_stats=True,
        )
        object.__setattr__(self, "_cache", (x, mean, invstd, count))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, mean, invstd, count = self._saved()
        if isinstance(count, bool):  # (eval mode: the cache of BatchNorm's forward)
            return super().backward(grad_output)
        g = self._grad_output(grad_output, x)
        w = self.weight.data if self.weight is not None else None
        gx, gw, gb = F.sync_batch_norm_backward(g, x, mean, invstd, count, w, comm=self.comm)
        if self.weight is not None:
            _accumulate(self.weight, gw)  # type: ignore[arg-type]  # (given with weight)
            _accumulate(self.bias, gb)  # type: ignore[arg-type]
        return gx

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, comm: Any = None) -> Module:
        """``module`` with every BatchNorm1d/BatchNorm2d in it replaced by a SyncBatchNorm
        holding the same parameters and running statistics (torch's classmethod; ``comm`` is
        its ``process_group``). A BatchNorm given directly is returned converted."""
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      comm, dtype=module._param_dtype() or np.float32)
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            if module.track_running_stats:
                out.register_buffer("running_mean", module.running_mean)
                out.register_buffer("running_var", module.running_var)
                out.register_buffer("num_batches_tracked", module.num_batches_tracked)
            object.__setattr__(out, "training", module.training)
            return out
        for name, child in list(module.named_children()):
            converted = cls.convert_sync_batchnorm(child, comm)
            if converted is not child:  # (in place: a Sequential keeps its order)
                module._modules[name] = converted
                object.__setattr__(module, name, converted)
        return module


# ----------------------------------------------------------------------------- shape and noise


class Dropout(Module):
    """In training, zeroes each element with probability ``p`` and scales the rest by
    ``1 / (1 - p)`` (torch's inverted dropout); the identity in eval mode. The mask is drawn
    from ``generator`` (a ``numpy.random.Generator``; default: :mod:`fastopt.nn.init`'s,
    seeded by ``manual_seed``)."""

    _generator: Any

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator: Any = None) -> None:
        super().__init__()
        p = F._number(p, "p")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = bool(inplace)
        object.__setattr__(self, "_generator", generator)
        if generator is not None:
            init._rng(generator)

    def forward(self, input: np.ndarray) -> np.ndarray:
        x = _input(self, input, None)
        if not self.training or self.p == 0.0:
            object.__setattr__(self, "_cache", (None, x.shape, x.dtype))
            return x if self.inplace else x.copy()
        rng = self._generator if self._generator is not None else init._default_rng
        if self.p == 1.0:
            scale = np.zeros(x.shape, x.dtype)
        else:
            keep = rng.random(x.shape) >= self.p
            scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        y = np.multiply(x, scale, out=x if self.inplace else None)
        object.__setattr__(self, "_cache", (scale, x.shape, x.dtype))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        scale, shape, dtype = self._saved()
        g = self._grad_output(grad_output, _Shape(shape, dtype))
        return g.copy() if scale is None else g * scale

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Flatten(Module):
    """Flattens dimensions ``start_dim`` .. ``end_dim`` into one (default: all but the batch)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, input: np.ndarray) -> np.ndarray:
        x = _input(self, input, None)
        nd = max(x.ndim, 1)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not fit an input of shape {x.shape}")
        shape = x.shape[:s] + (math.prod(x.shape[s : e + 1]),) + x.shape[e + 1 :]
        y = x.reshape(shape)
        object.__setattr__(self, "_cache", (x.shape, y.shape, x.dtype))
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        in_shape, out_shape, dtype = self._saved()
        g = self._grad_output(grad_output, _Shape(out_shape, dtype))
        return g.reshape(in_shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Sequential(Module):
    """Modules applied in order; ``backward`` runs them in reverse. Takes modules, or one
    ``OrderedDict`` of named modules; indexing, ``len``, iteration and ``append`` as torch."""

    def __init__(self, *modules: Any) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes fastopt.nn modules, got {type(m).__name__} for {name!r}")
            setattr(self, name, m)

    def append(self, module: Module) -> "Sequential":
        if not isinstance(module, Module):
            raise TypeError(f"module must be a fastopt.nn.Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, i: int | slice) -> Any:
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def forward(self, input: Any) -> Any:
        for m in self._modules.values():
            input = m(input)
        object.__setattr__(self, "_cache", True)
        return input

    def backward(self, grad_output: Any) -> Any:
        self._saved()
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output


# ----------------------------------------------------------------------------- losses


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = F._reduction(reduction)

    def _grad_scale(self, grad_output: Any, loss_shape: tuple) -> Any:
        if self.reduction == "none":
            if grad_output is None:
                raise ValueError(f"{type(self).__name__}(reduction='none').backward needs grad_output of the per-sample loss shape {loss_shape}")
            return grad_output
        return 1.0 if grad_output is None else grad_output

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """``forward(logits, target)``: torch's cross entropy on logits ``(N, C)`` (or ``(C,)``,
    ``(N, C, d1, ...)``) and integer class indices; ``backward(grad_output=1.0)`` returns the
    gradient of the logits. Targets outside ``[0, C)`` (other than ``ignore_index``) are a
    ``ValueError``."""

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        super().__init__(reduction)
        self.label_smoothing = F._smoothing(label_smoothing)
        self.ignore_index = int(ignore_index)

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = _input(self, input, None)
        loss = F.cross_entropy(x, target, self.reduction, self.label_smoothing, self.ignore_index)
        object.__setattr__(self, "_cache", (x, target, np.shape(loss)))
        return loss

    def backward(self, grad_output: Any = None) -> np.ndarray:
        x, target, loss_shape = self._saved()
        go = self._grad_scale(grad_output, loss_shape)
        return F.cross_entropy_backward(go, x, target, self.reduction, self.label_smoothing, self.ignore_index)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}"


class MSELoss(_Loss):
    """``forward(input, target)``: mean (or sum, or per-element) squared error;
    ``backward(grad_output=1.0)`` returns the gradient of ``input``."""

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = _input(self, input, None)
        loss = F.mse_loss(x, target, self.reduction)
        object.__setattr__(self, "_cache", (x, target, np.shape(loss)))
        return loss

    def backward(self, grad_output: Any = None) -> np.ndarray:
        x, target, loss_shape = self._saved()
        return F.mse_loss_backward(self._grad_scale(grad_output, loss_shape), x, target, self.reduction)
