"""fastopt.data: preprocessing against its formulas, the mini-batch iterator's contract, and the
playground generators against the playground's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import data


def _features(n=500, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 3)) @ np.array([[3.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 0.01]]) + [5.0, -2.0, 100.0]
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standardizer(dtype):
    x = _features().astype(dtype)
    s = data.Standardizer().fit(x)
    z = s.transform(x)
    assert z.dtype == dtype
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(s.mean_, x.astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(s.inverse_transform(z), x, rtol=1e-5 if dtype == np.float32 else 1e-12)
    # A constant feature is only centred; fit_transform == fit then transform.
    c = np.hstack([x, np.full((len(x), 1), 7, dtype)])
    zc = data.Standardizer().fit_transform(c)
    assert np.all(zc[:, -1] == 0) and np.all(np.isfinite(zc))


@pytest.mark.parametrize("n_components", [None, 2])
def test_pca_whitener(n_components):
    x = _features(2000)
    w = data.PCAWhitener(n_components=n_components, eps=0.0).fit(x)
    z = w.transform(x)
    k = n_components or 3
    assert z.shape == (2000, k)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(k), atol=1e-9)
    # Oracle: the SVD of the centred data gives the same directions (up to sign) and variances.
    c = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    np.testing.assert_allclose(w.explained_variance_, (s**2 / len(x))[:k], rtol=1e-10)
    np.testing.assert_allclose(np.abs(w.components_ @ vt[:k].T), np.eye(k), atol=1e-8)
    if n_components is None:
        np.testing.assert_allclose(w.inverse_transform(z), x, rtol=1e-10, atol=1e-10)
    else:  # keeping 2 of 3: the reconstruction is the projection onto the top components
        proj = c @ vt[:k].T @ vt[:k] + x.mean(axis=0)
        np.testing.assert_allclose(w.inverse_transform(z), proj, rtol=1e-8, atol=1e-8)


def test_mini_batches():
    x = np.arange(103, dtype=np.float32)[:, None]
    y = np.arange(103)
    mb = data.MiniBatches(x, y, batch_size=10, seed=3)
    assert len(mb) == 11
    epoch1 = list(mb)
    seen = np.concatenate([b[1] for b in epoch1])
    assert sorted(seen) == list(range(103)) and len(epoch1[-1][1]) == 3
    assert all(np.array_equal(bx[:, 0], by) for bx, by in epoch1)  # aligned
    epoch2 = list(mb)
    assert not np.array_equal(seen, np.concatenate([b[1] for b in epoch2]))  # reshuffled
    again = list(data.MiniBatches(x, y, batch_size=10, seed=3))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(epoch1, again))  # reproducible
    dl = data.MiniBatches(y, batch_size=10, drop_last=True, shuffle=False)
    assert len(dl) == 10 and np.array_equal(next(iter(dl)), np.arange(10))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_mini_batches_shard_the_same_global_batches(world):
    """Each rank's shards, put back together in rank order, are the batches one process draws
    (uneven batches too); two epochs."""
    x = np.arange(103, dtype=np.float32)[:, None]
    y = np.arange(103)
    whole = data.MiniBatches(x, y, batch_size=10, seed=3)
    shards = [data.MiniBatches(x, y, batch_size=10, seed=3, rank=r, world_size=world) for r in range(world)]
    for _ in range(2):
        per_rank = [list(s) for s in shards]
        for i, (bx, by) in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([p[i][1] for p in per_rank]), by)
            np.testing.assert_array_equal(np.concatenate([p[i][0] for p in per_rank]), bx)
            sizes = [len(p[i][1]) for p in per_rank]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("kw,match", [({"rank": 2, "world_size": 2}, "rank must be below world_size"),
                                      ({"rank": -1, "world_size": 2}, "rank must be an int >= 0"),
                                      ({"world_size": 0}, "world_size must be an int >= 1")])
def test_mini_batches_bad_shard(kw, match):
    with pytest.raises(ValueError, match=match):
        data.MiniBatches(np.arange(4.0), batch_size=2, **kw)


def test_datasets_follow_the_playground():
    n = 400
    # spiral without noise: radius i/n * 5, angle 1.75 * 2 pi i/n (+ pi for label 0).
    x, y = data.spiral(n, 0.0, seed=0, dtype=np.float64)
    i = np.arange(n // 2) / (n // 2)
    np.testing.assert_allclose(np.hypot(x[: n // 2, 0], x[: n // 2, 1]), i * 5, atol=1e-12)
    np.testing.assert_allclose(x[n // 2 :], -x[: n // 2], atol=1e-12)
    assert y.dtype == np.int64 and y[: n // 2].all() and not y[n // 2 :].any()
    # circle: label 1 inside radius 2.5 (noise 0: exactly the inner disc).
    x, y = data.circle(n, 0.0, seed=1)
    r = np.hypot(x[:, 0], x[:, 1])
    assert np.array_equal(y == 1, r < 2.5) and r.max() <= 5 and y.sum() == n // 2
    assert np.all((r < 2.5) | (r >= 3.5))
    # xor: |coordinates| >= 0.3, label is the sign of x*y.
    x, y = data.xor(n, 0.0, seed=2)
    assert np.abs(x).min() >= 0.3 and np.abs(x).max() <= 5.3
    assert np.array_equal(y == 1, x[:, 0] * x[:, 1] >= 0)
    # gaussian: centres (2, 2) / (-2, -2), std 0.5 at noise 0 and 4 at noise 0.5.
    for noise, std in ((0.0, 0.5), (0.5, 4.0)):
        x, y = data.gaussian(20000, noise, seed=3, dtype=np.float64)
        np.testing.assert_allclose(x[y == 1].mean(axis=0), [2, 2], atol=0.1 * std)
        np.testing.assert_allclose(x[y == 0].std(axis=0), [std, std], rtol=0.05)
    # noise displaces spiral points by at most `noise` per coordinate; seeds reproduce.
    a, _ = data.spiral(n, 0.3, seed=5, dtype=np.float64)
    b, _ = data.spiral(n, 0.0, seed=5, dtype=np.float64)
    assert np.abs(a - b).max() <= 0.3
    np.testing.assert_array_equal(a, data.spiral(n, 0.3, seed=5, dtype=np.float64)[0])
    assert data.make_dataset("xor", 10)[0].shape == (10, 2)


def test_train_test_split():
    x = np.arange(20.0)[:, None]
    y = np.arange(20)
    xtr, xte, ytr, yte = data.train_test_split(x, y, test_fraction=0.25, seed=0)
    assert len(xte) == 5 and len(xtr) == 15
    assert sorted(np.concatenate([ytr, yte])) == list(range(20))
    assert np.array_equal(xtr[:, 0], ytr)


def test_bad_input():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        data.Standardizer().fit([[1.0]])
    with pytest.raises(ValueError, match=r"shape \(n_samples, n_features\)"):
        data.Standardizer().fit(np.zeros(3))
    with pytest.raises(RuntimeError, match="not fitted"):
        data.PCAWhitener().transform(np.zeros((2, 2)))
    s = data.Standardizer().fit(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="fitted on 2"):
        s.transform(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="n_components=5"):
        data.PCAWhitener(5).fit(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="batch_size"):
        data.MiniBatches(np.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match=r"arrays\[1\] has 2 samples"):
        data.MiniBatches(np.zeros(3), np.zeros(2), batch_size=1)
    with pytest.raises(ValueError, match="noise"):
        data.spiral(10, -1.0)
    with pytest.raises(ValueError, match="n_samples"):
        data.circle(1)
    with pytest.raises(ValueError, match="name must be one of"):
        data.make_dataset("moons")
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(np.zeros(4), test_fraction=1.0)
    x = np.ones((3, 2))
    data.Standardizer().fit_transform(x)
    assert np.all(x == 1)  # the caller's array untouched
