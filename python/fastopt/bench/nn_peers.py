"""The peers of fastopt.nn.functional in the benchmarks: torch's ATen kernels writing into a
preallocated output (the fastest torch has: no allocation, no autograd), and careful in-place
NumPy (no temporaries beyond what the formula needs). Each factory returns a zero-argument
callable that computes into buffers made once. A test checks every peer computes what fastopt
computes."""

from __future__ import annotations

import math

import numpy as np

from .peers import import_torch

import fastopt.nn.functional as F

#: Activations benchmarked, with fastopt's forward / backward (saved = output or input).
ACTIVATIONS = ["relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "softplus"]
SAVES_OUTPUT = {"relu", "sigmoid", "tanh"}
SELU = (F.SELU_ALPHA, F.SELU_SCALE)


def fastopt_forward(name, x, out):
    fns = {
        "relu": lambda: F.relu(x, out=out),
        "leaky_relu": lambda: F.leaky_relu(x, 0.01, out=out),
        "elu": lambda: F.elu(x, 1.0, out=out),
        "selu": lambda: F.selu(x, out=out),
        "sigmoid": lambda: F.sigmoid(x, out=out),
        "tanh": lambda: F.tanh(x, out=out),
        "gelu": lambda: F.gelu(x, out=out),
        "gelu_tanh": lambda: F.gelu(x, "tanh", out=out),
        "silu": lambda: F.silu(x, out=out),
        "softplus": lambda: F.softplus(x, out=out),
    }
    return fns[name]


def fastopt_backward(name, g, saved, out):
    fns = {
        "relu": lambda: F.relu_backward(g, saved, out=out),
        "leaky_relu": lambda: F.leaky_relu_backward(g, saved, 0.01, out=out),
        "elu": lambda: F.elu_backward(g, saved, 1.0, out=out),
        "selu": lambda: F.selu_backward(g, saved, out=out),
        "sigmoid": lambda: F.sigmoid_backward(g, saved, out=out),
        "tanh": lambda: F.tanh_backward(g, saved, out=out),
        "gelu": lambda: F.gelu_backward(g, saved, out=out),
        "gelu_tanh": lambda: F.gelu_backward(g, saved, "tanh", out=out),
        "silu": lambda: F.silu_backward(g, saved, out=out),
        "softplus": lambda: F.softplus_backward(g, saved, out=out),
    }
    return fns[name]


def torch_forward(name, x, out):
    torch = import_torch()

    x, o = torch.from_numpy(x), torch.from_numpy(out)
    nn = torch._C._nn
    fns = {
        "relu": lambda: torch.clamp_min(x, 0, out=o),
        "leaky_relu": lambda: nn.leaky_relu(x, 0.01, out=o),
        "elu": lambda: nn.elu(x, 1.0, 1.0, 1.0, out=o),
        "selu": lambda: nn.elu(x, SELU[0], SELU[1], 1.0, out=o),
        "sigmoid": lambda: torch.sigmoid(x, out=o),
        "tanh": lambda: torch.tanh(x, out=o),
        "gelu": lambda: nn.gelu(x, out=o),
        "gelu_tanh": lambda: nn.gelu(x, approximate="tanh", out=o),
        "silu": lambda: nn.silu(x, out=o),
        "softplus": lambda: nn.softplus(x, 1.0, 20.0, out=o),
    }
    return fns[name]


def torch_backward(name, g, saved, out):
    torch = import_torch()

    g, s, o = torch.from_numpy(g), torch.from_numpy(saved), torch.from_numpy(out)
    a = torch.ops.aten
    fns = {
        "relu": lambda: a.threshold_backward.grad_input(g, s, 0, grad_input=o),
        "leaky_relu": lambda: a.leaky_relu_backward.grad_input(g, s, 0.01, False, grad_input=o),
        "elu": lambda: a.elu_backward.grad_input(g, 1.0, 1.0, 1.0, False, s, grad_input=o),
        "selu": lambda: a.elu_backward.grad_input(g, SELU[0], SELU[1], 1.0, False, s, grad_input=o),
        "sigmoid": lambda: a.sigmoid_backward.grad_input(g, s, grad_input=o),
        "tanh": lambda: a.tanh_backward.grad_input(g, s, grad_input=o),
        "gelu": lambda: a.gelu_backward.grad_input(g, s, approximate="none", grad_input=o),
        "gelu_tanh": lambda: a.gelu_backward.grad_input(g, s, approximate="tanh", grad_input=o),
        "silu": lambda: a.silu_backward.grad_input(g, s, grad_input=o),
        "softplus": lambda: a.softplus_backward.grad_input(g, s, 1.0, 20.0, grad_input=o),
    }
    return fns[name]


_ERF = np.frompyfunc(math.erf, 1, 1)


def numpy_forward(name, x, out):
    """In-place NumPy with one scratch buffer. NumPy has no vectorized erf: exact gelu goes
    through math.erf per element (what a NumPy pipeline without SciPy has)."""
    t = np.empty_like(x)

    def relu():
        np.maximum(x, 0, out=out)

    def leaky():
        np.multiply(x, 0.01, out=out)
        np.maximum(x, out, out=out)

    def elu(alpha=1.0, scale=1.0):
        def f():
            np.minimum(x, 0, out=t)
            np.expm1(t, out=t)
            np.multiply(t, alpha * scale, out=t)
            np.multiply(x, scale, out=out)
            np.copyto(out, t, where=x <= 0)
        return f

    def sigmoid():
        np.negative(x, out=out)
        np.exp(out, out=out)
        np.add(out, 1, out=out)
        np.reciprocal(out, out=out)

    def tanh():
        np.tanh(x, out=out)

    def gelu():
        np.multiply(x, 1 / math.sqrt(2), out=t)
        out[...] = _ERF(t)
        np.add(out, 1, out=out)
        np.multiply(out, x, out=out)
        np.multiply(out, 0.5, out=out)

    def gelu_tanh():
        np.multiply(x, x, out=t)
        np.multiply(t, 0.044715 * x, out=t)
        np.add(t, x, out=t)
        np.multiply(t, math.sqrt(2 / math.pi), out=t)
        np.tanh(t, out=t)
        np.add(t, 1, out=t)
        np.multiply(x, t, out=out)
        np.multiply(out, 0.5, out=out)

    def silu():
        sigmoid()
        np.multiply(out, x, out=out)

    def softplus():
        np.logaddexp(x, 0, out=out)

    return {"relu": relu, "leaky_relu": leaky, "elu": elu(), "selu": elu(*SELU), "sigmoid": sigmoid, "tanh": tanh,
            "gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu, "softplus": softplus}[name]


def numpy_backward(name, g, s, out):
    """In-place NumPy backward passes from the same saved array as fastopt's."""
    t = np.empty_like(g)

    def relu():
        np.multiply(g, s > 0, out=out)

    def leaky():
        np.multiply(g, 0.01, out=out)
        np.copyto(out, g, where=s > 0)

    def elu(alpha=1.0, scale=1.0):
        def f():
            np.exp(s, out=t)
            np.multiply(t, alpha * scale, out=t)
            np.multiply(g, t, out=out)
            np.multiply(g, scale, out=t)
            np.copyto(out, t, where=s > 0)
        return f

    def sigmoid():
        np.subtract(1, s, out=out)
        np.multiply(out, s, out=out)
        np.multiply(out, g, out=out)

    def tanh():
        np.multiply(s, s, out=out)
        np.subtract(1, out, out=out)
        np.multiply(out, g, out=out)

    def gelu():
        np.multiply(s, 1 / math.sqrt(2), out=t)
        out[...] = _ERF(t)
        np.add(out, 1, out=out)
        np.multiply(out, 0.5, out=out)
        np.multiply(s, s, out=t)
        np.multiply(t, -0.5, out=t)
        np.exp(t, out=t)
        np.multiply(t, s / math.sqrt(2 * math.pi), out=t)
        np.add(out, t, out=out)
        np.multiply(out, g, out=out)

    def gelu_tanh():
        k = math.sqrt(2 / math.pi)
        np.multiply(s, s, out=t)
        u = k * (s + 0.044715 * t * s)
        th = np.tanh(u)
        np.multiply(1 - th * th, 0.5 * s * k * (1 + 3 * 0.044715 * t), out=out)
        np.add(out, 0.5 * (1 + th), out=out)
        np.multiply(out, g, out=out)

    def silu():
        np.negative(s, out=t)
        np.exp(t, out=t)
        np.add(t, 1, out=t)
        np.reciprocal(t, out=t)  # sigmoid
        np.subtract(1, t, out=out)
        np.multiply(out, s, out=out)
        np.add(out, 1, out=out)
        np.multiply(out, t, out=out)
        np.multiply(out, g, out=out)

    def softplus():
        np.negative(s, out=t)
        np.exp(t, out=t)
        np.add(t, 1, out=t)
        np.divide(g, t, out=out)

    return {"relu": relu, "leaky_relu": leaky, "elu": elu(), "selu": elu(*SELU), "sigmoid": sigmoid, "tanh": tanh,
            "gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu, "softplus": softplus}[name]


# ----------------------------------------------------------------------------- batch norm


def fastopt_batch_norm_step(x, g, w, b):
    """Training forward + backward (the weight and bias gradients too)."""
    c = x.shape[1]
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    out, gx = np.empty_like(x), np.empty_like(x)

    def step():
        _, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, out=out, return_stats=True)
        return F.batch_norm_backward(g, x, mean, invstd, w, training=True, out=gx)
    return step


def torch_batch_norm_step(x, g, w, b):
    torch = import_torch()

    a = torch.ops.aten
    xt, gt, wt, bt = (torch.from_numpy(v) for v in (x, g, w, b))
    c = x.shape[1]
    rm, rv = torch.zeros(c), torch.ones(c)

    def step():
        out, mean, invstd = a.native_batch_norm(xt, wt, bt, rm, rv, True, 0.1, 1e-5)
        return a.native_batch_norm_backward(gt, xt, wt, rm, rv, mean, invstd, True, 1e-5, [True, True, True])
    return step


def numpy_batch_norm_step(x, g, w, b):
    """Two-pass statistics and the standard backward formula, in place where NumPy allows."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    xhat, gx = np.empty_like(x), np.empty_like(x)

    def step():
        mean = x.mean(axis=axes, keepdims=True)
        np.subtract(x, mean, out=xhat)
        var = np.mean(np.square(xhat), axis=axes, keepdims=True)
        invstd = 1.0 / np.sqrt(var + 1e-5)
        np.multiply(xhat, invstd, out=xhat)
        out = xhat * w.reshape(shape) + b.reshape(shape)
        m = x.size // x.shape[1]
        gb = g.sum(axis=axes)
        gw = np.sum(g * xhat, axis=axes)
        np.multiply(xhat, gw.reshape(shape) / m, out=gx)
        np.add(gx, gb.reshape(shape) / m, out=gx)
        np.subtract(g, gx, out=gx)
        np.multiply(gx, invstd * w.reshape(shape), out=gx)
        return out, gx, gw, gb
    return step


def batch_norm_problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, np.float32)
    g = rng.standard_normal(shape, np.float32)
    c = shape[1]
    return x, g, rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
