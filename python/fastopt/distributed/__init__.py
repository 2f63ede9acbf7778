"""Data-parallel training across processes and machines on MPI (mpi4py).

Every rank holds the whole model and a shard of each global batch; the gradients are averaged
over the ranks before each optimizer step, so every rank takes the same step.
:class:`DistributedOptimizer` wraps any fastopt optimizer (Horovod's shape);
:func:`broadcast_parameters` and :func:`broadcast_optimizer_state` start every rank from the
same point. :class:`ZeroRedundancyOptimizer` (ZeRO stage 1) also splits the optimizer state
across the ranks, each holding 1/N of it; ``fastopt.save(obj, folder, comm=comm)`` writes a
checkpoint of such shards that ``fastopt.load(folder, comm=comm)`` reads back on any number
of ranks. mpi4py is imported only when one of them is used (``pip install 'fastopt[mpi]'``
installs mpi4py and MPICH from PyPI: no system MPI is needed).

Run a script on N ranks with ``mpiexec -n N python -m mpi4py train.py``: ``-m mpi4py`` turns
an unhandled exception on one rank into an abort of every rank, instead of a hang (or call
:func:`abort_on_exception` at the top of the script). Across machines, MPICH's
``mpiexec -hosts a,b -n 4 ...`` starts the ranks there. MPI cannot tell a rank that stalls
forever (a deadlock, a hung filesystem) from a slow one: bound the run with ``timeout`` (or
your scheduler's time limit).
"""

from __future__ import annotations

from ._optimizer import DistributedOptimizer, abort_on_exception, broadcast_optimizer_state, broadcast_parameters
from ._zero import ZeroRedundancyOptimizer

__all__ = ["DistributedOptimizer", "ZeroRedundancyOptimizer", "broadcast_parameters", "broadcast_optimizer_state",
           "abort_on_exception"]
