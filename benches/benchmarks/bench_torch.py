"""fastopt.torch against torch.optim on torch models (CPU, float32): the optimizer step alone,
the whole training step (forward, backward, step) of a small model with many tensors, that
model's step timed right after backward, and Adam over ResNet-50's 161 parameter shapes.

``impl``: ``fastopt.torch`` (fastopt's kernels as a torch.optim.Optimizer),
``fastopt.torch-flat`` (the same with ``flat=True``: each group's parameters and gradients in
one buffer, stepped in one call), or torch's single-tensor loop (``torch``),
``torch-foreach`` and ``torch-fused``."""

from __future__ import annotations

from .common import THREADS, require_torch, set_threads, warm_up
from fastopt.bench.workloads import resnet50_shapes

IMPLS = ["fastopt.torch", "fastopt.torch-flat", "torch", "torch-foreach", "torch-fused"]


def _optimizer(torch, impl, params, name="Adam", **kw):
    if impl.startswith("fastopt.torch"):
        import fastopt.torch

        return getattr(fastopt.torch, name)(params, **kw, flat=impl.endswith("-flat"))
    flag = {"torch": {"foreach": False}, "torch-foreach": {"foreach": True}, "torch-fused": {"fused": True}}[impl]
    return getattr(torch.optim, name)(params, **kw, **flag)


class SmallModel:
    """An MLP of 20 blocks (Linear 32x32, LayerNorm, Tanh): 82 tensors of 32 to 1024
    elements, a batch of 64. ``time_step``: the optimizer step alone (the same gradient
    tensors every call); ``time_train_step``: zero_grad, forward, backward and step (new
    gradient tensors every call, as ``zero_grad()`` sets them to None); ``time_forward_backward``:
    the same without the step, so that the difference is the optimizer's part of a training
    step."""

    params = (IMPLS, THREADS)
    param_names = ["impl", "threads"]

    def setup(self, impl, threads):
        set_threads(threads)
        torch = require_torch()
        torch.manual_seed(0)
        layers = []
        for _ in range(20):
            layers += [torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), torch.nn.Tanh()]
        self.model = torch.nn.Sequential(*layers, torch.nn.Linear(32, 1))
        self.opt = _optimizer(torch, impl, self.model.parameters(), lr=1e-4)
        self.x, self.y = torch.randn(64, 32), torch.randn(64, 1)
        self.train_step()
        warm_up(self.opt.step, self.train_step)

    def forward_backward(self, set_to_none=True):
        self.opt.zero_grad(set_to_none=set_to_none)
        loss = ((self.model(self.x) - self.y) ** 2).mean()
        loss.backward()

    def train_step(self):
        self.forward_backward()
        self.opt.step()

    def time_step(self, impl, threads):
        self.opt.step()

    def time_train_step(self, impl, threads):
        self.train_step()

    def time_forward_backward(self, impl, threads):
        self.forward_backward()


class StepAfterBackward:
    """The optimizer step of :class:`SmallModel` (1 thread) timed alone inside a training loop: the median
    over 50 steps of the time of ``opt.step()`` right after ``backward()`` (microseconds), which
    ``time_train_step - time_forward_backward`` only estimates as a difference of two noisy
    figures. ``set_to_none``: ``zero_grad``'s argument (True: every step's gradients are new
    tensors; False: the same tensors, zeroed)."""

    params = (IMPLS, [True, False])
    param_names = ["impl", "set_to_none"]
    unit = "microseconds"

    def setup(self, impl, set_to_none):
        self.small = SmallModel()
        self.small.setup(impl, 1)

    def track_step_after_backward(self, impl, set_to_none):
        import time

        m = self.small
        times = []
        for _ in range(50):
            m.forward_backward(set_to_none)
            t0 = time.perf_counter()
            m.opt.step()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e6


class ResNet50Shapes:
    """Adam over tensors of ResNet-50's 161 parameter shapes (25.6 M elements), gradients
    set once."""

    params = (IMPLS, THREADS)
    param_names = ["impl", "threads"]
    timeout = 300

    def setup(self, impl, threads):
        set_threads(threads)
        torch = require_torch()
        gen = torch.Generator().manual_seed(0)
        self.params_ = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in resnet50_shapes()]
        for p in self.params_:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        self.opt = _optimizer(torch, impl, self.params_, lr=1e-4)
        warm_up(self.opt.step)

    def time_step(self, impl, threads):
        self.opt.step()
