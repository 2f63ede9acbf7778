"""fastopt on CuPy arrays: the CUDA kernels of ``kernels.cu`` (shipped in the package,
compiled on first use by NVRTC through ``cupy.RawModule`` and cached by CuPy), launched the
way torch's multi-tensor apply launches its fused optimizers.

An optimizer step over a param group is one launch per dtype over all its tensors: each block
takes a chunk of :data:`CHUNK` elements of one tensor, found through a block-to-(tensor,
chunk) table, and the last block of each tensor to finish advances its step counters.
The tensor table and the block table are built once and kept in device memory; they are
built again only when a pointer, a size or a tensor's first-step flag changes. Counters live
on the device (0-d float32 CuPy arrays, torch's ``step``), and the per-step constants that
depend on them are computed on the device, so a step never waits for the GPU. Work goes on
CuPy's current stream.

The same kernels also compile as C++ for the host (:class:`HostEmulation`): the test suite
runs their arithmetic on the CPU against fastopt's CPU core, block by block with one thread
per block, on machines that have no GPU.

>>> from fastopt.backends import cuda
>>> cuda.CHUNK, cuda.BLOCK
(65536, 512)
>>> sorted(cuda.RULES)[:3]
['adabelief', 'adabound', 'adadelta']
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from operator import is_
from typing import Any, Callable, Sequence

import numpy as np

from . import namespace

__all__ = ["CHUNK", "BLOCK", "RULES", "TENSOR_DTYPE", "available", "require", "source", "CupyDevice", "HostEmulation",
           "device", "block_table", "GroupLauncher", "NormLauncher", "total_norm", "clip_grad_norm_", "scale_",
           "act_forward", "act_backward", "softmax", "softmax_backward", "cross_entropy", "cross_entropy_backward",
           "bn_stats", "bn_normalize", "bn_train_forward", "bn_backward_sums", "bn_backward_input",
           "bn_train_backward"]

#: Elements per block of a multi-tensor launch (torch's multi-tensor apply uses the same).
CHUNK = 65536
#: Threads per block.
BLOCK = 512
MAX_STATES = 4
MAX_COUNTERS = 3
NUM_HYPER = 12

#: The optimizer rules the CUDA kernels implement, with their hyperparameters in the order the
#: kernels take them (the CPU core's names).
RULES: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay", "cautious"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "eps", "maximize"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "adamax": ("lr", "beta1", "beta2", "eps", "weight_decay", "maximize"),
    "adadelta": ("lr", "rho", "eps", "weight_decay", "maximize"),
    "nadam": ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay", "maximize"),
    "radam": ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "adabound": ("lr", "beta1", "beta2", "eps", "weight_decay", "final_lr", "gamma", "decoupled_weight_decay", "maximize"),
    "amsbound": ("lr", "beta1", "beta2", "eps", "weight_decay", "final_lr", "gamma", "decoupled_weight_decay", "maximize"),
    "lion": ("lr", "beta1", "beta2", "weight_decay", "maximize", "cautious"),
    "adabelief": ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay", "fixed_decay", "amsgrad",
                  "rectify", "degenerated_to_sgd", "maximize"),
    "asgd": ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize"),
    "rprop": ("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize"),
    "adopt": ("lr", "beta1", "beta2", "eps", "weight_decay", "decouple", "clip", "clip_power", "maximize"),
    "ademamix": ("lr", "beta1", "beta2", "beta3", "alpha", "beta3_warmup", "alpha_warmup", "eps", "weight_decay",
                 "maximize"),
    "schedulefree": ("lr", "beta1", "beta2", "eps", "weight_decay", "ckp1", "bc2", "adam", "maximize"),
}

#: One row of the tensor table (``struct TensorRef`` of ``kernels.cu``: 8-byte fields).
TENSOR_DTYPE = np.dtype([("param", "<u8"), ("grad", "<u8"), ("state", "<u8", (MAX_STATES,)),
                         ("counters", "<u8", (MAX_COUNTERS,)), ("n", "<i8"), ("flags", "<i8")])

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_ACT_OPS = {"relu": 0, "leaky_relu": 1, "elu": 2, "sigmoid": 3, "tanh": 4, "gelu": 5, "gelu_tanh": 6, "silu": 7,
            "softplus": 8}
_NULL = np.uint64(0)


def source(rule: str | None = None) -> str:
    """The CUDA C source of the kernels, as shipped in the package; with ``rule``, the source
    of a module holding only that optimizer rule's kernels (and the shared ones: norms,
    clipping, activations); with ``rule=""``, only the shared ones."""
    text = resources.files("fastopt.backends").joinpath("kernels.cu").read_text(encoding="utf-8")
    if rule is None:
        return text
    return "#define FO_SELECT\n" + (f"#define FO_WANT_{rule}\n" if rule else "") + text


def _rule_of_kernel(name: str) -> str:
    """The rule whose module holds kernel ``name`` ("" for the shared kernels)."""
    if name.startswith("fo_step_"):
        return name[len("fo_step_"):].rsplit("_", 1)[0]
    return ""


def _cupy() -> Any:
    try:
        import cupy  # noqa: PLC0415 (optional: only for CuPy arrays)
    except ImportError as e:
        raise ImportError("fastopt's GPU backend needs CuPy: pip install 'fastopt[cuda]' "
                          f"(cupy-cuda12x or cupy-cuda13x) ({e})") from None
    return cupy


def available() -> bool:
    """Whether CuPy is installed and sees at least one CUDA GPU."""
    try:
        cp = _cupy()
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # noqa: BLE001 (no CuPy, no driver, no device: all mean "not available")
        return False


_found_gpu: list = []  # (CuPy, once it has seen a GPU: later calls skip the device count)


def require() -> Any:
    """CuPy, or a clear error saying what is missing (CuPy, or a GPU it can use)."""
    if _found_gpu:
        return _found_gpu[0]
    cp = _cupy()
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:  # noqa: BLE001 (CuPy's error types differ by version)
        raise RuntimeError(f"CuPy is installed but sees no CUDA GPU: {e}") from None
    if count == 0:
        raise RuntimeError("CuPy is installed but sees no CUDA GPU")
    _found_gpu.append(cp)
    return cp


# ------------------------------------------------------------------------------ devices

class CupyDevice:
    """Runs the kernels on the current CUDA device through ``cupy.RawModule``."""

    #: NVRTC options: C++17, and no contraction of a * b + c into an FMA except where the
    #: source asks for one (``fma()``), so results match the CPU core's FMA levels.
    OPTIONS = ("--std=c++17", "--fmad=false")

    def __init__(self) -> None:
        self.xp = require()
        #: The GPU this device's modules are loaded on (the current one when it is made).
        self.id = int(self.xp.cuda.Device().id)
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}

    def function(self, name: str) -> Callable[[int, int, tuple], None]:
        f = self._functions.get(name)
        if f is None:
            # One small module per rule, compiled on first use (NVRTC takes about a second
            # per rule; CuPy caches the binary on disk for later processes).
            rule = _rule_of_kernel(name)
            module = self._modules.get(rule)
            if module is None:
                module = self._modules[rule] = self.xp.RawModule(code=source(rule), options=self.OPTIONS)
            kernel = module.get_function(name)
            runtime, dev_id, device_of_id = self.xp.cuda.runtime, self.id, self.xp.cuda.Device

            def f(grid: int, block: int, args: tuple, kernel: Any = kernel) -> None:
                if runtime.getDevice() == dev_id:
                    kernel((grid,), (block,), args)
                else:  # (the arrays' GPU is not the current one: launch there)
                    with device_of_id(dev_id):
                        kernel((grid,), (block,), args)

            self._functions[name] = f
        return f

    @staticmethod
    def ptr(a: Any) -> int:
        return int(a.data.ptr)

    def upload(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype)


class HostEmulation:
    """The same kernels compiled for the host by a C++ compiler and run one thread per block:
    NumPy arrays stand in for device memory. For testing the kernels' arithmetic and the
    launch tables without a GPU (not for speed)."""

    def __init__(self, compiler: str | None = None) -> None:
        self.xp = np
        self.id = None  # (host memory: no GPU to check arrays against)
        cxx = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        if cxx is None:
            raise RuntimeError("HostEmulation needs a C++ compiler (g++ or $CXX)")
        src = source()
        digest = hashlib.sha256((src + cxx).encode()).hexdigest()[:16]
        cache = os.path.join(tempfile.gettempdir(), f"fastopt-emulation-{os.getuid() if hasattr(os, 'getuid') else 0}")
        os.makedirs(cache, exist_ok=True)
        lib = os.path.join(cache, f"kernels-{digest}.so")
        if not os.path.exists(lib):
            cu = os.path.join(cache, f"kernels-{digest}.cpp")
            with open(cu, "w", encoding="utf-8") as f:
                f.write(src)
            tmp = f"{lib}.{os.getpid()}.tmp"
            # -ffp-contract=off: as --fmad=false on the device, only the source's fma() fuse.
            subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared", cu, "-o", tmp],
                           check=True, capture_output=True)
            os.replace(tmp, lib)
        self._lib = ctypes.CDLL(lib)
        self._lib.fo_set_block.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self._functions: dict[str, Any] = {}

    def function(self, name: str) -> Callable[[int, int, tuple], None]:
        f = self._functions.get(name)
        if f is None:
            kernel = getattr(self._lib, name)
            kernel.restype = None
            set_block = self._lib.fo_set_block

            def f(grid: int, block: int, args: tuple, kernel: Any = kernel) -> None:
                cargs = [_c_arg(a) for a in args]
                for b in range(grid):
                    set_block(b, grid)
                    kernel(*cargs)

            self._functions[name] = f
        return f

    @staticmethod
    def ptr(a: np.ndarray) -> int:
        return int(a.ctypes.data)

    def upload(self, a: np.ndarray) -> np.ndarray:
        return np.array(a, copy=True)

    def empty(self, shape: Any, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)


def _c_arg(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.float64):
        return ctypes.c_double(float(a))
    if isinstance(a, np.int32):
        return ctypes.c_int(int(a))
    if isinstance(a, np.int64):
        return ctypes.c_longlong(int(a))
    if isinstance(a, np.uint64):
        return ctypes.c_void_p(int(a) or None)
    raise TypeError(f"no C form for a kernel argument of type {type(a).__name__}")


_devices: dict[int, CupyDevice] = {}
_devices_lock = threading.Lock()


def device(x: Any = None) -> CupyDevice:
    """The :class:`CupyDevice` of ``x``'s GPU (the current one for None), made once per GPU
    (the module compiles on first use; CuPy caches the binary on disk)."""
    cp = _cupy()
    dev = int(x.device.id) if x is not None else int(cp.cuda.Device().id)
    d = _devices.get(dev)
    if d is None:
        with _devices_lock, cp.cuda.Device(dev):
            d = _devices.get(dev)
            if d is None:
                d = _devices[dev] = CupyDevice()
    return d


def _suffix(x: Any) -> str:
    return _SUFFIX[np.dtype(x.dtype)]


def _dev(x: Any, dev: Any) -> Any:
    """``dev``, or the :class:`CupyDevice` of ``x``'s GPU."""
    return dev or device(x)


def _ptr_or_null(a: Any) -> Any:
    """A kernel's optional pointer argument: the array, or a null pointer for None."""
    return _NULL if a is None else a


# ------------------------------------------------------------------------- launch tables

def block_table(sizes: Sequence[int], chunk: int = CHUNK) -> np.ndarray:
    """The block-to-(tensor, chunk) table of a multi-tensor launch over tensors of ``sizes``
    elements: one int32 row per block, tensors in order, each tensor's chunks in order (an
    empty tensor has one block, which advances its step counters).

    >>> from fastopt.backends.cuda import block_table
    >>> block_table([3, 0, 65537]).tolist()
    [[0, 0], [1, 0], [2, 0], [2, 1]]
    """
    n = np.asarray(sizes, np.int64)
    chunks = np.maximum((n + chunk - 1) // chunk, 1)
    tensor = np.repeat(np.arange(len(n), dtype=np.int64), chunks)
    first = np.cumsum(chunks) - chunks
    within = np.arange(int(chunks.sum()), dtype=np.int64) - np.repeat(first, chunks)
    if len(tensor) and (tensor.max() >= 2**31 or within.max() >= 2**31):
        raise ValueError("too many tensors or chunks for one launch")
    return np.stack([tensor, within], axis=1).astype(np.int32).reshape(-1, 2)


def _span(dev: Any, a: Any) -> tuple[int, int]:
    lo = dev.ptr(a)
    return lo, lo + a.nbytes


def _check_array(dev: Any, a: Any, what: str, dtype: np.dtype, size: int, written: bool) -> None:
    if type(a) is not type_of(dev):
        raise TypeError(f"{what} is {type(a).__name__}, but the parameters are {type_of(dev).__name__}s: "
                        "a step takes one kind of array")
    if a.dtype != dtype:
        raise TypeError(f"{what} has dtype {a.dtype}, expected {dtype}")
    if a.size != size:
        raise ValueError(f"{what} has {a.size} elements, expected {size}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    if dev.id is not None and a.device.id != dev.id:
        raise ValueError(f"{what} is on GPU {a.device.id}, but the group's parameters are on GPU {dev.id}")
    if written and hasattr(a.flags, "writeable") and not a.flags.writeable:
        raise ValueError(f"{what} is read-only but is updated in place")


def type_of(dev: Any) -> Any:
    return np.ndarray if dev.xp is np else dev.xp.ndarray


def _check_disjoint(spans: list[tuple[int, int, str]], reads: list[tuple[int, int, str]]) -> None:
    """Raises ValueError if two written buffers, or a written and a read one, overlap."""
    every = sorted([(lo, hi, what, True) for lo, hi, what in spans if hi > lo]
                   + [(lo, hi, what, False) for lo, hi, what in reads if hi > lo])
    open_: list[tuple[int, int, str, bool]] = []
    for lo, hi, what, written in every:
        open_ = [t for t in open_ if t[1] > lo]
        for _, _, other, w in open_:
            if written or w:
                raise ValueError(f"{other} and {what} share memory: a step would read or write it twice")
        open_.append((lo, hi, what, written))


class _Plan:
    """One launch's tables on the device."""

    __slots__ = ("table", "rows", "blocks", "done", "nblocks", "ntensors", "suffix", "keep")

    def __init__(self, dev: Any, rows: np.ndarray, sizes: list[int], suffix: str, keep: tuple) -> None:
        blocks = block_table(sizes)
        self.rows = rows  # (the host copy, patched when only the gradients change)
        self.table = dev.upload(rows)
        self.blocks = dev.upload(blocks)
        # each tensor's count of finished blocks (the step kernel's last block of a tensor
        # writes its counters and resets the count)
        self.done = dev.upload(np.zeros(max(len(sizes), 1), np.int32))
        self.nblocks = int(blocks.shape[0])
        self.ntensors = int(rows.shape[0])
        self.suffix = suffix
        self.keep = keep  # the arrays whose pointers the table holds, alive as long as it is


def _rows(dev: Any, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Sequence[Any]],
          counters: Sequence[Sequence[Any]], fresh: Sequence[bool] | None) -> np.ndarray:
    rows = np.zeros(len(params), TENSOR_DTYPE)
    ptr = dev.ptr
    rows["param"] = [ptr(a) for a in params]
    rows["grad"] = [ptr(g) for g in grads]
    for k, lst in enumerate(states):
        rows["state"][:, k] = [ptr(s) for s in lst]
    for k, lst in enumerate(counters):
        rows["counters"][:, k] = [ptr(c) for c in lst]
    rows["n"] = [a.size for a in params]
    if fresh is not None:
        rows["flags"] = np.asarray(fresh, np.int64)
    return rows


class GroupLauncher:
    """One param group's launches: checks its arrays and builds the tables the first time
    (and whenever an array changes), then launches each step. ``dev`` is a
    :class:`CupyDevice` (or :class:`HostEmulation` in tests).

    The host emulation runs the same launches on NumPy arrays (no GPU needed):

    >>> import numpy as np
    >>> from fastopt.backends import cuda
    >>> run = cuda.GroupLauncher(cuda.HostEmulation())
    >>> p, g = np.ones(5, np.float32), np.full(5, 2.0, np.float32)
    >>> run.prepare([p], [g], [], [])
    >>> run.step("sgd", dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False))
    >>> p
    array([0.8, 0.8, 0.8, 0.8, 0.8], dtype=float32)
    """

    def __init__(self, dev: Any) -> None:
        self.dev = dev
        self._last: tuple | None = None
        self._plans: list[tuple[_Plan, np.ndarray]] = []
        self._meta: list[tuple[np.dtype, int]] = []
        self._nbytes = self._written_lo = self._written_hi = np.zeros(0, np.int64)
        self._hkey: tuple | None = None
        self._hargs: list = []

    def _compare(self, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Sequence[Any]],
                 counters: Sequence[Sequence[Any]], fresh: Sequence[bool] | None) -> int:
        """0: the arrays of the last tables; 1: the same but for some gradient arrays; 2: other
        arrays (the tables are built again)."""
        last = self._last
        if last is None:
            return 2
        lp, lg, ls, lc, lf = last
        if len(lp) != len(params) or not all(map(is_, lp, params)) or len(lg) != len(grads):
            return 2
        if len(ls) != len(states) or len(lc) != len(counters):
            return 2
        for lst, now in ((ls, states), (lc, counters)):
            for k, (a, b) in enumerate(zip(lst, now)):
                if a is not b:
                    if len(a) != len(b) or not all(map(is_, a, b)):
                        return 2
                    lst[k] = b  # (the same arrays in a new list: identity will do next time)
        if lf != (tuple(fresh) if fresh is not None else None):
            return 2
        return 0 if all(map(is_, lg, grads)) else 1

    def _new_grads(self, grads: Sequence[Any]) -> bool:
        """Takes new gradient arrays into the tables (the usual step after a backward pass that
        made new ones): each is checked for kind, dtype, size and contiguity, and against every
        written buffer for overlap (a binary search in their sorted spans), then the tables'
        gradient pointers are patched and uploaded. False (nothing changed) when a check fails:
        the full build then says what is wrong."""
        kind, dev_id = type_of(self.dev), self.dev.id
        try:
            for g, (dt, n) in zip(grads, self._meta):
                if type(g) is not kind or g.dtype != dt or g.size != n or not g.flags.c_contiguous:
                    return False
                if dev_id is not None and g.device.id != dev_id:
                    return False
        except AttributeError:
            return False
        lo = np.fromiter(map(self.dev.ptr, grads), np.int64, len(grads))
        hi = lo + self._nbytes
        k = np.searchsorted(self._written_lo, hi, side="left") - 1  # the last written span starting below hi
        inside = k >= 0
        hit = np.zeros(len(grads), bool)
        hit[inside] = self._written_hi[k[inside]] > lo[inside]
        if (hit & (self._nbytes > 0)).any():
            return False
        for plan, idx in self._plans:
            plan.rows["grad"] = lo[idx].astype(np.uint64)
            plan.table = self.dev.upload(plan.rows)
            params, _, states, counters = plan.keep
            plan.keep = (params, [grads[i] for i in idx], states, counters)
        lp, _, ls, lc, lf = self._last  # type: ignore[misc]
        self._last = (lp, list(grads), ls, lc, lf)
        return True

    def prepare(self, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Sequence[Any]],
                counters: Sequence[Sequence[Any]], fresh: Sequence[bool] | None = None) -> None:
        """Checks the arrays (nothing is written) and builds the tables, one plan per dtype."""
        changed = self._compare(params, grads, states, counters, fresh)
        if changed == 0 or (changed == 1 and self._new_grads(grads)):
            return
        dev = self.dev
        n = len(params)
        if len(grads) != n or any(len(s) != n for s in states) or any(len(c) != n for c in counters):
            raise ValueError("params, grads, states and counters must have one entry per parameter")
        if len(states) > MAX_STATES or len(counters) > MAX_COUNTERS:
            raise ValueError("too many state buffers or counters for the CUDA kernels")
        written: list[tuple[int, int, str]] = []
        read: list[tuple[int, int, str]] = []
        by_dtype: dict[np.dtype, list[int]] = {}
        for i, a in enumerate(params):
            what = f"params[{i}]"
            if type(a) is not type_of(dev):
                raise TypeError(f"{what} is {type(a).__name__}, expected {type_of(dev).__name__}")
            if a.dtype not in _SUFFIX:
                raise TypeError(f"{what} has dtype {a.dtype}: the CUDA kernels take float32 and float64")
            _check_array(dev, a, what, a.dtype, a.size, True)
            _check_array(dev, grads[i], f"grads[{i}]", a.dtype, a.size, False)
            written.append((*_span(dev, a), what))
            read.append((*_span(dev, grads[i]), f"grads[{i}]"))
            for k, lst in enumerate(states):
                _check_array(dev, lst[i], f"state buffer {k} of params[{i}]", a.dtype, a.size, True)
                written.append((*_span(dev, lst[i]), f"state buffer {k} of params[{i}]"))
            for k, lst in enumerate(counters):
                _check_array(dev, lst[i], f"counter {k} of params[{i}]", np.dtype(np.float32), 1, True)
                written.append((*_span(dev, lst[i]), f"counter {k} of params[{i}]"))
            by_dtype.setdefault(a.dtype, []).append(i)
        _check_disjoint(written, read)
        plans = []
        for dt, idx in by_dtype.items():
            pick = (lambda lst: [lst[i] for i in idx])
            rows = _rows(dev, pick(params), pick(grads), [pick(s) for s in states], [pick(c) for c in counters],
                         None if fresh is None else pick(list(fresh)))
            keep = (pick(params), pick(grads), [pick(s) for s in states], [pick(c) for c in counters])
            plans.append((_Plan(dev, rows, [params[i].size for i in idx], _SUFFIX[dt], keep), np.asarray(idx)))
        self._plans = plans
        # what _new_grads checks new gradients against: each param's dtype and size, and the
        # written buffers' byte spans, sorted (they are disjoint: checked above)
        self._meta = [(a.dtype, a.size) for a in params]
        self._nbytes = np.fromiter((a.nbytes for a in params), np.int64, n)
        spans = sorted((lo, hi) for lo, hi, _ in written if hi > lo)
        self._written_lo = np.array([lo for lo, _ in spans], np.int64)
        self._written_hi = np.array([hi for _, hi in spans], np.int64)
        # (the state and counter lists themselves: an optimizer hands over the same list objects
        # while its state is unchanged, and makes new ones when it changes, so identity is
        # checked first; params and grads lists are new at every step and compared by element)
        self._last = (list(params), list(grads), list(states), list(counters),
                      tuple(fresh) if fresh is not None else None)

    def step(self, rule: str, hyper: dict[str, Any], grad_scale: float = 1.0, device_scale: Any = None,
             found_inf: Any = None) -> None:
        """Launches rule ``rule`` over the prepared arrays, one launch per dtype (which also
        advances the step counters). ``device_scale`` (a float64 device scalar, such as a
        clipping coefficient) multiplies ``grad_scale``; ``found_inf`` (a float32 device scalar,
        non-zero to skip) makes the whole step a no-op on the device, counters included."""
        key = (rule, *map(float, hyper.values()))  # (by value: an lr held in a 0-d array changes in place)
        if key == self._hkey:
            h = self._hargs  # (the same numbers as the last step: a scheduler's lr changes them)
        else:
            names = RULES.get(rule)
            if names is None:
                raise NotImplementedError(f"the CUDA backend has no kernel for the {rule!r} rule (it has: "
                                          f"{sorted(RULES)})")
            h = [np.float64(float(hyper[k])) for k in names] + [np.float64(0.0)] * (NUM_HYPER - len(names))
            self._hkey, self._hargs = key, h
        ds, fi = _ptr_or_null(device_scale), _ptr_or_null(found_inf)
        fn = self.dev.function
        for plan, _ in self._plans:
            if plan.nblocks:
                fn(f"fo_step_{rule}_{plan.suffix}")(plan.nblocks, BLOCK, (plan.table, plan.blocks, plan.done, ds, fi,
                                                                         np.float64(grad_scale), *h))


# ------------------------------------------------------------------------ norms, clipping

_NORM_KIND = {2.0: 2, 1.0: 1, float("inf"): 0}


class NormLauncher:
    """The total norm of a list of gradients, on the device, in two launches (per-block
    partial sums in double, then one block that finishes them), with the clipping coefficient
    computed there too: nothing waits for the GPU."""

    def __init__(self, dev: Any) -> None:
        self.dev = dev
        self._last: list | None = None
        self._plans: list[_Plan] = []
        self._partials: Any = None
        self._total = 0

    def prepare(self, grads: Sequence[Any]) -> None:
        if self._last is not None and len(self._last) == len(grads) and all(map(is_, self._last, grads)):
            return
        dev = self.dev
        by_dtype: dict[np.dtype, list[Any]] = {}
        for i, g in enumerate(grads):
            if type(g) is not type_of(dev):
                raise TypeError(f"tensors[{i}] is {type(g).__name__}, expected {type_of(dev).__name__}")
            if g.dtype not in _SUFFIX:
                raise TypeError(f"tensors[{i}] has dtype {g.dtype}: the CUDA kernels take float32 and float64")
            if not g.flags.c_contiguous:
                raise ValueError(f"tensors[{i}] must be C-contiguous")
            if dev.id is not None and g.device.id != dev.id:
                raise ValueError(f"tensors[{i}] is on GPU {g.device.id}, but tensors[0] is on GPU {dev.id}")
            by_dtype.setdefault(g.dtype, []).append(g)
        plans = []
        for dt, gs in by_dtype.items():
            rows = np.zeros(len(gs), TENSOR_DTYPE)
            rows["param"] = rows["grad"] = [dev.ptr(g) for g in gs]
            rows["n"] = [g.size for g in gs]
            plans.append(_Plan(dev, rows, [g.size for g in gs], _SUFFIX[dt], (gs,)))
        self._plans = plans
        self._total = sum(p.nblocks for p in plans)
        self._partials = dev.empty(max(self._total, 1), np.float64)
        self._last = list(grads)

    def norm(self, norm_type: float, scale: float = 1.0, max_norm: float | None = None,
             flag: bool = False) -> tuple[Any, Any, Any]:
        """``(norm, coef, nonfinite)``: 0-d device arrays, the norm and coefficient float64
        (``coef`` None without ``max_norm``), ``nonfinite`` a float32 flag (1 when the norm is
        NaN or infinite; None unless ``flag``). The norm is rounded through float32 when every
        gradient is float32, as torch's."""
        dev = self.dev
        p = float(norm_type)
        kind = _NORM_KIND.get(p, 3)
        if kind == 3 and not p > 0:
            raise ValueError(f"norm_type must be > 0, got {norm_type}")
        norm = dev.empty((), np.float64)
        coef = dev.empty((), np.float64) if max_norm is not None else None
        nonfinite = dev.empty((), np.float32) if flag else None
        off = 0
        parts = self._partials
        for plan in self._plans:
            if plan.nblocks:
                dev.function(f"fo_norm_partials_{plan.suffix}")(
                    plan.nblocks, BLOCK, (plan.table, plan.blocks, np.int32(kind), np.float64(p), parts[off:]))
            off += plan.nblocks
        if self._total == 0:
            parts[...] = 0.0
        single = all(pl.suffix == "f32" for pl in self._plans)
        dev.function("fo_norm_finish")(1, BLOCK, (parts, np.int32(max(self._total, 1)), np.int32(kind), np.float64(p),
                                                  np.float64(scale), np.int32(single), norm,
                                                  np.float64(-1.0 if max_norm is None else float(max_norm)),
                                                  _ptr_or_null(coef), _ptr_or_null(nonfinite)))
        return norm, coef, nonfinite

    def scale(self, coef: Any) -> None:
        """Multiplies every gradient by the device scalar ``coef`` in place."""
        for plan in self._plans:
            if plan.nblocks:
                self.dev.function(f"fo_scale_{plan.suffix}")(plan.nblocks, BLOCK, (plan.table, plan.blocks, coef))


def _norm_launcher(grads: Sequence[Any], dev: Any) -> NormLauncher:
    nl = NormLauncher(_dev(grads[0], dev))
    nl.prepare(grads)
    return nl


def _as_norm_dtype(norm: Any, grads: Sequence[Any]) -> Any:
    """The norm in the gradients' dtype (float64 when they mix dtypes), as torch returns it."""
    return norm.astype(grads[0].dtype if len({g.dtype for g in grads}) == 1 else np.float64)


def total_norm(grads: Sequence[Any], norm_type: float = 2.0, dev: Any = None) -> Any:
    """The total ``norm_type`` norm of device arrays ``grads``, as a 0-d device array of their
    dtype (no host synchronisation)."""
    norm, _, _ = _norm_launcher(grads, dev).norm(norm_type)
    return _as_norm_dtype(norm, grads)


def clip_grad_norm_(grads: Sequence[Any], max_norm: float, norm_type: float = 2.0, dev: Any = None) -> Any:
    """Scales device arrays ``grads`` in place so that their total norm is at most
    ``max_norm`` (torch's coefficient ``min(1, max_norm / (norm + 1e-6))``, computed on the
    device); returns the norm before clipping as a 0-d device array."""
    nl = _norm_launcher(grads, dev)
    norm, coef, _ = nl.norm(norm_type, max_norm=max_norm)
    nl.scale(coef)
    return _as_norm_dtype(norm, grads)


def scale_(grads: Sequence[Any], coef: Any, dev: Any = None) -> None:
    """``g *= coef`` for every device array of ``grads``; ``coef`` a float64 device scalar."""
    _norm_launcher(grads, dev).scale(coef)


# ---------------------------------------------------------------------------- activations

def _grid(n: int) -> int:
    return max(1, min((n + BLOCK - 1) // BLOCK, 4096))


def _act_op(name: str) -> int:
    op = _ACT_OPS.get(name)
    if op is None:
        raise ValueError(f"no CUDA kernel for activation {name!r}")
    return op


def act_forward(name: str, x: Any, out: Any, a: float = 0.0, b: float = 0.0, c: float = 0.0, dev: Any = None) -> None:
    """``out = act(x)`` for the CPU core's activation ``name`` (its parameters ``a, b, c``)."""
    _dev(x, dev).function(f"fo_act_forward_{_suffix(x)}")(_grid(x.size), BLOCK, (
        np.int32(_act_op(name)), x, out, np.int64(x.size), np.float64(a), np.float64(b), np.float64(c)))


def act_backward(name: str, grad: Any, saved: Any, out: Any, a: float = 0.0, b: float = 0.0, c: float = 0.0,
                 dev: Any = None) -> None:
    """``out`` = the gradient of activation ``name`` with respect to its input, from the
    gradient of its output and the saved tensor (output or input, as the CPU core's)."""
    _dev(grad, dev).function(f"fo_act_backward_{_suffix(grad)}")(_grid(grad.size), BLOCK, (
        np.int32(_act_op(name)), grad, saved, out, np.int64(grad.size), np.float64(a), np.float64(b), np.float64(c)))


# ---------------------------------------------------------- softmax, losses, batch norm
# The CPU core's signatures (``fastopt._fastopt``), for CuPy arrays: ``fastopt.nn.functional``
# calls one or the other through :func:`fastopt.backends.kernels_for`.

def softmax(x: Any, out: Any, outer: int, n: int, inner: int, log: bool, dev: Any = None) -> None:
    """softmax (or log_softmax) of ``x`` seen as ``(outer, n, inner)``, over the middle axis."""
    rows = outer * inner
    _dev(x, dev).function(f"fo_softmax_{_suffix(x)}")(_grid(rows), BLOCK, (x, out, np.int64(outer), np.int64(n),
                                                                          np.int64(inner), np.int32(log)))


def softmax_backward(g: Any, y: Any, out: Any, outer: int, n: int, inner: int, log: bool, dev: Any = None) -> None:
    """The input gradient of softmax / log_softmax from ``grad_output`` and the forward's output."""
    rows = outer * inner
    _dev(g, dev).function(f"fo_softmax_backward_{_suffix(g)}")(_grid(rows), BLOCK, (
        g, y, out, np.int64(outer), np.int64(n), np.int64(inner), np.int32(log)))


def _check_targets(target: Any, classes: int, ignore_index: int) -> None:
    """Raises unless every target is a class index or ``ignore_index`` (this waits for the
    GPU, where torch's kernel would stop on a device-side assert)."""
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if bool(bad.any()):
        first = int(target[bad][0])
        raise ValueError(f"target holds {first}, which is not a class index in [0, {classes}) nor "
                         f"ignore_index ({ignore_index})")


def cross_entropy(x: Any, target: Any, classes: int, smoothing: float, ignore_index: int, losses: Any,
                  dev: Any = None) -> None:
    """Per-row cross-entropy losses (float64) of logits ``(rows, classes)`` against int64 targets."""
    _check_targets(target, classes, ignore_index)
    rows = int(target.shape[0])
    _dev(x, dev).function(f"fo_cross_entropy_{_suffix(x)}")(_grid(rows), BLOCK, (
        x, target, np.int64(rows), np.int64(classes), np.float64(smoothing), np.int64(ignore_index), losses))


def cross_entropy_backward(x: Any, target: Any, classes: int, smoothing: float, ignore_index: int, scale: Any,
                           out: Any, dev: Any = None) -> None:
    """The gradient of ``sum_i scale[i] * loss_i`` with respect to the logits, into ``out``."""
    _check_targets(target, classes, ignore_index)
    rows = int(target.shape[0])
    _dev(x, dev).function(f"fo_cross_entropy_backward_{_suffix(x)}")(_grid(rows), BLOCK, (
        x, target, np.int64(rows), np.int64(classes), np.float64(smoothing), np.int64(ignore_index), scale, out))


def bn_stats(x: Any, n: int, c: int, l: int, mean: Any, var: Any, dev: Any = None) -> None:
    """Per-channel mean and biased variance (float64 outputs) of ``x`` seen as ``(n, c, l)``."""
    _dev(x, dev).function(f"fo_bn_stats_{_suffix(x)}")(max(1, min(c, 65535)), BLOCK, (
        x, np.int64(n), np.int64(c), np.int64(l), mean, var))


def bn_normalize(x: Any, out: Any, n: int, c: int, l: int, mean: Any, scale: Any, shift: Any, dev: Any = None) -> None:
    """``out = (x - mean[c]) * scale[c] + shift[c]`` over ``(n, c, l)``."""
    _dev(x, dev).function(f"fo_bn_normalize_{_suffix(x)}")(_grid(n * c * l), BLOCK, (
        x, out, np.int64(n), np.int64(c), np.int64(l), mean, scale, shift))


def bn_train_forward(x: Any, out: Any, n: int, c: int, l: int, weight: Any, bias: Any, eps: float, mean: Any,
                     var: Any, dev: Any = None) -> None:
    """Training forward: per-channel mean and biased variance (float64, into ``mean``/``var``)
    and ``out = (x - mean) / sqrt(var + eps) * weight + bias``."""
    xp = namespace(x)
    bn_stats(x, n, c, l, mean, var, dev)
    scale = 1.0 / xp.sqrt(var + eps)
    if weight is not None:
        scale = scale * weight.astype(np.float64)
    shift = bias if bias is not None else xp.zeros(c, x.dtype)
    bn_normalize(x, out, n, c, l, mean.astype(x.dtype), scale.astype(x.dtype), xp.ascontiguousarray(shift), dev)


def bn_backward_sums(g: Any, x: Any, mean: Any, n: int, c: int, l: int, sum_g: Any, sum_gx: Any, dev: Any = None) -> None:
    """Per-channel ``sum(g)`` and ``sum(g * (x - mean))`` (float64 outputs)."""
    _dev(g, dev).function(f"fo_bn_backward_sums_{_suffix(g)}")(max(1, min(c, 65535)), BLOCK, (
        g, x, mean, np.int64(n), np.int64(c), np.int64(l), sum_g, sum_gx))


def bn_backward_input(g: Any, x: Any, out: Any, n: int, c: int, l: int, mean: Any, scale: Any, shift: Any, k: Any,
                      dev: Any = None) -> None:
    """``out = (g - shift[c] - (x - mean[c]) * k[c]) * scale[c]``, or ``g * scale[c]`` when ``k`` is None."""
    _dev(g, dev).function(f"fo_bn_backward_input_{_suffix(g)}")(_grid(n * c * l), BLOCK, (
        g, x, out, np.int64(n), np.int64(c), np.int64(l), mean, scale, shift, _ptr_or_null(k)))


def bn_train_backward(g: Any, x: Any, out: Any, n: int, c: int, l: int, mean: Any, invstd: Any, weight: Any,
                      sum_g: Any, sum_gx: Any, dev: Any = None) -> None:
    """Training backward: per-channel ``sum(g)``, ``sum(g * (x - mean))`` (float64) and the
    input gradient ``(g - sum(g)/N - (x - mean) * invstd**2 * sum(g (x - mean))/N) * invstd * weight``."""
    bn_backward_sums(g, x, mean, n, c, l, sum_g, sum_gx, dev)
    count = float(n * l)
    inv = invstd.astype(np.float64)
    scale = inv * (weight.astype(np.float64) if weight is not None else 1.0)
    shift = sum_g / count
    k = inv * inv * sum_gx / count
    dt = g.dtype
    bn_backward_input(g, x, out, n, c, l, mean, scale.astype(dt), shift.astype(dt), k.astype(dt), dev)
