"""ZeRO stage 1: every rank keeps the optimizer state of 1/N of the parameters' elements."""

from __future__ import annotations

import bisect
import functools
import math
import numbers
import weakref
from operator import is_
from typing import Any

import numpy as np

from ..nn.utils import clip_coefficient
from ..optim._options import check_bool, real
from ..optim.optimizer import Optimizer, _array_of, _borrow, _is_param, check_grad_scale
from ..parameter import Parameter, as_numpy, bfloat16_dtype, is_half
from ._optimizer import _check_same, _comm, _mpi, _mpi_type, _signature, _wire, dtype_name, grad_dtype

__all__ = ["ZeroRedundancyOptimizer"]

PARTITIONS = ("flat", "greedy")
#: The marker of a shard's manifest (``state_dict()["zero"]``).
SHARD_FORMAT = "fastopt-zero-shard"
_ALIGN_BYTES = 64  # a flat shard's length is a multiple of this many bytes
_CHUNK_BYTES = 1 << 20  # per rank, the all-gather's buffer without bucket views


class Layout:
    """Where each parameter's elements live: per dtype one flat buffer (parameters in buffer
    order), cut into one contiguous range per rank; ``pieces[r]`` lists what rank ``r`` owns
    as ``(parameter index, lo, hi)`` (elements ``lo:hi`` of the flattened parameter), in
    buffer order. Deterministic in its arguments, so every rank (and a loader on another
    world size) computes the same layout from the manifest."""

    def __init__(self, shapes: list[tuple[int, ...]], dtypes: list[np.dtype], groups: list[int], world: int,
                 partition: str) -> None:
        self.shapes, self.dtypes, self.groups = shapes, dtypes, groups
        self.world, self.partition = world, partition
        self.sizes = [math.prod(s) for s in shapes]
        self.order: list[np.dtype] = list(dict.fromkeys(dtypes))  # (first appearance)
        self.members: dict[np.dtype, list[int]] = {}
        self.offsets: dict[int, int] = {}
        self.counts: dict[np.dtype, list[int]] = {}
        self.displs: dict[np.dtype, list[int]] = {}
        self.pieces: list[list[tuple[int, int, int]]] = [[] for _ in range(world)]
        owner = self._greedy() if partition == "greedy" else None
        for d in self.order:
            ks = [k for k in range(len(shapes)) if dtypes[k] == d]
            if owner is None:
                self._flat(d, ks)
            else:
                self._whole(d, ks, owner)

    def _flat(self, d: np.dtype, ks: list[int]) -> None:
        n, total = self.world, sum(self.sizes[k] for k in ks)
        align = max(1, _ALIGN_BYTES // d.itemsize)
        shard = _ceil_div(_ceil_div(total, n), align) * align
        self.members[d] = ks
        self.counts[d] = [shard] * n
        self.displs[d] = [r * shard for r in range(n)]
        offset = 0
        for k in ks:
            self.offsets[k] = offset
            size = self.sizes[k]
            if size == 0:  # (owned by the rank whose range holds its offset, with no elements)
                self.pieces[min(offset // shard, n - 1) if shard else 0].append((k, 0, 0))
            for r in range(offset // shard if shard else 0, n):
                lo, hi = max(offset, r * shard), min(offset + size, (r + 1) * shard)
                if lo >= hi:
                    break
                self.pieces[r].append((k, lo - offset, hi - offset))
            offset += size

    def _greedy(self) -> list[int]:
        """torch's ZeroRedundancyOptimizer layout: per param group, the parameters largest
        first, each to the rank holding the fewest elements so far (the lowest on a tie)."""
        owner = [0] * len(self.shapes)
        load = [0] * self.world
        for gi in dict.fromkeys(self.groups):
            ks = sorted((k for k in range(len(self.shapes)) if self.groups[k] == gi), key=lambda k: -self.sizes[k])
            for k in ks:
                r = load.index(min(load))
                owner[k] = r
                load[r] += self.sizes[k]
        return owner

    def _whole(self, d: np.dtype, ks: list[int], owner: list[int]) -> None:
        members = [k for r in range(self.world) for k in ks if owner[k] == r]
        self.members[d] = members
        counts = [0] * self.world
        offset = 0
        for k in members:
            self.offsets[k] = offset
            counts[owner[k]] += self.sizes[k]
            offset += self.sizes[k]
            self.pieces[owner[k]].append((k, 0, self.sizes[k]))
        self.counts[d] = counts
        self.displs[d] = [sum(counts[:r]) for r in range(self.world)]

    def length(self, d: np.dtype) -> int:
        """The flat buffer's length for dtype ``d`` (its shards and padding)."""
        return sum(self.counts[d])

    def describe(self) -> dict[str, Any]:
        """What the layout is computed from, as plain values (a shard's manifest)."""
        return {"world_size": self.world, "partition": self.partition, "shapes": [list(s) for s in self.shapes],
                "dtypes": [dtype_name(d) for d in self.dtypes], "groups": list(self.groups)}

    @classmethod
    def of(cls, manifest: dict[str, Any], world: int | None = None) -> "Layout":
        """The layout a manifest describes (on ``world`` ranks instead of its own, if given)."""
        return cls([tuple(s) for s in manifest["shapes"]], [dtype_named(d) for d in manifest["dtypes"]],
                   list(manifest["groups"]), manifest["world_size"] if world is None else world,
                   manifest["partition"])


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: A manifest's names of the parameter dtypes the sharded optimizer takes (bfloat16 by name, as
#: in a checkpoint: its ``dtype.str`` is an anonymous ``'<V2'``).
DTYPE_NAMES = ("<f4", "<f8", "<f2", "bfloat16")


def dtype_named(name: str) -> np.dtype:
    """The dtype a manifest names (:data:`DTYPE_NAMES`)."""
    if name != "bfloat16":
        return np.dtype(name)
    bf = bfloat16_dtype()
    if bf is None:
        raise TypeError("the shard manifest has bfloat16 parameters, which NumPy has through ml_dtypes: "
                        "`import ml_dtypes` (pip install fastopt[bf16]) before loading it")
    return bf


def check_manifest(m: Any, where: str) -> None:
    """Raises ValueError unless ``m`` is a well-formed shard manifest (a file may be crafted:
    nothing is allocated from it before this)."""
    bad = ValueError(f"{where} is not a valid shard manifest")

    def count(v: Any, low: int = 0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not isinstance(m, dict) or m.get("format") != SHARD_FORMAT or m.get("version") != 1:
        raise bad
    shapes, dtypes, groups = m.get("shapes"), m.get("dtypes"), m.get("groups")
    if (not count(m.get("world_size"), 1) or m["world_size"] > 1 << 20 or not count(m.get("rank"))
            or m["rank"] >= m["world_size"] or m.get("partition") not in PARTITIONS
            or not isinstance(shapes, list) or not isinstance(dtypes, list) or not isinstance(groups, list)
            or not len(shapes) == len(dtypes) == len(groups)
            or not all(isinstance(s, list) and len(s) <= 32 and all(count(n) for n in s) for s in shapes)
            or not all(d in DTYPE_NAMES for d in dtypes) or not all(count(g) for g in groups)
            or not isinstance(m.get("counters", []), list)):
        raise bad


def _element_value(key: str, v: Any, lo: int, hi: int, shape: tuple[int, ...], flat: bool,
                   counters: tuple[str, ...]) -> bool:
    """Whether state value ``v`` of a piece holds one value per element of the piece (a
    moment buffer) rather than one for the tensor (a step counter, Adafactor's factors)."""
    if not isinstance(v, np.ndarray) or key in counters:
        return False
    return (v.ndim == 1 and v.size == hi - lo) if flat else v.shape == tuple(shape)


def reshard(sources: list[tuple[Layout, int, dict[Any, Any]]], layout: Layout, rank: int,
            counters: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """The state of rank ``rank``'s pieces under ``layout``, from shards of any layout:
    ``sources`` lists ``(layout, rank, state)`` for shards whose state maps a parameter index
    to that rank's piece's entries (arrays as numpy arrays). Per-element buffers are cut and
    joined; per-tensor values (``counters``, and arrays not shaped like the piece) are taken
    from the first shard holding the parameter. A
    ValueError names a parameter whose elements the shards do not cover."""
    held: dict[int, list[tuple[int, int, dict[str, Any], bool]]] = {}
    for lay, r, state in sources:
        ranges = {k: (lo, hi) for k, lo, hi in lay.pieces[r]}
        for k, entry in state.items():
            lo, hi = ranges[k]
            held.setdefault(k, []).append((lo, hi, entry, lay.partition == "flat"))
    out: dict[int, dict[str, Any]] = {}
    for k, lo, hi in layout.pieces[rank]:
        have = sorted(held.get(k, ()), key=lambda s: s[0])
        if not have:
            continue
        shape = layout.shapes[k]
        new: dict[str, Any] = {}
        for key, first in have[0][2].items():
            if not _element_value(key, first, have[0][0], have[0][1], shape, have[0][3], counters):
                new[key] = first
                continue
            buf = np.empty(hi - lo, first.dtype)
            covered = 0
            for slo, shi, entry, flat in have:
                v = entry.get(key)
                if v is None or not _element_value(key, v, slo, shi, shape, flat, counters):
                    raise ValueError(f"state of parameter {k}: {key!r} is missing or misshapen in one of the shards")
                a, b = max(lo, slo), min(hi, shi)
                if a < b:
                    buf[a - lo:b - lo] = v.reshape(-1)[a - slo:b - slo]
                    covered += b - a
            if covered != hi - lo:
                raise ValueError(f"state of parameter {k}: the shards hold {covered} of the {hi - lo} elements "
                                 f"{lo}:{hi} of {key!r} (shards of different runs, or one missing)")
            new[key] = buf if layout.partition == "flat" else buf.reshape(shape)
        out[k] = new
    return out


def full_layout(shapes: list[tuple[int, ...]], dtypes: list[np.dtype], groups: list[int]) -> Layout:
    """The unsharded (torch) layout: one rank holding every tensor whole."""
    return Layout(shapes, dtypes, groups, 1, "greedy")


def is_shard(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`ZeroRedundancyOptimizer` shard's ``state_dict()``."""
    return isinstance(obj, dict) and isinstance(obj.get("zero"), dict) and obj["zero"].get("format") == SHARD_FORMAT


def _plain_state(state: Any, what: str) -> dict[int, dict[str, Any]]:
    """A state dict's ``state`` with integer keys and numpy arrays (torch tensors converted)."""
    if not isinstance(state, dict):
        raise TypeError(f"{what}['state'] must be a dict (index -> state), got {type(state).__name__}")
    out = {}
    for k, entry in state.items():
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"{what}['state'] has a key {k!r}: parameter indices are ints")
        if not isinstance(entry, dict):
            raise TypeError(f"{what}['state'][{k!r}] must be a dict of state values, got {type(entry).__name__}")
        out[int(k)] = {key: as_numpy(v) if hasattr(v, "__array__") and not isinstance(v, np.ndarray) else v
                       for key, v in entry.items()}
    return out


class _Arena:
    """This rank's per-element state buffers as views of one flat array per buffer name,
    parameter dtype and state dtype (``state_dtype``, the int16 low bits of
    ``master_weights='remainder'``), laid out as the rank's range of the parameters' flat
    buffer: a consolidation then sends each kind of buffer straight from it (no copy to
    pack)."""

    def __init__(self, layout: Layout, rank: int, pieces: list[tuple[int, int, int]], piece_params: list[Any],
                 partition: str) -> None:
        self.layout, self.rank, self.partition = layout, rank, partition
        self.where = {id(q): (k, lo, hi) for (k, lo, hi), q in zip(pieces, piece_params)}
        self.order = [k for k, _, _ in pieces]
        self.flats: dict[tuple[str, np.dtype, np.dtype], np.ndarray] = {}
        self.views: dict[tuple[int, str], np.ndarray] = {}

    def view(self, q: Any, name: str, a: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
        """Piece ``q``'s buffer ``name`` of ``dtype`` in the arena, shaped like ``a`` (None
        for anything else)."""
        where = self.where.get(id(q))
        if where is None:
            return None
        k, lo, hi = where
        got = self.views.get((k, name))
        if got is not None:
            return got if got.dtype == dtype else None
        d = self.layout.dtypes[k]
        flat = self.flats.get((name, d, dtype))
        if flat is None:
            flat = self.flats[(name, d, dtype)] = np.zeros(self.layout.counts[d][self.rank], dtype)
        start = self.layout.offsets[k] - self.layout.displs[d][self.rank]
        v = flat[start + lo:start + hi]
        v = v if self.partition == "flat" else v.reshape(self.layout.shapes[k])
        if v.shape != a.shape:
            return None
        self.views[(k, name)] = v
        return v

    def array(self, p: Any, name: str, a: np.ndarray, value: float, dtype: np.dtype) -> np.ndarray:
        """The local optimizer's ``_state_array``: the arena's view, set to ``value``."""
        v = self.view(p, name, a, np.dtype(dtype))
        if v is None:
            return np.full(a.shape, value, dtype) if value else np.zeros(a.shape, dtype)
        v[...] = value
        return v

    def seat(self, inner: Optimizer) -> None:
        """Moves state buffers made elsewhere (loaded, or made up front) into the arena."""
        for q, entry in list(inner.state.items()):
            if id(q) not in self.where:
                continue
            for name, b in list(entry.items()):
                if isinstance(b, np.ndarray) and name not in inner._counters:  # (a 0-d tensor's too)
                    v = self.view(q, name, b, b.dtype)
                    if v is not None and v is not b:
                        v[...] = b
                        entry[name] = v

    def contiguous(self, name: str, held: list[tuple[int, np.ndarray]]) -> np.ndarray | None:
        """The arena's flat array ``name`` when ``held`` (``(parameter index, buffer)`` for the
        pieces holding ``name``, in order) is every piece of its dtype, each buffer the arena's
        own view: then they fill the flat array from its start, in order. None otherwise."""
        if not held:
            return None
        d = self.layout.dtypes[held[0][0]]
        flat = self.flats.get((name, d, held[0][1].dtype))
        ks = [k for k in self.order if self.layout.dtypes[k] == d]
        if flat is None or len(held) != len(ks) or not all(
                k == j and v is self.views.get((k, name)) for (k, v), j in zip(held, ks)):
            return None
        return flat[:sum(v.size for _, v in held)]


class ZeroRedundancyOptimizer(Optimizer):
    r"""ZeRO stage 1 (Rajbhandari et al., 2020) over MPI: ``optimizer_class``'s update with its
    state split across the ranks of ``comm`` (default ``MPI.COMM_WORLD``), so each rank holds
    1/N of it (Adam: 2/N of the model instead of 2 models), at the communication volume of
    plain data parallelism. The anchor is torch's ZeroRedundancyOptimizer; unlike it, any
    mix of dtypes works, a checkpoint reloads on any number of ranks, and the state is
    consolidated with one ``Gatherv`` per buffer kind.

    float16 and bfloat16 parameters, ``state_dtype`` and ``master_weights='kahan'``,
    ``'remainder'`` or ``'float32'`` work as on the unsharded optimizer (the state buffers,
    low bits and masters of a piece live on the rank that owns it). The gradients of 16-bit
    parameters are kept and reduce-scattered in float32 (MPI has no 16-bit float sum), and
    the step reads them in float32 beside the 16-bit parameters, so :math:`\bar g` is rounded
    only by the update; the all-gather moves the parameters' 16-bit patterns.
    ``state_dtype='int8'`` takes ``partition='greedy'`` (its blocks of 256 elements and the
    4096-element threshold count from a whole tensor's start); ``master_weights='stochastic'``
    is refused (its random bits are keyed by each tensor's place in the step).

    Each step, with ranks :math:`r = 0..N-1` holding gradients :math:`g_r`:

    1. ``Reduce_scatter``: rank :math:`r` receives its range of :math:`\bar g = \frac1N\sum_r g_r`;
    2. the wrapped optimizer's kernel updates that range of the parameters and of the state
       (one call per param group);
    3. ``Allgather``: every rank receives every range of the updated parameters (in their
       own dtype).

    The result is bit for bit that of ``optimizer_class`` stepping every parameter with
    :math:`\bar g` on one process.

    ``partition='flat'`` (default): per dtype, all parameters' elements in order in one
    padded flat buffer, cut into N equal contiguous ranges (a tensor may span ranks;
    ``Reduce_scatter_block`` and ``Iallgather``). It needs an update that treats elements
    independently: optimizers whose update couples a tensor's elements (LAMB, Adafactor,
    Muon, ``cautious=True``) take ``partition='greedy'`` and those that couple every tensor
    (Prodigy, L-BFGS) are refused. ``'greedy'``: torch's layout: whole tensors, per param
    group largest first, each to the rank holding the fewest elements.

    ``parameters_as_bucket_view`` (torch's option, but on by default here): each Parameter's
    ``data`` becomes a view of one flat buffer per dtype (same values and shape, a new
    array), so the all-gather writes the parameters in place. torch defaults to False
    because a tensor's storage cannot be swapped under autograd; a fastopt Parameter holds its
    array by reference and every :mod:`fastopt.nn` module reads ``data`` when it runs, so the
    only visible change is that an array taken from ``p.data`` before wrapping no longer
    follows ``p``. With False each parameter keeps its array and the gathered values are
    copied in through a 1 MB-per-rank buffer: the same memory, two more passes over the
    model per step (1.0 to 1.6 times the step time in the runs measured here). Plain-array parameters are
    always copied. A Parameter whose ``data`` is replaced later is followed at the next step.

    Gradients: ``zero_grad()`` points every Parameter's ``grad`` at its view of a flat
    gradient buffer (float32 for a 16-bit parameter), so backward accumulates into it and the
    step starts reducing with no copy; gradients set any other way (or ``step(grads=[...])``)
    are copied in. A parameter without a gradient on any rank is skipped as by the unsharded
    optimizer. The averaged gradient exists only in ranges, each on the rank that owns it: a
    Parameter's ``grad`` keeps this rank's own gradient, so clip with
    ``step(max_grad_norm=...)`` (the norm of the averaged gradient over every rank's ranges),
    not ``clip_grad_norm_`` before the step.

    ``state_dict()`` returns this rank's shard (its pieces' state by parameter index, the
    param groups, and a manifest under ``'zero'``); :meth:`consolidate_state_dict` gathers the
    full state, in the unsharded optimizer's (torch's) layout, on one rank;
    :meth:`load_state_dict` takes a full state (re-sharded for this world size) or this
    rank's shard. ``fastopt.save(obj, folder, comm=comm)`` / ``fastopt.load(folder,
    comm=comm)`` write a checkpoint that loads on any number of ranks.

    ``optim`` is this rank's optimizer over its pieces (1-D views of the flat ranges), and
    ``state`` its state. Param groups, options, LR schedulers and step hooks work on the
    wrapper as on the unsharded optimizer.

    Example (run with ``mpiexec -n 2 python -m mpi4py script.py``; one rank also works):

    >>> from fastopt.distributed import ZeroRedundancyOptimizer
    >>> w = fo.Parameter(np.zeros(4))
    >>> opt = ZeroRedundancyOptimizer([w], fo.optim.Adam, lr=0.1)
    >>> w.grad = np.ones(4)
    >>> opt.step()
    >>> w.data  # every rank: Adam's first step with the ranks' mean gradient
    array([-0.1, -0.1, -0.1, -0.1])
    """

    _option_docs = {
        "optimizer_class": "the fastopt optimizer class each rank runs on its pieces (``fastopt.optim.Adam``, ...)",
        "comm": "the mpi4py communicator (default ``MPI.COMM_WORLD``); every rank makes the optimizer",
        "partition": "``'flat'`` (equal contiguous ranges of all elements) or ``'greedy'`` (torch's: whole tensors)",
        "parameters_as_bucket_view": "make each Parameter's ``data`` a view of the flat buffer the all-gather fills "
                                     "(False: copy the gathered values into the parameters' own arrays)",
        "defaults": "the options of ``optimizer_class`` (``lr=...``), as for the optimizer itself",
    }

    _zero: dict[str, Any]

    def __init__(self, params: Any, optimizer_class: type, comm: Any = None, partition: str = "flat",
                 parameters_as_bucket_view: bool = True, **defaults: Any) -> None:
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"optimizer_class must be a fastopt optimizer class, got {optimizer_class!r}")
        if issubclass(optimizer_class, ZeroRedundancyOptimizer):
            raise TypeError("optimizer_class must be a plain fastopt optimizer class, not ZeroRedundancyOptimizer")
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
        check_bool(parameters_as_bucket_view, "parameters_as_bucket_view")
        comm = _comm(comm)
        # The unsharded optimizer checks the params and options and fills the defaults; it
        # never steps, so it holds no state.
        template = optimizer_class(params, **defaults)
        template.state.clear()  # (Adagrad makes its state up front: the template never steps)
        for gi, g in enumerate(template.param_groups):
            self._check_coupling(template, g, gi, partition)
        self._template = template
        self._class = optimizer_class
        self._given = dict(defaults)
        self._comm_ = comm
        self._partition = partition
        self._bucket_view = parameters_as_bucket_view
        super().__init__([dict(g) for g in template.param_groups], template.defaults)
        self._build()

    # -- set-up -------------------------------------------------------------------------------

    @staticmethod
    def _check_coupling(template: Optimizer, group: dict[str, Any], gi: int, partition: str) -> None:
        how = template._coupling(group)
        name = type(template).__name__
        if group.get("master_weights") == "stochastic":
            raise ValueError(f"master_weights='stochastic' (param_groups[{gi}]) cannot be sharded: its random bits "
                             "are keyed by each tensor's place in the step and each element's index, which sharding "
                             "changes, so the result would not be the unsharded optimizer's (use 'kahan', "
                             "'remainder' or 'float32')")
        if group.get("state_dtype") == "int8" and partition == "flat":
            raise ValueError(f"state_dtype='int8' (param_groups[{gi}]) quantizes each tensor in blocks of 256 "
                             "elements counted from its start (tensors under 4096 elements keep float32 state), "
                             "which partition='flat' would cut elsewhere: use partition='greedy' (whole tensors "
                             "per rank)")
        if how == "all":
            raise TypeError(f"ZeroRedundancyOptimizer cannot shard {name}: its update of each element reads every "
                            "parameter's elements (a sum over all tensors), which no rank holds")
        if how == "tensor" and partition == "flat":
            raise ValueError(f"{name} (param_groups[{gi}]) couples the elements of a tensor (its update reads the whole "
                             "tensor), so partition='flat' would split what must stay whole: use partition='greedy' "
                             "(whole tensors per rank)")

    def _check_options(self, group: dict[str, Any]) -> None:
        self._template._check_options(group)
        if "_zero" in self.__dict__:
            self._check_coupling(self._template, group, len(self.param_groups), self._partition)

    @property
    def comm(self) -> Any:
        """The communicator the state is sharded over."""
        return self._comm_

    @property
    def optim(self) -> Optimizer:
        """This rank's optimizer: ``optimizer_class`` over the pieces this rank owns."""
        return self._zero["inner"]

    @property
    def state(self) -> Any:
        """This rank's shard of the state (the local optimizer's, keyed by its pieces)."""
        return self._zero["inner"].state if "_zero" in self.__dict__ else self.__dict__["_state0"]

    @state.setter
    def state(self, value: Any) -> None:
        self.__dict__["_state0"] = value  # (the base class's empty state, never used)

    def _params(self) -> list[Any]:
        return [p for g in self.param_groups for p in g["params"]]

    def _build(self) -> None:
        """Plans the layout, allocates the flat buffers and makes this rank's optimizer."""
        comm = self._comm_
        params = self._params()
        arrays = [_array_of(p) for p in params]
        for i, a in enumerate(arrays):
            if not a.flags.c_contiguous:
                raise ValueError(f"params[{i}] is not C-contiguous: ZeroRedundancyOptimizer steps slices of the "
                                 "flattened parameters in place (pass contiguous arrays)")
        names = [g["param_names"][i] if "param_names" in g else f"param_groups[{gi}]['params'][{i}]"
                 for gi, g in enumerate(self.param_groups) for i in range(len(g["params"]))]
        _check_same(comm, _signature(zip(names, arrays)), "the parameters")
        groups = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        layout = Layout([a.shape for a in arrays], [a.dtype for a in arrays], groups, comm.size, self._partition)
        rank = comm.rank
        # (float32 for 16-bit parameters: see `grad_dtype`)
        grad_flat = {d: np.zeros(layout.length(d), grad_dtype(d)) for d in layout.order}
        # The parameters' flat buffers exist with bucket views only (they are the parameters'
        # storage then); otherwise the all-gather goes through one chunk-sized buffer.
        param_flat = {d: np.zeros(layout.length(d), d) for d in layout.order} if self._bucket_view else {}
        # (on one rank the flat buffer is the rank's range: no copy)
        grad_local = {d: grad_flat[d] if comm.size == 1 else np.empty(layout.counts[d][rank], grad_dtype(d))
                      for d in layout.order}
        for k, a in enumerate(arrays):
            d, off = a.dtype, layout.offsets[k]
            if param_flat:
                param_flat[d][off:off + a.size] = a.reshape(-1)
            if self._backed(params[k]):
                params[k]._data = param_flat[d][off:off + a.size].reshape(a.shape)
        pieces, piece_params, piece_grads = layout.pieces[rank], [], []
        for k, lo, hi in pieces:
            d = layout.dtypes[k]
            start = layout.offsets[k] - layout.displs[d][rank]
            grad = grad_local[d][start + lo:start + hi]
            piece_grads.append(grad if self._partition == "flat" else grad.reshape(layout.shapes[k]))
            piece_params.append(Parameter(self._piece_view(k, lo, hi, params[k], layout, param_flat)))
        inner_groups: list[dict[str, Any]] = [{"params": []} for _ in self.param_groups]
        for (k, _, _), q in zip(pieces, piece_params):
            inner_groups[groups[k]]["params"].append(q)
        # Schedule-Free's groups count steps: a group with no piece here still steps (as a
        # placeholder with no elements) whenever it steps elsewhere, so its counters agree.
        marker = []
        if self._class._steps_change_groups:
            for g, ig in zip(self.param_groups, inner_groups):
                q = Parameter(np.zeros(0, _array_of(g["params"][0]).dtype if g["params"] else np.float32))
                ig["params"].append(q)
                marker.append(q)
        for g, ig in zip(self.param_groups, inner_groups):
            ig.update(self._options_of(g))
        inner = self._class(inner_groups, **self._given)
        arena = _Arena(layout, rank, pieces, piece_params, self._partition)
        inner._state_array = arena.array  # type: ignore[method-assign]
        grad_views = [grad_flat[a.dtype][layout.offsets[k]:layout.offsets[k] + a.size].reshape(a.shape)
                      for k, a in enumerate(arrays)]
        self.__dict__["_zero"] = dict(
            layout=layout, rank=rank, grad_flat=grad_flat, grad_local=grad_local, param_flat=param_flat,
            pieces=pieces, piece_params=piece_params, piece_grads=piece_grads, inner=inner, groups=groups,
            marker=marker, arrays=tuple(map(_array_of, params)), zeroed=[False] * len(params), handles=[],
            grad_views=grad_views, arena=arena, chunk={},
            members={d: (layout.members[d], [layout.offsets[k] for k in layout.members[d]]) for d in layout.order})
        arena.seat(inner)
        self._watch_grads(params)

    @staticmethod
    def _options_of(group: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in group.items() if k not in ("params", "param_names")}

    def _push_options(self) -> None:
        """This wrapper's group options (a scheduler's lr, say) into the local optimizer's."""
        for g, ig in zip(self.param_groups, self._zero["inner"].param_groups):
            ig.update(self._options_of(g))

    def _pull_options(self) -> None:
        """The local optimizer's group options (Schedule-Free's counters, loaded options) back."""
        for g, ig in zip(self.param_groups, self._zero["inner"].param_groups):
            g.update(self._options_of(ig))

    def _backed(self, p: Any) -> bool:
        """Whether ``p``'s data is its view of the flat buffer (bucket views of Parameters)."""
        return self._bucket_view and isinstance(p, Parameter)

    def _piece_view(self, k: int, lo: int, hi: int, p: Any, layout: Layout, param_flat: dict) -> np.ndarray:
        """The array this rank's optimizer steps for its piece of parameter ``k``."""
        if self._backed(p):
            d = layout.dtypes[k]
            a = param_flat[d][layout.offsets[k] + lo:layout.offsets[k] + hi]
        else:
            a = _array_of(p).reshape(-1)[lo:hi]
        return a if self._partition == "flat" else a.reshape(layout.shapes[k])

    def _watch_grads(self, params: list[Any]) -> None:
        """A hook on each Parameter records that backward reached it since ``zero_grad``."""
        ref = weakref.ref(self)

        def reached(q: Parameter, i: int) -> None:
            me = ref()
            if me is not None:
                me._zero["zeroed"][i] = False

        z = self._zero
        for h in z["handles"]:
            h.remove()
        z["handles"] = [p.register_post_accumulate_grad_hook(functools.partial(reached, i=i))
                        for i, p in enumerate(params) if isinstance(p, Parameter)]
        weakref.finalize(self, _remove_all, z["handles"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group (on every rank, collectively): the layout is planned again and
        the state re-sharded onto it."""
        if "_zero" not in self.__dict__:
            return super().add_param_group(param_group)
        full = self._gather_state(every=True)
        with self._lock:
            self._template.add_param_group(param_group)
            self._template.state.clear()
            try:
                super().add_param_group(dict(self._template.param_groups[-1]))
            except BaseException:
                self._template.param_groups.pop()
                raise
        for h in self._zero["handles"]:
            h.remove()
        self._build()
        assert full is not None
        self._load_full(full)

    # -- gradients ------------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the flat gradient buffer and points every Parameter's ``grad`` at its view
        in it, so the next backward adds its gradients there (no copy at the step). As with
        ``set_to_none=True``, a parameter no backward reaches before the step has no
        gradient (skipped, unless another rank has one)."""
        check_bool(set_to_none, "set_to_none")
        z = self._zero
        for buf in z["grad_flat"].values():
            buf.fill(0)
        for k, p in enumerate(self._params()):
            if isinstance(p, Parameter):
                p._grad = z["grad_views"][k]
                z["zeroed"][k] = True

    def _fill_grads(self, grads: Any) -> np.ndarray:
        """Puts every gradient in the flat buffers (zeros where there is none); returns, per
        parameter, 1 where this rank has a gradient. Raises before writing if one is bad."""
        z = self._zero
        layout = z["layout"]
        params = self._params()
        views = z["grad_views"]
        given = None
        if grads is not None:
            if not isinstance(grads, (list, tuple)):
                raise TypeError(f"grads must be a list with one array (or None to skip) per parameter, "
                                f"got {type(grads).__name__}")
            given = list(grads)
            if len(given) != len(params):
                raise ValueError(f"grads has {len(given)} entries but the optimizer has {len(params)} parameters")
        found: list[Any] = []
        for k, p in enumerate(params):
            if given is not None:
                g = given[k]
                if g is not None and not isinstance(g, np.ndarray):
                    g = _array_of(g) if _is_param(g) else _borrow(g, f"grads[{k}]", written=False)
            else:
                g = p._grad if isinstance(p, Parameter) else None
                if g is views[k] and z["zeroed"][k]:
                    g = None  # (zeroed by zero_grad and not reached by any backward since)
                elif g is None and not isinstance(p, Parameter):
                    raise ValueError(f"params[{k}] is a plain numpy array, which carries no gradient: pass the "
                                     "gradients as step(grads=[...])")
            if g is not None:
                if g.shape != layout.shapes[k]:
                    raise ValueError(f"grads[{k}] has shape {g.shape} but params[{k}] has shape {layout.shapes[k]}")
                d = layout.dtypes[k]
                if g.dtype != d and g.dtype != grad_dtype(d):
                    also = " (or float32, beside a 16-bit parameter)" if is_half(d) else ""
                    raise TypeError(f"grads[{k}] has dtype {g.dtype} but params[{k}] has dtype {d}{also}")
            found.append(g)
        has = np.zeros(len(params) + 1, np.int32)  # (the last: a rank whose gradients were bad)
        for k, g in enumerate(found):
            if g is None:
                views[k][...] = 0
            else:
                has[k] = 1
                if g is not views[k]:
                    views[k][...] = g
        return has

    def _reduce_scatter(self, grads: Any, divide: bool) -> np.ndarray:
        """Fills the flat gradient buffers and reduce-scatters them: afterwards each rank's
        ``grad_local`` holds its ranges of the summed gradient (averaged if ``divide``; else
        the step multiplies by 1/N as it reads them). Returns, per parameter,
        whether any rank had a gradient for it. If one rank's gradients are bad, every rank
        raises (that rank its own error) once the collectives are done: none is left waiting."""
        MPI = _mpi()
        z = self._zero
        layout, comm = z["layout"], self._comm_
        failed: Exception | None = None
        try:
            has = self._fill_grads(grads)
        except (TypeError, ValueError) as e:
            failed = e
            has = np.zeros(len(z["grad_views"]) + 1, np.int32)
            has[-1] = comm.rank + 1
        if comm.size == 1:
            if failed is not None:
                raise failed
            return has[:-1]
        requests = [comm.Iallreduce(MPI.IN_PLACE, has, op=MPI.MAX)]
        for d in layout.order:
            mtype = _mpi_type(grad_dtype(d))
            send, recv = [z["grad_flat"][d], mtype], [z["grad_local"][d], mtype]
            if layout.partition == "flat":
                requests.append(comm.Ireduce_scatter_block(send, recv, op=MPI.SUM))
            else:
                requests.append(comm.Ireduce_scatter(send, recv, recvcounts=layout.counts[d], op=MPI.SUM))
        MPI.Request.Waitall(requests)
        if failed is not None:
            raise failed
        if has[-1]:
            raise ValueError(f"rank {has[-1] - 1} was given bad gradients (its error says which): nothing was updated")
        if divide:
            for d in layout.order:
                z["grad_local"][d] /= grad_dtype(d).type(comm.size)
        return has[:-1]

    def _allgather(self) -> None:
        """Every rank's updated ranges of the parameters to every rank."""
        if self._comm_.size == 1:
            return  # (the pieces are the parameters' own memory)
        if not self._bucket_view:
            return self._allgather_chunks()
        MPI = _mpi()
        z = self._zero
        layout, comm = z["layout"], self._comm_
        params = self._params()
        for k, lo, hi in z["pieces"]:  # this rank's ranges of plain arrays into the buffer
            if not self._backed(params[k]):
                d, off = layout.dtypes[k], layout.offsets[k]
                z["param_flat"][d][off + lo:off + hi] = _array_of(params[k]).reshape(-1)[lo:hi]
        requests = []
        for d in layout.order:
            bits, mtype = _wire(z["param_flat"][d])
            if layout.partition == "flat":
                requests.append(comm.Iallgather(MPI.IN_PLACE, [bits, mtype]))
            else:
                requests.append(comm.Iallgatherv(MPI.IN_PLACE, [bits, layout.counts[d], layout.displs[d], mtype]))
        MPI.Request.Waitall(requests)
        whole = {k for k, lo, hi in z["pieces"] if lo == 0 and hi == layout.sizes[k]}
        for k, p in enumerate(params):
            if not self._backed(p) and k not in whole:
                d, off = layout.dtypes[k], layout.offsets[k]
                _array_of(p).reshape(-1)[...] = z["param_flat"][d][off:off + layout.sizes[k]]

    def _allgather_chunks(self) -> None:
        """The all-gather through a buffer of ``_CHUNK_BYTES`` per rank: round ``c`` gathers
        the ``c``-th chunk of every rank's range, then copies it into the parameters (so no
        rank holds a second copy of the model)."""
        MPI = _mpi()
        z = self._zero
        layout, comm, rank = z["layout"], self._comm_, z["rank"]
        arrays = [_array_of(p).reshape(-1) for p in self._params()]
        for d in layout.order:
            counts, displs = layout.counts[d], layout.displs[d]
            chunk = max(1, min(max(counts), _CHUNK_BYTES // d.itemsize))
            buf = z["chunk"].get(d)
            if buf is None or buf.size != chunk * comm.size:
                buf = z["chunk"][d] = np.empty(chunk * comm.size, d)
            starts = [r * chunk for r in range(comm.size)]
            for c in range(_ceil_div(max(counts), chunk)):
                sizes = [max(0, min(chunk, counts[r] - c * chunk)) for r in range(comm.size)]
                at = displs[rank] + c * chunk
                self._copy_range(d, at, at + sizes[rank], buf[starts[rank]:], arrays, into_buffer=True)
                bits, mtype = _wire(buf)
                comm.Allgatherv(MPI.IN_PLACE, [bits, sizes, starts, mtype])
                for r in range(comm.size):
                    if r != rank and sizes[r]:
                        at = displs[r] + c * chunk
                        self._copy_range(d, at, at + sizes[r], buf[starts[r]:], arrays, into_buffer=False)

    def _copy_range(self, d: np.dtype, a: int, b: int, buf: np.ndarray, arrays: list[np.ndarray],
                    into_buffer: bool) -> None:
        """Copies elements ``a:b`` of dtype ``d``'s flat layout between the parameters and
        ``buf`` (which holds element ``a`` at 0); padding is skipped."""
        z = self._zero
        layout = z["layout"]
        members, starts = z["members"][d]
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while i < len(members) and starts[i] < b:
            k = members[i]
            lo, hi = max(a, starts[i]), min(b, starts[i] + layout.sizes[k])
            if lo < hi:
                src = arrays[k][lo - starts[i]:hi - starts[i]]
                if into_buffer:
                    buf[lo - a:hi - a] = src
                else:
                    src[...] = buf[lo - a:hi - a]
            i += 1

    def _adopt_arrays(self) -> None:
        """Follows Parameters whose ``data`` was replaced since the last step (a loaded
        checkpoint, say): their pieces are views of the new arrays (or, with bucket views,
        the new values are copied into the flat buffer and ``data`` points there again)."""
        z = self._zero
        params = self._params()
        arrays = tuple(map(_array_of, params))
        if len(arrays) == len(z["arrays"]) and all(map(is_, arrays, z["arrays"])):
            return
        layout = z["layout"]
        for k, (p, a) in enumerate(zip(params, arrays)):
            if a is z["arrays"][k]:
                continue
            if a.shape != layout.shapes[k] or a.dtype != layout.dtypes[k] or not a.flags.c_contiguous:
                raise ValueError(f"params[{k}] changed to shape {a.shape} and dtype {a.dtype} (C-contiguous "
                                 f"{a.flags.c_contiguous}) since the optimizer was made: it needs shape "
                                 f"{layout.shapes[k]}, dtype {layout.dtypes[k]}, C-contiguous")
        for k, (p, a) in enumerate(zip(params, arrays)):
            if a is z["arrays"][k]:
                continue
            d, off = layout.dtypes[k], layout.offsets[k]
            if self._bucket_view and isinstance(p, Parameter):
                view = z["param_flat"][d][off:off + a.size]
                view[...] = a.reshape(-1)
                p._data = view.reshape(a.shape)
        for (k, lo, hi), q in zip(z["pieces"], z["piece_params"]):
            q._data = self._piece_view(k, lo, hi, params[k], layout, z["param_flat"])
        z["arrays"] = tuple(map(_array_of, params))

    # -- the step -------------------------------------------------------------------------

    def step(self, closure: Any = None, grads: Any = None, *, max_grad_norm: float | None = None,
             norm_type: float = 2.0, skip_if_nonfinite: bool = False, grad_scale: float = 1.0) -> Any:
        """One step of every parameter that has a gradient on some rank (collective: every
        rank calls it). ``grads``, ``max_grad_norm`` (the norm of the averaged gradients over
        all ranks' pieces), ``norm_type`` (a p > 0 or ``inf``), ``skip_if_nonfinite`` and
        ``grad_scale`` as in :meth:`fastopt.optim.Optimizer.step`. A ``closure`` runs first,
        on this rank's data."""
        with self._lock:
            if self._step_pre_hooks or self._step_post_hooks:
                return self._step_with_hooks(closure, grads, max_grad_norm, norm_type, skip_if_nonfinite, grad_scale)
            if max_grad_norm is not None and not 0.0 <= real(max_grad_norm, "max_grad_norm"):
                raise ValueError(f"max_grad_norm must be >= 0 (or None for no clipping), got {max_grad_norm}")
            if grad_scale != 1.0:
                check_grad_scale(grad_scale)
            norm_type = real(norm_type, "norm_type")
            if (max_grad_norm is not None or skip_if_nonfinite) and not (norm_type > 0):
                raise ValueError(f"norm_type must be > 0 or inf for a sharded optimizer, got {norm_type}")
            check_bool(skip_if_nonfinite, "skip_if_nonfinite")
            loss = None if closure is None else closure()
            self._opt_called = True
            self._adopt_arrays()
            z = self._zero
            clipping = max_grad_norm is not None or skip_if_nonfinite
            # Dividing by a power of two is multiplying by its inverse, exactly: the kernel
            # does it as it reads the gradients instead of a pass of its own.
            n = self._comm_.size
            fold = n & (n - 1) == 0 and not clipping
            has = self._reduce_scatter(grads, divide=not fold)
            inner = z["inner"]
            self._push_options()
            per_group: list[list[Any]] = [[] for _ in inner.param_groups]
            for (k, _, _), grad in zip(z["pieces"], z["piece_grads"]):
                per_group[z["groups"][k]].append(grad if has[k] else None)
            for gi, q in enumerate(z["marker"]):
                stepped = any(has[k] for k in range(len(has)) if z["groups"][k] == gi)
                per_group[gi].append(np.zeros(0, q.data.dtype) if stepped else None)
            local = self._local_norm(per_group, norm_type) if clipping else 0.0
            failed: BaseException | None = None
            try:
                inner._check_groups_disjoint()
                for gi, (group, row) in enumerate(zip(inner.param_groups, per_group)):
                    inner._run_group(gi, group, row, True, 1.0)
            except Exception as e:  # (every rank learns of it before any writes)
                failed = e
            total, errors = self._agree(local, norm_type, failed)
            if failed is not None:
                raise failed
            if errors:
                raise RuntimeError(f"ZeroRedundancyOptimizer.step failed on rank {errors[0]}: nothing was updated")
            scale = (1.0 / n if fold else 1.0) * float(grad_scale)
            if clipping:
                if grad_scale != 1.0:
                    total = total * total.dtype.type(grad_scale)
                self.last_grad_norm = total
                if skip_if_nonfinite and not np.isfinite(total):
                    return loss
                if max_grad_norm is not None:
                    scale = float(clip_coefficient(float(max_grad_norm), total)) * float(grad_scale)
            inner._write_groups(per_group, scale)
            if self._class._steps_change_groups:
                self._pull_options()
            self._allgather()
            return loss

    @staticmethod
    def _local_norm(per_group: list[list[Any]], norm_type: float) -> float:
        """This rank's part of the norm: the largest |g| (``inf``) or the sum of |g|**p."""
        every = [g.reshape(-1) for row in per_group for g in row if g is not None and g.size]
        if math.isinf(norm_type):
            return max((float(np.max(np.abs(g))) for g in every), default=0.0)
        total = 0.0
        for g in every:
            g = g.astype(np.float64, copy=False)
            total += float(np.dot(g, g)) if norm_type == 2.0 else float(np.sum(np.abs(g) ** norm_type))
        return total

    def _agree(self, local: float, norm_type: float, failed: BaseException | None) -> tuple[Any, list[int]]:
        """One small allgather: the total norm (this rank's parts combined in rank order), and
        the ranks whose checks failed."""
        comm = self._comm_
        everyone = np.empty((comm.size, 2))
        comm.Allgather(np.array([local, 1.0 if failed is not None else 0.0]), everyone)
        errors = [r for r in range(comm.size) if everyone[r, 1]]
        parts = everyone[:, 0]
        total = float(np.max(parts)) if math.isinf(norm_type) else math.fsum(parts) ** (1.0 / norm_type)
        dtypes = set(map(grad_dtype, self._zero["layout"].dtypes))
        kind = next(iter(dtypes)).type if len(dtypes) == 1 else np.float64
        return kind(total), errors

    # -- Schedule-Free's two points ---------------------------------------------------------

    def _switch(self, name: str) -> None:
        if not hasattr(self._class, name):
            raise AttributeError(f"{self._class.__name__} has no {name}()")
        self._push_options()
        self._adopt_arrays()
        getattr(self._zero["inner"], name)()
        self._pull_options()
        self._allgather()

    def train(self) -> None:
        """Schedule-Free optimizers: moves the parameters to the training point (collective)."""
        self._switch("train")

    def eval(self) -> None:
        """Schedule-Free optimizers: moves the parameters to the average (collective)."""
        self._switch("eval")

    # -- state ----------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        z = self._zero
        return dict(format=SHARD_FORMAT, version=1, rank=z["rank"], optimizer=self._class.__name__,
                    counters=list(self._class._counters), **z["layout"].describe())

    def _groups_dict(self) -> list[dict[str, Any]]:
        """The param groups in torch's layout (options, and params as indices)."""
        import copy

        out, start = [], 0
        for g in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            packed["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            out.append(packed)
        return out

    def _local_state(self) -> dict[int, dict[str, Any]]:
        """This rank's state by parameter index (the local optimizer's entries, not copied)."""
        z = self._zero
        state = z["inner"].state
        out = {}
        for (k, _, _), q in zip(z["pieces"], z["piece_params"]):
            entry = state.get(q)
            if entry:
                out[k] = dict(entry)
        return out

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard: ``{'state': {parameter index: its piece's state}, 'param_groups':
        [...], 'zero': manifest}``; with ``partition='flat'`` each per-element buffer is the
        1-D piece ``lo:hi`` of the flattened tensor (the manifest's layout says which)."""
        for hook in list(self._state_dict_pre_hooks.values()):
            hook(self)
        state = {k: {key: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for key, v in entry.items()}
                 for k, entry in self._local_state().items()}
        result = {"state": state, "param_groups": self._groups_dict(), "zero": self._manifest()}
        for hook in list(self._state_dict_post_hooks.values()):
            out = hook(self, result)
            if out is not None:
                result = out
        return result

    def consolidate_state_dict(self, to: int = 0) -> dict[str, Any] | None:
        """The full state in the unsharded optimizer's (torch's) layout on rank ``to``, None on
        the others (collective). One ``Gatherv`` per kind of buffer and dtype (``exp_avg``
        float32, ...), not one message per tensor; per-tensor values (step counts) travel with
        a small allgather of the pieces' descriptions. It loads into the unsharded fastopt
        optimizer, into :meth:`load_state_dict` on any number of ranks, and (through
        :func:`fastopt.optim.to_torch_state_dict`) into torch.optim."""
        if isinstance(to, bool) or not isinstance(to, numbers.Integral) or not 0 <= to < self._comm_.size:
            raise ValueError(f"to must be a rank of the communicator (0..{self._comm_.size - 1}), got {to!r}")
        full = self._gather_state(every=False, root=int(to))
        if full is None:
            return None
        return {"state": full, "param_groups": self._groups_dict()}

    def _gather_state(self, every: bool, root: int = 0) -> dict[int, dict[str, Any]] | None:
        """The full state by parameter index (torch's shapes), on ``root`` (or on every rank)."""
        z = self._zero
        layout, comm = z["layout"], self._comm_
        local = self._local_state()
        # Per piece with state: its keys in order, its scalars, and for each array its key,
        # dtype and shape (the arrays themselves travel in the Gatherv of their kind).
        meta: list[tuple] = []
        sends: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
        for k, lo, hi in z["pieces"]:
            entry = local.get(k)
            if entry is None:
                continue
            arrays, scalars = [], {}
            for key, v in entry.items():
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    arrays.append((key, dtype_name(v.dtype), v.shape))
                    sends.setdefault((key, dtype_name(v.dtype)), []).append((k, v))
                else:
                    scalars[key] = v
            meta.append((k, lo, hi, list(entry), arrays, scalars))
        metas = comm.allgather(meta)
        kinds = sorted({(key, dt) for m in metas for *_, arrays, _ in m for key, dt, _ in arrays})
        received = {}
        for key, dt in kinds:
            mine = sends.get((key, dt), [])
            dtype = dtype_named(dt)
            send = z["arena"].contiguous(key, mine)
            if send is None:
                send = np.concatenate([v.reshape(-1) for _, v in mine]) if mine else np.zeros(0, dtype)
            counts = [sum(math.prod(shape) for *_, arrays, _ in m for kk, dd, shape in arrays if (kk, dd) == (key, dt))
                      for m in metas]
            displs = [sum(counts[:r]) for r in range(len(counts))]
            recv = np.empty(sum(counts), dtype) if every or comm.rank == root else None
            (bits, mtype), into = _wire(send), None if recv is None else _wire(recv)[0]
            if every:
                comm.Allgatherv([bits, mtype], [into, counts, displs, mtype])
            else:
                comm.Gatherv([bits, mtype], [into, counts, displs, mtype] if into is not None else None, root=root)
            received[(key, dt)] = (recv, displs)
        if not every and comm.rank != root:
            return None
        # Per parameter and key, the pieces received, in rank order: one view of the received
        # buffer when they lie next to each other there (always so for 'flat'), else joined.
        full: dict[int, dict[str, Any]] = {}
        for r, m in enumerate(metas):
            cursor = {kind: received[kind][1][r] for kind in received}
            for k, lo, hi, order, arrays, scalars in m:
                entry = full.setdefault(k, {key: None for key in order})
                for key, v in scalars.items():
                    if entry[key] is None:
                        entry[key] = np.array(v, copy=True) if isinstance(v, np.ndarray) else v
                for key, dt, shape in arrays:
                    n = math.prod(shape)
                    recv, at = received[(key, dt)][0], cursor[(key, dt)]
                    cursor[(key, dt)] = at + n
                    part = (recv, at, n, shape)
                    entry[key] = [part] if entry[key] is None else entry[key] + [part]
        for k, entry in full.items():
            for key, v in entry.items():
                if not isinstance(v, list):
                    continue
                recv, at, _, shape = v[0]
                if layout.partition != "flat":  # (one piece: the whole tensor's value, as it is shaped)
                    entry[key] = recv[at:at + math.prod(shape)].reshape(shape)
                    continue
                n = sum(part[2] for part in v)
                if all(b[1] == a[1] + a[2] for a, b in zip(v, v[1:])):  # (adjacent: a view)
                    joined = recv[at:at + n]
                else:
                    joined = np.concatenate([r[a:a + m] for r, a, m, _ in v])
                entry[key] = joined.reshape(layout.shapes[k])
        return full

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = False) -> None:
        """Loads a full state (the unsharded optimizer's or torch's ``state_dict()``, or
        :meth:`consolidate_state_dict`'s): each rank keeps its pieces, whatever the world size
        that wrote it; or this rank's own shard (``state_dict()`` on the same world size and
        layout; a shard of another world size is refused: re-shard it by loading the
        checkpoint with ``fastopt.load(folder, comm=comm)``, or load the consolidated state).
        ``strict=True`` checks parameter names, buffer shapes and dtypes as the unsharded
        optimizer does (a full state against the parameters, on every rank alike; a shard's
        buffers against this rank's pieces) instead of casting. Nothing changes if it raises."""
        state_dict = self._to_load(state_dict)
        z = self._zero
        layout = z["layout"]
        state = _plain_state(state_dict["state"], "state_dict")
        saved_groups, id_map = self._saved_groups(state_dict["param_groups"])
        shard = is_shard(state_dict)
        if strict:  # (a shard's buffers: by the local optimizer, against the pieces)
            self._check_strict({} if shard else state, saved_groups, id_map)
        if shard:
            m = state_dict["zero"]
            self._check_manifest(m)
            ranges = {k: (lo, hi) for k, lo, hi in z["pieces"]}
            for k, entry in state.items():
                if k not in ranges:
                    raise ValueError(f"state_dict['state'] has parameter {k}, whose elements this rank ({z['rank']}) "
                                     "does not hold: a shard of another rank or layout")
            mine = reshard([(layout, z["rank"], state)], layout, z["rank"], self._class._counters)
        else:
            n = len(layout.shapes)
            for k, entry in state.items():
                if not 0 <= k < n:
                    raise ValueError(f"state_dict['state'] has an entry for parameter {k!r}, which no group lists")
                for key, v in entry.items():
                    per_element = isinstance(v, np.ndarray) and v.ndim > 0 and v.size == layout.sizes[k]
                    if per_element and v.shape != layout.shapes[k]:
                        raise ValueError(f"state[{k}][{key!r}] has shape {v.shape} but its parameter has shape "
                                         f"{layout.shapes[k]}")
            full = full_layout(layout.shapes, layout.dtypes, layout.groups)
            mine = reshard([(full, 0, state)], layout, z["rank"], self._class._counters)
        self._load_local(saved_groups, mine, strict)
        for hook in list(self._load_state_dict_post_hooks.values()):
            hook(self)

    def _check_manifest(self, m: dict[str, Any]) -> None:
        check_manifest(m, "state_dict['zero']")
        z = self._zero
        mine = z["layout"].describe()
        if m.get("world_size") != mine["world_size"]:
            raise ValueError(f"the state dict is rank {m.get('rank')}'s shard of a run on {m.get('world_size')} ranks, "
                             f"but this optimizer runs on {mine['world_size']}: load the checkpoint with "
                             "fastopt.load(folder, comm=comm), which re-shards it, or load the consolidated state "
                             "(consolidate_state_dict())")
        if m.get("rank") != z["rank"]:
            raise ValueError(f"the state dict is rank {m.get('rank')}'s shard, but this is rank {z['rank']}: "
                             "each rank loads its own")
        for key in ("partition", "shapes", "dtypes", "groups"):
            if m.get(key) != mine[key]:
                raise ValueError(f"the shard's manifest has other {key} than this optimizer ({m.get(key)!r:.80} vs "
                                 f"{mine[key]!r:.80}): a shard of another model or layout")
        if m.get("optimizer") != self._class.__name__:
            raise ValueError(f"the shard holds {m.get('optimizer')}'s state, but this optimizer is "
                             f"{self._class.__name__}")

    def _load_local(self, saved_groups: list[dict[str, Any]], mine: dict[int, dict[str, Any]], strict: bool) -> None:
        """Loads this rank's pieces' state (by parameter index) and the saved options, through
        the local optimizer's own checks; then the options into this wrapper's groups."""
        z = self._zero
        inner = z["inner"]
        index = {id(q): i for i, q in enumerate(q for g in inner.param_groups for q in g["params"])}
        inner_state = {}
        for (k, _, _), q in zip(z["pieces"], z["piece_params"]):
            if k in mine:
                inner_state[index[id(q)]] = mine[k]
        inner_groups = []
        for g, ig in zip(saved_groups, inner.param_groups):
            opts = {key: v for key, v in g.items() if key not in ("params", "param_names")}
            inner_groups.append(dict(opts, params=[index[id(q)] for q in ig["params"]]))
        inner.load_state_dict({"state": inner_state, "param_groups": inner_groups}, strict=strict)
        z["arena"].seat(inner)
        self._pull_options()

    def _load_full(self, full: dict[int, dict[str, Any]]) -> None:
        z = self._zero
        layout = z["layout"]
        whole = full_layout(layout.shapes, layout.dtypes, layout.groups)
        mine = reshard([(whole, 0, full)], layout, z["rank"], self._class._counters)
        self._load_local(self._groups_dict(), mine, False)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a ZeroRedundancyOptimizer holds MPI state and cannot be pickled: save its state_dict()")

    def __repr__(self) -> str:
        body = super().__repr__().split("\n", 1)[1]
        return (f"ZeroRedundancyOptimizer({self._class.__name__}, partition={self._partition!r}, "
                f"world_size={self._comm_.size}) (\n{body}")


def _remove_all(handles: list[Any]) -> None:
    for h in handles:
        h.remove()

