"""Shared pieces of the scripts pytest runs under mpiexec (tests/test_distributed.py)."""

from __future__ import annotations

import numpy as np

import fastopt as fo


def model(seed: int = 0):
    """A small float64 MLP, the same on every rank for a given seed."""
    rng = np.random.default_rng(seed)
    net = fo.nn.Sequential(fo.nn.Linear(5, 8, dtype=np.float64), fo.nn.Tanh(), fo.nn.Linear(8, 3, dtype=np.float64))
    for p in net.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.5
    return net


def batches(steps: int, size: int, seed: int = 1):
    """The global batches (inputs, targets), the same on every rank."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((size, 5)), rng.standard_normal((size, 3))) for _ in range(steps)]


def backward(net, x, t) -> None:
    """Gradients of the mean squared error over this batch (0.5 * mean over rows of |y - t|^2)."""
    y = net.forward(x)
    net.backward((y - t) / len(x))


def shard(x: np.ndarray, rank: int, world: int) -> np.ndarray:
    n = len(x) // world
    return x[rank * n:(rank + 1) * n]


def grads_of(net, x, t) -> list[np.ndarray]:
    """This batch's gradients, copied, in parameter order (and the grads cleared)."""
    for p in net.parameters():
        p.grad = None
    backward(net, x, t)
    out = [p.grad.copy() for p in net.parameters()]
    for p in net.parameters():
        p.grad = None
    return out
