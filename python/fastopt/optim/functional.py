"""Stateless in-place optimizer updates over lists of arrays (torch.optim's functional API).

Each call is one pass of the Rust kernel over all the arrays, with the GIL released. The
arrays must be C-contiguous numpy arrays of one float dtype (float32 or float64; or
float16 or ml_dtypes' bfloat16 parameters and gradients, whose state buffers are of their
dtype or float32: arithmetic in float32, each stored value rounded once), the buffers of each
parameter's shape; written arrays must be writeable and share no memory with
any other argument. Every argument is checked before anything is written, and errors name the
argument (``grads[3] has shape (2,) but params[3] has shape (3,)``). Hyperparameters are not
range-checked here (the optimizer classes check them), as in torch.

Each function lives in its optimizer's module, beside the class; this module gathers them.
"""

from __future__ import annotations

from .adafactor import adafactor
from .adagrad import adagrad
from .adam import adam, adamw
from .elementwise import (adabelief, adabound, adadelta, adamax, adamw_schedulefree, ademamix, adopt, amsbound, asgd, lion,
                          nadam, radam, rprop, sgd_schedulefree)
from .lamb import lamb
from .muon import muon
from .prodigy import prodigy
from .rmsprop import rmsprop
from .sgd import sgd

__all__ = ["adabelief", "adabound", "adafactor", "ademamix", "adopt", "adadelta", "adagrad", "adam", "adamax", "adamw", "amsbound", "asgd", "lamb", "lion", "muon", "prodigy",
           "nadam", "radam", "rmsprop", "rprop", "sgd", "adamw_schedulefree", "sgd_schedulefree"]
