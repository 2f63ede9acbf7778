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

    def peakmem_step(self, n, threads, precision):
        self.step()


class ClipGradNorm16:
    """``clip_grad_norm_(..., max_norm=1)`` over one bfloat16 or float16 gradient (the norm,
    then the scale; after the first call the norm is about 1 and every call still scales):
    fastopt's kernels read and write the 16-bit values in place (float32 arithmetic, one
    rounding); torch's ``clip_grad_norm_`` on the CPU (foreach, 16-bit arithmetic for the
    per-tensor norm); NumPy through float32 copies."""

    params = (SIZES, [1, 2], ["bfloat16", "float16"], ["fastopt", "torch", "numpy"])
    param_names = ["n", "threads", "dtype", "impl"]
    timeout = 300

    def setup(self, n, threads, dtype, impl):
        set_threads(threads)
        g = np.random.default_rng(0).standard_normal(n, dtype=np.float32).astype(_numpy_dtype(dtype))
        if impl == "fastopt":
            p = fo.Parameter(np.zeros_like(g))
            p.grad = g
            self.f = lambda: fo.nn.utils.clip_grad_norm_([p], 1.0)
        elif impl == "torch":
            torch = import_torch()
            t = torch.nn.Parameter(torch.zeros(n, dtype=getattr(torch, dtype)))
            t.grad = torch.from_numpy(g.astype(np.float32)).to(t.dtype)
            self.f = lambda: torch.nn.utils.clip_grad_norm_([t], 1.0)
        else:
            def clip():
                wide = g.astype(np.float32)
                norm = np.float32(np.sqrt(np.dot(wide, wide)))
                g[...] = (wide * min(np.float32(1.0), np.float32(1.0) / (norm + np.float32(1e-6)))).astype(g.dtype)
            self.f = clip
        warm_up(self.f)

    def time_clip_grad_norm(self, n, threads, dtype, impl):
        self.f()


class AdamW8bitState:
    """AdamW with 8-bit blockwise state (``state_dtype='int8'``: uint8 codes and a float32
    absmax per 256 elements; 4.06 bytes of state traffic per element) over float32 or
    bfloat16 parameters (16.06 or 10.06 bytes per element in all), against the 8-bit AdamW of
    bitsandbytes (``bnb.optim.AdamW8bit``, its CPU path) and of torchao
    (``torchao.optim.AdamW8bit``, compiled by torch.compile on first use), and fastopt's own
    float32-state step (28 or 22 bytes)."""

    params = (SIZES, [1, 2], ["float32", "bfloat16"], ["fastopt-int8", "fastopt-float32-state", "bitsandbytes",
                                                        "torchao"])
    param_names = ["n", "threads", "dtype", "impl"]
    timeout = 600

    def setup(self, n, threads, dtype, impl):
        set_threads(threads)
        rng = np.random.default_rng(0)
        p32 = rng.standard_normal(n, dtype=np.float32)
        g32 = rng.standard_normal(n, dtype=np.float32)
        if impl.startswith("fastopt"):
            p = fo.Parameter(p32.astype(_numpy_dtype(dtype)))
            p.grad = g32.astype(p.data.dtype)
            state = "int8" if impl == "fastopt-int8" else ("float32" if dtype != "float32" else None)
            self.step = fo.optim.AdamW([p], lr=1e-4, state_dtype=state).step
        else:
            torch = import_torch()
            t = torch.nn.Parameter(torch.from_numpy(p32).to(getattr(torch, dtype)))
            t.grad = torch.from_numpy(g32).to(t.dtype)
            if impl == "bitsandbytes":
                import bitsandbytes as bnb

                self.step = bnb.optim.AdamW8bit([t], lr=1e-4).step
            else:
                import torchao.optim

                self.step = torchao.optim.AdamW8bit([t], lr=torch.tensor(1e-4)).step
        warm_up(self.step)

    def time_step(self, n, threads, dtype, impl):
        self.step()

    def peakmem_step(self, n, threads, dtype, impl):
        self.step()


class ScaledStep16:
    """A loss-scaled AdamW step over one float16 parameter (its float16 gradient holds the
    scaled values): ``GradScaler.step(opt)`` (the non-finite check's read pass, then the
    step unscaling as it reads), the same with ``max_grad_norm=1`` (clipping inside the step:
    the norm's pass is the check, then the step) and ``GradScaler.update()``; against torch's
    ``GradScaler`` with ``fused=True`` AdamW (its check pass, then the fused step, which takes
    the scale). torch cannot clip here: its ``unscale_`` refuses float16 gradients."""

    params = (SIZES, [1, 2], ["fastopt", "fastopt-clip", "torch-fused"])
    param_names = ["n", "threads", "impl"]
    timeout = 300

    def setup(self, n, threads, impl):
        set_threads(threads)
        rng = np.random.default_rng(0)
        p16 = rng.standard_normal(n, dtype=np.float32).astype(np.float16)
        g16 = (rng.standard_normal(n, dtype=np.float32) * 1024).astype(np.float16)
        if impl.startswith("fastopt"):
            p = fo.Parameter(p16)
            p.grad = g16
            opt = fo.optim.AdamW([p], lr=1e-4)
            scaler = fo.amp.GradScaler(init_scale=1024.0, growth_interval=10**9)
            kw = {"max_grad_norm": 1.0} if impl == "fastopt-clip" else {}

            def step():
                scaler.step(opt, **kw)
                scaler.update()
        else:
            torch = import_torch()
            t = torch.nn.Parameter(torch.from_numpy(p16))
            t.grad = torch.from_numpy(g16)
            opt = torch.optim.AdamW([t], lr=1e-4, fused=True)
            scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=10**9)
            scaler.scale(torch.ones(()))  # (torch makes its scale tensor on first use)

            def step():
                scaler.step(opt)
                scaler.update()
        self.step = step
        warm_up(self.step)

    def time_step(self, n, threads, impl):
        self.step()
