"""Data for small experiments: preprocessing (:class:`Standardizer`, :class:`PCAWhitener`),
a seeded mini-batch iterator (:class:`MiniBatches`), and the 2-D classification datasets of
the TensorFlow playground (:func:`circle`, :func:`xor`, :func:`gaussian`, :func:`spiral`),
generated here (no download) with the playground's formulas.

The generators return ``(x, y)``: ``x`` of shape ``(n_samples, 2)`` and ``y`` int64 labels
(1 for the playground's positive class, 0 for its negative one). ``noise`` is the
playground's slider divided by 100 (0 to 0.5 there; any value >= 0 here).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .parameter import FLOAT_DTYPES

__all__ = ["Standardizer", "PCAWhitener", "MiniBatches", "circle", "xor", "gaussian", "spiral", "DATASETS", "make_dataset", "train_test_split"]


def _matrix(x: Any, what: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} has dtype {x.dtype}; it must be float32 or float64")
    if x.ndim != 2:
        raise ValueError(f"{what} must have shape (n_samples, n_features), got {x.shape}")
    return x


class _Fitted:
    _fitted_attr = "mean_"
    mean_: Any

    def fit(self, x: np.ndarray) -> "_Fitted":
        raise NotImplementedError

    def transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_fitted(self, x: np.ndarray) -> None:
        if getattr(self, self._fitted_attr, None) is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(x) first")
        if x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"x has {x.shape[1]} features but {type(self).__name__} was fitted on {self.mean_.shape[0]}")

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


class Standardizer(_Fitted):
    """Per feature: subtract the mean and divide by the standard deviation (``ddof=0``) of
    the data passed to :meth:`fit`. A constant feature (std 0) is only centred. Statistics
    are computed in float64 and results keep the input's dtype."""

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> "Standardizer":
        x = _matrix(x)
        if x.shape[0] < 1:
            raise ValueError("x must have at least one sample")
        x64 = x.astype(np.float64)
        self.mean_ = x64.mean(axis=0)
        std = x64.std(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = _matrix(x)
        self._check_fitted(x)
        return ((x - self.mean_) / self.std_).astype(x.dtype)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        z = _matrix(z, "z")
        self._check_fitted(z)
        return (z * self.std_ + self.mean_).astype(z.dtype)


class PCAWhitener(_Fitted):
    """PCA whitening: ``z = (x - mean) @ components_.T / sqrt(explained_variance_ + eps)``,
    so the fitted data has (close to) identity covariance. ``components_`` are the
    eigenvectors of the covariance (``ddof=0``), largest variance first;
    ``n_components`` keeps the first ones (default: all). ``eps`` keeps directions of
    (almost) zero variance finite. :meth:`inverse_transform` maps back (exactly, up to
    rounding, when all components are kept)."""

    def __init__(self, n_components: int | None = None, eps: float = 1e-8) -> None:
        if n_components is not None and (isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1):
            raise ValueError(f"n_components must be a positive int or None, got {n_components!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.n_components = n_components
        self.eps = float(eps)
        self.mean_: np.ndarray | None = None
        self.components_: Any = None
        self.explained_variance_: Any = None

    def fit(self, x: np.ndarray) -> "PCAWhitener":
        x = _matrix(x)
        if x.shape[0] < 1:
            raise ValueError("x must have at least one sample")
        k = self.n_components or x.shape[1]
        if k > x.shape[1]:
            raise ValueError(f"n_components={k} is more than the {x.shape[1]} features")
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=0)
        c = x64 - mean
        cov = c.T @ c / x.shape[0]
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:k]
        vecs = vecs[:, order]
        # A deterministic sign: the largest entry of each component is positive.
        signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(k)])
        self.mean_ = mean
        self.components_ = (vecs * np.where(signs == 0, 1.0, signs)).T
        self.explained_variance_ = np.maximum(vals[order], 0.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = _matrix(x)
        self._check_fitted(x)
        z = (x - self.mean_) @ self.components_.T / np.sqrt(self.explained_variance_ + self.eps)
        return z.astype(x.dtype)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        z = _matrix(z, "z")
        if self.components_ is None:
            raise RuntimeError("PCAWhitener is not fitted: call fit(x) first")
        if z.shape[1] != self.components_.shape[0]:
            raise ValueError(f"z has {z.shape[1]} columns but the whitener keeps {self.components_.shape[0]} components")
        x = (z * np.sqrt(self.explained_variance_ + self.eps)) @ self.components_ + self.mean_
        return x.astype(z.dtype)


class MiniBatches:
    """Iterates over aligned arrays in mini-batches: ``for xb, yb in MiniBatches(x, y,
    batch_size=64, seed=0)``. With ``shuffle`` each pass (each ``iter()``) uses a new
    permutation from a generator seeded once with ``seed``, so a run is reproducible and
    epochs differ. ``drop_last`` drops a final short batch. ``len()`` is the batches per
    pass. A single array yields arrays, several yield tuples.

    Data-parallel training: with ``rank`` and ``world_size`` (and the same ``seed`` on every
    rank), each rank yields its shard of the same global batches of ``batch_size`` rows: the
    batch split into ``world_size`` contiguous parts as ``numpy.array_split`` splits it (the
    first ``batch_size % world_size`` ranks get one row more), so the ranks' shards are
    disjoint and together are the batch one process would draw.

    >>> x = np.arange(10.0)
    >>> [b.tolist() for b in fo.data.MiniBatches(x, batch_size=5, shuffle=False, rank=1, world_size=2)]
    [[3.0, 4.0], [8.0, 9.0]]
    """

    def __init__(self, *arrays: np.ndarray, batch_size: int, shuffle: bool = True, drop_last: bool = False, seed: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if not arrays:
            raise ValueError("MiniBatches needs at least one array")
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray) or a.ndim < 1:
                raise TypeError(f"arrays[{i}] must be a numpy.ndarray with a sample axis, got {type(a).__name__}")
        n = len(arrays[0])
        for i, a in enumerate(arrays):
            if len(a) != n:
                raise ValueError(f"arrays[{i}] has {len(a)} samples but arrays[0] has {n}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for name, v in (("world_size", world_size), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (1 if name == "world_size" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'world_size' else 0}, got {v!r}")
        if rank >= world_size:
            raise ValueError(f"rank must be below world_size ({world_size}), got {rank}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.arrays = arrays
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = len(self.arrays[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        n = len(self.arrays[0])
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                idx = np.array_split(idx, self.world_size)[self.rank]
            batch = tuple(a[idx] for a in self.arrays)
            yield batch[0] if len(batch) == 1 else batch


# ----------------------------------------------------------------------------- playground datasets


def _setup(n_samples: Any, noise: Any, seed: Any, dtype: Any) -> tuple[int, float, np.random.Generator, np.dtype]:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return int(n_samples), float(noise), rng, dt


def _result(x: np.ndarray, y: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    return x.astype(dt), y.astype(np.int64)


def circle(n_samples: int = 500, noise: float = 0.0, seed: Any = None, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A disc of radius 2.5 (label 1) inside a ring of radii 3.5 to 5 (label 0); the label is
    decided after displacing the point by ``U(-5, 5) * noise`` per coordinate."""
    n, noise, rng, dt = _setup(n_samples, noise, seed, dtype)
    radius = 5.0
    half = n // 2
    r = np.concatenate([rng.uniform(0, radius * 0.5, half), rng.uniform(radius * 0.7, radius, n - half)])
    angle = rng.uniform(0, 2 * np.pi, n)
    x = np.stack([r * np.sin(angle), r * np.cos(angle)], axis=1)
    shifted = x + rng.uniform(-radius, radius, (n, 2)) * noise
    y = np.hypot(shifted[:, 0], shifted[:, 1]) < radius * 0.5
    return _result(x, y, dt)


def xor(n_samples: int = 500, noise: float = 0.0, seed: Any = None, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Points in [-5.3, 5.3]^2 off a 0.3-wide cross; label 1 where x*y >= 0 after displacing
    by ``U(-5, 5) * noise``."""
    n, noise, rng, dt = _setup(n_samples, noise, seed, dtype)
    x = rng.uniform(-5, 5, (n, 2))
    x += np.where(x > 0, 0.3, -0.3)
    shifted = x + rng.uniform(-5, 5, (n, 2)) * noise
    y = shifted[:, 0] * shifted[:, 1] >= 0
    return _result(x, y, dt)


def gaussian(n_samples: int = 500, noise: float = 0.0, seed: Any = None, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs at (2, 2) (label 1) and (-2, -2) (label 0); the standard deviation
    grows with the noise from 0.5 (noise 0) to 4 (noise 0.5) as on the playground."""
    n, noise, rng, dt = _setup(n_samples, noise, seed, dtype)
    std = 0.5 + noise * (4.0 - 0.5) / 0.5
    half = n // 2
    x = np.concatenate([rng.normal(2.0, std, (half, 2)), rng.normal(-2.0, std, (n - half, 2))])
    y = np.concatenate([np.ones(half, bool), np.zeros(n - half, bool)])
    return _result(x, y, dt)


def spiral(n_samples: int = 500, noise: float = 0.0, seed: Any = None, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals of 1.75 turns out to radius 5 (label 1, and label 0 turned by
    pi), each point displaced by ``U(-1, 1) * noise`` per coordinate."""
    n, noise, rng, dt = _setup(n_samples, noise, seed, dtype)
    parts = []
    for delta, count in ((0.0, n // 2), (np.pi, n - n // 2)):
        i = np.arange(count) / count
        r = i * 5.0
        t = 1.75 * i * 2 * np.pi + delta
        parts.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1) + rng.uniform(-1, 1, (count, 2)) * noise)
    y = np.concatenate([np.ones(n // 2, bool), np.zeros(n - n // 2, bool)])
    return _result(np.concatenate(parts), y, dt)


#: The generators by name.
DATASETS = {"circle": circle, "xor": xor, "gaussian": gaussian, "spiral": spiral}


def make_dataset(name: str, n_samples: int = 500, noise: float = 0.0, seed: Any = None, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """One of :data:`DATASETS` by name."""
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](n_samples, noise, seed, dtype)


def train_test_split(*arrays: np.ndarray, test_fraction: float = 0.5, seed: Any = None) -> list[np.ndarray]:
    """Splits aligned arrays at random into ``[a_train, a_test, b_train, b_test, ...]``
    (the playground holds out half of the points by default)."""
    if not arrays:
        raise ValueError("train_test_split needs at least one array")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(f"arrays[{i}] has {len(a)} samples but arrays[0] has {n}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = max(1, min(n - 1, int(round(n * test_fraction))))
    test, train = order[:n_test], order[n_test:]
    out: list[np.ndarray] = []
    for a in arrays:
        out += [a[train], a[test]]
    return out
