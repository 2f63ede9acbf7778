"""The ``fastopt`` command (also ``python -m fastopt``): ``demo``, ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

import fastopt as fo

USAGE = """usage: fastopt {demo,info,bench} [options]

  demo   train an MLP with BatchNorm on a 2-D dataset with each optimizer; print a table and
         write figures (loss curves, decision boundaries, paths on 2-D test surfaces)
  info   version, SIMD level, threads, optional extras present
  bench  a quick side-by-side of the main kernels against NumPy and torch
         (--full: every optimizer, many-tensor steps, the memory-bandwidth probe)

`fastopt <command> --help` for a command's options; `fastopt --version` for the version."""

#: Optional packages ``info`` reports: what each one adds.
EXTRAS = {
    "matplotlib": "figures (fastopt demo, fastopt.plot)",
    "tqdm": "progress bars (fastopt demo)",
    "rich": "progress bars (fastopt demo), if tqdm is absent",
    "torch": "oracle of the parity tests, peer in fastopt bench",
    "asv": "the benchmark suite in benches/",
    "optax": "second oracle of the parity tests",
    "sphinx": "building the documentation (docs/)",
    "cupy": "GPU arrays (fastopt.backends.cuda: the [cuda] extra)",
    "mpi4py": "data-parallel training (fastopt.distributed)",
}


def _version(pkg: str) -> str | None:
    if importlib.util.find_spec(pkg) is None:
        return None
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


# ----------------------------------------------------------------------------- progress


class _Progress:
    """tqdm if installed, else rich, else nothing (the table rows still print as they finish)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        self._rich: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (CI logs stay clean).
            self._bar = tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, disable=None)
            return
        except ImportError:
            pass
        try:
            from rich.progress import Progress

            self._rich = Progress(transient=True)
            self._rich.start()
            self._task = self._rich.add_task("training", total=total)
        except ImportError:
            pass

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)
        elif self._rich is not None:
            self._rich.update(self._task, description=text)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
        elif self._rich is not None:
            self._rich.advance(self._task)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        elif self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._rich is not None:
            self._rich.stop()


# ----------------------------------------------------------------------------- demo


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return parse


def _demo_parser() -> argparse.ArgumentParser:
    from . import data, demo

    d = demo.DemoConfig()
    ap = argparse.ArgumentParser(
        prog="fastopt demo",
        description="Train one MLP (Linear-BatchNorm1d-ReLU x2, then Linear) on a 2-D dataset with each "
        "optimizer under a cosine schedule; print a table and write PNG figures.",
    )
    ap.add_argument("--dataset", choices=sorted(data.DATASETS), default=d.dataset,
                    help="the TensorFlow playground's dataset (default: %(default)s)")
    ap.add_argument("--optimizers", default=",".join(demo.DEFAULT_OPTIMIZERS),
                    help=f"comma-separated, case-insensitive, from: {', '.join(demo.REGISTRY)}; "
                    "'all' for every one (default: %(default)s)")
    ap.add_argument("--lr", default=None, metavar="LR|NAME=LR,...",
                    help="the MLP's learning rate: one number for every optimizer, or NAME=LR pairs "
                    "(default: each optimizer's rate in the table the demo prints)")
    ap.add_argument("--precision", default="float32", metavar="P[,P...]",
                    help=f"how the weights are stored, comma-separated, from: {', '.join(demo.PRECISIONS)} "
                    "(bfloat16 needs ml_dtypes: the model computes in float32 from the stored weights, its gradients "
                    "rounded to them; -kahan, -remainder and -stochastic are the master_weights options); with more than one, "
                    "each optimizer trains at each and precision.png compares the loss curves (default: %(default)s)")
    ap.add_argument("--epochs", type=_positive(int), default=d.epochs, help="passes over the training set (default: %(default)s)")
    ap.add_argument("--batch-size", type=_positive(int), default=d.batch_size, help="mini-batch size (default: %(default)s)")
    ap.add_argument("--samples", type=_positive(int), default=d.n_samples,
                    help="points in the dataset, train + test (default: %(default)s)")
    ap.add_argument("--noise", type=float, default=d.noise, help="the playground's noise, 0 to 0.5 (default: %(default)s)")
    ap.add_argument("--hidden", type=_positive(int), default=d.hidden, help="width of the two hidden layers (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the data, the weights and the batch order (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("fastopt-demo"),
                    help="directory for the figures and the table (default: %(default)s)")
    ap.add_argument("--threads", type=_positive(int), help="kernel threads (default: FASTOPT_NUM_THREADS or all cores)")
    ap.add_argument("--no-figures", action="store_true", help="train and print only")
    ap.add_argument("--quick", action="store_true", help="at most 25 epochs and a quarter of the steps on the test surfaces (a smoke run)")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over the MPI ranks it was started on (mpiexec -n N fastopt demo --distributed; "
                    "needs fastopt[mpi]): SyncBatchNorm, the DistributedOptimizer, each rank a shard of every batch, "
                    "the same results as one process; rank 0 prints and writes")
    return ap


def _parse_lr(spec: str | None, names: list[str]) -> dict[str, float]:
    """``--lr``: None (each optimizer's own rate), one positive number for all, or
    ``NAME=LR`` pairs (names case-insensitive, among the chosen optimizers)."""
    if spec is None:
        return {}

    def rate(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"--lr: {text!r} is not a number") from None
        if not (v > 0 and np.isfinite(v)):
            raise ValueError(f"--lr must be positive and finite, got {text}")
        return v

    if "=" not in spec:
        v = rate(spec)
        return {name: v for name in names}
    by_lower = {n.lower(): n for n in names}
    out = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or key.strip().lower() not in by_lower:
            raise ValueError(f"--lr: {part!r} is not NAME=LR for one of the chosen optimizers ({', '.join(names)})")
        out[by_lower[key.strip().lower()]] = rate(value.strip())
    return out


def _label(r: Any, by_precision: bool) -> str:
    """A run's name in the table and figures: the optimizer, and its precision when the demo
    compares precisions."""
    return f"{r.name} ({r.precision})" if by_precision else r.name


def _table_row(r: Any, width: int = 13, by_precision: bool = False) -> str:
    """One optimizer's line of the demo's table (a `demo.RunResult`)."""
    return (f"| {_label(r, by_precision):<{width}}| {r.lr:>6g} | {r.train_loss:>10.4f} | {r.test_accuracy:>8.1%} | "
            f"{r.wall_s:>6.2f} | {r.steps_per_s:>7.0f} |")


def _path_label(surface: Any, name: str) -> str:
    """An optimizer's legend entry on a surface: its rate there and any option set for it."""
    extra = "".join(f", {k} {v:g}" for k, v in surface.options.get(name, {}).items())
    return f"{name} (lr {surface.lrs[name]:g}{extra})"


def demo_main(argv: list[str]) -> int:
    from . import demo

    ap = _demo_parser()
    args = ap.parse_args(argv)
    try:
        names = demo.resolve_names(args.optimizers)
        lrs = _parse_lr(args.lr, names)
        args.precisions = demo.resolve_precisions(args.precision, names)
    except ValueError as e:
        ap.error(str(e))
    if not args.noise >= 0:
        ap.error(f"--noise must be >= 0, got {args.noise}")
    if args.threads:
        fo.set_num_threads(args.threads)
    comm = None
    if args.distributed:
        from .distributed._optimizer import _comm

        comm = _comm(None)
        if args.precisions != ["float32"]:
            ap.error("--distributed trains in float32 only (--precision)")
        if "LBFGS" in names:
            ap.error("--distributed: LBFGS takes a closure and cannot be trained on several ranks")
        if comm.rank != 0:  # (the other ranks train alike and stay quiet)
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                return _demo_run(args, names, lrs, comm, ap)
    return _demo_run(args, names, lrs, comm, ap)


def _demo_run(args: Any, names: list[str], lrs: dict[str, float], comm: Any, ap: argparse.ArgumentParser) -> int:
    from . import demo

    quiet = comm is not None and comm.rank != 0
    cfg = demo.DemoConfig(
        dataset=args.dataset, n_samples=args.samples, noise=args.noise, hidden=args.hidden,
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
    )
    if args.quick:
        cfg.epochs = min(cfg.epochs, 25)
    x_train, y_train, x_test, y_test, _ = demo.prepare_data(cfg)
    if len(x_train) < cfg.batch_size:
        ap.error(f"--batch-size {cfg.batch_size} is more than the {len(x_train)} training points")

    fo.show_config()
    steps_per_epoch = len(x_train) // cfg.batch_size
    ranks = f"; data-parallel on {comm.size} MPI ranks (SyncBatchNorm)" if comm is not None else ""
    print(
        f"\n{cfg.dataset}: {len(x_train)} training / {len(x_test)} test points, noise {cfg.noise}; "
        f"MLP 2-{cfg.hidden}-{cfg.hidden}-2 with BatchNorm1d and ReLU, cross-entropy; {cfg.epochs} epochs "
        f"of batches of {cfg.batch_size} ({cfg.epochs * steps_per_epoch} steps), cosine schedule to 0{ranks}\n"
    )
    precisions = args.precisions
    by_precision = precisions != ["float32"]
    width = max([13] + [len(n) + len(p) + 4 for n in names for p in precisions] if by_precision else [13])
    header = (f"| {'optimizer':<{width}}| {'lr':>6} | {'train loss':>10} | {'test acc':>8} | {'wall s':>6} | "
              f"{'steps/s':>7} |")
    rule = "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"
    print(header)
    print(rule)
    progress = _Progress(len(names) * len(precisions) * cfg.epochs * steps_per_epoch, enabled=not quiet)
    results = []
    splits = (x_train, y_train, x_test, y_test)
    try:
        for name in names:
            for precision in precisions:
                progress.describe(name)
                r = demo.train(name, cfg, splits, on_step=progress.step, lr=lrs.get(name), comm=comm,
                               precision=precision)
                results.append(r)
                progress.write(_table_row(r, width, by_precision))
    finally:
        progress.close()
    table = [header, rule] + [_table_row(r, width, by_precision) for r in results]
    if quiet:
        return 0

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(
        f"# fastopt demo\n\n{cfg.dataset}, {len(x_train)} training / {len(x_test)} test points, noise {cfg.noise}, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, seed {cfg.seed}, fastopt {fo.__version__} ({fo.simd_level()}, "
        f"{fo.get_num_threads()} threads)\n\n" + "\n".join(table) + "\n"
    )
    written = [out / "results.md"]
    if args.no_figures:
        print(f"\nwrote {', '.join(map(str, written))}")
        return 0
    if _version("matplotlib") is None:
        print(f"\nwrote {written[0]}; figures skipped: matplotlib is not installed (pip install 'fastopt[demo]')")
        return 0
    from . import plot

    first = [r for r in results if r.precision == precisions[0]]  # (one curve and boundary per optimizer)
    written.append(plot.loss_curves(
        {r.name: r.train_curve for r in first}, out / "loss_curves.png",
        ylabel="training loss (whole training set, eval mode)",
        title=f"{cfg.dataset}: {cfg.epochs} epochs, cosine schedule" + (f", {precisions[0]}" if by_precision else ""),
    ))
    if by_precision:
        # (a colour per optimizer, a line style per precision)
        dashes = ["-", "--", ":", "-."]
        written.append(plot.loss_curves(
            {_label(r, True): r.train_curve for r in results}, out / "precision.png",
            ylabel="training loss (whole training set, eval mode)",
            title=f"{cfg.dataset}: the loss by how the weights are stored",
            styles={_label(r, True): {"color": f"C{names.index(r.name) % 10}",
                                      "ls": dashes[precisions.index(r.precision) % len(dashes)]} for r in results},
        ))

    def predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
        def predict(points: np.ndarray) -> np.ndarray:
            model.eval()
            return fo.nn.functional.softmax(model(points), 1)[:, 1]
        return predict

    written.append(plot.decision_boundaries(
        {r.name: predictor(r.model) for r in first}, x_test, y_test, out / "decision_boundaries.png",
        titles={r.name: f"{r.name}: test acc {r.test_accuracy:.1%}" for r in first},
    ))
    for key, surface in demo.SURFACES.items():
        steps = max(20, surface.steps // 4) if args.quick else surface.steps
        paths = {_path_label(surface, name): demo.trajectory(surface, name, steps) for name in names}
        written.append(plot.optimizer_paths(
            surface.f, surface.window, paths, out / f"paths_{key}.png",
            title=f"{surface.title}, {steps} steps",
            minima=surface.minima, saddles=surface.saddles, log_levels=surface.log_levels,
        ))
    print(f"\nwrote {', '.join(map(str, written))}")
    return 0


# ----------------------------------------------------------------------------- info, bench


def info_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fastopt info", description="Version, SIMD level, threads, optional extras.")
    ap.parse_args(argv)
    fo.show_config()
    print("  optional extras:")
    for pkg, what in EXTRAS.items():
        v = _version(pkg)
        print(f"    {pkg:<11}{v or 'not installed':<16}{what}")
    return 0


def bench_main(argv: list[str]) -> int:
    from . import bench

    if "--full" in argv:
        from .bench import report

        return report.main([a for a in argv if a != "--full"])
    ap = argparse.ArgumentParser(prog="fastopt bench", description=bench.quick.__doc__,
                                 epilog="fastopt bench --full [--help]: the full report (fastopt.bench.report).")
    ap.add_argument("--size", type=float, default=1e6, help="elements per tensor (default 1e6)")
    ap.add_argument("--threads", type=_positive(int), help="threads for fastopt and torch (default: the current setting)")
    ap.add_argument("--rounds", type=_positive(int), default=5)
    ap.add_argument("--no-torch", action="store_true", help="compare with NumPy only")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    threads = args.threads or fo.get_num_threads()
    size = int(args.size)
    if size < 1:
        ap.error("--size must be at least 1")
    rows = bench.quick(size, threads, args.rounds, use_torch=not args.no_torch)
    text = bench.format_table(rows, threads)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


COMMANDS = {"demo": demo_main, "info": info_main, "bench": bench_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"fastopt {fo.__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"fastopt: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
