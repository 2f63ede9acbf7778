"""The MPI wrappers on one rank (asv cannot launch ``mpiexec``; the multi-rank figures come from
``OMP_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py -m fastopt.bench.mpi``): Adam over
ResNet-50's 161 parameter shapes (float32) as the plain optimizer, inside the
DistributedOptimizer, inside the ZeroRedundancyOptimizer (bucket views, copies, and bfloat16
parameters and state with their gradients in float32), and
torch's ZeroRedundancyOptimizer (gloo, world size 1, ``fused=True`` Adam). On one rank the
wrappers' collectives are copies, so ``time_step`` is their overhead over the plain step and
``peakmem_step`` the memory each holds besides the model."""

from __future__ import annotations

import socket

import numpy as np

from .common import require_torch, set_threads, warm_up
from fastopt.bench.workloads import resnet50_shapes

IMPLS = ["fastopt.Adam", "DistributedOptimizer", "ZeroRedundancyOptimizer", "ZeroRedundancyOptimizer-copies",
         "ZeroRedundancyOptimizer-bfloat16", "torch-ZeroRedundancyOptimizer"]


def _torch_zero(shapes):
    torch = require_torch()
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    params = [torch.nn.Parameter(torch.full(s, 0.5)) for s in shapes]
    for p in params:
        p.grad = torch.ones(p.shape)
    opt = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.Adam, lr=1e-3, fused=True)
    return opt.step


class ResNet50Adam:
    params = (IMPLS,)
    param_names = ["impl"]
    timeout = 300

    def setup(self, impl):
        set_threads(1)
        import fastopt as fo

        shapes = resnet50_shapes()
        if impl.startswith("torch"):
            self.step = _torch_zero(shapes)
        else:
            dtype = np.float32
            if impl.endswith("-bfloat16"):
                import ml_dtypes

                dtype = ml_dtypes.bfloat16
            params = [fo.Parameter(np.full(s, 0.5, dtype)) for s in shapes]
            if impl == "fastopt.Adam":
                opt = fo.optim.Adam(params, lr=1e-3)
            elif impl == "DistributedOptimizer":
                from fastopt.distributed import DistributedOptimizer

                opt = DistributedOptimizer(fo.optim.Adam(params, lr=1e-3))
            else:
                from fastopt.distributed import ZeroRedundancyOptimizer

                opt = ZeroRedundancyOptimizer(params, fo.optim.Adam, lr=1e-3,
                                              parameters_as_bucket_view=not impl.endswith("-copies"))
            if impl == "fastopt.Adam":
                for p in params:
                    p.grad = np.ones(p.shape, np.float32)
            else:  # (gradients in the wrapper's buffers, as a backward into them leaves them)
                opt.zero_grad()
                for p in params:
                    p.grad[...] = 1.0
                    p._grad_accumulated()
            self.step = opt.step
        warm_up(self.step)

    def time_step(self, impl):
        self.step()

    def peakmem_step(self, impl):
        self.step()
