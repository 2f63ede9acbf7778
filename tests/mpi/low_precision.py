"""The MPI wrappers with float16/bfloat16 parameters.

ZeroRedundancyOptimizer with float16/bfloat16 parameters, ``state_dtype`` and
``master_weights``, against the unsharded optimizer given the same averaged float32 gradients:
parameters bit for bit after 20 steps (the bfloat16 view of ``'remainder'`` and its low bits,
the 8-bit codes and absmax of ``state_dtype='int8'``, the float32 masters and the Kahan
buffers too, through the consolidated state), the state dict's round trip through a new
sharded optimizer, through ``fastopt.save``/``fastopt.load`` and from the shards' checkpoint
into the unsharded optimizer, and the refusals
(``'stochastic'``; ``'int8'`` with ``partition='flat'``).

DistributedOptimizer over float16 and bfloat16 param groups (gradients set, and added by a
backward into the buckets): bit for bit the unsharded optimizer given the averaged float32
gradients, with and without ``deterministic``; ``compression`` runs and keeps the ranks
equal; ``broadcast_parameters`` copies rank 0's 16-bit arrays.

Gradients are small multiples of 2**-7 (exact in bfloat16 and float16, and their sum exact in
float32 in any order); some ranks hand them over in the parameter's dtype, some in float32."""

from __future__ import annotations

import sys
import tempfile

import ml_dtypes
import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ZeroRedundancyOptimizer, broadcast_parameters

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
BF16, F16, F32 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32)
STEPS = 20
# (64, 80): over the 4096 elements below which 8-bit state stays float32, cut over ranks by 'flat'
SHAPES = [(64, 80), (7, 5), (13,), (3, 3, 3), (1,)]


def gradients(step, dtypes):
    """Every rank's gradients (rank r in the parameter's dtype when r is even, else float32)
    and their float32 average as the sharded optimizer computes it."""
    rng = np.random.default_rng(100 + step)
    per_rank = [[(rng.integers(-64, 65, s) * 2.0**-7).astype(d if r % 2 == 0 else F32) for s, d in zip(SHAPES, dtypes)]
                for r in range(world)]
    mean = []
    for k in range(len(SHAPES)):
        total = np.zeros(SHAPES[k], F32)
        for g in per_rank:
            total = total + g[k].astype(F32)
        mean.append(total / F32.type(world))
    return per_rank[rank], mean


def start(dtypes):
    init = np.random.default_rng(7)
    return [init.standard_normal(s).astype(d) for s, d in zip(SHAPES, dtypes)]


def groups(params, options):
    """Two param groups: the first two tensors with ``options[0]``, the rest with ``options[1]``."""
    return [dict(options[0], params=params[:2]), dict(options[1], params=params[2:])]


def equal(a, b, where):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)), f"{where}: differs"


def same_state(full, want, where):
    assert full["param_groups"] == want["param_groups"], f"{where}: {full['param_groups']} != {want['param_groups']}"
    assert sorted(full["state"]) == sorted(want["state"]), where
    for k, entry in want["state"].items():
        assert list(full["state"][k]) == list(entry), f"{where}: state[{k}] keys {list(full['state'][k])}"
        for key, v in entry.items():
            if isinstance(v, np.ndarray):
                equal(full["state"][k][key], v, f"{where}: state[{k}][{key!r}]")
            else:
                assert full["state"][k][key] == v, f"{where}: state[{k}][{key!r}]"


def set_grad(p, g):
    p.grad = g


def train(steps, dtypes, wrapped, ours, plain, ref, give=set_grad):
    """``steps`` steps of the MPI wrapper ``wrapped`` over ``ours``, each rank ``give``-ing its
    own gradients, and of the unsharded ``plain`` over ``ref`` with their float32 average."""
    for step in steps:
        mine, mean = gradients(step, dtypes)
        wrapped.zero_grad()
        for p, g in zip(ours, mine):
            give(p, g)
        wrapped.step()
        for p, g in zip(ref, mean):
            p.grad = g
        plain.step()


def run(cls, dtypes, options, partition, view, kw):
    where = f"{cls.__name__} {[str(d) for d in dtypes]} {options} {kw} partition={partition} bucket_view={view}"
    first = start(dtypes)
    ours = [fo.Parameter(a.copy()) for a in first]
    ref = [fo.Parameter(a.copy()) for a in first]
    zero = ZeroRedundancyOptimizer(groups(ours, options), cls, partition=partition,
                                   parameters_as_bucket_view=view, **kw)
    plain = cls(groups(ref, options), **kw)
    train(range(STEPS), dtypes, zero, ours, plain, ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        equal(a.data, b.data, f"{where}: params[{i}]")
    want = plain.state_dict()
    full = zero.consolidate_state_dict(to=world - 1)
    if rank == world - 1:
        same_state(full, want, where)
    else:
        assert full is None
    # The full state into a new sharded optimizer (re-sharded), a shard through save/load:
    # both continue as the unsharded optimizer does.
    again = [fo.Parameter(p.data.copy()) for p in ours]
    resumed = ZeroRedundancyOptimizer(groups(again, options), cls, partition=partition, **kw)
    resumed.load_state_dict(comm.bcast(full, root=world - 1))
    folder = comm.bcast(tempfile.mkdtemp() if rank == 0 else None)
    fo.save({"opt": zero.state_dict()}, folder, comm=comm)
    zero.load_state_dict(fo.load(folder, comm=comm)["opt"])
    # (without a communicator: the whole state from the shards, into the unsharded optimizer)
    alone = [fo.Parameter(p.data.copy()) for p in ours]
    single = cls(groups(alone, options), **kw)
    single.load_state_dict(fo.load(folder)["opt"])
    more = range(STEPS, STEPS + 5)
    train(more, dtypes, zero, ours, plain, ref)
    train(more, dtypes, resumed, again, single, alone)
    for i, (a, b, c, d) in enumerate(zip(ours, again, ref, alone)):
        equal(a.data, c.data, f"{where}: after save/load, params[{i}]")
        equal(b.data, c.data, f"{where}: after loading the full state, params[{i}]")
        equal(d.data, c.data, f"{where}: the unsharded optimizer from the shards' checkpoint, params[{i}]")
    full = zero.consolidate_state_dict(to=0)
    if rank == 0:
        same_state(full, plain.state_dict(), f"{where} (resumed)")


H, B = [F16] * len(SHAPES), [BF16] * len(SHAPES)
MIXED = [F32, F32, BF16, BF16, BF16]  # (a float32 group and a bfloat16 group)
NONE: list[dict] = [{}, {}]
CASES = [
    (fo.optim.Adam, B, NONE, dict(lr=1e-2)),  # torch's default: state in bfloat16
    (fo.optim.AdamW, H, [{}, {"weight_decay": 0.1}], dict(lr=1e-2)),
    (fo.optim.SGD, H, NONE, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fo.optim.Adam, B, NONE, dict(lr=1e-2, state_dtype="float32")),
    (fo.optim.RMSprop, H, [{"state_dtype": "float32"}, {}], dict(lr=1e-3, centered=True)),
    (fo.optim.Adam, B, NONE, dict(lr=1e-3, master_weights="kahan")),
    (fo.optim.AdamW, B, NONE, dict(lr=1e-3, master_weights="remainder")),
    (fo.optim.SGD, H, NONE, dict(lr=0.01, momentum=0.9, master_weights="float32")),
    (fo.optim.Adam, MIXED, [{}, {"master_weights": "kahan", "state_dtype": "float32"}], dict(lr=1e-3)),
]
INT8 = [(fo.optim.AdamW, B, NONE, dict(lr=1e-3, state_dtype="int8")),
        (fo.optim.Lion, [F32] * len(SHAPES), NONE, dict(lr=1e-4, state_dtype="int8"))]

count = 0
for cls, dtypes, options, kw in CASES:
    for partition in ("flat", "greedy"):
        run(cls, dtypes, options, partition, partition == "flat", kw)
        count += 1
for cls, dtypes, options, kw in INT8:
    for view in (False, True):
        run(cls, dtypes, options, "greedy", view, kw)
        count += 1


def refused(error, text, *args, **kw):
    try:
        ZeroRedundancyOptimizer(*args, **kw)
    except error as e:
        assert text in str(e), f"{text!r} not in {e}"
    else:
        raise AssertionError(f"no {error.__name__}: {kw}")


arrays = [np.zeros(4096, BF16), np.zeros(3, BF16)]
refused(ValueError, "master_weights='stochastic' (param_groups[0]) cannot be sharded", [a.copy() for a in arrays],
        fo.optim.Adam, master_weights="stochastic")
refused(ValueError, "use partition='greedy'", [a.copy() for a in arrays], fo.optim.Adam, state_dtype="int8")
bad = fo.Parameter(np.zeros(3, BF16))
zero = ZeroRedundancyOptimizer([bad], fo.optim.Adam)
try:
    zero.step(grads=[np.zeros(3, np.float64)])
except TypeError as e:
    assert "grads[0] has dtype float64 but params[0] has dtype bfloat16 (or float32" in str(e), e
else:
    raise AssertionError("a float64 gradient for a bfloat16 parameter was taken")
equal(bad.data, np.zeros(3, BF16), "the parameter after the refused step")

# -- the DistributedOptimizer ---------------------------------------------------------------
def add_as_backward(p, g):
    """As a backward adds into the bucket view (float32 for a 16-bit parameter), then the hook."""
    assert p.grad.dtype == F32
    p.grad += g
    p._grad_accumulated()


MIX = [BF16, BF16, F16, F16, F16]  # (one param group per dtype)
for deterministic in (False, True):
    for via_hook in (False, True):
        first = start(MIX)
        ours = [fo.Parameter(a.copy()) for a in first]
        ref = [fo.Parameter(a.copy()) for a in first]
        ddp = DistributedOptimizer(fo.optim.AdamW(groups(ours, [{}, {"lr": 1e-3}]), lr=1e-2),
                                   deterministic=deterministic)
        plain = fo.optim.AdamW(groups(ref, [{}, {"lr": 1e-3}]), lr=1e-2)
        train(range(STEPS), MIX, ddp, ours, plain, ref, add_as_backward if via_hook else set_grad)
        for i, (a, b) in enumerate(zip(ours, ref)):
            equal(a.data, b.data, f"DistributedOptimizer deterministic={deterministic} hook={via_hook}: params[{i}]")
        count += 1
for compression in ("float16", "bfloat16"):
    ps = [fo.Parameter(a.copy()) for a in start(MIX)]
    ddp = DistributedOptimizer(fo.optim.SGD(groups(ps, NONE), lr=0.1), compression=compression)
    for step in range(5):
        for p, g in zip(ps, gradients(step, MIX)[0]):
            p.grad = g
        ddp.step()
    for i, p in enumerate(ps):
        equal(p.data, comm.bcast(p.data, root=0), f"compression={compression}: params[{i}] differ across ranks")
mine = [np.full(4, rank + 1, BF16), np.full((2, 3), -rank - 0.5, F16)]
broadcast_parameters(mine)
equal(mine[0], np.full(4, 1, BF16), "broadcast bfloat16")
equal(mine[1], np.full((2, 3), -0.5, F16), "broadcast float16")
print(f"rank {rank}: OK ({count} runs)", flush=True)
sys.stdout.flush()
