"""Pictures of what fastopt computes. Needs matplotlib: ``pip install 'fastopt[plot]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["lr_schedule"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "fastopt.plot needs matplotlib, which is an optional extra: pip install 'fastopt[plot]'"
        ) from e
    return plt


def lr_schedule(
    scheduler: Any | Callable[[Any], Any],
    steps: int,
    path: str | Path,
    *,
    base_lr: float = 1.0,
    title: str | None = None,
) -> Path:
    """Draws the learning rate of every param group over ``steps`` steps to a PNG at ``path``.

    ``scheduler`` is a scheduler (its schedule from construction is drawn with ``lr_at``, so
    it is not stepped), or a factory ``f(optimizer) -> scheduler`` that gets a one-group SGD
    optimizer with ``lr=base_lr`` and momentum (so cyclic schedules can cycle it). For
    ReduceLROnPlateau only the steps already taken are known. Returns the path.
    """
    from .optim import SGD
    from .optim.lr_scheduler import LRScheduler
    from .parameter import Parameter

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    plt = _pyplot()
    if not isinstance(scheduler, LRScheduler):
        if not callable(scheduler):
            raise TypeError("scheduler must be an LRScheduler or a function optimizer -> scheduler")
        opt = SGD([Parameter(np.zeros(1))], lr=base_lr, momentum=0.9)
        scheduler = scheduler(opt)
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"the factory returned {type(scheduler).__name__}, not an LRScheduler")
    lrs = []
    for t in range(steps):
        try:
            lrs.append(scheduler.lr_at(t))
        except ValueError:
            break  # ReduceLROnPlateau: the future depends on metrics
    values = np.array(lrs)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for g in range(values.shape[1] if values.ndim == 2 else 0):
        ax.plot(np.arange(len(values)), values[:, g], label=f"param group {g}")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(title or type(scheduler).__name__)
    ax.grid(alpha=0.3)
    if values.ndim == 2 and values.shape[1] > 1:
        ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
