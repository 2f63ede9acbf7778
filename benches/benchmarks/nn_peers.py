"""The peers of fastopt.nn.functional in the benchmarks (they live in
:mod:`fastopt.bench.nn_peers`, so ``fastopt bench`` measures against the same code)."""

from fastopt.bench.nn_peers import *  # noqa: F401,F403
