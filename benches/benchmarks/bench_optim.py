"""One optimizer step over one float32 tensor: fastopt against torch (default single-tensor
loop, foreach, fused) and careful in-place NumPy, over size and thread count."""

from __future__ import annotations

import fastopt as fo

from .common import (
    SIZES,
    THREADS,
    NumpyAdadelta,
    NumpyAdagrad,
    NumpyAdam,
    NumpyAdamax,
    NumpyASGD,
    NumpyNAdam,
    NumpyRAdam,
    NumpyRMSprop,
    NumpyRprop,
    NumpySGD,
    problem,
    set_threads,
    torch_optimizer,
)

IMPLS = ["fastopt", "torch", "torch-foreach", "torch-fused", "numpy"]


class _Step:
    params = (SIZES, THREADS, IMPLS)
    param_names = ["n", "threads", "impl"]
    timeout = 300
    optimizer = ""
    kwargs: dict = {}

    def setup(self, n, threads, impl):
        set_threads(threads)
        p0, g = problem(n)
        if impl == "fastopt":
            p = fo.Parameter(p0)
            p.grad = g
            self.step = getattr(fo.optim, self.optimizer)([p], **self.kwargs).step
        elif impl.startswith("torch"):
            variant = impl.split("-")[1] if "-" in impl else "default"
            self.step = torch_optimizer(self.optimizer, variant, p0, g, **self.kwargs).step
        else:
            self.step = self.numpy_step(p0, g)
        self.step()  # state allocation is not part of a step

    def numpy_step(self, p, g):
        raise NotImplementedError

    def time_step(self, n, threads, impl):
        self.step()

    def peakmem_step(self, n, threads, impl):
        self.step()


class Adam(_Step):
    optimizer = "Adam"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyAdam(p, g, lr=1e-3).step


class AdamW(_Step):
    optimizer = "AdamW"
    kwargs = {"lr": 1e-3, "weight_decay": 1e-2}

    def numpy_step(self, p, g):
        return NumpyAdam(p, g, lr=1e-3, weight_decay=1e-2, decoupled=True).step


class SGDMomentum(_Step):
    optimizer = "SGD"
    kwargs = {"lr": 1e-3, "momentum": 0.9}

    def numpy_step(self, p, g):
        return NumpySGD(p, g, lr=1e-3, momentum=0.9).step


class Adagrad(_Step):
    optimizer = "Adagrad"
    kwargs = {"lr": 1e-2}

    def numpy_step(self, p, g):
        return NumpyAdagrad(p, g, lr=1e-2).step


class RMSprop(_Step):
    optimizer = "RMSprop"
    kwargs = {"lr": 1e-2}

    def numpy_step(self, p, g):
        return NumpyRMSprop(p, g, lr=1e-2).step


class _NoNumpyPeer(_Step):
    def numpy_step(self, p, g):
        raise NotImplementedError("no NumPy version of this optimizer in the suite")


class Adamax(_Step):
    optimizer = "Adamax"
    kwargs = {"lr": 2e-3}

    def numpy_step(self, p, g):
        return NumpyAdamax(p, g, **self.kwargs).step


class Adadelta(_Step):
    optimizer = "Adadelta"
    kwargs = {"lr": 1.0}

    def numpy_step(self, p, g):
        return NumpyAdadelta(p, g, **self.kwargs).step


class NAdam(_Step):
    optimizer = "NAdam"
    kwargs = {"lr": 2e-3}

    def numpy_step(self, p, g):
        return NumpyNAdam(p, g, **self.kwargs).step


class RAdam(_Step):
    optimizer = "RAdam"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyRAdam(p, g, **self.kwargs).step


class AdaBound(_NoNumpyPeer):
    optimizer = "AdaBound"
    kwargs = {"lr": 1e-3}


class Lion(_NoNumpyPeer):
    optimizer = "Lion"
    kwargs = {"lr": 1e-4}


class AdaBelief(_NoNumpyPeer):
    optimizer = "AdaBelief"
    kwargs = {"lr": 1e-3}


class ASGD(_Step):
    optimizer = "ASGD"
    kwargs = {"lr": 1e-2}

    def numpy_step(self, p, g):
        return NumpyASGD(p, g, **self.kwargs).step


class Rprop(_Step):
    optimizer = "Rprop"
    kwargs = {"lr": 1e-2}

    def numpy_step(self, p, g):
        return NumpyRprop(p, g, **self.kwargs).step


class Lamb(_NoNumpyPeer):
    optimizer = "Lamb"
    kwargs = {"lr": 1e-3, "weight_decay": 0.01}


class Adafactor(_NoNumpyPeer):
    optimizer = "Adafactor"
    kwargs = {"lr": 1e-2}
