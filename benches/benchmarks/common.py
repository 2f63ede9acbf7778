"""Shared set-up for the optimizer benchmarks: sizes, thread counts, and the peers (which live
in :mod:`fastopt.bench.peers`, so ``fastopt bench`` measures against the same code)."""

from fastopt.bench.peers import *  # noqa: F401,F403
from fastopt.bench.peers import import_torch, interleaved, warm_up, problem, require_torch, set_threads, torch_optimizer  # noqa: F401

SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
THREADS = [1, 2]
