"""Side-by-side report for fastopt.nn.functional: activations (forward and backward) and
batch_norm training forward+backward, float32, against torch's ATen kernels writing into
preallocated outputs and careful NumPy, at the SAME thread count, in ONE process with the
implementations interleaved (see report.py). Prints a Markdown table: ns per element, the
ratio torch/fastopt and numpy/fastopt, and fastopt's time relative to its own relu.

    python benches/report_nn.py                          # 1e6 and 1e7, 1 and 2 threads
    python benches/report_nn.py --sizes 1e6 --threads 1 --activations gelu sigmoid
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastopt as fo  # noqa: E402
from benchmarks import nn_peers as P  # noqa: E402
from benchmarks.common import interleaved  # noqa: E402


def activation_rows(names, n, threads, rounds, block, have_torch):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    impls = ["fastopt"] + (["torch"] if have_torch else []) + ["numpy"]
    fns = {}
    for name in dict.fromkeys(["relu"] + names):
        saved = P.fastopt_forward(name, x, np.empty_like(x))() if name in P.SAVES_OUTPUT else x
        for impl in impls:
            if impl == "numpy" and name == "gelu" and n > 1_000_000:
                continue  # per-element math.erf: minutes
            fns[(name, "fwd", impl)] = getattr(P, f"{impl}_forward")(name, x, np.empty_like(x))
            fns[(name, "bwd", impl)] = getattr(P, f"{impl}_backward")(name, g, saved, np.empty_like(x))
    r = interleaved({k: (threads, f) for k, f in fns.items()}, rounds, block)
    ns = {k: v / n * 1e9 for k, v in r.items()}
    rows = []
    for name in names:
        for d in ("fwd", "bwd"):
            ours = ns[(name, d, "fastopt")]
            t = ns.get((name, d, "torch"))
            npy = ns.get((name, d, "numpy"))
            rows.append(
                f"| {name} {d} | {n:.0e} | {threads} | {ours:.3f} | {t:.3f} | **{t / ours:.2f}x** | "
                if t is not None else f"| {name} {d} | {n:.0e} | {threads} | {ours:.3f} | - | - | "
            )
            rows[-1] += (f"{npy:.3f} | {npy / ours:.1f}x | " if npy is not None else "- | - | ") + f"{ours / ns[('relu', d, 'fastopt')]:.2f}x |"
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def batch_norm_rows(shapes, threads, rounds, block, have_torch):
    rows = []
    for shape in shapes:
        prob = P.batch_norm_problem(shape)
        impls = ["fastopt"] + (["torch"] if have_torch else []) + ["numpy"]
        r = interleaved({i: (threads, getattr(P, f"{i}_batch_norm_step")(*prob)) for i in impls}, rounds, block)
        ms = {k: v * 1e3 for k, v in r.items()}
        t = ms.get("torch", float("nan"))
        rows.append(f"| {shape} | {threads} | {ms['fastopt']:.3f} | {t:.3f} | **{t / ms['fastopt']:.2f}x** | {ms['numpy']:.3f} | {ms['numpy'] / ms['fastopt']:.1f}x |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--activations", nargs="+", default=P.ACTIVATIONS, choices=P.ACTIVATIONS)
    ap.add_argument("--no-batch-norm", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=float, default=0.05, help="seconds per block of calls")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        import torch

        have_torch, tv = True, torch.__version__
    except ImportError:
        have_torch, tv = False, "not installed"
    lines = [
        f"fastopt {fo.__version__} ({fo.simd_level()}), torch {tv}, numpy {np.__version__}; "
        f"{platform.processor() or platform.machine()}, {fo._fastopt.default_num_threads()} cores. float32, "
        f"ns per element, median of {args.rounds} interleaved rounds; torch and NumPy at the same thread count "
        f"(NumPy is single-threaded). 'vs relu': fastopt's time over its own relu in the same direction.",
        "",
        "| activation | N | threads | fastopt | torch (out=) | torch / fastopt | numpy | numpy / fastopt | vs relu |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in (int(s) for s in args.sizes):
        for th in args.threads:
            lines += activation_rows(list(args.activations), n, th, args.rounds, args.block, have_torch)
    if not args.no_batch_norm:
        lines += ["", "batch_norm training forward + backward (input, weight and bias gradients), ms per call:", "",
                  "| shape | threads | fastopt | torch | torch / fastopt | numpy | numpy / fastopt |", "|---|---|---|---|---|---|---|"]
        for th in args.threads:
            lines += batch_norm_rows([(256, 4096), (32, 64, 56, 56)], th, args.rounds, args.block, have_torch)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
