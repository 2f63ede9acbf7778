"""ZeroRedundancyOptimizer beyond the plain step: a fastopt.nn model whose backward writes into
the flat gradient buffer (against the DistributedOptimizer), LR schedulers and step hooks,
clipping and skip_if_nonfinite, add_param_group mid-run, Schedule-Free's train()/eval(), state
dict round trips, the memory each rank holds, and the 'greedy' layout against torch's
ZeroRedundancyOptimizer (gloo)."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ZeroRedundancyOptimizer
from fastopt.bench.mpi import init_gloo
from _common import backward, batches, model, shard

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size


def exact_grads(shapes, step):
    """Every rank's gradients (small multiples of 2**-7: exact sums) and their average."""
    rng = np.random.default_rng(500 + step)
    per_rank = [[rng.integers(-64, 65, s) * 2.0**-7 for s in shapes] for _ in range(world)]
    mean = [sum(g[k] for g in per_rank) / world for k in range(len(shapes))]
    return per_rank[rank], mean


def same(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x), np.asarray(y)
        assert np.array_equal(x, y), f"{what}: params[{i}] differs by {np.max(np.abs(x - y))}"


SHAPES = [(6, 5), (17,), (4, 4), (9,)]


def start():
    rng = np.random.default_rng(3)
    return [rng.standard_normal(s) for s in SHAPES]


# -- a model's backward into the flat buffer, against the DistributedOptimizer ---------------
for partition in ("flat", "greedy"):
    for view in (False, True):
        a, b = model(), model()
        zero = ZeroRedundancyOptimizer(a.parameters(), fo.optim.Adam, partition=partition,
                                       parameters_as_bucket_view=view, lr=1e-2)
        ddp = DistributedOptimizer(fo.optim.Adam(b.parameters(), lr=1e-2))
        for x, t in batches(30, 6 * world):
            xs, ts = shard(x, rank, world), shard(t, rank, world)
            for m, opt in ((a, zero), (b, ddp)):
                opt.zero_grad()
                backward(m, xs, ts)
                opt.step()
        for p, q in zip(a.parameters(), b.parameters()):
            err = np.max(np.abs(p.data - q.data))
            assert err <= 1e-13, f"{partition} view={view}: {err} from the DistributedOptimizer"
        if view:
            flat = zero._zero["param_flat"][np.dtype(np.float64)]
            assert all(np.shares_memory(p.data, flat) for p in a.parameters())

# -- schedulers, hooks, clipping, skipping -----------------------------------------------
for kw, partition in [(kw, partition) for kw in (dict(max_grad_norm=0.5), dict(max_grad_norm=0.5, norm_type=np.inf),
                                                  dict(max_grad_norm=0.7, norm_type=3.0))
                      for partition in ("flat", "greedy")]:  # ('greedy': the pieces are matrices)
    ours, ref = [fo.Parameter(a) for a in start()], [fo.Parameter(a) for a in start()]
    zero = ZeroRedundancyOptimizer(ours, fo.optim.SGD, partition=partition, lr=0.1, momentum=0.9)
    plain = fo.optim.SGD(ref, lr=0.1, momentum=0.9)
    sched = [fo.optim.lr_scheduler.StepLR(zero, 3, 0.5), fo.optim.lr_scheduler.StepLR(plain, 3, 0.5)]
    calls = []
    zero.register_step_post_hook(lambda opt, args, kwargs: calls.append(kwargs.get("max_grad_norm")))
    for step in range(12):
        mine, mean = exact_grads(SHAPES, step)
        zero.step(grads=mine, **kw)
        plain.step(grads=mean, **kw)
        for s in sched:
            s.step()
        assert np.isclose(zero.last_grad_norm, plain.last_grad_norm, rtol=1e-13, atol=0), (kw, zero.last_grad_norm,
                                                                                          plain.last_grad_norm)
    assert calls == [kw["max_grad_norm"]] * 12 and zero.param_groups[0]["lr"] == plain.param_groups[0]["lr"] == 0.1 * 0.5**4
    for p, q in zip(ours, ref):
        assert np.allclose(p.data, q.data, rtol=1e-12, atol=1e-14), kw

ours = [fo.Parameter(a) for a in start()]
zero = ZeroRedundancyOptimizer(ours, fo.optim.Adam, lr=0.1)
before = [p.data.copy() for p in ours]
mine, _ = exact_grads(SHAPES, 0)
if rank == world - 1:
    mine[1][3] = np.inf
zero.step(grads=mine, skip_if_nonfinite=True)
assert np.isinf(zero.last_grad_norm) and not zero.optim.state
same([p.data for p in ours], before, "skip_if_nonfinite")

# -- add_param_group mid-run, Schedule-Free's two points, state dict round trips ------------
extra = [np.linspace(-1, 1, 7), np.ones((2, 3))]
for partition in ("flat", "greedy"):
    ours, ref = [fo.Parameter(a) for a in start()], [fo.Parameter(a) for a in start()]
    zero = ZeroRedundancyOptimizer(ours, fo.optim.AdamW, partition=partition, lr=0.05)
    plain = fo.optim.AdamW(ref, lr=0.05)
    shapes = list(SHAPES)
    for step in range(20):
        if step == 8:
            zero.add_param_group({"params": [fo.Parameter(a.copy()) for a in extra], "lr": 0.01})
            plain.add_param_group({"params": [fo.Parameter(a.copy()) for a in extra], "lr": 0.01})
            shapes += [a.shape for a in extra]
        mine, mean = exact_grads(shapes, step)
        zero.step(grads=mine)
        plain.step(grads=mean)
    same([p for g in zero.param_groups for p in g["params"]], [p for g in plain.param_groups for p in g["params"]],
         f"add_param_group {partition}")
    shard_sd = zero.state_dict()
    assert shard_sd["zero"]["rank"] == rank and shard_sd["zero"]["world_size"] == world
    zero.load_state_dict(shard_sd)  # (its own shard back)
    again = ZeroRedundancyOptimizer([fo.Parameter(p.data.copy()) for g in plain.param_groups for p in g["params"]][:4],
                                    fo.optim.AdamW, partition=partition, lr=0.05)
    again.add_param_group({"params": [fo.Parameter(p.data.copy()) for p in plain.param_groups[1]["params"]],
                           "lr": 0.01})
    again.load_state_dict(plain.state_dict())  # (a full state, re-sharded here)
    for step in range(20, 26):
        mine, mean = exact_grads(shapes, step)
        for opt in (zero, again):
            opt.step(grads=mine)
        plain.step(grads=mean)
    want = [p for g in plain.param_groups for p in g["params"]]
    for opt in (zero, again):
        same([p for g in opt.param_groups for p in g["params"]], want, f"state dict round trip {partition}")

ours, ref = [fo.Parameter(a) for a in start()], [fo.Parameter(a) for a in start()]
zero = ZeroRedundancyOptimizer(ours, fo.optim.AdamWScheduleFree, lr=0.02, warmup_steps=3)
plain = fo.optim.AdamWScheduleFree(ref, lr=0.02, warmup_steps=3)
for step in range(15):
    mine, mean = exact_grads(SHAPES, step)
    if step % 4 == 0:
        for opt in (zero, plain):
            opt.eval()
        same(ours, ref, f"Schedule-Free eval() at {step}")
        for opt in (zero, plain):
            opt.train()
    zero.step(grads=mine)
    plain.step(grads=mean)
same(ours, ref, "Schedule-Free")
assert zero.param_groups[0]["k"] == plain.param_groups[0]["k"] == 15

# -- memory: each rank holds about 1/N of the state -----------------------------------------
big = [np.zeros(1000), np.zeros((37, 29)), np.zeros(5)]
zero = ZeroRedundancyOptimizer([fo.Parameter(a) for a in big], fo.optim.Adam, lr=1e-3)
zero.step(grads=[np.ones_like(a) for a in big])
held = sum(v.nbytes for entry in zero.optim.state.values() for k, v in entry.items() if k != "step")
total = 2 * sum(a.nbytes for a in big)
assert held <= -(-total // world) + 2 * 64, (held, total)
assert comm.allreduce(held) == total

# -- the 'greedy' layout is torch's (ZeroRedundancyOptimizer._partition_parameters, gloo) ----
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.optim import ZeroRedundancyOptimizer as TorchZero  # noqa: E402

init_gloo(comm)
sizes = [(300,), (7, 7), (120,), (5,), (64, 3), (49,), (1,), (200,)]
tparams = [torch.zeros(s, dtype=torch.float64) for s in sizes]
theirs = TorchZero([{"params": tparams[:5]}, {"params": tparams[5:], "lr": 0.1}], optimizer_class=torch.optim.Adam)
owner_theirs = {}
for r, per_group in enumerate(theirs._partition_parameters()):
    for group in per_group:
        for t in group["params"]:
            owner_theirs[next(i for i, q in enumerate(tparams) if q is t)] = r
ours = ZeroRedundancyOptimizer([{"params": [np.zeros(s) for s in sizes[:5]]},
                                {"params": [np.zeros(s) for s in sizes[5:]], "lr": 0.1}],
                               fo.optim.Adam, partition="greedy")
layout = ours._zero["layout"]
owner_ours = {k: r for r in range(world) for k, _, _ in layout.pieces[r]}
assert owner_ours == owner_theirs, (owner_ours, owner_theirs)
dist.destroy_process_group()
print(f"rank {rank}: OK", flush=True)
