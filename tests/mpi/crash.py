"""Rank 1 raises while rank 0 waits in a collective: under ``python -m mpi4py`` every rank
ends with a non-zero exit, not a hang."""

from mpi4py import MPI

import numpy as np

comm = MPI.COMM_WORLD
if comm.rank == 1:
    raise RuntimeError("rank 1 fails on purpose")
comm.Allreduce(MPI.IN_PLACE, np.zeros(4), op=MPI.SUM)
print("rank 0: unreachable", flush=True)
