"""Misuse, concurrency, interrupts and crafted files: no crash, no torn state, no silent wrong
answer. Each test here failed before the matching fix."""

from __future__ import annotations

import json
import os
import signal
import struct
import threading
import time
import hashlib
import warnings

import numpy as np
import pytest

import fastopt as fo
from fastopt import _fastopt, checkpoint
from fastopt.nn import functional as F

from conftest import run_python

TORCH_OPTIMIZERS = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]


# ----------------------------------------------------------------------------- crash and corruption


def test_absurd_bandwidth_sizes_are_exceptions_not_aborts():
    """Item 1: 2**40 elements aborted the process, 2**61 raised PanicException (BaseException)."""
    out = run_python(
        "import fastopt.bench as b, fastopt._fastopt as f\n"
        "for call in (lambda: b.bandwidth(elements=2**40), lambda: f.bandwidth_probe(2**61, 1),\n"
        "             lambda: f.bandwidth_probe(2**62 - 1, 1)):\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, str(e)[:80])\n"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ValueError elements=1099511627776") and all(l.startswith("MemoryError") for l in lines[1:])


def test_sizes_that_wrap_around_are_refused():
    """Item 2: (1 + 2**63) * 2 * 8 wrapped to 16, passed the length check, then aborted the
    process from a pool thread."""
    out = run_python(
        "import numpy as np, fastopt._fastopt as f\n"
        "x = np.zeros(16, np.float32)\n"
        "m, v = np.zeros(2), np.zeros(2)\n"
        "try:\n"
        "    f.bn_stats(x, 1 + 2**63, 2, 8, m, v)\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ValueError input has 16 elements")


def test_one_optimizer_stepped_from_two_threads_is_serialised():
    """Item 3: steps were lost (49-53 of 60) and elements updated different numbers of times."""
    fo.set_num_threads(2)
    w = np.zeros(300_000, np.float32)
    g = np.ones_like(w)
    opt = fo.optim.Adam([w], lr=1e-3)
    steps = 60

    def work():
        for _ in range(steps):
            opt.step(grads=[g])

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = np.zeros_like(w)
    ref_opt = fo.optim.Adam([ref], lr=1e-3)
    for _ in range(2 * steps):
        ref_opt.step(grads=[g])
    assert float(opt.state[w]["step"]) == 2 * steps
    np.testing.assert_array_equal(w, ref)


def test_two_optimizers_in_two_threads_match_sequential():
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(200_000).astype(np.float32) for _ in range(2)]
    gs = [rng.standard_normal(200_000).astype(np.float32) for _ in range(2)]
    seq = [w.copy() for w in ws]
    for w, g in zip(seq, gs):
        o = fo.optim.Adam([w], lr=1e-2)
        for _ in range(30):
            o.step(grads=[g])
    par = [w.copy() for w in ws]
    opts = [fo.optim.Adam([w], lr=1e-2) for w in par]
    threads = [threading.Thread(target=lambda o=o, g=g: [o.step(grads=[g]) for _ in range(30)]) for o, g in zip(opts, gs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(par, seq):
        np.testing.assert_array_equal(a, b)


def test_the_same_memory_in_two_groups_is_refused():
    """Item 4: two Parameters over one array, or overlapping views, in two groups were stepped
    twice."""
    a = np.zeros(10)
    p1, p2 = fo.Parameter(a), fo.Parameter(a)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] and param_groups\[1\]\['params'\]\[0\] share memory"):
        fo.optim.SGD([{"params": [p1]}, {"params": [p2]}], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        fo.optim.SGD([{"params": [a[:6]]}, {"params": [a[4:]]}], lr=0.1)
    opt = fo.optim.SGD([p1], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [p2]})
    fo.optim.SGD([{"params": [a[:5]]}, {"params": [a[5:]]}], lr=0.1)  # adjacent, not overlapping: fine
    # an alias made after construction is caught at the step, before anything is written
    b, c = np.ones(4), np.ones(4)
    q1, q2 = fo.Parameter(b), fo.Parameter(c)
    opt = fo.optim.SGD([{"params": [q1]}, {"params": [q2]}], lr=0.1)
    q2.data = b
    q1.grad = q2.grad = np.ones(4)
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    np.testing.assert_array_equal(b, 1.0)


def test_adafactor_step_is_all_or_nothing():
    """Item 5: bad state on the second parameter was found after the first was updated."""
    w1, w2 = fo.Parameter(np.ones((3, 4), np.float32)), fo.Parameter(np.ones((2, 5), np.float32))
    opt = fo.optim.Adafactor([w1, w2], lr=0.1)
    w1.grad = np.ones((3, 4), np.float32)
    w2.grad = np.ones((2, 5), np.float32)
    opt.step()
    before = (w1.data.copy(), w2.data.copy(), float(opt.state[w1]["step"]))
    opt.state[w2]["row_var"] = np.zeros((7, 1), np.float32)
    with pytest.raises(ValueError, match=r"row_vars\[1\] has shape \(7, 1\) but params\[1\] \(shape \(2, 5\)\) needs shape \(2, 1\)"):
        opt.step()
    opt.state[w2]["row_var"] = np.zeros((2, 1), np.float32)
    del opt.state[w2]["col_var"]
    with pytest.raises(ValueError, match=r"params\[1\] has no 'col_var'"):
        opt.step()
    np.testing.assert_array_equal(w1.data, before[0])
    np.testing.assert_array_equal(w2.data, before[1])
    assert float(opt.state[w1]["step"]) == before[2]


class _InterruptAfterKernel:
    """A stand-in for the compiled module whose kernels raise KeyboardInterrupt as they
    return, as a Ctrl-C that arrived during the kernel is raised when it returns (or, with
    ``before``, as they are called): ``times`` writing calls after the first ``skip``."""

    def __init__(self, before: bool = False, times: int = 1, skip: int = 0) -> None:
        self.before, self.left, self.skip = before, times, skip

    def __getattr__(self, name):
        real = getattr(_fastopt, name)

        def call(*args):
            check_only = args[7] if name == "step" else False  # (step's 8th argument)
            if check_only is True or self.left <= 0:
                return real(*args)
            if self.skip > 0:
                self.skip -= 1
                return real(*args)
            self.left -= 1
            if self.before:
                raise KeyboardInterrupt
            real(*args)
            raise KeyboardInterrupt

        return call


@pytest.mark.parametrize("before", [False, True], ids=["after-kernel", "before-kernel"])
@pytest.mark.parametrize("name,kw", [("Adam", {}), ("SGD", {"momentum": 0.9, "dampening": 0.5}), ("RMSprop", {})])
def test_an_interrupt_never_leaves_a_half_committed_step(monkeypatch, name, kw, before):
    """Item 6: on a first step the parameters were updated but the state dropped; across
    groups, groups ended at different step counts."""
    ws = [np.linspace(-1, 1, 8), np.linspace(1, 2, 8)]
    ref = [w.copy() for w in ws]
    g = np.full(8, 0.5)
    opt = getattr(fo.optim, name)([{"params": [ws[0]]}, {"params": [ws[1]]}], lr=0.1, **kw)
    ref_opt = getattr(fo.optim, name)([{"params": [ref[0]]}, {"params": [ref[1]]}], lr=0.1, **kw)
    fake = _InterruptAfterKernel(before)  # the first kernel call of the step is interrupted
    monkeypatch.setattr(fo.optim._engine, "_kernels", fake)
    with pytest.raises(KeyboardInterrupt):
        opt.step(grads=[g, g])
    monkeypatch.undo()
    ref_opt.step(grads=[g, g])
    for w, r in zip(ws, ref):
        np.testing.assert_array_equal(w, r)  # both groups stepped exactly once
    sd, ref_sd = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert set(sd) == set(ref_sd) == {0, 1}
    for k in sd:
        for key in ref_sd[k]:
            np.testing.assert_array_equal(sd[k][key], ref_sd[k][key])
    # and the next step continues exactly
    opt.step(grads=[g, g])
    ref_opt.step(grads=[g, g])
    for w, r in zip(ws, ref):
        np.testing.assert_array_equal(w, r)


def test_batch_norm_checks_every_output_before_writing():
    """Item 7: normalized x in place and then failed on a read-only counter; an int8 counter
    overflowed silently."""
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    keep = x.copy()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    nbt = np.zeros(1, np.int64)
    nbt.flags.writeable = False
    with pytest.raises(ValueError, match="num_batches_tracked is read-only"):
        F.batch_norm(x, rm, rv, training=True, out=x, num_batches_tracked=nbt)
    np.testing.assert_array_equal(x, keep)
    full = np.array([127], np.int8)
    with pytest.raises(ValueError, match="num_batches_tracked .int8. is at its largest value 127"):
        F.batch_norm(x, rm, rv, training=True, momentum=None, out=x, num_batches_tracked=full)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(rm, 0)


def test_module_load_state_dict_converts_everything_before_writing():
    """Item 8: a bad late value failed after earlier keys were overwritten; None loaded as NaN."""
    model = fo.nn.Sequential(fo.nn.Linear(2, 3), fo.nn.Linear(3, 1))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    sd = {k: np.full_like(v, 7.0) for k, v in before.items()}
    sd["1.bias"] = np.array([None], dtype=object)
    with pytest.raises(TypeError, match=r"state_dict\['1.bias'\] has dtype object"):
        model.load_state_dict(sd)
    sd["1.bias"] = np.array(["x"])
    with pytest.raises(TypeError, match="1.bias"):
        model.load_state_dict(sd)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    del sd["1.bias"]
    with pytest.raises(ValueError, match="missing keys"):  # also a KeyError
        model.load_state_dict(sd)


# ----------------------------------------------------------------------------- checkpoints


def test_save_keeps_the_mode_follows_links_and_cleans_stale_temporaries(tmp_path):
    """Item 9."""
    path = tmp_path / "ck.fo"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    fo.save({"a": 1}, path)
    assert os.stat(path).st_mode & 0o777 == 0o644
    old = os.umask(0o027)
    try:
        fo.save({"a": 1}, tmp_path / "new.fo")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new.fo").st_mode & 0o777 == 0o640
    target = tmp_path / "real.fo"
    fo.save({"v": 1}, target)
    link = tmp_path / "link.fo"
    link.symlink_to(target)
    fo.save({"v": 2}, link)
    assert link.is_symlink() and fo.load(target) == {"v": 2}
    stale = tmp_path / ".ck.fo.abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".ck.fo.efgh.tmp"
    fresh.write_bytes(b"y")
    fo.save({"a": 2}, path)
    assert not stale.exists() and fresh.exists()


def _nested(depth: int):
    v: list = [1]
    for _ in range(depth):
        v = [v]
    return v


def _write_raw(path, tree, data: bytes = b"") -> None:
    """A checkpoint with any header, its checksum valid (what an attacker can make)."""
    header = json.dumps({"format": "fastopt-checkpoint", "version": 1, "tree": tree}).encode()
    head = checkpoint.MAGIC + struct.pack("<Q", len(header)) + header
    head += b"\0" * (-len(head) % 64)
    body = head + data
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("tree,why", [
    ({"a": {"dtype": "<f4", "shape": [-1], "offset": 0}}, "shape"),
    ({"a": {"dtype": "<f4", "shape": "12", "offset": 0}}, "shape"),
    ({"a": {"dtype": "<f4", "shape": [2], "offset": 0.0}}, "offset"),
    ({"a": {"dtype": "<f4", "shape": [2], "offset": 3}}, "offset"),
    ({"a": {"dtype": "<f4", "shape": [2 ** 40], "offset": 0}}, "past the end"),
    ({"a": {"dtype": "O", "shape": [1], "offset": 0}}, "dtype"),
    ({"a": {"dtype": 5, "shape": [1], "offset": 0}}, "dtype"),
    ({"a": {"dtype": "<f4", "shape": [1]}}, "exactly dtype, shape and offset"),
    ({"d": [[[1, 2], 3]]}, "dict key"),
    ({"d": [1, 2]}, "pairs"),
    ({"f": 1.5}, "string"),
    ({"f": "zz"}, "hexadecimal"),
    ({"t": 3}, "list"),
    ({"s": {"dtype": "<f8", "hex": "00"}}, "needs 8 bytes"),
    ({"x": 1}, "unknown node tag"),
    (_nested(120), "nested"),
])
def test_crafted_checkpoints_are_value_errors(tmp_path, tree, why):
    """Item 10: lying headers gave IndexError/KeyError/TypeError/RecursionError or wrong data."""
    path = tmp_path / "c.fo"
    _write_raw(path, tree, b"\0" * 64)
    with pytest.raises(ValueError, match=why):
        fo.load(path)


def test_aliased_regions_and_non_files_are_refused(tmp_path):
    path = tmp_path / "alias.fo"
    arrays = [{"a": {"dtype": "<f8", "shape": [128], "offset": 0}} for _ in range(1000)]
    _write_raw(path, arrays, b"\0" * 1024)  # 1 KB of data standing for 1000 KB
    with pytest.raises(ValueError, match="overlap"):
        fo.load(path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        fo.load(fifo)  # used to block forever
    with pytest.raises(ValueError, match="not a regular file"):
        fo.load(tmp_path)  # a directory


def test_load_needs_about_the_arrays_memory_only(tmp_path):
    """Item 10: loading held about 3x the file in memory (a copy of the bytes to check them)."""
    import tracemalloc

    a = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    fo.save({"a": a}, tmp_path / "big.fo")
    tracemalloc.start()
    try:
        out = fo.load(tmp_path / "big.fo")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out["a"], a)
    assert peak < a.nbytes + 4 * 2**20, peak


def test_fuzzed_headers_load_correctly_or_raise_value_error(tmp_path):
    """Item 10: thousands of mutations of a real header; each is a ValueError or a load."""
    rng = np.random.default_rng(1234)
    obj = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": 3, "lr": 0.5, "t": (1, "a", None),
           "s": np.float64(2.5), "nested": [{"k": [1, 2]}, True]}
    fo.save(obj, tmp_path / "orig.fo")
    raw = (tmp_path / "orig.fo").read_bytes()
    hlen = struct.unpack_from("<Q", raw, 8)[0]
    header = raw[16 : 16 + hlen]
    base = 16 + hlen + (-(16 + hlen) % 64)
    data = raw[base:-32]
    values = [-1, 0, 1, 2, 3, 64, 2**31, 2**63, -2**63, 1.5, "1", "<f4", "<f8", "|b1", "O", None, True, [], {}, [1], {"f": "0x1p0"}]
    outcomes = {"ok": 0, "ValueError": 0}
    path = tmp_path / "m.fo"
    for _ in range(2000):
        text = header.decode()
        kind = rng.integers(0, 4)
        if kind == 0:  # replace a number
            nums = [m for m in __import__("re").finditer(r"-?\d+", text)]
            m = nums[rng.integers(len(nums))]
            text = text[: m.start()] + json.dumps(values[rng.integers(len(values))]) + text[m.end():]
        elif kind == 1:  # replace a string
            strs = [m for m in __import__("re").finditer(r'"[^"]*"', text)]
            m = strs[rng.integers(len(strs))]
            text = text[: m.start()] + json.dumps(values[rng.integers(len(values))]) + text[m.end():]
        elif kind == 2:  # flip a byte
            i = rng.integers(len(text))
            text = text[:i] + chr(rng.integers(32, 127)) + text[i + 1:]
        else:  # drop a slice
            i = rng.integers(len(text))
            text = text[:i] + text[i + rng.integers(1, 8):]
        h = text.encode()
        head = checkpoint.MAGIC + struct.pack("<Q", len(h)) + h
        head += b"\0" * (-len(head) % 64)
        body = head + data
        path.write_bytes(body + hashlib.sha256(body).digest())
        try:
            fo.load(path)
            outcomes["ok"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
    assert outcomes["ok"] + outcomes["ValueError"] == 2000 and outcomes["ValueError"] > 1000, outcomes


def test_save_refuses_a_cycle(tmp_path):
    d: dict = {"a": 1}
    d["self"] = d
    with pytest.raises(TypeError, match="contains itself"):
        fo.save(d, tmp_path / "c.fo")
    assert not (tmp_path / "c.fo").exists()


# ----------------------------------------------------------------------------- wrong results


SPECIAL = np.array([np.nan, np.inf, -np.inf, 1e-42, -1e-42, 1e38, -1e38, 0.5, -0.25, 0.0], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_non_finite_and_extreme_gradients_follow_torch(torch, name, dtype):
    """Item 11: Rprop with a NaN or inf gradient element kept that parameter NaN forever; torch
    (sign(NaN) = 0) keeps it finite. Every optimizer torch has, NaN, +-inf, denormal, +-1e38."""
    lr = 1.0 if name == "Adadelta" else 1e-2
    p0 = np.linspace(-1, 1, SPECIAL.size).astype(dtype)
    grads = [SPECIAL.astype(dtype), np.full(SPECIAL.size, 0.5, dtype), SPECIAL[::-1].astype(dtype), np.full(SPECIAL.size, -0.5, dtype)]
    w = p0.copy()
    opt = getattr(fo.optim, name)([w], lr=lr)
    t = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    ref = getattr(torch.optim, name)([t], lr=lr, foreach=False)
    with np.errstate(all="ignore"):
        for g in grads:
            opt.step(grads=[g])
            t.grad = torch.from_numpy(g.copy())
            ref.step()
    expected = t.detach().numpy()
    same = (w == expected) | (np.isnan(w) & np.isnan(expected))
    close = np.isclose(w, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0)
    assert np.all(same | close), (w, expected)
    if name == "Rprop":
        assert np.isfinite(w).all()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adamax", "RAdam", "AdaBound", "Lamb", "AdaBelief", "NAdam"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_loaded_step_must_be_a_finite_count(name, bad):
    """Item 12: a negative or NaN step gave inf/NaN parameters."""
    w = np.ones(4)
    opt = getattr(fo.optim, name)([w])
    opt.step(grads=[np.ones(4)])
    sd = opt.state_dict()
    sd["state"][0]["step"] = np.array(bad, np.float32)
    before = w.copy()
    with pytest.raises(ValueError, match=r"state\[0\]\['step'\] must be a finite number >= 0"):
        opt.load_state_dict(sd)
    opt.step(grads=[np.ones(4)])
    assert np.isfinite(w).all() and not np.array_equal(w, before)


def test_unchecked_options_are_refused():
    """Item 13."""
    w = fo.Parameter(np.ones(3))
    w.grad = np.ones(3)
    opt = fo.optim.SGD([w], lr=0.1)
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="max_grad_norm must be >= 0"):
            opt.step(max_grad_norm=bad)
    np.testing.assert_array_equal(w.data, 1.0)
    with pytest.raises(ValueError, match="dampening"):
        fo.optim.SGD([np.ones(2)], lr=0.1, dampening=float("nan"))
    for sizes in ((-1, -2), (float("nan"), 1.0), (1.0, 0.5)):
        with pytest.raises(ValueError, match="step_sizes"):
            fo.optim.Rprop([np.ones(2)], step_sizes=sizes)
    with pytest.raises(ValueError, match="t0"):
        fo.optim.ASGD([np.ones(2)], t0=float("nan"))
    with pytest.raises(TypeError, match="t0 must be a real number"):
        fo.optim.ASGD([np.ones(2)], t0="x")


def test_clip_grad_value_with_a_negative_value_is_torchs(torch):
    g = np.array([-3.0, -0.5, 0.0, 0.5, 3.0, np.nan])
    p = fo.Parameter(np.zeros(6))
    p.grad = g.copy()
    fo.nn.utils.clip_grad_value_([p], -1.0)
    t = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_value_([t], -1.0)
    np.testing.assert_array_equal(p.grad, t.grad.numpy())


def test_thread_count_is_capped_and_bad_environment_warns():
    """Item 14: set_num_threads(100_000) did not return; garbage in the variables was ignored
    silently."""
    limit = fo.max_num_threads()
    assert limit == 4 * _fastopt.default_num_threads()
    with pytest.raises(ValueError, match=f"at most {limit} .4 per core"):
        fo.set_num_threads(limit + 1)
    with pytest.raises(ValueError):
        _fastopt.set_num_threads(100_000)
    out = run_python("import warnings\nwarnings.simplefilter('always')\nimport fastopt\nprint(fastopt.get_num_threads())",
                      env={"FASTOPT_NUM_THREADS": "lots", "FASTOPT_SIMD": "sse9"})
    assert out.returncode == 0
    assert "FASTOPT_NUM_THREADS='lots' is not a whole number" in out.stderr
    assert "FASTOPT_SIMD='sse9' is not one of this CPU's levels" in out.stderr
    clean = run_python("import warnings\nwarnings.simplefilter('error')\nimport fastopt",
                        env={"FASTOPT_NUM_THREADS": "1", "FASTOPT_SIMD": "scalar"})
    assert clean.returncode == 0, clean.stderr


def test_resizing_the_pool_releases_its_threads():
    def count():
        return len(os.listdir(f"/proc/{os.getpid()}/task"))

    before_n = fo.get_num_threads()
    fo.set_num_threads(1)
    base = count()
    try:
        for n in (fo.max_num_threads(), 1, fo.max_num_threads(), 1):
            fo.set_num_threads(n)
            w = np.zeros(200_000, np.float32)
            fo.optim.SGD([w], lr=0.1).step(grads=[np.ones_like(w)])
        deadline = time.time() + 5
        while count() > base and time.time() < deadline:
            time.sleep(0.05)
        assert count() <= base
    finally:
        fo.set_num_threads(before_n)


def test_lr_at_is_closed_form_or_refuses():
    """Item 15: lr_at looped once per cycle (restarts, T_mult=1) or step (MultiplicativeLR)."""
    # In a child process with a deadline: the old loop over 10**15 / 7 cycles never returned.
    out = run_python(
        "import numpy as np, fastopt as fo\n"
        "opt = fo.optim.SGD([np.zeros(1)], lr=1.0)\n"
        "sched = fo.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7)\n"
        "print(repr(sched.lr_at(10**15)[0]))\n",
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(0.5 * (1 + np.cos(np.pi * (10**15 % 7) / 7)))
    mult = fo.optim.lr_scheduler.MultiplicativeLR(fo.optim.SGD([np.zeros(1)], lr=1.0), lambda e: 0.99)
    with pytest.raises(ValueError, match="no closed form"):
        mult.lr_at(10**12)
    assert mult.lr_at(3)[0] == pytest.approx(0.99**3)


# ----------------------------------------------------------------------------- messages


def test_errors_name_the_argument():
    """Items 17 and 18."""
    w = np.ones(2)
    opt = fo.optim.Adam([w])
    opt.step(grads=[np.ones(2)])
    with pytest.raises(TypeError, match=r"state_dict\['state'\] must be a dict"):
        opt.load_state_dict({"state": [], "param_groups": opt.state_dict()["param_groups"]})
    with pytest.raises(TypeError, match=r"state_dict\['param_groups'\]\[0\] must be a dict"):
        opt.load_state_dict({"state": {}, "param_groups": [None]})
    with pytest.raises(ValueError, match="history_size must be at least 1"):
        fo.optim.LBFGS([fo.Parameter(np.ones(2))], history_size=0)
    with pytest.raises(ValueError, match="lr is too large"):
        fo.optim.Adam([np.ones(2)], lr=10**400)
    x, t = np.zeros((2, 3), np.float32), np.array([0, 1])
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        F.cross_entropy(x, t, ignore_index=2**70)
    for bad in ("a", 1.5, True):
        with pytest.raises(TypeError, match="ignore_index must be an int"):
            F.cross_entropy(x, t, ignore_index=bad)
    with pytest.raises(ValueError, match="target holds"):
        F.cross_entropy(x, np.array([0, 2**64 - 100], np.uint64))
    with pytest.raises(TypeError, match=r"etas\[0\] must be a real number"):
        fo.optim.Rprop([np.ones(2)], etas=("a", "b"))
    with pytest.raises(TypeError, match="gamma must be a real number"):
        fo.optim.AdaBound([np.ones(2)], gamma=None)
    for cls in (fo.optim.Adam, fo.optim.SGD, fo.optim.Lion, fo.optim.Adafactor):
        opt = cls([np.ones(3)], lr=0.1)
        opt.param_groups[0]["lr"] = "0.1"  # set after construction: found at the step, by name
        with pytest.raises(TypeError, match="lr must be a real number, got str"):
            opt.step(grads=[np.ones(3)])
    v = np.ones(2)
    o = fo.optim.SGD([v], lr=np.array([0.5]))
    o.step(grads=[np.ones(2)])
    np.testing.assert_array_equal(v, 0.5)


def test_torch_tensors_that_need_grad_or_are_bfloat16_load(torch):
    t = torch.nn.Parameter(torch.ones(3))
    ref = torch.optim.Adam([t], lr=0.1)
    t.grad = torch.ones(3)
    ref.step()
    sd = ref.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].clone().requires_grad_(True)
    sd["state"][0]["exp_avg_sq"] = sd["state"][0]["exp_avg_sq"].to(torch.bfloat16)
    opt = fo.optim.Adam([np.ones(3, np.float32)], lr=0.1)
    opt.load_state_dict(sd)
    assert opt.state_dict()["state"][0]["exp_avg_sq"].dtype == np.float32
    model = fo.nn.Linear(3, 1)
    model.load_state_dict({"weight": torch.ones(1, 3, requires_grad=True), "bias": torch.zeros(1, dtype=torch.bfloat16)})
    np.testing.assert_array_equal(model.weight.data, 1.0)


def test_zero_grad_checks_every_gradient_first():
    ps = [fo.Parameter(np.ones(2)) for _ in range(2)]
    ps[0].grad = np.ones(2)
    g = np.ones(2)
    g.flags.writeable = False
    ps[1].grad = g
    opt = fo.optim.SGD(ps, lr=0.1)
    with pytest.raises(ValueError, match=r"\['params'\]\[1\].grad is read-only"):
        opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(ps[0].grad, 1.0)
    with pytest.raises(TypeError, match="set_to_none must be a bool"):
        opt.zero_grad(set_to_none="no")
