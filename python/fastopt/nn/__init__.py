"""Neural-network building blocks: ``functional`` (activations, softmax, losses, batch_norm
kernels), ``init`` (weight initializers), ``utils`` (gradient clipping) and modules with a
forward/backward API (``Linear``, activations, ``BatchNorm1d``/``2d``, ``Dropout``,
``Flatten``, ``Sequential``, ``CrossEntropyLoss``, ``MSELoss``; see :mod:`fastopt.nn.modules`)."""

from . import functional, init, utils
from .modules import (
    ELU, GELU, SELU, BatchNorm1d, BatchNorm2d, CrossEntropyLoss, Dropout, Flatten, LeakyReLU, Linear, SyncBatchNorm,
    Module, MSELoss, PReLU, ReLU, Sequential, Sigmoid, SiLU, Softplus, Tanh,
)

__all__ = [
    "functional", "init", "utils", "Module", "Linear", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU",
    "Sigmoid", "Tanh", "GELU", "SiLU", "Softplus", "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm", "Dropout", "Flatten",
    "Sequential", "CrossEntropyLoss", "MSELoss",
]
