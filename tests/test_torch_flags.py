"""torch's implementation-selection flags (``foreach``, ``fused``, ``capturable``,
``differentiable``): accepted where the torch optimizer takes them, kept in the param groups as
torch keeps them, without effect on the (always fused) update; True for capturable or
differentiable is refused with the reason."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import fastopt as fo

TORCH_NAMES = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]
FLAGS = ("foreach", "fused", "capturable", "differentiable")


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_same_flags_and_group_keys_as_torch(torch, name):
    ours = inspect.signature(getattr(fo.optim, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    assert {f for f in FLAGS if f in ours} == {f for f in FLAGS if f in theirs}
    for f in FLAGS:
        if f in theirs:
            assert ours[f].default == theirs[f].default, f
    mine = getattr(fo.optim, name)([np.zeros(3)], lr=0.1)
    ref = getattr(torch.optim, name)([torch.zeros(3)], lr=0.1)
    assert set(mine.param_groups[0]) == set(ref.param_groups[0])
    for f in FLAGS:
        if f in theirs:
            assert mine.param_groups[0][f] == ref.param_groups[0][f], f


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_flags_do_not_change_the_update(name):
    g = np.random.default_rng(0).standard_normal(50)
    flag_sets = [dict(foreach=False), dict(foreach=True)]
    if "fused" in inspect.signature(getattr(fo.optim, name)).parameters:
        flag_sets += [dict(fused=True), dict(fused=False, foreach=None)]
    results = []
    for flags in [{}] + flag_sets:
        w = np.linspace(-1, 1, 50)
        opt = getattr(fo.optim, name)([w], lr=0.01, **flags)
        for _ in range(3):
            opt.step(grads=[g])
        results.append(w)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_fused_true_is_what_torch_fused_computes(torch, name):
    """A torch user's ``fused=True`` line gives torch's fused result (fastopt is always fused)."""
    g = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    w = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    t = torch.nn.Parameter(torch.from_numpy(w.copy()))
    ref = getattr(torch.optim, name)([t], lr=0.01, fused=True)
    opt = getattr(fo.optim, name)([w], lr=0.01, fused=True)
    for _ in range(5):
        t.grad = torch.from_numpy(g.copy())
        ref.step()
        opt.step(grads=[g])
    np.testing.assert_allclose(w, t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in TORCH_NAMES if n not in ("SGD", "Adagrad")])
def test_capturable_true_is_refused_with_the_reason(name):
    w = np.zeros(3)
    with pytest.raises(ValueError, match="capturable=True .*CUDA graph"):
        getattr(fo.optim, name)([w], capturable=True)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_differentiable_true_is_refused_with_the_reason(name):
    with pytest.raises(ValueError, match="differentiable=True .*no autograd"):
        getattr(fo.optim, name)([np.zeros(3)], differentiable=True)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_fused_and_foreach_together_is_refused_as_torch(name):
    with pytest.raises(ValueError, match="`fused` and `foreach` cannot be `True` together"):
        getattr(fo.optim, name)([np.zeros(3)], fused=True, foreach=True)


def test_flags_are_type_checked_and_named():
    with pytest.raises(TypeError, match="fused must be None or a bool"):
        fo.optim.Adam([np.zeros(3)], fused="yes")
    with pytest.raises(TypeError, match="foreach must be None or a bool"):
        fo.optim.SGD([np.zeros(3)], lr=0.1, foreach=1)
    with pytest.raises(TypeError, match="capturable must be a bool"):
        fo.optim.RMSprop([np.zeros(3)], capturable=None)


def test_optimizers_torch_lacks_flags_for_take_none():
    with pytest.raises(TypeError):
        fo.optim.Lion([np.zeros(3)], fused=True)
    with pytest.raises(TypeError):
        fo.optim.RMSprop([np.zeros(3)], fused=True)  # torch's RMSprop has no fused either


def test_a_group_or_a_state_dict_that_sets_capturable_is_refused_before_any_change():
    w = np.zeros(3)
    opt = fo.optim.Adam([w])
    with pytest.raises(ValueError, match="capturable"):
        opt.add_param_group({"params": [np.zeros(2)], "capturable": True})
    sd = opt.state_dict()
    sd["param_groups"][0]["differentiable"] = True
    with pytest.raises(ValueError, match="differentiable"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["differentiable"] is False and len(opt.param_groups) == 1


def test_torch_state_dict_with_its_flags_loads(torch):
    t = torch.nn.Parameter(torch.zeros(4))
    ref = torch.optim.Adam([t], lr=0.1, fused=True)
    t.grad = torch.ones(4)
    ref.step()
    opt = fo.optim.Adam([np.zeros(4, np.float32)], lr=0.1)
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["fused"] is True


def test_adamw_load_state_dict_takes_strict():
    w = np.zeros(3)
    opt = fo.optim.AdamW([w])
    opt.step(grads=[np.ones(3)])
    opt.load_state_dict(opt.state_dict(), strict=True)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
