"""fastopt.save / fastopt.load: exact round trips, bit-exact resumption in a fresh process,
and refusal of truncated, corrupted and pickle files."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt as fo


def same(a, b):
    """Deep equality with bitwise arrays, NaN equal to NaN and container types kept."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert b.flags.writeable and b.flags.c_contiguous
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert a == b


def test_round_trip_of_every_supported_kind(tmp_path):
    obj = {
        "state": {0: {"step": np.array(7.0, np.float32), "exp_avg": np.arange(6.0).reshape(2, 3)}, 5: {}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 5], "names": ["a", "b"]}],
        "floats": [float("nan"), float("inf"), -0.0, 1e-310, 0.1],
        "ints": [0, -3, 2**70], "flags": [True, False, None],
        "arrays": [np.zeros((0, 3), np.float32), np.array([True, False]), np.arange(5, dtype=np.int64),
                   np.array(1.5, np.float64), np.ones((2, 2), ">f8"), np.array([1 + 2j]), np.arange(4, dtype=np.uint8)[::2]],
        "scalars": [np.float32(1.5), np.int64(-4), np.bool_(True)],
        1.5: "float key", None: "none key", "": "",
    }
    fo.save(obj, tmp_path / "c.fo")
    back = fo.load(tmp_path / "c.fo")
    expected = dict(obj)
    expected["arrays"] = [a.copy(order="C").astype(a.dtype.newbyteorder("=")) for a in obj["arrays"]]
    same(expected, back)


def test_unsupported_objects_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"obj\['opt'\]\['fn'\] is a function"):
        fo.save({"opt": {"fn": lambda x: x}}, tmp_path / "x.fo")
    with pytest.raises(TypeError, match="dtype object cannot be saved"):
        fo.save([np.array([object()])], tmp_path / "x.fo")
    assert not (tmp_path / "x.fo").exists()


def test_torch_tensors_are_stored_as_arrays(torch, tmp_path):
    fo.save({"t": torch.arange(3, dtype=torch.float32)}, tmp_path / "t.fo")
    same(fo.load(tmp_path / "t.fo"), {"t": np.arange(3, dtype=np.float32)})


def _write(tmp_path):
    path = tmp_path / "c.fo"
    fo.save({"w": np.arange(1000.0), "meta": {"epoch": 3}}, path)
    return path, path.read_bytes()


def test_truncated_file(tmp_path):
    path, data = _write(tmp_path)
    for cut in (len(data) - 1, len(data) // 2, 20, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid fastopt checkpoint"):
            fo.load(path)


def test_every_flipped_byte_region_is_detected(tmp_path):
    path, data = _write(tmp_path)
    for pos in (8, 20, len(data) // 2, len(data) - 40, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="not a valid fastopt checkpoint"):
            fo.load(path)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_files_are_refused_without_unpickling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.fo"
    path.write_bytes(pickle.dumps({"x": Boom()}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads was called"))
    with pytest.raises(ValueError, match="pickle"):
        fo.load(path)
    assert not (tmp_path / "pwned.txt").exists()
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="wrong magic"):
        fo.load(path)


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path, data = _write(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        fo.save({"w": np.zeros(10)}, path)
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.fo"]  # no temporary file left


RESUME = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import fastopt as fo

    def build():
        rng = np.random.default_rng(0)
        params = [fo.Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(64, 32), (32,), ()]]
        opt = fo.optim.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=0.01, amsgrad=True)
        sched = fo.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.02, 0.1], total_steps=40)
        return params, opt, sched

    def train(params, opt, sched, steps):
        for t in steps:
            rng = np.random.default_rng(1000 + t)
            for p in params:
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
            sched.step()

    def digest(params, opt):
        h = hashlib.sha256()
        for p in params:
            h.update(p.data.tobytes())
            for k, v in sorted(opt.state[p].items()):
                h.update(np.asarray(v).tobytes())
        return h.hexdigest()

    if __name__ == "__main__":
        mode, path = sys.argv[1], sys.argv[2]
        params, opt, sched = build()
        if mode == "save":
            train(params, opt, sched, range(15))
            fo.save({"params": [p.data for p in params], "opt": opt.state_dict(), "sched": sched.state_dict()}, path)
            train(params, opt, sched, range(15, 40))
        else:
            ck = fo.load(path)
            for p, a in zip(params, ck["params"]):
                p.data[...] = a
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            train(params, opt, sched, range(15, 40))
        print(digest(params, opt))
    """
)


def test_bit_exact_resume_in_a_fresh_process(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    ck = tmp_path / "ck.fo"
    run = lambda mode: subprocess.run([sys.executable, str(script), mode, str(ck)], capture_output=True, text=True,
                                      check=True).stdout.strip()
    uninterrupted = run("save")
    resumed = run("load")
    assert len(uninterrupted) == 64 and resumed == uninterrupted
