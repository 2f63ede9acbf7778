"""The optimizer registry (fastopt.optim.registry) that the suites draw their lists from
covers every optimizer, and what it says of each is true."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import registry


def test_every_optimizer_is_in_the_registry():
    exported = {n for n in fo.optim.__all__ if isinstance(getattr(fo.optim, n), type)
                and issubclass(getattr(fo.optim, n), fo.optim.Optimizer) and n != "Optimizer"}
    assert exported == {s.name for s in registry.OPTIMIZERS}
    assert len({s.name for s in registry.OPTIMIZERS}) == len(registry.OPTIMIZERS)


@pytest.mark.parametrize("spec", [s for s in registry.OPTIMIZERS if not s.closure], ids=lambda s: s.name)
def test_state_keys_and_written_buffer(spec):
    p = fo.Parameter(np.ones((3, 4)))
    opt = getattr(fo.optim, spec.name)([p], **spec.configs[0])
    p.grad = np.ones((3, 4))
    opt.step()
    assert tuple(sorted(opt.state[p])) == spec.state
    if spec.written is not None:
        assert spec.written[0] in opt.state[p]


def test_torch_counterparts_exist(torch):
    for spec in registry.OPTIMIZERS:
        if spec.torch is not None:
            assert hasattr(torch.optim, spec.torch), spec.name
            assert spec.oracle == "torch"
        else:
            assert spec.oracle != "torch" and not spec.parity


def test_benchmark_cases_come_from_the_registry():
    from fastopt.bench.report import ARRAYS_MOVED, OPTIMIZERS

    for key, (name, kwargs, _) in OPTIMIZERS.items():
        spec = registry.by_name(name)
        assert kwargs == spec.bench and ARRAYS_MOVED[name] == spec.moved
    assert {n for n, *_ in OPTIMIZERS.values()} == {s.name for s in registry.OPTIMIZERS if s.bench}


@pytest.mark.parametrize("spec", registry.OPTIMIZERS, ids=lambda s: s.name)
def test_docstring_has_the_maths_the_arguments_and_an_example(spec):
    doc = getattr(fo.optim, spec.name).__doc__
    assert ".. math::" in doc
    assert "\nArguments:\n" in doc and ">>> " in doc


@pytest.mark.parametrize("name", fo.optim.functional.__all__)
def test_every_functional_form_has_an_example(name):
    doc = getattr(fo.optim.functional, name).__doc__
    assert ">>> " in doc and "F." in doc
