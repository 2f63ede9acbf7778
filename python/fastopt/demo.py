"""The demo behind ``fastopt demo``: one MLP with BatchNorm trained on a 2-D playground dataset
by each optimizer under a cosine schedule, and each optimizer's path on 2-D test surfaces.

Everything here is plain fastopt: :mod:`fastopt.data` makes and standardizes the data,
:mod:`fastopt.nn` modules compute forward and backward, :mod:`fastopt.optim` updates. The
figures need matplotlib (``pip install 'fastopt[demo]'``); the training does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import data, nn, optim
from .parameter import Parameter

__all__ = [
    "DemoConfig", "RunResult", "OPTIMIZERS", "SURFACES", "make_model", "prepare_data", "train",
    "trajectory",
]


@dataclass
class DemoConfig:
    """The demo's settings; the defaults are what ``fastopt demo`` runs."""

    dataset: str = "spiral"
    n_samples: int = 1000
    noise: float = 0.1
    test_fraction: float = 0.3
    hidden: int = 64
    epochs: int = 100
    batch_size: int = 64
    seed: int = 0
    dtype: Any = np.float32


#: Each optimizer of the demo: ``(make(params, lr), lr)``, the learning rate chosen for the
#: demo's MLP with BatchNorm (on the 2-D surfaces the rate is searched instead).
OPTIMIZERS: dict[str, tuple[Callable[[list[Parameter], float], optim.Optimizer], float]] = {
    "SGD": (lambda p, lr: optim.SGD(p, lr=lr), 0.5),
    "SGD+momentum": (lambda p, lr: optim.SGD(p, lr=lr, momentum=0.9), 0.05),
    "Nesterov": (lambda p, lr: optim.SGD(p, lr=lr, momentum=0.9, nesterov=True), 0.05),
    "Adagrad": (lambda p, lr: optim.Adagrad(p, lr=lr), 0.1),
    "RMSprop": (lambda p, lr: optim.RMSprop(p, lr=lr), 1e-2),
    "Adam": (lambda p, lr: optim.Adam(p, lr=lr), 1e-2),
    "AdamW": (lambda p, lr: optim.AdamW(p, lr=lr, weight_decay=1e-2), 1e-2),
    "AdaBound": (lambda p, lr: optim.AdaBound(p, lr=lr, final_lr=0.1), 1e-2),
}


def make_model(cfg: DemoConfig, generator: np.random.Generator | None = None) -> nn.Sequential:
    """2 -> hidden -> hidden -> 2: Linear, BatchNorm1d, ReLU twice, then a Linear to logits."""
    g = generator if generator is not None else np.random.default_rng(cfg.seed)
    h, dt = cfg.hidden, cfg.dtype
    return nn.Sequential(
        nn.Linear(2, h, dtype=dt, generator=g), nn.BatchNorm1d(h, dtype=dt), nn.ReLU(),
        nn.Linear(h, h, dtype=dt, generator=g), nn.BatchNorm1d(h, dtype=dt), nn.ReLU(),
        nn.Linear(h, 2, dtype=dt, generator=g),
    )


def prepare_data(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, data.Standardizer]:
    """The dataset, split into train and test, standardized with the training statistics."""
    rng = np.random.default_rng(cfg.seed)
    x, y = data.make_dataset(cfg.dataset, cfg.n_samples, cfg.noise, rng, cfg.dtype)
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_fraction=cfg.test_fraction, seed=rng)
    scaler = data.Standardizer().fit(x_train)
    return scaler.transform(x_train), y_train, scaler.transform(x_test), y_test, scaler


@dataclass
class RunResult:
    """One optimizer's training run."""

    name: str
    lr: float
    epoch_loss: list[float] = field(default_factory=list)  # mean mini-batch loss per epoch
    train_curve: list[float] = field(default_factory=list)  # whole training set, eval mode, per epoch
    train_loss: float = float("nan")  # whole training set, eval mode, after training
    test_accuracy: float = float("nan")
    wall_s: float = 0.0
    steps: int = 0
    model: nn.Sequential | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode; the model is left in its previous mode."""
    was = model.training
    model.eval()
    logits = model(x)
    model.train(was)
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float(np.mean(logits.argmax(axis=1) == y))


def train(
    name: str,
    cfg: DemoConfig,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    make_optimizer: Callable[[list[Parameter]], optim.Optimizer] | None = None,
    on_step: Callable[[], None] | None = None,
) -> RunResult:
    """Trains a fresh :func:`make_model` (same initial weights and batch order for every
    optimizer, from ``cfg.seed``) for ``cfg.epochs`` epochs with a cosine schedule stepped
    once per batch down to 0."""
    x_train, y_train, x_test, y_test = splits
    model = make_model(cfg)
    if make_optimizer is None:
        make, lr = OPTIMIZERS[name]
        opt = make(list(model.parameters()), lr)
    else:
        opt = make_optimizer(list(model.parameters()))
    batches = data.MiniBatches(x_train, y_train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
    total = cfg.epochs * len(batches)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    criterion = nn.CrossEntropyLoss()
    result = RunResult(name, float(opt.param_groups[0]["lr"]), model=model)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        losses = []
        for xb, yb in batches:
            loss = criterion(model(xb), yb)
            model.backward(criterion.backward())
            opt.step()
            opt.zero_grad()
            sched.step()
            losses.append(float(loss))
            if on_step is not None:
                on_step()
        result.epoch_loss.append(float(np.mean(losses)))
        t1 = time.perf_counter()
        result.train_curve.append(evaluate(model, x_train, y_train)[0])
        t0 += time.perf_counter() - t1  # evaluation is not training time
    result.wall_s = time.perf_counter() - t0
    result.steps = total
    result.train_loss = result.train_curve[-1]
    _, result.test_accuracy = evaluate(model, x_test, y_test)
    return result


# ----------------------------------------------------------------------------- 2-D surfaces


@dataclass(frozen=True)
class Surface:
    """A 2-D test function with its gradient, a start point, the window to draw, and the
    learning rate each optimizer of :data:`OPTIMIZERS` runs at (hand-picked so the
    characteristic behaviour shows: SGD's zigzag across a narrow valley, momentum's
    overshoot, adaptive methods' per-coordinate steps and quick escape from a saddle)."""

    title: str
    f: Callable[[np.ndarray, np.ndarray], np.ndarray]
    grad: Callable[[float, float], tuple[float, float]]
    start: tuple[float, float]
    window: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax
    lrs: dict[str, float]
    steps: int
    minimum: tuple[float, float] | None = None
    log_levels: bool = False


SURFACES: dict[str, Surface] = {
    "quadratic": Surface(
        "ill-conditioned quadratic  x²/2 + 10 y²",
        lambda x, y: 0.5 * x**2 + 10.0 * y**2,
        lambda x, y: (x, 20.0 * y),
        (-4.5, 1.5), (-5.0, 5.0, -2.0, 2.0),
        {"SGD": 0.09, "SGD+momentum": 0.01, "Nesterov": 0.02, "Adagrad": 1.0, "RMSprop": 0.03,
         "Adam": 0.2, "AdamW": 0.2, "AdaBound": 0.2},
        steps=100, minimum=(0.0, 0.0),
    ),
    "saddle": Surface(
        "saddle at (0, 0)  x² - y²/2 + y⁴/4",
        lambda x, y: x**2 - 0.5 * y**2 + 0.25 * y**4,
        lambda x, y: (2.0 * x, -y + y**3),
        (-1.8, 1e-3), (-2.0, 2.0, -1.6, 1.6),
        {"SGD": 0.1, "SGD+momentum": 0.03, "Nesterov": 0.03, "Adagrad": 0.3, "RMSprop": 0.02,
         "Adam": 0.05, "AdamW": 0.05, "AdaBound": 0.05},
        steps=60,
    ),
    "rosenbrock": Surface(
        "Rosenbrock  (1 - x)² + 100 (y - x²)²",
        lambda x, y: (1 - x) ** 2 + 100.0 * (y - x**2) ** 2,
        lambda x, y: (-2.0 * (1 - x) - 400.0 * x * (y - x**2), 200.0 * (y - x**2)),
        (-1.2, 1.0), (-2.0, 2.0, -1.0, 3.0),
        {"SGD": 1e-3, "SGD+momentum": 2e-4, "Nesterov": 2e-4, "Adagrad": 0.3, "RMSprop": 3e-3,
         "Adam": 0.02, "AdamW": 0.02, "AdaBound": 0.02},
        steps=1000, minimum=(1.0, 1.0), log_levels=True,
    ),
}


def trajectory(surface: Surface, name: str, steps: int | None = None, lr: float | None = None) -> np.ndarray:
    """The points (steps + 1, 2) optimizer ``name`` (of :data:`OPTIMIZERS`) visits from the
    surface's start point at the surface's learning rate for it (or ``lr``); a path that
    blows up ends in NaN."""
    make = OPTIMIZERS[name][0]
    steps = surface.steps if steps is None else steps
    p = Parameter(np.array(surface.start, np.float64))
    opt = make([p], surface.lrs[name] if lr is None else lr)
    path = np.empty((steps + 1, 2))
    path[0] = p.data
    with np.errstate(all="ignore"):
        for t in range(steps):
            p.grad = np.array(surface.grad(*p.data), np.float64)
            opt.step()
            path[t + 1] = p.data
            if not np.all(np.isfinite(p.data)) or np.abs(p.data).max() > 1e6:
                path[t + 1 :] = np.nan
                break
    return path
