"""Parameter lists of realistic steps, shared by ``fastopt bench --full`` and the asv suite."""

from __future__ import annotations

import numpy as np

__all__ = ["resnet50_shapes", "small_tensor_shapes", "one_element_shapes", "WORKLOADS", "make_tensors"]


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The 161 parameter shapes of torchvision's ResNet-50 in ``named_parameters()`` order
    (25,557,032 elements): the stem, 16 bottleneck blocks (4 with a downsampling branch) and
    the classifier."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if b == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    shapes += [(1000, 2048), (1000,)]
    return shapes


def small_tensor_shapes(count: int = 200, low: float = 1e3, high: float = 1e5, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` vectors with sizes log-uniform in [low, high] (seeded): a model of many small
    layers."""
    rng = np.random.default_rng(seed)
    return [(int(v),) for v in np.exp(rng.uniform(np.log(low), np.log(high), count))]


def one_element_shapes(count: int = 161) -> list[tuple[int, ...]]:
    """``count`` one-element tensors: a step that is nothing but per-tensor overhead."""
    return [(1,)] * count


#: name -> shapes.
WORKLOADS = {
    "resnet50": resnet50_shapes,
    "200 small": small_tensor_shapes,
    "161 x 1 element": one_element_shapes,
}


def make_tensors(shapes: list[tuple[int, ...]], dtype=np.float32, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(param, grad) pairs of standard normal values for each shape."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s).astype(dtype), rng.standard_normal(s).astype(dtype)) for s in shapes]
