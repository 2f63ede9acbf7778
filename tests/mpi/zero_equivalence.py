"""ZeroRedundancyOptimizer against the unsharded optimizer given the same averaged gradients:
every optimizer configuration of the registry (L-BFGS and Prodigy are refused), float32 and
float64 parameters in two param groups with different options, partition 'flat' (where the
update is elementwise) and 'greedy', with and without bucket views: parameters bit for bit
after 50 steps, the consolidated state dict equal to the unsharded one (arrays bit for bit,
options, step counts) and loadable into torch.optim where torch has the optimizer.

The ranks' gradients are small multiples of 2**-7, so their sum is exact in any order and the
average is the same number however MPI associates the reduction."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import ZeroRedundancyOptimizer
from fastopt.optim import registry

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
STEPS = 50
VECTORS = [((7, 5), np.float32), ((13,), np.float32), ((3, 3, 3), np.float32), ((1,), np.float32),
           ((11,), np.float64), ((5, 4), np.float64), ((), np.float64)]
MATRICES = [((7, 5), np.float32), ((4, 9), np.float32), ((6, 6), np.float64), ((3, 8), np.float64)]
SPLIT = {id(VECTORS): 4, id(MATRICES): 2}  # the first group: float32, the second float64


def gradients(shapes, step):
    """Every rank's gradients at ``step`` (the same on every rank: all ranks' are computed),
    some parameters without one on every rank, one with a gradient on rank 0 only, and their
    average. Made once per list of shapes and step, for every run (read-only: a step that
    wrote into a gradient would fail instead of changing the next run's)."""
    key = (id(shapes), step)
    if key not in _MADE:
        per_rank = _gradients(shapes, step)
        mean = average(per_rank, shapes)
        for a in [*(g for gs in per_rank for g in gs), *mean]:
            if a is not None:
                a.flags.writeable = False
        _MADE[key] = per_rank, mean
    return _MADE[key]


_MADE: dict = {}


def _gradients(shapes, step):
    rng = np.random.default_rng(1000 + step)
    out = []
    for r in range(world):
        gs = [np.asarray(rng.integers(-64, 65, shape) * 2.0**-7, dtype) for shape, dtype in shapes]
        if step % 7 == 3:
            gs[1] = None  # (no rank has one: skipped, as by the unsharded optimizer)
        if step % 5 == 2 and r > 0:
            gs[0] = None  # (only rank 0 has one: the others' count as zeros)
        out.append(gs)
    return out


def average(per_rank, shapes):
    mean = []
    for k, (shape, dtype) in enumerate(shapes):
        got = [g[k] for g in per_rank if g[k] is not None]
        if not got:
            mean.append(None)
            continue
        total = np.zeros(shape, dtype)
        for g in got:
            total = total + g
        mean.append(np.asarray(total / dtype(world), dtype))
    return mean


def groups(params, shapes, lr2):
    cut = SPLIT[id(shapes)]
    return [{"params": params[:cut]}, {"params": params[cut:], "lr": lr2}]


def run(name, kw, partition, view):
    cls = getattr(fo.optim, name)
    shapes = MATRICES if registry.by_name(name).matrix else VECTORS
    init = np.random.default_rng(7)
    start = [np.asarray(init.standard_normal(shape), dtype) for shape, dtype in shapes]
    ours = [fo.Parameter(a.copy()) for a in start]
    ref = [fo.Parameter(a.copy()) for a in start]
    lr2 = registry.second_lr(cls, 0.5 * kw.get("lr", 1e-3))
    zero = ZeroRedundancyOptimizer(groups(ours, shapes, lr2), cls, partition=partition,
                                   parameters_as_bucket_view=view, **kw)
    plain = cls(groups(ref, shapes, lr2), **kw)
    for step in range(STEPS):
        per_rank, mean = gradients(shapes, step)
        zero.zero_grad()
        for p, g in zip(ours, per_rank[rank]):
            if g is not None:
                p.grad = g  # (copied into the flat buffer at the step)
        zero.step()
        for p, g in zip(ref, mean):
            p.grad = g
        plain.step()
    where = f"{name} {kw} partition={partition} bucket_view={view}"
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data, equal_nan=True), \
            f"{where}: params[{i}] differs by {np.max(np.abs(a.data - b.data))}"
    full = zero.consolidate_state_dict(to=world - 1)
    if rank != world - 1:
        assert full is None
        return
    want = plain.state_dict()
    assert full["param_groups"] == want["param_groups"], f"{where}: {full['param_groups']} != {want['param_groups']}"
    assert sorted(full["state"]) == sorted(want["state"]), where
    for k, entry in want["state"].items():
        assert list(full["state"][k]) == list(entry), f"{where}: state[{k}] keys {list(full['state'][k])}"
        for key, v in entry.items():
            got = full["state"][k][key]
            if isinstance(v, np.ndarray):
                assert got.shape == v.shape and got.dtype == v.dtype and np.array_equal(got, v, equal_nan=True), \
                    f"{where}: state[{k}][{key!r}]"
            else:
                assert got == v, f"{where}: state[{k}][{key!r}] {got!r} != {v!r}"
    again = cls(groups([fo.Parameter(a.copy()) for a in start], shapes, lr2), **kw)
    again.load_state_dict(full)  # (the unsharded optimizer takes it)
    spec = registry.by_name(name)
    if spec.torch:
        import inspect

        import torch

        if set(kw) - set(inspect.signature(getattr(torch.optim, spec.torch)).parameters):
            return  # (an option torch's optimizer does not have)

        tparams = [torch.from_numpy(a.copy()) for a in start]
        topt = getattr(torch.optim, spec.torch)(groups(tparams, shapes, lr2), **kw)
        topt.load_state_dict(fo.optim.to_torch_state_dict(full))
        for k, entry in want["state"].items():
            for key, v in entry.items():
                t = topt.state[tparams[k]][key]
                assert np.array_equal(t.numpy(), v, equal_nan=True), f"{where}: torch's state[{k}][{key!r}]"


count = 0
for name, kw in registry.configs(closure=True, matrix=True):
    cls = getattr(fo.optim, name)
    coupling = cls._couples or ("tensor" if kw.get("cautious") else None)
    if coupling == "all":
        continue
    for partition in (("flat", "greedy") if coupling is None else ("greedy",)):
        for view in (False, True):
            run(name, kw, partition, view)
            count += 1
assert count > 60, count
print(f"rank {rank}: OK ({count} runs)", flush=True)
