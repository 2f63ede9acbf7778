"""``python -m fastopt`` / ``fastopt``: ``info`` and a short ``demo`` training run."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastopt as fo


def _spiral(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals in 2-D, labels 0/1."""
    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3 * np.pi
    label = rng.integers(0, 2, n)
    angle = t + np.pi * label
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * np.pi)
    x += rng.normal(0, 0.03, x.shape)
    return x.astype(np.float32), label


def _train(name: str, make_opt, x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> tuple[float, float, float]:
    """A 2-64-64-1 tanh MLP with a logistic loss, full-batch, NumPy forward/backward;
    the update is fastopt's. Returns (final loss, accuracy, microseconds per update)."""
    rng = np.random.default_rng(seed)
    sizes = [2, 64, 64, 1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform
        params.append(fo.Parameter(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)))
        params.append(fo.Parameter(np.zeros(fan_out, np.float32)))
    opt = make_opt(params)
    n = len(x)
    update_time = 0.0
    for _ in range(steps):
        h = [x]
        for i in range(0, len(params) - 2, 2):
            h.append(np.tanh(h[-1] @ params[i].data + params[i + 1].data))
        logits = (h[-1] @ params[-2].data + params[-1].data)[:, 0]
        prob = 1.0 / (1.0 + np.exp(-logits))
        loss = float(np.mean(np.logaddexp(0.0, logits) - y * logits))
        d = ((prob - y) / n).astype(np.float32)[:, None]
        for i in range(len(params) - 2, -1, -2):
            params[i].grad = h[i // 2].T @ d
            params[i + 1].grad = d.sum(axis=0)
            if i:
                d = (d @ params[i].data.T) * (1.0 - h[i // 2] ** 2)
        t0 = time.perf_counter()
        opt.step()
        update_time += time.perf_counter() - t0
    accuracy = float(np.mean((prob > 0.5) == y))
    return loss, accuracy, update_time / steps * 1e6


def demo(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fastopt demo", description="Train a small MLP on two spirals with each optimizer.")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few hundred steps, for CI")
    args = ap.parse_args(argv)
    steps = 200 if args.quick else args.steps
    rng = np.random.default_rng(args.seed)
    x, y = _spiral(args.points, rng)
    optimizers = {
        "SGD": lambda p: fo.optim.SGD(p, lr=0.5),
        "SGD+momentum": lambda p: fo.optim.SGD(p, lr=0.1, momentum=0.9),
        "Nesterov": lambda p: fo.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        "Adam": lambda p: fo.optim.Adam(p, lr=1e-2),
        "AMSGrad": lambda p: fo.optim.Adam(p, lr=1e-2, amsgrad=True),
        "AdamW": lambda p: fo.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
    }
    fo.show_config()
    print(f"\ntwo spirals, {args.points} points, 2-64-64-1 tanh MLP, {steps} full-batch steps\n")
    print(f"{'optimizer':<14}{'final loss':>12}{'accuracy':>10}{'us/update':>11}")
    for name, make in optimizers.items():
        loss, acc, us = _train(name, make, x, y, steps, args.seed)
        print(f"{name:<14}{loss:>12.4f}{acc:>10.1%}{us:>11.1f}")
    return 0


def info(argv: list[str]) -> int:
    fo.show_config()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": demo, "info": info}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: fastopt {demo,info} [options]\n\n  demo  train a small network with each optimizer\n  info  version, SIMD level, threads")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
