"""fastopt: the arithmetic of neural-network training on NumPy arrays, in Rust SIMD kernels.

Optimizer updates run in place, in one fused pass over memory, and follow torch.optim's
update rules to rounding::

    import numpy as np, fastopt as fo
    w = fo.Parameter(np.zeros((256, 128), np.float32))
    opt = fo.optim.Adam([w], lr=1e-3)
    w.grad = np.ones_like(w.data)
    opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, TextIO

from . import _fastopt
from . import nn, optim
from .checkpoint import load, save
from .parameter import Parameter

__version__: str = _fastopt.__version__

#: Submodules loaded on first attribute access (PEP 562), so ``import fastopt`` stays light:
#: ``fastopt.data.spiral(...)`` works without ``import fastopt.data`` first.
_LAZY = ("amp", "bench", "cli", "data", "demo", "hooks", "plot", "testing", "torch")

if TYPE_CHECKING:
    from . import amp, bench, cli, data, demo, hooks, plot, testing, torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "Parameter",
    "nn",
    "optim",
    "amp",
    "data",
    "plot",
    "testing",
    "bench",
    "save",
    "load",
    "get_num_threads",
    "set_num_threads",
    "max_num_threads",
    "simd_level",
    "show_config",
    "__version__",
]


def get_num_threads() -> int:
    """The number of threads the kernels use (``FASTOPT_NUM_THREADS``, default: all cores)."""
    return _fastopt.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of threads the kernels use: an int from 1 to 4 per core
    (``fastopt.max_num_threads()``); the previous pool's threads end.

    Small calls (under about 32k elements in total) always run on the calling thread.
    Results do not depend on the thread count.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    limit = _fastopt.max_num_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"n must be at least 1 and at most {limit} (4 per core, {_fastopt.default_num_threads()} cores here), got {n}"
        )
    _fastopt.set_num_threads(n)


def max_num_threads() -> int:
    """The most threads :func:`set_num_threads` accepts: 4 per core."""
    return _fastopt.max_num_threads()


def _check_environment() -> None:
    """Warns about a FASTOPT_NUM_THREADS or FASTOPT_SIMD that the kernels ignore (the core,
    which reads them, says which and why)."""
    import warnings

    for problem in _fastopt.environment_problems():
        warnings.warn(problem, RuntimeWarning, stacklevel=3)


_check_environment()


def simd_level() -> str:
    """The SIMD level the kernels run at: 'avx512', 'avx2', 'neon' or 'scalar'.

    Detected once from the CPU; ``FASTOPT_SIMD=avx2`` (or ``scalar``) forces a lower level.
    """
    return _fastopt.simd_level()


def show_config(file: TextIO | None = None) -> None:
    """Prints the version, SIMD level and thread count."""
    import numpy

    out = file if file is not None else sys.stdout
    print(f"fastopt {__version__}", file=out)
    print(
        f"  SIMD level: {_fastopt.simd_level()} "
        f"(detected {_fastopt.detected_simd_level()}; "
        f"available {', '.join(_fastopt.available_simd_levels())})",
        file=out,
    )
    print(
        f"  threads: {_fastopt.get_num_threads()} (cores: {_fastopt.default_num_threads()})",
        file=out,
    )
    print(f"  numpy {numpy.__version__}, python {sys.version.split()[0]}", file=out)
