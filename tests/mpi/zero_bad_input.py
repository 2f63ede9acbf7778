"""ZeroRedundancyOptimizer and sharded checkpoints given bad input: a clear error on every rank
(no rank left waiting in a collective), and nothing changed: parameters, state and files.
``python zero_bad_input.py FOLDER`` on 2 ranks."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import ZeroRedundancyOptimizer

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
FOLDER = sys.argv[1]


def raises(kind, text, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except kind as e:
        assert text in str(e), f"{text!r} not in {str(e)!r}"
        return e
    raise AssertionError(f"no {kind.__name__} ({text})")


def params():
    rng = np.random.default_rng(0)
    return [fo.Parameter(rng.standard_normal(s)) for s in [(5, 3), (8,), (2, 2)]]


# -- construction -----------------------------------------------------------------------------
raises(TypeError, "optimizer_class must be a fastopt optimizer class", ZeroRedundancyOptimizer, params(), "Adam")
raises(TypeError, "optimizer_class must be a fastopt optimizer class", ZeroRedundancyOptimizer, params(), fo.optim.Adam(params()))
raises(ValueError, "partition must be one of", ZeroRedundancyOptimizer, params(), fo.optim.Adam, partition="round")
raises(TypeError, "parameters_as_bucket_view must be a bool", ZeroRedundancyOptimizer, params(), fo.optim.Adam,
       parameters_as_bucket_view=1)
raises(TypeError, "comm must be an mpi4py", ZeroRedundancyOptimizer, params(), fo.optim.Adam, comm="world")
raises(ValueError, "Invalid learning rate", ZeroRedundancyOptimizer, params(), fo.optim.Adam, lr=-1)
for cls in (fo.optim.Prodigy, fo.optim.LBFGS):
    raises(TypeError, "cannot shard", ZeroRedundancyOptimizer, params(), cls)
raises(ValueError, "use partition='greedy'", ZeroRedundancyOptimizer, params(), fo.optim.Lamb)
raises(ValueError, "use partition='greedy'", ZeroRedundancyOptimizer, params(), fo.optim.Adam, cautious=True)
raises(ValueError, "master_weights='stochastic' (param_groups[0]) cannot be sharded", ZeroRedundancyOptimizer,
       [np.zeros(4, np.float16)], fo.optim.Adam, master_weights="stochastic")
raises(ValueError, "state_dtype='int8' (param_groups[0]) quantizes each tensor in blocks", ZeroRedundancyOptimizer,
       [np.zeros(4, np.float32)], fo.optim.Adam, state_dtype="int8")
raises(ValueError, "master_weights must be", ZeroRedundancyOptimizer, [np.zeros(4, np.float16)], fo.optim.Adam,
       master_weights="half")
raises(ValueError, "not C-contiguous", ZeroRedundancyOptimizer, [np.zeros((4, 4))[:, ::2]], fo.optim.Adam)
mine = [np.zeros(3), np.zeros(4 if rank == 0 else 5)]
raises(ValueError, "the parameters differ across ranks: rank 1's 1th", ZeroRedundancyOptimizer, mine, fo.optim.SGD, lr=0.1)

# -- steps: one rank's bad gradients stop every rank, nothing written -------------------------
ps = params()
zero = ZeroRedundancyOptimizer(ps, fo.optim.Adam, lr=0.1)
before = [p.data.copy() for p in ps]
good = [np.ones(p.shape) for p in ps]
bad = list(good)
if rank == 1:
    bad[1] = np.ones(9)
e = raises(ValueError, "", zero.step, grads=bad)
assert ("grads[1] has shape (9,)" in str(e)) if rank == 1 else ("rank 1 was given bad gradients" in str(e)), str(e)
bad = list(good)
if rank == 0:
    bad[2] = np.ones((2, 2), np.float32)
e = raises((TypeError, ValueError), "", zero.step, grads=bad)
assert ("dtype float32" in str(e)) if rank == 0 else ("rank 0 was given bad gradients" in str(e)), str(e)
raises(ValueError, "grads has 2 entries", zero.step, grads=good[:2])
raises(ValueError, "norm_type must be > 0 or inf", zero.step, grads=good, max_grad_norm=1.0, norm_type=0)
raises(ValueError, "max_grad_norm must be >= 0", zero.step, grads=good, max_grad_norm=-1.0)
zero.param_groups[0]["lr"] = "0.1"  # (a bad option set by hand: every rank's check refuses it)
raises(TypeError, "lr must be a real number", zero.step, grads=good)
zero.param_groups[0]["lr"] = 0.1
assert all(np.array_equal(p.data, b) for p, b in zip(ps, before)) and not zero.optim.state
zero.step(grads=good)  # (still usable)
raises(ValueError, "to must be a rank", zero.consolidate_state_dict, to=world)

# -- state dicts ------------------------------------------------------------------------------
shard = zero.state_dict()
snapshot = [{k: np.copy(v) for k, v in entry.items()} for entry in zero.optim.state.values()]


def unchanged():
    now = [{k: np.copy(v) for k, v in entry.items()} for entry in zero.optim.state.values()]
    assert len(now) == len(snapshot) and all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
                                             for a, b in zip(now, snapshot))


other = dict(shard, zero=dict(shard["zero"], world_size=3))
raises(ValueError, "shard of a run on 3 ranks, but this optimizer runs on 2: load the checkpoint with fastopt.load",
       zero.load_state_dict, other)
for crafted in (dict(world_size=10**9), dict(shapes=[[5, 3], [-8], [2, 2]]), dict(dtypes=["|O", "<f8", "<f8"]),
                dict(partition="mine")):
    raises(ValueError, "not a valid shard manifest", zero.load_state_dict, dict(shard, zero=dict(shard["zero"], **crafted)))
other = dict(shard, zero=dict(shard["zero"], rank=1 - rank))
raises(ValueError, f"is rank {1 - rank}'s shard, but this is rank {rank}", zero.load_state_dict, other)
other = dict(shard, zero=dict(shard["zero"], shapes=[[5, 3], [8], [4]]))
raises(ValueError, "a shard of another model or layout", zero.load_state_dict, other)
other = dict(shard, zero=dict(shard["zero"], optimizer="AdamW"))
raises(ValueError, "holds AdamW's state", zero.load_state_dict, other)
full = zero.consolidate_state_dict(to=0)
full = comm.bcast(full, root=0)
wrong = {"state": {0: dict(full["state"][0], exp_avg=np.zeros((3, 5)))}, "param_groups": full["param_groups"]}
raises(ValueError, "has shape (3, 5) but its parameter has shape (5, 3)", zero.load_state_dict, wrong)
cast = {"state": {0: dict(full["state"][0], exp_avg=full["state"][0]["exp_avg"].astype(np.float32))},
        "param_groups": full["param_groups"]}
raises(ValueError, "dtype float32", zero.load_state_dict, cast, strict=True)  # (cast without strict)
named = {"state": {}, "param_groups": [dict(full["param_groups"][0], param_names=["a", "b", "c"])]}
raises(ValueError, "only one side names its parameters", zero.load_state_dict, named, strict=True)
wrong = {"state": {7: full["state"][0]}, "param_groups": full["param_groups"]}
raises(ValueError, "parameter 7", zero.load_state_dict, wrong)
wrong = {"state": full["state"], "param_groups": full["param_groups"] * 2}
raises(ValueError, "different number of parameter groups", zero.load_state_dict, wrong)
wrong = {"state": full["state"], "param_groups": [dict(full["param_groups"][0], lr=-1.0)]}
raises(ValueError, "Invalid learning rate", zero.load_state_dict, wrong)
unchanged()

# -- checkpoint files -------------------------------------------------------------------------
a, b = os.path.join(FOLDER, "a"), os.path.join(FOLDER, "b")
fo.save({"opt": zero.state_dict(), "tag": "a"}, a, comm=comm)
zero.step(grads=good)
fo.save({"opt": zero.state_dict(), "tag": "b"}, b, comm=comm)
comm.Barrier()
sub = {}
for name in (a, b):
    sub[name] = next(d for d in os.listdir(name) if d.startswith("save-"))
file1 = "rank-00001-of-00002.fastopt"
if rank == 0:  # a shard of the other save put in place of rank 1's
    shutil.copy(os.path.join(b, sub[b], file1), os.path.join(a, sub[a], file1))
comm.Barrier()
raises(ValueError, "a shard of another save or run", fo.load, a, comm=comm)
raises(ValueError, "a shard of another save or run", fo.load, a)  # (one process: reads every file)
if rank == 0:  # a truncated shard
    path = os.path.join(b, sub[b], file1)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
comm.Barrier()
raises(ValueError, "truncated or replaced", fo.load, b, comm=comm)
if rank == 0:
    os.remove(os.path.join(b, sub[b], file1))
comm.Barrier()
raises(ValueError, "is missing", fo.load, b, comm=comm)
c = os.path.join(FOLDER, "c")  # a manifest whose list of shards was edited
fo.save({"opt": zero.state_dict()}, c, comm=comm)
if rank == 0:
    manifest = fo.load(os.path.join(c, "manifest.fastopt"))
    manifest["shards"][0]["layout"]["shapes"][0] = [3, 5]
    fo.save(manifest, os.path.join(c, "manifest.fastopt"))
comm.Barrier()
raises(ValueError, "holds other optimizer shards than the manifest lists", fo.load, c, comm=comm)
print(f"rank {rank}: OK", flush=True)
