"""Buckets start during backward (the post-accumulate hook); broadcast_parameters and
broadcast_optimizer_state make every rank rank 0's; a parameter no rank has a gradient for
keeps grad None."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, broadcast_optimizer_state, broadcast_parameters
from _common import backward, batches, model, shard

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size

# Every rank starts from its own weights; the broadcast makes them rank 0's.
net = model(seed=rank)
broadcast_parameters(net, root=0)
want = model(seed=0)
for p, q in zip(net.parameters(), want.parameters()):
    assert np.array_equal(p.data, q.data)

opt = DistributedOptimizer(fo.optim.Adam(net.parameters(), lr=1e-2), bucket_cap_mb=1e-4, first_bucket_mb=5e-5)
buckets = opt._dist["buckets"]
assert len(buckets) >= 3, len(buckets)
x, t = batches(1, 4 * world)[0]
opt.zero_grad()
# The last layer's backward finishes the last parameters first: their bucket starts while the
# first layer is not yet differentiated.
y = net.forward(shard(x, rank, world))
g = (y - shard(t, rank, world)) / (len(x) // world)
layers = list(net.children())
g_hidden = layers[2].backward(g)
assert opt._dist["started"] >= 1, "no bucket started during backward"
started_mid = opt._dist["started"]
assert started_mid < len(buckets)
layers[0].backward(layers[1].backward(g_hidden))
assert opt._dist["started"] == len(buckets)
views = [opt._dist["bucket_of"][i].views[i] for i in range(len(list(net.parameters())))]
assert all(p.grad is v for p, v in zip(net.parameters(), views)), "backward did not write into the buckets"
opt.step()
for p in net.parameters():
    assert p.grad is not None
    gathered = comm.allgather(p.data)
    assert all(np.array_equal(gathered[0], a) for a in gathered), "ranks diverged"

# A parameter no rank has a gradient for keeps None and is not stepped (after zero_grad too,
# which points every grad at its zeroed bucket view); one only some ranks have is averaged
# with zeros from the others.
w, v, u = fo.Parameter(np.ones(3)), fo.Parameter(np.ones(2)), fo.Parameter(np.ones(2))
opt2 = DistributedOptimizer(fo.optim.Adam([w, v, u], lr=0.1))
for step in range(2):
    opt2.zero_grad()
    assert v.grad is not None and not v.grad.any()
    w.grad = np.full(3, float(rank + 1))
    if rank == 0:
        u.grad = np.full(2, 2.0)
    opt2.step()
    assert v.grad is None and np.array_equal(v.data, np.ones(2)) and v not in opt2.state
    np.testing.assert_array_equal(w.grad, np.full(3, np.mean(np.arange(world) + 1.0)))
    np.testing.assert_array_equal(u.grad, np.full(2, 2.0 / world))

# A wrapper that is dropped removes its hooks: a new one owns the parameters alone.
import gc

q = fo.Parameter(np.ones(2))
dropped = DistributedOptimizer(fo.optim.SGD([q], lr=0.1))
assert len(q._grad_hooks) == 1
del dropped
gc.collect()
assert not q._grad_hooks
kept = DistributedOptimizer(fo.optim.SGD([q], lr=0.1))
assert len(q._grad_hooks) == 1

# Optimizer state: rank 0's, on every rank.
opt3 = fo.optim.Adam([fo.Parameter(np.full(4, float(rank)))], lr=0.1)
p3 = opt3.param_groups[0]["params"][0]
p3.grad = np.full(4, rank + 1.0)
opt3.step()
root_state = comm.bcast(opt3.state[p3]["exp_avg"].copy(), root=0)
assert rank == 0 or not np.array_equal(opt3.state[p3]["exp_avg"], root_state)
broadcast_optimizer_state(opt3, root=0)
assert np.array_equal(opt3.state[p3]["exp_avg"], root_state)
assert float(opt3.state[p3]["step"]) == 1.0
print(f"rank {rank}: OK", flush=True)
