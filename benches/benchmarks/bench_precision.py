"""One Adam (or SGD with momentum) step over one tensor by parameter dtype: float32,
bfloat16 and float16 parameters (state in the parameters' dtype), fastopt against torch's
``fused=True`` CPU kernel, the only torch path that computes 16-bit steps in float32.

Bytes moved per element per Adam step: 28 in float32, 14 in 16 bits (parameter, gradient
and two moments read, three written)."""

from __future__ import annotations

import numpy as np

import fastopt as fo

from .common import import_torch, set_threads, warm_up

SIZES = [100_000, 10_000_000]
DTYPES = ["float32", "bfloat16", "float16"]
IMPLS = ["fastopt", "torch-fused"]


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _Step:
    params = (SIZES, [1], DTYPES, IMPLS)
    param_names = ["n", "threads", "dtype", "impl"]
    timeout = 300
    optimizer = ""
    kwargs: dict = {}

    def setup(self, n, threads, dtype, impl):
        set_threads(threads)
        rng = np.random.default_rng(0)
        p32 = rng.standard_normal(n, dtype=np.float32)
        g32 = rng.standard_normal(n, dtype=np.float32)
        if impl == "fastopt":
            p = fo.Parameter(p32.astype(_numpy_dtype(dtype)))
            p.grad = g32.astype(p.data.dtype)
            self.step = getattr(fo.optim, self.optimizer)([p], **self.kwargs).step
        else:
            torch = import_torch()
            t = torch.nn.Parameter(torch.from_numpy(p32).to(getattr(torch, dtype)))
            t.grad = torch.from_numpy(g32).to(t.dtype)
            self.step = getattr(torch.optim, self.optimizer)([t], fused=True, **self.kwargs).step
        warm_up(self.step)

    def time_step(self, n, threads, dtype, impl):
        self.step()


class Adam(_Step):
    optimizer = "Adam"
    kwargs = {"lr": 1e-4}


class SGDMomentum(_Step):
    optimizer = "SGD"
    kwargs = {"lr": 1e-4, "momentum": 0.9}


class AdamMasterWeights:
    """Adam over bfloat16 parameters by ``master_weights`` (None, ``'kahan'``: a bfloat16
    compensation buffer, ``'remainder'``: the int16 low bits of a float32 master,
    ``'float32'``: a float32 copy; 14, 18, 18 and 22 bytes per element; ``'stochastic'``:
    stochastic rounding, 14 bytes and a hash per element; float16 with it too), beside the
    float32 step (28 bytes): fastopt only, as no peer has these on the CPU."""

    params = (SIZES, [1, 2], ["float32", "bfloat16", "bfloat16-kahan", "bfloat16-remainder", "bfloat16-float32",
                              "bfloat16-stochastic", "float16", "float16-stochastic"])
    param_names = ["n", "threads", "precision"]
    timeout = 300

    def setup(self, n, threads, precision):
        set_threads(threads)
        rng = np.random.default_rng(0)
        dtype, _, master = precision.partition("-")
        p = fo.Parameter(rng.standard_normal(n, dtype=np.float32).astype(_numpy_dtype(dtype)))
        p.grad = rng.standard_normal(n, dtype=np.float32).astype(p.data.dtype)
        self.step = fo.optim.Adam([p], lr=1e-4, master_weights=master or None).step
        warm_up(self.step)

    def time_step(self, n, threads, precision):
        self.step()
