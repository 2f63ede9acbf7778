"""One training step of the demo's MLP (Linear-BatchNorm1d-ReLU twice, then Linear;
cross-entropy; Adam): forward, backward, update. fastopt's modules against the same network in
torch.nn with torch's Adam (its fastest CPU path, fused), same weights, same batch, same
thread count."""

from __future__ import annotations

import numpy as np

from .common import THREADS, require_torch, set_threads, warm_up


def _problem(batch: int, hidden: int):
    from fastopt import demo

    cfg = demo.DemoConfig(hidden=hidden)
    model = demo.make_model(cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 2)).astype(np.float32)
    y = rng.integers(0, 2, batch)
    return model, x, y


class MLPTrainStep:
    params = ([64, 1024], [64, 512], THREADS, ["fastopt", "torch"])
    param_names = ["batch", "hidden", "threads", "impl"]
    timeout = 120

    def setup(self, batch, hidden, threads, impl):
        import fastopt as fo

        set_threads(threads)
        model, x, y = _problem(batch, hidden)
        if impl == "fastopt":
            crit = fo.nn.CrossEntropyLoss()
            opt = fo.optim.Adam(model.parameters(), lr=1e-3)

            def step():
                crit(model(x), y)
                model.backward(crit.backward())
                opt.step()
                opt.zero_grad()
        else:
            torch = require_torch()
            tnn = torch.nn
            t = tnn.Sequential(tnn.Linear(2, hidden), tnn.BatchNorm1d(hidden), tnn.ReLU(),
                               tnn.Linear(hidden, hidden), tnn.BatchNorm1d(hidden), tnn.ReLU(),
                               tnn.Linear(hidden, 2))
            t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
            crit = tnn.CrossEntropyLoss()
            opt = torch.optim.Adam(t.parameters(), lr=1e-3, fused=True)
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)

            def step():
                crit(t(xt), yt).backward()
                opt.step()
                opt.zero_grad()
        self.step = step
        warm_up(step)

    def time_step(self, batch, hidden, threads, impl):
        self.step()

    def peakmem_step(self, batch, hidden, threads, impl):
        self.step()
