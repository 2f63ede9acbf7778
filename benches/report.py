"""Side-by-side report: fastopt against torch and NumPy, in ONE process.

Implementations are interleaved (each round runs a block of steps of every implementation in
turn), so slow drifts of a noisy machine hit all of them alike; the figure for each is the
median over rounds of the per-step time within a block. Prints a Markdown table of ns per
element and the ratio of torch's fastest CPU path (best of its default, foreach and fused
paths, best of 1 and 2 threads) to fastopt's best of 1 and 2 threads.

    python benches/report.py                      # Adam, SGD+momentum, AdamW; 1e3..1e7
    python benches/report.py --sizes 1e3 1e5 --optimizers adam --out report.md
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastopt as fo  # noqa: E402
from benchmarks.common import (  # noqa: E402
    TORCH_FUSED,
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
    interleaved,
    problem,
    torch_optimizer,
)

OPTIMIZERS = {
    "adam": ("Adam", {"lr": 1e-3}, lambda p, g: NumpyAdam(p, g, lr=1e-3).step),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, lambda p, g: NumpyAdam(p, g, lr=1e-3, weight_decay=1e-2, decoupled=True).step),
    "sgd": ("SGD", {"lr": 1e-3, "momentum": 0.9}, lambda p, g: NumpySGD(p, g, lr=1e-3, momentum=0.9).step),
    "adagrad": ("Adagrad", {"lr": 1e-2}, lambda p, g: NumpyAdagrad(p, g, lr=1e-2).step),
    "rmsprop": ("RMSprop", {"lr": 1e-2}, lambda p, g: NumpyRMSprop(p, g, lr=1e-2).step),
    "adamax": ("Adamax", {"lr": 2e-3}, lambda p, g: NumpyAdamax(p, g, lr=2e-3).step),
    "adadelta": ("Adadelta", {"lr": 1.0}, lambda p, g: NumpyAdadelta(p, g, lr=1.0).step),
    "nadam": ("NAdam", {"lr": 2e-3}, lambda p, g: NumpyNAdam(p, g, lr=2e-3).step),
    "radam": ("RAdam", {"lr": 1e-3}, lambda p, g: NumpyRAdam(p, g, lr=1e-3).step),
    "asgd": ("ASGD", {"lr": 1e-2}, lambda p, g: NumpyASGD(p, g, lr=1e-2).step),
    "rprop": ("Rprop", {"lr": 1e-2}, lambda p, g: NumpyRprop(p, g, lr=1e-2).step),
}


def _impls(name, kwargs, numpy_factory, n, have_torch):
    """name -> (threads, step function); each over its own copy of the same problem."""
    out = {}
    for threads in (1, 2):
        p0, g = problem(n)
        p = fo.Parameter(p0)
        p.grad = g
        out[f"fastopt {threads}T"] = (threads, getattr(fo.optim, name)([p], **kwargs).step)
        if have_torch:
            variants = ["default", "foreach"] + (["fused"] if name in TORCH_FUSED else [])
            for v in variants:
                p0, g = problem(n)
                out[f"torch {v} {threads}T"] = (threads, torch_optimizer(name, v, p0, g, **kwargs).step)
    if numpy_factory is not None:
        p0, g = problem(n)
        out["numpy"] = (1, numpy_factory(p0, g))
    return out


def measure(name, kwargs, numpy_factory, n, rounds, block_seconds, have_torch):
    return interleaved(_impls(name, kwargs, numpy_factory, n, have_torch), rounds, block_seconds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "adamw"], choices=sorted(OPTIMIZERS) + ["all"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=float, default=0.02, help="seconds per block of steps")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    try:
        import torch

        have_torch = True
        torch_version = torch.__version__
    except ImportError:
        have_torch, torch_version = False, "not installed"

    lines = [
        f"fastopt {fo.__version__} ({fo.simd_level()}), torch {torch_version}, numpy {np.__version__}; "
        f"{platform.processor() or platform.machine()}, {fo._fastopt.default_num_threads()} cores. "
        f"float32, one tensor, ns per element (median of {args.rounds} interleaved rounds).",
        "",
    ]
    for opt in sorted(OPTIMIZERS) if "all" in args.optimizers else args.optimizers:
        name, kwargs, numpy_factory = OPTIMIZERS[opt]
        header = "| N | fastopt 1T | fastopt 2T | torch default (best T) | torch foreach (best T) | torch fused 1T | torch fused 2T | numpy | vs torch fastest | vs numpy |"
        lines += [f"### {name} {kwargs}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for n in (int(s) for s in args.sizes):
            r = measure(name, kwargs, numpy_factory, n, args.rounds, args.block, have_torch)
            ns = {k: v / n * 1e9 for k, v in r.items()}
            ours = min(ns["fastopt 1T"], ns["fastopt 2T"])
            best = lambda prefix: min((v for k, v in ns.items() if k.startswith(prefix)), default=float("nan"))
            torch_best = best("torch")
            cell = lambda k: f"{ns[k]:.3f}" if k in ns else "-"
            vs_numpy = f"{ns['numpy'] / ours:.2f}x" if "numpy" in ns else "-"
            lines.append(
                f"| {n:.0e} | {cell('fastopt 1T')} | {cell('fastopt 2T')} | {best('torch default'):.3f} | "
                f"{best('torch foreach'):.3f} | {cell('torch fused 1T')} | {cell('torch fused 2T')} | {cell('numpy')} | "
                f"**{torch_best / ours:.2f}x** | {vs_numpy} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
