"""The torch.optim-like surface: Parameter, groups, zero_grad, closures, plain arrays,
configuration."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastopt as fo


def test_parameter_is_the_callers_array():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = fo.Parameter(a)
    assert p.data is a and np.asarray(p) is a
    assert p.shape == (2, 3) and p.dtype == np.float32 and p.ndim == 2 and p.size == 6 and len(p) == 2
    assert np.array(p, dtype=np.float64).dtype == np.float64  # a copy when a cast is asked for
    assert np.sum(p) == 15
    assert "Parameter(" in repr(p)
    opt = fo.optim.SGD([p], lr=1.0)
    p.grad = np.ones_like(a)
    opt.step()
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3) - 1)


def test_zero_grad():
    p = fo.Parameter(np.zeros(3))
    opt = fo.optim.Adam([p])
    g = np.ones(3)
    p.grad = g
    opt.zero_grad(set_to_none=False)
    assert p.grad is g and (g == 0).all()
    opt.zero_grad()
    assert p.grad is None


def test_closure_is_called_once_and_its_loss_returned():
    p = fo.Parameter(np.array([3.0]))
    opt = fo.optim.SGD([p], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        p.grad = 2 * p.data  # d/dp p^2
        return float(p.data[0] ** 2)

    assert opt.step(closure) == 9.0
    assert len(calls) == 1
    np.testing.assert_allclose(p.data, [3.0 - 0.1 * 6.0])
    assert opt.step() is None


def test_grad_none_is_skipped():
    a, b = fo.Parameter(np.ones(2)), fo.Parameter(np.ones(2))
    opt = fo.optim.Adam([a, b])
    a.grad = np.ones(2)
    opt.step()
    assert (b.data == 1).all() and len(opt.state[b]) == 0 and (a.data != 1).all()


def test_plain_arrays_with_grads_list():
    W, bias = np.ones((2, 2)), np.zeros(2)
    opt = fo.optim.SGD([W, bias], lr=0.1, momentum=0.9)
    opt.step(grads=[np.ones((2, 2)), None])
    np.testing.assert_allclose(W, 0.9)
    assert (bias == 0).all()
    assert "momentum_buffer" in opt.state[W] and bias not in opt.state
    opt.step(grads=[np.ones((2, 2)), np.ones(2)])
    np.testing.assert_allclose(W, 0.9 - 0.1 * 1.9)


def test_grads_list_overrides_parameter_grad():
    p = fo.Parameter(np.zeros(2))
    p.grad = np.full(2, 100.0)
    fo.optim.SGD([p], lr=1.0).step(grads=[np.ones(2)])
    np.testing.assert_allclose(p.data, -1.0)


def test_param_groups_and_defaults():
    a, b = fo.Parameter(np.zeros(2)), fo.Parameter(np.zeros(2))
    opt = fo.optim.Adam([{"params": [a], "lr": 0.5}], betas=(0.8, 0.9))
    opt.add_param_group({"params": b})  # a single param is wrapped, as torch
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[1]["lr"] == 1e-3
    assert opt.param_groups[1]["betas"] == (0.8, 0.9)
    assert opt.param_groups[1]["params"] == [b]
    assert opt.defaults["betas"] == (0.8, 0.9)
    text = repr(opt)
    assert text.startswith("Adam (") and "Parameter Group 1" in text and "lr: 0.5" in text


def test_lr_changes_take_effect():
    p = fo.Parameter(np.zeros(1))
    opt = fo.optim.SGD([p], lr=1.0)
    opt.param_groups[0]["lr"] = 0.25
    p.grad = np.ones(1)
    opt.step()
    assert p.data[0] == -0.25


def test_defaults_match_torch_signatures():
    import inspect

    sig = inspect.signature(fo.optim.Adam)
    assert sig.parameters["lr"].default == 1e-3 and sig.parameters["betas"].default == (0.9, 0.999)
    assert sig.parameters["eps"].default == 1e-8 and sig.parameters["weight_decay"].default == 0
    assert inspect.signature(fo.optim.AdamW).parameters["weight_decay"].default == 1e-2
    s = inspect.signature(fo.optim.SGD)
    assert s.parameters["lr"].default == 1e-3 and s.parameters["momentum"].default == 0


def test_show_config_and_threads():
    out = io.StringIO()
    fo.show_config(file=out)
    text = out.getvalue()
    assert fo.__version__ in text and fo.simd_level() in text and f"threads: {fo.get_num_threads()}" in text
    before = fo.get_num_threads()
    fo.set_num_threads(1)
    assert fo.get_num_threads() == 1
    fo.set_num_threads(before)


def _python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, check=True).stdout.strip()


def test_environment_variables():
    assert _python("import fastopt; print(fastopt.get_num_threads())", FASTOPT_NUM_THREADS="3") == "3"
    assert _python("import fastopt; print(fastopt.simd_level())", FASTOPT_SIMD="scalar") == "scalar"
    # a level the CPU lacks (or nonsense) falls back to the detected level, never crashes
    detected = fo._fastopt.detected_simd_level()
    assert _python("import fastopt; print(fastopt.simd_level())", FASTOPT_SIMD="bogus") == detected


def test_concurrent_steps_from_python_threads():
    """The GIL is released during kernels; steps on separate optimizers from several
    threads must not interfere or deadlock."""
    params = [fo.Parameter(np.zeros(200_000, np.float32)) for _ in range(4)]
    opts = [fo.optim.Adam([p], lr=0.1) for p in params]

    def work(p, opt):
        for _ in range(20):
            p.grad = np.ones(p.shape, np.float32)
            opt.step()

    ts = [threading.Thread(target=work, args=(p, o)) for p, o in zip(params, opts)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ref = fo.Parameter(np.zeros(200_000, np.float32))
    work(ref, fo.optim.Adam([ref], lr=0.1))
    for p in params:
        np.testing.assert_array_equal(p.data, ref.data)


@pytest.mark.parametrize("cls", [fo.optim.Adam, fo.optim.AdamW, fo.optim.SGD, fo.optim.Adagrad, fo.optim.RMSprop,
                                 fo.optim.Adamax, fo.optim.NAdam, fo.optim.RAdam])
def test_minimizes_a_quadratic_and_maximize_ascends(cls):
    target = np.linspace(-1, 1, 10)
    for maximize in (False, True):
        p = fo.Parameter(np.zeros(10))
        opt = cls([p], lr=0.05, maximize=maximize)
        start = float(np.sum((p.data - target) ** 2))
        for _ in range(200):
            p.grad = 2 * (p.data - target)
            opt.step()
        end = float(np.sum((p.data - target) ** 2))
        assert (end > start) if maximize else (end < 0.05 * start)


def test_adadelta_minimizes_a_quadratic():
    # Adadelta's step starts at about sqrt(eps): its own test with its lr scale.
    target = np.linspace(-1, 1, 10)
    for maximize in (False, True):
        p = fo.Parameter(np.zeros(10))
        opt = fo.optim.Adadelta([p], lr=10.0, maximize=maximize)
        start = float(np.sum((p.data - target) ** 2))
        for _ in range(300):
            p.grad = 2 * (p.data - target)
            opt.step()
        end = float(np.sum((p.data - target) ** 2))
        assert (end > start) if maximize else (end < 0.1 * start)


def test_typed_surface_lists_every_compiled_function():
    """_fastopt.pyi declares every function the compiled module exports (and no others)."""
    import re
    from pathlib import Path

    import fastopt._fastopt as ext

    stub = (Path(fo.__file__).parent / "_fastopt.pyi").read_text()
    declared = set(re.findall(r"^(?:def|class) (\w+)[(:]", stub, flags=re.M))
    exported = {n for n in dir(ext) if not n.startswith("_") and callable(getattr(ext, n))}
    assert declared == exported, (sorted(exported - declared), sorted(declared - exported))


def _stub_signatures():
    """name -> [(parameter, kind, default as source or None)] for every function and method
    the stub declares (methods as ``Class.method``; ``self`` left out)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(fo.__file__).parent / "_fastopt.pyi").read_text())
    out = {}

    def params(fn):
        a = fn.args
        rows = [(p.arg, "positional_only", None) for p in a.posonlyargs]
        rows += [(p.arg, "positional_or_keyword", None) for p in a.args]
        defaults = a.defaults
        for i, d in enumerate(defaults):
            k = len(rows) - len(defaults) + i
            rows[k] = (rows[k][0], rows[k][1], ast.unparse(d))
        if a.vararg:
            rows.append((a.vararg.arg, "var_positional", None))
        rows += [(p.arg, "keyword_only", None if d is None else ast.unparse(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
        if a.kwarg:
            rows.append((a.kwarg.arg, "var_keyword", None))
        return [r for r in rows if r[0] != "self"]

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = params(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not any(
                    isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list
                ):
                    out[f"{node.name}.{item.name}"] = params(item)
    return out


def test_stub_signatures_match_the_compiled_module():
    """Not only the names: every stub function's parameters (names, order, kind, defaults)
    are those the compiled function takes."""
    import inspect

    import fastopt._fastopt as ext

    checked = 0
    for name, declared in _stub_signatures().items():
        owner, _, attr = name.rpartition(".")
        obj = getattr(getattr(ext, owner), attr) if owner else getattr(ext, name)
        if owner and attr == "__init__":
            obj = getattr(ext, owner)  # a pyclass's constructor signature is the class's
        try:
            real = inspect.signature(obj)
        except (TypeError, ValueError):
            continue  # (no text signature: nothing to compare)
        got = [(p.name, p.kind.name.lower(), None if p.default is p.empty else repr(p.default))
               for p in real.parameters.values() if p.name != "self"]
        assert [(n, k) for n, k, _ in got] == [(n, k) for n, k, _ in declared], name
        for (n, _, d_real), (_, _, d_stub) in zip(got, declared):
            assert (d_real is None) == (d_stub is None), f"{name}: {n} default"
            if d_real is not None and d_stub != "...":
                assert eval(d_real) == eval(d_stub), f"{name}: {n} = {d_real} (stub: {d_stub})"
        checked += 1
    assert checked >= 30


class _Interface:
    """Another library's CPU array, exporting only ``__array_interface__``."""

    def __init__(self, a):
        self._a = a
        self.__array_interface__ = a.__array_interface__


class _DLPack:
    """Another library's CPU array, exporting only DLPack."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


@pytest.mark.parametrize("wrap", [_Interface, _DLPack], ids=["array_interface", "dlpack"])
def test_arrays_of_other_libraries_are_updated_in_place(wrap):
    mem = np.ones(4, np.float32)
    opt = fo.optim.SGD([wrap(mem)], lr=0.5)
    opt.step(grads=[wrap(np.full(4, 2.0, np.float32))])
    np.testing.assert_array_equal(mem, np.zeros(4, np.float32))  # the library's own memory moved
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\] \(_" + wrap.__name__[1:] + r"\) is read-only"):
        fo.optim.SGD([wrap(ro)], lr=0.5)
    with pytest.raises(TypeError, match=r"params\[0\] is object: optimizers take"):
        fo.optim.SGD([object()], lr=0.5)


def test_a_torch_tensor_points_to_fastopt_torch():
    class Parameter:  # (stands for torch.nn.Parameter: only its module matters)
        pass

    Parameter.__module__ = "torch.nn.parameter"
    with pytest.raises(TypeError, match=r"params\[0\] is a torch Parameter: fastopt.torch.Adam is this optimizer"):
        fo.optim.Adam([Parameter()])
