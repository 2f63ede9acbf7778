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

    _fastopt_class: type = _optim.Optimizer

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        # The fastopt class checks the arguments and says what the defaults are (on a float32
        # probe: master_weights, which depends on the parameters' dtype, is checked when the
        # inner optimizer is built over the real tensors).
        master = kwargs.get("master_weights")
        probe = self._fastopt_class([_FastParameter(np.zeros((1, 1), np.float32))], *args,
                                    **{k: v for k, v in kwargs.items() if k != "master_weights"})
        self._args, self._kwargs = args, kwargs
        self._inner: Any = None
        self._built: list = []  # what the inner optimizer was built from: see `_sync`
        super().__init__(params, dict(probe.defaults, **({"master_weights": master} if master is not None else {})))
        self._build()

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

    def _build(self) -> None:
        """(Re)builds the inner optimizer over views of the current tensors and hands it
        torch's state (tensors become views of the same memory)."""
        groups = []
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                self._check_tensor(gi, i, p)
            fps = [_FastParameter(_array(p.detach())) for p in group["params"]]
            groups.append({**self._options(group), "params": fps})
        inner = self._fastopt_class(groups, *self._args, **self._kwargs)
        self._inner = inner
        #: Whether the optimizer evaluates the closure itself, several times (LBFGS).
        self._closure_steps = isinstance(inner, _optim.LBFGS)
        self._pairs = [(p, fp) for group, ig in zip(self.param_groups, inner.param_groups)
                       for p, fp in zip(group["params"], ig["params"])]
        self._params = [p for p, _ in self._pairs]
        self._on_cuda = any(p.device.type == "cuda" for p in self._params)
        self._grads_given: list | None = None  # the gradient tensors last handed over
        for p, fp in self._pairs:
            st = self.state.get(p)
            if st:
                inner.state[fp] = {k: _to_numpy(v) for k, v in st.items()}
                if p.device.type == "cuda":  # (torch keeps `step` on the CPU; fastopt counts on the GPU)
                    inner.state[fp] = {k: to_device_like(fp.data, v) if not is_device_array(v) else v
                                       for k, v in inner.state[fp].items()}
        self._mirror()
        self._built = self._signature()

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
        self._mirrored = inner_state._version

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
        if self._on_cuda:
            # fastopt's launches go on torch's current stream (CuPy's, while the step runs)
            from .backends import cuda  # noqa: PLC0415 (only for CUDA tensors)

            with cuda.require().cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                inner.step()
        else:
            inner.step()
        if inner.state._version != self._mirrored:
            self._mirror()
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
        super().load_state_dict(state_dict)
        self._build()
        own = {"state": {k: {key: _to_numpy(v) for key, v in entry.items()} for k, entry in state_dict["state"].items()},
               "param_groups": state_dict["param_groups"]}
        self._inner.load_state_dict(own)
        self._mirror()


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
    sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # (without self)
    body: dict[str, Any] = {"_fastopt_class": fast, "__doc__": doc, "__module__": __name__, "__qualname__": name,
                            "__signature__": sig}
    if hasattr(fast, "train"):
        body.update(train=_train, eval=_eval)
    return type(name, (Optimizer,), body)


for _name in __all__:
    globals()[_name] = _make(_name)
del _name
