"""Bad input raises TypeError/ValueError naming the argument, never a panic, and leaves every
array (params, grads, state) exactly as it was."""

from __future__ import annotations


import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry
from fastopt.optim import functional as F


def snapshot(opt, extra=()):
    arrays = []
    for g in opt.param_groups:
        for p in g["params"]:
            arrays.append(np.asarray(p))
            if isinstance(p, fo.Parameter) and p.grad is not None:
                arrays.append(p.grad)
    for p, st in opt.state.items():
        arrays.extend(v for v in st.values() if isinstance(v, np.ndarray))
    arrays.extend(extra)
    return [(a, a.copy()) for a in arrays], {id(p): {k: np.copy(v) for k, v in st.items()} for p, st in opt.state.items()}


def unchanged(snap, opt):
    arrays, state = snap
    for a, before in arrays:
        np.testing.assert_array_equal(a, before)
    now = {id(p): set(st) for p, st in opt.state.items() if st}
    assert now == {k: set(v) for k, v in state.items() if v}, "state entries were created or removed"


def make(cls=fo.optim.Adam, n=2, dtype=np.float32, steps=1, **kw):
    rng = np.random.default_rng(0)
    ps = [fo.Parameter(rng.standard_normal(5 + i).astype(dtype)) for i in range(n)]
    opt = cls(ps, **kw)
    for _ in range(steps):
        for p in ps:
            p.grad = rng.standard_normal(p.shape).astype(dtype)
        opt.step()
    return ps, opt


OPTIMIZERS = [(getattr(fo.optim, n), kw) for n, kw in registry.configs()]


def _raises(exc, match, fn):
    with pytest.raises(exc, match=match) as info:
        fn()
    assert type(info.value) in (TypeError, ValueError)
    return info


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
class TestStepArrays:
    def test_wrong_grad_dtype(self, cls, kw):
        ps, opt = make(cls, **kw)
        grads = [p.grad for p in ps]
        grads[1] = grads[1].astype(np.float64)
        snap = snapshot(opt, grads)
        _raises(TypeError, r"grads\[1\] has dtype float64", lambda: opt.step(grads=grads))
        unchanged(snap, opt)

    def test_grad_setter_rejects_dtype_and_shape(self, cls, kw):
        ps, _ = make(cls, **kw)
        with pytest.raises(TypeError, match="grad has dtype"):
            ps[0].grad = np.zeros(ps[0].shape, np.float64)
        with pytest.raises(ValueError, match="grad has shape"):
            ps[0].grad = np.zeros(ps[0].size + 1, np.float32)
        with pytest.raises(TypeError, match="grad must be a numpy.ndarray"):
            ps[0].grad = [1.0] * ps[0].size

    def test_shape_mismatch(self, cls, kw):
        ps, opt = make(cls, **kw)
        grads = [p.grad for p in ps]
        grads[0] = np.ones(3, np.float32)
        snap = snapshot(opt, grads)
        _raises(ValueError, r"grads\[0\] has shape \(3,\) but params\[0\] has shape \(5,\)", lambda: opt.step(grads=grads))
        unchanged(snap, opt)

    def test_non_contiguous_param_and_grad(self, cls, kw):
        base = np.zeros((6, 4), np.float32)
        p = fo.Parameter(base[:, ::2])
        opt = cls([p], **kw)
        p.grad = np.ones((6, 2), np.float32)
        snap = snapshot(opt)
        _raises(ValueError, r"params\[0\] must be C-contiguous", opt.step)
        unchanged(snap, opt)
        q = fo.Parameter(np.zeros((6, 2), np.float32))
        opt = cls([q], **kw)
        g = np.ones((6, 4), np.float32)[:, ::2]
        snap = snapshot(opt, [g])
        _raises(ValueError, r"grads\[0\] must be C-contiguous", lambda: opt.step(grads=[g]))
        unchanged(snap, opt)

    def test_read_only_param(self, cls, kw):
        data = np.ones(4, np.float32)
        data.flags.writeable = False
        p = fo.Parameter(data)
        opt = cls([p], **kw)
        p.grad = np.ones(4, np.float32)
        snap = snapshot(opt)
        _raises(ValueError, r"params\[0\] is read-only", opt.step)
        assert (data == 1).all()
        unchanged(snap, opt)

    def test_read_only_grad_is_fine(self, cls, kw):
        p = fo.Parameter(np.ones(4, np.float32))
        g = np.ones(4, np.float32)
        g.flags.writeable = False
        opt = cls([p], **kw)
        p.grad = g
        opt.step()
        opt.step()  # (ADOPT's first step only measures the gradient)
        assert (p.data != 1).all()

    def test_grad_is_the_param(self, cls, kw):
        w = np.ones(8, np.float32)
        opt = cls([w], **kw)
        snap = snapshot(opt)
        _raises(ValueError, r"grads\[0\] and params\[0\] share memory", lambda: opt.step(grads=[w]))
        assert (w == 1).all()
        unchanged(snap, opt)

    def test_grad_overlaps_param(self, cls, kw):
        buf = np.arange(12, dtype=np.float64)
        w, g = buf[0:8], buf[4:12]  # overlapping views of one buffer
        before = buf.copy()
        opt = cls([w], **kw)
        _raises(ValueError, "share memory", lambda: opt.step(grads=[g]))
        np.testing.assert_array_equal(buf, before)

    def test_disjoint_views_of_one_buffer_are_fine(self, cls, kw):
        buf = np.zeros(12, np.float64)
        w, g = buf[0:6], buf[6:12]
        g[:] = 1.0
        opt = cls([w], **kw)
        opt.step(grads=[g])
        opt.step(grads=[g])  # (ADOPT's first step only measures the gradient)
        assert (w != 0).all() and (g == 1).all()

    def test_later_group_bad_changes_nothing(self, cls, kw):
        rng = np.random.default_rng(1)
        a = fo.Parameter(rng.standard_normal(4).astype(np.float32))
        b = fo.Parameter(rng.standard_normal(4).astype(np.float32))
        opt = cls([{"params": [a]}, {"params": [b]}], **kw)
        a.grad = np.ones(4, np.float32)
        b.grad = np.ones(4, np.float32)
        opt.step()
        a.grad = np.ones(4, np.float32)
        b._grad = np.ones(4, np.float64)  # bypass the setter's check: the kernel must catch it
        snap = snapshot(opt)
        _raises(TypeError, r"param_groups\[1\]: grads\[0\] has dtype float64", opt.step)
        unchanged(snap, opt)

    def test_first_step_failure_creates_no_state(self, cls, kw):
        a = fo.Parameter(np.ones(4, np.float32))
        b = fo.Parameter(np.ones(4, np.float32))
        opt = cls([a, b], **kw)
        a.grad = np.ones(4, np.float32)
        b._grad = np.ones(3, np.float32)
        snap = snapshot(opt)
        _raises(ValueError, r"grads\[1\] has shape", opt.step)
        assert (a.data == 1).all()
        unchanged(snap, opt)

    def test_plain_arrays_need_grads(self, cls, kw):
        w = np.ones(3)
        opt = cls([w], **kw)
        _raises(ValueError, "plain numpy array", opt.step)
        _raises(ValueError, "grads has 2 entries", lambda: opt.step(grads=[np.ones(3), np.ones(3)]))
        _raises(TypeError, "grads must be a list", lambda: opt.step(grads=np.ones(3)))
        _raises(TypeError, r"grads\[0\] must be a numpy.ndarray", lambda: opt.step(grads=[[1.0, 2.0, 3.0]]))
        assert (w == 1).all()


class TestConstruction:
    def test_set_of_params(self):
        with pytest.raises(TypeError, match="ordered collections"):
            fo.optim.Adam({fo.Parameter(np.zeros(2))})
        with pytest.raises(TypeError, match="ordered collections"):
            fo.optim.SGD([{"params": {fo.Parameter(np.zeros(2))}}])

    def test_single_param_not_iterable_of_params(self):
        with pytest.raises(TypeError, match="iterable"):
            fo.optim.Adam(fo.Parameter(np.zeros(2)))
        with pytest.raises(TypeError, match="iterable"):
            fo.optim.Adam(np.zeros(2))

    def test_empty(self):
        with pytest.raises(ValueError, match="empty parameter list"):
            fo.optim.Adam([])

    def test_duplicates(self):
        p = fo.Parameter(np.zeros(2))
        with pytest.raises(ValueError, match="duplicate"):
            fo.optim.Adam([p, p])
        opt = fo.optim.Adam([p])
        with pytest.raises(ValueError, match="more than one parameter group"):
            opt.add_param_group({"params": [p]})
        assert len(opt.param_groups) == 1

    def test_non_params(self):
        with pytest.raises(TypeError, match=r"params\[1\] is list"):
            fo.optim.SGD([np.zeros(2), [1.0, 2.0]])
        with pytest.raises(TypeError, match=r"params\[0\] has dtype int64"):
            fo.optim.SGD([np.zeros(2, np.int64)])
        with pytest.raises(TypeError, match="data must have dtype float32, float64, float16 or bfloat16"):
            fo.Parameter(np.zeros(2, np.int32))

    def test_mixed_dtypes_in_group(self):
        with pytest.raises(TypeError, match="float32 and float64"):
            fo.optim.Adam([np.zeros(2, np.float32), np.zeros(2, np.float64)])
        # in separate groups they are fine
        fo.optim.Adam([{"params": [np.zeros(2, np.float32)]}, {"params": [np.zeros(2, np.float64)]}])

    def test_add_param_group_type(self):
        opt = fo.optim.SGD([np.zeros(2)])
        with pytest.raises(TypeError, match="param_group must be a dict"):
            opt.add_param_group([np.zeros(2)])

    @pytest.mark.parametrize(
        "cls,kw,exc,msg",
        [(getattr(fo.optim, s.name), kw, exc, msg) for s in registry.OPTIMIZERS if not s.matrix for kw, exc, msg in s.bad],
    )
    def test_hyperparameters(self, cls, kw, exc, msg):
        with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
            cls([fo.Parameter(np.zeros(2))], **kw)

    def test_group_options_are_checked_too(self):
        opt = fo.optim.Adam([np.zeros(2)])
        with pytest.raises(ValueError, match="Invalid learning rate"):
            opt.add_param_group({"params": [np.zeros(3)], "lr": -1.0})
        assert len(opt.param_groups) == 1


class TestFunctional:
    def test_steps_must_be_float32_counters(self):
        p, g, m, v = (np.zeros(3) for _ in range(4))
        with pytest.raises(TypeError, match=r"state_steps\[0\] must be a one-element float32"):
            F.adam([p], [g], [m], [v], [], [np.zeros((), np.float64)])
        with pytest.raises(ValueError, match=r"max_exp_avg_sqs is required with amsgrad=True"):
            F.adam([p], [g], [m], [v], [], [np.zeros((), np.float32)], amsgrad=True)

    def test_list_lengths_and_types(self):
        p = np.zeros(3)
        with pytest.raises(ValueError, match="grads has 0 arrays but params has 1"):
            F.sgd([p], [], [None])
        with pytest.raises(TypeError, match="params must be a list"):
            F.sgd(p, [p], [None])
        with pytest.raises(TypeError, match=r"params\[0\] has dtype int64"):
            F.sgd([np.zeros(3, np.int64)], [np.zeros(3, np.int64)], [None])
        with pytest.raises(ValueError, match="momentum_buffer_list has 0 entries"):
            F.sgd([p], [p.copy()], [], momentum=0.9)

    def test_state_buffer_shared_with_param(self):
        p = np.ones(4)
        s = np.zeros((), np.float32)
        with pytest.raises(ValueError, match=r"exp_avgs\[0\] and params\[0\] share memory"):
            F.adam([p], [np.ones(4)], [p], [np.zeros(4)], [], [s])
        assert (p == 1).all() and s == 0

    def test_failed_sgd_leaves_buffer_list_alone(self):
        bufs = [None]
        with pytest.raises(TypeError):
            F.sgd([np.zeros(3)], [np.zeros(3, np.float32)], bufs, momentum=0.9)
        assert bufs == [None]

    def test_cupy_like_arrays_are_named(self):
        class FakeCupy:
            __module__ = "cupy._core.core"

        with pytest.raises(TypeError, match="CuPy arrays are not supported yet"):
            F.sgd([FakeCupy()], [FakeCupy()], [None])

    def test_set_num_threads_checks(self):
        with pytest.raises(ValueError, match="at least 1"):
            fo.set_num_threads(0)
        with pytest.raises(TypeError, match="must be an int"):
            fo.set_num_threads(2.0)
        with pytest.raises(ValueError, match="level must be one of"):
            fo._fastopt.set_simd_level("sse9")


def test_single_array_kernels_name_their_own_arguments():
    """They said ``params[0]`` of arguments called ``a`` and ``b``."""
    from fastopt import _fastopt

    with pytest.raises(ValueError, match=r"^b has shape \(4,\) but a has shape \(3,\)$"):
        _fastopt.dot(np.zeros(3), np.zeros(4))
    y = np.zeros(3)
    with pytest.raises(ValueError, match=r"^x has shape \(2,\) but y has shape \(3,\)$"):
        _fastopt.axpy_(y, 1.0, np.zeros(2))
    with pytest.raises(TypeError, match=r"^x has dtype float32 but must be float64"):
        _fastopt.axpy_(y, 1.0, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="x and y share memory"):
        _fastopt.axpy_(y, 1.0, y)
    assert (y == 0).all()


def test_a_rule_refuses_unknown_missing_and_non_numeric_hyperparameters_when_built():
    """The typed configuration is checked once, when it is built, not at the step."""
    from fastopt import _fastopt

    full = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                decoupled_weight_decay=False, cautious=False)
    assert _fastopt.Rule("adam", **full).name == "adam"
    with pytest.raises(TypeError, match=r'^adam: unexpected hyperparameter "bogus"'):
        _fastopt.Rule("adam", bogus=5, **full)
    with pytest.raises(TypeError, match=r'^adam: missing hyperparameter "eps"'):
        _fastopt.Rule("adam", **{k: v for k, v in full.items() if k != "eps"})
    with pytest.raises(TypeError, match=r'^adam: hyperparameter "lr" must be a number, got str'):
        _fastopt.Rule("adam", **dict(full, lr="0.1"))
    with pytest.raises(TypeError, match=r'^unknown optimizer rule "adamx"'):
        _fastopt.Rule("adamx", **full)
    # Rprop takes no weight_decay (it needed a dummy one before)
    with pytest.raises(TypeError, match="unexpected hyperparameter \"weight_decay\""):
        _fastopt.Rule("rprop", etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0, maximize=False,
                      weight_decay=0.0)


def test_functional_adafactor_names_the_argument_and_writes_nothing():
    p, g = np.ones((2, 3), np.float32), np.full((2, 3), 0.5, np.float32)
    v = np.ones(4, np.float32)
    q, h = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    r, c, step, step2 = np.zeros((2, 1), np.float32), np.zeros((1, 3), np.float32), np.zeros((), np.float32), np.zeros((), np.float32)
    before = [a.copy() for a in (p, q, r, c, v, step, step2)]
    cases = [
        (dict(col_vars=[np.zeros((3, 1), np.float32), None]), ValueError,
         r"col_vars\[0\] has shape \(3, 1\) but params\[0\] \(shape \(2, 3\)\) needs shape \(1, 3\)"),
        (dict(variances=[None, np.ones(4)]), TypeError, r"variances\[1\] has dtype float64"),
        (dict(variances=[None, None]), TypeError, r"variances\[1\] must be a numpy.ndarray, got NoneType"),
        (dict(grads=[g, g]), ValueError, r"grads\[1\] has shape \(2, 3\) but params\[1\] has shape \(4,\)"),
        (dict(state_steps=[step, np.zeros(2, np.float32)]), TypeError, r"state_steps\[1\] must be a one-element float32"),
        (dict(variances=[None, h]), ValueError, r"grads\[1\] and variances\[1\] share memory"),
    ]
    for change, exc, msg in cases:
        args = dict(params=[p, q], grads=[g, h], row_vars=[r, None], col_vars=[c, None], variances=[None, v],
                    state_steps=[step, step2])
        args.update(change)
        with pytest.raises(exc, match=msg):
            F.adafactor(**args, lr=0.1)
        assert all(np.array_equal(a, b) for a, b in zip((p, q, r, c, v, step, step2), before))
    F.adafactor([p, q], [g, h], [r, None], [c, None], [None, v], [step, step2], lr=0.1, check_only=True)
    assert all(np.array_equal(a, b) for a, b in zip((p, q, r, c, v, step, step2), before))
    with pytest.raises(TypeError, match="bogus"):
        fo._fastopt.adafactor_step([p], [g], [r], [c], [None], [step], lr=0.1, beta2_decay=-0.8, eps1=None, eps2=1e-3,
                                   d=1.0, weight_decay=0.0, maximize=False, bogus=1)
    F.adafactor([p, q], [g, h], [r, None], [c, None], [None, v], [step, step2], lr=0.1)
    assert float(step) == float(step2) == 1.0 and not np.array_equal(p, before[0]) and not np.array_equal(q, before[1])


def test_rule_renew_takes_new_numbers_in_the_order_given():
    """``Rule.renew``: the same rule with new numbers, positionally (what a step whose lr a
    scheduler changed uses instead of parsing keywords again); None when they change the
    buffers the rule takes; a wrong count or a non-number is a TypeError naming it."""
    from fastopt import _fastopt

    full = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                decoupled_weight_decay=False, cautious=False)
    rule = _fastopt.Rule("adam", **full)
    new = dict(full, lr=0.5, eps=1e-6, maximize=True)
    renewed = rule.renew(tuple(new.values()))
    assert repr(renewed) == repr(_fastopt.Rule("adam", **new)) != repr(rule)
    # the order is the one the rule was built with, not the engine's
    backwards = dict(reversed(list(full.items())))
    assert repr(_fastopt.Rule("adam", **backwards).renew(tuple(dict(backwards, lr=0.5).values()))) == \
        repr(_fastopt.Rule("adam", **dict(full, lr=0.5)))
    assert rule.renew(tuple(dict(full, amsgrad=True).values())) is None  # (one buffer more)
    assert rule.renew(tuple(full.values())).layout() == rule.layout()
    with pytest.raises(TypeError, match=r"^adam: renew takes 9 values"):
        rule.renew((0.1,))
    with pytest.raises(TypeError, match=r'^adam: hyperparameter "eps" must be a number, got str'):
        rule.renew(tuple(dict(full, eps="1e-8").values()))
    assert repr(rule) == repr(_fastopt.Rule("adam", **full))  # (frozen)

