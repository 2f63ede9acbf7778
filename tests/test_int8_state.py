"""8-bit blockwise optimizer state (``state_dtype='int8'``).

Oracles: the quantile maps are bitsandbytes' ``create_dynamic_map`` (and torchao's copy of
it); the quantizer is torchao's ``scale_tensor`` + ``quantize_8bit_with_qmap`` (what its
8-bit optimizers store). A step is checked against its definition: the codes dequantized
(torchao's ``dequant_with_qmap``), the same optimizer's float32-state step (itself checked
against torch and the official packages elsewhere) and its new state quantized by torchao:
the codes and absmax equal, the parameters bit for bit; against torch's own optimizer from
the dequantized state, the parameters within float32 rounding of the tensor's scale.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from conftest import oracle
from test_hardening import _InterruptAfterKernel
from fastopt.optim.optimizer import ABSMAX, INT8_MIN_SIZE, UNSIGNED_STATES

SIZES = [(INT8_MIN_SIZE,), (70, 97), (20_001,), (100,)]  # (the last stays float32)
#: (class, options, torch's class or None): every optimizer with 8-bit state, with options
#: that use each of its buffers.
CASES = [
    ("Adam", dict(lr=1e-2), "Adam"),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.01), "Adam"),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1), "AdamW"),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), "SGD"),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1), "SGD"),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True), "RMSprop"),
    ("RMSprop", dict(lr=1e-3), "RMSprop"),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1, lr_decay=0.01), "Adagrad"),
    ("Lion", dict(lr=1e-3, weight_decay=0.1), None),
    ("AdaBelief", dict(lr=1e-3), None),
    ("AdaBelief", dict(lr=1e-3, amsgrad=True, rectify=False), None),
]
STEPS = 6


@pytest.fixture(scope="module")
def ao():
    """torchao's 8-bit quantizer and maps (the oracle)."""
    oracle("torch", "the 8-bit state tests")
    quant = oracle("torchao.optim.quant_utils", "the 8-bit state tests")
    sub = oracle("torchao.optim.subclass_8bit", "the 8-bit state tests")
    return quant, sub


def _ao_quantize(ao, values, unsigned):
    """torchao's codes and absmax of float32 ``values``, block by block of 256 (a short last
    block as a block of its own length, as bitsandbytes keeps it)."""
    import torch
    quant, sub = ao
    qmap = torch.tensor(sub.get_qmap_unsigned() if unsigned else sub.get_qmap_signed(), dtype=torch.float32)
    flat = torch.from_numpy(np.ascontiguousarray(values, np.float32).reshape(-1))
    codes, scales = [], []
    full = flat.numel() // 256 * 256
    for part, block in ((flat[:full], 256), (flat[full:], flat.numel() - full)):
        if part.numel():
            scaled, scale = quant.scale_tensor(part, block)
            codes.append(quant.quantize_8bit_with_qmap(scaled, qmap))
            scales.append(scale)
    return torch.cat(codes).numpy().reshape(np.shape(values)), torch.cat(scales).numpy()


def _ao_dequantize(ao, codes, absmax, unsigned):
    import torch
    quant, sub = ao
    qmap = torch.tensor(sub.get_qmap_unsigned() if unsigned else sub.get_qmap_signed(), dtype=torch.float32)
    c = torch.from_numpy(np.ascontiguousarray(codes).reshape(-1))
    n = c.numel()
    per = torch.from_numpy(np.repeat(absmax, 256)[:n])
    return (qmap[c.int()] * per).numpy().reshape(codes.shape)


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(oracle("ml_dtypes", "the bfloat16 tests").bfloat16)
    return np.dtype(name)


def test_the_maps_are_bitsandbytes_and_torchaos():
    import torch  # noqa: F401
    bnb = oracle("bitsandbytes.functional", "the 8-bit state tests")
    sub = oracle("torchao.optim.subclass_8bit", "the 8-bit state tests")
    for unsigned in (False, True):
        mine = np.array(fo._fastopt.quantile_map(unsigned), np.float32)
        assert np.array_equal(mine, bnb.create_dynamic_map(signed=not unsigned).numpy())
        assert np.array_equal(mine, np.array(sub.get_qmap_unsigned() if unsigned else sub.get_qmap_signed(), np.float32))


@pytest.mark.parametrize("unsigned", [False, True])
def test_quantizing_equals_torchao_code_for_code(ao, unsigned):
    rng = np.random.default_rng(1)
    n = 256 * 300 + 77
    x = (rng.standard_normal(n) * np.exp(rng.standard_normal(n) * 4)).astype(np.float32)
    x[:256] = 0.0  # an all-zero block
    x[256:512] = 1e-30  # a tiny one
    x[600] = -0.0
    if unsigned:
        x = np.abs(x)
    codes, absmax = fo.optim.optimizer._quantize(x, unsigned)
    want_codes, want_absmax = _ao_quantize(ao, x, unsigned)
    assert np.array_equal(absmax.view(np.uint32), want_absmax.view(np.uint32))
    assert np.array_equal(codes, want_codes)
    back = fo.optim.optimizer._dequantize(codes, absmax, unsigned)
    assert np.array_equal(back.view(np.uint32), _ao_dequantize(ao, codes, absmax, unsigned).view(np.uint32))


def _make(cls_name, params, **kw):
    return getattr(fo.optim, cls_name)(params, **kw)


def _reference_step(ao, opt8, ref, arrays, grads):
    """The definition of one 8-bit step: ``ref`` (the same optimizer with float32 state) loads
    the dequantized state of ``opt8`` and steps; its new state quantized by torchao."""
    for p8, pr in zip(opt8.param_groups[0]["params"], ref.param_groups[0]["params"]):
        st = opt8.state.get(p8) if hasattr(opt8.state, "get") else None
        if st is None or not len(st):
            continue
        new = {}
        for key, v in st.items():
            if key.endswith(ABSMAX):
                continue
            am = st.get(key + ABSMAX)
            if am is not None:
                new[key] = _ao_dequantize(ao, v, am, key in UNSIGNED_STATES)
            else:
                new[key] = np.array(v, copy=True)
        ref.state[pr] = new
    ref.step(grads=grads)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{CASES[i][0]}-{i}")
def test_each_step_is_dequantize_step_quantize(ao, case, dtype_name):
    cls_name, kw, _ = CASES[case]
    dtype = _dtype(dtype_name)
    rng = np.random.default_rng(case)
    start = [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in SIZES]
    opt8 = _make(cls_name, [p.copy() for p in start], state_dtype="int8", **kw)
    state32 = None if dtype_name == "float32" else "float32"
    ref = _make(cls_name, [p.copy() for p in start], state_dtype=state32, **kw)
    for step in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in SIZES]
        _reference_step(ao, opt8, ref, None, grads)
        opt8.step(grads=grads)
        for i, (p8, pr) in enumerate(zip(opt8.param_groups[0]["params"], ref.param_groups[0]["params"])):
            assert np.array_equal(np.asarray(p8, np.float32).view(np.uint32), np.asarray(pr, np.float32).view(np.uint32)), \
                (step, i)
            st8, str_ = opt8.state[p8], ref.state[pr]
            for key, v in str_.items():
                if key == "step" or np.ndim(v) == 0:
                    assert np.array_equal(st8[key], v)
                    continue
                if p8.size < INT8_MIN_SIZE:  # (float32 state, stepped by the same rule)
                    assert st8[key].dtype == np.float32 and np.array_equal(st8[key], v), (step, i, key)
                    continue
                codes, absmax = _ao_quantize(ao, v, key in UNSIGNED_STATES)
                assert st8[key].dtype == np.uint8 and st8[key].shape == p8.shape
                assert np.array_equal(st8[key + ABSMAX].view(np.uint32), absmax.view(np.uint32)), (step, i, key)
                assert np.array_equal(st8[key], codes), (step, i, key, int(np.sum(st8[key] != codes)))


@pytest.mark.parametrize("case", [i for i, c in enumerate(CASES) if c[2] is not None], ids=lambda i: f"{CASES[i][0]}-{i}")
def test_a_step_from_the_dequantized_state_is_torchs(ao, case):
    import torch
    cls_name, kw, torch_name = CASES[case]
    rng = np.random.default_rng(10 + case)
    start = [rng.standard_normal(s).astype(np.float32) for s in SIZES[:3]]
    opt8 = _make(cls_name, [p.copy() for p in start], state_dtype="int8", **kw)
    for _ in range(3):
        opt8.step(grads=[rng.standard_normal(s).astype(np.float32) for s in SIZES[:3]])
    tps = [torch.nn.Parameter(torch.tensor(np.asarray(p))) for p in opt8.param_groups[0]["params"]]
    topt = getattr(torch.optim, torch_name)(tps, foreach=False, **kw)
    topt.load_state_dict(fo.optim.interop.to_torch_state_dict(opt8.state_dict()))
    grads = [rng.standard_normal(s).astype(np.float32) for s in SIZES[:3]]
    for tp, g in zip(tps, grads):
        tp.grad = torch.tensor(g)
    topt.step()
    opt8.step(grads=grads)
    for p8, tp in zip(opt8.param_groups[0]["params"], tps):
        # (within float32 rounding of the tensor's largest value: fastopt's float32 step
        # contracts multiply-adds where torch's single-tensor loop rounds twice)
        want = tp.detach().numpy()
        assert np.allclose(np.asarray(p8), want, rtol=0, atol=4 * 2.0**-23 * np.abs(want).max())


def test_the_codes_do_not_depend_on_the_thread_count():
    before = fo.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            fo.set_num_threads(threads)
            rng = np.random.default_rng(5)
            p = rng.standard_normal(300_001).astype(np.float32)
            opt = fo.optim.Adam([p], lr=1e-2, state_dtype="int8")
            for _ in range(3):
                opt.step(grads=[rng.standard_normal(p.shape).astype(np.float32)])
            st = opt.state[p]
            results.append((p.copy(), st["exp_avg"].copy(), st["exp_avg_sq"].copy(), st["exp_avg_absmax"].copy()))
    finally:
        fo.set_num_threads(before)
    for r in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], r))


def test_adam_with_8bit_state_descends_like_float32():
    """A quadratic with noisy gradients (50k elements, 500 Adam steps): the 8-bit run's
    weights stay within 2% of the float32 run's (relative distance)."""
    rng = np.random.default_rng(3)
    n = 50_000
    target = rng.standard_normal(n).astype(np.float32)
    runs = {}
    for sd in (None, "int8"):
        w = np.zeros(n, np.float32)
        opt = fo.optim.Adam([w], lr=1e-2, state_dtype=sd)
        noise = np.random.default_rng(4)
        for _ in range(500):
            opt.step(grads=[(w - target + 0.1 * noise.standard_normal(n)).astype(np.float32)])
        runs[sd] = w
    dist = np.linalg.norm(runs["int8"] - runs[None]) / np.linalg.norm(runs[None])
    assert dist < 0.02, dist
    assert np.linalg.norm(runs["int8"] - target) < 0.05 * np.linalg.norm(target)


def test_small_tensors_keep_float32_state_and_the_state_dict_holds_codes_and_absmax():
    big, small = np.ones(5000, np.float32), np.ones(10, np.float32)
    opt = fo.optim.AdamW([big, small], state_dtype="int8")
    opt.step(grads=[np.full(5000, 0.5, np.float32), np.full(10, 0.5, np.float32)])
    sd = opt.state_dict()["state"]
    assert sd[0]["exp_avg"].dtype == np.uint8 and sd[0]["exp_avg_absmax"].shape == (20,)
    assert sd[1]["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in sd[1]
    # bytes per element of state: 2 codes plus 2 absmax per 256 elements
    nbytes = sum(v.nbytes for k, v in sd[0].items() if k != "step")
    assert nbytes == 2 * 5000 + 2 * 20 * 4


def test_state_dict_save_and_load_round_trip_continue_identically(tmp_path):
    rng = np.random.default_rng(6)
    start = [rng.standard_normal(s).astype(np.float32) for s in SIZES]
    a = fo.optim.Adam([p.copy() for p in start], lr=1e-2, state_dtype="int8")
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SIZES] for _ in range(4)]
    for g in grads[:2]:
        a.step(grads=g)
    fo.save(a.state_dict(), tmp_path / "opt.fo")
    b = fo.optim.Adam([np.array(p) for p in a.param_groups[0]["params"]], lr=1e-2, state_dtype="int8")
    b.load_state_dict(fo.load(tmp_path / "opt.fo"), strict=True)
    for g in grads[2:]:
        a.step(grads=g)
        b.step(grads=g)
    for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
        assert np.array_equal(pa, pb)
    for k, v in a.state_dict()["state"][0].items():
        assert np.array_equal(v, b.state_dict()["state"][0][k])


def test_a_float32_state_dict_loads_quantized_and_torch_gets_float32_values(ao):
    import torch
    rng = np.random.default_rng(7)
    p32 = rng.standard_normal(5000).astype(np.float32)
    f = fo.optim.Adam([p32.copy()], lr=1e-2)
    f.step(grads=[rng.standard_normal(5000).astype(np.float32)])
    q = fo.optim.Adam([p32.copy()], lr=1e-2, state_dtype="int8")
    sd = f.state_dict()
    sd["param_groups"][0]["state_dtype"] = "int8"
    q.load_state_dict(sd)
    st = q.state[q.param_groups[0]["params"][0]]
    codes, absmax = _ao_quantize(ao, f.state[f.param_groups[0]["params"][0]]["exp_avg_sq"], True)
    assert np.array_equal(st["exp_avg_sq"], codes) and np.array_equal(st["exp_avg_sq_absmax"], absmax)
    t = fo.optim.interop.to_torch_state_dict(q.state_dict())
    assert set(t["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert t["state"][0]["exp_avg_sq"].dtype == torch.float32
    assert np.array_equal(t["state"][0]["exp_avg_sq"].numpy(), _ao_dequantize(ao, codes, absmax, True))


def test_bad_input_is_refused_by_name_and_nothing_changes():
    p = np.ones(5000, np.float32)
    with pytest.raises(TypeError, match="NAdam keeps no 8-bit state"):
        fo.optim.NAdam([p], state_dtype="int8")
    with pytest.raises(TypeError, match="float64.*state_dtype='int8'"):
        fo.optim.Adam([np.ones(5000)], state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype must be"):
        fo.optim.Adam([p], state_dtype="uint8")
    bf = _dtype("bfloat16")
    with pytest.raises(ValueError, match="'kahan'.*8-bit"):
        fo.optim.Adam([np.ones(5000, bf)], state_dtype="int8", master_weights="kahan")
    opt = fo.optim.Adam([p], lr=0.1, state_dtype="int8")
    opt.step(grads=[np.ones(5000, np.float32)])
    sd = opt.state_dict()
    # 8-bit state into a group without state_dtype='int8', or an optimizer without it
    plain = fo.optim.Adam([p.copy()])
    bad = {"state": sd["state"], "param_groups": [{**sd["param_groups"][0], "state_dtype": None}]}
    with pytest.raises(TypeError, match="8-bit state"):
        plain.load_state_dict(bad)
    assert plain.state_dict()["state"] == {}
    with pytest.raises(TypeError, match="NAdam keeps no 8-bit state"):
        fo.optim.NAdam([p.copy()]).load_state_dict(sd)
    # codes without their absmax
    broken = {"state": {0: {k: v for k, v in sd["state"][0].items() if k != "exp_avg_absmax"}},
              "param_groups": sd["param_groups"]}
    other = fo.optim.Adam([p.copy()], state_dtype="int8")
    with pytest.raises(ValueError, match="without their absmax"):
        other.load_state_dict(broken)
    # the kernel: an absmax list of the wrong length, and 8-bit state for a rule without it
    st = opt.state[p]
    before = [np.array(x, copy=True) for x in (p, st["exp_avg"], st["exp_avg_sq"], st["exp_avg_absmax"])]
    rule = fo.optim._engine.Rule("adam", lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
                                 maximize=False, decoupled_weight_decay=False, cautious=False)
    with pytest.raises(ValueError, match="exp_avg_sqs\\[0\\] has 19 values"):
        fo._fastopt.step(rule, [p], [np.ones(5000, np.float32)], [[st["exp_avg"]], [st["exp_avg_sq"]]], [[st["step"]]],
                         None, 1.0, False, None, None, None, None, [[st["exp_avg_absmax"]], [st["exp_avg_sq_absmax"][:19]]])
    with pytest.raises(ValueError, match="takes scales"):
        fo._fastopt.step(rule, [p], [np.ones(5000, np.float32)], [[st["exp_avg"]], [st["exp_avg_sq"]]], [[st["step"]]])
    nadam = fo.optim._engine.Rule("nadam", lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                                  momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False)
    with pytest.raises(TypeError, match="nadam cannot keep 8-bit"):
        fo._fastopt.step(nadam, [p], [np.ones(5000, np.float32)], [[st["exp_avg"]], [st["exp_avg_sq"]]],
                         [[st["step"]], [np.ones((), np.float32)]], None, 1.0, False, None, None, None, None,
                         [[st["exp_avg_absmax"]], [st["exp_avg_sq_absmax"]]])
    after = (p, st["exp_avg"], st["exp_avg_sq"], st["exp_avg_absmax"])
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_8bit_state_through_fastopt_torch():
    """fastopt.torch steps a torch model with 8-bit state as fastopt.optim steps the same
    arrays; its state_dict (codes and absmax) loads back and the run continues exactly;
    to_torch_state_dict turns it into float32 values torch's AdamW continues from; torch's
    float32 state loads quantized, as into fastopt.optim."""
    torch = oracle("torch", "the fastopt.torch test")
    import fastopt.torch as ft
    from fastopt.optim.interop import to_torch_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.Tanh(), torch.nn.Linear(100, 3))
    arrays = [p.detach().numpy().copy() for p in model.parameters()]
    opt = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="int8")
    ref = fo.optim.AdamW(arrays, lr=1e-2, state_dtype="int8")
    x, y = torch.randn(32, 100), torch.randn(32, 3)

    def step(o):
        o.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        o.step()
        return [p.grad.numpy().copy() for p in model.parameters()]

    for _ in range(4):
        ref.step(grads=step(opt))
    params = list(model.parameters())
    for p, a in zip(params, arrays):
        assert np.array_equal(p.detach().numpy(), a)
    w = params[0]
    assert opt.state[w]["exp_avg"].dtype == torch.uint8 and opt.state[params[1]]["exp_avg"].dtype == torch.float32
    assert np.array_equal(opt.state[w]["exp_avg_sq_absmax"].numpy(), ref.state[arrays[0]]["exp_avg_sq_absmax"])
    sd = opt.state_dict()
    again = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="int8")
    again.load_state_dict(sd)
    assert again.state[w]["exp_avg"].dtype == torch.uint8
    for _ in range(2):
        ref.step(grads=step(again))
    for p, a in zip(params, arrays):
        assert np.array_equal(p.detach().numpy(), a)
    # to torch: float32 values under torch's keys
    plain = to_torch_state_dict(again.state_dict())
    want = np.empty(w.shape, np.float32)
    fo._fastopt.dequantize_blockwise(again.state[w]["exp_avg"].numpy(), again.state[w]["exp_avg_absmax"].numpy(), want,
                                     False)
    assert set(plain["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert np.array_equal(plain["state"][0]["exp_avg"].numpy(), want)
    theirs = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    theirs.load_state_dict(plain)
    step(theirs)
    # from torch: float32 state loads quantized, as into fastopt.optim
    back = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="int8")
    back.load_state_dict(theirs.state_dict())
    mirror = fo.optim.AdamW([p.detach().numpy().copy() for p in params], lr=1e-2, state_dtype="int8")
    mirror.load_state_dict(theirs.state_dict())
    for i, p in enumerate(params):
        for key, v in back.state[p].items():
            assert np.array_equal(v.numpy(), mirror.state[mirror.param_groups[0]["params"][i]][key]), key


@pytest.mark.parametrize("master", ["remainder", "float32"])
def test_8bit_state_beside_a_bfloat16_master(ao, master):
    """The master-weight options keep working with 8-bit state: the same definition, the
    master (and the parameter stored from it) bit for bit."""
    bf = _dtype("bfloat16")
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s).astype(np.float32).astype(bf) for s in SIZES]
    opt8 = fo.optim.AdamW([p.copy() for p in start], lr=1e-3, state_dtype="int8", master_weights=master)
    ref = fo.optim.AdamW([p.copy() for p in start], lr=1e-3, state_dtype="float32", master_weights=master)
    for _ in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32).astype(bf) for s in SIZES]
        _reference_step(ao, opt8, ref, None, grads)
        opt8.step(grads=grads)
        for p8, pr in zip(opt8.param_groups[0]["params"], ref.param_groups[0]["params"]):
            assert np.array_equal(p8.view(np.uint16), pr.view(np.uint16))
            key = "master_low_bits" if master == "remainder" else "master"
            assert np.array_equal(opt8.state[p8][key], ref.state[pr][key])


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{CASES[i][0]}-{i}")
def test_the_python_side_picks_the_map_the_kernel_uses(case):
    """New codes and loaded or exported state pick the map by the buffer's name
    (``UNSIGNED_STATES``); the kernel by the rule (``Rule.unsigned_states``): they agree."""
    cls_name, kw, _ = CASES[case]
    opt = _make(cls_name, [np.zeros(INT8_MIN_SIZE, np.float32)], state_dtype="int8", **kw)
    rule = opt._rule_of(opt.param_groups[0])[3]
    states = rule.layout()[0]
    assert set(rule.unsigned_states()) == {s for s in states if s in UNSIGNED_STATES}
    assert fo.optim._engine.Rule("nadam", lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                                 momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False).unsigned_states() is None


@pytest.mark.parametrize("before", [False, True], ids=["after-kernel", "before-kernel"])
@pytest.mark.parametrize("which", [1, 2, 3], ids=["8bit-call", "float32-call", "next-group"])
def test_an_interrupt_never_leaves_a_group_half_stepped(monkeypatch, which, before):
    """A group with 8-bit and float32 state takes two kernel calls: an interrupt in or after
    either (or in the next group's) leaves every group stepped exactly once, with its state,
    and is raised afterwards."""
    rng = np.random.default_rng(5)
    shapes = [(INT8_MIN_SIZE + 300,), (50,), (INT8_MIN_SIZE,)]
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ref = [w.copy() for w in ws]
    gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def make(arrays):
        return fo.optim.AdamW([{"params": arrays[:2]}, {"params": arrays[2:]}], lr=1e-2, state_dtype="int8")

    opt, ref_opt = make(ws), make(ref)
    monkeypatch.setattr(fo.optim._engine, "_kernels", _InterruptAfterKernel(before, skip=which - 1))
    with pytest.raises(KeyboardInterrupt):
        opt.step(grads=gs)
    monkeypatch.undo()
    ref_opt.step(grads=gs)
    for _ in range(2):
        for w, r in zip(ws, ref):
            np.testing.assert_array_equal(w, r)
        sd, ref_sd = opt.state_dict()["state"], ref_opt.state_dict()["state"]
        assert set(sd) == set(ref_sd) == {0, 1, 2}
        for i in sd:
            assert set(sd[i]) == set(ref_sd[i])
            for key in sd[i]:
                np.testing.assert_array_equal(sd[i][key], ref_sd[i][key])
        opt.step(grads=gs)  # (and the next step continues exactly)
        ref_opt.step(grads=gs)
