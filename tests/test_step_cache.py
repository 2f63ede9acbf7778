"""A step reuses the lists of state buffers it gathered for the previous step only while
nothing they depend on changed: every way of changing the state or a group's params is seen."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry


def _opt(n=3, cls=fo.optim.Adam, **kw):
    ps = [fo.Parameter(np.full(4, float(i + 1))) for i in range(n)]
    for p in ps:
        p.grad = np.ones(4)
    opt = cls(ps, lr=0.1, **kw)
    opt.step()
    opt.step()  # the second step gathers and caches the lists
    return opt, ps


def _reference(ps_values, state_values, steps):
    """Adam from the given parameter and state values, as fastopt's functional form."""
    out = []
    for p, (m, v, s) in zip(ps_values, state_values):
        p, m, v, s = p.copy(), m.copy(), v.copy(), np.array(s, np.float32)
        for _ in range(steps):
            fo.optim.functional.adam([p], [np.ones(4)], [m], [v], [], [s], lr=0.1)
        out.append(p)
    return out


def test_replacing_a_state_buffer_is_seen():
    opt, ps = _opt()
    new_m = np.full(4, 5.0)
    opt.state[ps[1]]["exp_avg"] = new_m
    before = [(p.data.copy(), opt.state[p]["exp_avg"].copy(), opt.state[p]["exp_avg_sq"].copy(), opt.state[p]["step"].copy()) for p in ps]
    opt.step()
    assert not np.array_equal(new_m, np.full(4, 5.0))  # the new buffer was updated in place
    want = _reference([b[0] for b in before], [b[1:] for b in before], 1)
    for p, w in zip(ps, want):
        np.testing.assert_array_equal(p.data, w)


@pytest.mark.parametrize("how", ["setitem", "update", "del_param", "assign_dict", "pop"])
def test_every_kind_of_state_change_invalidates(how):
    opt, ps = _opt()
    version = opt.state._version
    st = opt.state[ps[0]]
    if how == "setitem":
        st["exp_avg_sq"] = np.zeros(4)
    elif how == "update":
        st.update(exp_avg=np.zeros(4))
    elif how == "del_param":
        del opt.state[ps[0]]
    elif how == "assign_dict":
        opt.state[ps[0]] = {"step": np.zeros((), np.float32), "exp_avg": np.zeros(4), "exp_avg_sq": np.zeros(4)}
    else:
        st.pop("exp_avg")
    assert opt.state._version != version
    opt.step()  # rebuilds what it needs (a missing buffer is created again)
    assert opt.state[ps[0]]["exp_avg"].shape == (4,)


def test_changing_a_groups_params_in_place_is_seen():
    opt, ps = _opt()
    extra = fo.Parameter(np.full(4, 9.0))
    extra.grad = np.ones(4)
    opt.param_groups[0]["params"].append(extra)
    opt.step()
    assert "exp_avg" in opt.state[extra] and not np.array_equal(extra.data, np.full(4, 9.0))
    other = fo.Parameter(np.full(4, 7.0))
    other.grad = np.ones(4)
    opt.param_groups[0]["params"][0] = other
    opt.step()
    assert float(opt.state[other]["step"]) == 1.0


def test_load_state_dict_and_copies_use_their_own_buffers():
    opt, ps = _opt()
    sd = opt.state_dict()
    opt.step()
    old = [opt.state[p]["exp_avg"] for p in ps]
    frozen = [m.copy() for m in old]
    opt.load_state_dict(sd)  # a new state object: the cached lists must not be used
    opt.step()
    for m, f, p in zip(old, frozen, ps):
        np.testing.assert_array_equal(m, f)  # the replaced buffers were not touched
        assert float(opt.state[p]["step"]) == 3.0  # 2 loaded + 1
    clone = copy.deepcopy(opt)
    k = next(iter(clone.state))
    version = clone.state._version
    clone.state[k]["exp_avg"] = np.zeros(4)  # a copy's state is tracked too
    assert clone.state._version == version + 1
    clone.step()
    assert clone.state[k]["exp_avg"][0] != 0.0


def test_parameters_without_gradients_are_skipped_each_step():
    opt, ps = _opt()
    ps[1].grad = None
    before = ps[1].data.copy()
    opt.step()
    np.testing.assert_array_equal(ps[1].data, before)
    ps[1].grad = np.ones(4)
    opt.step()
    assert not np.array_equal(ps[1].data, before)


def test_kernel_check_cache_confirms_only_unchanged_arrays():
    """After a step, the kernel confirms the same arrays instead of re-checking them; every
    change to them is still caught (a new array, a flag, a dtype or shape change, a gradient
    that overlaps the state)."""
    opt, ps = _opt()
    # a new params array: used, not the remembered one
    old = ps[0].data
    frozen = old.copy()
    ps[0].data = np.full(4, 3.0)
    opt.step()
    assert not np.array_equal(ps[0].data, np.full(4, 3.0))  # the new array was stepped
    np.testing.assert_array_equal(old, frozen)  # the remembered one was not
    # read-only state is refused on the confirming path too, and nothing is written
    m = opt.state[ps[1]]["exp_avg"]
    snapshot = [p.data.copy() for p in ps]
    m.flags.writeable = False
    with pytest.raises(ValueError, match=r"exp_avgs\[1\] is read-only"):
        opt.step()
    m.flags.writeable = True
    assert all(np.array_equal(p.data, s) for p, s in zip(ps, snapshot))
    # a gradient that shares memory with a state buffer
    opt.step()
    ps[2].grad = opt.state[ps[2]]["exp_avg_sq"]
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    ps[2].grad = np.ones(4)
    # a gradient of another shape than its parameter
    opt.step()
    with pytest.raises(ValueError, match="shape"):
        opt._run_group(0, opt.param_groups[0], [np.ones(4), np.ones(4), np.ones(5)], False)
    # a state buffer reshaped in place
    opt.step()
    opt.state[ps[0]]["exp_avg"].shape = (2, 2)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has shape \(2, 2\)"):
        opt.step()


def test_check_cache_copies_start_empty():
    import pickle

    from fastopt import _fastopt

    c = _fastopt.CheckCache()
    assert type(copy.deepcopy(c)) is _fastopt.CheckCache
    assert type(pickle.loads(pickle.dumps(c))) is _fastopt.CheckCache
    opt, ps = _opt()
    twin = copy.deepcopy(opt)
    twin.step()
    opt.step()
    for p, q in zip(ps, twin.param_groups[0]["params"]):
        np.testing.assert_array_equal(p.data, q.data)


# (class, arguments, a state buffer the kernel writes, the name errors give its list)
CACHED = [(getattr(fo.optim, s.name), s.configs[0], *s.written) for s in registry.OPTIMIZERS if s.written]


@pytest.mark.parametrize("cls,kw,key,label", CACHED, ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(CACHED)])
def test_every_cached_kernel_confirms_and_still_catches_changes(cls, kw, key, label):
    """Every optimizer whose kernel keeps a check cache: stepping through it gives the same
    numbers as checking everything each step, and changes to the remembered arrays are
    caught on the confirming path (nothing written when one is refused)."""
    def grads(t):
        return [np.sin(np.arange(4.0) + t + i) for i in range(3)]

    def run(clear):
        ps = [fo.Parameter(np.full(4, float(i + 1))) for i in range(3)]
        opt = cls(ps, **{"lr": 0.1, **kw})
        for t in range(6):
            if clear:
                for _, cache in opt._check_caches.values():
                    cache.clear()
            opt.step(grads=grads(t))
        return opt, ps

    opt, ps = run(clear=False)
    assert [cache.remembers() for _, cache in opt._check_caches.values()] == [True]
    _, ref = run(clear=True)
    for p, r in zip(ps, ref):
        np.testing.assert_array_equal(p.data, r.data)
    # a new params array is stepped; the remembered one is left alone
    old = ps[0].data
    frozen = old.copy()
    ps[0].data = old.copy()
    opt.step(grads=grads(7))
    np.testing.assert_array_equal(old, frozen)
    assert not np.array_equal(ps[0].data, frozen)
    # a read-only state buffer is refused, nothing written
    opt.step(grads=grads(8))
    buf = opt.state[ps[1]][key]
    snapshot = [p.data.copy() for p in ps] + [buf.copy()]
    buf.flags.writeable = False
    with pytest.raises(ValueError, match=rf"{label}\[1\] is read-only"):
        opt.step(grads=grads(9))
    buf.flags.writeable = True
    for a, s in zip([p.data for p in ps] + [buf], snapshot):
        np.testing.assert_array_equal(a, s)
    # a gradient sharing memory with a state buffer
    opt.step(grads=grads(10))
    with pytest.raises(ValueError, match="share memory"):
        opt.step(grads=[np.ones(4), np.ones(4), opt.state[ps[2]][key]])
    # a state buffer reshaped in place
    opt.step(grads=grads(11))
    opt.state[ps[0]][key].shape = (2, 2)
    with pytest.raises(ValueError, match=rf"{label}\[0\] has shape \(2, 2\)"):
        opt.step(grads=grads(12))


@pytest.mark.parametrize("cls", [fo.optim.Adam, fo.optim.NAdam, fo.optim.SGD])
def test_buffer_lists_are_cached_per_group(cls):
    """Each group keeps its own gathered state lists: with two groups, a step reuses both
    groups' lists (they used to evict each other, so every step gathered them again)."""
    ps = [fo.Parameter(np.zeros(3)) for _ in range(4)]
    kw = {"momentum": 0.9} if cls is fo.optim.SGD else {}
    opt = cls([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1, **kw)
    gathered = []
    real = opt._buffers

    def spy(*args):
        out = real(*args)
        gathered.append(out[0])
        return out

    opt._buffers = spy
    for _ in range(3):
        for p in ps:
            p.grad = np.ones(3)
        opt.step()
    # (each step runs every group twice: a check pass, then the write pass)
    first, second = gathered[-4], gathered[-3]
    assert gathered[-2] is first and gathered[-1] is second and first is not second
    assert gathered[-6] is first and gathered[-5] is second


def test_an_option_that_changes_the_buffers_mid_run_builds_a_new_rule():
    """A group's rule takes new numbers in place of the old ones (a scheduler's lr) unless
    they change its buffers: amsgrad turned on after two steps gives the group its new buffer
    (zeros) and the functional form's steps from there, bit for bit."""
    F = fo.optim.functional
    p = fo.Parameter(np.array([1.0, -2.0, 3.0], np.float32))
    opt = fo.optim.Adam([p], lr=0.1)
    ref = [p.data.copy(), np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros((), np.float32)]
    maxes = np.zeros(3, np.float32)
    for i in range(5):
        group = opt.param_groups[0]
        group["lr"] = 0.1 / (i + 1)
        if i == 2:
            group["amsgrad"] = True
        g = np.array([0.5, -1.0, 2.0], np.float32) * (i + 1)
        p.grad = g.copy()
        opt.step()
        x, m, v, t = ref
        F.adam([x], [g], [m], [v], [maxes] if i >= 2 else None, [t], amsgrad=i >= 2, lr=0.1 / (i + 1))
        np.testing.assert_array_equal(p.data, x)
    assert sorted(opt.state[p]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    np.testing.assert_array_equal(opt.state[p]["max_exp_avg_sq"], maxes)
