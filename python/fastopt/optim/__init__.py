"""Optimizers with torch.optim's names, arguments, state layout and update rules."""

from . import functional, lr_scheduler
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .elementwise import (ADOPT, ASGD, AdaBelief, AdaBound, Adadelta, AdamWScheduleFree, AdEMAMix, Adamax, AMSBound, Lion,
                          NAdam, RAdam, Rprop, SGDScheduleFree)
from .interop import to_torch_state_dict
from .lamb import Lamb
from .lbfgs import LBFGS
from .muon import Muon
from .prodigy import Prodigy
from .optimizer import Optimizer, required
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "AdaBound", "AMSBound", "Lion", "AdaBelief", "ADOPT", "AdEMAMix", "AdamWScheduleFree", "SGDScheduleFree", "Lamb", "Adafactor", "LBFGS", "Muon", "Prodigy", "functional", "lr_scheduler", "required", "to_torch_state_dict"]
