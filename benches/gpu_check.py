"""fastopt's GPU check: the CUDA backend on a real GPU, in one run of a few minutes.

    python benches/gpu_check.py [--out DIR] [--quick]

1. Every optimizer with a CUDA kernel, 100 steps over 64 tensors of mixed sizes (none a
   multiple of 4, each starting at an odd element offset of one buffer), float32 and float64:
   against fastopt's CPU result (bitwise where the operations are the same, else within 2 ulp)
   and, for the optimizers torch has, against torch on CUDA (``fused=True`` where torch has a
   fused kernel, ``foreach=True`` otherwise).
2. Clipping on the device (``clip_grad_norm_``, ``step(max_grad_norm=)``), activations forward
   and backward against torch CUDA, torch tensors updated in place through DLPack, state
   dicts moved between CPU and GPU.
3. Speed: the device's copy bandwidth; float32 Adam over 2**26 and 2**28 elements split into
   1, 64 and 1024 tensors against torch ``fused=True`` (medians of CUDA-event timings, the two
   interleaved); host time per step over 1000 tensors.

Prints a summary last and writes every figure to ``DIR/gpu_check.json``. Exits non-zero if a
correctness check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import numpy as np

import fastopt as fo
from fastopt.backends import cuda

RESULTS: dict = {"checks": {}, "speed": {}, "env": {}}
FAILED: list[str] = []


def log(*a: object) -> None:
    print(*a, flush=True)


def check(name: str, ok: bool, detail: object) -> None:
    RESULTS["checks"][name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        FAILED.append(name)
    log(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance in units in the last place between ``a`` and ``b`` (a NaN equal to
    a NaN; +0 equal to -0)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.float32:
        ia, ib, mask = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64), 0x7FFFFFFF
    else:
        ia, ib, mask = a.view(np.int64), b.view(np.int64), 0x7FFFFFFFFFFFFFFF
    ka, kb = np.where(ia < 0, -(ia & mask), ia), np.where(ib < 0, -(ib & mask), ib)
    same_sign = (ka >= 0) == (kb >= 0)
    d = np.where(same_sign, np.abs(np.where(same_sign, ka - kb, 0)), np.iinfo(np.int64).max)
    d[(ka == 0) & (kb == 0)] = 0
    d[np.isnan(a) & np.isnan(b)] = 0
    return int(d.max()) if d.size else 0


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / den) if den else float(np.linalg.norm(a - b))


# ------------------------------------------------------------------------------ optimizers

#: Every optimizer configuration checked, here on a GPU and by tests/test_cuda_backend.py on the
#: CPU (through the host emulation): each option that changes a kernel's branch at least once.
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-2, centered=True)),
    ("RMSprop", dict(lr=1e-2, momentum=0.5)),
    ("Adamax", dict(lr=1e-2, weight_decay=0.1)),
    ("Adadelta", dict(lr=1.0, weight_decay=0.1)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("ASGD", dict(lr=1e-2, t0=3, weight_decay=0.1)),
    ("Rprop", dict(lr=1e-2, maximize=True)),
    ("AdaBound", dict(lr=1e-2, weight_decay=0.1)),
    ("AMSBound", dict(lr=1e-2)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1)),
    ("AdaBelief", dict(lr=1e-2)),
    ("AdaBelief", dict(lr=1e-2, rectify=False, amsgrad=True, weight_decay=0.1)),
    ("AdaBelief", dict(lr=1e-2, degenerated_to_sgd=False, weight_decay=0.1, decoupled_weight_decay=False)),
    ("ADOPT", dict(lr=1e-2, weight_decay=0.1)),
    ("ADOPT", dict(lr=1e-2, weight_decay=0.1, decouple=True)),
    ("AdEMAMix", dict(lr=1e-2, alpha_warmup=5, beta3_warmup=5, weight_decay=0.1)),
    ("SGDScheduleFree", dict(lr=0.1, weight_decay=0.01)),
    ("AdamWScheduleFree", dict(lr=1e-2, weight_decay=0.01, warmup_steps=3)),
]

# torch's implementation to compare with: its fused CUDA kernel where it has one, else foreach;
# ASGD against the single-tensor loop (torch's own foreach ASGD differs from its single-tensor
# one by 6e-9 relative in float64 after 100 steps, on the CPU as well; fastopt follows the
# single-tensor loop, torch's reference semantics)
TORCH_NAMES = {"SGD": "fused", "Adam": "fused", "AdamW": "fused", "Adagrad": "foreach", "RMSprop": "foreach",
               "Adamax": "foreach", "Adadelta": "foreach", "NAdam": "foreach", "RAdam": "foreach", "ASGD": "single",
               "Rprop": "foreach"}


def layout(rng: np.random.Generator, count: int = 64) -> list[tuple[int, int]]:
    """``count`` (offset, size) pairs in one buffer: sizes not multiples of 4 (two of them
    cross a chunk boundary), each tensor at an odd element offset."""
    sizes = [int(n) for n in rng.integers(1, 6000, count - 2)] + [cuda.CHUNK + 7, 2 * cuda.CHUNK + 3]
    sizes = [n + 1 if n % 4 == 0 else n for n in sizes]
    out, off = [], 1
    for n in sizes:
        out.append((off, n))
        off += n + 2 if (off + n) % 2 == 1 else n + 1  # next offset odd
    return out


def run_optimizers(cp, torch, steps: int) -> None:
    rng = np.random.default_rng(0)
    spans = layout(rng)
    total = spans[-1][0] + spans[-1][1] + 1
    for dtype in (np.float32, np.float64):
        tdt = torch.float32 if dtype == np.float32 else torch.float64
        p0 = rng.standard_normal(total).astype(dtype)
        grads_h = [rng.standard_normal(total).astype(dtype) for _ in range(steps)]
        grads_d = [cp.asarray(g) for g in grads_h]
        worst_ulp: dict[str, int] = {}
        for ci, (name, kw) in enumerate(CONFIGS):
            key = f"{name}#{ci} {np.dtype(dtype).name}"
            try:
                # CPU (fastopt's core)
                flat_c = p0.copy()
                pc = [fo.Parameter(flat_c[o:o + n]) for o, n in spans]
                oc = getattr(fo.optim, name)(pc, **kw)
                # GPU
                flat_g = cp.asarray(p0)
                pg = [fo.Parameter(flat_g[o:o + n]) for o, n in spans]
                og = getattr(fo.optim, name)(pg, **kw)
                for s in range(steps):
                    for p, (o, n) in zip(pc, spans):
                        p.grad = grads_h[s][o:o + n]
                    oc.step()
                    for p, (o, n) in zip(pg, spans):
                        p.grad = grads_d[s][o:o + n]
                    og.step()
                got = cp.asnumpy(flat_g)
                u = ulps(got, flat_c)
                worst_ulp[key] = u
                su, sr = 0, 0.0
                for a, b in zip(pg, pc):
                    for k, v in og.state[a].items():
                        if hasattr(v, "get"):
                            su = max(su, ulps(v.get(), np.asarray(oc.state[b][k])))
                            sr = max(sr, rel(v.get(), np.asarray(oc.state[b][k])))
                r = rel(got, flat_c)
                # float32: the CPU core's result, bitwise or within 2 ulp. float64: the per-step
                # constants that use pow() (bias corrections) come from CUDA's pow, within 2
                # ulp of the host's: the parameters then differ by rounding, norm-relative.
                if dtype == np.float32:
                    ok = u <= 2 and su <= 2
                else:
                    ok = (u <= 2 and su <= 2) or (r <= 1e-15 and sr <= 1e-15)
                check(f"cpu parity {key}", ok, f"params within {u} ulp (bitwise: {u == 0}; norm-relative {r:.2g}), "
                      f"states within {su} ulp (norm-relative {sr:.2g})")
            except Exception as e:  # noqa: BLE001 (report and go on)
                check(f"cpu parity {key}", False, f"raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
                continue
            try:
                # torch on CUDA
                if name in TORCH_NAMES:
                    flat_t = torch.tensor(p0, device="cuda")
                    pt = [torch.nn.Parameter(flat_t[o:o + n].clone()) for o, n in spans]
                    tkw = dict(kw)
                    impl = TORCH_NAMES[name]
                    tkw.update({"fused": {"fused": True}, "foreach": {"foreach": True},
                                "single": {"foreach": False}}[impl])
                    ot = getattr(torch.optim, name)(pt, **tkw)
                    gt = [torch.tensor(g, device="cuda") for g in grads_h]
                    for s in range(steps):
                        for p, (o, n) in zip(pt, spans):
                            p.grad = gt[s][o:o + n].clone()
                        ot.step()
                    tt = np.concatenate([p.detach().cpu().numpy() for p in pt])
                    mine = np.concatenate([got[o:o + n] for o, n in spans])
                    r = rel(mine, tt)
                    bar = 1e-5 if dtype == np.float32 else 1e-12
                    check(f"torch cuda {impl} {key}", r <= bar, f"relative difference {r:.3g} (bar {bar:g}); "
                          f"max ulp {ulps(mine, tt)}")
            except Exception as e:  # noqa: BLE001 (report and go on)
                check(f"torch cuda {key}", False, f"raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
        RESULTS["checks"][f"worst ulp {np.dtype(dtype).name}"] = worst_ulp


def run_clipping(cp, torch) -> None:
    rng = np.random.default_rng(5)
    spans = layout(rng, 16)
    for dtype in (np.float32, np.float64):
        gh = [rng.standard_normal(n).astype(dtype) * 3 for _, n in spans]
        for norm_type in (2.0, 1.0, float("inf")):
            gd = [cp.asarray(g) for g in gh]
            params = [fo.Parameter(cp.zeros_like(g)) for g in gd]
            for p, g in zip(params, gd):
                p.grad = g
            norm = fo.nn.utils.clip_grad_norm_(params, 1.0, norm_type)
            tp = [torch.nn.Parameter(torch.zeros(g.shape, dtype=getattr(torch, np.dtype(dtype).name), device="cuda"))
                  for g in gh]
            for p, g in zip(tp, gh):
                p.grad = torch.tensor(g, device="cuda")
            tnorm = torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type, foreach=True)
            r = abs(float(norm) - float(tnorm)) / float(tnorm)
            rg = rel(np.concatenate([cp.asnumpy(g) for g in gd]), np.concatenate([p.grad.cpu().numpy() for p in tp]))
            bar = 1e-6 if dtype == np.float32 else 1e-13
            check(f"clip_grad_norm_ {np.dtype(dtype).name} p={norm_type}", r <= bar and rg <= 10 * bar,
                  f"norm rel diff {r:.3g}, clipped grads rel diff {rg:.3g}")
        # clipping folded into the step: the CPU core's result
        p0 = rng.standard_normal(5000).astype(dtype)
        pc, pg = fo.Parameter(p0.copy()), fo.Parameter(cp.asarray(p0))
        oc, og = fo.optim.Adam([pc], lr=1e-2), fo.optim.Adam([pg], lr=1e-2)
        for s in range(20):
            g = rng.standard_normal(5000).astype(dtype) * 10
            pc.grad, pg.grad = g, cp.asarray(g)
            oc.step(max_grad_norm=1.0)
            og.step(max_grad_norm=1.0)
        u = ulps(cp.asnumpy(pg.data), pc.data)
        r = rel(cp.asnumpy(pg.data), pc.data)
        # (the norm sums in another order than the CPU's: its last bits, and the clipping
        # coefficient's, may differ)
        check(f"step(max_grad_norm) {np.dtype(dtype).name}", u <= 2 or r <= (1e-6 if dtype == np.float32 else 1e-14),
              f"within {u} ulp (norm-relative {r:.2g}) of the CPU result")


ACTS = [("relu", {}, "relu"), ("leaky_relu", {"negative_slope": 0.1}, "leaky_relu"), ("elu", {"alpha": 1.3}, "elu"),
        ("selu", {}, "selu"), ("sigmoid", {}, "sigmoid"), ("tanh", {}, "tanh"), ("gelu", {}, "gelu"),
        ("gelu", {"approximate": "tanh"}, "gelu"), ("silu", {}, "silu"), ("softplus", {"beta": 2.0, "threshold": 5.0}, "softplus")]


def run_activations(cp, torch) -> None:
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64):
        xh = (rng.standard_normal(1_000_003) * 4).astype(dtype)
        gh = rng.standard_normal(1_000_003).astype(dtype)
        x, g = cp.asarray(xh), cp.asarray(gh)
        for name, kw, tname in ACTS:
            y = getattr(fo.nn.functional, name)(x, **kw)
            xt = torch.tensor(xh, device="cuda", requires_grad=True)
            yt = getattr(F, tname)(xt, **kw) if tname != "tanh" and tname != "sigmoid" else getattr(torch, tname)(xt)
            (dx_t,) = torch.autograd.grad(yt, xt, torch.tensor(gh, device="cuda"))
            saved = y if name in ("relu", "sigmoid", "tanh") else x
            bwd = getattr(fo.nn.functional, f"{name}_backward")
            dx = bwd(g, saved, **kw)
            uf = ulps(cp.asnumpy(y), yt.detach().cpu().numpy())
            rf = rel(cp.asnumpy(y), yt.detach().cpu().numpy())
            rb = rel(cp.asnumpy(dx), dx_t.cpu().numpy())
            tag = f"{name}{'(' + ','.join(f'{k}={v}' for k, v in kw.items()) + ')' if kw else ''}"
            bar = 1e-6 if dtype == np.float32 else 1e-14
            check(f"activation {tag} {np.dtype(dtype).name}", rf <= bar and rb <= bar,
                  f"forward rel diff {rf:.3g} (max {uf} ulp) and backward rel diff {rb:.3g} from torch cuda")
    run_nn_losses(cp, torch)


def run_nn_losses(cp, torch) -> None:
    F, fnf = torch.nn.functional, fo.nn.functional
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        bar = 1e-5 if dtype == np.float32 else 1e-12
        # softmax / log_softmax over a middle and a last axis, forward and backward
        for shape, dim in (((64, 1000), 1), ((8, 10, 33), 1)):
            xh = rng.standard_normal(shape).astype(dtype) * 3
            gh = rng.standard_normal(shape).astype(dtype)
            for log in (False, True):
                fwd = fnf.log_softmax if log else fnf.softmax
                bwd = fnf.log_softmax_backward if log else fnf.softmax_backward
                y = fwd(cp.asarray(xh), dim)
                dx = bwd(cp.asarray(gh), y, dim)
                xt = torch.tensor(xh, device="cuda", requires_grad=True)
                yt = (F.log_softmax if log else F.softmax)(xt, dim)
                (dxt,) = torch.autograd.grad(yt, xt, torch.tensor(gh, device="cuda"))
                r1, r2 = rel(cp.asnumpy(y), yt.detach().cpu().numpy()), rel(cp.asnumpy(dx), dxt.cpu().numpy())
                check(f"{'log_' if log else ''}softmax {shape} dim={dim} {name}", r1 <= bar and r2 <= bar,
                      f"forward rel diff {r1:.3g}, backward {r2:.3g} from torch cuda")
        # cross-entropy with label smoothing and ignore_index
        logits = rng.standard_normal((512, 1000)).astype(dtype) * 2
        target = rng.integers(0, 1000, 512)
        target[:7] = -100
        for reduction in ("mean", "sum", "none"):
            loss = fnf.cross_entropy(cp.asarray(logits), cp.asarray(target), reduction=reduction, label_smoothing=0.1)
            lt = torch.tensor(logits, device="cuda", requires_grad=True)
            tl = F.cross_entropy(lt, torch.tensor(target, device="cuda"), reduction=reduction, label_smoothing=0.1)
            go = np.ones(512) if reduction == "none" else 1.0
            dx = fnf.cross_entropy_backward(cp.asarray(go) if reduction == "none" else go, cp.asarray(logits),
                                            cp.asarray(target), reduction=reduction, label_smoothing=0.1)
            (dxt,) = torch.autograd.grad(tl, lt, torch.ones_like(tl))
            r1 = rel(cp.asnumpy(loss), tl.detach().cpu().numpy())
            r2 = rel(cp.asnumpy(dx), dxt.cpu().numpy())
            check(f"cross_entropy {reduction} {name}", r1 <= bar and r2 <= bar,
                  f"loss rel diff {r1:.3g}, gradient {r2:.3g} from torch cuda")
        # batch norm, training, with running statistics; backward through the batch statistics
        xh = (rng.standard_normal((32, 16, 8, 8)) * 2 + 0.5).astype(dtype)
        gh = rng.standard_normal(xh.shape).astype(dtype)
        wh, bh = (rng.random(16) + 0.5).astype(dtype), rng.standard_normal(16).astype(dtype)
        rm, rv = cp.zeros(16, dtype), cp.ones(16, dtype)
        out, mean, invstd = fnf.batch_norm(cp.asarray(xh), rm, rv, cp.asarray(wh), cp.asarray(bh), training=True,
                                           return_stats=True)
        dx, dw, db = fnf.batch_norm_backward(cp.asarray(gh), cp.asarray(xh), mean, invstd, cp.asarray(wh))
        xt = torch.tensor(xh, device="cuda", requires_grad=True)
        wt = torch.tensor(wh, device="cuda", requires_grad=True)
        bt = torch.tensor(bh, device="cuda", requires_grad=True)
        rmt, rvt = torch.zeros(16, dtype=xt.dtype, device="cuda"), torch.ones(16, dtype=xt.dtype, device="cuda")
        yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=True)
        dxt, dwt, dbt = torch.autograd.grad(yt, (xt, wt, bt), torch.tensor(gh, device="cuda"))
        rs = [rel(cp.asnumpy(a), b.detach().cpu().numpy()) for a, b in
              ((out, yt), (rm, rmt), (rv, rvt), (dx, dxt), (dw, dwt), (db, dbt))]
        check(f"batch_norm training {name}", max(rs) <= bar,
              "rel diff from torch cuda: out {:.3g}, running mean {:.3g}, running var {:.3g}, grad input {:.3g}, "
              "grad weight {:.3g}, grad bias {:.3g}".format(*rs))
        ev = fnf.batch_norm(cp.asarray(xh), rm, rv, cp.asarray(wh), cp.asarray(bh), training=False)
        evt = F.batch_norm(torch.tensor(xh, device="cuda"), rmt, rvt, wt.detach(), bt.detach(), training=False)
        r = rel(cp.asnumpy(ev), evt.cpu().numpy())
        check(f"batch_norm eval {name}", r <= bar, f"rel diff {r:.3g} from torch cuda")


def run_interop(cp, torch) -> None:
    # torch CUDA tensors updated in place through DLPack (zero copy)
    rng = np.random.default_rng(7)
    shapes = [(300, 7), (5,), (1001,)]
    ts = [torch.tensor(rng.standard_normal(s).astype(np.float32), device="cuda") for s in shapes]
    ref = [torch.nn.Parameter(t.clone()) for t in ts]
    views = [cp.from_dlpack(t) for t in ts]
    same = all(int(v.data.ptr) == t.data_ptr() for v, t in zip(views, ts))
    opt = fo.optim.AdamW(views, lr=1e-2, weight_decay=0.1)
    topt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, fused=True)
    for _ in range(50):
        gs = [torch.tensor(rng.standard_normal(s).astype(np.float32), device="cuda") for s in shapes]
        opt.step(grads=[cp.from_dlpack(g) for g in gs])
        for p, g in zip(ref, gs):
            p.grad = g
        topt.step()
    r = max(rel(t.cpu().numpy(), p.detach().cpu().numpy()) for t, p in zip(ts, ref))
    check("torch tensors through DLPack", same and r <= 1e-5, f"zero copy: {same}; after 50 AdamW steps the torch "
          f"tensors differ from torch fused AdamW by {r:.3g} (relative)")
    # fastopt.torch on a CUDA model: the one-import switch, against torch's fused AdamW
    import fastopt.torch as fot

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)).cuda()
    twin.load_state_dict(model.state_dict())
    fo_opt = fot.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    t_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(fo_opt, 10, 0.5)
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, 10, 0.5)
    for i in range(40):
        xb = torch.randn(16, 33, device="cuda")
        yb = torch.randn(16, 5, device="cuda")
        for m, o, sc in ((model, fo_opt, sched), (twin, t_opt, t_sched)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(xb), yb).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            o.step()
            sc.step()
        if i == 20:  # state dict exchanged mid-run: torch's into fastopt's
            fo_opt.load_state_dict(t_opt.state_dict())
    r = max(rel(a.detach().cpu().numpy(), b.detach().cpu().numpy()) for a, b in zip(model.parameters(), twin.parameters()))
    dev_state = {v.device.type for st in fo_opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)}
    check("fastopt.torch on CUDA tensors", r <= 1e-5, f"40 steps with StepLR, clipping and a state dict loaded from "
          f"torch mid-run: parameters differ from torch fused AdamW by {r:.3g} (relative); state on {dev_state}")
    # one memory pool: CuPy allocating from torch's caching allocator (the guide's recipe)
    from cupy.cuda import memory

    def torch_alloc(size):
        t = torch.empty(size, dtype=torch.uint8, device="cuda")
        return memory.MemoryPointer(memory.UnownedMemory(t.data_ptr(), size, t), 0)

    before = torch.cuda.memory_allocated()
    cp.cuda.set_allocator(torch_alloc)
    try:
        p = fo.Parameter(cp.ones(1 << 20, np.float32))
        o = fo.optim.Adam([p], lr=0.1)
        p.grad = cp.ones(1 << 20, np.float32)
        o.step()
        grew = torch.cuda.memory_allocated() - before
        ok = bool(cp.allclose(p.data, 0.9)) and grew >= 3 * 4 * (1 << 20)
        del p, o
    finally:
        cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
    check("one memory pool with torch", ok, f"CuPy's arrays and the optimizer state took {grew / 2**20:.1f} MiB from "
          "torch's allocator; the step ran on them")
    # the guide's examples (docs/guide/gpu.md), as the CPU suite runs every page's (it skips
    # this one without a GPU)
    import re
    page = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "guide", "gpu.md")
    namespace: dict = {"__name__": "__example__"}
    ran = 0
    for m in re.finditer(r"^```python\n(.*?)^```", open(page).read(), re.S | re.M):
        exec(compile(m.group(1), "gpu.md", "exec"), namespace)
        ran += 1
    cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)  # (the page switches to torch's pool)
    check("docs/guide/gpu.md examples", ran >= 3, f"{ran} code blocks ran")
    # state dict: GPU -> CPU -> GPU
    p = fo.Parameter(cp.asarray(rng.standard_normal(100).astype(np.float32)))
    o = fo.optim.Adam([p], lr=1e-2)
    p.grad = cp.ones(100, np.float32)
    o.step()
    sd = o.state_dict()
    q = fo.Parameter(cp.asarray(p.data))
    o2 = fo.optim.Adam([q], lr=1e-2)
    host = {"state": {k: {n: (v.get() if hasattr(v, "get") else v) for n, v in s.items()} for k, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}
    o2.load_state_dict(host)
    kinds = {type(v).__module__.split(".")[0] for v in o2.state[q].values()}
    p.grad = q.grad = cp.full(100, 0.5, np.float32)
    o.step()
    o2.step()
    check("state_dict host round trip", kinds == {"cupy"} and bool((p.data == q.data).all()),
          f"loaded state lives on {kinds}; the next steps agree bit for bit: {bool((p.data == q.data).all())}")


# ---------------------------------------------------------------------------------- speed

def events_median(cp, fn, reps: int, calls: int = 1) -> float:
    """Median milliseconds per call of ``fn()`` by CUDA events around ``calls`` consecutive
    calls (so that with several, the device runs them back to back when the host queues them
    faster than it runs them: the device's time, not the host's)."""
    times = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b) / calls)
    return float(np.median(times))


def run_speed(cp, torch, quick: bool) -> None:
    n_copy = 2**28
    a = cp.random.standard_normal(n_copy, dtype=np.float32)
    b = cp.empty_like(a)
    for _ in range(3):
        b[...] = a
    ms = events_median(cp, lambda: b.__setitem__(Ellipsis, a), 20)
    copy_bw = 2 * a.nbytes / (ms * 1e-3) / 1e9
    RESULTS["speed"]["copy_GBps"] = copy_bw
    log(f"copy bandwidth: {copy_bw:.0f} GB/s (2 x {a.nbytes / 2**30:.0f} GiB in {ms:.3f} ms)")
    del a, b
    rows = []
    sizes = [2**26] if quick else [2**26, 2**28]
    for total in sizes:
        for count in (1, 64, 1024):
            sizes_t = [total // count] * count
            sizes_t[-1] += total - sum(sizes_t)
            # fastopt on CuPy
            ps = [fo.Parameter(cp.random.standard_normal(n, dtype=np.float32)) for n in sizes_t]
            for p in ps:
                p.grad = cp.random.standard_normal(p.shape, dtype=np.float32)
            opt = fo.optim.Adam(ps, lr=1e-3)
            # torch fused on CUDA
            tp = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in sizes_t]
            for p in tp:
                p.grad = torch.randn_like(p)
            topt = torch.optim.Adam(tp, lr=1e-3, fused=True)
            for _ in range(3):
                opt.step()
                topt.step()
            cp.cuda.Device().synchronize()
            torch.cuda.synchronize()
            f_ms, t_ms = [], []
            for _ in range(5):  # interleaved blocks
                f_ms.append(events_median(cp, opt.step, 3, calls=10))
                t_ms.append(events_median(cp, topt.step, 3, calls=10))
            fm, tm = float(np.median(f_ms)), float(np.median(t_ms))
            bw = 28 * total / (fm * 1e-3) / 1e9
            row = {"elements": total, "tensors": count, "fastopt_ms": fm, "torch_fused_ms": tm,
                   "ratio_vs_torch": tm / fm, "GBps": bw, "of_copy_bw": bw / copy_bw}
            rows.append(row)
            log(f"Adam f32 2**{int(math.log2(total))} el in {count} tensors: fastopt {fm:.3f} ms, torch fused "
                f"{tm:.3f} ms, {tm / fm:.3f}x; {bw:.0f} GB/s = {100 * bw / copy_bw:.1f}% of copy")
            del ps, opt, tp, topt
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    RESULTS["speed"]["adam"] = rows
    # host time per step over 1000 tensors: the arrays unchanged (the fast path), the same
    # arrays assigned again (every array checked against the tables), new gradient arrays at
    # every step (two sets in turn: the tables rebuilt)
    ps = [fo.Parameter(cp.random.standard_normal(1000, dtype=np.float32)) for _ in range(1000)]
    sets = [[cp.random.standard_normal(1000, dtype=np.float32) for _ in range(1000)] for _ in range(2)]
    for p, g in zip(ps, sets[0]):
        p.grad = g
    opt = fo.optim.Adam(ps, lr=1e-3)
    tp = [torch.nn.Parameter(torch.randn(1000, device="cuda")) for _ in range(1000)]
    for p in tp:
        p.grad = torch.randn_like(p)
    topt = torch.optim.Adam(tp, lr=1e-3, fused=True)
    turn = [0]

    def reassign():
        for p in ps:
            p.grad = p.grad

    def new_grads():
        turn[0] ^= 1
        for p, g in zip(ps, sets[turn[0]]):
            p.grad = g

    host = {}
    for label, fn, before in (("fastopt", opt.step, None), ("fastopt_checked", opt.step, reassign),
                              ("fastopt_new_grads", opt.step, new_grads), ("torch_fused", topt.step, None)):
        for _ in range(5):
            if before:
                before()
            fn()
        samples = []
        for _ in range(8):
            cp.cuda.Device().synchronize()
            torch.cuda.synchronize()
            for _ in range(25):
                if before:
                    before()
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        host[label] = float(np.median(samples) * 1e6)
    # where fastopt's host time goes: the launches alone (the tables ready), and one bare launch
    launcher = opt._device_launchers[id(opt.param_groups[0])][1]
    hyper = opt._hyper(opt.param_groups[0])
    noop = cp.RawKernel('extern "C" __global__ void noop(const float* a, double b) {}', "noop")
    arr = cp.zeros(1, np.float32)
    for label, fn in (("launches_only", lambda: launcher.step("adam", hyper, 1.0)),
                      ("one_bare_cupy_launch", lambda: noop((1,), (1,), (arr, np.float64(1.0))))):
        for _ in range(5):
            fn()
        samples = []
        for _ in range(8):
            cp.cuda.Device().synchronize()
            for _ in range(25):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        host[label] = float(np.median(samples) * 1e6)
    RESULTS["speed"]["host_us_per_step_1000_tensors"] = host
    log(f"host time per step, 1000 tensors: fastopt {host['fastopt']:.1f} us with the arrays unchanged "
        f"({host['fastopt_checked']:.1f} us with each one checked, {host['fastopt_new_grads']:.1f} us with new "
        f"gradient arrays; its launch {host['launches_only']:.1f} us; one bare CuPy launch "
        f"{host['one_bare_cupy_launch']:.1f} us), torch fused {host['torch_fused']:.1f} us")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="fewer steps and sizes")
    ap.add_argument("--only", default="", help="comma-separated sections: optim,clip,act,interop,speed")
    args = ap.parse_args()
    import cupy as cp
    import torch

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    RESULTS["env"] = {"gpu": props["name"].decode(), "cupy": cp.__version__, "torch": torch.__version__,
                      "numpy": np.__version__, "fastopt": fo.__version__, "python": sys.version.split()[0]}
    log(RESULTS["env"])
    sections = set(args.only.split(",")) if args.only else {"optim", "clip", "act", "interop", "speed"}
    t0 = time.perf_counter()
    cuda.device()  # (the module list: compiled per rule on first use)
    for name, fn in (("optim", lambda: run_optimizers(cp, torch, 20 if args.quick else 100)),
                     ("clip", lambda: run_clipping(cp, torch)), ("act", lambda: run_activations(cp, torch)),
                     ("interop", lambda: run_interop(cp, torch)), ("speed", lambda: run_speed(cp, torch, args.quick))):
        if name not in sections:
            continue
        s = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (one section's failure must not hide the others)
            check(f"section {name}", False, f"raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
        log(f"-- section {name}: {time.perf_counter() - s:.1f} s")
    RESULTS["seconds"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    log("\n==== summary ====")
    log(RESULTS["env"])
    n_ok = sum(1 for c in RESULTS["checks"].values() if isinstance(c, dict) and c.get("ok"))
    log(f"checks passed: {n_ok}, failed: {len(FAILED)}")
    for f_ in FAILED:
        log(f"  FAILED: {f_}: {str(RESULTS['checks'][f_]['detail'])[:300]}")
    sp = RESULTS["speed"]
    if "copy_GBps" in sp:
        log(f"copy bandwidth {sp['copy_GBps']:.0f} GB/s")
    for r in sp.get("adam", []):
        log(f"Adam 2**{int(math.log2(r['elements']))} x{r['tensors']}: {r['fastopt_ms']:.3f} ms vs torch fused "
            f"{r['torch_fused_ms']:.3f} ms = {r['ratio_vs_torch']:.3f}x, {100 * r['of_copy_bw']:.1f}% of copy bw")
    if "host_us_per_step_1000_tensors" in sp:
        log(f"host us/step 1000 tensors: {sp['host_us_per_step_1000_tensors']}")
    log(f"total {RESULTS['seconds']:.0f} s")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
