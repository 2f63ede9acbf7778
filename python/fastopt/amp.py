"""Loss scaling for float16 training: :class:`GradScaler`, ``torch.amp.GradScaler``'s names
and semantics for fastopt's optimizers.

float16 cannot hold gradients much below 6e-8: multiplying the loss by a large ``scale``
before backward lifts them into its range, and the optimizer step divides them by it again.
The scale grows by ``growth_factor`` after ``growth_interval`` steps without an infinite or
NaN gradient and shrinks by ``backoff_factor`` (the step skipped) when one appears.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .nn.utils import _by_dtype, _norm, _scale_, get_total_norm

__all__ = ["GradScaler"]

_READY, _UNSCALED, _STEPPED = 0, 1, 2


class GradScaler:
    r"""Dynamic loss scaling (``torch.amp.GradScaler``).

    ``scale(loss)`` multiplies by the scale :math:`s`; backward then yields :math:`s\,g`.
    ``step(optimizer)`` checks the scaled gradients for infinities and NaNs in one read pass
    and, when all are finite, runs the optimizer's step with ``grad_scale=1/s``: the kernel
    multiplies each gradient element by :math:`1/s` (rounded to float32, as torch's
    reciprocal) as it reads it, so the gradients are never rewritten (torch unscales them in
    place first). With ``step(optimizer, max_grad_norm=...)`` (clipping inside the step, the
    2-norm) over float16 gradients the check is the step's own norm pass (the norm, accumulated
    in float64, is finite exactly when every element is): two passes over the gradients, the
    norm's and the update's, as for clipping alone. ``update()`` then sets

    .. math::

        s \leftarrow \begin{cases} s\cdot\text{backoff\_factor} & \text{a step found a non-finite gradient,}\\
        s\cdot\text{growth\_factor} & \text{after growth\_interval finite steps in a row,}\\
        s & \text{otherwise.}\end{cases}

    ``unscale_(optimizer)`` divides the gradients in place instead (for clipping between
    backward and step, as in torch); the following ``step`` does not unscale again. Unlike
    torch's, float16 gradients may be unscaled (float32 arithmetic, one rounding).
    ``device`` is accepted for torch's signature and must be ``"cpu"``.

    Example:

    >>> import fastopt as fo
    >>> w = fo.Parameter(np.zeros(4, np.float16))
    >>> opt = fo.optim.SGD([w], lr=1e4)
    >>> scaler = fo.amp.GradScaler(init_scale=1024.0, growth_interval=2)
    >>> float(np.float16(1e-8))  # a gradient float16 cannot hold ...
    0.0
    >>> w.grad = np.full(4, scaler.scale(1e-8), np.float16)  # ... scaled, it can
    >>> scaler.step(opt); scaler.update()
    >>> round(float(w.data[0]), 6), scaler.get_scale()
    (-0.0001, 1024.0)
    >>> w.grad = np.full(4, np.inf, np.float16)  # an overflow: the step is skipped
    >>> before = w.data.copy()
    >>> scaler.step(opt); scaler.update()
    >>> bool((w.data == before).all()), scaler.get_scale()
    (True, 512.0)
    """

    def __init__(
        self,
        device: str = "cpu",
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if device != "cpu":
            raise ValueError(f"device must be 'cpu' (fastopt's arrays are in host memory), got {device!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        for name, v in (("init_scale", init_scale), ("growth_factor", growth_factor), ("backoff_factor", backoff_factor)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
        if growth_factor <= 1.0:
            raise ValueError("The growth factor must be > 1.0.")
        if backoff_factor >= 1.0:
            raise ValueError("The backoff factor must be < 1.0.")
        if not 0.0 < init_scale:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, (int, np.integer)) or growth_interval <= 0:
            raise ValueError(f"growth_interval must be a positive integer, got {growth_interval!r}")
        self._device = device
        self._enabled = enabled
        # (float32 like torch's scale tensor; the factors stay Python floats, as torch's)
        self._scale = np.float32(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict[str, Any]] = {}

    # -- torch.amp.GradScaler's API ------------------------------------------------------------

    def is_enabled(self) -> bool:
        return self._enabled

    def scale(self, outputs: Any) -> Any:
        """``outputs`` (a number, an array, or a list/tuple of them) times the scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if isinstance(outputs, np.ndarray):
            return outputs * outputs.dtype.type(self._scale) if outputs.dtype.kind == "f" else outputs * self._scale
        if isinstance(outputs, (int, float, np.floating)) and not isinstance(outputs, bool):
            return outputs * float(self._scale)
        raise TypeError(f"outputs must be a number, a numpy array or a list or tuple of them, got {type(outputs).__name__}")

    def _record(self, optimizer: Any) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": None, "opt": optimizer})

    def _inv_scale(self) -> float:
        # torch: scale.double().reciprocal().float()
        return float(np.float32(1.0 / float(self._scale)))

    @staticmethod
    def _grads(optimizer: Any, given: Any = None) -> list[np.ndarray]:
        """The gradients a step reads: ``given`` (``step(grads=[...])``) where given, else the
        params' ``grad``."""
        if given is not None:
            return [np.asarray(g) if not hasattr(g, "dtype") else g for g in given if g is not None]
        return [p.grad for group in optimizer.param_groups for p in group["params"]
                if getattr(p, "grad", None) is not None]

    @staticmethod
    def _norm_checks(optimizer: Any, grads: list[Any], kwargs: dict[str, Any]) -> bool:
        """Whether the step's own gradient norm (``max_grad_norm=`` with the 2-norm) tells a
        non-finite gradient element, so the separate check pass can be left out: for float16
        gradients the squares are summed in float64 and the norm (at most 65504 times the
        square root of the element count) is returned in float32, so no finite gradient
        overflows it and any infinity or NaN makes it non-finite: "the norm is finite" is
        "every element is finite". (Not for bfloat16, whose finite values reach 3.4e38: their
        norm can overflow float32.)"""
        from .optim.optimizer import Optimizer  # noqa: PLC0415 (amp is imported by optim)

        return (isinstance(optimizer, Optimizer) and kwargs.get("max_grad_norm") is not None
                and kwargs.get("norm_type", 2.0) == 2.0 and bool(grads)
                and all(isinstance(g, np.ndarray) and g.dtype == np.float16 for g in grads))

    def unscale_(self, optimizer: Any) -> None:
        """Divides ``optimizer``'s gradients by the scale in place and records whether any is
        infinite or NaN (torch's errors when called twice or after ``step``)."""
        if not self._enabled:
            return
        rec = self._record(optimizer)
        if rec["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if rec["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        grads = self._grads(optimizer)
        rec["found_inf"] = self._non_finite(grads)
        for group in _by_dtype(grads, "grads").values():
            _scale_(group, self._inv_scale())
        rec["stage"] = _UNSCALED

    @staticmethod
    def _non_finite(grads: list[np.ndarray]) -> bool:
        """Whether any gradient element is infinite or NaN: per dtype, the 2-norm's kernel
        (squares summed in float64, vectorised: finite exactly when every float32 or 16-bit
        element is, since no such square or sum overflows float64), and for float64
        gradients, whose squares can overflow, the largest magnitude."""
        if not grads:
            return False
        if not all(isinstance(g, np.ndarray) for g in grads):
            return not bool(np.isfinite(get_total_norm(grads, math.inf)))
        return any(not math.isfinite(_norm(group, math.inf if d == np.float64 else 2.0))
                   for d, group in _by_dtype(grads, "grads").items())

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs ``optimizer.step(*args, **kwargs)`` with the gradients unscaled (folded into
        the step when ``unscale_`` was not called), unless a gradient is infinite or NaN; then
        the step is skipped and None returned."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs or (args and callable(args[0])):
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        rec = self._record(optimizer)
        if rec["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if rec["stage"] == _READY:
            grads = self._grads(optimizer, kwargs.get("grads", args[1] if len(args) > 1 else None))
            if self._norm_checks(optimizer, grads, kwargs):
                # One pass for the norm and the check, one for the update (the step skips
                # itself when the norm is not finite).
                out = optimizer.step(*args, **{**kwargs, "grad_scale": self._inv_scale(), "skip_if_nonfinite": True})
                rec["found_inf"] = not bool(np.isfinite(optimizer.last_grad_norm))
                rec["stage"] = _STEPPED
                return None if rec["found_inf"] else out
            rec["found_inf"] = self._non_finite(grads)
            if not rec["found_inf"]:
                kwargs = {**kwargs, "grad_scale": self._inv_scale()}
        out = None
        if not rec["found_inf"]:
            out = optimizer.step(*args, **kwargs)
        rec["stage"] = _STEPPED
        return out

    def update(self, new_scale: float | None = None) -> None:
        """The scale for the next iteration (see the class docstring); ``new_scale`` sets it
        directly. Forgets this iteration's per-optimizer records."""
        if not self._enabled:
            return
        if new_scale is not None:
            if isinstance(new_scale, bool) or not isinstance(new_scale, (int, float, np.floating)):
                raise TypeError("new_scale should be a float or a 1-element torch.cuda.FloatTensor or "
                                "torch.FloatTensor with requires_grad=False.")
            self._scale = np.float32(new_scale)
        else:
            found = [r["found_inf"] for r in self._per_optimizer.values() if r["found_inf"] is not None]
            if not found:
                raise AssertionError("No inf checks were recorded prior to update.")
            if any(found):
                self._scale = np.float32(self._scale * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale = np.float32(self._scale * np.float32(self._growth_factor))
                    self._growth_tracker = 0
        self._per_optimizer = {}

    def get_scale(self) -> float:
        return float(self._scale) if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = int(new_interval)

    def state_dict(self) -> dict[str, Any]:
        """torch's keys: ``scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``,
        ``_growth_tracker`` (empty when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled "
                               "instance of GradScaler.")
        self._scale = np.float32(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])
