"""The `Optimizer` base class: torch.optim's contract over NumPy arrays.

What differs from torch, on purpose:
- ``state_dict()`` copies every buffer and ``load_state_dict()`` copies what it loads, so
  the saved dict and the optimizer never share memory.
- A step either completes for every group or changes nothing: all groups' arguments are
  checked before any array is written, and state created for the step is kept only once the
  step succeeded. A KeyboardInterrupt (or SystemExit) that arrives while the groups are
  being written is held back until every group is written and its state committed, then
  raised; one that arrives before changes nothing.
- One optimizer is stepped by one thread at a time (a per-optimizer lock covers the step,
  ``zero_grad``, ``add_param_group`` and ``load_state_dict``); different optimizers step in
  parallel.
- The same memory in two param groups (two Parameters over one array, overlapping views) is
  an error, found when the groups are made and again at each step over several groups.
- A set of parameters, an in-group duplicate and a non-float parameter are errors.
- Parameters may be plain ndarrays; their gradients are then passed as ``step(grads=[...])``.
"""

from __future__ import annotations

import copy
import inspect
import re
import functools
import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import chain, repeat
from operator import attrgetter, is_
from typing import Any

import numpy as np

from .. import _fastopt
from . import _engine
from ._options import arguments_section, check_bool, real, validate
from ._state import _ParamList, _ParamState, _State  # noqa: F401 (_ParamState: pickles made before the move)
from ..hooks import RemovableHandle, register
from ..nn.utils import clip_coefficient, get_total_norm
from ..backends import is_device_array, namespace, to_device_like
from ..parameter import _EPOCH, Parameter, as_numpy, bfloat16_dtype, is_bfloat16, is_half, is_param_dtype

__all__ = ["Optimizer", "required"]

class _RequiredParameter:
    """Marks an option a param group must give (torch's ``required``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


def _array_of(p: Any) -> np.ndarray:
    return p.data if isinstance(p, Parameter) else p


def _is_param(x: Any) -> bool:
    return isinstance(x, (Parameter, np.ndarray)) or is_device_array(x)


_PLAIN_GRADS = {np.ndarray, type(None)}


def _on_device(a: Any) -> bool:
    """Whether a step's array lives on a GPU (the CUDA backend's), told without a call for
    NumPy arrays."""
    return type(a) is not np.ndarray and is_device_array(a)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _borrow(x: Any, what: str, written: bool) -> np.ndarray:
    """An array of another CPU library (one exporting ``__array_interface__`` or DLPack) as
    an ndarray over the same memory. Written arrays must be writeable and are never copied."""
    if hasattr(x, "__dlpack_device__") and not hasattr(x, "__array_interface__"):
        try:
            on_cuda = int(x.__dlpack_device__()[0]) in (2, 13)  # (kDLCUDA, kDLCUDAManaged)
        except Exception:  # noqa: BLE001 (an exporter that cannot say: not a GPU array)
            on_cuda = False
        if on_cuda:  # another library's GPU array: a CuPy view of the same memory
            from ..backends import cuda  # noqa: PLC0415 (only for GPU arrays)

            a = cuda.require().from_dlpack(x)
            if a.dtype not in (np.float32, np.float64):
                raise TypeError(f"{what} ({type(x).__name__}) has dtype {a.dtype}; on the GPU fastopt takes float32 "
                                "and float64")
            return a
    if hasattr(x, "__array_interface__"):
        a = np.asarray(x)
        if a.__array_interface__["data"][0] != x.__array_interface__["data"][0]:
            raise TypeError(f"{what} ({type(x).__name__}) could not be used without a copy")
    elif hasattr(x, "__dlpack__"):
        try:
            a = np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError) as e:
            raise TypeError(f"{what} ({type(x).__name__}) could not be shared through DLPack: {e}") from None
    else:
        raise TypeError(f"{what} is {type(x).__name__}: optimizers take fastopt Parameters, numpy arrays, or "
                        "CPU arrays that export __array_interface__ or DLPack")
    if written and not a.flags.writeable:
        raise ValueError(f"{what} ({type(x).__name__}) is read-only but is updated in place")
    return a


_GRAD = attrgetter("_grad")
_DATA = attrgetter("_data")


def impl_flags(**flags: Any) -> dict[str, Any]:
    """Checks torch's implementation-selection flags (``foreach``, ``fused``, ``capturable``,
    ``differentiable``: the ones the torch optimizer takes) and returns them for ``defaults``.

    fastopt always runs its own fused kernel: ``foreach`` and ``fused`` are accepted (and kept
    in the param groups, as torch keeps them) so that torch code ports unchanged;
    ``capturable`` and ``differentiable`` change what torch computes on, so True is refused."""
    check_impl_flags(flags)
    return flags


def check_impl_flags(group: dict[str, Any]) -> None:
    """torch's flags in a param group: None or a bool for ``foreach``/``fused`` (not both True,
    as torch), and ``capturable``/``differentiable`` False."""
    for name in ("foreach", "fused"):
        v = group.get(name)
        if v is not None and not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must be None or a bool, got {type(v).__name__}")
    if group.get("foreach") and group.get("fused"):
        raise ValueError("`fused` and `foreach` cannot be `True` together.")
    for name in ("capturable", "differentiable"):
        v = group.get(name, False)
        check_bool(v, name)
    if group.get("capturable"):
        raise ValueError(
            "capturable=True is for capturing torch's CUDA step in a CUDA graph; fastopt's kernels run on "
            "the CPU and take no step counts on a device, so there is nothing to capture (leave it False)"
        )
    if group.get("differentiable"):
        raise ValueError(
            "differentiable=True records torch's step in its autograd graph; fastopt updates NumPy arrays "
            "in place and has no autograd, so the step cannot be differentiated (leave it False)"
        )


#: The values of the ``state_dtype`` option besides None (the parameters' dtype, torch's).
STATE_DTYPES = ("float32", "bfloat16", "int8")

#: ``state_dtype='int8'``: the state key beside each 8-bit state buffer ``name`` that holds
#: the float32 absmax of each of its blocks (``name + ABSMAX``).
ABSMAX = "_absmax"
#: Elements per block of one absmax.
INT8_BLOCK = 256
#: ``state_dtype='int8'``: parameters with fewer elements keep their state in float32 (as
#: bitsandbytes' and torchao's 8-bit optimizers).
INT8_MIN_SIZE = 4096
_CODES = np.dtype(np.uint8)
#: The state buffers kept with the unsigned quantile map (never negative: second moments,
#: sums of squares); every other 8-bit buffer uses the signed map. (A function of the name:
#: no rule keeps a buffer of one of these names that can be negative.)
UNSIGNED_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "exp_avg_var", "max_exp_avg_var"})


def _quantized(group: dict[str, Any], a: np.ndarray) -> bool:
    """Whether parameter array ``a`` of ``group`` keeps its state in 8-bit codes."""
    return group.get("state_dtype") == "int8" and a.size >= INT8_MIN_SIZE


def _blocks(n: int) -> int:
    """How many absmax values 8-bit state of ``n`` elements keeps (the last block may be short)."""
    return -(-n // INT8_BLOCK)


def _quantize(values: np.ndarray, unsigned: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``values`` as 8-bit codes (their shape) and one absmax per block."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    codes = np.empty(values.shape, _CODES)
    absmax = np.empty(_blocks(values.size), np.float32)
    _fastopt.quantize_blockwise(values, codes, absmax, unsigned)
    return codes, absmax


def _dequantize(codes: np.ndarray, absmax: np.ndarray, unsigned: bool) -> np.ndarray:
    """The float32 values of 8-bit ``codes`` with their blocks' ``absmax``."""
    out = np.empty(codes.shape, np.float32)
    _fastopt.dequantize_blockwise(np.ascontiguousarray(codes), np.ascontiguousarray(absmax, dtype=np.float32), out,
                                  unsigned)
    return out


def _filled_codes(shape: tuple, value: float, unsigned: bool) -> tuple[np.ndarray, np.ndarray]:
    """The codes and absmax of a buffer of ``shape`` whose every element is ``value`` (the
    quantization of one such block, repeated)."""
    size = int(np.prod(shape, dtype=np.int64))
    code, absmax = _quantize(np.full(min(size, INT8_BLOCK), value, np.float32), unsigned)
    return np.full(shape, code.reshape(-1)[0] if size else 0, _CODES), np.full(_blocks(size), absmax[0] if size else 0, np.float32)

#: The values of the ``master_weights`` option besides None.
MASTER_WEIGHTS = ("kahan", "remainder", "float32", "stochastic")
#: The state key of the low 16 bits of a float32 master beside a bfloat16 parameter
#: (``master_weights='remainder'``): ``master = (param_bits << 16) + low_bits`` as int16.
LOW_BITS = "master_low_bits"
_LOW_DTYPE = np.dtype(np.int16)
#: The state key of the float32 copy of a float16/bfloat16 parameter (``master_weights='float32'``).
MASTER = "master"
#: The state buffer each ``master_weights`` scheme keeps beside the rule's own, last.
_MASTER_BUFFERS: dict[Any, tuple[str, ...]] = {"kahan": ("kahan_comp",), "remainder": (LOW_BITS,), "float32": (MASTER,)}
#: The buffers a master scheme keeps in a dtype of their own (not the state's), and what a
#: loaded one must be.
_OWN_DTYPES = {LOW_BITS: (_LOW_DTYPE, "(the low bits of float32 masters) must be an int16 array"),
               MASTER: (np.dtype(np.float32), "(float32 master copies) must be a float32 array")}


def _split_masters(names: tuple[str, ...], bufs: list, group: dict[str, Any]) -> tuple[list, tuple]:
    """``bufs`` (one list per name of ``names``) without a master's list, which the kernel
    takes as an argument of its own, and the arguments to pass after ``cache``: ``(low_bits,)``
    or ``(None, masters)``, or with stochastic rounding ``(None, None, round_key)`` (the
    group's ``_round_key``), or none. (A compensation buffer stays with the state lists.)"""
    last = names[-1] if names else None
    if last is LOW_BITS:
        return bufs[:-1], (bufs[-1],)
    if last is MASTER:
        return bufs[:-1], (None, bufs[-1])
    if group.get("master_weights") == "stochastic":
        return bufs, (None, None, _round_key(group))
    return bufs, ()


def _count_rounding(group: dict[str, Any]) -> None:
    """After a step that wrote the parameters: the group's next ``rounding_step``, when it
    rounds stochastically."""
    if group.get("master_weights") == "stochastic":
        group["rounding_step"] = group.get("rounding_step", 0) + 1


def _rounding(group: dict[str, Any]) -> tuple[int, int]:
    """A group's ``rounding_seed`` and ``rounding_step`` (0 if absent), checked."""
    out = []
    for key in ("rounding_seed", "rounding_step"):
        v = group.get(key, 0)
        if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= int(v) < 2**64):
            raise ValueError(f"{key} must be a whole number from 0 to 2**64 - 1, got {v!r}")
        out.append(int(v))
    return out[0], out[1]


def _round_key(group: dict[str, Any]) -> int:
    """The stochastic rounding key of a group's step: its ``rounding_seed`` and
    ``rounding_step`` mixed into 64 bits (each tensor's key and each element's random bits
    follow from it in the kernel: ``engine::tensor_key``, ``engine::stochastic_round``)."""
    seed, step = _rounding(group)
    return (seed * 0x9E3779B97F4A7C15 + step) % 2**64


def _keeps_state_in(dtype: np.dtype, name: str) -> bool:
    """Whether parameters of ``dtype`` can keep their state in ``state_dtype=name`` (the
    pairs the kernels compute: float32 state beside 16-bit or float32 parameters, bfloat16
    state beside float32 or bfloat16 ones)."""
    if name in ("float32", "int8"):
        return dtype == np.float32 or is_half(dtype)
    return dtype == np.float32 or is_bfloat16(dtype)


def _load_value(p: Any, key: str, value: Any, counter: bool, dtype: np.dtype | None = None) -> Any:
    """A copy of a loaded state value: counters stay 0-d float32 (torch never casts ``step``;
    fastopt's kernels count in float32), floating arrays take ``dtype`` (the group's state
    dtype; by default the parameter's)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if counter:
        return np.array(as_numpy(value), dtype=np.float32, copy=True).reshape(())
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = as_numpy(value)
        own = _OWN_DTYPES.get(key)
        if own is not None:
            if arr.dtype != own[0]:
                raise TypeError(f"state {key!r} {own[1]}, got dtype {arr.dtype}")
            return np.array(arr, order="C", copy=True)
        if arr.dtype.kind == "f" or is_bfloat16(arr.dtype):
            return np.array(arr, dtype=_array_of(p).dtype if dtype is None else dtype, order="C", copy=True)
        return arr.copy()
    return copy.deepcopy(value)


def _load_quantized(p: Any, k: Any, entry: dict[str, Any], counters: Any) -> dict[str, Any]:
    """A loaded state entry for a parameter that keeps 8-bit state: codes and their absmax
    copied (checked to go together, with the parameter's shape and block count), floating
    buffers (a float32 run's state, torch's) quantized, counters as :func:`_load_value`."""
    a = _array_of(p)
    out: dict[str, Any] = {}
    for key, val in entry.items():
        if key in counters or val is None or isinstance(val, (bool, str)) or key in _OWN_DTYPES \
                or not (isinstance(val, np.ndarray) or hasattr(val, "__array__")):
            out[key] = _load_value(p, key, val, key in counters)
            continue
        if key.endswith(ABSMAX):
            if key[:-len(ABSMAX)] not in entry:
                raise ValueError(f"state_dict['state'][{k!r}] has the absmax {key!r} without its 8-bit codes")
            continue
        arr = as_numpy(val)
        if arr.dtype == _CODES:
            am = entry.get(key + ABSMAX)
            if am is None:
                raise ValueError(f"state_dict['state'][{k!r}][{key!r}] holds 8-bit codes without their absmax "
                                 f"{key + ABSMAX!r}")
            am = as_numpy(am)
            if arr.shape != a.shape or am.dtype != np.float32 or am.size != _blocks(a.size):
                raise ValueError(f"state_dict['state'][{k!r}][{key!r}]: 8-bit codes of shape {arr.shape} with "
                                 f"{am.size} {am.dtype} absmax values do not fit a parameter of shape {a.shape} "
                                 f"({_blocks(a.size)} blocks of {INT8_BLOCK})")
            out[key] = np.array(arr, order="C", copy=True)
            out[key + ABSMAX] = np.array(am, order="C", copy=True).reshape(-1)
        elif arr.dtype.kind == "f" or is_bfloat16(arr.dtype):
            if arr.shape != a.shape:
                raise ValueError(f"state_dict['state'][{k!r}][{key!r}] has shape {arr.shape} but its parameter has "
                                 f"shape {a.shape}")
            out[key], out[key + ABSMAX] = _quantize(np.asarray(arr, dtype=np.float32), key in UNSIGNED_STATES)
        else:
            out[key] = arr.copy()
    # (in the entry's order, the absmax made by quantizing after it, as a step makes them)
    return {**{key: out[key] for key in entry if key in out}, **out}


def _plain_group(group: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a saved param group in which one-element arrays or tensors (torch's
    Tensor lr, for instance) become Python numbers."""
    out = {}
    for k, v in group.items():
        if k not in ("params", "param_names") and hasattr(v, "__array__") and not isinstance(v, (list, tuple)):
            a = as_numpy(v)
            v = a.item() if a.size == 1 else a.copy()
        out[k] = copy.deepcopy(v)
    return out


def _plain_numbers(group: dict[str, Any]) -> None:
    """One-element numeric arrays of one or more dimensions among a group's options
    (``lr=np.array([0.1])``) become Python numbers, so the kernels read them as numbers; a 0-d
    array stays (torch keeps a Tensor lr, and the schedulers fill it in place)."""
    for k, v in group.items():
        if k in ("params", "param_names"):
            continue
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.size == 1 and v.dtype.kind in "iuf":
            group[k] = v.reshape(()).item()


#: (lo, hi) byte addresses of an array's memory (moved out of NumPy's namespace in 2.0).
_byte_bounds = np.byte_bounds if hasattr(np, "byte_bounds") else np.lib.array_utils.byte_bounds


def _check_disjoint(groups: list[list[Any]]) -> None:
    """Raises ValueError if arrays of two different groups share memory (a step would update
    that memory twice). Sorts the arrays' byte ranges and confirms each overlap of ranges with
    ``np.shares_memory``: O(n log n) for n arrays."""
    if len(groups) < 2:
        return
    spans = []
    for gi, params in enumerate(groups):
        for i, p in enumerate(params):
            a = _array_of(p)
            if a.size:
                lo, hi = _device_bounds(a) if is_device_array(a) else _byte_bounds(a)
                spans.append((lo, hi, gi, i, a))
    spans.sort(key=lambda t: t[0])
    open_spans: list = []
    for lo, hi, gi, i, a in spans:
        open_spans = [t for t in open_spans if t[1] > lo]
        for _, _, gj, j, b in open_spans:
            if gj != gi and (is_device_array(a) or is_device_array(b) or np.shares_memory(a, b)):
                (g1, p1), (g2, p2) = sorted([(gi, i), (gj, j)])
                raise ValueError(
                    f"param_groups[{g1}]['params'][{p1}] and param_groups[{g2}]['params'][{p2}] share memory "
                    "(the same array, or overlapping views of one): a step would update it twice"
                )
        open_spans.append((lo, hi, gi, i, a))


def _device_bounds(a: Any) -> tuple[int, int]:
    """A CuPy array's byte range on its device (its memory pointer and extent), with the
    device in the high bits so that arrays of two GPUs never overlap."""
    lo = int(a.data.ptr) + (int(a.device.id) << 56)
    extent = sum((n - 1) * abs(st) for n, st in zip(a.shape, a.strides)) + a.itemsize if a.size else 0
    return lo, lo + extent


def _check_step(key: Any, value: Any) -> None:
    """A loaded ``step`` counter must be a finite number >= 0 (torch raises on the bias
    correction otherwise; fastopt would silently give inf or NaN parameters)."""
    try:
        v = float(as_numpy(value).reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"state[{key!r}]['step'] must be a single number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"state[{key!r}]['step'] must be a finite number >= 0, got {v}")


def _copy_value(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.copy()
    return copy.deepcopy(v)


def check_grad_scale(grad_scale: Any) -> None:
    """``step(grad_scale=)`` must be a finite number > 0."""
    if not (math.isfinite(real(grad_scale, "grad_scale")) and grad_scale > 0):
        raise ValueError(f"grad_scale must be a finite number > 0, got {grad_scale}")


def locked(method: Callable) -> Callable:
    """Runs ``method`` holding the optimizer's lock: one thread at a time changes an optimizer
    (the kernels release the GIL, so two threads could otherwise interleave a step's check,
    kernel and commit)."""

    @functools.wraps(method)
    def run(self: "Optimizer", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


#: Exceptions that arrive from outside the step (a signal handler's), not from what it
#: computes: while a step writes, they are held back until it is complete.
_ASYNC = (KeyboardInterrupt, SystemExit)


class Optimizer:
    """Base class of every fastopt optimizer (torch.optim.Optimizer's contract).

    Parameters are float32 or float64 arrays, or (optimizers whose ``_takes_half`` is True:
    every single-pass one and LAMB) float16 and ``ml_dtypes.bfloat16`` arrays, whose update
    is computed in float32 from the exactly widened values with each stored value rounded
    once to nearest-even and whose state is kept in their dtype, as torch's fused kernels:

    >>> import ml_dtypes
    >>> w = np.ones(3, ml_dtypes.bfloat16)
    >>> fo.optim.SGD([w], lr=0.1).step(grads=[np.ones(3, ml_dtypes.bfloat16)])
    >>> w.astype(np.float32)  # 0.9 rounded to bfloat16
    array([0.8984375, 0.8984375, 0.8984375], dtype=float32)

    ``state_dtype='float32'`` keeps their state in float32 instead, and
    ``state_dtype='bfloat16'`` keeps a float32 model's state in bfloat16 (each stored value
    rounded once to its own dtype):

    >>> opt = fo.optim.Adam([np.zeros(3, np.float32)], state_dtype="bfloat16")
    >>> opt.step(grads=[np.full(3, 0.3, np.float32)])
    >>> opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].astype(np.float32)  # 0.03 rounded
    array([0.0300293, 0.0300293, 0.0300293], dtype=float32)

    ``state_dtype='int8'`` (Adam, AdamW, SGD, RMSprop, Adagrad, Lion, AdaBelief) keeps each
    state buffer of a tensor of at least :data:`INT8_MIN_SIZE` elements as 8-bit blockwise
    codes (Dettmers et al. 2022), as bitsandbytes and torchao keep it: a uint8 ``code`` per
    element and a float32 ``absmax`` per block of 256 (state key ``<name>_absmax``), the
    value being ``map[code] * absmax`` with ``map`` bitsandbytes' signed dynamic quantile map
    (the unsigned one for second moments: :data:`UNSIGNED_STATES`). A step dequantizes each
    block, updates it in float32 and quantizes the new values in the same pass:
    ``absmax = max(max|x|, 1e-12)``, ``code`` = the map's value nearest to ``x / absmax``
    (torchao's rule, ties up). Smaller tensors keep float32 state:

    >>> big = np.zeros(5000, np.float32)
    >>> opt = fo.optim.Adam([big], lr=0.1, state_dtype="int8")
    >>> opt.step(grads=[np.full(5000, 0.3, np.float32)])
    >>> st = opt.state[big]
    >>> st["exp_avg"].dtype, st["exp_avg_absmax"].shape, float(st["exp_avg_absmax"][0])
    (dtype('uint8'), (20,), 0.030000001192092896)

    Subclasses give ``defaults``, validate a group's options in ``_validate_group`` and run
    one group's update in ``_step_group``.
    """

    #: State entries that are float32 counters (0-d arrays, as torch's), never cast on load.
    _counters: tuple[str, ...] = ("step",)
    #: Whether the group's kernel counts its completed calls in the group's CheckCache (every
    #: fused kernel does; an optimizer whose step is several calls does not).
    _kernel_counts_calls: bool = True

    #: Whether a step changes values in the param groups (Schedule-Free's counters).
    _steps_change_groups: bool = False
    #: Whether one step spans every group at once (Prodigy's estimate sums over all of them
    #: between two passes): such an optimizer overrides ``_write_groups``, which every step
    #: then goes through.
    _global_step: bool = False

    #: Which elements one element's update reads besides its own: None (none: the update is
    #: elementwise, so any slice of a tensor can be stepped alone), ``"tensor"`` (the rest of
    #: its tensor: LAMB's trust ratio, Adafactor's row and column, Muon's matrix) or ``"all"``
    #: (every tensor: Prodigy's estimate, L-BFGS). Sharded optimizers partition by it.
    _couples: str | None = None

    #: Set by the first learning-rate scheduler made for this optimizer (torch's step-order
    #: warning counts optimizer steps from then on).
    _tracked_by_scheduler = False
    _opt_called = False

    #: Descriptions of options that mean something else here than in ``_options.DOCS``.
    _option_docs: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Appends the "Arguments" section to each optimizer's docstring, built from its
        signature and the one table of option descriptions (``_options.DOCS``)."""
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("_") or "__init__" not in cls.__dict__ or not cls.__doc__ or "Arguments:" in cls.__doc__:
            return
        doc, section = re.sub(r"\n{3,}", "\n\n", inspect.cleandoc(cls.__doc__)), arguments_section(cls, cls._option_docs)
        at = doc.find("\nExample:")  # (before the example)
        cls.__doc__ = doc + "\n\n" + section if at < 0 else doc[:at] + "\n" + section + "\n" + doc[at:]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], state_dtype: str | None = None,
                 master_weights: str | None = None) -> None:
        # (like torch's optional keys: in the groups only when set)
        if state_dtype is not None:
            defaults["state_dtype"] = state_dtype
        if master_weights is not None:
            defaults["master_weights"] = master_weights
        if master_weights == "stochastic":  # (the generator's seed and step count, per group)
            defaults.setdefault("rounding_seed", 0)
            defaults.setdefault("rounding_step", 0)
        self.defaults = defaults
        self._step_pre_hooks: OrderedDict = OrderedDict()
        self._step_post_hooks: OrderedDict = OrderedDict()
        self._state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._state_dict_post_hooks: OrderedDict = OrderedDict()
        self._load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._load_state_dict_post_hooks: OrderedDict = OrderedDict()
        if _is_param(params):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of "
                f"Parameters, arrays or dicts, but got {type(params).__name__}"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. Please use a list instead."
            )
        if isinstance(params, dict):
            raise TypeError(
                "params must be an iterable of parameters or of param group dicts; "
                "wrap a single param group in a list"
            )
        self._lock = threading.RLock()
        self._pending: list | None = None  # state created for the group being written
        self._group_wrote = False  # whether the group whose step raised had been written
        self._disjoint: tuple | None = None  # the arrays last found not to overlap across groups
        self.state: _State = _State()
        self.param_groups: list[dict[str, Any]] = []
        # id(params) -> (params, its version, state, state version, names, buffer lists): see `_buffers`.
        self._buffer_lists: dict[int, tuple] = {}
        # id(group) -> (group, its values, (rule name, hyperparameters), Rule, layout, cache): see `_rule_of`
        # (an optimizer of several passes keys its own by (id(group), pass)).
        self._rules: dict[Any, tuple] = {}
        # id(group) -> (group, the kernel's CheckCache for it): see `_check_cache`.
        self._check_caches: dict[int, tuple] = {}
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("_lock", None)
        d["_pending"] = None
        d["_disjoint"] = None
        d["_rules"] = {}
        d.pop("_device_launchers", None)
        d.pop("_device_step", None)
        d.pop("_device_norm", None)
        d.pop("_device_fast", None)
        d.pop("_host_calls", None)
        d.pop("_last_own_grads", None)
        d.pop("_device_wrote", None)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._lock = threading.RLock()
        self.__dict__.setdefault("_rules", {})

    # -- param groups ---------------------------------------------------------------------

    @locked
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group of parameters with its own options (missing ones from ``defaults``).

        The dict is copied. Raises if a parameter is already in this optimizer.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if _is_param(params):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)
        # (name, param) pairs name the parameters, as torch's named_parameters() gives them.
        named = [isinstance(p, tuple) for p in params]
        if any(named):
            if not all(named) or any(len(p) != 2 or not isinstance(p[0], str) for p in params):
                raise ValueError("all optimizer params should be with/without names. Some param names are missing")
            group["param_names"] = [name for name, _ in params]
            params = [p for _, p in params]
        if self.param_groups and ("param_names" in group) != ("param_names" in self.param_groups[0]):
            raise ValueError(
                "all optimizer param groups should be with/without names. cannot add param group "
                + ("with names" if "param_names" in group else "without names")
                + " to the optimizer"
            )
        for i, p in enumerate(params):
            if not _is_param(p):
                if _is_torch(p):
                    raise TypeError(
                        f"params[{i}] is a torch {type(p).__name__}: fastopt.torch.{type(self).__name__} is this "
                        "optimizer for torch tensors (a torch.optim.Optimizer updating them in place)"
                    )
                # Another library's array: a view of its memory (the group holds the view).
                p = params[i] = _borrow(p, f"params[{i}]", written=True)
            a = _array_of(p)
            if not self._takes_device and is_device_array(a):
                raise NotImplementedError(f"params[{i}] is a CuPy array, and {type(self).__name__} has no CUDA kernels "
                                          "yet (on the GPU: the single-pass optimizers, see fastopt.backends.cuda)")
            if not is_param_dtype(a.dtype):
                raise TypeError(f"params[{i}] has dtype {a.dtype}; optimizers take float32, float64, float16 or "
                                "bfloat16 (ml_dtypes) arrays")
            if not self._takes_half and is_half(a.dtype):
                raise TypeError(f"params[{i}] has dtype {a.dtype}; {type(self).__name__} takes float32 or float64 "
                                "parameters")
        dtypes = {_array_of(p).dtype for p in params}
        if len(dtypes) > 1:
            raise TypeError(
                "a param group's params must share one dtype (one kernel call per group), got "
                + " and ".join(sorted(d.name for d in dtypes))
                + "; put them in separate param groups"
            )
        group["params"] = _ParamList(params)
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization parameter {name}"
                )
            group.setdefault(name, default)
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        present = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in present for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        _check_disjoint([g["params"] for g in self.param_groups] + [params])
        _plain_numbers(group)
        self._check_options(group)
        self.param_groups.append(group)

    #: The options every group has, each checked by its shared check (``_options.CHECKS``).
    _options: tuple[str, ...] = ()

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raises if an option of ``group`` is out of range: the shared check of each of
        ``_options``, then the optimizer's own ``_validate_extra``."""
        validate(group, self._options)
        self._validate_extra(group)

    def _validate_extra(self, group: dict[str, Any]) -> None:
        """Checks of this optimizer's own that no shared check covers (subclasses)."""

    def _check_options(self, group: dict[str, Any]) -> None:
        """Every check of a group's options: torch's implementation flags, then the
        optimizer's own (``_validate_group``), then ``state_dtype`` against the parameters."""
        check_impl_flags(group)
        self._validate_group(group)
        self._check_state_dtype(group)
        self._check_master_weights(group)

    #: Whether the optimizer's step is one pass of the rule engine, which can keep a
    #: compensation buffer or a master's low bits beside 16-bit parameters (``master_weights``).
    _takes_kahan = False
    #: Whether the optimizer's rule can keep 8-bit blockwise state (``state_dtype='int8'``).
    _takes_int8 = False
    #: Whether the optimizer's passes (the engine's, possibly several) can keep a float32
    #: master beside 16-bit parameters or round them stochastically: ``master_weights=``
    #: ``'remainder'``, ``'float32'`` and ``'stochastic'``.
    _takes_masters = False

    def _check_master_weights(self, group: dict[str, Any]) -> None:
        """``master_weights`` (when the group has it): ``'kahan'`` or ``'float32'`` (beside
        float16/bfloat16 parameters) or ``'remainder'`` (beside bfloat16 ones) or ``'stochastic'``
        (beside float16/bfloat16 ones), on an optimizer that takes it (``_takes_kahan``,
        ``_takes_masters``) without the cautious mask; with ``'stochastic'`` the group's
        ``rounding_seed`` and ``rounding_step`` (whole numbers >= 0, 0 if absent)."""
        how = group.get("master_weights")
        if how is None:
            return
        if how not in MASTER_WEIGHTS:
            raise ValueError(f"master_weights must be None, 'kahan', 'remainder', 'float32' or 'stochastic', got {how!r}")
        if not (self._takes_kahan or (self._takes_masters and how != "kahan")):
            raise TypeError(f"{type(self).__name__}'s step is not one element-wise pass: master_weights={how!r} is "
                            "not one of its options")
        if group.get("cautious"):
            raise ValueError(f"master_weights={how!r} and cautious=True cannot be combined (the mask's count is a "
                             "pass of its own)")
        if how == "kahan" and group.get("state_dtype") == "int8":
            raise ValueError("master_weights='kahan' keeps its compensation buffer in the state's format, which 8-bit "
                             "state (state_dtype='int8') cannot hold: use 'remainder', 'float32' or 'stochastic'")
        for i, p in enumerate(group.get("params", ())):
            a = _array_of(p)
            if how == "kahan" and not is_half(a.dtype):
                raise TypeError(f"params[{i}] has dtype {a.dtype}; master_weights='kahan' compensates the rounding "
                                "of float16 or bfloat16 parameters")
            if how == "float32" and not is_half(a.dtype):
                raise TypeError(f"params[{i}] has dtype {a.dtype}; master_weights='float32' keeps a float32 copy of "
                                "float16 or bfloat16 parameters")
            if how == "remainder" and not is_bfloat16(a.dtype):
                raise TypeError(f"params[{i}] has dtype {a.dtype}; master_weights='remainder' keeps the low 16 bits "
                                "of a float32 master beside a bfloat16 parameter (its high half)")
            if how == "stochastic" and not is_half(a.dtype):
                raise TypeError(f"params[{i}] has dtype {a.dtype}; master_weights='stochastic' rounds float16 or "
                                "bfloat16 parameters")
        if how == "stochastic":
            _rounding(group)
            self._steps_change_groups = True  # (its rounding_step: wrappers copy the groups back)

    def _check_state_dtype(self, group: dict[str, Any]) -> None:
        """``state_dtype`` (when the group has it): one of :data:`STATE_DTYPES`, on an optimizer
        that takes it, beside parameters that can keep their state in it."""
        name = group.get("state_dtype")
        if name is None:
            return
        if not self._takes_half:
            raise TypeError(f"{type(self).__name__} keeps its state in its parameters' dtype (its own float32/float64 "
                            f"arithmetic): state_dtype is not one of its options, got {name!r}")
        if not isinstance(name, str) or name not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be None, 'float32', 'bfloat16' or 'int8', got {name!r}")
        if name == "int8" and not self._takes_int8:
            raise TypeError(f"{type(self).__name__} keeps no 8-bit state: state_dtype='int8' is an option of Adam, "
                            "AdamW, SGD, RMSprop, Adagrad, Lion and AdaBelief")
        if name == "bfloat16" and bfloat16_dtype() is None:
            raise ImportError("state_dtype='bfloat16' keeps ml_dtypes.bfloat16 arrays, and this program has not "
                              "imported ml_dtypes: import ml_dtypes first (pip install 'fastopt[bf16]')")
        for i, p in enumerate(group.get("params", ())):
            a = _array_of(p)
            if not _keeps_state_in(a.dtype, name):
                takes = "float32 or bfloat16" if name == "bfloat16" else "float32, float16 or bfloat16"
                raise TypeError(f"params[{i}] has dtype {a.dtype}; state_dtype={name!r} takes {takes} parameters")

    @staticmethod
    def _state_dtype(group: dict[str, Any], a: np.ndarray) -> np.dtype:
        """The dtype of the state buffers of parameter array ``a`` in ``group``: its own
        (torch's), or the group's ``state_dtype`` (checked by :meth:`_check_state_dtype`)."""
        name = group.get("state_dtype")
        if name is None:
            return a.dtype
        if name == "float32":
            return np.dtype(np.float32)
        if name == "int8":  # (codes, with an absmax beside each buffer; small tensors: float32)
            return _CODES if a.size >= INT8_MIN_SIZE else np.dtype(np.float32)
        bf = bfloat16_dtype() if name == "bfloat16" else None
        if bf is None:  # (a group changed after its checks)
            raise ValueError(f"state_dtype must be None, 'float32', 'bfloat16' (with ml_dtypes imported) or 'int8', "
                             f"got {name!r}")
        return bf

    def _coupling(self, group: dict[str, Any]) -> str | None:
        """:attr:`_couples` for ``group`` (``cautious=True`` rescales by the fraction of its
        tensor's elements the mask keeps: per tensor)."""
        return "tensor" if group.get("cautious") and self._couples is None else self._couples

    # -- gradients ------------------------------------------------------------------------

    @locked
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets the gradients of the Parameters (plain-array params have none here).

        ``set_to_none=True`` (the default, as torch) drops them; otherwise they are zeroed in
        place (every gradient is checked to be writeable before any is zeroed).
        """
        check_bool(set_to_none, "set_to_none")
        if not set_to_none:
            for gi, group in enumerate(self.param_groups):
                for i, p in enumerate(group["params"]):
                    g = p.grad if isinstance(p, Parameter) else None
                    if g is not None and not g.flags.writeable:
                        raise ValueError(
                            f"param_groups[{gi}]['params'][{i}].grad is read-only: it cannot be zeroed in place "
                            "(use set_to_none=True)"
                        )
        for group in self.param_groups:
            for p in group["params"]:
                if isinstance(p, Parameter) and p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.fill(0)

    def _split_grads(self, grads: Any) -> list[list[np.ndarray | None]]:
        """``step(grads=...)``'s flat list, cut into one list per group."""
        if not isinstance(grads, (list, tuple)):
            raise TypeError(
                "grads must be a list with one array (or None to skip) per parameter, "
                f"got {type(grads).__name__}"
            )
        total = sum(len(g["params"]) for g in self.param_groups)
        if len(grads) != total:
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {total} parameters")
        out, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            out.append(list(grads[start : start + n]))
            start += n
        if not set(map(type, grads)) <= _PLAIN_GRADS:
            k = 0
            for row in out:
                for i, g in enumerate(row):
                    if not isinstance(g, np.ndarray) and (hasattr(g, "__array_interface__") or hasattr(g, "__dlpack__")):
                        row[i] = _borrow(g, f"grads[{k + i}]", written=False)  # (only read)
                k += len(row)
        return out

    # -- stepping -------------------------------------------------------------------------

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        grads: Any = None,
        *,
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
        skip_if_nonfinite: bool = False,
        grad_scale: float = 1.0,
    ) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss.

        ``closure`` (optional) re-evaluates the model and returns the loss; it runs first.
        ``grads`` (optional) is a flat list, one entry per parameter in group order, of
        gradient arrays (None skips the parameter); it replaces ``Parameter.grad`` and is
        required for plain-ndarray parameters.

        ``max_grad_norm`` clips the gradients to that total ``norm_type`` norm inside the update
        itself: the same result as ``clip_grad_norm_(params, max_grad_norm, norm_type)`` then
        ``step()``, bit for bit, but the gradients are only read (one pass for the norm, none to
        scale them) and are left unchanged. ``skip_if_nonfinite`` skips the whole step when the
        norm is NaN or infinite: params, state and step counts stay as they are. Either option
        records the norm in ``self.last_grad_norm`` and returns the loss as usual.

        ``grad_scale`` multiplies every gradient element as the update reads it (a loss
        scaler's ``1 / scale``: :class:`fastopt.amp.GradScaler` unscales this way, without a
        pass over the gradients); the norm for clipping is then that of the scaled gradients.
        """
        with self._lock:  # (inline: a decorator's extra call costs a tenth of a small step)
            if self._step_pre_hooks or self._step_post_hooks:
                return self._step_with_hooks(closure, grads, max_grad_norm, norm_type, skip_if_nonfinite, grad_scale)
            if max_grad_norm is not None and not 0.0 <= real(max_grad_norm, "max_grad_norm"):
                raise ValueError(f"max_grad_norm must be >= 0 (or None for no clipping), got {max_grad_norm}")
            if grad_scale != 1.0:
                check_grad_scale(grad_scale)
            loss = None if closure is None else closure()
            self._opt_called = True  # read by the schedulers' step-order warning
            groups = self.param_groups
            if (len(groups) == 1 and grads is None and max_grad_norm is None and not skip_if_nonfinite
                    and not self._global_step and grad_scale == 1.0):
                # _write_groups' work for one group, inline (the common small step).
                self._group_wrote = False
                try:
                    self._run_group(0, groups[0], None, False)
                except _ASYNC as e:
                    if not self._group_wrote:
                        self._write_groups([None], 1.0)
                    raise e
                return loss
            per_group: list[Any] = self._split_grads(grads) if grads is not None else [None] * len(groups)
            scale = float(grad_scale)
            if max_grad_norm is not None or skip_if_nonfinite:
                if grads is None:
                    per_group = [self._own_grads(gi, g) for gi, g in enumerate(groups)]
                every = [g for row in per_group for g in row if g is not None]
                if every and _on_device(every[0]):
                    return self._step_device_clipped(per_group, every, scale, max_grad_norm, norm_type,
                                                     skip_if_nonfinite, loss)
                total = get_total_norm(every, norm_type)
                if scale != 1.0:
                    total = total * total.dtype.type(scale)
                self.last_grad_norm = total
                if skip_if_nonfinite and not np.isfinite(total):
                    return loss
                if max_grad_norm is not None:
                    scale *= float(clip_coefficient(float(max_grad_norm), total))
            if len(groups) > 1:
                # Check every group before writing any, so a bad later group changes nothing.
                self._check_groups_disjoint()
                for gi, (group, g) in enumerate(zip(groups, per_group)):
                    self._run_group(gi, group, g, True, scale)
            self._write_groups(per_group, scale)
            return loss

    def _step_device_clipped(self, per_group: list, every: list, scale: float, max_grad_norm: Any,
                             norm_type: float, skip: bool, loss: Any) -> Any:
        """``step(max_grad_norm=..., skip_if_nonfinite=...)`` on CuPy arrays: the norm, the
        clipping coefficient and the non-finite flag are computed on the device and read there
        by the step's kernels, so the step never waits for the GPU. ``last_grad_norm`` is a 0-d
        CuPy array."""
        from ..backends import cuda  # noqa: PLC0415 (only for CuPy arrays)

        got = self.__dict__.get("_device_norm")
        if got is None:
            got = self._device_norm = cuda.NormLauncher(cuda.device(every[0]))
        got.prepare(every)
        clip = None if max_grad_norm is None else float(max_grad_norm)
        norm, coef, nonfinite = got.norm(norm_type, scale, clip, flag=skip)
        self.last_grad_norm = norm.astype(every[0].dtype)
        self._device_step = (coef, nonfinite)
        try:
            if len(self.param_groups) > 1:
                self._check_groups_disjoint()
                for gi, (group, g) in enumerate(zip(self.param_groups, per_group)):
                    self._run_group(gi, group, g, True, scale)
            self._write_groups(per_group, scale)
        finally:
            self._device_step = (None, None)
        return loss

    def _write_groups(self, per_group: list, scale: float) -> None:
        """Runs every group's kernel and commits its new state. A KeyboardInterrupt or
        SystemExit raised meanwhile (by a signal handler, when the kernel returns) is held back:
        a group whose kernel had already written is committed, one whose kernel had not yet
        run is run, and the exception is raised once every group is done. A step is never
        left half-written."""
        held: BaseException | None = None
        gi, retries = 0, 0
        groups = self.param_groups
        while gi < len(groups):
            self._group_wrote = False
            try:
                self._run_group(gi, groups[gi], per_group[gi], False, scale)
            except _ASYNC as e:
                if held is None:
                    held = e
                if self._group_wrote or retries >= 100:
                    gi, retries = gi + 1, 0
                else:
                    retries += 1  # nothing of this group was written: run it again
                continue
            gi, retries = gi + 1, 0
        if held is not None:
            raise held

    def _check_groups_disjoint(self) -> None:
        """Raises if two param groups' arrays share memory (checked again only when some
        group's arrays changed since the last check)."""
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        try:
            arrays = tuple(map(_DATA, params))  # (all Parameters: no Python-level loop)
        except AttributeError:
            arrays = tuple(map(_array_of, params))
        last = self._disjoint
        if last is not None and len(last) == len(arrays) and all(map(is_, last, arrays)):
            return
        _check_disjoint([g["params"] for g in self.param_groups])
        self._disjoint = arrays

    def _step_with_hooks(self, closure: Any, grads: Any, max_grad_norm: Any, norm_type: float, skip: bool,
                         grad_scale: float = 1.0) -> Any:
        """torch's order: pre-hooks (which may replace the arguments), the step, post-hooks.
        Hooks get ``(optimizer, args, kwargs)`` with ``args[0]`` the optimizer, as in torch."""
        args: tuple = (self,) if closure is None else (self, closure)
        kwargs: dict = {} if grads is None else {"grads": grads}
        if max_grad_norm is not None:
            kwargs["max_grad_norm"] = max_grad_norm
        if norm_type != 2.0:
            kwargs["norm_type"] = norm_type
        if skip:
            kwargs["skip_if_nonfinite"] = skip
        if grad_scale != 1.0:
            kwargs["grad_scale"] = grad_scale
        for hook in list(self._step_pre_hooks.values()):
            result = hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"a step pre-hook must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
                args, kwargs = result
        pre, post = self._step_pre_hooks, self._step_post_hooks
        self._step_pre_hooks, self._step_post_hooks = OrderedDict(), OrderedDict()
        try:
            out = type(self).step(*args, **kwargs)
        finally:
            self._step_pre_hooks, self._step_post_hooks = pre, post
        for hook in list(self._step_post_hooks.values()):
            hook(self, args, kwargs)
        return out

    # -- hooks ------------------------------------------------------------------------------

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None | (new_args, new_kwargs)`` runs before each step."""
        return register(self._step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None`` runs after each step."""
        return register(self._step_post_hooks, hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer) -> None`` runs before ``state_dict()`` builds the dict."""
        return register(self._state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer, state_dict) -> None | state_dict`` may edit or replace the result."""
        return register(self._state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer, state_dict) -> None | state_dict`` may edit or replace what is loaded."""
        return register(self._load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """``hook(optimizer) -> None`` runs after ``load_state_dict()``."""
        return register(self._load_state_dict_post_hooks, hook, prepend)

    #: The list the last ``_own_grads`` call made (a device group's fast path is recorded only for
    #: a step over the params' own gradients).
    _last_own_grads: list | None = None

    def _own_grads(self, gi: int, group: dict) -> list:
        """The ``.grad`` of each param of the group (all must be Parameters)."""
        params = group["params"]
        try:
            grads = self._last_own_grads = list(map(_GRAD, params))
            return grads
        except AttributeError:
            i = next(i for i, p in enumerate(params) if not isinstance(p, Parameter))
            raise ValueError(
                f"param_groups[{gi}]['params'][{i}] is a plain numpy array, which "
                "carries no gradient: pass the gradients as step(grads=[...])"
            ) from None

    def _run_group(self, gi: int, group: dict, grads: list | None, check_only: bool, grad_scale: float = 1.0) -> None:
        """Gathers the group's params that have a gradient and runs ``_step_group`` on them."""
        if grads is None and not check_only and grad_scale == 1.0:
            fast = self.__dict__["_device_fast"].get(id(group)) if "_device_fast" in self.__dict__ else None
            if fast is not None and self._device_fast_ok(fast, group):
                return
            call = self.__dict__["_host_calls"].get(id(group)) if "_host_calls" in self.__dict__ else None
            if call is not None and self._repeat_call(call, group):
                return
        params = group["params"]
        if grads is None:
            grads = self._own_grads(gi, group)
        # (map over C functions: a Python-level loop here costs about as much as the kernel
        # call over hundreds of small tensors.)
        if any(map(is_, grads, repeat(None))):
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        if not params:
            return
        try:
            arrays = list(map(_DATA, params))
        except AttributeError:
            arrays = [p._data if type(p) is Parameter else _array_of(p) for p in params]
        if check_only:
            cache, before = None, 0
        else:
            entry = self._check_caches.get(id(group))
            cache = entry[1] if entry is not None and entry[0] is group else self._check_cache(group)
            before = cache.completed()
        self._pending = None
        try:
            if grad_scale == 1.0:
                self._step_group(group, params, arrays, grads, check_only)
            else:
                self._step_group(group, params, arrays, grads, check_only, grad_scale)
        except (TypeError, ValueError) as e:
            self._settle(cache, before)
            # An option changed in param_groups since it was checked (a string lr, say) fails
            # in the kernel without a name: the group's own checks name it.
            try:
                self._check_options(group)
            except (TypeError, ValueError) as named:
                e = named
            if len(self.param_groups) == 1:
                raise e from None
            raise type(e)(f"param_groups[{gi}]: {e}") from None
        except BaseException:
            self._settle(cache, before)
            raise

    def _settle(self, cache: Any, before: int) -> None:
        """After an exception in a group's step: when its kernel had completed (the kernel
        counts its completed calls in the group's CheckCache before it returns, so this holds
        even if the exception came from a signal handler just after), the state it created
        is committed with it; otherwise nothing was written and the new state is dropped."""
        pending, self._pending = self._pending, None
        on_device = self.__dict__.pop("_device_wrote", False)  # (a device group's launch was queued)
        if on_device:
            self._group_wrote = True
        elif self._kernel_counts_calls:
            self._group_wrote = cache is not None and cache.completed() != before
        else:  # unknown: take the group as written (never step it twice) and keep its state
            self._group_wrote = cache is not None
        if self._group_wrote and pending:
            self._commit(pending)

    #: The engine rule (``fastopt._fastopt.Rule``) this optimizer steps its groups with; a
    #: subclass with its own ``_step_group`` (LBFGS, Adafactor) leaves it empty.
    _rule = ""
    #: Whether the rule reads which state buffers were just created (SGD's first step).
    _needs_fresh = False
    #: Whether the optimizer takes float16 and bfloat16 parameters (every engine rule does:
    #: arithmetic in float32, state in the parameter's dtype, as torch's fused kernels).
    _takes_half = True
    #: Whether the optimizer runs on CuPy arrays (the CUDA backend has its rule; the ones with
    #: passes of their own say False, and refuse GPU parameters when they are added).
    _takes_device = True

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        """The rule's hyperparameters for ``group``, by the engine's names."""
        raise NotImplementedError

    def _rule_name(self, group: dict[str, Any]) -> str:
        return self._rule

    def _fill(self, group: dict[str, Any]) -> dict[str, float] | None:
        """Initial values of new state buffers, by name (default: zeros)."""
        return None

    def _rule_of(self, group: dict[str, Any]) -> tuple:
        """``(group, values, key, rule, names, counters, cache)`` for the group: its ``Rule``,
        the state buffers and counters it takes (``names``, counters first), what it was built
        from (None once a subclass renewed the rule in place), and the group's ``CheckCache``
        (the same object for the group's lifetime). Made again only when an option changed: a
        new number for the same rule (a scheduler's ``lr``) renews the Rule and keeps the
        rest; ``_step_group`` checks ``values`` itself, inline."""
        name, hyper = self._rule_name(group), self._hyper(group)
        # (a compensated step takes one buffer more, last: see ``_engine.step``)
        kahan = _MASTER_BUFFERS.get(group.get("master_weights"), ())
        entry = self._rules.get(id(group))
        old = entry if entry is not None and entry[0] is group else None
        if old is not None and old[2] == (name, hyper, kahan):
            return old
        # (This runs at every step whose options changed, a scheduler's lr at each step: the
        # checks below are C-level maps, not Python loops.)
        rule = None
        if old is not None and old[2] is not None and old[2][0] == name and old[2][2] == kahan \
                and tuple(old[2][1]) == tuple(hyper):
            # The same rule over the same names, in the same order: it takes the new numbers
            # (None if they change the buffers it takes), which skips parsing keywords.
            rule = old[3].renew(tuple(hyper.values()))
        if rule is not None and old is not None:
            names, counters, cache = old[4:]
        else:
            rule = _engine.Rule(name, **hyper)
            states, _, counter_names = rule.layout()
            if old is None and len(self._rules) > 4 * len(self.param_groups):
                live = {id(g) for g in self.param_groups}
                self._rules = {k: v for k, v in self._rules.items() if k in live}
            counters = tuple(counter_names)
            names = counters + tuple(states) + kahan
            cache = old[6] if old is not None else self._check_cache(group)
        values = list(group.values())
        # The fast check compares the group's values by identity, then by value; an option
        # held in a 0-d array (an lr a scheduler fills in place) cannot be told unchanged by
        # identity: such a group always compares its hyperparameters by value.
        fast = None if np.ndarray in set(map(type, values)) else values
        frozen = hyper
        if np.ndarray in set(map(type, hyper.values())):
            frozen = {k: float(v) if isinstance(v, np.ndarray) else v for k, v in hyper.items()}
        entry = self._rules[id(group)] = (group, fast, (name, frozen, kahan), rule, names, counters, cache)
        return entry

    def _step_group(
        self,
        group: dict[str, Any],
        params: list[Any],
        arrays: list[np.ndarray],
        grads: list[np.ndarray],
        check_only: bool,
        grad_scale: float = 1.0,
    ) -> None:
        """Updates the ``params`` of ``group`` (those with a gradient) in one kernel call,
        multiplying every gradient element by ``grad_scale`` as it is read. With
        ``check_only``, checks the arguments and writes nothing (no state either)."""
        entry = self._rules.get(id(group))
        # (the usual case inline: the group's values are those the rule was built from)
        if entry is None or entry[0] is not group or entry[1] is None or entry[1] != list(group.values()):
            entry = self._rule_of(group)
        _, _, _, rule, names, counters, cache = entry
        if _on_device(arrays[0]):
            return self._step_device(group, entry, params, arrays, grads, check_only, grad_scale)
        if "state_dtype" in group and group["state_dtype"] == "int8":
            return self._step_int8(group, params, arrays, grads, check_only, grad_scale, entry)
        bufs, created, fresh = self._state_lists(params, arrays, names, counters, group)
        k = len(counters)
        # (the compiled call directly: this runs once per group and step)
        lists, tail = _split_masters(names, bufs, group)
        args = (arrays, grads, lists[k:], lists[:k], fresh, grad_scale, check_only, cache, *tail)
        _engine._kernels.step(rule, *args)
        if check_only:
            return
        _count_rounding(group)
        if created:
            self._commit(created)
        elif (fresh is None and params is group["params"] and grads is self._last_own_grads and grad_scale == 1.0
              and not tail and (type(self)._step_group is Optimizer._step_group or self._repeats_calls)):
            # (not with stochastic rounding, whose key changes every step: ``tail`` has it)
            self._record_call(group, rule, args)

    #: Whether a subclass with a ``_step_group`` of its own lets the base's record its call for
    #: :meth:`_repeat_call` (it then says how the call's rule changes: :meth:`_call_rule`).
    _repeats_calls = False

    def _record_call(self, group: dict[str, Any], rule: Any, args: tuple) -> None:
        """Keeps a CPU group's kernel call (its rule and arguments: the group's own params,
        their own gradients, the state lists, the cache) for :meth:`_repeat_call`, with what
        it depends on: the Parameters' data and grad arrays (the epoch, which counts every
        replacement), the params list, the state and the group's values."""
        values = list(group.values())
        if np.ndarray in set(map(type, values)):
            # (an option held in a 0-d array, an lr a scheduler fills in place, compares equal
            # to itself by identity whatever its value: such a group always takes the full path)
            return
        self.__dict__.setdefault("_host_calls", {})[id(group)] = (*self._depends(group, values), rule, args)

    def _depends(self, group: dict[str, Any], values: list) -> tuple:
        """What a recorded step of ``group`` depends on, for :meth:`_unchanged`: the group,
        the Parameters' epoch (every replacement of a ``data`` or ``grad`` array counts), its
        params list's version, the state and its version, and the group's ``values``."""
        plist: Any = group["params"]
        state = self.state
        return group, _EPOCH[0], plist._version, state, state._version, values

    def _unchanged(self, recorded: tuple, group: dict[str, Any]) -> bool:
        """Whether nothing that ``recorded`` (starting with :meth:`_depends`'s) depends on
        changed since."""
        g, epoch, version, state, state_version, values = recorded[:6]
        if (g is not group or epoch != _EPOCH[0] or version != group["params"]._version or state is not self.state
                or state_version != state._version):
            return False
        try:
            return bool(values == list(group.values()))
        except (TypeError, ValueError):  # (an option whose == is not a bool: take the full path)
            return False

    def _repeat_call(self, call: tuple, group: dict[str, Any]) -> bool:
        """A CPU group's step as its last kernel call, when nothing the call depends on changed
        since (see :meth:`_record_call`): the same arrays, rule and cache, without gathering
        them again (the kernel still confirms the arrays against its cache). False, with
        nothing done, when something changed: the full path then runs (and records again)."""
        if not self._unchanged(call, group):
            return False
        rule, args = call[6:]
        rule = self._call_rule(group, rule)
        if rule is None:
            return False
        cache = args[7]
        before = cache.completed()
        self._pending = None
        try:
            _engine._kernels.step(rule, *args)
        except BaseException:
            self._settle(cache, before)
            raise
        self._called(group)
        return True

    def _call_rule(self, group: dict[str, Any], rule: Any) -> Any:
        """The rule for a repeated call (:meth:`_repeat_call`): the recorded one (the group's
        values are those it was built from), or a subclass's renewed one; None: take the full
        path."""
        return rule

    def _called(self, group: dict[str, Any]) -> None:
        """After a repeated call (:meth:`_repeat_call`): what a subclass's step does after its
        kernel (Schedule-Free: its counters)."""

    def _state_lists(self, params: list[Any], arrays: list[Any], names: tuple[str, ...], counters: tuple[str, ...],
                     group: dict[str, Any]) -> tuple[list, list, list[bool] | None]:
        """:meth:`_buffers`, and which tensors' first state buffer was just created (for rules
        that read it: SGD's first momentum, Schedule-Free's ``z``; None when none was)."""
        bufs, created = self._buffers(params, arrays, names, counters, group)
        fresh = None
        k = len(counters)
        if created and self._needs_fresh and len(names) > k:
            new = {id(b) for _, _, b in created}
            fresh = [id(b) in new for b in bufs[k]]
        return bufs, created, fresh

    def _step_device(self, group: dict[str, Any], entry: tuple, params: list[Any], arrays: list[Any],
                     grads: list[Any], check_only: bool, grad_scale: float) -> None:
        """:meth:`_step_group` for CuPy arrays: the group's launches through
        :class:`fastopt.backends.cuda.GroupLauncher` (its tables kept per group), with the
        step's device-side scale and skip flag (clipping, ``skip_if_nonfinite``) if any."""
        from ..backends import cuda  # noqa: PLC0415 (only for CuPy arrays)

        self._device_wrote = False
        # (the rule's numbers as the group gives them now: a subclass may renew its rule in
        # place, without the record in entry[2])
        name, hyper = self._rule_name(group), self._hyper(group)
        names, counters = entry[4], entry[5]
        if group.get("state_dtype") is not None or group.get("master_weights") is not None:
            raise ValueError("state_dtype and master_weights are not available for CuPy arrays (the CUDA kernels "
                             "keep state in the parameters' dtype)")
        if name not in cuda.RULES:
            raise NotImplementedError(f"{type(self).__name__} has no CUDA kernel yet (its rule {name!r}); "
                                      f"the GPU backend has {sorted(cuda.RULES)}")
        if hyper.get("cautious"):
            raise NotImplementedError("cautious=True is not available for CuPy arrays yet")
        launchers = self.__dict__.setdefault("_device_launchers", {})
        got = launchers.get(id(group))
        if got is None or got[0] is not group:
            got = launchers[id(group)] = (group, cuda.GroupLauncher(cuda.device(arrays[0])))
        launcher = got[1]
        bufs, created, fresh = self._state_lists(params, arrays, names, counters, group)
        k = len(counters)
        launcher.prepare(arrays, grads, bufs[k:], bufs[:k], fresh)
        if check_only:
            return
        scale, skip = self.__dict__.get("_device_step", (None, None))
        launcher.step(name, hyper, grad_scale, scale, skip)
        self._device_wrote = True  # (read by _settle, should an interrupt land here)
        if created:
            self._commit(created)
        fast = self.__dict__.setdefault("_device_fast", {})
        if (params is group["params"] and grads is self._last_own_grads and type(self)._step_group is Optimizer._step_group
                and not created and grad_scale == 1.0):
            # Nothing that decides this launch changes unless a Parameter's data or grad is
            # replaced (the epoch), the group's params list changes, the state changes, or an
            # option is replaced: until then a step is this launch with the group's numbers
            # (see _device_fast_ok), without gathering the arrays again.
            fast[id(group)] = (*self._depends(group, list(group.values())), launcher, name)
        else:
            fast.pop(id(group), None)

    def _device_fast_ok(self, fast: tuple, group: dict) -> bool:
        """Runs a device group's step through its launch as last time, if nothing it depends
        on changed (see :meth:`_step_device`); False (nothing done) otherwise."""
        if self.__dict__.get("_device_step", (None, None)) != (None, None) or not self._unchanged(fast, group):
            return False
        launcher, name = fast[6:]
        launcher.step(name, self._hyper(group))
        self._group_wrote = True
        return True
    def _step_int8(self, group: dict[str, Any], params: list[Any], arrays: list[np.ndarray], grads: list[np.ndarray],
                   check_only: bool, grad_scale: float, entry: tuple) -> None:
        """:meth:`_step_group` with ``state_dtype='int8'``: one kernel call over the tensors
        that keep 8-bit state (codes, with each buffer's absmax list as the kernel's
        ``scales``), one over those under :data:`INT8_MIN_SIZE` elements (float32 state)."""
        _, _, _, rule, names, counters, cache = entry
        k = len(counters)
        extra = _MASTER_BUFFERS.get(group.get("master_weights"), ())
        states = names[k:len(names) - len(extra)]
        big = [a.size >= INT8_MIN_SIZE for a in arrays]
        parts = []
        for quantized in (True, False):
            idx = [i for i, b in enumerate(big) if b == quantized]
            if idx:
                pick = (lambda xs: xs) if len(idx) == len(arrays) else (lambda xs: [xs[i] for i in idx])
                parts.append((quantized, pick(params), pick(arrays), pick(grads)))
        # A KeyboardInterrupt or SystemExit after the first call has written is held back
        # until the second has written too (as `_write_groups` holds one between groups):
        # the group is never left half-stepped.
        held: BaseException | None = None
        for n, (quantized, ps, arrs, gs) in enumerate(parts):
            part_cache = cache if n == 0 else self._check_cache(group, part=1)
            for _ in range(100):
                done = part_cache.completed()
                try:
                    self._int8_call(group, rule, names, counters, states, n, quantized, ps, arrs, gs, check_only,
                                    grad_scale, part_cache)
                    break
                except _ASYNC as e:
                    wrote = part_cache.completed() != done
                    if check_only or not self._kernel_counts_calls or (n == 0 and not wrote):
                        raise  # (nothing of the group written: `_write_groups` runs it again)
                    held = held or e
                    if wrote:
                        pending, self._pending = self._pending, None
                        if pending:
                            self._commit(pending)
                        break
                    # (the second call had not written: it runs again)
        if not check_only:
            _count_rounding(group)
        if held is not None:
            raise held

    def _int8_call(self, group: dict[str, Any], rule: Any, names: tuple[str, ...], counters: tuple[str, ...],
                   states: tuple[str, ...], n: int, quantized: bool, ps: list[Any], arrs: list[np.ndarray],
                   gs: list[np.ndarray], check_only: bool, grad_scale: float, cache: Any) -> None:
        """One of :meth:`_step_int8`'s kernel calls (``n``: which), with the state it creates
        committed once the kernel has written."""
        k = len(counters)
        wanted = names + tuple(x + ABSMAX for x in states) if quantized else names
        bufs, created = self._buffers(ps, arrs, wanted, counters, group)
        fresh = None
        if created and self._needs_fresh and len(names) > k:
            new = {id(b) for _, _, b in created}
            fresh = [id(b) in new for b in bufs[k]]
        scales = bufs[len(names):] if quantized else None
        lists, tail = _split_masters(names, bufs[:len(names)], group)
        low, full, key = (tail + (None, None, None))[:3]
        if key is not None and n:  # (the second call's tensors: other stochastic rounding keys)
            key = (key + 0x9E3779B97F4A7C15) % 2**64
        _engine._kernels.step(rule, arrs, gs, lists[k:], lists[:k], fresh, grad_scale, check_only, cache,
                              low, full, key, scales)
        if created and not check_only:
            self._commit(created)

    def _buffers(
        self,
        params: list[Any],
        arrays: list[np.ndarray],
        names: tuple[str, ...],
        counters: tuple[str, ...],
        group: dict[str, Any],
    ) -> tuple[list[list[np.ndarray]], list[tuple[Any, str, np.ndarray]]]:
        """For each name, the list of every param's state buffer of that name, and the
        buffers that had to be created (``counters`` such as ``'step'``: 0-d float32 arrays, as
        torch's; others: arrays of the param's shape and dtype; zeros or ``self._fill(group)``'s
        value). Created buffers are not in the state yet: pass them to :meth:`_commit` once the
        kernel has succeeded, so a failed step leaves no trace."""
        state = self.state
        # Fastest path: the same params (by identity) and no change to the state since the
        # lists were gathered (every change goes through `_State`/`_ParamState`).
        # A group's own params list (`_ParamList`) counts its changes; a filtered list (some
        # params without a gradient) is not cached.
        # Keyed by the params list (each group has its own lists), then checked for the names.
        tracked = params if type(params) is _ParamList else None
        cached = self._buffer_lists.get(id(params)) if tracked is not None else None
        if (cached is not None and cached[0] is params and cached[1] == params._version and cached[2] is state
                and cached[3] == state._version and cached[4] == names):
            return cached[5], []
        items = state._items
        states: list[Any] = [items.get(id(p)) for p in params]
        try:
            # Fast path: every param already has every buffer.
            lists = [[st[1][name] for st in states] for name in names]
            if tracked is not None:
                # Keeps `params` alive with the entry, so its id cannot be reused.
                if len(self._buffer_lists) > 4 * len(self.param_groups) + 8:
                    self._buffer_lists.clear()
                self._buffer_lists[id(params)] = (params, tracked._version, state, state._version, names, lists)
            return lists, []
        except (TypeError, KeyError):
            pass
        out: list[list[np.ndarray]] = [[] for _ in names]
        created = []
        fill = self._fill(group)
        for p, a, st in zip(params, arrays, states):
            d = st[1] if st is not None else {}
            absmax: dict[str, np.ndarray] = {}
            for k, name in enumerate(names):
                b = d.get(name)
                if b is None:
                    if name in counters:
                        b = namespace(a).full((), (fill or {}).get(name, 0.0), np.float32)
                    elif name is MASTER:  # (the parameter's exact float32 value)
                        b = a.astype(np.float32)
                    elif _quantized(group, a) and (name.endswith(ABSMAX) or name + ABSMAX in names):
                        # 8-bit codes and their absmax, made together (the codes' name comes first)
                        base = name[:-len(ABSMAX)] if name.endswith(ABSMAX) else name
                        if name.endswith(ABSMAX):
                            if name not in absmax:
                                raise ValueError(f"the state of a parameter holds 8-bit codes {base!r} without "
                                                 f"their absmax {name!r}")
                            b = absmax.pop(name)
                        else:
                            if name + ABSMAX in d:
                                raise ValueError(f"the state of a parameter holds the absmax {name + ABSMAX!r} "
                                                 f"without its 8-bit codes {name!r}")
                            value = fill[name] if fill and name in fill else 0.0
                            b, absmax[name + ABSMAX] = _filled_codes(a.shape, value, name in UNSIGNED_STATES)
                    else:
                        b = self._state_array(p, name, a, fill[name] if fill and name in fill else 0.0,
                                              _LOW_DTYPE if name is LOW_BITS else self._state_dtype(group, a))
                    created.append((p, name, b))
                out[k].append(b)
        self._pending = created
        return out, created

    def _state_array(self, p: Any, name: str, a: np.ndarray, value: float, dtype: np.dtype) -> np.ndarray:
        """A new state buffer ``name`` for parameter ``p`` (array ``a``): ``a``'s shape, of
        ``dtype`` (the group's state dtype), every element ``value``. (The sharded optimizer's
        local optimizer replaces it to carve the buffers out of one flat array per name.)"""
        xp = namespace(a)
        return xp.full(a.shape, value, dtype) if value else xp.zeros(a.shape, dtype)

    def _check_cache(self, group: dict, part: int = 0) -> Any:
        """The kernel's record of what it checked for this group last time (it holds the
        group's arrays until the next step re-checks them); ``part`` 1 for a group's second
        kernel call (``state_dtype='int8'``: its tensors with float32 state)."""
        key: Any = id(group) if part == 0 else (id(group), part)
        entry = self._check_caches.get(key)
        if entry is None or entry[0] is not group:
            if len(self._check_caches) > 4 * len(self.param_groups):
                live = {id(g) for g in self.param_groups}
                self._check_caches = {k: v for k, v in self._check_caches.items()
                                      if (k[0] if isinstance(k, tuple) else k) in live}
            entry = self._check_caches[key] = (group, _fastopt.CheckCache())
        return entry[1]

    def _commit(self, created: list[tuple[Any, str, np.ndarray]]) -> None:
        for p, name, b in created:
            self.state[p][name] = b
        self._pending = None  # (only once all is in: committing again is harmless)

    # -- state dict -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``{'state': {index: {...}}, 'param_groups': [{..., 'params': [index]}]}``.

        Parameters are numbered in group order; every buffer is a copy. Named parameters add
        ``param_names`` to their group, as torch.
        """
        for hook in list(self._state_dict_pre_hooks.values()):
            hook(self)
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {
            index[id(p)]: {k: _copy_value(v) for k, v in s.items()}
            for p, s in self.state.items()
            if id(p) in index
        }
        result = {"state": state, "param_groups": groups}
        for hook in list(self._state_dict_post_hooks.values()):
            out = hook(self, result)
            if out is not None:
                result = out
        return result

    @locked
    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = False) -> None:
        """Loads a ``state_dict()``, by position as torch does: floating buffers are copied and
        cast to their parameter's dtype, ``step`` counters are kept as float32, options are
        checked. A torch optimizer's state dict loads too (its tensors are converted).

        ``strict=True`` (beyond torch) also checks that parameter names (when both sides have
        them), buffer shapes and buffer dtypes match, and names the first mismatch instead of
        casting. Nothing changes if it raises.
        """
        state_dict = self._to_load(state_dict)
        groups = self.param_groups
        if not isinstance(state_dict["state"], dict):
            raise TypeError(f"state_dict['state'] must be a dict (index -> state), got {type(state_dict['state']).__name__}")
        saved_groups, id_map = self._saved_groups(state_dict["param_groups"])
        new_groups = []
        for g, saved in zip(groups, saved_groups):
            saved["params"] = g["params"]
            for name, default in self.defaults.items():
                saved.setdefault(name, g.get(name, default))
            self._check_options(saved)
            new_groups.append(saved)
        # Each parameter's state dtype, as its loaded group says.
        dtypes = {id(p): self._state_dtype(g, _array_of(p)) for g in new_groups for p in g["params"]}
        if strict:
            self._check_strict(state_dict["state"], saved_groups, id_map, dtypes)
        new_state = _State()
        for k, v in state_dict["state"].items():
            if k not in id_map:
                raise ValueError(f"state_dict['state'] has an entry for parameter {k!r}, which no group lists")
            p = id_map[k]
            if not isinstance(v, dict):
                raise TypeError(f"state_dict['state'][{k!r}] must be a dict of state values, got {type(v).__name__}")
            if "step" in v:
                _check_step(k, v["step"])
            if dtypes[id(p)] == _CODES:
                new_state[p] = _load_quantized(p, k, v, self._counters)
                continue
            for key, val in v.items():
                if key.endswith(ABSMAX) or (getattr(val, "dtype", None) == _CODES and key + ABSMAX in v):
                    raise TypeError(f"state_dict['state'][{k!r}][{key!r}] is 8-bit state (saved with "
                                    f"state_dtype='int8'), but this optimizer keeps {dtypes[id(p)]} state for that "
                                    "parameter: build it with state_dtype='int8' to load this state")
            new_state[p] = {key: _load_value(p, key, val, key in self._counters, dtypes[id(p)])
                            for key, val in v.items()}
            if is_device_array(_array_of(p)):  # (torch moves loaded state to the parameter's device)
                new_state[p] = {key: to_device_like(_array_of(p), val) for key, val in new_state[p].items()}
        self.state = new_state
        self.param_groups = new_groups
        for hook in list(self._load_state_dict_post_hooks.values()):
            hook(self)

    def _to_load(self, state_dict: Any) -> dict[str, Any]:
        """A copy of ``state_dict`` (checked to have its two entries) after the load pre-hooks."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups'")
        state_dict = dict(state_dict)
        for hook in list(self._load_state_dict_pre_hooks.values()):
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out
        return state_dict

    def _saved_groups(self, saved: Any) -> tuple[list[dict[str, Any]], dict[Any, Any]]:
        """A state dict's ``param_groups`` checked against this optimizer's (as many groups, as
        many params in each), as plain copies (:func:`_plain_group`), and the map from the
        saved parameter indices to this optimizer's parameters."""
        if not isinstance(saved, (list, tuple)):
            raise TypeError(f"state_dict['param_groups'] must be a list, got {type(saved).__name__}")
        for gi, g in enumerate(saved):
            if not isinstance(g, dict) or not isinstance(g.get("params"), (list, tuple)):
                raise TypeError(f"state_dict['param_groups'][{gi}] must be a dict with a 'params' list, got {g!r:.60}")
        saved_groups = [_plain_group(g) for g in saved]
        groups = self.param_groups
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
            )
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))
        return saved_groups, id_map

    def _check_strict(self, saved_state: dict, saved_groups: list[dict], id_map: dict,
                      dtypes: dict | None = None) -> None:
        """``load_state_dict(strict=True)``'s checks; ``dtypes``: each parameter's state dtype
        by ``id`` (by default its own dtype)."""
        for gi, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            mine, theirs = g.get("param_names"), s.get("param_names")
            if mine is not None and theirs is not None:
                for i, (a, b) in enumerate(zip(mine, theirs)):
                    if a != b:
                        raise ValueError(
                            f"param_groups[{gi}]['param_names'][{i}]: the state dict has {b!r}, the optimizer {a!r}"
                        )
            elif (mine is None) != (theirs is None):
                raise ValueError(f"param_groups[{gi}]: only one side names its parameters (strict=True)")
        for k, entry in saved_state.items():
            p = id_map.get(k)
            if p is None:
                continue
            a = _array_of(p)
            for key, value in entry.items():
                if key == "step" or value is None or not hasattr(value, "__array__"):
                    continue
                v = np.asarray(value)
                if key.endswith(ABSMAX):
                    if v.dtype != np.float32 or v.size != _blocks(a.size):
                        raise ValueError(f"state[{k}][{key!r}] must hold {_blocks(a.size)} float32 values "
                                         f"(one per block of {INT8_BLOCK}), got dtype {v.dtype} size {v.size}")
                    continue
                if v.shape != a.shape:
                    raise ValueError(f"state[{k}][{key!r}] has shape {v.shape} but its parameter has shape {a.shape}")
                want = _OWN_DTYPES[key][0] if key in _OWN_DTYPES else a.dtype if dtypes is None else dtypes[id(p)]
                if v.dtype != want:
                    whose = "its parameter has" if want == a.dtype else "its group's state_dtype is"
                    raise ValueError(f"state[{k}][{key!r}] has dtype {v.dtype} but {whose} dtype {want}")

    # -- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        lines = [self.__class__.__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
