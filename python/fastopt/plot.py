"""Pictures of what fastopt computes. Needs matplotlib: ``pip install 'fastopt[plot]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["lr_schedule", "loss_curves", "decision_boundaries", "optimizer_paths", "path_labels"]


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
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    fig.savefig(out, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def loss_curves(curves: dict[str, Any], path: str | Path, *, xlabel: str = "epoch", ylabel: str = "training loss",
                title: str | None = None, log: bool = True, styles: dict[str, dict[str, Any]] | None = None) -> Path:
    """One line per entry of ``curves`` (name -> sequence of losses), log scale by default;
    ``styles`` (optional): a curve's matplotlib line options by name (``color``, ``ls``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    for name, values in curves.items():
        v = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(1, len(v) + 1), v, **{"label": name, "lw": 1.6, **(styles or {}).get(name, {})})
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(ncol=2, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def decision_boundaries(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    path: str | Path,
    *,
    titles: dict[str, str] | None = None,
    resolution: int = 150,
    suptitle: str | None = None,
) -> Path:
    """A panel per predictor (name -> f(points (n, 2)) -> probability of class 1): the
    probability as colour, the 0.5 contour, and the points ``x`` coloured by label ``y``."""
    plt = _pyplot()
    n = len(predictors)
    cols = min(4, n)
    rows = -(-n // cols)
    pad = 0.1 * (x.max(axis=0) - x.min(axis=0))
    lo, hi = x.min(axis=0) - pad, x.max(axis=0) + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(x.dtype)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (name, predict) in zip(axes.ravel(), predictors.items()):
        prob = np.asarray(predict(grid), dtype=np.float64).reshape(gx.shape)
        ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu", alpha=0.75)
        ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.0)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu", edgecolors="k", linewidths=0.3, s=9)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _save(fig, path)


_STYLES = ("-", "--", "-.", ":")


def path_labels(paths: dict[str, np.ndarray], window: tuple[float, float, float, float]) -> list[str]:
    """The legend entries :func:`optimizer_paths` gives ``paths``: the name, then
    ``(≈ other)`` where the path stays within 1% of the window of an earlier one, and
    ``DIVERGED at step k`` where it ends in NaN from step k."""
    size = np.array([window[1] - window[0], window[3] - window[2]])
    labels: list = []
    drawn: list = []
    for name, pts in paths.items():
        pts = np.asarray(pts, dtype=np.float64)
        finite = np.isfinite(pts).all(axis=1)
        label = name
        if finite.all():
            for other, opts in drawn:
                if len(opts) == len(pts) and np.all(np.abs(opts - pts) <= 0.01 * size):
                    label += f"  (≈ {other})"
                    break
            drawn.append((name, pts))
        else:
            label += f"  DIVERGED at step {int(np.flatnonzero(~finite)[0])}"
        labels.append(label)
    return labels
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")


def optimizer_paths(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray],
    window: tuple[float, float, float, float],
    paths: dict[str, np.ndarray],
    path: str | Path,
    *,
    title: str = "",
    minimum: tuple[float, float] | None = None,
    log_levels: bool = False,
    minima: tuple[tuple[float, float], ...] = (),
    saddles: tuple[tuple[float, float], ...] = (),
    xlabel: str = "x",
    ylabel: str = "y",
) -> Path:
    """Contours of ``f`` over ``window`` (xmin, xmax, ymin, ymax) and each optimizer's path
    (name -> array (steps + 1, 2)), each in its own colour, line style and marker (every tenth
    of the path) so that paths that lie on top of each other stay distinguishable; a path
    that stays within 1% of the window of an earlier one says so in the legend (``≈ Adam``).
    The start, the ``minimum`` / ``minima`` (stars) and ``saddles`` (crosses) are marked. A
    path that ends in NaN (it diverged, see :func:`fastopt.demo.trajectory`) ends in a red
    cross at its last point inside the window, and the legend gives the step it diverged at."""
    plt = _pyplot()
    x0, x1, y0, y1 = window
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    z = f(gx, gy)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    if log_levels:
        ax.contour(gx, gy, np.log10(z - z.min() + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    else:
        ax.contour(gx, gy, z, levels=25, cmap="Greys", linewidths=0.6)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((name, pts), label) in enumerate(zip(paths.items(), path_labels(paths, window))):
        pts = np.asarray(pts, dtype=np.float64)
        finite = np.isfinite(pts).all(axis=1)
        bad = np.flatnonzero(~finite)
        ok = pts[: bad[0]] if bad.size else pts
        colour = colours[i % len(colours)]
        ax.plot(ok[:, 0], ok[:, 1], _STYLES[i % len(_STYLES)], color=colour, lw=1.5, label=label,
                marker=_MARKERS[i % len(_MARKERS)], ms=4, markevery=max(1, len(pts) // 10), alpha=0.9)
        if bad.size:
            inside = np.flatnonzero((ok[:, 0] >= x0) & (ok[:, 0] <= x1) & (ok[:, 1] >= y0) & (ok[:, 1] <= y1))
            if inside.size:
                ax.plot(*ok[inside[-1]], "x", color="red", ms=12, mew=3, zorder=5)
    first = next(iter(paths.values()), None)
    if first is not None:
        ax.plot(*np.asarray(first)[0], "ko", ms=7, label="start", zorder=6)
    marks = tuple(minima) + ((tuple(minimum),) if minimum is not None and tuple(minimum) not in minima else ())
    for i, m in enumerate(marks):
        ax.plot(*m, "k*", ms=14, zorder=6, label="minimum" if i == 0 else None)
    for i, sp in enumerate(saddles):
        ax.plot(*sp, "kP", ms=11, zorder=6, label="saddle point" if i == 0 else None)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _save(fig, path)
