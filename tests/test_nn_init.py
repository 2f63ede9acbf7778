"""fastopt.nn.init against torch's formulas: gains, bounds and standard deviations, a
Kolmogorov-Smirnov test of each distribution, orthogonality, exact patterns, seeding, bad
input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastopt
from fastopt.nn import init

N = 20000
# KS critical value at alpha = 1e-4 (asymptotic): the tests fail by chance once in 10^4.
KS_CRIT = math.sqrt(-0.5 * math.log(1e-4 / 2))


def ks_stat(sample: np.ndarray, cdf) -> float:
    x = np.sort(sample.astype(np.float64).reshape(-1))
    n = x.size
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def normal_cdf(mean, std):
    erf = np.frompyfunc(math.erf, 1, 1)
    return lambda x: (0.5 * (1 + erf((x - mean) / (std * math.sqrt(2))))).astype(np.float64)


def uniform_cdf(a, b):
    return lambda x: np.clip((x - a) / (b - a), 0, 1)


def assert_distribution(sample, cdf):
    d = ks_stat(sample, cdf)
    assert d * math.sqrt(sample.size) < KS_CRIT, f"KS statistic {d:.4g} (n={sample.size})"


def test_calculate_gain_matches_torch(torch):
    for nl in ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid", "tanh", "relu", "selu"]:
        assert init.calculate_gain(nl) == torch.nn.init.calculate_gain(nl)
    for p in [None, 0.2, 1, 0.0]:
        assert init.calculate_gain("leaky_relu", p) == torch.nn.init.calculate_gain("leaky_relu", p)
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_normal_trunc_normal_distributions(dtype):
    g = np.random.default_rng(0)
    t = np.empty((100, 200), dtype)
    assert init.uniform_(t, -2, 3, generator=g) is t
    assert t.min() >= -2 and t.max() <= 3
    assert_distribution(t, uniform_cdf(-2, 3))
    init.normal_(t, 1.5, 0.5, generator=g)
    assert_distribution(t, normal_cdf(1.5, 0.5))
    init.trunc_normal_(t, 0.5, 1.0, -1.0, 1.5, generator=g)
    assert t.min() >= -1.0 and t.max() <= 1.5
    phi = normal_cdf(0.5, 1.0)
    lo, hi = phi(np.array([-1.0]))[0], phi(np.array([1.5]))[0]
    assert_distribution(t, lambda x: (phi(x) - lo) / (hi - lo))


@pytest.mark.parametrize("shape", [(300, 100), (64, 32, 3, 3), (50, 20, 5)])
def test_xavier_and_kaiming_follow_torch_formulas(torch, shape):
    g = np.random.default_rng(1)
    t = np.empty(shape, np.float32)
    fan_in = shape[1] * math.prod(shape[2:])
    fan_out = shape[0] * math.prod(shape[2:])
    # torch's own bound, read from a torch-filled tensor's extreme values is noisy; compare the
    # formulas and then the distributions.
    a = 1.7 * math.sqrt(6.0 / (fan_in + fan_out))
    init.xavier_uniform_(t, gain=1.7, generator=g)
    assert np.abs(t).max() <= a
    assert_distribution(t, uniform_cdf(-a, a))
    init.xavier_normal_(t, gain=1.7, generator=g)
    assert_distribution(t, normal_cdf(0, 1.7 * math.sqrt(2.0 / (fan_in + fan_out))))
    for mode, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        for nl, param in (("relu", 0), ("leaky_relu", 0.1), ("tanh", 0), ("selu", 0), ("linear", 0), ("sigmoid", 0)):
            std = torch.nn.init.calculate_gain(nl, param) / math.sqrt(fan)
            init.kaiming_uniform_(t, a=param, mode=mode, nonlinearity=nl, generator=g)
            b = math.sqrt(3.0) * std
            assert np.abs(t).max() <= np.float32(b)
            assert_distribution(t, uniform_cdf(-b, b))
            init.kaiming_normal_(t, a=param, mode=mode, nonlinearity=nl, generator=g)
            assert_distribution(t, normal_cdf(0, std))
    # torch's tensors from the same formulas have the same spread
    tt = torch.empty(shape)
    torch.nn.init.kaiming_normal_(tt, mode="fan_out", nonlinearity="relu")
    init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g)
    assert abs(float(tt.std()) / float(t.std()) - 1) < 0.05


@pytest.mark.parametrize("shape", [(10, 30), (30, 10), (8, 4, 3, 3), (5, 5)])
def test_orthogonal_rows_or_columns_are_orthonormal(shape):
    t = np.empty(shape)
    init.orthogonal_(t, gain=2.0, generator=np.random.default_rng(2))
    m = t.reshape(shape[0], -1) / 2.0
    if m.shape[0] <= m.shape[1]:
        np.testing.assert_allclose(m @ m.T, np.eye(m.shape[0]), atol=1e-12)
    else:
        np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-12)


def test_exact_patterns_match_torch(torch):
    for shape in [(3, 5), (5, 3), (4, 4)]:
        t = np.empty(shape)
        tt = torch.empty(shape, dtype=torch.float64)
        np.testing.assert_array_equal(init.eye_(t), torch.nn.init.eye_(tt).numpy())
    for shape, groups in [((6, 3, 3), 1), ((4, 2, 3, 3), 2), ((6, 3, 3, 3, 3), 3), ((2, 5, 4), 1)]:
        t = np.empty(shape)
        tt = torch.empty(shape, dtype=torch.float64)
        np.testing.assert_array_equal(init.dirac_(t, groups), torch.nn.init.dirac_(tt, groups).numpy())
    t = np.empty((4, 5), np.float32)
    np.testing.assert_array_equal(init.constant_(t, 0.25), 0.25)
    np.testing.assert_array_equal(init.ones_(t), 1)
    np.testing.assert_array_equal(init.zeros_(t), 0)


def test_sparse_zeros_per_column_and_std():
    t = np.empty((200, 300))
    init.sparse_(t, 0.3, std=0.02, generator=np.random.default_rng(3))
    assert all(np.count_nonzero(t[:, c] == 0) == math.ceil(0.3 * 200) for c in range(300))
    nz = t[t != 0]
    assert_distribution(nz, normal_cdf(0, 0.02))


def test_seeded_calls_are_reproducible_and_parameters_work():
    a, b = np.empty((50, 40), np.float32), np.empty((50, 40), np.float32)
    for fn in (init.uniform_, init.normal_, init.xavier_uniform_, init.kaiming_normal_, init.orthogonal_, init.trunc_normal_):
        fn(a, generator=np.random.default_rng(42))
        fn(b, generator=np.random.default_rng(42))
        np.testing.assert_array_equal(a, b)
    init.manual_seed(7)
    init.normal_(a)
    init.manual_seed(7)
    init.normal_(b)
    np.testing.assert_array_equal(a, b)
    p = fastopt.Parameter(np.zeros((3, 4)))
    assert init.ones_(p) is p.data and np.all(p.data == 1)


def test_bad_input_matches_torch_messages():
    with pytest.raises(ValueError, match="Fan in and fan out can not be computed"):
        init.xavier_uniform_(np.empty(5))
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_uniform_(np.empty((3, 4)), mode="fan_avg")
    with pytest.raises(ValueError, match="Only tensors with 2 dimensions"):
        init.eye_(np.empty((2, 2, 2)))
    with pytest.raises(ValueError, match="Only tensors with 3, 4, or 5 dimensions"):
        init.dirac_(np.empty((2, 2)))
    with pytest.raises(ValueError, match="Only tensors with 2 or more dimensions"):
        init.orthogonal_(np.empty(3))
    with pytest.raises(TypeError, match="tensor"):
        init.normal_(np.zeros(3, int))
    with pytest.raises(TypeError, match="tensor"):
        init.normal_([0.0, 1.0])
    with pytest.raises(TypeError, match="generator"):
        init.normal_(np.zeros(3), generator=42)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.ones_(ro)
    t = np.zeros((2, 3))
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_uniform_(np.empty((0, 3)))
    with pytest.raises(ValueError, match="std"):
        init.normal_(t, std=-1)
    np.testing.assert_array_equal(t, 0)
