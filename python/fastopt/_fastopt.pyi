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
) -> None: ...
def elementwise_layout(name: str) -> tuple[list[str], list[str]]: ...
def check_group(params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None: ...
