"""Gradient clipping against torch.nn.utils, and clipping folded into the optimizer step."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry
from conftest import assert_close

NORMS = [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0, 0.5]
SHAPES = [(300, 70), (7,), (0,), (), (40_000,)]


def grads(dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    out = [np.asarray(rng.standard_normal(s) * scale, dtype=dtype) for s in SHAPES]
    out[1][2] = 0.0
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", NORMS)
def test_total_norm_matches_torch(torch, dtype, norm_type):
    gs = grads(dtype)
    if math.isinf(norm_type):
        for g in (gs, [gs[2]]):
            with pytest.raises(RuntimeError, match="empty"):
                fo.nn.utils.get_total_norm(g, norm_type)
        gs = [g for g in gs if g.size]
    ours = fo.nn.utils.get_total_norm(gs, norm_type)
    theirs = torch.nn.utils.get_total_norm([torch.from_numpy(g) for g in gs], norm_type).numpy()
    assert ours.dtype == theirs.dtype
    if norm_type == 0:
        assert float(ours) == float(theirs)
    else:
        assert_close(np.asarray(ours), theirs, f"norm {norm_type}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_total_norm_is_accurate_and_thread_independent(dtype):
    gs = grads(dtype, seed=1) + [np.full(2**20 + 3, 0.1, dtype)]
    exact = math.sqrt(math.fsum(float(x) ** 2 for g in gs for x in g.ravel()))
    before = fo.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fo.set_num_threads(threads)
            results.append(fo.nn.utils.get_total_norm(gs))
    finally:
        fo.set_num_threads(before)
    assert results[0].tobytes() == results[1].tobytes()
    assert abs(float(results[0]) - exact) <= exact * (1e-7 if dtype == np.float32 else 1e-14)


def test_mixed_dtypes_and_empty():
    gs = [np.ones(4, np.float32), np.ones(9, np.float64)]
    total = fo.nn.utils.get_total_norm(gs)
    assert total.dtype == np.float64 and float(total) == math.sqrt(13)
    assert fo.nn.utils.get_total_norm([]) == 0 and fo.nn.utils.get_total_norm([]).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
def test_clip_grad_norm_matches_torch(torch, dtype, norm_type, max_norm):
    gs = [g for g in grads(dtype, seed=2) if g.size]
    ps = [fo.Parameter(np.zeros_like(g)) for g in gs]
    tp = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype)) for g in gs]
    for p, q, g in zip(ps, tp, gs):
        p.grad = g.copy()
        q.grad = torch.from_numpy(g.copy())
    ours = fo.nn.utils.clip_grad_norm_(ps, max_norm, norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type)
    assert_close(np.asarray(ours), theirs.numpy(), "returned norm")
    for p, q in zip(ps, tp):
        assert_close(p.grad, q.grad.numpy(), "clipped grad")
        if max_norm > 1e6:
            np.testing.assert_array_equal(p.grad, q.grad.numpy())  # coefficient clamped at 1


def test_clip_grad_value_matches_torch(torch):
    gs = grads(np.float32, seed=3)
    gs[0][0, :3] = [np.nan, np.inf, -np.inf]
    ps = [fo.Parameter(np.zeros_like(g)) for g in gs]
    tp = [torch.nn.Parameter(torch.zeros(g.shape)) for g in gs]
    for p, q, g in zip(ps, tp, gs):
        p.grad = g.copy()
        q.grad = torch.from_numpy(g.copy())
    fo.nn.utils.clip_grad_value_(ps, 1.25)
    torch.nn.utils.clip_grad_value_(tp, 1.25)
    for p, q in zip(ps, tp):
        np.testing.assert_array_equal(p.grad, q.grad.numpy())


def test_nonfinite_norms(torch):
    p = fo.Parameter(np.zeros(3, np.float32))
    p.grad = np.array([1.0, np.nan, 2.0], np.float32)
    with pytest.raises(RuntimeError, match="non-finite"):
        fo.nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(p.grad[[0, 2]], [1.0, 2.0])  # untouched when it raises
    total = fo.nn.utils.clip_grad_norm_([p], 1.0)
    assert np.isnan(total) and np.isnan(p.grad).all()  # torch scales by the NaN coefficient too


def test_bad_input():
    with pytest.raises(TypeError, match=r"parameters\[0\] is a ndarray"):
        fo.nn.utils.clip_grad_norm_([np.ones(3)], 1.0)
    with pytest.raises(ValueError, match="norm_type must be positive"):
        fo.nn.utils.get_total_norm([np.ones(3)], -2.0)
    with pytest.raises(TypeError, match=r"tensors\[0\] has dtype int64"):
        fo.nn.utils.get_total_norm([np.ones(3, np.int64)])
    g = np.ones(6)
    a, b = fo.Parameter(np.zeros(6)), fo.Parameter(np.zeros(6))
    a.grad = g
    b.grad = g  # the same array twice would be scaled twice: refused before anything changes
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] share memory"):
        fo.nn.utils.clip_grad_norm_([a, b], 0.1)
    assert (g == 1).all()
    with pytest.raises(TypeError, match="must be an ordered collection"):
        fo.nn.utils.clip_grad_value_({a}, 1.0)


STEP_CASES = [(getattr(fo.optim, n), kw) for n, kw in registry.configs()]


def _build(cls, kw, dtype):
    rng = np.random.default_rng(5)
    ps = [fo.Parameter(np.asarray(rng.standard_normal(s), dtype=dtype)) for s in [(50, 20), (20,), ()]]
    return ps, cls([{"params": ps[:2]}, {"params": ps[2:], "lr": registry.second_lr(cls, 0.02)}], **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", STEP_CASES)
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_fused_clip_step_equals_clip_then_step(cls, kw, dtype, norm_type):
    a, oa = _build(cls, kw, dtype)
    b, ob = _build(cls, kw, dtype)
    for t in range(12):
        rng = np.random.default_rng(100 + t)
        gs = [np.asarray(rng.standard_normal(p.shape) * (0.1 if t % 3 else 10), dtype=dtype) for p in a]  # some clip
        for p, q, g in zip(a, b, gs):
            p.grad = g.copy()
            q.grad = g.copy()
        total = fo.nn.utils.clip_grad_norm_(a, 1.0, norm_type)
        oa.step()
        kept = [q.grad.copy() for q in b]
        ob.step(max_grad_norm=1.0, norm_type=norm_type)
        assert ob.last_grad_norm.tobytes() == total.tobytes()
        for q, k in zip(b, kept):
            np.testing.assert_array_equal(q.grad, k)  # the fused step only reads the gradients
        for p, q in zip(a, b):
            assert p.data.tobytes() == q.data.tobytes(), f"step {t}"
            for key, v in oa.state[p].items():
                assert np.asarray(v).tobytes() == np.asarray(ob.state[q][key]).tobytes(), key


@pytest.mark.parametrize("cls,kw", STEP_CASES)
def test_skip_if_nonfinite_leaves_everything_bit_identical(cls, kw):
    ps, opt = _build(cls, kw, np.float32)
    for p in ps:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    before = ([p.data.copy() for p in ps], opt.state_dict())
    for bad in (np.nan, np.inf):
        ps[1].grad = np.full(ps[1].shape, bad, np.float32)
        opt.step(skip_if_nonfinite=True, max_grad_norm=1.0)
        assert not np.isfinite(opt.last_grad_norm)
        for p, d in zip(ps, before[0]):
            assert p.data.tobytes() == d.tobytes()
        after = opt.state_dict()
        for i, st in before[1]["state"].items():
            for k, v in st.items():
                assert np.asarray(after["state"][i][k]).tobytes() == np.asarray(v).tobytes()
    ps[1].grad = np.ones(ps[1].shape, np.float32)
    opt.step(skip_if_nonfinite=True)  # finite: a normal step
    assert np.isfinite(opt.last_grad_norm)
    assert any(p.data.tobytes() != d.tobytes() for p, d in zip(ps, before[0]))


@pytest.mark.parametrize("n", [10_000, 2_000_000])
def test_clipped_step_allocates_nothing_per_element(n):
    """The fused clip + step's extra memory does not grow with the number of elements
    (NumPy reports its allocations to tracemalloc; the kernels allocate none)."""
    import tracemalloc

    p = fo.Parameter(np.zeros(n, np.float32))
    p.grad = np.full(n, 10.0, np.float32)
    opt = fo.optim.Adam([p], lr=1e-3)
    opt.step()  # state allocated here, not counted below
    tracemalloc.start()
    try:
        opt.step(max_grad_norm=1.0)
        fo.nn.utils.clip_grad_norm_([p], 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
