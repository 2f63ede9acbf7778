"""Gradient clipping plus an Adam step, float32: fastopt's clip folded into the step, fastopt's
separate clip_grad_norm_ then step, and torch's clip_grad_norm_ then Adam(fused=True)."""

from __future__ import annotations

import numpy as np

import fastopt as fo

from .common import THREADS, require_torch, problem, set_threads, warm_up


class ClipThenAdam:
    params = ([1_000_000, 10_000_000], THREADS, ["fastopt-fused", "fastopt-separate", "torch-fused"])
    param_names = ["n", "threads", "impl"]
    timeout = 300

    def setup(self, n, threads, impl):
        set_threads(threads)
        p0, g = problem(n)
        g *= 10.0  # the norm exceeds max_norm: clipping does work
        if impl.startswith("fastopt"):
            p = fo.Parameter(p0)
            p.grad = g
            opt = fo.optim.Adam([p], lr=1e-3)
            if impl == "fastopt-fused":
                self.step = lambda: opt.step(max_grad_norm=1.0)
            else:
                def step():
                    fo.nn.utils.clip_grad_norm_([p], 1.0)
                    opt.step()
                self.step = step
        else:
            torch = require_torch()
            tp = torch.nn.Parameter(torch.from_numpy(p0))
            tp.grad = torch.from_numpy(g)
            opt = torch.optim.Adam([tp], lr=1e-3, fused=True)

            def step():
                torch.nn.utils.clip_grad_norm_([tp], 1.0)
                opt.step()
            self.step = step
        warm_up(self.step)

    def time_clip_and_step(self, n, threads, impl):
        self.step()

    def peakmem_clip_and_step(self, n, threads, impl):
        self.step()


class TotalNorm:
    params = ([1_000_000, 10_000_000], THREADS, ["fastopt", "torch", "numpy"])
    param_names = ["n", "threads", "impl"]

    def setup(self, n, threads, impl):
        set_threads(threads)
        _, g = problem(n)
        if impl == "fastopt":
            self.f = lambda: fo.nn.utils.get_total_norm([g])
        elif impl == "torch":
            torch = require_torch()
            tg = torch.from_numpy(g)
            self.f = lambda: torch.nn.utils.get_total_norm([tg])
        else:
            self.f = lambda: np.sqrt(np.dot(g, g))
        warm_up(self.f)

    def time_total_norm(self, n, threads, impl):
        self.f()
