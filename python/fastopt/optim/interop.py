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

from .optimizer import ABSMAX, UNSIGNED_STATES, _dequantize

__all__ = ["to_torch_state_dict"]


def to_torch_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of a fastopt optimizer ``state_dict()`` (of ``fastopt.optim`` or
    ``fastopt.torch``) with every array as a torch tensor (a bfloat16 array as a
    ``torch.bfloat16`` tensor). 8-bit state (``state_dtype='int8'``: each buffer's uint8 codes
    beside its ``<name>_absmax``) becomes the float32 values it holds, under torch's key, so
    torch's optimizer continues from it."""
    try:
        from ..torch import _to_numpy, _to_torch
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

    def plain(entry: Any) -> Any:
        # 8-bit state (state_dtype='int8'): each buffer's codes and absmax as its float32 values
        if not isinstance(entry, dict):
            return entry
        out = {}
        # (a fastopt.torch optimizer's state_dict holds tensors: read as arrays)
        entry = {key: _to_numpy(v) if type(v).__module__.startswith("torch") else v for key, v in entry.items()}
        for key, v in entry.items():
            if key.endswith(ABSMAX) and key[:-len(ABSMAX)] in entry:
                continue
            am = entry.get(key + ABSMAX)
            if isinstance(v, np.ndarray) and v.dtype == np.uint8 and am is not None:
                v = _dequantize(v, np.asarray(am), key in UNSIGNED_STATES)
            out[key] = v
        return out

    return {
        "state": {k: convert(plain(v)) for k, v in state_dict["state"].items()},
        "param_groups": [copy.deepcopy(g) for g in state_dict["param_groups"]],
    }
