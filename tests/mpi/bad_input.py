"""Bad input raises the same clear error on every rank, never a hang."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, broadcast_parameters

comm = MPI.COMM_WORLD
rank = comm.rank


def raises(kind, match, fn):
    try:
        fn()
    except kind as e:
        assert match in str(e), f"{match!r} not in {e!r}"
        return
    raise AssertionError(f"no {kind.__name__} ({match})")


# rank 1 has a different model: every rank raises, naming the first difference
shape = (3, 2) if rank != 1 else (3, 4)
ps = [fo.Parameter(np.zeros(4)), fo.Parameter(np.zeros(shape))]
raises(ValueError, "rank 1's 1th (param_groups[0]['params'][1]) has shape (3, 4)",
       lambda: DistributedOptimizer(fo.optim.SGD(ps, lr=0.1)))
raises(ValueError, "rank 1's 1th (params[1]) has shape (3, 4)", lambda: broadcast_parameters(ps))
# one more parameter on the last rank
extra = [fo.Parameter(np.zeros(2)) for _ in range(2 if rank == comm.size - 1 else 1)]
raises(ValueError, f"rank {comm.size - 1} has 2 but rank 0 has 1", lambda: DistributedOptimizer(fo.optim.SGD(extra, lr=0.1)))

good = [fo.Parameter(np.zeros(3))]
raises(ValueError, "bucket_cap_mb must be a number of megabytes > 0", lambda: DistributedOptimizer(fo.optim.SGD(good, lr=0.1), bucket_cap_mb=0))
raises(ValueError, "op must be one of", lambda: DistributedOptimizer(fo.optim.SGD(good, lr=0.1), op="max"))
raises(ValueError, "compression must be one of", lambda: DistributedOptimizer(fo.optim.SGD(good, lr=0.1), compression="int8"))
raises(ValueError, "backward_passes_per_step must be an int >= 1", lambda: DistributedOptimizer(fo.optim.SGD(good, lr=0.1), backward_passes_per_step=0))
raises(TypeError, "comm must be an mpi4py MPI.Intracomm", lambda: DistributedOptimizer(fo.optim.SGD(good, lr=0.1), comm="world"))
raises(TypeError, "optimizer must be a fastopt optimizer", lambda: DistributedOptimizer([1, 2]))
raises(TypeError, "cannot wrap LBFGS", lambda: DistributedOptimizer(fo.optim.LBFGS(good)))
wrapped = DistributedOptimizer(fo.optim.SGD(good, lr=0.1))
raises(ValueError, "already a DistributedOptimizer", lambda: DistributedOptimizer(wrapped))
inner = fo.optim.SGD([fo.Parameter(np.zeros(3))], lr=0.1)
first = DistributedOptimizer(inner)
raises(ValueError, "already a DistributedOptimizer (or wrapped by one)", lambda: DistributedOptimizer(inner))
assert isinstance(wrapped, fo.optim.SGD) and isinstance(wrapped, fo.optim.Optimizer)
print(f"rank {rank}: OK", flush=True)
