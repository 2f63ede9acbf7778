"""The one dispatch by array type: NumPy arrays (and CPU arrays borrowed as NumPy) go to the
Rust core, CuPy arrays to the CUDA kernels of :mod:`fastopt.backends.cuda`.

Nothing here imports CuPy: an array is told to be CuPy's by its type's module, so NumPy-only
programs never load it, and a CuPy array reaching fastopt means CuPy is installed.

>>> import numpy as np
>>> from fastopt import backends
>>> backends.is_device_array(np.zeros(3))
False
>>> backends.namespace(np.zeros(3)) is np
True
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["is_device_array", "namespace", "device_of", "same_device_array", "to_device_like"]


def is_device_array(x: Any) -> bool:
    """Whether ``x`` is a CuPy array (GPU memory), by its type alone."""
    return type(x).__module__.startswith("cupy")


def namespace(x: Any) -> Any:
    """The array module of ``x``: ``numpy`` for host arrays, ``cupy`` for device arrays."""
    if is_device_array(x):
        return sys.modules["cupy"]
    return np


def device_of(x: Any) -> int | None:
    """The CUDA device id of a CuPy array; None for host arrays."""
    if is_device_array(x):
        return int(x.device.id)
    return None


def same_device_array(like: Any, value: Any) -> Any:
    """``value`` (an array of either kind) where ``like`` lives: moved to ``like``'s GPU for a
    CuPy ``like`` (a copy), returned as it is for a NumPy ``like`` (CuPy arrays copied to the
    host). Used when state is loaded into an optimizer whose parameters live elsewhere, as
    torch's ``load_state_dict`` moves state to each parameter's device."""
    if is_device_array(like):
        cp = sys.modules["cupy"]
        with cp.cuda.Device(like.device.id):
            return cp.array(value, copy=True)
    if is_device_array(value):
        return value.get()
    return value


def to_device_like(like: Any, value: Any) -> Any:
    """:func:`same_device_array` for a state value that may not be an array (None, numbers)."""
    if isinstance(value, np.ndarray) or is_device_array(value):
        return same_device_array(like, value)
    return value


def kernels_for(x: Any) -> Any:
    """The kernels for ``x``'s kind of array: the compiled CPU core (``fastopt._fastopt``) for
    host arrays, :mod:`fastopt.backends.cuda` (the same signatures) for CuPy arrays."""
    if is_device_array(x):
        from . import cuda  # noqa: PLC0415 (only for CuPy arrays)

        return cuda
    from .. import _fastopt  # noqa: PLC0415 (a cycle at import time otherwise)

    return _fastopt
