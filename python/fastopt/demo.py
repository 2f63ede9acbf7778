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
    "DemoConfig", "Entry", "RunResult", "REGISTRY", "DEFAULT_OPTIMIZERS", "PRECISIONS", "SURFACES", "Surface",
    "make_model", "prepare_data", "resolve_names", "train", "trajectory", "diverged_at",
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


@dataclass(frozen=True)
class Entry:
    """One optimizer the demo can run: its class and options, and the learning rate it trains
    the demo's MLP with by default (``--lr`` overrides it)."""

    cls: type
    lr: float
    options: dict[str, Any] = field(default_factory=dict)
    closure: bool = False  # LBFGS: stepped with a closure that recomputes loss and gradients

    def make(self, params: list[Any], lr: float, **options: Any) -> optim.Optimizer:
        """The optimizer over ``params`` at rate ``lr``; ``options`` override the entry's."""
        return self.cls(params, lr=lr, **{**self.options, **options})


#: Every optimizer fastopt has (SGD with and without momentum and Nesterov counted apart), in
#: the order the demo reports them. The MLP rates of the first eight (the default set) were
#: chosen by hand; each of the others is the rate with the best test accuracy over the grid
#: 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1 at the demo's default settings (ties to the larger
#: rate). On the 2-D surfaces each optimizer has its own rate (:class:`Surface`).
REGISTRY: dict[str, Entry] = {
    "SGD": Entry(optim.SGD, 0.5),
    "SGD+momentum": Entry(optim.SGD, 0.05, {"momentum": 0.9}),
    "Nesterov": Entry(optim.SGD, 0.05, {"momentum": 0.9, "nesterov": True}),
    "Adagrad": Entry(optim.Adagrad, 0.1),
    "RMSprop": Entry(optim.RMSprop, 1e-2),
    "Adam": Entry(optim.Adam, 1e-2),
    "AdamW": Entry(optim.AdamW, 1e-2, {"weight_decay": 1e-2}),
    "AdaBound": Entry(optim.AdaBound, 1e-2, {"final_lr": 0.1}),
    "AMSBound": Entry(optim.AMSBound, 0.1, {"final_lr": 0.1}),
    "Adadelta": Entry(optim.Adadelta, 1.0),
    "Adamax": Entry(optim.Adamax, 0.3),
    "NAdam": Entry(optim.NAdam, 0.03),
    "RAdam": Entry(optim.RAdam, 0.03),
    "ASGD": Entry(optim.ASGD, 1.0),
    "Rprop": Entry(optim.Rprop, 0.3),
    "Lion": Entry(optim.Lion, 3e-3),
    "AdaBelief": Entry(optim.AdaBelief, 0.03),
    "ADOPT": Entry(optim.ADOPT, 0.03),
    "AdEMAMix": Entry(optim.AdEMAMix, 0.01),
    "AdamWScheduleFree": Entry(optim.AdamWScheduleFree, 0.02),
    "SGDScheduleFree": Entry(optim.SGDScheduleFree, 0.05),
    "Prodigy": Entry(optim.Prodigy, 1.0),
    "Lamb": Entry(optim.Lamb, 0.03),
    "Adafactor": Entry(optim.Adafactor, 1.0),
    "LBFGS": Entry(optim.LBFGS, 1.0, {"max_iter": 1, "history_size": 10}, closure=True),
}

#: What ``fastopt demo`` runs unless ``--optimizers`` says otherwise (``--optimizers all``: every
#: one of :data:`REGISTRY`).
DEFAULT_OPTIMIZERS: tuple[str, ...] = (
    "SGD", "SGD+momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW", "AdaBound",
)


#: How ``--precision`` keeps the weights: the stored dtype and the optimizer's options. The
#: model computes in float32 from the stored weights (widened exactly) and its float32
#: gradients are rounded to the stored dtype before the step.
PRECISIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "float32": ("float32", {}),
    "bfloat16": ("bfloat16", {}),
    "bfloat16-kahan": ("bfloat16", {"master_weights": "kahan"}),
    "bfloat16-remainder": ("bfloat16", {"master_weights": "remainder"}),
    "bfloat16-stochastic": ("bfloat16", {"master_weights": "stochastic"}),
    # float32 weights, 8-bit blockwise state for the tensors of 4096 elements and more (the
    # demo's 64x64 hidden layer; the smaller ones keep float32 state)
    "int8-state": ("float32", {"state_dtype": "int8"}),
}


def resolve_precisions(spec: str, names: list[str]) -> list[str]:
    """The precisions a comma-separated ``spec`` names (:data:`PRECISIONS`), checked against
    the optimizers ``names`` (each must take bfloat16 parameters, and the master-weight
    options where asked). Raises ValueError naming what is wrong."""
    out: list[str] = []
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        if part not in PRECISIONS:
            raise ValueError(f"unknown precision {part!r}; choose from {', '.join(PRECISIONS)}")
        if part not in out:
            out.append(part)
    if not out:
        raise ValueError(f"no precision given; choose from {', '.join(PRECISIONS)}")
    for prec in out:
        dtype, options = PRECISIONS[prec]
        for name in names:
            entry = REGISTRY[name]
            if dtype != "float32" and (entry.closure or not getattr(entry.cls, "_takes_half", False)):
                raise ValueError(f"--precision {prec}: {name} does not take bfloat16 parameters")
            if options.get("state_dtype") == "int8" and (entry.closure or not getattr(entry.cls, "_takes_int8", False)):
                raise ValueError(f"--precision {prec}: {name} keeps no 8-bit state (state_dtype='int8' is an option of "
                                 "Adam, AdamW, SGD, RMSprop, Adagrad, Lion and AdaBelief)")
            if options.get("master_weights") and not getattr(entry.cls, "_takes_kahan", False):
                raise ValueError(f"--precision {prec}: {name} has no master_weights option (its step is not one "
                                 "element-wise pass)")
    return out


def resolve_names(spec: str) -> list[str]:
    """The optimizers a comma-separated ``spec`` names, matched case-insensitively against
    :data:`REGISTRY` (``all``: every one; ``default``: :data:`DEFAULT_OPTIMIZERS`). Raises
    ValueError naming the unknown ones."""
    by_lower = {name.lower(): name for name in REGISTRY}
    names: list[str] = []
    unknown = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            continue
        key = part.lower()
        found = list(REGISTRY) if key == "all" else list(DEFAULT_OPTIMIZERS) if key == "default" else (
            [by_lower[key]] if key in by_lower else None)
        if found is None:
            unknown.append(part)
            continue
        names += [n for n in found if n not in names]
    if unknown or not names:
        raise ValueError(f"unknown optimizer(s) {unknown}; choose from {', '.join(REGISTRY)} (or all)")
    return names


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
    precision: str = "float32"  # how the weights were stored (:data:`PRECISIONS`)

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
    lr: float | None = None,
    comm: Any = None,
    precision: str = "float32",
) -> RunResult:
    """Trains a fresh :func:`make_model` (same initial weights and batch order for every
    optimizer, from ``cfg.seed``) for ``cfg.epochs`` epochs with a cosine schedule stepped
    once per batch down to 0, with optimizer ``name`` of :data:`REGISTRY` at its rate (or
    ``lr``), or with ``make_optimizer(params)``. LBFGS is stepped with a closure that
    recomputes the mini-batch's loss and gradients.

    ``comm`` (an mpi4py communicator): data-parallel training over its ranks, the same global
    batches as one process: every rank draws its shard of each batch
    (``MiniBatches(rank=, world_size=)``), BatchNorm becomes :class:`fastopt.nn.SyncBatchNorm`
    and the optimizer a :class:`fastopt.distributed.DistributedOptimizer` summing each
    rank's share of the batch's mean gradient. The result is the same on every rank.

    ``precision`` (:data:`PRECISIONS`, one process): the optimizer steps copies of the weights
    stored in that precision (bfloat16 needs ml_dtypes); each step the model's float32
    weights are those stored values widened, and its gradients are rounded to them."""
    x_train, y_train, x_test, y_test = splits
    model = make_model(cfg)
    stored_dtype, precision_options = PRECISIONS[precision]
    stored: list[np.ndarray] | None = None
    if stored_dtype != "float32":
        if comm is not None:
            raise ValueError("precision other than float32 is trained in one process only")
        try:
            import ml_dtypes
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"precision {precision!r} keeps ml_dtypes.bfloat16 weights: pip install 'fastopt[bf16]'") from e
        stored = [np.asarray(p.data).astype(ml_dtypes.bfloat16) for p in model.parameters()]
    if comm is not None:
        from .distributed import DistributedOptimizer, broadcast_parameters

        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, comm)  # type: ignore[assignment]
        broadcast_parameters(model, comm=comm)
    closure_stepped = False
    if make_optimizer is None:
        entry = REGISTRY[name]
        opt = entry.make(stored if stored is not None else list(model.parameters()), entry.lr if lr is None else lr,
                         **precision_options)
        closure_stepped = entry.closure
    else:
        if stored is not None:
            raise ValueError("precision other than float32 takes an optimizer of the registry (make_optimizer=None)")
        opt = make_optimizer(list(model.parameters()))
        closure_stepped = isinstance(opt, optim.LBFGS)
    if closure_stepped and stored is not None:
        raise ValueError(f"{name} takes a closure (L-BFGS) and is trained in float32 only")
    params = list(model.parameters())

    def load_stored() -> None:  # (the model computes from the stored weights, widened exactly)
        if stored is not None:
            for p, w in zip(params, stored):
                np.copyto(p.data, w, casting="unsafe")

    load_stored()
    if comm is not None:
        if closure_stepped:
            raise ValueError(f"{name} takes a closure (L-BFGS) and cannot be trained on several ranks")
        opt = DistributedOptimizer(opt, comm=comm, op="sum")
    batches = data.MiniBatches(x_train, y_train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                               rank=comm.rank if comm is not None else 0, world_size=comm.size if comm is not None else 1)
    total = cfg.epochs * len(batches)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    criterion = nn.CrossEntropyLoss()
    result = RunResult(name, float(opt.param_groups[0]["lr"]), model=model, precision=precision)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        losses = []
        for xb, yb in batches:
            if closure_stepped:
                def closure(xb=xb, yb=yb) -> float:
                    model.zero_grad()
                    value = criterion(model(xb), yb)
                    model.backward(criterion.backward())
                    return float(value)

                loss = opt.step(closure)
            elif comm is not None:
                # this rank's share of the global batch's mean loss and gradient
                share = len(yb) / cfg.batch_size
                loss = comm.allreduce(float(criterion(model(xb), yb)) * share)
                model.backward(criterion.backward() * np.asarray(share, cfg.dtype))
                opt.step()
            elif stored is not None:
                loss = criterion(model(xb), yb)
                model.backward(criterion.backward())
                opt.step(grads=[None if p.grad is None else p.grad.astype(w.dtype) for p, w in zip(params, stored)])
                load_stored()
                model.zero_grad()
            else:
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
    learning rate (and any other option) each optimizer of :data:`REGISTRY` runs at there.

    The rates were picked by hand, one per optimizer and surface, so that every method is
    stable on the surface and shows its characteristic behaviour within ``steps`` steps (SGD's
    zigzag across a narrow valley, momentum's overshoot, the adaptive methods' per-coordinate
    steps and quick escape from a saddle); they are printed in each figure's legend.
    ``caption`` says what the figure shows at these settings, and the tests check it."""

    title: str
    f: Callable[[np.ndarray, np.ndarray], np.ndarray]
    grad: Callable[[float, float], tuple[float, float]]
    start: tuple[float, float]
    window: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax
    lrs: dict[str, float]
    steps: int
    minima: tuple[tuple[float, float], ...] = ()
    saddles: tuple[tuple[float, float], ...] = ()
    log_levels: bool = False
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    caption: str = ""

    @property
    def minimum(self) -> tuple[float, float] | None:
        return self.minima[0] if self.minima else None


SURFACES: dict[str, Surface] = {
    "quadratic": Surface(
        "ill-conditioned quadratic  x²/2 + 10 y²",
        lambda x, y: 0.5 * x**2 + 10.0 * y**2,
        lambda x, y: (x, 20.0 * y),
        (-4.5, 1.5), (-5.0, 5.0, -2.0, 2.0),
        {"SGD": 0.09, "SGD+momentum": 0.01, "Nesterov": 0.02, "Adagrad": 1.0, "RMSprop": 0.03,
         "Adam": 0.2, "AdamW": 0.2, "AdaBound": 0.2, "AMSBound": 0.2, "Adadelta": 1.0, "Adamax": 0.3,
         "NAdam": 0.2, "RAdam": 0.2, "ASGD": 0.05, "Rprop": 0.01, "Lion": 0.1, "AdaBelief": 0.2,
         "ADOPT": 0.2, "AdEMAMix": 0.05, "AdamWScheduleFree": 0.2, "SGDScheduleFree": 0.05,
         "Prodigy": 1.0, "Lamb": 0.1, "Adafactor": 0.3, "LBFGS": 0.5},
        steps=100, minima=((0.0, 0.0),),
        caption="SGD, at a rate near the largest the steep y direction allows (2/20), zigzags across "
        "the valley; momentum overshoots in both directions and spirals in; Nesterov damps the y "
        "oscillation sooner and overshoots the minimum along x; the adaptive methods step equal "
        "amounts in x and y at first, so they head diagonally to the valley floor.",
    ),
    "saddle": Surface(
        "saddle at (0, 0)  x² - y²/2 + y⁴/4",
        lambda x, y: x**2 - 0.5 * y**2 + 0.25 * y**4,
        lambda x, y: (2.0 * x, -y + y**3),
        (-1.8, 1e-6), (-2.0, 2.0, -1.6, 1.6),
        {"SGD": 0.1, "SGD+momentum": 0.03, "Nesterov": 0.03, "Adagrad": 0.3, "RMSprop": 0.02,
         "Adam": 0.05, "AdamW": 0.05, "AdaBound": 0.05, "AMSBound": 0.05, "Adadelta": 1.0,
         "Adamax": 0.05, "NAdam": 0.05, "RAdam": 0.05, "ASGD": 0.1, "Rprop": 0.01, "Lion": 0.03,
         "AdaBelief": 0.05, "ADOPT": 0.05, "AdEMAMix": 0.02, "AdamWScheduleFree": 0.05,
         "SGDScheduleFree": 0.1, "Prodigy": 1.0, "Lamb": 0.03, "Adafactor": 0.05, "LBFGS": 0.1},
        steps=60, minima=((0.0, 1.0), (0.0, -1.0)), saddles=((0.0, 0.0),),
        caption="Starting at y = 0.000001, gradient descent and its momentum variants follow the x "
        "axis into the saddle and are still there after 60 steps (the y gradient, -y, is too small "
        "to move them: y grows by a factor 1 + lr per step); the adaptive methods divide each "
        "coordinate's step by its running gradient magnitude, so y moves at the full rate from "
        "the first step and they leave the saddle for the minimum at (0, 1).",
    ),
    "rosenbrock": Surface(
        "Rosenbrock  (1 - x)² + 100 (y - x²)²",
        lambda x, y: (1 - x) ** 2 + 100.0 * (y - x**2) ** 2,
        lambda x, y: (-2.0 * (1 - x) - 400.0 * x * (y - x**2), 200.0 * (y - x**2)),
        (-1.2, 1.0), (-2.0, 2.0, -1.0, 3.0),
        {"SGD": 1e-3, "SGD+momentum": 2e-4, "Nesterov": 2e-4, "Adagrad": 0.3, "RMSprop": 3e-3,
         "Adam": 0.02, "AdamW": 0.02, "AdaBound": 0.02, "AMSBound": 0.02, "Adadelta": 0.5,
         "Adamax": 0.02, "NAdam": 0.02, "RAdam": 5e-3, "ASGD": 1e-3, "Rprop": 0.01, "Lion": 3e-3,
         "AdaBelief": 0.02, "ADOPT": 0.02, "AdEMAMix": 5e-3, "AdamWScheduleFree": 0.02,
         "SGDScheduleFree": 1e-3, "Prodigy": 1.0, "Lamb": 0.03, "Adafactor": 0.1, "LBFGS": 0.1},
        steps=1000, minima=((1.0, 1.0),), log_levels=True,
        # AdaBound's step size is clipped into bounds that close in on final_lr (scaled by
        # lr / initial lr); past 2 / (the valley's curvature, about 1000 near the minimum)
        # the final SGD-like phase diverges, so the surface gets a stable final rate.
        # AdaBelief's first (rectified) steps are SGD with momentum, which the valley's
        # gradient of about 200 throws off the surface: it starts with no step instead.
        options={"AdaBound": {"final_lr": 1e-3}, "AMSBound": {"final_lr": 1e-3},
                 "AdaBelief": {"degenerated_to_sgd": False}},
        caption="All methods reach the curved valley quickly and then crawl along its floor towards "
        "(1, 1); plain SGD is limited by the valley's steep walls to a small rate and is slowest. "
        "AdaBound and AMSBound run with final_lr 0.001 here: their step-size bounds close in on "
        "final_lr, and the default 0.1 is far above the stable rate 2/1000 of the valley's "
        "curvature, which sends them off to infinity after about 700 steps.",
    ),
}


def trajectory(surface: Surface, name: str, steps: int | None = None, lr: float | None = None) -> np.ndarray:
    """The points (steps + 1, 2) optimizer ``name`` (of :data:`REGISTRY`) visits from the
    surface's start point at the surface's learning rate and options for it (or ``lr``); a
    path that blows up (non-finite, or beyond 1e6) ends in NaN from that step on."""
    entry = REGISTRY[name]
    steps = surface.steps if steps is None else steps
    p = Parameter(np.array(surface.start, np.float64))
    opt = entry.make([p], surface.lrs[name] if lr is None else lr, **surface.options.get(name, {}))
    path = np.empty((steps + 1, 2))
    path[0] = p.data

    def closure() -> float:
        p.grad = np.array(surface.grad(*p.data), np.float64)
        return float(surface.f(*p.data))

    with np.errstate(all="ignore"):
        for t in range(steps):
            if entry.closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
            path[t + 1] = p.data
            if not np.all(np.isfinite(p.data)) or np.abs(p.data).max() > 1e6:
                path[t + 1 :] = np.nan
                break
    return path


def diverged_at(path: np.ndarray) -> int | None:
    """The step at which a :func:`trajectory` blew up, or None."""
    bad = np.flatnonzero(~np.isfinite(path).all(axis=1))
    return int(bad[0]) if bad.size else None
