"""Shared set-up for the optimizer benchmarks: the same problem for every implementation."""

from __future__ import annotations

import numpy as np

SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
THREADS = [1, 2]


def problem(n: int, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)


def set_threads(threads: int) -> None:
    import fastopt

    fastopt.set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


# torch optimizers with a fused CPU kernel.
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}


def torch_optimizer(name: str, variant: str, p0: np.ndarray, g: np.ndarray, **kw):
    """A torch optimizer over one tensor; variant 'default' (single-tensor loop, torch's CPU
    default), 'foreach' or 'fused'. Raises NotImplementedError (asv: skipped) without torch
    or for a fused variant torch lacks."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NotImplementedError("torch is not installed") from e
    if variant == "fused" and name not in TORCH_FUSED:
        raise NotImplementedError(f"torch has no fused {name}")
    if not hasattr(torch.optim, name):
        raise NotImplementedError(f"torch has no {name}")
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    tp.grad = torch.from_numpy(g.copy())
    flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[variant]
    return getattr(torch.optim, name)([tp], **kw, **flags)


class NumpyAdam:
    """Adam written carefully in NumPy: in place, preallocated temporaries, torch's formula."""

    def __init__(self, p, g, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
        self.p, self.g = p, g
        self.m, self.v, self.tmp = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
        self.lr, self.b1, self.b2, self.eps, self.wd, self.decoupled = lr, beta1, beta2, eps, weight_decay, decoupled
        self.t = 0

    def step(self):
        self.t += 1
        p, g, m, v, tmp = self.p, self.g, self.m, self.v, self.tmp
        if self.wd and self.decoupled:
            p *= 1 - self.lr * self.wd
        m *= self.b1
        np.multiply(g, 1 - self.b1, out=tmp)
        m += tmp
        v *= self.b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - self.b2
        v += tmp
        bc1 = 1 - self.b1**self.t
        bc2s = (1 - self.b2**self.t) ** 0.5
        np.sqrt(v, out=tmp)
        tmp /= bc2s
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= -self.lr / bc1
        p += tmp


class NumpySGD:
    """SGD with momentum in NumPy, in place."""

    def __init__(self, p, g, lr=1e-3, momentum=0.9):
        self.p, self.g, self.lr, self.mom = p, g, lr, momentum
        self.buf = None

    def step(self):
        if self.buf is None:
            self.buf = self.g.copy()
        else:
            self.buf *= self.mom
            self.buf += self.g
        self.p -= self.lr * self.buf


class NumpyAdagrad:
    """Adagrad in NumPy, in place with a preallocated temporary."""

    def __init__(self, p, g, lr=1e-2, eps=1e-10):
        self.p, self.g, self.lr, self.eps = p, g, lr, eps
        self.sum, self.tmp = np.zeros_like(p), np.empty_like(p)

    def step(self):
        np.multiply(self.g, self.g, out=self.tmp)
        self.sum += self.tmp
        np.sqrt(self.sum, out=self.tmp)
        self.tmp += self.eps
        np.divide(self.g, self.tmp, out=self.tmp)
        self.tmp *= -self.lr
        self.p += self.tmp


class NumpyRMSprop:
    """RMSprop in NumPy, in place with a preallocated temporary."""

    def __init__(self, p, g, lr=1e-2, alpha=0.99, eps=1e-8):
        self.p, self.g, self.lr, self.alpha, self.eps = p, g, lr, alpha, eps
        self.sq, self.tmp = np.zeros_like(p), np.empty_like(p)

    def step(self):
        self.sq *= self.alpha
        np.multiply(self.g, self.g, out=self.tmp)
        self.tmp *= 1 - self.alpha
        self.sq += self.tmp
        np.sqrt(self.sq, out=self.tmp)
        self.tmp += self.eps
        np.divide(self.g, self.tmp, out=self.tmp)
        self.tmp *= -self.lr
        self.p += self.tmp
