"""Bit-for-bit record of every optimizer's long-run results, to keep refactors honest.

For each optimizer configuration and dtype, :func:`digest` runs 40 steps (deterministic
gradients that depend on the parameters and the step, made with IEEE-exact operations only,
so they are the same on every machine; every fifth step with gradient clipping folded into
the update, so ``grad_scale`` is exercised) over tensors of several shapes,
one of them large enough to be split across threads, and returns the SHA-256 of the final
parameters and every state buffer. ``tests/data/golden_steps.json`` holds the digests at
the scalar level and at the FMA levels (AVX2, AVX-512 and NEON give identical results), so
any change to the arithmetic, however small, fails ``test_golden.py``.

Regenerate only for an intended change of results:
``python tests/golden.py --write`` (then say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import fastopt as fo
from fastopt import _fastopt

PATH = Path(__file__).parent / "data" / "golden_steps.json"
SHAPES = [(), (7,), (33, 31), (70_001,)]
STEPS = 40

CONFIGS: list[tuple[str, dict]] = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-6)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, amsgrad=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=1e-2, alpha=0.3, centered=True)),
    ("Adadelta", dict(lr=0.5, weight_decay=0.1)),
    ("Adamax", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("NAdam", dict(lr=1e-2, momentum_decay=0.1, betas=(0.3, 0.99))),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1)),
    ("RAdam", dict(lr=1e-2, betas=(0.9, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    ("ASGD", dict(lr=1e-2, t0=5, weight_decay=0.1)),
    ("Rprop", dict(lr=1e-2, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05), maximize=True)),
    ("AdaBound", dict(lr=1e-2, final_lr=0.1, weight_decay=0.1)),
    ("AMSBound", dict(lr=1e-2, final_lr=0.1)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1)),
    ("AdaBelief", dict(lr=1e-2, weight_decay=0.1)),
    ("AdaBelief", dict(lr=1e-2, rectify=False, amsgrad=True, decoupled_weight_decay=False, weight_decay=0.1)),
    ("AdaBelief", dict(lr=1e-2, fixed_decay=True, weight_decay=0.01, degenerated_to_sgd=False, maximize=True)),
    ("Lamb", dict(lr=1e-2, weight_decay=0.01)),
    ("Lamb", dict(lr=1e-2, weight_decay=0.01, clamp_value=2.0, bias_correction="step")),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, cautious=True)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True, cautious=True)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1, cautious=True)),
    ("AdamWScheduleFree", dict(lr=1e-2, weight_decay=0.1, warmup_steps=5)),
    ("SGDScheduleFree", dict(lr=1e-2, weight_decay=0.1, r=0.5, maximize=True)),
    ("ADOPT", dict(lr=1e-2, weight_decay=0.1)),
    ("ADOPT", dict(lr=1e-2, weight_decay=0.1, decouple=True, maximize=True, clip_lambda=None)),
    ("AdEMAMix", dict(lr=1e-2, weight_decay=0.1)),
    ("AdEMAMix", dict(lr=1e-2, alpha=5.0, beta3_warmup=20, alpha_warmup=10, maximize=True)),
    ("Adafactor", dict(lr=1e-2, weight_decay=0.01)),
    ("Adafactor", dict(lr=0.05, beta2_decay=-0.5, d=1.5, eps=(1e-20, 1e-2), maximize=True)),
    ("Prodigy", dict(weight_decay=0.1)),
    ("Prodigy", dict(weight_decay=0.1, decouple=False, betas=(0.0, 0.99), use_bias_correction=True)),
]


def key(name: str, kwargs: dict, dtype: str) -> str:
    opts = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{name}({opts})/{dtype}"


def digest(name: str, kwargs: dict, dtype_name: str) -> str:
    dtype = np.dtype(dtype_name).type
    rng = np.random.default_rng(1234)
    params = [fo.Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    noise = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    opt = getattr(fo.optim, name)(params, **kwargs)
    for t in range(STEPS):
        for p, z in zip(params, noise):
            # depends on the parameter (so any difference grows) and on the step
            # a bounded function of the parameter plus noise scaled by a rational sequence:
            # +, *, / and abs only (numpy's tanh and cos differ between SIMD builds)
            c = np.asarray(((t * 37) % 11 - 5) / 5, dtype)
            p.grad = np.asarray(p.data * dtype(1.5) / (dtype(1) + np.abs(p.data)) + z * c, dtype)
        if t % 5 == 4:
            opt.step(max_grad_norm=1.0)
        else:
            opt.step()
    h = hashlib.sha256()
    for p in params:
        h.update(np.ascontiguousarray(p.data).tobytes())
        for k in sorted(opt.state[p]):
            v = opt.state[p][k]
            h.update(k.encode())
            h.update(np.ascontiguousarray(np.asarray(v)).tobytes())
    return h.hexdigest()[:32]


def levels() -> dict[str, str]:
    """The SIMD level to record for each rounding class this CPU has."""
    out = {"scalar": "scalar"}
    best = _fastopt.detected_simd_level()
    if best != "scalar":
        out["fma"] = best
    return out


def compute(level: str) -> dict[str, str]:
    before = _fastopt.simd_level()
    _fastopt.set_simd_level(level)
    try:
        return {key(n, kw, dt): digest(n, kw, dt) for n, kw in CONFIGS for dt in ("float32", "float64")}
    finally:
        _fastopt.set_simd_level(before)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden.py --write")
    data = {cls: compute(level) for cls, level in levels().items()}
    PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sum(map(len, data.values()))} digests to {PATH}")
