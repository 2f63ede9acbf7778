"""The full side-by-side report (``fastopt bench --full``, or ``python benches/report.py``):
fastopt against torch (default, foreach and fused paths) and careful in-place NumPy, in ONE
process, and against the machine's memory bandwidth.

Implementations are interleaved (each round runs a block of steps of every implementation in
turn), so slow drifts of a noisy machine hit all of them alike; the figure for each is the
median over rounds of the per-step time within a block. Sections:

1. the machine: the bandwidth probe (:func:`fastopt.bench.bandwidth`) at 1 and 2 threads;
2. one float32 tensor per optimizer and size: ns per element of each implementation at 1 and
   2 threads, the ratio of torch's fastest path (best of its paths and thread counts) to
   fastopt's best, the ratios to NumPy and optax, and from 1e7 elements the fraction of the
   probe's copy bandwidth fastopt reaches (the bytes one pass must read and write / time /
   copy rate). The optimizers torch lacks are compared with their authors' (or the reference
   library's) torch implementation where one is installed (``peers.OFFICIAL``: ADOPT,
   AdEMAMix, Lion, AdaBelief, Schedule-Free, Prodigy, LAMB; the best of 1 and 2 threads),
   careful NumPy and, for Lion, LAMB and AdaBelief, optax;
3. many tensors per step (Adam): ResNet-50's 161 parameters, 200 small tensors, 161
   one-element tensors;
4. every element-wise optimizer at 1e7 elements against Adam, ns per element.

torch runs with its default OpenMP policy: its threads spin for a while after each call, and
in one process they take a core from whichever implementation runs next (fastopt's two-thread
figures suffer; its own pool spins at most 100 microseconds after a call). ``--omp-passive`` sets ``OMP_WAIT_POLICY=PASSIVE``
before torch loads, which removes that, and slows torch's own two-thread calls instead: the
two settings bracket the truth, and the default is the one that favours torch.

    fastopt bench --full                              # everything, a few minutes
    fastopt bench --full --sizes 1e3 1e5 --optimizers adam --no-workloads --out report.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import _fastopt
from . import bandwidth
from .peers import (
    IN_OPTAX,
    IN_TORCH,
    TORCH_FUSED,
    NumpyAdaBelief,
    NumpyAdaBound,
    NumpyLamb,
    NumpyLion,
    NumpyAdadelta,
    NumpyAdagrad,
    NumpyAdam,
    NumpyAdamax,
    NumpyASGD,
    NumpyNAdam,
    NumpyRAdam,
    NumpyRMSprop,
    NumpyRprop,
    NumpySGD,
    NumpyADOPT,
    NumpyAdEMAMix,
    NumpyProdigy,
    NumpyScheduleFree,
    OFFICIAL,
    import_torch,
    interleaved,
    official_optimizer,
    optax_optimizer,
    problem,
    torch_optimizer,
)
from ..optim import registry as _registry
from .workloads import WORKLOADS, make_tensors

#: Careful NumPy implementations of each optimizer's step (the peers beside torch).
_NUMPY = {
    "Adam": lambda kw: lambda p, g: NumpyAdam(p, g, **kw).step,
    "AdamW": lambda kw: lambda p, g: NumpyAdam(p, g, decoupled=True, **kw).step,
    "SGD": lambda kw: lambda p, g: NumpySGD(p, g, **kw).step,
    "Adagrad": lambda kw: lambda p, g: NumpyAdagrad(p, g, **kw).step,
    "RMSprop": lambda kw: lambda p, g: NumpyRMSprop(p, g, **kw).step,
    "Adamax": lambda kw: lambda p, g: NumpyAdamax(p, g, **kw).step,
    "Adadelta": lambda kw: lambda p, g: NumpyAdadelta(p, g, **kw).step,
    "NAdam": lambda kw: lambda p, g: NumpyNAdam(p, g, **kw).step,
    "RAdam": lambda kw: lambda p, g: NumpyRAdam(p, g, **kw).step,
    "ASGD": lambda kw: lambda p, g: NumpyASGD(p, g, **kw).step,
    "Rprop": lambda kw: lambda p, g: NumpyRprop(p, g, **kw).step,
    "AdaBound": lambda kw: lambda p, g: NumpyAdaBound(p, g, **kw).step,
    "AMSBound": lambda kw: lambda p, g: NumpyAdaBound(p, g, amsbound=True, **kw).step,
    "Lion": lambda kw: lambda p, g: NumpyLion(p, g, **kw).step,
    "AdaBelief": lambda kw: lambda p, g: NumpyAdaBelief(p, g, **kw).step,
    "Lamb": lambda kw: lambda p, g: NumpyLamb(p, g, **kw).step,
    "ADOPT": lambda kw: lambda p, g: NumpyADOPT(p, g, **kw).step,
    "AdEMAMix": lambda kw: lambda p, g: NumpyAdEMAMix(p, g, **kw).step,
    "AdamWScheduleFree": lambda kw: lambda p, g: NumpyScheduleFree(p, g, **kw).step,
    "SGDScheduleFree": lambda kw: lambda p, g: NumpyScheduleFree(p, g, adam=False, **kw).step,
    "Prodigy": lambda kw: lambda p, g: NumpyProdigy(p, g, **kw).step,
}

#: key -> (fastopt/torch class name, arguments, careful NumPy step factory), for every
#: optimizer the registry gives benchmark arguments (fastopt.optim.registry).
OPTIMIZERS = {
    s.name.lower(): (s.name, dict(s.bench), _NUMPY[s.name](dict(s.bench))) for s in _registry.OPTIMIZERS if s.bench
}

#: Arrays one step must read plus those it must write, per element (float32: x 4 bytes), with
#: the arguments above (no amsgrad, momentum or centering unless named; ASGD's ``ax`` is
#: written, not read, while ``mu`` is 1, i.e. before step ``t0``).
ARRAYS_MOVED = {s.name: s.moved for s in _registry.OPTIMIZERS if s.bench}


def _have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _have_optax() -> bool:
    return importlib.util.find_spec("optax") is not None and importlib.util.find_spec("jax") is not None


def single_step_impls(name: str, kwargs: dict, numpy_factory, n: int, have_torch: bool,
                  threads_list: tuple[int, ...] = (1, 2), with_optax: bool = True) -> dict:
    """label ("fastopt 2T", "torch fused 1T", "numpy", "optax") -> (threads, step); each over
    its own copy of the same problem."""
    import fastopt as fo

    out: dict[str, tuple[int, Any]] = {}
    for threads in threads_list:
        p0, g = problem(n)
        p = fo.Parameter(p0)
        p.grad = g
        out[f"fastopt {threads}T"] = (threads, getattr(fo.optim, name)([p], **kwargs).step)
        if have_torch and name in IN_TORCH:
            for v in ["default", "foreach"] + (["fused"] if name in TORCH_FUSED else []):
                p0, g = problem(n)
                out[f"torch {v} {threads}T"] = (threads, torch_optimizer(name, v, p0, g, **kwargs).step)
        if have_torch and name in OFFICIAL and importlib.util.find_spec(OFFICIAL[name][0]) is not None:
            p0, g = problem(n)
            out[f"official {threads}T"] = (threads, official_optimizer(name, p0, g, **kwargs))
    if numpy_factory is not None:
        p0, g = problem(n)
        out["numpy"] = (1, numpy_factory(p0, g))
    if with_optax and name in IN_OPTAX and _have_optax():
        p0, g = problem(n)
        out["optax"] = (1, optax_optimizer(name, p0, g, **kwargs))
    return out


def _workload_impls(shapes: list, have_torch: bool) -> dict:
    import fastopt as fo

    out: dict[str, tuple[int, Any]] = {}
    for threads in (1, 2):
        params = []
        for p0, g in make_tensors(shapes):
            p = fo.Parameter(p0)
            p.grad = g
            params.append(p)
        out[f"fastopt {threads}T"] = (threads, fo.optim.Adam(params, lr=1e-3).step)
        if have_torch:
            import torch

            for v in ("foreach", "fused"):
                tps = []
                for p0, g in make_tensors(shapes):
                    t = torch.nn.Parameter(torch.from_numpy(p0))
                    t.grad = torch.from_numpy(g)
                    tps.append(t)
                flag: dict[str, Any] = {v: True}
                out[f"torch {v} {threads}T"] = (threads, torch.optim.Adam(tps, lr=1e-3, **flag).step)
    return out


def _best(times: dict, prefix: str) -> tuple[float, str]:
    """The fastest time among labels starting with ``prefix`` and its label."""
    keys = [k for k in times if k.startswith(prefix)]
    if not keys:
        return float("nan"), ""
    k = min(keys, key=times.__getitem__)
    return times[k], k


def _threads_of(label: str) -> int:
    return 2 if label.endswith("2T") else 1


def _fraction(bytes_moved: float, seconds: float, label: str, probe: dict) -> str:
    bw = probe.get(_threads_of(label))
    if bw is None or not np.isfinite(seconds):
        return "-"
    return f"{bytes_moved / seconds / bw.copy:.0%}"


def _precision_impls(n: int, have_torch: bool) -> tuple[dict, dict]:
    """Adam over ``n`` elements by parameter dtype (state in that dtype, and the
    ``state_dtype`` pairs: bfloat16 state beside float32 parameters, float32 state beside
    bfloat16 ones; and bfloat16 with ``master_weights`` 'kahan', 'remainder' and 'float32'): fastopt at 1 and 2
    threads and torch's fused kernel where torch has the row (its only CPU path computing
    16-bit steps in float32); bfloat16 only where ml_dtypes is installed. Returns the
    implementations and each row's bytes read and written per element."""
    import fastopt as fo

    dtypes: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
    try:
        import ml_dtypes
    except ImportError:
        pass
    else:
        dtypes["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
    # row -> (parameter dtype, state_dtype option, master_weights option, whether torch has it)
    rows: dict[str, tuple[str, str | None, str | None, bool]] = {name: (name, None, None, True) for name in dtypes}
    rows["float32 + int8 state"] = ("float32", "int8", None, False)
    if "bfloat16" in dtypes:
        rows["float32 + bfloat16 state"] = ("float32", "bfloat16", None, False)
        rows["bfloat16 + float32 state"] = ("bfloat16", "float32", None, False)
        rows["bfloat16 + kahan"] = ("bfloat16", None, "kahan", False)
        rows["bfloat16 + remainder"] = ("bfloat16", None, "remainder", False)
        rows["bfloat16 + float32 master"] = ("bfloat16", None, "float32", False)
        rows["bfloat16 + int8 state"] = ("bfloat16", "int8", None, False)
    rng = np.random.default_rng(0)
    p32, g32 = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    impls: dict = {}
    moved: dict = {}
    for row, (name, state, master, torch_has) in rows.items():
        dt = dtypes[name]
        # (8-bit state: a byte per element and a float32 absmax per 256 per buffer)
        state_bytes = 1 + 4 / 256 if state == "int8" else (dt if state is None else dtypes[state]).itemsize
        # (Adam: the parameter read and written, the gradient read, two state buffers each
        # read and written, and a compensation buffer or the int16 low bits of the masters)
        moved[row] = 3 * dt.itemsize + 4 * state_bytes + {None: 0, "kahan": 2 * state_bytes, "remainder": 4,
                                                          "float32": 8}[master]
        for threads in (1, 2):
            p = fo.Parameter(p32.astype(dt))
            p.grad = g32.astype(dt)
            opt = fo.optim.Adam([p], lr=1e-4, state_dtype=state, master_weights=master)
            impls[f"{row}| fastopt {threads}T"] = (threads, opt.step)
        if have_torch and torch_has:
            torch = import_torch()
            for threads in (1, 2):
                t = torch.nn.Parameter(torch.from_numpy(p32).to(getattr(torch, name)))
                t.grad = torch.from_numpy(g32).to(t.dtype)
                impls[f"{row}| torch fused {threads}T"] = (threads, torch.optim.Adam([t], lr=1e-4, fused=True).step)
        if have_torch and state == "int8":
            # the peer of 8-bit state: bitsandbytes' 8-bit Adam on the CPU, where installed
            # (it goes in the "torch" columns, named in the table's heading)
            try:
                import bitsandbytes as bnb
            except ImportError:
                continue
            torch = import_torch()
            for threads in (1, 2):
                t = torch.nn.Parameter(torch.from_numpy(p32).to(getattr(torch, name)))
                t.grad = torch.from_numpy(g32).to(t.dtype)
                impls[f"{row}| torch fused {threads}T"] = (threads, bnb.optim.Adam8bit([t], lr=1e-4).step)
    return impls, moved


def run(sizes: list[int], optimizers: list[str], rounds: int, block: float, workloads: bool,
        compare_all: bool, probe_elements: int, log=None, precision: bool = False) -> str:
    """Runs the report's sections and returns the Markdown text (progress lines go to ``log``,
    default: the current ``sys.stderr``)."""
    import fastopt as fo

    log = sys.stderr if log is None else log

    have_torch = _have_torch()
    torch_version = "not installed"
    if have_torch:
        import torch

        torch_version = torch.__version__
    lines = [
        f"fastopt {fo.__version__} ({fo.simd_level()}), torch {torch_version}, numpy {np.__version__}; "
        f"{platform.processor() or platform.machine()}, {_fastopt.default_num_threads()} cores; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: OpenMP threads spin after each region)')}.",
        "",
    ]
    probe = {}
    if probe_elements:
        for t in (1, 2):
            probe[t] = bandwidth(t, elements=probe_elements)
        lines += [
            "Memory bandwidth probe (`fastopt.bench.bandwidth`: STREAM copy and triad, float32, best of 5): "
            + "; ".join(f"{t} thread{'s' if t > 1 else ''}: {probe[t].copy / 1e9:.1f} GB/s copy, "
                        f"{probe[t].triad / 1e9:.1f} GB/s triad" for t in probe) + ".",
            "",
        ]
        print(lines[-2], file=log, flush=True)

    lines += [f"float32, one tensor, ns per element (median of {rounds} interleaved rounds; optax under jax.jit "
              "with donated buffers, where installed). \"vs torch\": "
              "torch's fastest path and thread count over fastopt's best of 1 and 2 threads (\"vs official\": the "
              "same for the authors' implementation of an optimizer torch lacks). "
              "\"of copy BW\": bytes one step must read and write per second over the probe's copy rate "
              "at fastopt's best thread count, from 1e7 elements (below, the buffers fit in the caches of "
              "most machines and the fraction would exceed 100%).", ""]
    for key in optimizers:
        name, kwargs, numpy_factory = OPTIMIZERS[key]
        official = name in OFFICIAL and have_torch
        header = ("| N | fastopt 1T | fastopt 2T | " + (f"{OFFICIAL[name][0]} (best T) " if official else
                  "torch default | torch foreach | torch fused 1T | torch fused 2T ")
                  + "| numpy | optax (jit) | vs " + ("official" if official else "torch")
                  + " | vs numpy | vs optax | of copy BW |")
        lines += [f"#### {name} {kwargs}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for n in sizes:
            times = interleaved(single_step_impls(name, kwargs, numpy_factory, n, have_torch), rounds, block)
            ns = {k: v / n * 1e9 for k, v in times.items()}
            ours, our_key = _best(times, "fastopt")
            torch_best, _ = _best(times, "official" if official else "torch")
            cell = lambda k: f"{ns[k]:.3f}" if k in ns else "-"  # noqa: E731
            best_ns = lambda prefix: f"{_best(ns, prefix)[0]:.3f}" if _best(ns, prefix)[1] else "-"  # noqa: E731
            frac = _fraction(ARRAYS_MOVED[name] * 4 * n, ours, our_key, probe) if n >= 10_000_000 else "-"
            peers = (f"{best_ns('official')} | " if official else f"{best_ns('torch default')} | "
                     f"{best_ns('torch foreach')} | {cell('torch fused 1T')} | {cell('torch fused 2T')} | ")
            lines.append(
                f"| {n:.0e} | {cell('fastopt 1T')} | {cell('fastopt 2T')} | {peers}{cell('numpy')} | "
                f"{cell('optax')} | " + (f"**{torch_best / ours:.2f}x**" if torch_best == torch_best else "-") + " | "
                + (f"{times['numpy'] / ours:.2f}x" if "numpy" in times else "-")
                + " | " + (f"{times['optax'] / ours:.2f}x" if "optax" in times else "-") + f" | {frac} |"
            )
            print(lines[-1], file=log, flush=True)
        lines.append("")

    if workloads:
        header = "| workload | tensors | elements | fastopt 1T | fastopt 2T | torch foreach (best T) | torch fused 1T | torch fused 2T | vs torch | of copy BW |"
        lines += ["#### Adam over many tensors (one step, microseconds)", "", header, "|" + "---|" * (header.count("|") - 1)]
        for wname, make in WORKLOADS.items():
            shapes = make()
            n = int(sum(np.prod(s) for s in shapes))
            times = interleaved(_workload_impls(shapes, have_torch), rounds, block)
            us = {k: v * 1e6 for k, v in times.items()}
            ours, our_key = _best(times, "fastopt")
            torch_best, _ = _best(times, "torch")
            cell = lambda k: f"{us[k]:.1f}" if k in us else "-"  # noqa: E731
            foreach = _best(us, "torch foreach")[0]
            frac = _fraction(ARRAYS_MOVED["Adam"] * 4 * n, ours, our_key, probe) if n >= 10_000_000 else "-"
            lines.append(
                f"| {wname} | {len(shapes)} | {n:,} | {cell('fastopt 1T')} | {cell('fastopt 2T')} | "
                f"{foreach:.1f} | {cell('torch fused 1T')} | {cell('torch fused 2T')} | **{torch_best / ours:.2f}x** | {frac} |"
            )
            print(lines[-1], file=log, flush=True)
        lines.append("")

    if precision:
        n = max(sizes)
        impls, moved = _precision_impls(n, have_torch)
        times = interleaved(impls, rounds, block)
        lines += [f"#### Adam by parameter dtype at {n:.0e} elements (state in the parameters' dtype unless the row "
                  "names it; ns per element; the int8-state rows' torch columns are bitsandbytes' Adam8bit)",
                  "", "| dtype | bytes per element | fastopt 1T | fastopt 2T | torch fused 1T | torch fused 2T | "
                  "vs torch | of copy BW |", "|---|---|---|---|---|---|---|---|"]
        for name, nbytes in moved.items():
            ns = {k[len(name) + 2:]: v / n * 1e9 for k, v in times.items() if k.startswith(name + "| ")}
            ours, our_key = _best(times, f"{name}| fastopt")
            theirs = _best(times, f"{name}| torch")[0]
            cell = lambda k: f"{ns[k]:.3f}" if k in ns else "-"  # noqa: E731
            frac = _fraction(nbytes * n, ours, our_key, probe) if n >= 10_000_000 else "-"
            lines.append(f"| {name} | {nbytes} | {cell('fastopt 1T')} | {cell('fastopt 2T')} | {cell('torch fused 1T')} | "
                         f"{cell('torch fused 2T')} | " + (f"**{theirs / ours:.2f}x**" if theirs == theirs else "-")
                         + f" | {frac} |")
            print(lines[-1], file=log, flush=True)
        lines.append("")

    if compare_all:
        n = 10_000_000
        names = [OPTIMIZERS[k][:2] for k in OPTIMIZERS]
        impls = {}
        for name, kwargs in names:
            for threads in (1, 2):
                p0, g = problem(n)
                p = fo.Parameter(p0)
                p.grad = g
                impls[f"{name} {threads}T"] = (threads, getattr(fo.optim, name)([p], **kwargs).step)
        times = interleaved(impls, rounds, block)
        adam = min(times["Adam 1T"], times["Adam 2T"])
        lines += ["#### Every element-wise optimizer at 1e7 elements (fastopt, best of 1/2 threads)", "",
                  "| optimizer | ns per element | vs Adam | of copy BW |", "|---|---|---|---|"]
        for name, _ in names:
            best = min(times[f"{name} 1T"], times[f"{name} 2T"])
            key = f"{name} 1T" if times[f"{name} 1T"] <= times[f"{name} 2T"] else f"{name} 2T"
            lines.append(f"| {name} | {best / n * 1e9:.3f} | {best / adam:.2f}x | {_fraction(ARRAYS_MOVED[name] * 4 * n, best, key, probe)} |")
            print(lines[-1], file=log, flush=True)
        lines.append("")
    return "\n".join(lines)


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "adamw"], choices=sorted(OPTIMIZERS) + ["all"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=float, default=0.02, help="seconds per block of steps")
    ap.add_argument("--no-workloads", action="store_true", help="skip the many-tensor section")
    ap.add_argument("--no-compare-all", action="store_true", help="skip the every-optimizer-vs-Adam section")
    ap.add_argument("--no-precision", action="store_true",
                    help="skip the section of Adam by parameter dtype (float32, float16, bfloat16)")
    ap.add_argument("--probe-elements", type=float, default=2**25, help="elements per probe buffer (0: no probe)")
    ap.add_argument("--omp-passive", action="store_true",
                    help="set OMP_WAIT_POLICY=PASSIVE before torch loads: torch's OpenMP threads then sleep "
                         "between calls instead of spinning (torch's default), which otherwise take a core from "
                         "whichever implementation runs next in the same process")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    return ap


def passive_openmp() -> None:
    """Asks OpenMP (torch's threads) to sleep rather than spin between parallel regions, unless
    the user set a policy or torch is already loaded. In one process, threads that spin after
    torch's call compete with the next implementation's threads for the cores (measured here:
    fastopt's two-thread Adagrad at 1e6 took 0.29 ns/element after torch with spinning threads,
    0.16 with sleeping ones, while torch's fused two-thread Adam at 1e6 went from 0.33 to 0.56);
    fastopt's own pool spins at most 100 microseconds after a call."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None, prog: str = "fastopt bench --full") -> int:
    args = _parser(prog).parse_args(argv)
    if args.omp_passive:
        passive_openmp()
    optimizers = sorted(OPTIMIZERS) if "all" in args.optimizers else args.optimizers
    text = run(
        [int(s) for s in args.sizes], optimizers, args.rounds, args.block,
        workloads=not args.no_workloads, compare_all=not args.no_compare_all,
        probe_elements=int(args.probe_elements), precision=not args.no_precision,
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
