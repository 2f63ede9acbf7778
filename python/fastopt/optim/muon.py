"""Muon (torch.optim.Muon)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from ._engine import Rule
from ._engine import step as _step
from ._options import check_bool, check_nonnegative, real
from .optimizer import Optimizer, _array_of

__all__ = ["Muon", "muon", "round_to_bfloat16"]

#: torch's defaults (torch/optim/_muon.py).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")
NS_DTYPES = ("bfloat16", "float32")


def round_to_bfloat16(x: Any) -> np.ndarray:
    """``x`` rounded to bfloat16 (round-to-nearest-even, as torch's ``.to(torch.bfloat16)``),
    returned as float32: bfloat16 is float32 with the low 16 bits of the mantissa dropped."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = (u + (((u >> 16) & np.uint32(1)) + np.uint32(0x7FFF))) & np.uint32(0xFFFF0000)
    out = rounded.view(np.float32)
    nan = np.isnan(x)
    if nan.any():
        out = np.where(nan, np.float32(np.nan), out)
    return out


def _newton_schulz(update: np.ndarray, coefficients: Sequence[float], steps: int, eps: float, ns_dtype: str) -> np.ndarray:
    """torch's ``_zeropower_via_newtonschulz``: with ``'bfloat16'``, every tensor torch holds in
    bfloat16 is rounded to it (products and sums accumulate in float32, one rounding per
    result, as torch's CPU bfloat16 matmul); with ``'float32'`` everything stays float32."""
    a, b, c = coefficients
    rnd: Any = round_to_bfloat16 if ns_dtype == "bfloat16" else (lambda v: np.asarray(v, np.float32))
    x = rnd(update)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    norm = rnd(np.float32(np.linalg.norm(x.astype(np.float64))))
    x = rnd(x / max(norm, rnd(np.float32(eps))))
    for _ in range(steps):
        gram = rnd(x @ x.T)
        gram_update = rnd(np.float32(b) * gram + np.float32(c) * (gram @ gram))
        x = rnd(np.float32(a) * x + gram_update @ x)
    return x.T if tall else x


def _adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch's ``_adjust_lr``."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    elif adjust_lr_fn == "spectral_unclamped":
        ratio = math.sqrt(rows / cols)
    else:
        ratio = 1.0
    return lr * ratio


class Muon(Optimizer):
    r"""Muon (Jordan et al., 2024): momentum, then the update orthogonalised by a quintic
    Newton-Schulz iteration, for 2-D parameters (torch.optim.Muon: arguments, defaults, checks,
    state ``momentum_buffer`` and update rule). torch runs the iteration in bfloat16; so does
    this one by default (each matrix torch holds in bfloat16 rounded to it, the products
    accumulated in float32 by NumPy's BLAS), so results agree with torch's to bfloat16
    rounding; ``ns_dtype='float32'`` runs it in float32 instead (beyond torch). The momentum
    and the final update are fused Rust passes.

    With gradient :math:`G_t`, momentum :math:`\mu` and the Newton-Schulz coefficients
    :math:`(a, b, c)`:

    .. math::

        B_t = \mu B_{t-1} + (1 - \mu) G_t, \qquad
        U_t = \begin{cases} (1 - \mu) G_t + \mu B_t & \text{nesterov} \\ B_t & \text{otherwise} \end{cases},

        X_0 = U_t / \max(\lVert U_t \rVert_F, \epsilon), \qquad
        X_{k+1} = a X_k + (b A_k + c A_k^2) X_k, \quad A_k = X_k X_k^\top,

        P_t = P_{t-1} (1 - \mathrm{lr}\cdot\lambda) - \mathrm{lr}'\, X_{K}

    (for a tall matrix the iteration runs on :math:`U_t^\top`; :math:`\mathrm{lr}'` is ``lr``
    scaled by ``adjust_lr_fn``: ``None``/``'original'`` :math:`\sqrt{\max(1, A/B)}`,
    ``'match_rms_adamw'`` :math:`0.2\sqrt{\max(A, B)}`, ``'spectral_unclamped'``
    :math:`\sqrt{A/B}` for an :math:`A \times B` parameter).

    Example:

    >>> w = fo.Parameter(np.eye(3, dtype=np.float32))
    >>> opt = fo.optim.Muon([w], lr=0.1, weight_decay=0.0)
    >>> w.grad = np.diag(np.array([1.0, 2.0, 3.0], np.float32))
    >>> opt.step()
    >>> np.round(np.diag(w.data), 2)  # every direction moves about as much: orthogonalised
    array([0.93, 0.93, 0.89], dtype=float32)
    """

    _takes_half = False  # (its own arithmetic is float32/float64 only)
    _takes_device = False  # (passes of its own: no CUDA kernels yet)

    _couples = "tensor"  # (Newton-Schulz orthogonalises the whole matrix)
    _option_docs = {
        "weight_decay": "decoupled weight decay: the parameter is multiplied by ``1 - lr * weight_decay``",
        "momentum": "momentum factor of the buffer (and of the Nesterov interpolation)",
        "nesterov": "orthogonalise ``lerp(grad, buffer, momentum)`` instead of the buffer",
        "ns_coefficients": "``(a, b, c)`` of the quintic Newton-Schulz iteration",
        "eps": "floor of the Frobenius norm the update is divided by",
        "ns_steps": "Newton-Schulz iterations (below 100)",
        "adjust_lr_fn": "scaling of ``lr`` by the parameter's shape: None or ``'original'``, "
                        "``'match_rms_adamw'``, ``'spectral_unclamped'``",
        "ns_dtype": "precision of the Newton-Schulz iteration: ``'bfloat16'`` (torch's) or ``'float32'``; "
                    "kept in the param groups only when not the default",
    }

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 ns_dtype: str = "bfloat16") -> None:
        defaults: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                                        adjust_lr_fn=adjust_lr_fn)
        if ns_dtype != "bfloat16":  # (torch's groups have no such key)
            defaults["ns_dtype"] = ns_dtype
        self._validate_group(dict(defaults, ns_dtype=ns_dtype))
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        check_nonnegative(lr, "lr", f"Learning rate should be >= 0 but is: {lr}")
        check_nonnegative(group["momentum"], "momentum", f"momentum should be >= 0 but is: {group['momentum']}")
        check_nonnegative(group["weight_decay"], "weight_decay",
                          f"weight decay should be >= 0 but is: {group['weight_decay']}")
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {group['adjust_lr_fn']} is not supported")
        check_bool(group["nesterov"], "nesterov")
        coefficients = group["ns_coefficients"]
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError("Coefficients must be a tuple of exactly 3 values")
        for i, v in enumerate(coefficients):
            real(v, f"ns_coefficients[{i}]")
        check_nonnegative(group["eps"], "eps", f"eps should be >= 0 but is: {group['eps']}")
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 100:
            raise ValueError(f"Number of steps must be an int in [0, 100), got {steps!r}")
        if group.get("ns_dtype", "bfloat16") not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {NS_DTYPES}, got {group.get('ns_dtype')!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            a = _array_of(p)
            if a.ndim != 2:
                self.param_groups.pop()
                raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: {a.shape}")

    def _step_group(self, group, params, arrays, grads, check_only, grad_scale=1.0):
        bufs, created = self._buffers(params, arrays, ("momentum_buffer",), (), group)
        updates = [np.empty_like(a) for a in arrays]
        rule = Rule("muon_momentum", momentum=group["momentum"], nesterov=group["nesterov"])
        # The momentum pass checks every array (shapes, dtypes, layout, overlap) first, and
        # counts its completion: a step that fails there leaves no trace. (Past it, a step
        # interrupted between the tensors' updates is not retried.)
        _step(rule, updates, grads, bufs, [], None, grad_scale, check_only, None if check_only else self._check_cache(group))
        if check_only:
            return
        _orthogonalised_steps(arrays, updates, group["lr"], group["weight_decay"], group["ns_coefficients"],
                              group["ns_steps"], group["eps"], group["adjust_lr_fn"], group.get("ns_dtype", "bfloat16"))
        if created:
            self._commit(created)


def muon(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], muon_momentum_bufs: Sequence[np.ndarray], *,
         lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
         ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7, ns_steps: int = 5,
         adjust_lr_fn: str | None = None, ns_dtype: str = "bfloat16") -> None:
    """Muon (torch.optim._muon.muon; see :class:`fastopt.optim.Muon`): the momentum buffers and
    the 2-D parameters updated in place.

    Example:

    >>> F = fo.optim.functional
    >>> p, g, buf = np.eye(2), np.diag([1.0, 4.0]), np.zeros((2, 2))
    >>> F.muon([p], [g], [buf], lr=0.1, weight_decay=0.0, ns_dtype="float32")
    >>> np.round(np.diag(p), 1)
    array([0.9, 0.9])
    """
    updates = [np.empty_like(a) for a in params]
    _step(Rule("muon_momentum", momentum=momentum, nesterov=nesterov), updates, grads, [muon_momentum_bufs], [])
    _orthogonalised_steps(params, updates, lr, weight_decay, ns_coefficients, ns_steps, eps, adjust_lr_fn, ns_dtype)


def _orthogonalised_steps(params: Sequence[np.ndarray], updates: Sequence[np.ndarray], lr: float, weight_decay: float,
                          coefficients: Sequence[float], steps: int, eps: float, adjust_lr_fn: str | None,
                          ns_dtype: str) -> None:
    """Each parameter decayed and moved by its orthogonalised update (one fused pass each)."""
    for a, u in zip(params, updates):
        x = _newton_schulz(u, coefficients, steps, eps, ns_dtype)
        apply = Rule("scaled_add", decay=1 - lr * weight_decay, alpha=-_adjusted_lr(lr, adjust_lr_fn, a.shape))
        _step(apply, [a], [np.ascontiguousarray(x, dtype=a.dtype)], [], [])
