"""Neural-network helpers (so far: gradient clipping in ``fastopt.nn.utils``)."""

from . import utils

__all__ = ["utils"]
