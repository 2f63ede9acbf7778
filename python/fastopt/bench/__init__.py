"""``fastopt bench``: a quick side-by-side of the main kernels against careful NumPy and torch
(when installed), in one process, implementations interleaved (see
:func:`fastopt.bench.peers.interleaved`), as a table of medians and ratios.

The peers live in :mod:`fastopt.bench.peers` (optimizers) and :mod:`fastopt.bench.nn_peers`
(activations, BatchNorm); the asv suite in ``benches/`` measures against the same code.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass

import numpy as np

from .. import _fastopt
from . import nn_peers, peers

__all__ = ["Row", "quick", "format_table", "Bandwidth", "bandwidth"]


@dataclass(frozen=True)
class Bandwidth:
    """What :func:`bandwidth` measured: bytes per second of STREAM's copy and triad."""

    copy: float
    triad: float
    threads: int
    elements: int

    def __str__(self) -> str:
        return (f"copy {self.copy / 1e9:.1f} GB/s, triad {self.triad / 1e9:.1f} GB/s "
                f"({self.threads} thread{'s' if self.threads > 1 else ''}, 3 x {self.elements * 4 / 2**20:.0f} MiB)")


def _physical_memory() -> int | None:
    """The machine's physical memory in bytes, where the OS says."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def bandwidth(threads: int | None = None, elements: int = 1 << 25, repeats: int = 5) -> Bandwidth:
    """The machine's memory bandwidth as fastopt's kernels see it: STREAM-style copy
    (``a = b``, counted as 8 bytes per float32 element) and triad (``a = b + s*c``, 12 bytes),
    over three buffers of ``elements`` float32 each (default 128 MiB each, well past any
    cache), on ``threads`` threads (default: the current setting) at the current SIMD level;
    the best of ``repeats`` runs each. A kernel that must move B bytes in t seconds reaches
    ``B / t / copy`` of the machine. Takes about a second."""
    import fastopt as fo

    if isinstance(elements, bool) or not isinstance(elements, int) or elements < 1:
        raise ValueError(f"elements must be a positive int, got {elements!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    memory = _physical_memory()
    if memory is not None and 3 * 4 * elements > memory // 2:
        raise ValueError(
            f"elements={elements} needs 3 buffers of {4 * elements} bytes; this machine has {memory} bytes of "
            f"memory, and the probe may take at most half of it"
        )
    before = fo.get_num_threads()
    threads = before if threads is None else threads
    fo.set_num_threads(threads)
    try:
        copy, triad = _fastopt.bandwidth_probe(elements, repeats)
    finally:
        fo.set_num_threads(before)
    return Bandwidth(copy, triad, threads, elements)


@dataclass
class Row:
    """One kernel: median seconds per call of each implementation (None: not measured)."""

    kernel: str
    size: str
    fastopt: float
    numpy: float | None
    torch: float | None
    torch_path: str = ""


def _have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _activation_impls(name: str, n: int, threads: int, have_torch: bool) -> dict:
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 3
    impls = {"fastopt": (threads, nn_peers.fastopt_forward(name, x, np.empty_like(x))),
             "numpy": (1, nn_peers.numpy_forward(name, x, np.empty_like(x)))}
    if have_torch:
        impls["torch out="] = (threads, nn_peers.torch_forward(name, x, np.empty_like(x)))
    return impls


def _batch_norm_impls(shape: tuple, threads: int, have_torch: bool) -> dict:
    prob = nn_peers.batch_norm_problem(shape)
    impls = {"fastopt": (threads, nn_peers.fastopt_batch_norm_step(*prob)),
             "numpy": (1, nn_peers.numpy_batch_norm_step(*prob))}
    if have_torch:
        impls["torch aten"] = (threads, nn_peers.torch_batch_norm_step(*prob))
    return impls


def quick(size: int = 1_000_000, threads: int | None = None, rounds: int = 5, block_seconds: float = 0.02,
          use_torch: bool = True) -> list[Row]:
    """Measures Adam, SGD with momentum, relu, sigmoid, gelu (float32, ``size`` elements) and
    BatchNorm training forward+backward on (32, 64, 28, 28), each against careful NumPy and
    torch's fastest path (best of default/foreach/fused for the optimizers; ATen kernels
    writing into preallocated outputs for the rest), all at ``threads`` threads (default: the
    current setting; NumPy is single-threaded). Takes a few seconds."""
    import fastopt as fo

    threads = fo.get_num_threads() if threads is None else int(threads)
    have_torch = use_torch and _have_torch()
    before = fo.get_num_threads()
    from .report import OPTIMIZERS, single_step_impls

    cases: list[tuple[str, str, dict]] = [
        (label, f"{size:.0e}", single_step_impls(*OPTIMIZERS[key], size, have_torch, (threads,), with_optax=False))
        for label, key in (("Adam step", "adam"), ("SGD momentum step", "sgd"))
    ]
    for act in ("relu", "sigmoid", "gelu_tanh"):
        cases.append((f"{act} forward", f"{size:.0e}", _activation_impls(act, size, threads, have_torch)))
    shape = (32, 64, 28, 28)
    cases.append(("batch_norm train fwd+bwd", "x".join(map(str, shape)), _batch_norm_impls(shape, threads, have_torch)))
    rows = []
    try:
        for kernel, label, impls in cases:
            t = peers.interleaved(impls, rounds, block_seconds)
            ours = next(v for k, v in t.items() if k.startswith("fastopt"))
            torch_keys = [k for k in t if k.startswith("torch")]
            best = min(torch_keys, key=t.__getitem__) if torch_keys else None
            rows.append(Row(kernel, label, ours, t.get("numpy"), t[best] if best else None, best or ""))
    finally:
        fo.set_num_threads(before)
    return rows


def format_table(rows: list[Row], threads: int) -> str:
    """A Markdown table: milliseconds per call and how many times faster fastopt is."""
    import fastopt as fo

    torch_version = "not installed"
    if _have_torch():
        import torch

        torch_version = torch.__version__
    lines = [
        f"fastopt {fo.__version__} ({fo.simd_level()}, {threads} threads), numpy {np.__version__}, torch {torch_version}; "
        f"{platform.machine()}, {_fastopt.default_num_threads()} cores. float32, median ms per call; "
        "ratios > 1: fastopt is faster.",
        "",
        "| kernel | size | fastopt ms | NumPy ms | torch ms (path) | vs NumPy | vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = lambda v: f"{v * 1e3:.3f}" if v is not None else "-"
        ratio = lambda v: f"{v / r.fastopt:.2f}x" if v is not None else "-"
        torch_cell = f"{ms(r.torch)} ({r.torch_path})" if r.torch is not None else "-"
        lines.append(f"| {r.kernel} | {r.size} | {ms(r.fastopt)} | {ms(r.numpy)} | {torch_cell} | {ratio(r.numpy)} | {ratio(r.torch)} |")
    return "\n".join(lines)
