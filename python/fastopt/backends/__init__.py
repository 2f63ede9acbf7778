"""Dispatch by array type: NumPy arrays go to the Rust kernels.

Every kernel call goes through :func:`for_arrays`, so a GPU backend (CuPy) plugs in here
without touching the optimizers.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import numpy as np

from .. import _fastopt


def for_arrays(arrays: Sequence[Any]) -> ModuleType:
    """The module whose kernels take these arrays (NumPy: the compiled Rust module)."""
    if isinstance(arrays, list) and arrays and type(arrays[0]) is np.ndarray:
        return _fastopt  # the common case, decided without touching the type's module name
    if isinstance(arrays, (list, tuple)) and len(arrays) > 0:
        module = type(arrays[0]).__module__
        if module.startswith("cupy"):
            raise TypeError(
                "CuPy arrays are not supported yet: fastopt's kernels take numpy.ndarray"
            )
    # Anything else is checked by the kernels, which name the offending argument.
    return _fastopt
