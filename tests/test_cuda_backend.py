"""The GPU backend on machines without a GPU: its dispatch, its launch tables, its packaging,
its errors, and the arithmetic of its CUDA kernels.

The kernels' source also compiles as C++ for the host (``HostEmulation``: one thread per
block, NumPy arrays for device memory). Every optimizer here runs through the GPU code path
of ``Optimizer`` (state creation, tables, launches, counters on the device, clipping on the
device) with that emulation standing in for the GPU, and must give the CPU core's result bit
for bit at a SIMD level with FMA (the CUDA source fuses exactly where the core's ``madd`` does
and NVRTC runs with ``--fmad=false``), or within rounding at the baseline level. The same
comparison runs on a real GPU in ``benches/gpu_check.py``."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt as fo
from fastopt import backends
from fastopt.backends import cuda
from fastopt.optim import optimizer as optimizer_module

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                               reason="the host emulation of the CUDA kernels needs a C++ compiler")


@pytest.fixture(scope="module")
def emulation():
    return cuda.HostEmulation()


@pytest.fixture
def on_emulated_gpu(emulation, monkeypatch):
    """NumPy arrays take the GPU path of the optimizers, run by the host emulation."""
    monkeypatch.setattr(optimizer_module, "_on_device", lambda x: isinstance(x, np.ndarray))
    monkeypatch.setattr(cuda, "device", lambda x=None: emulation)
    return emulation


@pytest.fixture
def fma_level():
    """A SIMD level with FMA for the CPU core (the CUDA kernels fuse where it does), or None."""
    levels = fo._fastopt.available_simd_levels()
    before = fo._fastopt.simd_level()
    pick = next((lv for lv in ("avx512", "avx2", "neon") if lv in levels), None)
    if pick is not None:
        fo._fastopt.set_simd_level(pick)
    yield pick
    fo._fastopt.set_simd_level(before)


# Sizes not multiples of 4, one crossing a chunk boundary, one empty (its step counters still count).
SIZES = [1, 7, 301, cuda.CHUNK + 5, 0, 3]

# (the configurations benches/gpu_check.py runs on a GPU: one list)
_spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parent.parent / "benches" /
                                               "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)
CONFIGS = gpu_check.CONFIGS


def _data(dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for n in SIZES]


def _run(name, kw, dtype, steps=12, max_grad_norm=None):
    params = [fo.Parameter(a) for a in _data(dtype, 0)]
    opt = getattr(fo.optim, name)(params, **kw)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step(max_grad_norm=max_grad_norm)
    return [p.data for p in params], opt


def _states(opt):
    return {(i, k): np.asarray(v) for i, (p, st) in enumerate(opt.state.items()) for k, v in st.items()
            if isinstance(v, np.ndarray)}


def _compare(got, want, exact, dtype):
    for a, b in zip(got, want):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_cuda_kernels_give_the_cpu_core_result(name, kw, dtype, fma_level, request):
    want, ref = _run(name, kw, dtype)
    request.getfixturevalue("on_emulated_gpu")
    got, opt = _run(name, kw, dtype)
    assert "_device_launchers" in opt.__dict__  # (it did take the GPU path)
    _compare(got, want, fma_level is not None, dtype)
    sa, sb = _states(opt), _states(ref)
    assert sa.keys() == sb.keys()
    _compare([sa[k] for k in sorted(sa)], [sb[k] for k in sorted(sa)], fma_level is not None, dtype)


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_clipping_inside_the_step_on_the_device(dtype, fma_level, request):
    want, ref = _run("Adam", dict(lr=1e-2), dtype, steps=5, max_grad_norm=3.0)
    request.getfixturevalue("on_emulated_gpu")
    got, opt = _run("Adam", dict(lr=1e-2), dtype, steps=5, max_grad_norm=3.0)
    # (the norm sums in another order than the CPU core's: the coefficient may differ in its
    # last place, and the parameters by as much)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)
    assert np.asarray(opt.last_grad_norm).dtype == dtype
    np.testing.assert_allclose(np.asarray(opt.last_grad_norm), ref.last_grad_norm, rtol=1e-6 if dtype == np.float32 else 1e-13)


@needs_cxx
def test_skip_if_nonfinite_skips_on_the_device(on_emulated_gpu):
    p = fo.Parameter(np.ones(10, np.float32))
    opt = fo.optim.Adam([p], lr=0.1)
    p.grad = np.ones(10, np.float32)
    opt.step(skip_if_nonfinite=True)
    after_one = p.data.copy()
    p.grad = np.full(10, np.nan, np.float32)
    opt.step(skip_if_nonfinite=True)
    np.testing.assert_array_equal(p.data, after_one)
    assert float(opt.state[p]["step"]) == 1.0  # (the counters did not move either)


@needs_cxx
def test_the_tables_are_built_once_patched_for_new_gradients_and_rebuilt_for_new_arrays(on_emulated_gpu):
    params = [fo.Parameter(np.zeros(n, np.float32)) for n in (5, 70_000)]
    opt = fo.optim.Adam(params, lr=0.1)
    grads = [np.ones(5, np.float32), np.ones(70_000, np.float32)]
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    launcher = opt._device_launchers[id(opt.param_groups[0])][1]
    plan = launcher._plans[0][0]
    opt.step()  # same arrays: same tables
    assert launcher._plans[0][0] is plan
    assert plan.nblocks == 1 + 2 and plan.table["n"].tolist() == [5, 70_000]
    table = plan.table
    params[1].grad = np.ones(70_000, np.float32)  # a new gradient array: its pointer patched in
    opt.step()
    assert launcher._plans[0][0] is plan and plan.table is not table
    assert plan.table["grad"][1] == params[1].grad.ctypes.data
    params[0].data = np.zeros(5, np.float32)  # a new parameter array: new tables
    opt.step()
    assert launcher._plans[0][0] is not plan
    assert launcher._plans[0][0].table["param"][0] == params[0].data.ctypes.data


@needs_cxx
def test_bad_input_raises_before_anything_moves(on_emulated_gpu):
    p = fo.Parameter(np.ones(6, np.float32))
    q = np.ones(6, np.float32)
    opt = fo.optim.Adam([p, q], lr=0.1)
    before = (p.data.copy(), q.copy())
    with pytest.raises(ValueError, match=r"grads\[1\] has 3 elements"):
        opt.step(grads=[np.ones(6, np.float32), np.ones(3, np.float32)])
    with pytest.raises(ValueError, match=r"share memory"):
        opt.step(grads=[q, np.ones(6, np.float32)])  # a gradient that is another parameter
    g0, g1 = np.ones(6, np.float32), np.ones(6, np.float32)
    opt.step(grads=[g0, g1])  # (tables built; state made)
    before = (p.data.copy(), q.copy())
    with pytest.raises(ValueError, match=r"share memory"):
        opt.step(grads=[g0, opt.state[p]["exp_avg"]])  # only a gradient changed: patched path, same check
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float64"):
        opt.step(grads=[np.ones(6), g1])
    with pytest.raises(NotImplementedError, match="cautious"):
        fo.optim.Adam([np.ones(3, np.float32)], cautious=True).step(grads=[np.ones(3, np.float32)])
    with pytest.raises(NotImplementedError, match="no CUDA kernel"):
        fo.optim.Lamb([np.ones(3, np.float32)]).step(grads=[np.ones(3, np.float32)])
    np.testing.assert_array_equal(p.data, before[0])
    np.testing.assert_array_equal(q, before[1])


def test_block_table_maps_each_block_to_a_tensor_and_chunk():
    t = cuda.block_table([0, 1, cuda.CHUNK, cuda.CHUNK + 1, 0, 2 * cuda.CHUNK])
    assert t.dtype == np.int32 and t.flags.c_contiguous
    # (an empty tensor has one block: it advances the tensor's step counters)
    assert t.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1], [4, 0], [5, 0], [5, 1]]
    assert cuda.block_table([]).shape == (0, 2)


def test_the_tensor_table_matches_the_kernels_struct():
    src = cuda.source()
    assert "struct TensorRef" in src
    # param, grad, 4 states, 3 counters, n, flags: eleven 8-byte fields, as the struct
    assert cuda.TENSOR_DTYPE.itemsize == 8 * (2 + cuda.MAX_STATES + cuda.MAX_COUNTERS + 2)
    assert f"#define FO_MAX_STATES {cuda.MAX_STATES}" in src and f"#define FO_MAX_COUNTERS {cuda.MAX_COUNTERS}" in src
    assert f"#define FO_CHUNK {cuda.CHUNK}" in src


def test_every_kernel_rule_is_an_engine_rule_with_the_same_names():
    for rule, names in cuda.RULES.items():
        assert rule in fo._fastopt.rule_names()
        hyper = {k: (1.0 if k in ("rho",) else 0.5) for k in names}
        fo._fastopt.Rule(rule, **hyper)  # every name the kernel reads is one the core takes, and all of them
        assert f"FO_RULE({rule}," in cuda.source()


def test_numpy_arrays_never_reach_the_gpu_backend():
    assert not backends.is_device_array(np.zeros(3))
    assert backends.namespace(np.zeros(3)) is np
    assert backends.device_of(np.zeros(3)) is None
    p = fo.Parameter(np.zeros(3, np.float32))
    opt = fo.optim.SGD([p], lr=0.1)
    p.grad = np.ones(3, np.float32)
    opt.step()
    assert "_device_launchers" not in opt.__dict__
    assert "cupy" not in sys.modules or True  # (importing fastopt never imports CuPy)


def test_importing_fastopt_does_not_import_cupy():
    import subprocess
    out = subprocess.run([sys.executable, "-c", "import sys, numpy as np, fastopt as fo, fastopt.backends.cuda; "
                          "fo.optim.Adam([np.zeros(2)]).step(grads=[np.ones(2)]); print('cupy' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_without_cupy_the_error_says_what_to_install():
    assert not cuda.available()
    with pytest.raises(ImportError, match=r"fastopt\[cuda\]"):
        cuda.require()


def test_without_a_gpu_the_error_says_so(monkeypatch):
    class Runtime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = type(sys)("cupy")
    fake.cuda = type(sys)("cupy.cuda")
    fake.cuda.runtime = Runtime
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert not cuda.available()
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        cuda.require()


def test_the_kernel_source_ships_with_the_package():
    src = cuda.source()
    assert "fo_step_" in src and "FO_RULE(adam, Adam)" in src
    assert src.count("FO_RULE(") - 1 == len(cuda.RULES)  # (one line defines the macro)


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_activation_kernels_match_the_cpu_core(dtype, emulation):
    """Forward within 8 ulp of the CPU core's (each is within a few ulp of the exact value),
    gelu looser (see below); backward within 8 ulp, or 8 ulp of the largest gradient where the
    derivative crosses zero (both lose digits there)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(100_001) * 4).astype(dtype)
    x[:4] = [0.0, -0.0, 30.0, -30.0]
    g = rng.standard_normal(x.size).astype(dtype)
    eps = np.finfo(dtype).eps
    for name, (a, b, c) in [("relu", (0, 0, 0)), ("leaky_relu", (0.1, 0, 0)), ("elu", (1.3, 1.1, 0.9)),
                            ("sigmoid", (0, 0, 0)), ("tanh", (0, 0, 0)), ("gelu", (0, 0, 0)),
                            ("gelu_tanh", (0, 0, 0)), ("silu", (0, 0, 0)), ("softplus", (2.0, 5.0, 0))]:
        want, got = np.empty_like(x), np.empty_like(x)
        fo._fastopt.act_forward(name, x, want, a, b, c)
        cuda.act_forward(name, x, got, a, b, c, dev=emulation)
        # (gelu's erfc amplifies the rounding of its argument by 2 z**2 for z = -x / sqrt(2):
        # the two libraries' gelu differ by up to a few hundred ulp where it is below 1e-6; the
        # CUDA one computes in double, within an ulp for float32)
        loose = name.startswith("gelu")
        np.testing.assert_allclose(got, want, rtol=(256 if loose else 8) * eps, atol=1e-30 if loose else 0.0,
                                   err_msg=name)
        saved = want if name in ("relu", "sigmoid", "tanh") else x
        bw, bg = np.empty_like(x), np.empty_like(x)
        fo._fastopt.act_backward(name, g, saved, bw, a, b, c)
        cuda.act_backward(name, g, saved, bg, a, b, c, dev=emulation)
        np.testing.assert_allclose(bg, bw, rtol=(256 if loose else 8) * eps, atol=8 * eps * float(np.abs(bw).max()),
                                   err_msg=name)


@needs_cxx
def test_clip_grad_norm_on_the_device_matches_the_cpu(emulation, monkeypatch):
    monkeypatch.setattr(cuda, "device", lambda x=None: emulation)
    rng = np.random.default_rng(4)
    for norm_type in (2.0, 1.0, float("inf"), 3.0):
        grads = [rng.standard_normal(n).astype(np.float32) for n in (3, cuda.CHUNK + 9, 100)]
        want_g = [g.copy() for g in grads]
        want = fo.nn.utils.get_total_norm(want_g, norm_type)
        fo.nn.utils.clip_grads_with_norm_(want_g, 1.0, want)
        got = cuda.clip_grad_norm_(grads, 1.0, norm_type)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)
        for a, b in zip(grads, want_g):
            np.testing.assert_allclose(a, b, rtol=1e-6)


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_softmax_cross_entropy_and_batch_norm_kernels_match_the_cpu_core(dtype, emulation):
    """The CUDA kernels behind ``fastopt.nn.functional`` (same signatures as the CPU core's),
    run by the host emulation, against the CPU core: sums in double on both sides, in other
    orders, so within a few ulp."""
    rng = np.random.default_rng(8)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    f = fo._fastopt
    x = rng.standard_normal((3, 7, 5)).astype(dtype) * 3
    g = rng.standard_normal(x.shape).astype(dtype)
    for log in (False, True):
        for axis in ((3, 7, 5), (1, 3, 35), (21, 5, 1)):
            want, got = np.empty_like(x), np.empty_like(x)
            f.softmax(x, want, *axis, log)
            cuda.softmax(x, got, *axis, log, dev=emulation)
            np.testing.assert_allclose(got, want, **tol)
            bw, bg = np.empty_like(x), np.empty_like(x)
            f.softmax_backward(g, want, bw, *axis, log)
            cuda.softmax_backward(g, want, bg, *axis, log, dev=emulation)
            np.testing.assert_allclose(bg, bw, **tol)
    logits = rng.standard_normal((40, 9)).astype(dtype) * 2
    target = rng.integers(0, 9, 40).astype(np.int64)
    target[3] = -100
    for smoothing in (0.0, 0.2):
        want, got = np.empty(40), np.empty(40)
        f.cross_entropy(logits, target, 9, smoothing, -100, want)
        cuda.cross_entropy(logits, target, 9, smoothing, -100, got, dev=emulation)
        # (float64 losses from exp in the logits' dtype: each library's float32 exp may round
        # differently in the last place)
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-13)
        scale = rng.random(40)
        bw, bg = np.empty_like(logits), np.empty_like(logits)
        f.cross_entropy_backward(logits, target, 9, smoothing, -100, scale, bw)
        cuda.cross_entropy_backward(logits, target, 9, smoothing, -100, scale, bg, dev=emulation)
        np.testing.assert_allclose(bg, bw, **tol)
    bad = target.copy()
    bad[0] = 9
    with pytest.raises(ValueError, match="not a class index"):
        cuda.cross_entropy(logits, bad, 9, 0.0, -100, np.empty(40), dev=emulation)
    n, c, l = 6, 4, 10
    xb = (rng.standard_normal((n, c, l)) * 2 + 1).astype(dtype)
    gb = rng.standard_normal(xb.shape).astype(dtype)
    w, b = rng.random(c).astype(dtype) + 0.5, rng.standard_normal(c).astype(dtype)
    m1, v1, m2, v2 = np.empty(c), np.empty(c), np.empty(c), np.empty(c)
    o1, o2 = np.empty_like(xb), np.empty_like(xb)
    f.bn_train_forward(xb, o1, n, c, l, w, b, 1e-5, m1, v1)
    cuda.bn_train_forward(xb, o2, n, c, l, w, b, 1e-5, m2, v2, dev=emulation)
    np.testing.assert_allclose(m2, m1, rtol=1e-13)
    np.testing.assert_allclose(v2, v1, rtol=1e-13)
    np.testing.assert_allclose(o2, o1, **tol)
    mean_t, inv_t = m1.astype(dtype), (1 / np.sqrt(v1 + 1e-5)).astype(dtype)
    s1, s2, s3, s4 = np.empty(c), np.empty(c), np.empty(c), np.empty(c)
    f.bn_train_backward(gb, xb, o1, n, c, l, mean_t, inv_t, w, s1, s2)
    cuda.bn_train_backward(gb, xb, o2, n, c, l, mean_t, inv_t, w, s3, s4, dev=emulation)
    stol = 1e-6 if dtype == np.float32 else 1e-12  # (x - mean rounded to the dtype, or not, before the sum)
    np.testing.assert_allclose(s3, s1, rtol=stol, atol=stol)
    np.testing.assert_allclose(s4, s2, rtol=stol, atol=stol)
    np.testing.assert_allclose(o2, o1, **tol)


@needs_cxx
@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=1e-2, amsgrad=True)), ("RMSprop", dict(lr=1e-2, centered=True)),
                                     ("SGD", dict(lr=0.1, momentum=0.9))])
def test_tensors_at_odd_offsets_take_the_element_path_with_the_same_result(name, kw, fma_level, emulation,
                                                                          monkeypatch):
    """Views that start at odd element offsets of one buffer (no 16-byte alignment: the
    kernels' element-by-element path) give the CPU core's result too."""
    spans = [(1, 5), (7, 301), (309, cuda.CHUNK + 3), (cuda.CHUNK + 313, 2)]
    total = spans[-1][0] + spans[-1][1] + 1
    rng = np.random.default_rng(11)
    flat0 = rng.standard_normal(total).astype(np.float32)
    grads = [rng.standard_normal(total).astype(np.float32) for _ in range(6)]

    def run():
        flat = flat0.copy()
        ps = [fo.Parameter(flat[o:o + n]) for o, n in spans]
        opt = getattr(fo.optim, name)(ps, **kw)
        for g in grads:
            for p, (o, n) in zip(ps, spans):
                p.grad = g[o:o + n]
            opt.step()
        return flat

    want = run()
    monkeypatch.setattr(optimizer_module, "_on_device", lambda x: isinstance(x, np.ndarray))
    monkeypatch.setattr(cuda, "device", lambda x=None: emulation)
    got = run()
    _compare([got], [want], fma_level is not None, np.float32)


@needs_cxx
def test_a_scheduler_changing_lr_every_step_reaches_the_kernels(fma_level, request):
    def run():
        params = [fo.Parameter(a) for a in _data(np.float32, 0)]
        opt = fo.optim.AdamW(params, lr=0.1)
        sched = fo.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
        rng = np.random.default_rng(1)
        for _ in range(9):
            for p in params:
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
            sched.step()
        return [p.data for p in params]

    want = run()
    request.getfixturevalue("on_emulated_gpu")
    _compare(run(), want, fma_level is not None, np.float32)


@needs_cxx
def test_the_fast_path_sees_every_change_that_matters(fma_level, request):
    """A device group whose arrays did not change is stepped without gathering them again;
    replacing a gradient or a parameter's data, changing an option, loading a state dict or
    adding a group takes the full path again. The whole sequence gives the CPU's result."""
    def run():
        rng = np.random.default_rng(5)
        params = [fo.Parameter(rng.standard_normal(n).astype(np.float32)) for n in (5, 300, cuda.CHUNK + 1)]
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt = fo.optim.Adam(params, lr=0.01)
        fast_steps = []
        inner = opt._device_fast_ok

        def counted(fast, group):
            ok = inner(fast, group)
            fast_steps.append(ok)
            return ok

        opt._device_fast_ok = counted
        seen = []
        for i in range(14):
            if i == 3:
                params[1].grad = rng.standard_normal(300).astype(np.float32)  # a new gradient array
            if i == 5:
                for p in params:  # in place: the same arrays (the fast path stays right)
                    np.multiply(p.grad, 0.5, out=p.grad)
            if i == 6:
                params[0].data = rng.standard_normal(5).astype(np.float32)  # a new parameter array
            if i == 8:
                opt.param_groups[0]["amsgrad"] = True  # another rule (a third buffer)
            if i == 10:
                opt.load_state_dict(opt.state_dict())  # new state arrays
            if i == 12:
                extra = fo.Parameter(np.ones(7, np.float32))
                extra.grad = np.full(7, 0.25, np.float32)
                params.append(extra)
                opt.add_param_group({"params": [extra], "lr": 0.1})
            opt.step()
            seen.append(np.concatenate([p.data for p in params]).copy())
        return seen, sum(fast_steps), fast_steps

    want, _, _ = run()
    request.getfixturevalue("on_emulated_gpu")
    got, fast, fast_list = run()
    # (steps 3, 5, 6, 8 and 12 find nothing changed; the new group's grad and state make the
    # last two take the full path: the checks are global, never too optimistic)
    assert fast >= 5, str(fast_list)
    for a, b in zip(got, want):
        _compare([a], [b], fma_level is not None, np.float32)


def test_an_array_on_another_gpu_is_refused():
    """Every array of a launch must be on its device's GPU (checked with the rest, before
    anything is written)."""
    from types import SimpleNamespace

    class Array:  # (stands in for a CuPy array: what the check reads of one)
        def __init__(self, gpu):
            self.dtype, self.size, self.device = np.dtype(np.float32), 4, SimpleNamespace(id=gpu)
            self.flags = SimpleNamespace(c_contiguous=True, writeable=True)

    dev = SimpleNamespace(xp=SimpleNamespace(ndarray=Array), id=0)
    cuda._check_array(dev, Array(0), "params[0]", np.dtype(np.float32), 4, True)
    with pytest.raises(ValueError, match=r"grads\[0\] is on GPU 1, but the group's parameters are on GPU 0"):
        cuda._check_array(dev, Array(1), "grads[0]", np.dtype(np.float32), 4, False)


@pytest.mark.parametrize("name", ["Adafactor", "Lamb", "LBFGS", "Muon", "Prodigy"])
def test_optimizers_without_cuda_kernels_refuse_gpu_parameters_when_given_them(name, monkeypatch):
    monkeypatch.setattr(optimizer_module, "is_device_array", lambda x: isinstance(x, np.ndarray))
    with pytest.raises(NotImplementedError, match=rf"params\[0\] is a CuPy array, and {name} has no CUDA kernels"):
        getattr(fo.optim, name)([np.zeros((3, 2), np.float32)])


@pytest.mark.parametrize("name,args", [("prelu", 2), ("prelu_backward", 3), ("mse_loss", 2), ("mse_loss_backward", 3),
                                       ("sync_batch_norm", 5), ("sync_batch_norm_backward", 5)])
def test_functions_without_cuda_kernels_refuse_gpu_arrays(name, args, monkeypatch):
    from fastopt.nn import functional as F

    monkeypatch.setattr(F, "is_device_array", lambda x: isinstance(x, np.ndarray))
    a = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match=f"{name} takes NumPy arrays: it has no CUDA kernel yet"):
        getattr(F, name)(*([a] * args))
