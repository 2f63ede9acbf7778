"""SyncBatchNorm on N ranks with uneven shards (on 4 ranks: 0, 1, 3 and 7 rows) against
BatchNorm1d/2d on the concatenated batch: outputs, input gradients, the ranks' summed weight
and bias gradients, running statistics; float64 within 1e-12, float32 within 1e-5, float32
inputs with a mean of 1e4 included; convert_sync_batchnorm."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import fastopt as fo

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
SIZES = [0, 1, 3, 7] if world == 4 else [2 + 3 * r for r in range(world)]
start, stop = sum(SIZES[:rank]), sum(SIZES[:rank + 1])


def close(a, b, tol, what):
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)) / scale
    assert err <= tol, f"{what}: relative difference {err:.3g} > {tol}"


CASES = [(fo.nn.BatchNorm1d, ()), (fo.nn.BatchNorm1d, (5,)), (fo.nn.BatchNorm2d, (3, 4))]
for dtype, tol, offset in ((np.float64, 1e-12, 0.0), (np.float32, 1e-5, 0.0), (np.float32, 1e-5, 1e4)):
    for cls, tail in CASES:
        rng = np.random.default_rng(7)
        total = sum(SIZES)
        x = (rng.standard_normal((total, 3, *tail)) * 2 + offset).astype(dtype)
        dy = rng.standard_normal((total, 3, *tail)).astype(dtype)
        ref = cls(3, momentum=0.3, dtype=dtype)
        ref.weight.data[...] = [0.5, 1.5, -1.0]
        ref.bias.data[...] = [0.1, -0.2, 0.3]
        mine = fo.nn.SyncBatchNorm.convert_sync_batchnorm(fo.nn.Sequential(cls(3, momentum=0.3, dtype=dtype)))[0]
        assert isinstance(mine, fo.nn.SyncBatchNorm)
        mine.weight.data[...] = ref.weight.data
        mine.bias.data[...] = ref.bias.data
        for step in range(2):  # (twice: the running statistics move twice)
            y_ref = ref(x)
            gx_ref = ref.backward(dy)
            y = mine(x[start:stop])
            gx = mine.backward(dy[start:stop])
            what = f"{cls.__name__}{tail} {np.dtype(dtype).name} offset {offset} step {step}"
            close(y, y_ref[start:stop], tol, f"{what} output")
            close(gx, gx_ref[start:stop], tol, f"{what} input gradient")
            for p, q, name in ((mine.weight, ref.weight, "weight"), (mine.bias, ref.bias, "bias")):
                summed = p.grad.astype(np.float64)
                comm.Allreduce(MPI.IN_PLACE, summed, op=MPI.SUM)
                close(summed, q.grad, tol, f"{what} {name} gradient")
                p.grad, q.grad = None, None
            close(mine.running_mean, ref.running_mean, tol, f"{what} running_mean")
            close(mine.running_var, ref.running_var, tol, f"{what} running_var")
            assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
        mine.eval(), ref.eval()
        close(mine(x[start:stop]), ref(x)[start:stop], tol, f"{cls.__name__} eval")

# Fewer than two values per channel over all ranks: the same error on every rank.
try:
    fo.nn.functional.sync_batch_norm(np.ones((1 if rank == 0 else 0, 2)), None, None)
except ValueError as e:
    assert "Expected more than 1 value per channel when training, got 1 over all ranks" in str(e), e
else:
    raise AssertionError("no error")
print(f"rank {rank}: OK", flush=True)
