"""`Parameter`: a NumPy array the optimizers update in place, with its gradient."""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from .backends import is_device_array
from .hooks import RemovableHandle, register

#: The dtypes every kernel takes (the optimizers' steps also take 16-bit ones: `is_half`).
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT16 = np.dtype(np.float16)


def bfloat16_dtype() -> np.dtype | None:
    """``ml_dtypes.bfloat16``'s dtype once the program has imported ml_dtypes (fastopt never
    imports it), else None."""
    ml = sys.modules.get("ml_dtypes")
    return None if ml is None else np.dtype(ml.bfloat16)


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16: told by its registered dtype class, never by
    its type character or number (which other libraries' 16-bit types may reuse)."""
    bf = bfloat16_dtype()
    return bf is not None and type(dtype) is type(bf)


def is_half(dtype: np.dtype) -> bool:
    """float16 or bfloat16: stored in 16 bits, computed in float32 by the optimizers."""
    return dtype == FLOAT16 or is_bfloat16(dtype)


def is_param_dtype(dtype: np.dtype) -> bool:
    """A dtype a Parameter and the optimizers' steps take."""
    return dtype in FLOAT_DTYPES or is_half(dtype)


def as_numpy(value: Any) -> np.ndarray:
    """``value`` as an ndarray; a torch tensor is read on the CPU without its autograd graph
    (``requires_grad=True`` is fine) and a bfloat16 one as float32 (exactly: NumPy has no
    bfloat16), so torch state dicts convert without torch's own errors."""
    if is_device_array(value):
        return value.get()  # (a CuPy array, copied to the host)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(value)


#: Counts every assignment of a Parameter's ``data`` or ``grad`` (any Parameter's): a step that
#: finds it unchanged since the last one knows that no parameter's arrays were replaced, without
#: looking at each of them (the GPU backend's fast path). Code that sets ``_data`` or ``_grad``
#: directly calls :func:`arrays_replaced`.
_EPOCH = [0]


def arrays_replaced() -> None:
    """Records that some Parameter's ``data`` or ``grad`` now refers to another array."""
    _EPOCH[0] += 1


def _check_float_array(value: Any, what: str) -> np.ndarray:
    if is_device_array(value):
        # A CuPy array: the GPU backend takes float32 and float64.
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{what} must have dtype float32 or float64 on the GPU, got {value.dtype}")
        return value
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray (or a CuPy array), got {type(value).__name__}")
    if not is_param_dtype(value.dtype):
        raise TypeError(f"{what} must have dtype float32, float64, float16 or bfloat16 (ml_dtypes), got {value.dtype}")
    return value


class Parameter:
    """A trainable array and its gradient, as ``torch.nn.Parameter``.

    ``data`` is the caller's ndarray itself (no copy): optimizers update it in place, so
    views and references to it see every step. ``grad`` is ``None`` or an ndarray of the same
    shape and dtype (or float32 beside a float16/bfloat16 parameter: mixed-precision
    gradients, read exactly by the step); optimizers skip a parameter whose ``grad`` is ``None``.
    NumPy functions accept a Parameter directly (``np.asarray(p)`` is ``p.data``).

    Example:

    >>> a = np.zeros(3, np.float32)
    >>> p = fo.Parameter(a)
    >>> p.data is a
    True
    >>> p.grad = np.ones(3, np.float32)
    >>> fo.optim.SGD([p], lr=0.5).step()
    >>> a  # updated in place
    array([-0.5, -0.5, -0.5], dtype=float32)
    """

    __slots__ = ("_data", "_grad", "_grad_hooks", "__weakref__")

    def __init__(self, data: np.ndarray) -> None:
        self._data = _check_float_array(data, "data")
        self._grad: np.ndarray | None = None
        self._grad_hooks: OrderedDict | None = None

    def __getstate__(self) -> dict[str, Any]:
        # (hooks are not saved, as torch's)
        return {"_data": self._data, "_grad": self._grad}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._data, self._grad, self._grad_hooks = state["_data"], state["_grad"], None
        _EPOCH[0] += 1

    def register_post_accumulate_grad_hook(self, hook: Callable[["Parameter"], None]) -> RemovableHandle:
        """``hook(param)`` runs each time a :mod:`fastopt.nn` module's ``backward`` has added
        this parameter's gradient into ``grad`` (torch's
        ``Tensor.register_post_accumulate_grad_hook``): the gradient is final for that pass,
        so a data-parallel wrapper can start reducing it while earlier layers are still being
        differentiated. Returns a handle whose ``remove()`` unregisters the hook.

        >>> p = fo.Parameter(np.zeros(2))
        >>> seen = []
        >>> handle = p.register_post_accumulate_grad_hook(lambda q: seen.append(q.grad.sum()))
        >>> fo.nn.modules._accumulate(p, np.ones(2))
        >>> seen
        [np.float64(2.0)]
        >>> handle.remove()
        """
        if self._grad_hooks is None:
            self._grad_hooks = OrderedDict()
        return register(self._grad_hooks, hook)

    def _grad_accumulated(self) -> None:
        """Runs the post-accumulate hooks (called by the modules' backward)."""
        if self._grad_hooks:
            for hook in list(self._grad_hooks.values()):
                hook(self)

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = _check_float_array(value, "data")
        _EPOCH[0] += 1

    @property
    def grad(self) -> np.ndarray | None:
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        if value is not None:
            _check_float_array(value, "grad")
            on_gpu, data_on_gpu = is_device_array(value), is_device_array(self._data)
            if on_gpu != data_on_gpu:
                raise TypeError(f"grad is a {'CuPy' if on_gpu else 'NumPy'} array but the parameter's data is a "
                                f"{'CuPy' if data_on_gpu else 'NumPy'} array: both must live on the same device")
            gpu, data_gpu = getattr(value, "device", None), getattr(self._data, "device", None)
            if on_gpu and gpu.id != data_gpu.id:  # type: ignore[union-attr]
                raise ValueError(f"grad is on GPU {gpu.id} but the parameter is on GPU {data_gpu.id}")  # type: ignore[union-attr]
            if value.shape != self._data.shape:
                raise ValueError(
                    f"grad has shape {value.shape} but the parameter has shape {self._data.shape}"
                )
            if value.dtype != self._data.dtype and not (value.dtype == np.float32 and is_half(self._data.dtype)):
                also = " (or float32, beside a 16-bit parameter)" if is_half(self._data.dtype) else ""
                raise TypeError(
                    f"grad has dtype {value.dtype} but the parameter has dtype {self._data.dtype}{also}"
                )
        self._grad = value
        _EPOCH[0] += 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    def __len__(self) -> int:
        return len(self._data)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is None and not copy:
            return self._data
        return np.array(self._data, dtype=dtype, copy=True)

    def __repr__(self) -> str:
        data = self._data
        if is_device_array(data):
            return f"Parameter({data!r}, dtype={data.dtype}, device=cuda:{getattr(data, 'device').id})"
        return f"Parameter({np.array2string(data, threshold=20, edgeitems=3)}, dtype={data.dtype})"
