"""fastopt on CuPy arrays against torch on CUDA: float32 Adam over 2**26 and 2**28 elements
split into 1, 64 and 1024 tensors (fastopt's one launch per group against torch's
``fused=True``), timed on the device with CUDA events; and the host time of a step over 1000
small tensors. Skipped (asv's NotImplementedError) where CuPy, torch or a GPU is missing.

``benches/gpu_check.py`` runs the same measurements, interleaved, with the correctness checks."""

from __future__ import annotations

import time

import numpy as np

import fastopt as fo


def _gpu():
    try:
        import cupy as cp
        import torch
    except ImportError as e:
        raise NotImplementedError(f"needs CuPy and torch: {e}") from None
    from fastopt.backends import cuda

    if not cuda.available() or not torch.cuda.is_available():
        raise NotImplementedError("no CUDA GPU")
    return cp, torch


def _split(total: int, count: int) -> list[int]:
    sizes = [total // count] * count
    sizes[-1] += total - sum(sizes)
    return sizes


class AdamStep:
    """Device time of one float32 Adam step (CUDA events), in milliseconds."""

    params = ([2**26, 2**28], [1, 64, 1024], ["fastopt", "torch-fused"])
    param_names = ["elements", "tensors", "impl"]
    timeout = 600
    number = 1
    repeat = 1
    unit = "ms"

    def setup(self, elements, tensors, impl):
        cp, torch = _gpu()
        self.cp = cp
        sizes = _split(elements, tensors)
        if impl == "fastopt":
            ps = [fo.Parameter(cp.random.standard_normal(n, dtype=np.float32)) for n in sizes]
            for p in ps:
                p.grad = cp.random.standard_normal(p.shape, dtype=np.float32)
            self.step = fo.optim.Adam(ps, lr=1e-3).step
        else:
            tp = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in sizes]
            for p in tp:
                p.grad = torch.randn_like(p)
            self.step = torch.optim.Adam(tp, lr=1e-3, fused=True).step
        for _ in range(3):
            self.step()
        cp.cuda.Device().synchronize()

    def track_step_ms(self, elements, tensors, impl):
        cp = self.cp
        times = []
        for _ in range(21):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            self.step()
            b.record()
            b.synchronize()
            times.append(cp.cuda.get_elapsed_time(a, b))
        return float(np.median(times))


class HostTime:
    """Host time of one float32 Adam step over 1000 tensors of 1000 elements, in microseconds
    (the step only queues work: this is what the GPU never waits for)."""

    params = ["fastopt", "torch-fused"]
    param_names = ["impl"]
    timeout = 300
    unit = "us"

    def setup(self, impl):
        cp, torch = _gpu()
        self.sync = cp.cuda.Device().synchronize
        if impl == "fastopt":
            ps = [fo.Parameter(cp.random.standard_normal(1000, dtype=np.float32)) for _ in range(1000)]
            for p in ps:
                p.grad = cp.random.standard_normal(1000, dtype=np.float32)
            self.step = fo.optim.Adam(ps, lr=1e-3).step
        else:
            tp = [torch.nn.Parameter(torch.randn(1000, device="cuda")) for _ in range(1000)]
            for p in tp:
                p.grad = torch.randn_like(p)
            self.step = torch.optim.Adam(tp, lr=1e-3, fused=True).step
        for _ in range(5):
            self.step()

    def track_host_us(self, impl):
        samples = []
        for _ in range(8):
            self.sync()
            for _ in range(25):
                t0 = time.perf_counter()
                self.step()
                samples.append(time.perf_counter() - t0)
        return float(np.median(samples) * 1e6)
