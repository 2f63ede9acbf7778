"""A CPU group's step repeats its last kernel call while nothing it depends on changed
(``Optimizer._repeat_call``): the same results as the full path, bit for bit, and the full
path again whenever a Parameter's data or grad, the params, the state or an option changes."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo

CASES = [
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=1e-2, centered=True)),
    ("Lion", dict(lr=1e-3)),
    ("SGDScheduleFree", dict(lr=0.05, warmup_steps=3)),
    ("AdamWScheduleFree", dict(lr=0.01, warmup_steps=2, weight_decay=0.01)),
]


def _run(name, kw, fresh_grads, steps=12, edit=None, count=None):
    """``steps`` steps over two Parameters whose gradients are written in place (so the call
    may repeat) or, with ``fresh_grads``, assigned anew before every step (the full path
    every time); ``edit(opt, params, step)`` changes something before some steps."""
    rng = np.random.default_rng(3)
    params = [fo.Parameter(rng.standard_normal(s).astype(np.float32)) for s in ((5, 3), (7,))]
    opt = getattr(fo.optim, name)(params, **kw)
    if count is not None:
        repeat = opt._repeat_call
        opt._repeat_call = lambda call, group: count.append(repeat(call, group)) or count[-1]
    for p in params:
        p.grad = np.zeros_like(p.data)
    for step in range(steps):
        for p in params:
            if p.grad is not None:
                np.copyto(p.grad, np.sin(p.data * 3.0 + step) + 0.1 * step)
            if fresh_grads and p.grad is not None:
                p.grad = p.grad.copy()
        if edit is not None:
            edit(opt, params, step)
        opt.step()
    state = [{k: np.array(v) for k, v in opt.state[p].items()} for p in opt.state]
    return [np.array(p.data) for p in params], state, opt


def _same(a, b):
    (pa, sa, _), (pb, sb, _) = a, b
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    assert len(sa) == len(sb)
    for x, y in zip(sa, sb):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_repeated_calls_give_the_full_paths_results(name, kw):
    count: list = []
    repeated = _run(name, kw, fresh_grads=False, count=count)
    _same(repeated, _run(name, kw, fresh_grads=True))
    # every step but the first two repeats the call (the first creates the state, the second
    # finds it and records its call)
    assert count.count(True) == 10
    if "ScheduleFree" in name:
        assert repeated[2].param_groups[0]["k"] == 12


def _replace_data(opt, params, step):
    if step == 5:
        params[0].data = params[0].data + 1.0


def _new_lr(opt, params, step):
    if step in (4, 7):
        opt.param_groups[0]["lr"] *= 0.5


def _load_state(opt, params, step):
    if step == 4:
        opt.__dict__["_saved"] = opt.state_dict()
    if step == 8:
        opt.load_state_dict(opt.__dict__["_saved"])


def _replace_state(opt, params, step):
    if step == 6:
        st = opt.state[params[1]]
        key = sorted(k for k in st if k != "step")[0]
        st[key] = np.full_like(st[key], 0.25)


def _add_group(opt, params, step):
    if step == 5:
        extra = fo.Parameter(np.linspace(-1, 1, 4).astype(np.float32))
        extra.grad = np.full(4, 0.5, np.float32)
        opt.add_param_group({"params": [extra]})


def _append_param(opt, params, step):
    # (made before the call is recorded: only the params list changes at step 5)
    if step == 0:
        extra = opt.__dict__["_extra"] = fo.Parameter(np.linspace(-1, 1, 4).astype(np.float32))
        extra.grad = np.full(4, 0.5, np.float32)
    if step == 5:
        opt.param_groups[0]["params"].append(opt.__dict__["_extra"])


def _drop_grad(opt, params, step):
    if step == 6:
        params[1].grad = None


def _in_place_lr(opt, params, step):
    # an lr held in a 0-d array and filled in place (as a scheduler may): never repeated
    group = opt.param_groups[0]
    if step == 2:
        group["lr"] = np.array(group["lr"])
    if step in (5, 9):
        group["lr"][...] = group["lr"] * 0.5


EDITS = [_replace_data, _new_lr, _load_state, _replace_state, _add_group, _append_param, _drop_grad, _in_place_lr]


# (Schedule-Free reads its lr into its counters at every step, not from a 0-d array in place)
CHANGES = [(CASES[0], e) for e in EDITS] + [(CASES[4], e) for e in EDITS if e is not _in_place_lr]


@pytest.mark.parametrize("case,edit", CHANGES, ids=[f"{c[0]}-{e.__name__.strip('_')}" for c, e in CHANGES])
def test_a_change_takes_the_full_path(case, edit):
    name, kw = case
    _same(_run(name, kw, fresh_grads=False, edit=edit), _run(name, kw, fresh_grads=True, edit=edit))


def test_train_and_eval_switching_as_the_full_path():
    def switch(opt, params, step):
        if step in (3, 6):
            opt.eval()
            opt.train()

    kw = dict(lr=0.05)
    _same(_run("SGDScheduleFree", kw, False, edit=switch), _run("SGDScheduleFree", kw, True, edit=switch))


def test_eval_mode_still_refuses_a_step():
    _, _, opt = _run("SGDScheduleFree", dict(lr=0.05), fresh_grads=False, steps=3)
    opt.eval()
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()


def test_pickled_optimizer_leaves_the_recorded_call_behind():
    import pickle

    _, _, opt = _run("Adam", dict(lr=1e-2), fresh_grads=False, steps=3)
    assert "_host_calls" in opt.__dict__
    assert "_host_calls" not in pickle.loads(pickle.dumps(opt)).__dict__
