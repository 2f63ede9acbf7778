"""The second oracle: torch's DistributedDataParallel (gloo backend, CPU) on the same MLP,
weights and sharded batches as the DistributedOptimizer: the same parameters after 30 Adam
steps (float64 within 1e-12)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer
from fastopt.bench.mpi import init_gloo
from _common import backward, batches, model, shard

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
torch.set_num_threads(1)
init_gloo(comm)

net = model()
layers = [m for m in net.children() if isinstance(m, fo.nn.Linear)]
tnet = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
with torch.no_grad():
    for ours, theirs in zip(layers, [tnet[0], tnet[2]]):
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        theirs.bias.copy_(torch.from_numpy(ours.bias.data))
ddp = torch.nn.parallel.DistributedDataParallel(tnet)
topt = torch.optim.Adam(ddp.parameters(), lr=1e-2, foreach=False)
fopt = DistributedOptimizer(fo.optim.Adam(net.parameters(), lr=1e-2))
for x, t in batches(30, 8 * world):
    xs, ts = shard(x, rank, world), shard(t, rank, world)
    topt.zero_grad()
    y = ddp(torch.from_numpy(xs))
    (0.5 * ((y - torch.from_numpy(ts)) ** 2).sum(1).mean()).backward()
    topt.step()
    fopt.zero_grad()
    backward(net, xs, ts)
    fopt.step()
ours = [p.data for m in layers for p in (m.weight, m.bias)]
theirs = [p.detach().numpy() for m in (tnet[0], tnet[2]) for p in (m.weight, m.bias)]
for i, (a, b) in enumerate(zip(ours, theirs)):
    err = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert err <= 1e-12, f"parameter {i}: relative difference {err:.3g} from torch DDP"
dist.destroy_process_group()
print(f"rank {rank}: OK", flush=True)
