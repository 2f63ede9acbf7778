"""The gradient-averaging optimizer wrapper and the broadcasts that start ranks alike."""

from __future__ import annotations

import contextlib
import functools
import numbers
import sys
import weakref
from typing import Any, Iterable, Iterator

import numpy as np

from ..optim._options import check_bool
from ..optim.muon import round_to_bfloat16
from ..optim.optimizer import Optimizer, _array_of
from ..parameter import Parameter, is_bfloat16, is_half

__all__ = ["DistributedOptimizer", "broadcast_parameters", "broadcast_optimizer_state", "abort_on_exception"]

OPS = ("average", "sum")
COMPRESSIONS = (None, "float16", "bfloat16")


def _mpi() -> Any:
    """mpi4py's ``MPI`` module, imported on first use."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fastopt.distributed needs mpi4py and an MPI library: pip install 'fastopt[mpi]' "
                          "(mpi4py and MPICH, both from PyPI)") from e
    return MPI


def _comm(comm: Any) -> Any:
    """``comm``, or the world communicator; a TypeError for anything else."""
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py MPI.Intracomm (MPI.COMM_WORLD or a split of it), "
                        f"got {type(comm).__name__}")
    return comm


def abort_on_exception(comm: Any = None) -> None:
    """Makes an unhandled exception on this rank print its traceback and abort every rank
    (``comm.Abort(1)``), as ``python -m mpi4py`` does, so a failure never leaves the other
    ranks waiting in a collective forever."""
    comm = _comm(comm)
    previous = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        previous(kind, value, tb)
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook


def _check_same(comm: Any, entries: list[tuple[str, tuple[int, ...], str]], what: str) -> None:
    """Raises the same ValueError on every rank unless every rank has the same
    ``(name, shape, dtype)`` list as rank 0 (one small allgather; no rank is left waiting)."""
    everyone = comm.allgather(entries)
    ref = everyone[0]
    for rank, mine in enumerate(everyone[1:], start=1):
        for i, (a, b) in enumerate(zip(mine, ref)):
            if a != b:
                raise ValueError(f"{what} differ across ranks: rank {rank}'s {i}th ({a[0]}) has shape {a[1]} and dtype "
                                 f"{a[2]} but rank 0's ({b[0]}) has shape {b[1]} and dtype {b[2]}")
        if len(mine) != len(ref):
            raise ValueError(f"{what} differ across ranks: rank {rank} has {len(mine)} but rank 0 has {len(ref)}")


def _mpi_type(dtype: np.dtype) -> Any:
    """The MPI type of a float32 or float64 buffer (the ones reduced)."""
    MPI = _mpi()
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}[dtype]


def dtype_name(d: np.dtype) -> str:
    """How messages and shard manifests name a dtype (bfloat16 by name: its ``dtype.str`` is an
    anonymous ``'<V2'``)."""
    return "bfloat16" if is_bfloat16(d) else d.str


def grad_dtype(d: np.dtype) -> np.dtype:
    """The dtype in which gradients of parameters of dtype ``d`` are kept and reduced: float32
    for float16 and bfloat16 (MPI has no 16-bit float sum; the local step reads float32
    gradients beside 16-bit parameters), else ``d``."""
    return np.dtype(np.float32) if is_half(d) else d


def _wire(a: np.ndarray) -> tuple[np.ndarray, Any]:
    """``a`` as MPI moves it without arithmetic (gathers): float32 and float64 as such, any
    other dtype (float16, bfloat16, 8-bit codes, int16 low bits) as unsigned integers of its
    size, a view of the same memory (mpi4py takes no bfloat16 buffer)."""
    if a.dtype in (np.float32, np.float64):
        return a, _mpi_type(a.dtype)
    MPI = _mpi()
    kind = {1: (np.uint8, MPI.UINT8_T), 2: (np.uint16, MPI.UINT16_T), 4: (np.uint32, MPI.UINT32_T),
            8: (np.uint64, MPI.UINT64_T)}[a.dtype.itemsize]
    return a.view(kind[0]), kind[1]


def _signature(named: Iterable[tuple[str, np.ndarray]]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(a.shape), dtype_name(a.dtype)) for name, a in named]


# -- reduction in a compressed precision ------------------------------------------------


def _to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as Muon's rounding."""
    return (round_to_bfloat16(x).view(np.uint32) >> 16).astype(np.uint16)


def _from_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _compress(x: np.ndarray, compression: str) -> np.ndarray:
    if compression == "float16":
        return x.astype(np.float16).view(np.uint16)
    return _to_bfloat16(x.astype(np.float32, copy=False))


def _decompress(bits: np.ndarray, compression: str, out: np.ndarray) -> None:
    out[...] = bits.view(np.float16) if compression == "float16" else _from_bfloat16(bits)


def _add_compressed(a: np.ndarray, b: np.ndarray, compression: str) -> np.ndarray:
    """``a + b`` of two compressed (uint16) arrays, rounded once to that precision."""
    if compression == "float16":
        return (a.view(np.float16) + b.view(np.float16)).view(np.uint16)
    return _to_bfloat16(_from_bfloat16(a) + _from_bfloat16(b))


_OPS: dict[str, Any] = {}


def _sum_op(compression: str) -> Any:
    """The MPI reduction that adds two compressed buffers (MPI has no bfloat16 type)."""
    if compression not in _OPS:
        MPI = _mpi()

        def add(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
            a = np.frombuffer(inbuf, np.uint16)
            b = np.frombuffer(inoutbuf, np.uint16)
            b[...] = _add_compressed(a, b, compression)

        _OPS[compression] = MPI.Op.Create(add, commute=True)
    return _OPS[compression]


# -- buckets ----------------------------------------------------------------------------


class _Bucket:
    """A flat buffer holding several parameters' gradients (views into it), reduced as one."""

    def __init__(self, dtype: np.dtype, members: list[tuple[int, tuple[int, ...]]]) -> None:
        self.dtype = dtype
        self.members = members  # (parameter index, shape)
        sizes = [int(np.prod(shape)) for _, shape in members]
        self.buffer = np.zeros(sum(sizes), dtype)
        self.views: dict[int, np.ndarray] = {}
        offset = 0
        for (i, shape), n in zip(members, sizes):
            self.views[i] = self.buffer[offset:offset + n].reshape(shape)
            offset += n
        self.request: Any = None
        self.work: Any = None  # the buffer the request reduces (compressed or gathered)
        self.ready = 0


def _plan_buckets(arrays: list[np.ndarray], cap: int, first_cap: int) -> list[_Bucket]:
    """Buckets over the parameters in reverse order (the order backward finishes them), one
    gradient dtype per bucket (float32 for 16-bit parameters: :func:`grad_dtype`), the first
    holding at most ``first_cap`` bytes and the rest ``cap`` (a larger parameter gets a bucket
    of its own)."""
    buckets: list[_Bucket] = []
    current: list[tuple[int, tuple[int, ...]]] = []
    size, dtype = 0, None
    for i in reversed(range(len(arrays))):
        a = arrays[i]
        d = grad_dtype(a.dtype)
        limit = first_cap if not buckets else cap
        if current and (d != dtype or size + a.size * d.itemsize > limit):
            buckets.append(_Bucket(dtype, current))  # type: ignore[arg-type]
            current, size = [], 0
        current.append((i, a.shape))
        size += a.size * d.itemsize
        dtype = d
    if current:
        buckets.append(_Bucket(dtype, current))  # type: ignore[arg-type]
    return buckets


# -- the wrapper ------------------------------------------------------------------------


class _Distributed:
    """The methods a :class:`DistributedOptimizer` adds to (or puts in front of) those of the
    optimizer class it wraps."""

    _dist: dict[str, Any]

    @property
    def comm(self) -> Any:
        """The communicator the gradients are averaged over."""
        return self._dist["comm"]

    def _params(self) -> list[Any]:
        return [p for g in self.param_groups for p in g["params"]]  # type: ignore[attr-defined]

    def _on_grad(self, index: int, p: Parameter) -> None:
        """A parameter's gradient is final for this backward pass: put it in its bucket and,
        once every gradient of a bucket is there ``backward_passes_per_step`` times, start
        reducing the buckets that are complete, in bucket order."""
        d = self._dist
        bucket = d["bucket_of"][index]
        view = bucket.views[index]
        if p.grad is not view:
            view[...] = p.grad
            p._grad = view
        d["zeroed"][index] = False
        d["passes"][index] += 1
        if d["passes"][index] == d["backward_passes_per_step"]:
            bucket.ready += 1
            self._start_ready()

    def _start_ready(self) -> None:
        d = self._dist
        buckets = d["buckets"]
        while d["started"] < len(buckets) and buckets[d["started"]].ready == len(buckets[d["started"]].members):
            self._start(buckets[d["started"]])
            d["started"] += 1

    def _start(self, bucket: _Bucket) -> None:
        """Starts the bucket's non-blocking reduction (every rank starts them in the same order)."""
        MPI = _mpi()
        d = self._dist
        comm, compression = d["comm"], d["compression"]
        data = bucket.buffer if compression is None else _compress(bucket.buffer, compression)
        if d["deterministic"]:
            bucket.work = (data, np.empty((comm.size, data.size), data.dtype))
            bucket.request = comm.Iallgather(data, bucket.work[1])
        elif compression is None:
            bucket.work = None
            bucket.request = comm.Iallreduce(MPI.IN_PLACE, bucket.buffer, op=MPI.SUM)
        else:
            bucket.work = data
            bucket.request = comm.Iallreduce(MPI.IN_PLACE, [data, MPI.UINT16_T], op=_sum_op(compression))

    def _finish(self, bucket: _Bucket) -> None:
        d = self._dist
        bucket.request.Wait()
        compression = d["compression"]
        if d["deterministic"]:
            rows = bucket.work[1]
            if compression is None:
                total = rows[0].copy()
                for r in rows[1:]:
                    total += r
                bucket.buffer[...] = total
            else:
                total = rows[0]
                for r in rows[1:]:
                    total = _add_compressed(total, r, compression)
                _decompress(total, compression, bucket.buffer)
        elif compression is not None:
            _decompress(bucket.work, compression, bucket.buffer)
        if d["op"] == "average":
            bucket.buffer /= bucket.dtype.type(d["comm"].size)
        bucket.request, bucket.work, bucket.ready = None, None, 0

    def synchronize(self, grads: Any = None) -> None:
        """Averages (or sums, ``op='sum'``) the gradients over the ranks now: the buckets not
        started during backward are filled and started, in order, and all are waited for.
        Afterwards every Parameter's ``grad`` is its view in a bucket, holding the reduced
        gradient (call it before clipping, then step inside :meth:`skip_synchronize`).
        ``grads``: the flat list ``step(grads=...)`` takes, for plain-array parameters."""
        MPI = _mpi()
        d = self._dist
        params = self._params()
        if len(params) != len(d["bucket_of"]):
            raise RuntimeError("the optimizer's parameters changed after it was wrapped (add_param_group): "
                               "wrap the optimizer again on every rank")
        given: list[Any] | None = None
        if grads is not None:
            given = list(grads)
            if len(given) != len(params):
                raise ValueError(f"grads has {len(given)} entries but the optimizer has {len(params)} parameters")
        has = np.zeros(len(params), np.int32)
        for i, p in enumerate(params):
            bucket = d["bucket_of"][i]
            view = bucket.views[i]
            if d["passes"][i] >= d["backward_passes_per_step"]:
                has[i] = 1  # (already in its bucket, through the hook)
                continue
            g = given[i] if given is not None else (p.grad if isinstance(p, Parameter) else None)
            if g is view and d["zeroed"][i]:
                g = None  # (zeroed by zero_grad and not reached by any backward since)
            if g is None:
                if bucket.request is None:
                    view[...] = 0  # (takes part as zeros; left None below if no rank has one)
            else:
                has[i] = 1
                if g is not view:
                    g = np.asarray(g)
                    if g.shape != view.shape:
                        raise ValueError(f"grads[{i}] has shape {g.shape} but params[{i}] has shape {view.shape}")
                    view[...] = g
            d["passes"][i] = d["backward_passes_per_step"]
        for bucket in d["buckets"]:
            bucket.ready = len(bucket.members)
        comm = d["comm"]
        flags = has  # (reduced in place: any rank with a gradient)
        comm_request = comm.Iallreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        self._start_ready()
        for bucket in d["buckets"]:
            self._finish(bucket)
        comm_request.Wait()
        reduced = []
        for i, p in enumerate(params):
            view = d["bucket_of"][i].views[i]
            if isinstance(p, Parameter):
                p._grad = view if flags[i] else None
            reduced.append(view if flags[i] else None)
        d["started"] = 0
        d["passes"] = [0] * len(params)
        d["zeroed"] = [False] * len(params)
        d["reduced"] = reduced
        d["synchronized"] = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the buckets and points every Parameter's ``grad`` at its view in them, so
        the next backward adds its gradients straight into the buckets (no copy at the step).
        ``set_to_none`` is accepted for torch's signature: a parameter no backward reaches
        before the step is still treated as having no gradient (zeros in the reduction, and
        ``grad`` None after it unless another rank had one)."""
        check_bool(set_to_none, "set_to_none")
        d = self._dist
        if any(b.request is not None for b in d["buckets"]):
            raise RuntimeError("zero_grad() while gradients are being reduced: call step() or synchronize() first")
        for b in d["buckets"]:
            b.buffer.fill(0)
        for i, p in enumerate(self._params()):
            if isinstance(p, Parameter):
                p._grad = d["bucket_of"][i].views[i]
                d["zeroed"][i] = True
        d["passes"] = [0] * len(d["passes"])
        for b in d["buckets"]:
            b.ready = 0
        d["started"] = 0

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Inside this block ``step()`` does not reduce the gradients (for a step right after
        an explicit :meth:`synchronize`, with clipping or inspection between them)."""
        d = self._dist
        d["skip"] = True
        try:
            yield
        finally:
            d["skip"] = False

    def step(self, closure: Any = None, grads: Any = None, **kwargs: Any) -> Any:
        """Averages the gradients over the ranks (unless already done: :meth:`synchronize`,
        :meth:`skip_synchronize`), then the wrapped optimizer's step with the averaged
        gradients; ``max_grad_norm`` clips by the global norm of the averaged gradients. A
        ``closure`` runs first, on this rank's shard."""
        d = self._dist
        loss = None
        if closure is not None:
            loss = closure()
        if not d["synchronized"] and not d["skip"]:
            self.synchronize(grads)
        reduced = d["reduced"] if (grads is not None and d["synchronized"]) else grads
        try:
            # (a step hook re-enters this method through type(self).step: it finds the
            # gradients synchronized and does not reduce them twice)
            out = super().step(None, reduced, **kwargs)  # type: ignore[misc]
        finally:
            d["synchronized"] = False
        return loss if closure is not None else out


def DistributedOptimizer(optimizer: Optimizer, comm: Any = None, bucket_cap_mb: float = 25, first_bucket_mb: float = 1,
                         op: str = "average", compression: str | None = None, backward_passes_per_step: int = 1,
                         deterministic: bool = False) -> Any:
    r"""``optimizer`` (any fastopt optimizer but L-BFGS) with its gradients averaged over the
    ranks of ``comm`` (default ``MPI.COMM_WORLD``) before each step: every rank then takes the
    same step, as one process would on the concatenated batch. Horovod's shape: the result is
    an instance of (a subclass of) the optimizer's class, sharing its param groups and state,
    so schedulers, hooks and state dicts work on it as on the optimizer.

    With ranks :math:`r = 0..N-1` and their gradients :math:`g_r`, the step uses
    :math:`\bar g = \frac{1}{N}\sum_r g_r` (``op='sum'``: the sum).

    Gradients live in flat buckets (``first_bucket_mb`` for the first, ``bucket_cap_mb`` for
    the rest; parameters in reverse order, as backward finishes them, one dtype per bucket):
    each Parameter's ``grad`` becomes its view in a bucket. The gradients of float16 and
    bfloat16 parameters are kept in float32 buckets (MPI has no 16-bit float sum; the step
    reads float32 gradients beside 16-bit parameters). The hook
    :meth:`fastopt.Parameter.register_post_accumulate_grad_hook` tells the wrapper when
    a :mod:`fastopt.nn` module's backward has finished a gradient; a bucket's
    ``Iallreduce(IN_PLACE)`` starts as soon as all its gradients are in (after
    ``backward_passes_per_step`` backward passes), while earlier layers are still being
    differentiated, and buckets always start in the same order on every rank. Gradients set
    any other way (or ``step(grads=[...])`` for plain arrays) are copied into their buckets at
    the step. A parameter without a gradient takes part as zeros, and keeps ``grad = None``
    if no rank has one.

    ``compression='float16'|'bfloat16'``: the buckets are reduced in that precision (each
    partial sum rounded to it), half the bytes. ``deterministic=True``: each bucket is
    gathered from every rank and summed in rank order, so results are bit-identical run to
    run and equal to one process summing the ranks' gradients in that order (N times the
    bytes of an allreduce).

    At wrap time every rank checks that all ranks have the same parameters (names, shapes,
    dtypes, order); a difference raises the same ValueError on every rank, naming the first.

    Example (run with ``mpiexec -n 2 python -m mpi4py script.py``; one rank also works):

    >>> from fastopt.distributed import DistributedOptimizer
    >>> w = fo.Parameter(np.zeros(2))
    >>> opt = DistributedOptimizer(fo.optim.SGD([w], lr=0.1))
    >>> w.grad = np.ones(2)
    >>> opt.step()
    >>> w.data  # every rank: w - lr * (the ranks' mean gradient)
    array([-0.1, -0.1])
    """
    if isinstance(optimizer, _Distributed) or "_dist" in getattr(optimizer, "__dict__", {}):
        raise ValueError("optimizer is already a DistributedOptimizer (or wrapped by one): wrap the plain "
                         "optimizer once")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    from ..optim.lbfgs import LBFGS

    if isinstance(optimizer, LBFGS):
        raise TypeError("DistributedOptimizer cannot wrap LBFGS: its closure re-evaluates the gradients several times "
                        "per step (average them inside the closure instead)")
    comm = _comm(comm)
    for name, value in (("bucket_cap_mb", bucket_cap_mb), ("first_bucket_mb", first_bucket_mb)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{name} must be a number of megabytes > 0, got {value!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    k = backward_passes_per_step
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"backward_passes_per_step must be an int >= 1, got {k!r}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")

    params = [p for g in optimizer.param_groups for p in g["params"]]
    arrays = [_array_of(p) for p in params]
    names = []
    for gi, g in enumerate(optimizer.param_groups):
        for i, _ in enumerate(g["params"]):
            names.append(g["param_names"][i] if "param_names" in g else f"param_groups[{gi}]['params'][{i}]")
    _check_same(comm, _signature(zip(names, arrays)), "the optimizer's parameters")

    cls = type(optimizer)
    wrapped_cls = type(f"Distributed{cls.__name__}", (_Distributed, cls), {"__module__": __name__})
    out = object.__new__(wrapped_cls)
    out.__dict__ = optimizer.__dict__  # (the same groups, state and caches)
    buckets = _plan_buckets(arrays, int(bucket_cap_mb * 2**20), int(first_bucket_mb * 2**20))
    bucket_of = {}
    for b in buckets:
        for i, _ in b.members:
            bucket_of[i] = b
    out._dist = dict(comm=comm, op=op, compression=compression, deterministic=deterministic,
                     backward_passes_per_step=int(k), buckets=buckets, bucket_of=bucket_of, started=0,
                     passes=[0] * len(params), zeroed=[False] * len(params), synchronized=False, skip=False,
                     reduced=None, handles=[])
    # The hooks hold the wrapper weakly and are removed when it is collected, so a wrapper the
    # user dropped never starts reductions for parameters another wrapper now owns.
    ref = weakref.ref(out)

    def on_grad(q: Parameter, i: int) -> None:
        wrapper = ref()
        if wrapper is not None:
            wrapper._on_grad(i, q)

    handles = out._dist["handles"]
    for i, p in enumerate(params):
        if isinstance(p, Parameter):
            handles.append(p.register_post_accumulate_grad_hook(functools.partial(on_grad, i=i)))
    weakref.finalize(out, _remove_hooks, handles)
    return out


def _remove_hooks(handles: list[Any]) -> None:
    for h in handles:
        h.remove()


def broadcast_parameters(params_or_module: Any, root: int = 0, comm: Any = None) -> None:
    """Copies rank ``root``'s parameters (and a module's buffers, such as BatchNorm's running
    statistics) to every rank, in place. Checks first that every rank has the same arrays
    (names, shapes, dtypes), raising the same ValueError everywhere otherwise."""
    comm = _comm(comm)
    if hasattr(params_or_module, "named_parameters"):
        named = [(n, p.data) for n, p in params_or_module.named_parameters()]
        named += [(n, b) for n, b in params_or_module.named_buffers()]
    else:
        named = [(f"params[{i}]", _array_of(p)) for i, p in enumerate(params_or_module)]
    _check_same(comm, _signature(named), "the parameters")
    for _, a in named:
        comm.Bcast(list(_wire(a)), root=root)


def broadcast_optimizer_state(optimizer: Optimizer, root: int = 0, comm: Any = None) -> None:
    """Makes every rank's optimizer state (and param-group options) rank ``root``'s: its
    state dict is broadcast and loaded on the other ranks."""
    comm = _comm(comm)
    sd = comm.bcast(optimizer.state_dict() if comm.rank == root else None, root=root)
    if comm.rank != root:
        optimizer.load_state_dict(sd)
