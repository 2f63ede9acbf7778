"""Optimizer state exchange with torch.

fastopt → torch: :func:`to_torch_state_dict` turns a fastopt ``state_dict()`` into one that
``torch.optim.<X>.load_state_dict`` accepts (arrays become tensors; torch back-fills its own
flags such as ``foreach``). torch → fastopt: ``fastopt_optimizer.load_state_dict(
torch_optimizer.state_dict())`` works directly (CPU tensors are read through ``__array__``).
The layouts are the same, so a run can switch framework mid-way and continue exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

__all__ = ["to_torch_state_dict"]


def to_torch_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of a fastopt optimizer ``state_dict()`` with every array as a torch tensor (a
    bfloat16 array as a ``torch.bfloat16`` tensor)."""
    try:
        from ..torch import _to_torch
    except ImportError as e:
        raise ImportError("to_torch_state_dict needs torch (pip install torch)") from e
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise TypeError("state_dict must be a dict with 'state' and 'param_groups'")

    def convert(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return _to_torch(np.array(v, copy=True))
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(convert(x) for x in v)
        return copy.deepcopy(v)

    return {
        "state": {k: convert(v) for k, v in state_dict["state"].items()},
        "param_groups": [copy.deepcopy(g) for g in state_dict["param_groups"]],
    }
