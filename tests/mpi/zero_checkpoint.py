"""Sharded checkpoints across world sizes. ``python zero_checkpoint.py PHASE FOLDER``:

- ``save`` (any N ranks): 40 steps of two ZeroRedundancyOptimizers (AdamW 'flat' over a
  model whose backward fills the flat buffers, Lamb 'greedy' over plain arrays); a checkpoint
  at step 20; rank 0 keeps the uninterrupted result at 40 in FOLDER/expected.fastopt.
- ``resume`` (any M ranks): loads the checkpoint with fastopt.load(FOLDER, comm=...),
  continues to 40: bit for bit the uninterrupted run.
- ``single`` (one process, no MPI communicator): fastopt.load(FOLDER) gives the full state;
  the unsharded optimizers continue to 40: bit for bit the same.
- ``crash`` (N ranks): a second save in which rank 1 dies while writing its file.
- ``verify`` (one process): after the crash, the first checkpoint still loads and verifies.

Every rank is given the same gradients, small multiples of 2**-7: N copies sum and divide
exactly, so the averaged gradient is the same on any world size and the runs compare bit for
bit."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

import fastopt as fo
from fastopt.distributed import ZeroRedundancyOptimizer

PHASE, FOLDER = sys.argv[1], sys.argv[2]
CKPT = os.path.join(FOLDER, "ckpt")
SHAPES = [(9, 4), (4,), (4, 3), (3,)]
LAMB = [(10,), (3, 5), (7,)]


def init(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def grads(shapes, step):
    """The averaged gradient at ``step``: every rank is given it (an exact average on any
    world size: N copies of a multiple of 2**-7 sum and divide exactly)."""
    rng = np.random.default_rng(900 + step)
    return [rng.integers(-64, 65, s) * 2.0**-7 for s in shapes]


def make(comm, model_arrays, lamb_arrays):
    params = [fo.Parameter(a) for a in model_arrays]
    opt = ZeroRedundancyOptimizer([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}],
                                  fo.optim.AdamW, comm=comm, lr=1e-2, amsgrad=True)
    lamb = ZeroRedundancyOptimizer(lamb_arrays, fo.optim.Lamb, comm=comm, partition="greedy", lr=1e-2)
    return params, opt, lamb


def train(params, opt, lamb, lamb_arrays, steps):
    for step in steps:
        opt.zero_grad()
        for p, g in zip(params, grads(SHAPES, step)):
            p.grad[...] = g  # (into the flat buffer, as a backward does) ...
            p._grad_accumulated()  # ... and the hook a backward calls
        opt.step()
        lamb.step(grads=grads(LAMB, step + 1000))


def state_of(params, opt, lamb, lamb_arrays, step):
    return {"model": [p.data for p in params], "lamb_params": list(lamb_arrays), "opt": opt.state_dict(),
            "lamb": lamb.state_dict(), "step": step}


if PHASE in ("save", "crash", "resume"):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.rank

if PHASE == "save":
    lamb_arrays = init(LAMB, 2)
    params, opt, lamb = make(comm, init(SHAPES, 1), lamb_arrays)
    train(params, opt, lamb, lamb_arrays, range(20))
    fo.save(state_of(params, opt, lamb, lamb_arrays, 20), CKPT, comm=comm)
    train(params, opt, lamb, lamb_arrays, range(20, 40))
    if rank == 0:
        fo.save({"model": [p.data for p in params], "lamb_params": lamb_arrays}, os.path.join(FOLDER, "expected.fastopt"))
    full = opt.consolidate_state_dict()
    if rank == 0:
        assert full["state"][0]["exp_avg"].shape == SHAPES[0]

elif PHASE == "resume":
    ck = fo.load(CKPT, comm=comm)
    assert ck["step"] == 20 and ck["opt"]["zero"]["world_size"] == comm.size and ck["opt"]["zero"]["rank"] == rank
    lamb_arrays = ck["lamb_params"]
    params, opt, lamb = make(comm, ck["model"], lamb_arrays)
    opt.load_state_dict(ck["opt"])
    lamb.load_state_dict(ck["lamb"])
    train(params, opt, lamb, lamb_arrays, range(20, 40))
    want = fo.load(os.path.join(FOLDER, "expected.fastopt"))
    for i, (p, w) in enumerate(zip(params, want["model"])):
        assert np.array_equal(p.data, w), f"model params[{i}] differs by {np.max(np.abs(p.data - w))}"
    for i, (a, w) in enumerate(zip(lamb_arrays, want["lamb_params"])):
        assert np.array_equal(a, w), f"Lamb params[{i}] differs by {np.max(np.abs(a - w))}"

elif PHASE in ("single", "verify"):
    ck = fo.load(CKPT)  # (no communicator: the full states, torch's layout)
    assert "zero" not in ck["opt"] and ck["opt"]["state"][0]["exp_avg"].shape == SHAPES[0]
    params = [fo.Parameter(a) for a in ck["model"]]
    opt = fo.optim.AdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=1e-2, amsgrad=True)
    opt.load_state_dict(ck["opt"])
    lamb_arrays = ck["lamb_params"]
    lamb = fo.optim.Lamb(lamb_arrays, lr=1e-2)
    lamb.load_state_dict(ck["lamb"])
    if PHASE == "single":
        for step in range(20, 40):
            for p, g in zip(params, grads(SHAPES, step)):
                p.grad = g
            opt.step()
            lamb.step(grads=grads(LAMB, step + 1000))
        want = fo.load(os.path.join(FOLDER, "expected.fastopt"))
        for i, (p, w) in enumerate(zip(params, want["model"])):
            assert np.array_equal(p.data, w), f"model params[{i}] differs by {np.max(np.abs(p.data - w))}"
        for i, (a, w) in enumerate(zip(lamb_arrays, want["lamb_params"])):
            assert np.array_equal(a, w), f"Lamb params[{i}] differs by {np.max(np.abs(a - w))}"
    else:
        assert ck["step"] == 20

elif PHASE == "crash":
    ck = fo.load(CKPT, comm=comm)
    lamb_arrays = ck["lamb_params"]
    params, opt, lamb = make(comm, ck["model"], lamb_arrays)
    opt.load_state_dict(ck["opt"])
    lamb.load_state_dict(ck["lamb"])
    train(params, opt, lamb, lamb_arrays, range(20, 25))
    if rank == 1:
        import fastopt.checkpoint as checkpoint

        def die(fd):  # (the file is written but not yet renamed into place)
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.os.fsync = die
    fo.save(state_of(params, opt, lamb, lamb_arrays, 25), CKPT, comm=comm)
    raise SystemExit("the save should not have completed")

print(f"rank {0 if PHASE in ('single', 'verify') else rank}: OK", flush=True)
