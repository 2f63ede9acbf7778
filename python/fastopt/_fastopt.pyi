"""Typed surface of the compiled module. Kernels update their arrays in place."""

from typing import Sequence

import numpy as np

__version__: str

def simd_level() -> str: ...
def detected_simd_level() -> str: ...
def available_simd_levels() -> list[str]: ...
def set_simd_level(level: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def default_num_threads() -> int: ...
def max_num_threads() -> int: ...
def environment_problems() -> list[str]: ...
def bandwidth_probe(elements: int, repeats: int) -> tuple[float, float]: ...
def adam_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    max_exp_avg_sqs: Sequence[np.ndarray] | None,
    state_steps: Sequence[np.ndarray],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = False,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: CheckCache | None = None,
) -> None: ...
def sgd_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    momentum_buffer_list: Sequence[np.ndarray] | None,
    fresh_buffers: Sequence[bool],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: CheckCache | None = None,
) -> None: ...
def adagrad_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    state_sums: Sequence[np.ndarray],
    state_steps: Sequence[np.ndarray],
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: CheckCache | None = None,
) -> None: ...
def rmsprop_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    square_avgs: Sequence[np.ndarray],
    grad_avgs: Sequence[np.ndarray] | None,
    momentum_buffer_list: Sequence[np.ndarray] | None,
    state_steps: Sequence[np.ndarray],
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: CheckCache | None = None,
) -> None: ...
def total_norm(grads: Sequence[np.ndarray], norm_type: float) -> float: ...
def scale_(arrays: Sequence[np.ndarray], factor: float) -> None: ...
def clamp_(arrays: Sequence[np.ndarray], clip_value: float) -> None: ...
def lamb_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    state_steps: Sequence[np.ndarray],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    maximize: bool,
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: CheckCache | None = None,
) -> None: ...
def elementwise_step(
    name: str,
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    states: Sequence[Sequence[np.ndarray]],
    counters: Sequence[Sequence[np.ndarray]],
    hyper: dict[str, float],
    grad_scale: float = 1.0,
    check_only: bool = False,
    cache: CheckCache | None = None,
) -> None: ...
def elementwise_layout(name: str) -> tuple[list[str], list[str]]: ...
def check_group(params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None: ...
def dot(a: np.ndarray, b: np.ndarray) -> float: ...
def axpy_(y: np.ndarray, alpha: float, x: np.ndarray) -> None: ...
def axpy_dot(y: np.ndarray, alpha: float, x: np.ndarray, z: np.ndarray) -> float: ...

# fastopt.nn.functional's kernels (shapes and reductions are decided in Python).
def act_forward(name: str, x: np.ndarray, out: np.ndarray, a: float, b: float, c: float) -> None: ...
def act_backward(name: str, grad_output: np.ndarray, saved: np.ndarray, out: np.ndarray, a: float, b: float, c: float) -> None: ...
def softmax(x: np.ndarray, out: np.ndarray, outer: int, n: int, inner: int, log: bool) -> None: ...
def softmax_backward(grad_output: np.ndarray, output: np.ndarray, out: np.ndarray, outer: int, n: int, inner: int, log: bool) -> None: ...
def cross_entropy(input: np.ndarray, target: np.ndarray, classes: int, label_smoothing: float, ignore_index: int, losses: np.ndarray) -> None: ...
def cross_entropy_backward(input: np.ndarray, target: np.ndarray, classes: int, label_smoothing: float, ignore_index: int, scale: np.ndarray, out: np.ndarray) -> None: ...
def bn_stats(x: np.ndarray, n: int, c: int, l: int, mean: np.ndarray, var: np.ndarray) -> None: ...
def bn_backward_sums(grad_output: np.ndarray, x: np.ndarray, mean: np.ndarray, n: int, c: int, l: int, sum_g: np.ndarray, sum_gx: np.ndarray) -> None: ...
def bn_normalize(x: np.ndarray, out: np.ndarray, n: int, c: int, l: int, mean: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> None: ...
def bn_backward_input(grad_output: np.ndarray, x: np.ndarray, out: np.ndarray, n: int, c: int, l: int, mean: np.ndarray, scale: np.ndarray, shift: np.ndarray, k: np.ndarray | None) -> None: ...
def bn_train_forward(x: np.ndarray, out: np.ndarray, n: int, c: int, l: int, weight: np.ndarray | None, bias: np.ndarray | None, eps: float, mean: np.ndarray, var: np.ndarray) -> None: ...
def bn_train_backward(grad_output: np.ndarray, x: np.ndarray, out: np.ndarray, n: int, c: int, l: int, mean: np.ndarray, invstd: np.ndarray, weight: np.ndarray | None, sum_g: np.ndarray, sum_gx: np.ndarray) -> None: ...
def adafactor_sums(grad: np.ndarray, param: np.ndarray, batch: int, rows: int, cols: int, row_sq: np.ndarray, col_sq: np.ndarray) -> float: ...
def adafactor_update(grad: np.ndarray, batch: int, rows: int, cols: int, row_var: np.ndarray, col_var: np.ndarray, row_mean: np.ndarray, eps1_sq: float, param: np.ndarray | None = None, decay: float = 1.0, scale: float = 0.0) -> float: ...

class CheckCache:
    """What a kernel call checked about a group's parameters and state, for the next call."""

    def __init__(self) -> None: ...
    def remembers(self) -> bool: ...
    def clear(self) -> None: ...
