"""fastopt's optimizers as ``torch.optim.Optimizer`` subclasses for CPU (and CUDA) tensors.

One changed import moves a torch training loop onto fastopt's kernels::

    from fastopt.torch import Adam          # instead of: from torch.optim import Adam
    opt = Adam(model.parameters(), lr=1e-3)

``fastopt.torch.<Name>`` exists for every optimizer of :mod:`fastopt.optim`, with its
arguments. Each is a real ``torch.optim.Optimizer``: it takes ``model.parameters()``, named
parameters or param-group dicts, and ``torch.optim.lr_scheduler``, ``torch.amp.GradScaler``,
``torch.nn.utils.clip_grad_norm_``, step and state-dict hooks, ``zero_grad``,
``state_dict()`` and ``load_state_dict()`` work on it as on torch's own. Its state has
torch's layout and keys, so a state dict moves between ``torch.optim.<Name>`` and
``fastopt.torch.<Name>`` in both directions.

The kernels update the tensors' memory in place, without a copy: parameters must be CPU,
contiguous, float32, float64, float16 or bfloat16 tensors (anything else is refused with the
tensor's index and name, never silently copied; bfloat16 needs ``ml_dtypes`` imported, the
``[bf16]`` extra, whose type NumPy uses for them); state tensors share their memory with the
kernels' arrays. 16-bit parameters keep their state in their dtype and are updated in
float32 arithmetic, each stored value rounded once, as torch's ``fused=True`` kernels.
Gradients are only read (a non-contiguous gradient is read through a contiguous copy, a
lazily negated one, ``torch._neg_view``, through a resolved copy).

Where it helps: a step over small and many tensors, where torch's per-tensor work dominates
(161 tensors of 64 elements: Adam 12x faster than torch's ``foreach`` path here). Where it
does not: tensors of 1e7 elements and more, where both move the same bytes at the memory's
bandwidth.

``flat=True`` (the element-wise optimizers: all but Lamb, Adafactor, Muon, Prodigy and
LBFGS) takes the per-tensor work out of a training step as well. Each param group's
parameters are copied into one buffer and each parameter's ``.data`` becomes a view of it
(the Parameter objects stay the same; a reference to the old ``.data`` no longer shares
their memory); each gets a ``.grad`` that is a view of one gradient buffer, which backward
accumulates into in place. A step is then one kernel call over the group's buffers,
whatever the number of tensors, and ``zero_grad()`` zeroes the gradient buffer in one pass:

- gradients stay (zeroed) views whatever ``set_to_none`` says, so a parameter that gets no
  gradient in a step is stepped with a zero gradient, as torch's optimizers step it after
  ``zero_grad(set_to_none=False)`` (with weight decay or momentum it still moves);
- a gradient set to None (``model.zero_grad()``) or assigned is copied into the buffer at
  the next step (None as zeros) and the view put back;
- frozen parameters, parameters that are views of other tensors or share their memory,
  empty and CUDA ones stay outside the buffers and step one by one, as without ``flat``;
- state tensors are views of the group's state buffers (``step`` one tensor per parameter,
  as torch keeps it); a state dict moves to and from ``torch.optim`` and ``flat=False``
  unchanged, but loads only where the group's parameters all have state at the same step;
- ``state_dtype='int8'`` and ``master_weights='stochastic'`` are refused (their blocks and
  random streams are counted within each tensor).

Example::

    opt = AdamW(model.parameters(), lr=1e-3, flat=True)
    for x, y in batches:
        opt.zero_grad()               # one pass over the gradient buffer
        loss_fn(model(x), y).backward()
        opt.step()                    # one kernel call per param group

CUDA tensors (float32 and float64) are updated in place by fastopt's CUDA kernels
(:mod:`fastopt.backends.cuda`, which needs CuPy: the ``[cuda]`` extra), seen through DLPack
without a copy, on torch's current stream; their state lives on the GPU.

This module imports torch; ``import fastopt`` does not.
"""

from __future__ import annotations

import inspect
from operator import attrgetter, is_
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.autograd.profiler as _profiler
import torch.optim.optimizer as _torch_optim

from . import optim as _optim
from .backends import is_device_array, to_device_like
from .parameter import Parameter as _FastParameter
from .parameter import arrays_replaced
from .parameter import bfloat16_dtype, is_bfloat16

__all__ = [name for name in _optim.__all__ if isinstance(getattr(_optim, name), type)
           and issubclass(getattr(_optim, name), _optim.Optimizer) and name != "Optimizer"]

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numpy = torch.Tensor.numpy
_GRAD = attrgetter("grad")

def _scalar(v: Any) -> Any:
    """A counter's value as a float (None, and values that are no number, as they are)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _owns_memory(t: torch.Tensor) -> bool:
    """Whether ``t`` is all of its storage (no view into a larger tensor)."""
    return bool(t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size())


class _Flat:
    """One param group's parameters stepped through one buffer (``flat=True``): ``params``,
    at positions ``index`` of the group, are views of ``data`` at ``spans`` (offset, size),
    their gradients the views ``views`` of ``grad``; ``fp`` is the inner optimizer's
    parameter over both. ``scalars``: (state key, per-parameter buffer) for each counter,
    which torch keeps per parameter and the inner optimizer once."""

    __slots__ = ("index", "params", "spans", "data", "grad", "views", "fp", "scalars")

    def __init__(self, index: list[int], params: list[torch.Tensor]) -> None:
        self.index, self.params = index, params
        self.spans: list[tuple[int, int]] = []
        off = 0
        for p in params:
            self.spans.append((off, p.numel()))
            off += p.numel()
        dtype = params[0].dtype
        self.data = torch.empty(off, dtype=dtype)
        self.grad = torch.zeros(off, dtype=dtype)
        self.views = [self.grad[o:o + n].view(p.shape) for p, (o, n) in zip(params, self.spans)]
        self.scalars: list[tuple[str, np.ndarray]] = []
        self.fp: Any = None

    def holds(self, p: torch.Tensor, i: int) -> bool:
        """Whether parameter ``p`` is still this buffer's ``i``-th member, where it was put."""
        o, n = self.spans[i]
        return (p.dtype == self.data.dtype and p.numel() == n
                and _data_ptr(p) == _data_ptr(self.data) + o * self.data.element_size())

    def move_in(self) -> None:
        """Copies the parameters (and any gradients) into the buffers and makes each
        parameter's ``.data`` and ``.grad`` views of them."""
        for p, (o, n), view in zip(self.params, self.spans, self.views):
            self.data[o:o + n].copy_(p.detach().reshape(-1))
            if p.grad is not None:
                view.copy_(p.grad)
            p.data = self.data[o:o + n].view(p.shape)
            p.grad = view
        self.fp = _FastParameter(_array(self.data))
        self.fp.grad = _array(self.grad)


def _array(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory; a bfloat16 tensor's as ``ml_dtypes.bfloat16``
    (NumPy has no bfloat16 of its own; fastopt does not import ml_dtypes for the program).
    A CUDA tensor's: a CuPy view through DLPack (no copy)."""
    if t.device.type == "cuda":
        from .backends import cuda  # noqa: PLC0415 (only for CUDA tensors)

        return cuda.require().from_dlpack(t)
    if t.dtype == torch.bfloat16:
        bf = bfloat16_dtype()
        if bf is None:
            raise TypeError("bfloat16 tensors are seen by NumPy through ml_dtypes: pip install 'fastopt[bf16]' and "
                            "import ml_dtypes before stepping them")
        return t.view(torch.int16).numpy().view(bf)
    return t.numpy()


def _to_numpy(v: Any) -> Any:
    """A state value as the kernels take it: tensors as NumPy views of their memory (made
    contiguous first), lists and tuples element by element, anything else as it is."""
    if isinstance(v, torch.Tensor):
        if v.device.type not in ("cpu", "cuda"):
            v = v.cpu()
        return _array(v.detach().contiguous())
    if isinstance(v, (list, tuple)):
        return type(v)(_to_numpy(x) for x in v)
    return v


def _to_torch(v: Any) -> Any:
    """A state value as torch keeps it: arrays as tensors sharing their memory."""
    if isinstance(v, np.ndarray):
        if is_bfloat16(v.dtype):  # (torch reads no ml_dtypes array: through its bits)
            return torch.from_numpy(v.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(v)
    if is_device_array(v):
        return torch.from_dlpack(v)  # (a CuPy array: the same GPU memory)
    if isinstance(v, (list, tuple)):
        return type(v)(_to_torch(x) for x in v)
    return v


class Optimizer(torch.optim.Optimizer):
    """Base of ``fastopt.torch.<Name>``: a ``torch.optim.Optimizer`` whose step runs
    fastopt's optimizer ``_fastopt_class`` on NumPy views of the tensors.

    torch's ``param_groups`` and ``state`` are the source of truth: options changed in a
    group (by a scheduler, say) take effect at the next step, and the state tensors share
    memory with the arrays the kernels update.
    """

    _fastopt_class: type[_optim.Optimizer] = _optim.Optimizer

    def __init__(self, params: Iterable[Any], *args: Any, flat: bool = False, **kwargs: Any) -> None:
        # The fastopt class checks the arguments and says what the defaults are (on a float32
        # probe: master_weights, which depends on the parameters' dtype, is checked when the
        # inner optimizer is built over the real tensors).
        self._flat = self._check_flat(flat, kwargs)
        self._flats: list[_Flat | None] = []
        master = kwargs.get("master_weights")
        probe = self._fastopt_class([_FastParameter(np.zeros((1, 1), np.float32))], *args,
                                    **{k: v for k, v in kwargs.items() if k != "master_weights"})
        self._args, self._kwargs = args, kwargs
        self._inner: Any = None
        self._built: list = []  # what the inner optimizer was built from: see `_sync`
        super().__init__(params, dict(probe.defaults, **({"master_weights": master} if master is not None else {})))
        self._build()

    @classmethod
    def _check_flat(cls, flat: Any, kwargs: dict) -> bool:
        if not isinstance(flat, bool):
            raise TypeError(f"flat must be True or False, got {flat!r}")
        if flat:
            name = cls.__name__
            if cls._fastopt_class._couples is not None:  # (its update reads more than the element)
                raise ValueError(f"flat=True needs an element-wise update; {name}'s looks at whole tensors, so its "
                                 "tensors cannot share one buffer (use flat=False)")
            if kwargs.get("state_dtype") == "int8":
                raise ValueError("flat=True cannot keep state_dtype='int8': the 8-bit state's blocks of 256 elements "
                                 "are counted within each tensor (use flat=False)")
            if kwargs.get("master_weights") == "stochastic":
                raise ValueError("flat=True cannot round stochastically: the random stream is keyed by each "
                                 "tensor's element index (use flat=False, or another master_weights)")
        return flat

    # -- the inner fastopt optimizer ---------------------------------------------------------

    @staticmethod
    def _options(group: dict) -> dict:
        return {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
                for k, v in group.items() if k not in ("params", "param_names")}

    def _check_tensor(self, gi: int, i: int, p: Any) -> None:
        group = self.param_groups[gi]
        names = group.get("param_names")
        where = f"param_groups[{gi}]['params'][{i}]" + (f" ({names[i]!r})" if names else "")
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{where} is a {type(p).__name__}, not a torch tensor")
        if p.device.type == "cuda":
            if p.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"{where} is a {p.dtype} CUDA tensor; fastopt's CUDA kernels take float32 and "
                                "float64")
        elif p.device.type != "cpu":
            raise ValueError(f"{where} is on {p.device}: fastopt.torch updates CPU and CUDA tensors in place "
                             "(use torch.optim for tensors on other devices)")
        if p.dtype not in _DTYPES:
            raise TypeError(f"{where} has dtype {p.dtype}; fastopt's kernels take float32, float64, float16 or "
                            "bfloat16 tensors")
        if p.is_sparse or p.layout != torch.strided:
            raise ValueError(f"{where} is not a strided tensor (layout {p.layout})")
        if not p.is_contiguous():
            raise ValueError(f"{where} is not contiguous: the kernels update memory in place and would have "
                             "to update a copy (make the tensor contiguous before building the optimizer)")

    def _build(self, state: bool = True) -> None:
        """(Re)builds the inner optimizer over views of the current tensors (with
        ``flat=True``, first moving each group's parameters into one buffer) and, with
        ``state``, hands it torch's state (tensors become views of the same memory)."""
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                self._check_tensor(gi, i, p)
        flats: list[_Flat | None] = self._flatten() if self._flat else [None] * len(self.param_groups)
        groups, pairs = [], []
        for group, flat in zip(self.param_groups, flats):
            members = set(flat.index) if flat is not None else set()
            own = [(p, _FastParameter(_array(p.detach()))) for i, p in enumerate(group["params"]) if i not in members]
            pairs += own
            groups.append({**self._options(group), "params": ([flat.fp] if flat is not None else []) + [fp for _, fp in own]})
        inner = self._fastopt_class(groups, *self._args, **self._kwargs)
        self._inner, self._flats = inner, flats
        #: Whether the optimizer evaluates the closure itself, several times (LBFGS).
        self._closure_steps = isinstance(inner, _optim.LBFGS)
        # (the parameters stepped one by one: all of them unless flat=True)
        self._pairs = pairs
        self._params = [p for p, _ in self._pairs]
        self._on_cuda = any(p.device.type == "cuda" for p in self._params)
        self._grads_given: list | None = None  # the gradient tensors last handed over
        if state:
            for p, fp in self._pairs:
                st = self.state.get(p)
                if st:
                    inner.state[fp] = {k: _to_numpy(v) for k, v in st.items()}
                    if p.device.type == "cuda":  # (torch keeps `step` on the CPU; fastopt counts on the GPU)
                        inner.state[fp] = {k: to_device_like(fp.data, v) if not is_device_array(v) else v
                                           for k, v in inner.state[fp].items()}
            for gi, flat in enumerate(flats):
                if flat is not None:
                    joined = self._joined(gi, flat, [self.state.get(p) for p in flat.params])
                    if joined:
                        inner.state[flat.fp] = joined
        self._mirror()
        self._built = self._signature()

    def _flatten(self) -> list[_Flat | None]:
        """Each group's :class:`_Flat` (None where no parameter can join one): its trainable
        CPU parameters that are all of their memory and share it with no other parameter
        (views of other tensors stay apart and step one by one, as without ``flat``, so that
        their bases move with them). Parameters still where the previous build put them stay
        there; otherwise the group's members are copied into new buffers."""
        previous = self._flats if len(self._flats) == len(self.param_groups) else [None] * len(self.param_groups)
        kept = []
        for group, prev in zip(self.param_groups, previous):
            listed = {id(q) for q in group["params"]} if prev is not None else set()
            kept.append([id(p) in listed and prev.holds(p, i) for i, p in enumerate(prev.params)] if prev is not None else [])
        placed = {id(p) for prev, ok in zip(previous, kept) if prev is not None for p, k in zip(prev.params, ok) if k}
        owners: dict[int, int] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in placed and p.device.type == "cpu":
                    key = p.untyped_storage().data_ptr()
                    owners[key] = owners.get(key, 0) + 1
        flats: list[_Flat | None] = []
        for group, prev, ok in zip(self.param_groups, previous, kept):
            index = [i for i, p in enumerate(group["params"])
                     if p.device.type == "cpu" and p.requires_grad and p.numel() > 0
                     and (id(p) in placed or (_owns_memory(p) and owners[p.untyped_storage().data_ptr()] == 1))]
            members = [group["params"][i] for i in index]
            if not members or len({p.dtype for p in members}) > 1:
                flats.append(None)  # (a mixed group: the inner optimizer says why it refuses it)
                continue
            if (prev is not None and all(ok) and len(prev.params) == len(members)
                    and all(map(is_, prev.params, members))):
                prev.index = index
                flats.append(prev)
                continue
            for p in members:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            flats.append(_Flat(index, members))
        for flat, prev in zip(flats, previous):
            if flat is not None and flat is not prev:
                flat.move_in()
        return flats

    def _joined(self, gi: int, flat: _Flat, entries: list) -> dict | None:
        """The state of a group's flat members (``entries``: each one's state dict, or None)
        as the inner optimizer keeps it for their buffer: element-wise buffers concatenated,
        counters (``step``) once, which must then be equal."""
        if not any(entries):
            return None
        where = f"flat=True: param_groups[{gi}]"
        first = next(e for e in entries if e)
        for j, e in zip(flat.index, entries):
            if not e or set(e) != set(first):
                raise ValueError(f"{where}['params'][{j}] has state {sorted(e or ())} but another parameter of the group "
                                 f"has {sorted(first)}: flat=True steps a group's parameters together (load this state "
                                 "with flat=False)")
        counters = self._fastopt_class._counters
        out: dict[str, Any] = {}
        for key, value in first.items():
            values = [_to_numpy(e[key]) for e in entries]
            if key in counters or value is None or not hasattr(values[0], "__array__"):
                as_float = [_scalar(v) for v in values]
                for j, v in zip(flat.index, as_float):
                    if not (v is as_float[0] is None or (isinstance(v, float) and v == as_float[0])):
                        raise ValueError(f"{where}['params'][{j}] has {key!r} {v}, another parameter of the group "
                                         f"{as_float[0]}: flat=True steps a group's parameters together (load this "
                                         "state with flat=False)")
                out[key] = values[0]
                continue
            for j, p, v in zip(flat.index, flat.params, values):
                if np.size(v) != p.numel():
                    raise ValueError(f"{where}['params'][{j}]: state {key!r} has {np.size(v)} elements but the "
                                     f"parameter has {p.numel()}")
            out[key] = np.concatenate([np.asarray(v).reshape(-1) for v in values])
        return out

    def _signature(self) -> list:
        """What the inner optimizer depends on, per group: the group, its params, the
        params' memory and the group's options."""
        return [[group, tuple(group["params"]), tuple(map(_data_ptr, group["params"])), self._options(group),
                 self._values(group)] for group in self.param_groups]

    @staticmethod
    def _values(group: dict) -> list | None:
        """The group's values, to tell it unchanged by identity (None when an option is a
        tensor, which may change in place: such a group is compared by value)."""
        values = list(group.values())
        return None if any(isinstance(v, torch.Tensor) for v in values) else values

    def _sync(self) -> None:
        """Brings the inner optimizer up to date with torch's param_groups: options changed
        in a group (a scheduler's lr) are copied over; new groups, params or memory (a
        parameter whose ``.data`` was replaced) rebuild it. Cheap when nothing changed."""
        built, groups = self._built, self.param_groups
        if len(built) == len(groups):
            for gi, (entry, group) in enumerate(zip(built, groups)):
                p = group["params"]
                if (entry[0] is not group or len(entry[1]) != len(p) or not all(map(is_, entry[1], p))
                        or tuple(map(_data_ptr, p)) != entry[2]):
                    break
                if entry[4] is not None and all(map(is_, group.values(), entry[4])) and len(group) == len(entry[4]):
                    continue  # (no option was replaced)
                now = self._options(group)
                if now != entry[3]:
                    self._inner.param_groups[gi].update(now)
                    entry[3] = now
                entry[4] = self._values(group)
            else:
                return
        self._build()

    def _groups_back(self) -> None:
        """torch's param_groups from the inner optimizer's, where a step or a mode switch
        changed them (Schedule-Free's counters and train mode, stochastic rounding's step)."""
        for entry, group, ig in zip(self._built, self.param_groups, self._inner.param_groups):
            # (values the inner group has and torch's lacks come too: the stochastic rounding
            # counters, which the inner optimizer adds)
            changed = {k: v for k, v in ig.items() if k != "params" and (k not in entry[3] or entry[3][k] != v)}
            if changed:
                group.update(changed)
                entry[3].update(changed)

    def _mirror(self) -> None:
        """torch's state from the inner optimizer's (tensors sharing the arrays' memory)."""
        inner_state = self._inner.state
        for p, fp in self._pairs:
            st = inner_state.get(fp)
            if st:
                self.state[p] = {k: _to_torch(v) for k, v in st.items()}
        counters = self._fastopt_class._counters
        for flat in self._flats:
            st = inner_state.get(flat.fp) if flat is not None else None
            if flat is None or not st:
                continue
            # element-wise buffers: each parameter's slice; counters: one 0-d tensor per
            # parameter (torch's optimizers count each parameter's steps in its own tensor)
            size = flat.data.numel()
            flat.scalars = [(k, np.full(len(flat.params), v, dtype=np.asarray(v).dtype)) for k, v in st.items()
                            if k in counters and v is not None and np.ndim(v) == 0]
            scalars = {k: torch.from_numpy(buf) for k, buf in flat.scalars}
            whole = {k: scalars.get(k, _to_torch(v)) for k, v in st.items()}
            for i, (p, (o, n)) in enumerate(zip(flat.params, flat.spans)):
                self.state[p] = {k: v[i] if k in scalars
                                 else v[o:o + n].view(p.shape) if isinstance(v, torch.Tensor) and v.shape == (size,)
                                 else v for k, v in whole.items()}
        self._mirrored = inner_state._version

    def _count_back(self) -> None:
        """Each flat member's counters (``step``) from the inner optimizer's, after a step."""
        state = self._inner.state
        for flat in self._flats:
            if flat is not None and flat.scalars:
                st = state[flat.fp]
                for key, buf in flat.scalars:
                    buf[...] = st[key]

    # -- torch.optim.Optimizer ------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if getattr(self, "_inner", None) is not None:
            try:
                self._build()
            except Exception:
                self.param_groups.pop()
                self._build()
                raise

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """``step(closure=None)``: one update of every parameter that has a gradient, by
        fastopt's kernels; returns the closure's loss (the closure runs with gradients
        enabled; the update itself is no autograd operation). Step pre- and post-hooks (the
        optimizer's and torch's global ones) run around it as torch runs them."""
        if (_torch_optim._global_optimizer_pre_hooks or _torch_optim._global_optimizer_post_hooks
                or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _profiler._is_profiler_enabled):
            return self._step_with_hooks(args, kwargs)
        out = self._step(*args, **kwargs)
        self._optimizer_step_code()
        return out

    # torch wraps every subclass's ``step`` in a function that runs the hooks inside a
    # profiler range, which costs more than a small model's whole update; a step marked
    # ``hooked`` is left alone, so this one runs the hooks itself and opens the range only
    # while the profiler records.
    step.hooked = True  # type: ignore[attr-defined]

    def _step_with_hooks(self, args: tuple, kwargs: dict) -> Any:
        """torch's ``profile_hook_step``: the pre-hooks (which may replace the arguments), the
        step, the post-hooks, in the profiler's ``Optimizer.step#<Name>.step`` range."""
        args = (self, *args)
        with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
            for pre_hook in [*_torch_optim._global_optimizer_pre_hooks.values(),
                             *self._optimizer_step_pre_hooks.values()]:
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"{type(self).step} must return None or a tuple of (new_args, new_kwargs), "
                                           f"but got {result}.")
                    args, kwargs = result
            out = type(self)._step(*args, **kwargs)
            self._optimizer_step_code()
            for post_hook in [*self._optimizer_step_post_hooks.values(),
                              *_torch_optim._global_optimizer_post_hooks.values()]:
                post_hook(self, args, kwargs)
            return out

    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        self._sync()
        inner = self._inner
        if self._closure_steps:
            if closure is None:
                raise RuntimeError(f"{type(self).__name__} requires a closure that re-evaluates the model and "
                                   "returns the loss")
            first: list = []
            inner.step(self._closure_for_lbfgs(closure, first))
            self._mirror()  # (its state holds lists it changes in place)
            return first[0]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._grads()
        if self._flat:
            self._flat_grads()
        if self._on_cuda:
            # fastopt's launches go on torch's current stream (CuPy's, while the step runs)
            from .backends import cuda  # noqa: PLC0415 (only for CUDA tensors)

            with cuda.require().cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                inner.step()
        else:
            inner.step()
        if inner.state._version != self._mirrored:
            self._mirror()
        elif self._flat:
            self._count_back()
        if inner._steps_change_groups:
            self._groups_back()
        return loss

    def _grads(self) -> None:
        """Hands every parameter's gradient to the inner optimizer's parameters as a NumPy
        view (None where it has none). Nothing is done while the gradient tensors are the
        objects of the previous step (``zero_grad(set_to_none=False)``, or gradients set
        once): the inner parameters still hold their views."""
        tensors = list(map(_GRAD, self._params))
        given = self._grads_given
        if given is not None and len(given) == len(tensors) and all(map(is_, given, tensors)):
            return
        views: list[np.ndarray | None]
        try:
            if not all(map(_is_contiguous, tensors)):
                raise TypeError
            views = list(map(_numpy, tensors))  # (fails on None, sparse, non-CPU and lazily negated tensors)
        except (TypeError, RuntimeError):
            views = [self._grad_of(p) for p in self._params]
        self._grads_given = tensors
        for (_, fp), v in zip(self._pairs, views):
            fp._grad = v
        arrays_replaced()

    def _flat_grads(self) -> None:
        """Makes each flat member's gradient its view of the group's gradient buffer again
        where it is not (``model.zero_grad()`` set it to None, or a gradient was assigned):
        the tensor's values are copied in, None counts as zeros. Nothing is done while every
        gradient is its view, as autograd leaves them (it accumulates in place)."""
        for flat in self._flats:
            if flat is None or all(map(is_, map(_GRAD, flat.params), flat.views)):
                continue
            for p in flat.params:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            for p, view in zip(flat.params, flat.views):
                g = p.grad
                if g is view:
                    continue
                if g is None:
                    view.zero_()
                else:
                    view.copy_(g)
                p.grad = view

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; with ``flat=True`` each group's gradient buffer is zeroed in
        one pass and its parameters keep their gradients (views of it) whatever
        ``set_to_none`` says, so that backward accumulates into the buffer (the parameters
        outside the buffers follow ``set_to_none``)."""
        if not self._flat:
            super().zero_grad(set_to_none)
            return
        for flat in self._flats:
            if flat is not None:
                flat.grad.zero_()
                for p, view in zip(flat.params, flat.views):
                    if p.grad is not view:
                        p.grad = view
        for group, flat in zip(self.param_groups, self._flats):
            members = set(flat.index) if flat is not None else set()
            for i, p in enumerate(group["params"]):
                if i in members or p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:  # (as torch's zero_grad)
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def _grad_of(self, p: torch.Tensor) -> np.ndarray | None:
        g = p.grad
        if g is None:
            return None
        if g.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if g.is_neg():
            g = g.resolve_neg()  # (a lazily negated tensor: its memory holds the other sign)
        if not g.is_contiguous():
            g = g.contiguous()  # (only read: the copy changes nothing the caller sees)
        return _array(g)

    def _closure_for_lbfgs(self, closure: Callable[[], Any], first: list) -> Callable[[], float]:
        """The closure as fastopt's LBFGS calls it: the loss as a float, the gradients handed
        over; the first loss is kept in ``first`` (torch's LBFGS returns it)."""
        def evaluate() -> float:
            with torch.enable_grad():
                loss = closure()
            if not first:
                first.append(loss)
            for p, fp in self._pairs:
                fp.grad = self._grad_of(p)
            return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

        return evaluate

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (from ``torch.optim.<Name>`` or ``fastopt.torch.<Name>``);
        the kernels then work on the loaded state.

        torch casts every state tensor but ``step`` to its parameter's dtype. fastopt keeps
        some state in other dtypes (``state_dtype``, the buffers of ``master_weights``, 8-bit
        codes and their absmax), so the state is then loaded again from the dict's own
        values by :meth:`fastopt.optim.Optimizer.load_state_dict`'s rules (a float32 state
        into a bfloat16-state group is rounded, into an 8-bit group quantized), and torch's
        state shares the result's memory."""
        own = self._inner_state_dict(state_dict) if self._flat else None
        super().load_state_dict(state_dict)
        self._build(state=False)
        if own is None:
            own = {"state": {k: {key: _to_numpy(v) for key, v in entry.items()}
                             for k, entry in state_dict["state"].items()},
                   "param_groups": state_dict["param_groups"]}
        self._inner.load_state_dict(own)
        self._mirror()

    def _inner_state_dict(self, state_dict: Any) -> dict | None:
        """``state_dict`` (torch's layout, one entry per parameter) in the inner optimizer's
        layout with ``flat=True``: each group's flat members as one parameter (their buffers
        joined: :meth:`_joined`), then the others. Checked before anything is loaded; None
        when the dict does not fit this optimizer's groups (torch's load then says why)."""
        try:
            saved_state, saved_groups = state_dict["state"], list(state_dict["param_groups"])
            if len(saved_groups) != len(self.param_groups) or any(
                    len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
                return None
        except (TypeError, KeyError):
            return None
        state: dict[int, dict] = {}
        groups = []
        count = 0
        for gi, (saved, flat) in enumerate(zip(saved_groups, self._flats)):
            ids = list(saved["params"])
            members = set(flat.index) if flat is not None else set()
            entries = [self._joined(gi, flat, [saved_state.get(ids[i]) for i in flat.index])] if flat is not None else []
            entries += [saved_state.get(k) for i, k in enumerate(ids) if i not in members]
            new_ids = list(range(count, count + len(entries)))
            count += len(entries)
            for k, entry in zip(new_ids, entries):
                if entry:
                    state[k] = {key: _to_numpy(v) for key, v in entry.items()}
            groups.append({**{key: v for key, v in saved.items() if key != "param_names"}, "params": new_ids})
        return {"state": state, "param_groups": groups}


def _train(self: Optimizer) -> None:
    """The inner optimizer's ``train()`` (Schedule-Free: parameters to the training point)."""
    self._sync()
    self._inner.train()
    self._groups_back()


def _eval(self: Optimizer) -> None:
    """The inner optimizer's ``eval()`` (Schedule-Free: parameters to the average)."""
    self._sync()
    self._inner.eval()
    self._groups_back()


def _make(name: str) -> type:
    fast = getattr(_optim, name)
    doc = (f"fastopt's :class:`fastopt.optim.{name}` as a ``torch.optim.Optimizer`` over CPU tensors "
           f"(same arguments; see :mod:`fastopt.torch`).\n\n"
           f"Example:\n\n"
           f">>> import torch\n"
           f">>> import fastopt.torch\n"
           f">>> model = torch.nn.Linear(3, 2{', bias=False' if name == 'Muon' else ''})\n"
           f">>> opt = fastopt.torch.{name}(model.parameters()"
           + (", lr=0.01" if "lr" in inspect.signature(fast.__init__).parameters else "") + ")\n"
           f">>> isinstance(opt, torch.optim.Optimizer)\nTrue\n")
    sig = inspect.signature(fast.__init__)
    params = list(sig.parameters.values())[1:]  # (without self)
    if fast._couples is None:  # (an element-wise update: flat=True can step it)
        doc += ("\n``flat=True`` moves each param group's parameters and gradients into one buffer and "
                "steps it in one call (see :mod:`fastopt.torch`).\n")
        params.append(inspect.Parameter("flat", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool"))
    sig = sig.replace(parameters=params)
    body: dict[str, Any] = {"_fastopt_class": fast, "__doc__": doc, "__module__": __name__, "__qualname__": name,
                            "__signature__": sig}
    if hasattr(fast, "train"):
        body.update(train=_train, eval=_eval)
    return type(name, (Optimizer,), body)


for _name in __all__:
    globals()[_name] = _make(_name)
del _name
