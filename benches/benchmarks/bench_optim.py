"""One optimizer step over one float32 tensor: fastopt against torch (default single-tensor
loop, foreach, fused) and careful in-place NumPy, over size and thread count."""

from __future__ import annotations

import fastopt as fo

from .common import (
    SIZES,
    THREADS,
    require_torch,
    NumpyADOPT,
    NumpyAdaBelief,
    NumpyAdEMAMix,
    NumpyAdaBound,
    NumpyAdadelta,
    NumpyAdagrad,
    NumpyAdam,
    NumpyAdamax,
    NumpyASGD,
    NumpyLamb,
    NumpyLion,
    NumpyNAdam,
    NumpyRAdam,
    NumpyRMSprop,
    NumpyRprop,
    NumpySGD,
    optax_optimizer,
    problem,
    set_threads,
    torch_optimizer,
    warm_up,
)
from fastopt.bench.workloads import WORKLOADS, make_tensors

IMPLS = ["fastopt", "torch", "torch-foreach", "torch-fused", "numpy"]
DTYPES = ["float32", "float64"]


class _Step:
    params = (SIZES, THREADS, DTYPES, IMPLS)
    param_names = ["n", "threads", "dtype", "impl"]
    timeout = 300
    optimizer = ""
    kwargs: dict = {}

    def make_problem(self, n, dtype="float32"):
        return problem(n, dtype)

    def setup(self, n, threads, dtype, impl):
        set_threads(threads)
        p0, g = self.make_problem(n, dtype)
        if impl == "optax":
            self.step = optax_optimizer(self.optimizer, p0, g, **self.kwargs)
        elif impl == "fastopt":
            p = fo.Parameter(p0)
            p.grad = g
            self.step = getattr(fo.optim, self.optimizer)([p], **self.kwargs).step
        elif impl.startswith("torch"):
            variant = impl.split("-")[1] if "-" in impl else "default"
            self.step = torch_optimizer(self.optimizer, variant, p0, g, **self.kwargs).step
        else:
            self.step = self.numpy_step(p0, g)
        warm_up(self.step)  # state allocation, page faults and thread start-up are not part of a step

    def numpy_step(self, p, g):
        raise NotImplementedError

    def time_step(self, n, threads, dtype, impl):
        self.step()

    def peakmem_step(self, n, threads, dtype, impl):
        self.step()


class Adam(_Step):
    """Adam also at 1e8 elements (float32: 1.6 GB of buffers per implementation) and against
    optax under jax.jit (skipped without jax)."""

    params = (SIZES + [100_000_000], THREADS, DTYPES, IMPLS + ["optax"])
    optimizer = "Adam"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyAdam(p, g, lr=1e-3).step


class AdamW(_Step):
    params = (SIZES, THREADS, DTYPES, IMPLS + ["optax"])
    optimizer = "AdamW"
    kwargs = {"lr": 1e-3, "weight_decay": 1e-2}

    def numpy_step(self, p, g):
        return NumpyAdam(p, g, lr=1e-3, weight_decay=1e-2, decoupled=True).step


class SGDMomentum(_Step):
    params = (SIZES, THREADS, DTYPES, IMPLS + ["optax"])
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


# Beyond torch (its implementations are skipped): careful NumPy, and optax where it has one.
class AdaBound(_Step):
    optimizer = "AdaBound"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyAdaBound(p, g, **self.kwargs).step


class AMSBound(_Step):
    optimizer = "AMSBound"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyAdaBound(p, g, amsbound=True, **self.kwargs).step


class Lion(_Step):
    params = (SIZES, THREADS, DTYPES, IMPLS + ["optax"])
    optimizer = "Lion"
    kwargs = {"lr": 1e-4}

    def numpy_step(self, p, g):
        return NumpyLion(p, g, **self.kwargs).step


class AdaBelief(_Step):
    params = (SIZES, THREADS, DTYPES, IMPLS + ["optax"])
    optimizer = "AdaBelief"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyAdaBelief(p, g, **self.kwargs).step


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


class Lamb(_Step):
    params = (SIZES, THREADS, DTYPES, IMPLS + ["optax"])
    optimizer = "Lamb"
    kwargs = {"lr": 1e-3, "weight_decay": 0.01}

    def numpy_step(self, p, g):
        return NumpyLamb(p, g, **self.kwargs).step


class ADOPT(_Step):
    optimizer = "ADOPT"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyADOPT(p, g, **self.kwargs).step


class AdEMAMix(_Step):
    optimizer = "AdEMAMix"
    kwargs = {"lr": 1e-3}

    def numpy_step(self, p, g):
        return NumpyAdEMAMix(p, g, **self.kwargs).step


class Adafactor(_NoNumpyPeer):
    """On square matrices (the factored path; a vector would take the unfactored one)."""

    optimizer = "Adafactor"
    kwargs = {"lr": 1e-2}

    def make_problem(self, n, dtype="float32"):
        import math

        side = math.isqrt(n)
        p, g = problem(side * side, dtype)
        return p.reshape(side, side), g.reshape(side, side)


class AdafactorVector(_NoNumpyPeer):
    """On one vector (the unfactored path: a full second moment, as biases take)."""

    optimizer = "Adafactor"
    kwargs = {"lr": 1e-2}


class LBFGS:
    """One LBFGS step (max_iter=20, history 10) on an ill-conditioned quadratic
    0.5 sum(a x^2) - b.x in float64, with and without the strong-Wolfe line search. Both
    sides evaluate the loss with the same NumPy code (torch's on NumPy views of its tensors),
    so the difference is the optimizers' own work: the closure stands for the user's model,
    which is the same whichever optimizer steps it. Every timed step starts from the same
    point: ``start='fresh'`` with a new optimizer (its first step, which allocates the
    history), ``'warm'`` with the optimizer of the previous step (a full history, as in a
    training loop)."""

    params = ([100_000, 1_000_000], THREADS, [None, "strong_wolfe"], ["fresh", "warm"], ["fastopt", "torch"])
    param_names = ["n", "threads", "line_search_fn", "start", "impl"]
    timeout = 300

    def setup(self, n, threads, line_search_fn, start, impl):
        import numpy as np

        set_threads(threads)
        rng = np.random.default_rng(0)
        a = np.exp(rng.uniform(0, 3, n))
        b = rng.standard_normal(n)
        x0 = rng.standard_normal(n)
        kw = dict(lr=1, max_iter=20, history_size=10, line_search_fn=line_search_fn)
        tmp = np.empty(n)
        if impl == "fastopt":
            p = fo.Parameter(x0.copy())
            x = p.data
            make = lambda: fo.optim.LBFGS([p], **kw)  # noqa: E731

            def set_grad():
                p.grad = tmp
        else:
            torch = require_torch()
            p = torch.nn.Parameter(torch.from_numpy(x0.copy()))
            x = p.detach().numpy()  # shares p's memory
            grad = torch.from_numpy(tmp)
            make = lambda: torch.optim.LBFGS([p], **kw)  # noqa: E731

            def set_grad():
                p.grad = grad

        def closure():
            np.multiply(a, x, out=tmp)
            # einsum, not np.dot: BLAS's threads spin after each call and would take a core
            # from whichever optimizer runs next (both sides alike, but noisily).
            loss = 0.5 * float(np.einsum("i,i->", tmp, x)) - float(np.einsum("i,i->", b, x))
            np.subtract(tmp, b, out=tmp)
            set_grad()
            return loss

        holder = [make()]
        if start == "warm":
            holder[0].step(closure)

        def step():
            x[...] = x0
            if start == "fresh":
                holder[0] = make()
            holder[0].step(closure)
        self.step = step
        self.optimizer = holder
        warm_up(step, calls=1, seconds=0)

    def time_step(self, n, threads, line_search_fn, start, impl):
        self.step()


class ManyTensors:
    """One Adam step over a realistic list of tensors (float32): ResNet-50's 161 parameters
    (25.6M elements), 200 tensors of 1e3..1e5 elements, 161 one-element tensors."""

    params = (list(WORKLOADS), THREADS, ["fastopt", "torch-foreach", "torch-fused"])
    param_names = ["workload", "threads", "impl"]
    timeout = 300

    def setup(self, workload, threads, impl):
        set_threads(threads)
        tensors = make_tensors(WORKLOADS[workload]())
        if impl == "fastopt":
            params = []
            for p0, g in tensors:
                p = fo.Parameter(p0)
                p.grad = g
                params.append(p)
            self.step = fo.optim.Adam(params, lr=1e-3).step
        else:
            torch = require_torch()
            tps = []
            for p0, g in tensors:
                t = torch.nn.Parameter(torch.from_numpy(p0))
                t.grad = torch.from_numpy(g)
                tps.append(t)
            flag = impl.split("-")[1]
            self.step = torch.optim.Adam(tps, lr=1e-3, **{flag: True}).step
        warm_up(self.step)

    def time_step(self, workload, threads, impl):
        self.step()

    def peakmem_step(self, workload, threads, impl):
        self.step()


class MemoryBandwidth:
    """The probe every large-size figure is compared with (GB/s, best of 5)."""

    params = (THREADS,)
    param_names = ["threads"]
    unit = "GB/s"
    timeout = 120

    def track_copy(self, threads):
        from fastopt.bench import bandwidth

        return bandwidth(threads).copy / 1e9

    def track_triad(self, threads):
        from fastopt.bench import bandwidth

        return bandwidth(threads).triad / 1e9


class Muon:
    """One Muon step on a square float32 matrix (its Newton-Schulz iteration in bfloat16, as
    torch's), against torch.optim.Muon."""

    params = ([256, 512, 1024, 2048], THREADS, ["fastopt", "torch"])
    param_names = ["side", "threads", "impl"]
    timeout = 300

    def setup(self, side, threads, impl):
        import numpy as np

        set_threads(threads)
        rng = np.random.default_rng(0)
        p0 = rng.standard_normal((side, side)).astype(np.float32)
        g = rng.standard_normal((side, side)).astype(np.float32)
        if impl == "fastopt":
            p = fo.Parameter(p0)
            p.grad = g
            self.step = fo.optim.Muon([p], lr=0.02).step
        else:
            torch = require_torch()
            tp = torch.nn.Parameter(torch.from_numpy(p0))
            tp.grad = torch.from_numpy(g)
            self.step = torch.optim.Muon([tp], lr=0.02).step
        warm_up(self.step)

    def time_step(self, side, threads, impl):
        self.step()
