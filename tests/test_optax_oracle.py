"""optax as a second oracle for the optimizers torch does not have (Lion, LAMB, AdaBelief),
with every hyperparameter passed explicitly (optax's defaults differ). Runs where optax is
installed; the first oracle, a NumPy transcription of each paper, is in test_beyond_torch."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

CASES = [
    ("Lion", dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1), lambda: optax.lion(3e-3, b1=0.9, b2=0.99, weight_decay=0.1)),
    ("Lion", dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.0), lambda: optax.lion(1e-3, b1=0.95, b2=0.98, weight_decay=0.0)),
    ("Lamb", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01),
     lambda: optax.lamb(1e-2, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.01)),
    ("Lamb", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.0),
     lambda: optax.lamb(3e-3, b1=0.8, b2=0.99, eps=1e-8, eps_root=0.0, weight_decay=0.0)),
    # AdaBelief adds eps to the second moment (optax: eps_root) and to its square root (eps).
    ("AdaBelief", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-12, weight_decay=0.0, rectify=False),
     lambda: optax.adabelief(1e-2, b1=0.9, b2=0.999, eps=1e-12, eps_root=1e-12)),
]


def run_optax(tx, p0, grads):
    with jax.default_device(jax.devices("cpu")[0]):
        params = jnp.asarray(p0)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(jnp.asarray(g), state, params)
            params = optax.apply_updates(params, updates)
        return np.asarray(params)


@pytest.mark.parametrize("name,kw,make", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_optax_float64(name, kw, make):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((37, 11))
    grads = [rng.standard_normal(p0.shape) + 0.1 * np.sin(p0 + t) for t in range(100)]
    w = fo.Parameter(p0.copy())
    opt = getattr(fo.optim, name)([w], **kw)
    for g in grads:
        w.grad = g
        opt.step()
    want = run_optax(make(), p0, grads)
    scale = np.abs(p0).max()
    np.testing.assert_allclose(w.data, want, rtol=1e-12, atol=1e-12 * scale)
