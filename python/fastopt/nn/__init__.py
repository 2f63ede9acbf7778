"""Neural-network kernels: ``functional`` (activations, softmax, losses, batch_norm),
``init`` (weight initializers) and ``utils`` (gradient clipping)."""

from . import functional, init, utils

__all__ = ["functional", "init", "utils"]
