"""Data-parallel benchmarks on MPI ranks (run under mpiexec; rank 0 prints Markdown):

    FASTOPT_NUM_THREADS=1 OMP_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py -m fastopt.bench.mpi [--rounds 7]

1. gradient averaging of a 25 MB float32 model (100 tensors) through the
   DistributedOptimizer's buckets (``synchronize``) against one raw
   ``Allreduce(IN_PLACE)`` of the same bytes;
2. a data-parallel Adam step (gradients averaged, then the step) over the demo network's and
   ResNet-50's parameter shapes: the DistributedOptimizer against torch's
   DistributedDataParallel with the gloo backend (its reduction runs in backward, timed as a
   backward through a model whose gradients are constants, plus ``Adam(fused=True)``);
3. SyncBatchNorm forward + backward on (256, 256) float32 against local BatchNorm1d;
4. ZeRO stage 1 (ZeroRedundancyOptimizer) against the DistributedOptimizer: an Adam step over
   ResNet-50's shapes with the gradients already in the flat buffers (as after a backward into
   them), the memory each adds to the model (tracemalloc's peak over set-up and two steps:
   gradient buffers, state, gather buffers), and consolidating the full state on rank 0
   against one raw ``Gatherv`` of its bytes.

Medians over rounds of the per-call time, each rank's own (the table shows rank 0's and the
slowest rank's). Benchmarks never assert."""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any, Callable

import numpy as np

import fastopt as fo

from .workloads import resnet50_shapes


def _median_time(comm: Any, fn: Callable[[], Any], rounds: int, reps: int) -> tuple[float, float]:
    """(rank 0's, the slowest rank's) median seconds per call; every rank starts each round
    together."""
    fn()
    samples = []
    for _ in range(rounds):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    mine = float(np.median(samples))
    everyone = comm.allgather(mine)
    return everyone[0], max(everyone)


def _demo_shapes() -> list[tuple[int, ...]]:
    h = fo.demo.DemoConfig().hidden
    return [(h, 2), (h,), (h,), (h,), (h, h), (h,), (h,), (h,), (2, h), (2,)]


def _fastopt_step(comm: Any, shapes: list[tuple[int, ...]]) -> Callable[[], None]:
    from ..distributed import DistributedOptimizer

    rng = np.random.default_rng(comm.rank)
    params = [fo.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = DistributedOptimizer(fo.optim.Adam(params, lr=1e-3), comm=comm)

    def step() -> None:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return step


def init_gloo(comm: Any) -> None:
    """torch.distributed's gloo process group over the ranks of ``comm`` (rank 0 picks a free
    local port and tells the others)."""
    import torch.distributed as dist

    port = None
    if comm.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=comm.rank, world_size=comm.size)


def _torch_ddp_step(comm: Any, shapes: list[tuple[int, ...]]) -> Callable[[], None] | None:
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return None
    torch.set_num_threads(1)
    if not dist.is_initialized():
        init_gloo(comm)

    class Constants(torch.nn.Module):
        """Parameters of the given shapes whose gradients are fixed tensors (backward is the
        reduction alone)."""

        def __init__(self) -> None:
            super().__init__()
            self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s)) for s in shapes])
            self.cs = [torch.randn(s) for s in shapes]

        def forward(self) -> Any:
            return sum((p * c).sum() for p, c in zip(self.ps, self.cs))

    model = torch.nn.parallel.DistributedDataParallel(Constants())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        model().backward()
        opt.step()
    return step


def run(rounds: int) -> str:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    lines = [f"fastopt {fo.__version__}, {comm.size} MPI ranks ({MPI.Get_library_version().splitlines()[0].strip()}), "
             f"{fo.get_num_threads()} kernel thread(s) per rank; medians of {rounds} rounds, rank 0 / slowest rank.", ""]

    # 1. bucketed averaging vs one raw allreduce, 25 MB
    from ..distributed import DistributedOptimizer

    shapes = [(62_500,)] * 100  # 25 MB of float32
    params = [fo.Parameter(np.zeros(s, np.float32)) for s in shapes]
    grads = [np.ones(s, np.float32) for s in shapes]
    opt = DistributedOptimizer(fo.optim.SGD(params, lr=0.0), comm=comm)
    for p, g in zip(params, grads):
        p.grad = g
    opt.synchronize()  # (from now on each grad is its bucket view, as after a backward into it)

    def averaged() -> None:
        opt.synchronize()

    summer = DistributedOptimizer(fo.optim.SGD([fo.Parameter(np.zeros(s, np.float32)) for s in shapes], lr=0.0),
                                  comm=comm, op="sum")
    summer.synchronize(grads=grads)

    def copied_in() -> None:
        for p, g in zip(params, grads):
            p.grad = g
        opt.synchronize()

    flat = np.ones(62_500 * 100, np.float32)
    raw = _median_time(comm, lambda: comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM), rounds, 3)
    ours = _median_time(comm, averaged, rounds, 3)
    copied = _median_time(comm, copied_in, rounds, 3)
    summed = _median_time(comm, summer.synchronize, rounds, 3)
    lines += ["#### Averaging 25 MB of float32 gradients (100 tensors)", "",
              "| | ms (rank 0) | ms (slowest) | raw / this |", "|---|---|---|---|",
              f"| one raw Allreduce(IN_PLACE) of 25 MB | {raw[0] * 1e3:.2f} | {raw[1] * 1e3:.2f} | 1.00x |",
              f"| DistributedOptimizer.synchronize, gradients in the buckets | {ours[0] * 1e3:.2f} | {ours[1] * 1e3:.2f} | "
              f"{raw[1] / ours[1]:.2f}x |",
              f"| the same with op='sum' (no division pass) | {summed[0] * 1e3:.2f} | {summed[1] * 1e3:.2f} | "
              f"{raw[1] / summed[1]:.2f}x |",
              f"| the same, gradients copied in (new arrays each step) | {copied[0] * 1e3:.2f} | {copied[1] * 1e3:.2f} | "
              f"{raw[1] / copied[1]:.2f}x |", ""]

    # 2. a data-parallel Adam step vs torch DDP (gloo)
    lines += ["#### A data-parallel Adam step (gradients averaged, then Adam), float32", "",
              "| model | tensors | MB reduced per rank | fastopt ms | torch DDP gloo + fused Adam ms | torch / fastopt |",
              "|---|---|---|---|---|---|"]
    for name, sh in (("demo MLP", _demo_shapes()), ("ResNet-50 shapes", resnet50_shapes())):
        mb = sum(int(np.prod(s)) for s in sh) * 4 / 2**20
        ours = _median_time(comm, _fastopt_step(comm, sh), rounds, 5)
        theirs_fn = _torch_ddp_step(comm, sh)
        theirs = _median_time(comm, theirs_fn, rounds, 5) if theirs_fn is not None else (float("nan"),) * 2
        lines.append(f"| {name} | {len(sh)} | {mb:.2f} | {ours[1] * 1e3:.3f} | {theirs[1] * 1e3:.3f} | "
                     f"{theirs[1] / ours[1]:.2f}x |")
    lines.append("")

    # 3. SyncBatchNorm vs local BatchNorm
    x = np.random.default_rng(comm.rank).standard_normal((256, 256)).astype(np.float32)
    dy = np.ones_like(x)
    sync, local = fo.nn.SyncBatchNorm(256), fo.nn.BatchNorm1d(256)

    def fwd_bwd(m: Any) -> Callable[[], None]:
        def f() -> None:
            m(x)
            m.backward(dy)
        return f

    s = _median_time(comm, fwd_bwd(sync), rounds, 20)
    b = _median_time(comm, fwd_bwd(local), rounds, 20)
    lines += ["#### BatchNorm forward + backward on (256, 256) float32 per rank", "",
              "| | us (rank 0) | us (slowest) | vs local |", "|---|---|---|---|",
              f"| BatchNorm1d (local) | {b[0] * 1e6:.1f} | {b[1] * 1e6:.1f} | 1.00x |",
              f"| SyncBatchNorm | {s[0] * 1e6:.1f} | {s[1] * 1e6:.1f} | {s[1] / b[1]:.2f}x |", ""]
    lines += _zero_section(comm, rounds)
    return "\n".join(lines)


def _zero_section(comm: Any, rounds: int) -> list[str]:
    import tracemalloc

    from mpi4py import MPI

    from ..distributed import DistributedOptimizer, ZeroRedundancyOptimizer

    shapes = resnet50_shapes()
    rng = np.random.default_rng(comm.rank)
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    try:
        import ml_dtypes

        bfloat16: Any = ml_dtypes.bfloat16
    except ImportError:  # (the bfloat16 rows need the bf16 extra)
        bfloat16 = None
    model_mb = sum(g.nbytes for g in grads) / 2**20

    def make(kind: str) -> tuple[Any, list[Any]]:
        # (bfloat16 kinds: bfloat16 parameters, their gradients in the float32 flat buffer)
        dtype = bfloat16 if kind.startswith("zero-bf16") else np.float32
        params = [fo.Parameter(np.full(s, 0.5, dtype)) for s in shapes]
        if kind == "ddp":
            opt = DistributedOptimizer(fo.optim.Adam(params, lr=1e-3), comm=comm)
        else:
            extra = {"master_weights": "kahan"} if kind == "zero-bf16-kahan" else {}
            opt = ZeroRedundancyOptimizer(params, fo.optim.Adam, comm=comm, lr=1e-3,
                                          parameters_as_bucket_view=kind != "zero", **extra)
        opt.zero_grad()
        for p, g in zip(params, grads):  # (as a backward into the flat buffers leaves them)
            view = p.grad
            assert view is not None
            view[...] = g
            p._grad_accumulated()
        return opt, params

    lines = ["#### ZeRO stage 1 against the DistributedOptimizer: Adam over ResNet-50's shapes, float32 (and bfloat16)", "",
             f"{len(shapes)} tensors, {model_mb:.1f} MB of parameters; gradients in the flat buffers (as after a "
             "backward into them); memory: what the optimizer adds to the model (tracemalloc peak over set-up "
             f"and two steps, rank 0); steps interleaved, medians of {rounds} rounds.", "",
             "| | step ms (rank 0) | step ms (slowest) | vs DistributedOptimizer | state MB per rank | "
             "added memory MB per rank |", "|---|---|---|---|---|---|"]
    made = {}
    kinds = ("ddp", "zero-view", "zero") + (("zero-bf16", "zero-bf16-kahan") if bfloat16 is not None else ())
    for kind in kinds:
        comm.Barrier()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        opt, params = make(kind)
        base += sum(p.data.nbytes for p in params)
        opt.step()
        opt.step()
        peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.stop()
        state = opt.optim.state if kind != "ddp" else opt.state
        state_mb = sum(v.nbytes for e in state.values() for v in e.values() if isinstance(v, np.ndarray)) / 2**20
        made[kind] = (opt, state_mb, peak)
    # Interleaved: each round times every optimizer once, in turn.
    samples: dict[str, list[float]] = {kind: [] for kind in made}
    for _ in range(rounds):
        for kind, (opt, _, _) in made.items():
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(3):
                opt.step()
            samples[kind].append((time.perf_counter() - t0) / 3)
    rows = {}
    for kind, (_, state_mb, peak) in made.items():
        everyone = comm.allgather(float(np.median(samples[kind])))
        rows[kind] = ((everyone[0], max(everyone)), state_mb, peak)
    del made
    names = {"ddp": "DistributedOptimizer (every rank: the whole state)",
             "zero-view": "ZeroRedundancyOptimizer, partition='flat' (bucket views)",
             "zero": "the same, parameters_as_bucket_view=False (copies)",
             "zero-bf16": "ZeroRedundancyOptimizer, bfloat16 parameters and state (gradients float32)",
             "zero-bf16-kahan": "the same, master_weights='kahan'"}
    ref = rows["ddp"][0][1]
    for kind, ((t0, t1), state_mb, peak) in rows.items():
        lines.append(f"| {names[kind]} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t1 / ref:.2f}x | {state_mb:.1f} | "
                     f"{peak:.1f} |")
    # Consolidation against one raw Gatherv of the same bytes.
    opt, _ = make("zero")
    opt.step()
    held = [v for e in opt.optim.state.values() for v in e.values() if isinstance(v, np.ndarray) and v.ndim]
    n = sum(v.size for v in held)
    counts = comm.allgather(n)
    send = np.ones(n, np.float32)
    recv = np.empty(sum(counts), np.float32) if comm.rank == 0 else None
    spec = [recv, counts, [sum(counts[:r]) for r in range(len(counts))], MPI.FLOAT] if recv is not None else None
    raw = _median_time(comm, lambda: comm.Gatherv([send, MPI.FLOAT], spec, root=0), rounds, 1)

    def fresh() -> None:  # (into a newly allocated buffer, as a consolidation must)
        into = np.empty(sum(counts), np.float32) if comm.rank == 0 else None
        comm.Gatherv([send, MPI.FLOAT], [into, counts, spec[2], MPI.FLOAT] if spec is not None else None, root=0)

    new = _median_time(comm, fresh, rounds, 1)
    full = _median_time(comm, opt.consolidate_state_dict, rounds, 1)
    mb = sum(counts) * 4 / 2**20
    lines += ["", f"Consolidating the full state ({mb:.1f} MB) on rank 0:", "",
              "| | ms (rank 0) | ms (slowest) | vs one Gatherv |", "|---|---|---|---|",
              f"| one raw Gatherv of the state's bytes | {raw[0] * 1e3:.1f} | {raw[1] * 1e3:.1f} | 1.00x |",
              f"| the same into a newly allocated buffer | {new[0] * 1e3:.1f} | {new[1] * 1e3:.1f} | "
              f"{new[1] / raw[1]:.2f}x |",
              f"| consolidate_state_dict(to=0) | {full[0] * 1e3:.1f} | {full[1] * 1e3:.1f} | {full[1] / raw[1]:.2f}x |",
              ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastopt.bench.mpi", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    text = run(args.rounds)
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank == 0:
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
