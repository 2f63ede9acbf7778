"""DistributedOptimizer on N ranks with sharded batches against one process on the whole
batch (computed on every rank without MPI): float64 within 1e-12 after 50 steps; with
deterministic=True bit-identical to summing the shards' gradients in rank order; with
backward_passes_per_step, clipping, compression, op='sum' and plain arrays too."""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer
from _common import backward, batches, grads_of, model, shard

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
STEPS = 50
OPTIMIZERS = [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=1e-2)), ("Lion", dict(lr=1e-3)),
              ("RMSprop", dict(lr=1e-2, centered=True))]


def reference(name, kw, data, *, deterministic=False, passes=1, max_grad_norm=None):
    """One process: the same updates from the whole batch (or, deterministic, from the shards'
    gradients summed in rank order then divided, as the wrapper does)."""
    net = model()
    opt = getattr(fo.optim, name)(net.parameters(), **kw)
    for x, t in data:
        if deterministic or passes > 1:
            per_rank = []
            for r in range(world):
                xs, ts = shard(x, r, world), shard(t, r, world)
                if passes > 1:  # two half-shards accumulated into one gradient
                    h = len(xs) // 2
                    a, b = grads_of(net, xs[:h], ts[:h]), grads_of(net, xs[h:], ts[h:])
                    per_rank.append([u + v for u, v in zip(a, b)])
                else:
                    per_rank.append(grads_of(net, xs, ts))
            total = [g.copy() for g in per_rank[0]]
            for other in per_rank[1:]:
                for a, b in zip(total, other):
                    a += b
            for a in total:
                a /= a.dtype.type(world)
            for p, g in zip(net.parameters(), total):
                p.grad = g
        else:
            for p in net.parameters():
                p.grad = None
            backward(net, x, t)
        opt.step(max_grad_norm=max_grad_norm) if max_grad_norm else opt.step()
    return [p.data.copy() for p in net.parameters()]


def distributed(name, kw, data, *, passes=1, max_grad_norm=None, **options):
    net = model()
    opt = DistributedOptimizer(getattr(fo.optim, name)(net.parameters(), **kw), bucket_cap_mb=1e-4,
                               first_bucket_mb=5e-5, backward_passes_per_step=passes, **options)
    for x, t in data:
        xs, ts = shard(x, rank, world), shard(t, rank, world)
        opt.zero_grad()
        if passes > 1:
            h = len(xs) // 2
            backward(net, xs[:h], ts[:h])
            backward(net, xs[h:], ts[h:])
        else:
            backward(net, xs, ts)
        opt.step(max_grad_norm=max_grad_norm) if max_grad_norm else opt.step()
    return [p.data.copy() for p in net.parameters()]


def close(a, b, tol, what):
    for i, (u, v) in enumerate(zip(a, b)):
        err = np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300)
        assert err <= tol, f"{what}: parameter {i} relative difference {err:.3g} > {tol}"


data = batches(STEPS, 8 * world)
for name, kw in OPTIMIZERS:
    close(distributed(name, kw, data), reference(name, kw, data), 1e-12, f"{name} average")
    mine = distributed(name, kw, data, deterministic=True)
    want = reference(name, kw, data, deterministic=True)
    for u, v in zip(mine, want):
        assert np.array_equal(u, v), f"{name} deterministic: not bit-identical"
close(distributed("SGD", dict(lr=0.05), data, passes=2), reference("SGD", dict(lr=0.05), data, passes=2), 1e-12,
      "backward_passes_per_step=2")
close(distributed("Adam", dict(lr=1e-2), data, max_grad_norm=0.05),
      reference("Adam", dict(lr=1e-2), data, max_grad_norm=0.05), 1e-12, "max_grad_norm")
# op='sum' is the average times the world size: SGD with lr / world takes the same steps
close(distributed("SGD", dict(lr=0.05 / world), data, op="sum"), reference("SGD", dict(lr=0.05), data), 1e-12, "op=sum")
for compression, tol in (("float16", 2e-2), ("bfloat16", 5e-2)):
    close(distributed("SGD", dict(lr=0.05), data[:10], compression=compression),
          reference("SGD", dict(lr=0.05), data[:10]), tol, compression)
    det = [distributed("SGD", dict(lr=0.05), data[:10], compression=compression, deterministic=True) for _ in range(2)]
    assert all(np.array_equal(u, v) for u, v in zip(*det)), f"{compression} deterministic run to run"

# plain arrays and step(grads=[...]), with synchronize() and skip_synchronize() around clipping
net = model()
arrays = [p.data for p in net.parameters()]
opt = DistributedOptimizer(fo.optim.Adam(arrays, lr=1e-2))
ref_net = model()
ref = fo.optim.Adam([p.data for p in ref_net.parameters()], lr=1e-2)
for x, t in data[:20]:
    g = grads_of(net, shard(x, rank, world), shard(t, rank, world))
    opt.synchronize(grads=g)
    with opt.skip_synchronize():
        opt.step(grads=g)
    ref.step(grads=grads_of(ref_net, x, t))
close(arrays, [p.data for p in ref_net.parameters()], 1e-12, "plain arrays")
assert all(np.array_equal(a, b) for a, b in zip(arrays, comm.bcast(arrays, root=0))), "ranks diverged"
print(f"rank {rank}: OK", flush=True)
