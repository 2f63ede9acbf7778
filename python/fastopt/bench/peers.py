"""The peers fastopt's optimizer steps are measured against, shared by ``fastopt bench`` and the
asv suite in ``benches/``: torch's optimizers (default, foreach and fused paths) and careful
in-place NumPy transcriptions of torch's update rules (preallocated temporaries, no
allocation per step), plus the interleaved timer. A test checks each NumPy peer computes what
fastopt computes."""

from __future__ import annotations

import sys

import numpy as np

def problem(n: int, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)


_THREADS: list[int | None] = [None]


def set_threads(threads: int) -> None:
    """Sets fastopt's thread count, and torch's where torch is already imported (a benchmark of
    fastopt alone never imports torch, so its time and peak memory are fastopt's own);
    :func:`import_torch` applies the same count when a peer imports torch later."""
    import fastopt

    fastopt.set_num_threads(threads)
    _THREADS[0] = threads
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def warm_up(*fns, calls: int = 3, seconds: float = 0.05) -> None:
    """Calls each of ``fns`` in turn until each has run ``calls`` times and ``seconds`` have
    passed (at most 1000 rounds): first-call costs (allocation of state, page faults, thread
    pools starting, caches) stay out of a benchmark's timed calls, also in ``asv run --quick``,
    which times a single call with no warm-up of its own."""
    import time

    t0 = time.perf_counter()
    for i in range(1000):
        for fn in fns:
            fn()
        if i + 1 >= calls and time.perf_counter() - t0 >= seconds:
            break


def import_torch():
    """torch (ImportError without it), at the thread count of the latest :func:`set_threads`."""
    import torch

    if _THREADS[0] is not None and torch.get_num_threads() != _THREADS[0]:
        torch.set_num_threads(_THREADS[0])
    return torch


def require_torch():
    """:func:`import_torch` for a benchmark: NotImplementedError without torch, which asv
    reports as skipped."""
    try:
        return import_torch()
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NotImplementedError("torch is not installed") from e


# torch optimizers with a fused CPU kernel.
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}
#: The optimizers torch.optim has among those the benchmarks compare (the others have none).
IN_TORCH = {"Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "Adamax", "Adadelta", "NAdam", "RAdam", "ASGD", "Rprop"}
#: The optimizers :func:`optax_optimizer` builds.
IN_OPTAX = {"Adam", "AdamW", "SGD", "Lion", "Lamb", "AdaBelief"}


def torch_optimizer(name: str, variant: str, p0: np.ndarray, g: np.ndarray, **kw):
    """A torch optimizer over one tensor; variant 'default' (single-tensor loop, torch's CPU
    default), 'foreach' or 'fused'. Raises NotImplementedError (asv: skipped) without torch
    or for a fused variant torch lacks."""
    torch = require_torch()
    if variant == "fused" and name not in TORCH_FUSED:
        raise NotImplementedError(f"torch has no fused {name}")
    if not hasattr(torch.optim, name):
        raise NotImplementedError(f"torch has no {name}")
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    tp.grad = torch.from_numpy(g.copy())
    flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[variant]
    return getattr(torch.optim, name)([tp], **kw, **flags)


#: The authors' (or the reference library's) torch implementation of each optimizer torch
#: lacks: name -> (module, class, extra arguments). The report's "official" column.
OFFICIAL = {
    "ADOPT": ("pytorch_optimizer", "ADOPT", {}),
    "AdEMAMix": ("pytorch_optimizer", "AdEMAMix", {}),
    "Lion": ("pytorch_optimizer", "Lion", {}),
    "AdaBelief": ("adabelief_pytorch", "AdaBelief", {"print_change_log": False}),
    "AdamWScheduleFree": ("schedulefree", "AdamWScheduleFree", {}),
    "SGDScheduleFree": ("schedulefree", "SGDScheduleFree", {}),
    "Prodigy": ("prodigyopt", "Prodigy", {}),
    "Lamb": ("torch_optimizer", "Lamb", {}),
}


def official_optimizer(name: str, p0: np.ndarray, g: np.ndarray, **kw):
    """The step of :data:`OFFICIAL`'s implementation of ``name`` over one torch tensor (put in
    train mode where it has one). Raises NotImplementedError (asv: skipped) without torch or
    the package."""
    import importlib

    if name not in OFFICIAL:
        raise NotImplementedError(f"no official torch implementation of {name} is listed")
    torch = require_torch()
    module, cls, extra = OFFICIAL[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NotImplementedError(f"{module} is not installed") from e
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    tp.grad = torch.from_numpy(g.copy())
    opt = getattr(mod, cls)([tp], **kw, **extra)
    if hasattr(opt, "train"):
        opt.train()
    return opt.step


def optax_optimizer(name: str, p0: np.ndarray, g: np.ndarray, **kw):
    """A step of optax's version of ``name`` ('Adam', 'AdamW', 'SGD' with momentum, 'Lion',
    'Lamb' or 'AdaBelief', with fastopt's defaults for the hyperparameters ``kw`` leaves out)
    under ``jax.jit``, parameters and state donated so XLA may update them in place; the step
    waits for the result. Raises NotImplementedError (asv: skipped) without jax and optax."""
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NotImplementedError("jax and optax are not installed") from e
    lr = kw.get("lr", 1e-3)
    if name == "Adam":
        tx = optax.adam(lr)
    elif name == "AdamW":
        tx = optax.adamw(lr, weight_decay=kw.get("weight_decay", 1e-2))
    elif name == "SGD":
        tx = optax.sgd(lr, momentum=kw.get("momentum") or None)
    elif name == "Lion":
        b1, b2 = kw.get("betas", (0.9, 0.99))
        tx = optax.lion(lr, b1=b1, b2=b2, weight_decay=kw.get("weight_decay", 0.0))
    elif name == "Lamb":
        b1, b2 = kw.get("betas", (0.9, 0.999))
        tx = optax.lamb(lr, b1=b1, b2=b2, eps=kw.get("eps", 1e-6), weight_decay=kw.get("weight_decay", 0.0))
    elif name == "AdaBelief":
        b1, b2 = kw.get("betas", (0.9, 0.999))
        eps = kw.get("eps", 1e-16)
        tx = optax.adabelief(lr, b1=b1, b2=b2, eps=eps, eps_root=eps)
    else:
        raise NotImplementedError(f"no optax peer for {name}")
    params, grads = jnp.asarray(p0), jnp.asarray(g)
    if params.dtype != p0.dtype:  # float64 without jax_enable_x64 would run in float32
        raise NotImplementedError(f"jax is not set up for {p0.dtype} (jax_enable_x64)")
    state = [params, tx.init(params)]

    def _update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(_update, donate_argnums=(0, 1))

    def step():
        state[0], state[1] = update(state[0], state[1], grads)
        state[0].block_until_ready()
    step.params = lambda: np.asarray(state[0])  # type: ignore[attr-defined]  # for the tests that check the peer
    return step


def _ema_(avg, x, beta, tmp):
    """``avg = beta*avg + (1-beta)*x`` in place (a first moment); ``tmp`` is scratch."""
    avg *= beta
    np.multiply(x, 1 - beta, out=tmp)
    avg += tmp


def _ema_product_(avg, x, y, beta, tmp):
    """``avg = beta*avg + (1-beta)*x*y`` in place (a second moment, ``x = y = g``); ``tmp`` is
    scratch (left holding ``(1-beta)*x*y``)."""
    avg *= beta
    np.multiply(x, y, out=tmp)
    tmp *= 1 - beta
    avg += tmp


class NumpyAdam:
    """Adam written carefully in NumPy: in place, preallocated temporaries, torch's formula."""

    def __init__(self, p, g, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
        self.p, self.g = p, g
        self.m, self.v, self.tmp = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
        self.lr, self.b1, self.b2, self.eps, self.wd, self.decoupled = lr, beta1, beta2, eps, weight_decay, decoupled
        self.t = 0

    def step(self):
        self.t += 1
        p, g, m, v, tmp = self.p, self.g, self.m, self.v, self.tmp
        if self.wd and self.decoupled:
            p *= 1 - self.lr * self.wd
        _ema_(m, g, self.b1, tmp)
        _ema_product_(v, g, g, self.b2, tmp)
        bc1 = 1 - self.b1**self.t
        bc2s = (1 - self.b2**self.t) ** 0.5
        np.sqrt(v, out=tmp)
        tmp /= bc2s
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= -self.lr / bc1
        p += tmp


class NumpySGD:
    """SGD with momentum in NumPy, in place."""

    def __init__(self, p, g, lr=1e-3, momentum=0.9):
        self.p, self.g, self.lr, self.mom = p, g, lr, momentum
        self.buf = None

    def step(self):
        if self.buf is None:
            self.buf = self.g.copy()
        else:
            self.buf *= self.mom
            self.buf += self.g
        self.p -= self.lr * self.buf


class NumpyAdagrad:
    """Adagrad in NumPy, in place with a preallocated temporary."""

    def __init__(self, p, g, lr=1e-2, eps=1e-10):
        self.p, self.g, self.lr, self.eps = p, g, lr, eps
        self.sum, self.tmp = np.zeros_like(p), np.empty_like(p)

    def step(self):
        np.multiply(self.g, self.g, out=self.tmp)
        self.sum += self.tmp
        np.sqrt(self.sum, out=self.tmp)
        self.tmp += self.eps
        np.divide(self.g, self.tmp, out=self.tmp)
        self.tmp *= -self.lr
        self.p += self.tmp


class NumpyRMSprop:
    """RMSprop in NumPy, in place with a preallocated temporary."""

    def __init__(self, p, g, lr=1e-2, alpha=0.99, eps=1e-8):
        self.p, self.g, self.lr, self.alpha, self.eps = p, g, lr, alpha, eps
        self.sq, self.tmp = np.zeros_like(p), np.empty_like(p)

    def step(self):
        _ema_product_(self.sq, self.g, self.g, self.alpha, self.tmp)
        np.sqrt(self.sq, out=self.tmp)
        self.tmp += self.eps
        np.divide(self.g, self.tmp, out=self.tmp)
        self.tmp *= -self.lr
        self.p += self.tmp


class _NumpyBase:
    """Shared shape of the NumPy peers: in place, one preallocated temporary, step counter."""

    def __init__(self, p, g):
        self.p, self.g, self.t = p, g, 0
        self.tmp = np.empty_like(p)


class NumpyAdadelta(_NumpyBase):
    def __init__(self, p, g, lr=1.0, rho=0.9, eps=1e-6):
        super().__init__(p, g)
        self.lr, self.rho, self.eps = lr, rho, eps
        self.sq, self.acc, self.delta = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)

    def step(self):
        g, tmp, delta = self.g, self.tmp, self.delta
        _ema_product_(self.sq, g, g, self.rho, tmp)
        np.add(self.acc, self.eps, out=delta)
        np.sqrt(delta, out=delta)
        np.add(self.sq, self.eps, out=tmp)
        np.sqrt(tmp, out=tmp)
        delta /= tmp
        delta *= g
        _ema_product_(self.acc, delta, delta, self.rho, tmp)
        delta *= -self.lr
        self.p += delta


class NumpyAdamax(_NumpyBase):
    def __init__(self, p, g, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(p, g)
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m, self.u = np.zeros_like(p), np.zeros_like(p)

    def step(self):
        self.t += 1
        g, tmp = self.g, self.tmp
        _ema_(self.m, g, self.b1, tmp)
        self.u *= self.b2
        np.abs(g, out=tmp)
        tmp += self.eps
        np.maximum(self.u, tmp, out=self.u)
        np.divide(self.m, self.u, out=tmp)
        tmp *= -self.lr / (1 - self.b1**self.t)
        self.p += tmp


class NumpyNAdam(_NumpyBase):
    def __init__(self, p, g, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, momentum_decay=4e-3):
        super().__init__(p, g)
        self.lr, self.b1, self.b2, self.eps, self.md = lr, beta1, beta2, eps, momentum_decay
        self.m, self.v, self.denom = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
        self.mu_product = 1.0

    def step(self):
        self.t += 1
        t, g, tmp, denom = self.t, self.g, self.tmp, self.denom
        mu = self.b1 * (1 - 0.5 * 0.96 ** (t * self.md))
        mu_next = self.b1 * (1 - 0.5 * 0.96 ** ((t + 1) * self.md))
        # torch keeps mu_product as a float32 tensor
        self.mu_product = float(np.float32(self.mu_product) * np.float32(mu))
        _ema_(self.m, g, self.b1, tmp)
        _ema_product_(self.v, g, g, self.b2, tmp)
        np.divide(self.v, 1 - self.b2**t, out=denom)
        np.sqrt(denom, out=denom)
        denom += self.eps
        np.divide(g, denom, out=tmp)
        tmp *= -self.lr * (1 - mu) / (1 - self.mu_product)
        self.p += tmp
        np.divide(self.m, denom, out=tmp)
        tmp *= -self.lr * mu_next / (1 - self.mu_product * mu_next)
        self.p += tmp


class NumpyRAdam(_NumpyBase):
    def __init__(self, p, g, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(p, g)
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m, self.v, self.denom = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)

    def step(self):
        self.t += 1
        t, g, tmp = self.t, self.g, self.tmp
        _ema_(self.m, g, self.b1, tmp)
        _ema_product_(self.v, g, g, self.b2, tmp)
        bc1, bc2 = 1 - self.b1**t, 1 - self.b2**t
        rho_inf = 2 / (1 - self.b2) - 1
        rho_t = rho_inf - 2 * t * self.b2**t / bc2
        if rho_t > 5:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            np.sqrt(self.v, out=self.denom)
            self.denom += self.eps
            np.divide(self.m, self.denom, out=tmp)
            tmp *= -self.lr * rect * bc2**0.5 / bc1
        else:
            np.multiply(self.m, -self.lr / bc1, out=tmp)
        self.p += tmp


class NumpyASGD(_NumpyBase):
    def __init__(self, p, g, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6):
        super().__init__(p, g)
        self.lr, self.lambd, self.alpha, self.t0 = lr, lambd, alpha, t0
        self.ax, self.eta, self.mu = np.zeros_like(p), float(np.float32(lr)), 1.0

    def step(self):
        self.t += 1
        self.p *= 1 - self.lambd * self.eta
        np.multiply(self.g, -self.eta, out=self.tmp)
        self.p += self.tmp
        if self.mu != 1:
            np.subtract(self.p, self.ax, out=self.tmp)
            self.tmp *= self.mu
            self.ax += self.tmp
        else:
            self.ax[...] = self.p
        # torch keeps eta and mu as float32 tensors
        self.eta = float(np.float32(self.lr / (1 + self.lambd * self.lr * self.t) ** self.alpha))
        self.mu = float(np.float32(1 / max(1, self.t - self.t0)))


class NumpyRprop(_NumpyBase):
    def __init__(self, p, g, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)):
        super().__init__(p, g)
        self.etaminus, self.etaplus = etas
        self.lo, self.hi = step_sizes
        self.prev, self.size = np.zeros_like(p), np.full_like(p, lr)
        self.factor, self.gg = np.empty_like(p), np.empty_like(p)

    def step(self):
        np.multiply(self.g, self.prev, out=self.tmp)
        np.sign(self.tmp, out=self.factor)
        # sign -> etaplus / etaminus / 1, then clamp the step sizes
        np.copyto(self.factor, self.etaplus, where=self.factor > 0)
        np.copyto(self.factor, self.etaminus, where=self.factor < 0)
        np.copyto(self.factor, 1.0, where=self.factor == 0)
        self.size *= self.factor
        np.clip(self.size, self.lo, self.hi, out=self.size)
        np.copyto(self.gg, self.g)
        np.copyto(self.gg, 0.0, where=self.factor == self.etaminus)
        np.sign(self.gg, out=self.tmp)
        self.tmp *= self.size
        self.p -= self.tmp
        np.copyto(self.prev, self.gg)


class NumpyAdaBound(_NumpyBase):
    """AdaBound / AMSBound (``amsbound=True``): Adam's step size per element, clipped to bounds
    that close in on ``final_lr``."""

    def __init__(self, p, g, lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8, amsbound=False):
        super().__init__(p, g)
        self.lr, (self.b1, self.b2), self.final_lr, self.gamma, self.eps = lr, betas, final_lr, gamma, eps
        self.m, self.v = np.zeros_like(p), np.zeros_like(p)
        self.vmax = np.zeros_like(p) if amsbound else None

    def step(self):
        self.t += 1
        t, g, tmp = self.t, self.g, self.tmp
        _ema_(self.m, g, self.b1, tmp)
        _ema_product_(self.v, g, g, self.b2, tmp)
        v = self.v
        if self.vmax is not None:
            np.maximum(self.vmax, self.v, out=self.vmax)
            v = self.vmax
        np.sqrt(v, out=tmp)
        tmp += self.eps
        np.divide(self.lr * np.sqrt(1 - self.b2**t) / (1 - self.b1**t), tmp, out=tmp)
        lower = self.final_lr * (1 - 1 / (self.gamma * t + 1))
        upper = self.final_lr * (1 + 1 / (self.gamma * t))
        np.clip(tmp, lower, upper, out=tmp)
        tmp *= self.m
        self.p -= tmp


class NumpyLion(_NumpyBase):
    def __init__(self, p, g, lr=1e-4, betas=(0.9, 0.99)):
        super().__init__(p, g)
        self.lr, (self.b1, self.b2) = lr, betas
        self.m, self.tmp2 = np.zeros_like(p), np.empty_like(p)

    def step(self):
        g, tmp, tmp2 = self.g, self.tmp, self.tmp2
        # the update's sign uses beta1; the moment then moves with beta2
        np.multiply(self.m, self.b1, out=tmp)
        np.multiply(g, 1 - self.b1, out=tmp2)
        tmp += tmp2
        np.sign(tmp, out=tmp2)  # (in place, NumPy's sign takes a slow branchy loop)
        tmp2 *= self.lr
        self.p -= tmp2
        _ema_(self.m, g, self.b2, tmp)


class NumpyADOPT(_NumpyBase):
    """The authors' ADOPT in place (first step: ``v = g*g`` only)."""

    def __init__(self, p, g, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6):
        super().__init__(p, g)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m, self.v = np.zeros_like(p), np.zeros_like(p)

    def step(self):
        g, tmp = self.g, self.tmp
        if self.t == 0:
            np.multiply(g, g, out=tmp)
            self.v += tmp
        else:
            np.sqrt(self.v, out=tmp)
            np.maximum(tmp, self.eps, out=tmp)
            np.divide(g, tmp, out=tmp)
            c = self.t**0.25
            np.clip(tmp, -c, c, out=tmp)
            _ema_(self.m, tmp, self.b1, tmp)
            np.multiply(self.m, self.lr, out=tmp)
            self.p -= tmp
            _ema_product_(self.v, g, g, self.b2, tmp)
        self.t += 1


class NumpyAdEMAMix(_NumpyBase):
    """The authors' AdEMAMix in place (no warm-ups)."""

    def __init__(self, p, g, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, eps=1e-8):
        super().__init__(p, g)
        self.lr, (self.b1, self.b2, self.b3), self.alpha, self.eps = lr, betas, alpha, eps
        self.m1, self.m2, self.v, self.tmp2 = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), np.empty_like(p)

    def step(self):
        self.t += 1
        t, g, tmp, tmp2 = self.t, self.g, self.tmp, self.tmp2
        bc1, bc2 = 1 - self.b1**t, 1 - self.b2**t
        _ema_(self.m1, g, self.b1, tmp)
        _ema_(self.m2, g, self.b3, tmp)
        _ema_product_(self.v, g, g, self.b2, tmp)
        np.sqrt(self.v, out=tmp)
        tmp *= 1 / bc2**0.5
        tmp += self.eps
        np.multiply(self.m1, 1 / bc1, out=tmp2)
        tmp2 += self.alpha * self.m2
        tmp2 /= tmp
        tmp2 *= self.lr
        self.p -= tmp2


class NumpyProdigy(_NumpyBase):
    """The authors' Prodigy step in place (one tensor, decoupled decay off, no bias correction)."""

    def __init__(self, p, g, lr=1.0, betas=(0.9, 0.999), eps=1e-8, d0=1e-6):
        super().__init__(p, g)
        self.lr, (self.b1, self.b2), self.eps, self.d0 = lr, betas, eps, d0
        self.b3 = betas[1] ** 0.5
        self.d, self.d_max, self.numerator = d0, d0, 0.0
        self.m, self.v, self.s, self.p0 = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), p.copy()

    def step(self):
        g, tmp, d = self.g, self.tmp, self.d
        dlr = d * self.lr
        np.subtract(self.p0, self.p, out=tmp)
        self.numerator = self.numerator * self.b3 + (d / self.d0) * dlr * float(np.vdot(g, tmp))
        self.m *= self.b1
        np.multiply(g, d * (1 - self.b1), out=tmp)
        self.m += tmp
        self.v *= self.b2
        np.multiply(g, g, out=tmp)
        tmp *= d * d * (1 - self.b2)
        self.v += tmp
        self.s *= self.b3
        np.multiply(g, (d / self.d0) * dlr, out=tmp)
        self.s += tmp
        np.abs(self.s, out=tmp)
        denom = float(tmp.sum())
        if denom == 0:
            return
        d_hat = self.numerator / denom
        if d == self.d0:
            d = max(d, d_hat)
        self.d_max = max(self.d_max, d_hat)
        self.d = d = min(self.d_max, d)
        np.sqrt(self.v, out=tmp)
        tmp += d * self.eps
        np.divide(self.m, tmp, out=tmp)
        tmp *= dlr
        self.p -= tmp


class NumpyScheduleFree(_NumpyBase):
    """The authors' Schedule-Free AdamW (``adam``) or SGD step in place (no warm-up, r = 0)."""

    def __init__(self, p, g, lr=1e-3, betas=(0.9, 0.999), momentum=0.9, eps=1e-8, adam=True, weight_lr_power=2.0):
        super().__init__(p, g)
        self.lr, self.eps, self.adam, self.power = lr, eps, adam, weight_lr_power
        self.b1, self.b2 = (betas if adam else (momentum, 0.0))
        self.z, self.v, self.weight_sum = p.copy(), np.zeros_like(p), 0.0

    def step(self):
        self.t += 1
        g, tmp = self.g, self.tmp
        weight = self.lr**self.power
        self.weight_sum += weight
        ckp1 = weight / self.weight_sum
        if self.adam:
            _ema_product_(self.v, g, g, self.b2, tmp)
            np.multiply(self.v, 1 / (1 - self.b2**self.t), out=tmp)
            np.sqrt(tmp, out=tmp)
            tmp += self.eps
            np.divide(g, tmp, out=tmp)
        else:
            np.copyto(tmp, g)
        np.subtract(self.z, self.p, out=self.z)  # (z - y, then back)
        self.p += ckp1 * self.z
        self.z += self.p - ckp1 * self.z  # z again, from y_old + (z - y_old)
        self.p += (self.lr * (self.b1 * (1 - ckp1) - 1)) * tmp
        tmp *= self.lr
        self.z -= tmp


class NumpyAdaBelief(_NumpyBase):
    """The paper's Algorithm 1 (fastopt's ``rectify=False``)."""

    def __init__(self, p, g, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, rectify=False):
        if rectify:
            raise ValueError("the NumPy AdaBelief peer is the unrectified algorithm (rectify=False)")
        super().__init__(p, g)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m, self.s = np.zeros_like(p), np.zeros_like(p)

    def step(self):
        self.t += 1
        t, g, tmp = self.t, self.g, self.tmp
        _ema_(self.m, g, self.b1, tmp)
        np.subtract(g, self.m, out=tmp)
        _ema_product_(self.s, tmp, tmp, self.b2, tmp)
        self.s += self.eps
        np.divide(self.s, 1 - self.b2**t, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps
        np.divide(self.m, tmp, out=tmp)
        tmp *= -self.lr / (1 - self.b1**t)
        self.p += tmp


class NumpyLamb(_NumpyBase):
    """LAMB: Adam's direction plus weight decay, scaled per tensor by ||p|| / ||r||."""

    def __init__(self, p, g, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(p, g)
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.m, self.v, self.r = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)

    def step(self):
        self.t += 1
        t, g, tmp, r = self.t, self.g, self.tmp, self.r
        _ema_(self.m, g, self.b1, tmp)
        _ema_product_(self.v, g, g, self.b2, tmp)
        np.divide(self.v, 1 - self.b2**t, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps
        np.divide(self.m, 1 - self.b1**t, out=r)
        r /= tmp
        if self.wd:
            np.multiply(self.p, self.wd, out=tmp)
            r += tmp
        pn, rn = float(np.linalg.norm(self.p.ravel())), float(np.linalg.norm(r.ravel()))
        trust = 1.0 if pn == 0 or rn == 0 else pn / rn
        r *= self.lr * trust
        self.p -= r


def interleaved(impls: dict, rounds: int, block_seconds: float) -> dict:
    """Median seconds per call of each implementation, measured in turns: ``impls`` maps a
    key to ``(threads, fn)``; each round runs a block of calls (at least ``block_seconds`` and
    3 calls, after one untimed call) of every implementation in turn, so slow drifts of a
    noisy machine hit all of them alike."""
    import time

    for threads, fn in impls.values():  # allocate state, warm caches
        set_threads(threads)
        fn()
    samples: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(rounds):
        for key, (threads, fn) in impls.items():
            set_threads(threads)
            fn()
            reps, elapsed = 0, 0.0
            t0 = time.perf_counter()
            while elapsed < block_seconds or reps < 3:
                fn()
                reps += 1
                elapsed = time.perf_counter() - t0
            samples[key].append(elapsed / reps)
    return {k: float(np.median(v)) for k, v in samples.items()}
