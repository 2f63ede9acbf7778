"""Activations (forward and backward), softmax / cross-entropy and batch_norm, float32:
fastopt against torch's ATen kernels writing into preallocated outputs and careful NumPy, at
the same thread count."""

from __future__ import annotations

import numpy as np

from . import nn_peers as P
from .common import THREADS, import_torch, set_threads, warm_up


def _need_torch():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise NotImplementedError("torch is not installed") from e


class Activation:
    params = (P.ACTIVATIONS, [1_000_000, 10_000_000], THREADS, ["fastopt", "torch", "numpy"])
    param_names = ["activation", "n", "threads", "impl"]
    timeout = 300

    def setup(self, name, n, threads, impl):
        if impl == "numpy" and name == "gelu" and n > 1_000_000:
            raise NotImplementedError("NumPy's per-element erf is too slow to time at this size")
        if impl == "torch":
            _need_torch()
        set_threads(threads)
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        out = np.empty_like(x)
        fwd = getattr(P, f"{impl}_forward")
        bwd = getattr(P, f"{impl}_backward")
        saved = P.fastopt_forward(name, x, np.empty_like(x))() if name in P.SAVES_OUTPUT else x
        self.forward = fwd(name, x, out)
        self.backward = bwd(name, g, saved, np.empty_like(x))
        warm_up(self.forward, self.backward)

    def time_forward(self, name, n, threads, impl):
        self.forward()

    def time_backward(self, name, n, threads, impl):
        self.backward()

    def peakmem_forward(self, name, n, threads, impl):
        self.forward()


class BatchNormTrain:
    """Training forward + backward (input, weight and bias gradients)."""

    params = ([(256, 4096), (32, 64, 56, 56)], THREADS, ["fastopt", "torch", "numpy"])
    param_names = ["shape", "threads", "impl"]
    timeout = 300

    def setup(self, shape, threads, impl):
        if impl == "torch":
            _need_torch()
        set_threads(threads)
        self.step = getattr(P, f"{impl}_batch_norm_step")(*P.batch_norm_problem(shape))
        warm_up(self.step)

    def time_forward_backward(self, shape, threads, impl):
        self.step()

    def peakmem_forward_backward(self, shape, threads, impl):
        self.step()


class CrossEntropy:
    """log-softmax cross-entropy over 1000 classes, forward + backward."""

    params = ([256, 4096], THREADS, ["fastopt", "torch"])
    param_names = ["rows", "threads", "impl"]

    def setup(self, rows, threads, impl):
        set_threads(threads)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((rows, 1000)).astype(np.float32)
        t = rng.integers(0, 1000, rows)
        if impl == "fastopt":
            import fastopt.nn.functional as F

            grad = np.empty_like(x)

            def step():
                F.cross_entropy(x, t)
                F.cross_entropy_backward(1.0, x, t, out=grad)
        else:
            _need_torch()
            torch = import_torch()

            xt = torch.from_numpy(x).requires_grad_(True)
            tt = torch.from_numpy(t)

            def step():
                xt.grad = None
                torch.nn.functional.cross_entropy(xt, tt).backward()
        self.step = step
        warm_up(step)

    def time_forward_backward(self, rows, threads, impl):
        self.step()

    def peakmem_forward_backward(self, rows, threads, impl):
        self.step()


class Softmax:
    """softmax over the last axis of (rows, 1000), forward and backward, into preallocated
    outputs: fastopt against torch's ATen kernels (`_softmax.out`, `_softmax_backward_data.out`)."""

    params = ([256, 4096], THREADS, ["fastopt", "torch"])
    param_names = ["rows", "threads", "impl"]

    def setup(self, rows, threads, impl):
        set_threads(threads)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((rows, 1000)).astype(np.float32)
        g = rng.standard_normal((rows, 1000)).astype(np.float32)
        out, gx = np.empty_like(x), np.empty_like(x)
        if impl == "fastopt":
            import fastopt.nn.functional as F

            self.forward = lambda: F.softmax(x, -1, out=out)
            self.backward = lambda: F.softmax_backward(g, out, -1, out=gx)
        else:
            _need_torch()
            torch = import_torch()

            a = torch.ops.aten
            xt, gt, ot, gxt = (torch.from_numpy(v) for v in (x, g, out, gx))
            self.forward = lambda: a._softmax.out(xt, -1, False, out=ot)
            self.backward = lambda: a._softmax_backward_data.out(gt, ot, -1, torch.float32, grad_input=gxt)
        warm_up(self.forward, self.backward)

    def time_forward(self, rows, threads, impl):
        self.forward()

    def time_backward(self, rows, threads, impl):
        self.backward()
