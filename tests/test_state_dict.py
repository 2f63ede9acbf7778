"""state_dict / load_state_dict: torch's layout, copies both ways, exact resumption."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry

MORE_CASES = [(getattr(fo.optim, n), kw) for n, kw in registry.configs()]
# (the torch-exchange tests: optimizers whose state torch loads as it is)
CASES = [(cls, kw) for cls, kw in MORE_CASES if cls in (fo.optim.Adam, fo.optim.AdamW, fo.optim.SGD)]


def grads_for(step, params, dtype):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(p.shape).astype(dtype) for p in params]


def build(cls, kw, dtype, seed=0):
    rng = np.random.default_rng(seed)
    ps = [fo.Parameter(rng.standard_normal(s).astype(dtype)) for s in [(3, 4), (7,), ()]]
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": registry.second_lr(cls, 0.05)}], **kw)
    return ps, opt


def run(opt, ps, steps, dtype):
    for t in steps:
        for p, g in zip(ps, grads_for(t, ps, dtype)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", MORE_CASES)
def test_resume_is_identical_to_uninterrupted(cls, kw, dtype):
    ps, opt = build(cls, kw, dtype)
    run(opt, ps, range(10), dtype)
    sd = opt.state_dict()
    copies = [fo.Parameter(p.data.copy()) for p in ps]
    run(opt, ps, range(10, 25), dtype)

    opt2 = cls([{"params": copies[:2]}, {"params": copies[2:], "lr": registry.second_lr(cls, 0.05)}], **kw)
    opt2.load_state_dict(sd)
    run(opt2, copies, range(10, 25), dtype)
    for a, b in zip(ps, copies):
        np.testing.assert_array_equal(a.data, b.data)
        for k, v in opt.state[a].items():
            np.testing.assert_array_equal(opt2.state[b][k], v)


@pytest.mark.parametrize("cls,kw", CASES)
def test_layout_is_torchs(cls, kw):
    ps, opt = build(cls, kw, np.float64)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert sd["state"] == {}  # never stepped: no entries, as torch
    run(opt, ps, range(1), np.float64)
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == registry.second_lr(cls, 0.05)
    if cls is fo.optim.SGD and kw.get("momentum", 0) == 0:
        assert all(v == {} for v in sd["state"].values())
    else:
        assert sorted(sd["state"]) == [0, 1, 2]
    for i, st in sd["state"].items():
        if "step" in st:
            assert st["step"].dtype == np.float32 and st["step"].shape == () and float(st["step"]) == 1.0
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
            if k in st:
                assert st[k].shape == ps[i].shape


@pytest.mark.parametrize("cls,kw", MORE_CASES)
def test_saved_dict_never_aliases_live_state(cls, kw):
    ps, opt = build(cls, kw, np.float64)
    run(opt, ps, range(3), np.float64)
    sd = opt.state_dict()
    frozen = {i: {k: np.copy(v) for k, v in st.items()} for i, st in sd["state"].items()}
    run(opt, ps, range(3, 6), np.float64)  # mutates live state in place
    opt.param_groups[0]["lr"] = 123.0
    for i, st in sd["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(v, frozen[i][k])
    assert sd["param_groups"][0]["lr"] != 123.0
    # and loading copies: stepping the loaded optimizer leaves the dict alone
    opt.load_state_dict(sd)
    run(opt, ps, range(6, 8), np.float64)
    for i, st in sd["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(v, frozen[i][k])


def test_load_casts_to_param_dtype_and_keeps_step_float32():
    ps, opt = build(fo.optim.Adam, {}, np.float32)
    run(opt, ps, range(2), np.float32)
    sd = opt.state_dict()
    for st in sd["state"].values():
        st["exp_avg"] = st["exp_avg"].astype(np.float64)
        st["step"] = 2  # a plain number, as older checkpoints have
    opt.load_state_dict(sd)
    for p in ps:
        assert opt.state[p]["exp_avg"].dtype == np.float32
        assert opt.state[p]["step"].dtype == np.float32 and float(opt.state[p]["step"]) == 2.0
    run(opt, ps, range(2, 3), np.float32)
    assert float(opt.state[ps[0]]["step"]) == 3.0


def test_load_errors_change_nothing():
    ps, opt = build(fo.optim.Adam, {}, np.float64)
    run(opt, ps, range(2), np.float64)
    sd = opt.state_dict()
    before = opt.state_dict()
    bad = dict(sd, param_groups=sd["param_groups"][:1])
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict(bad)
    bad = {"state": sd["state"], "param_groups": [dict(sd["param_groups"][0], params=[0]), sd["param_groups"][1]]}
    with pytest.raises(ValueError, match="doesn't match the size"):
        opt.load_state_dict(bad)
    bad = {"state": sd["state"], "param_groups": [dict(sd["param_groups"][0], lr=-1.0), sd["param_groups"][1]]}
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.load_state_dict(bad)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        opt.load_state_dict([1, 2])
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i in before["state"]:
        for k in before["state"][i]:
            np.testing.assert_array_equal(after["state"][i][k], before["state"][i][k])


def test_adamw_stays_decoupled_after_load():
    ps, opt = build(fo.optim.AdamW, {}, np.float64)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        g["decoupled_weight_decay"] = False
    opt.load_state_dict(sd)
    assert all(g["decoupled_weight_decay"] for g in opt.param_groups)


def test_load_backfills_missing_options():
    ps, opt = build(fo.optim.Adam, {"amsgrad": True}, np.float64)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["maximize"]
    opt.load_state_dict(sd)
    assert all(g["maximize"] is False for g in opt.param_groups)


def test_adagrad_state_exists_from_construction_as_torch(torch):
    ps, opt = build(fo.optim.Adagrad, {"initial_accumulator_value": 0.25}, np.float64)
    tp = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ps]
    topt = torch.optim.Adagrad([{"params": tp[:2]}, {"params": tp[2:], "lr": 0.05}], initial_accumulator_value=0.25)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]) == [0, 1, 2]
    for i in sd["state"]:
        assert float(sd["state"][i]["step"]) == 0.0
        np.testing.assert_array_equal(sd["state"][i]["sum"], tsd["state"][i]["sum"].numpy())


def test_nadam_mu_product_stays_a_float32_counter_on_load():
    ps, opt = build(fo.optim.NAdam, {}, np.float64)
    run(opt, ps, range(3), np.float64)
    sd = opt.state_dict()
    for st in sd["state"].values():
        st["mu_product"] = np.float64(st["mu_product"])  # as a torch float64 run would save it
    opt.load_state_dict(sd)
    assert all(opt.state[p]["mu_product"].dtype == np.float32 for p in ps)
    run(opt, ps, range(3, 5), np.float64)
