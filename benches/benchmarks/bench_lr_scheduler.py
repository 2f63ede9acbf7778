"""Cost of a scheduler step (bookkeeping per training step) against torch's, and of the
closed-form lr_at that torch lacks."""

from __future__ import annotations

import numpy as np

import fastopt as fo

from .common import require_torch

SCHEDULERS = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=30, gamma=0.5),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=1000),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=100_000),
    "CyclicLR": lambda m, o: m.CyclicLR(o, base_lr=1e-3, max_lr=0.1, step_size_up=500),
}


class SchedulerStep:
    params = (list(SCHEDULERS), ["fastopt", "torch"])
    param_names = ["scheduler", "impl"]

    def setup(self, name, impl):
        if impl == "torch":
            torch = require_torch()
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
            opt.step()
            self.sched = SCHEDULERS[name](torch.optim.lr_scheduler, opt)
        else:
            opt = fo.optim.SGD([fo.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
            opt.step()
            self.sched = SCHEDULERS[name](fo.optim.lr_scheduler, opt)

    def time_step(self, name, impl):
        self.sched.step()


class LrAt:
    params = list(SCHEDULERS)
    param_names = ["scheduler"]

    def setup(self, name):
        opt = fo.optim.SGD([fo.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
        self.sched = SCHEDULERS[name](fo.optim.lr_scheduler, opt)

    def time_lr_at_1000_steps(self, name):
        for t in range(1000):
            self.sched.lr_at(t)
