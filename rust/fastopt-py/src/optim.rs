//! Optimizer steps: check every array of a parameter group, then run the core kernel once
//! over all of them with the GIL released.

use crate::arrays::{CheckCache, Group, Raw, confirm, items, remember, run_core};
use fastopt_core::optim::elementwise::{self, ElemTensor};
use std::collections::HashMap;
use fastopt_core::optim::{
    adagrad_step as core_adagrad, adam_step as core_adam, lamb_step as core_lamb, rmsprop_step as core_rmsprop,
    sgd_step as core_sgd, AdagradConfig, AdagradTensor, AdamConfig, AdamTensor, LambConfig, LambTensor, RmspropConfig,
    RmspropTensor, SgdConfig, SgdTensor,
};
use fastopt_core::Float;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The lists of a call that stay the same between steps (params, then written state), which
/// its check cache remembers: `required`, then each optional list whose flag asks for it.
/// Empty when an asked-for list is missing (an error the full checks report).
fn stable_lists<'a, 'py>(required: &[&'a Bound<'py, PyAny>], optional: &[(Option<&'a Bound<'py, PyAny>>, bool)]) -> Vec<&'a Bound<'py, PyAny>> {
    let mut out = required.to_vec();
    for &(list, used) in optional {
        match (list, used) {
            (Some(l), true) => out.push(l),
            (None, true) => return vec![],
            _ => {}
        }
    }
    out
}

/// One Adam/AdamW step over a parameter group, in place (torch's `_single_tensor_adam`).
///
/// `state_steps` are one-element float32 counters, incremented here. With `check_only`
/// every argument is checked and nothing is written. `grad_scale` multiplies every gradient
/// element as it is read (clipping folded into the step). Hyperparameters are positional:
/// keyword parsing would cost more than checking a tensor.
#[pyfunction]
#[pyo3(signature = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay=false, grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn adam_step<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    exp_avgs: &Bound<'py, PyAny>,
    exp_avg_sqs: &Bound<'py, PyAny>,
    max_exp_avg_sqs: Option<&Bound<'py, PyAny>>,
    state_steps: &Bound<'py, PyAny>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let cfg = AdamConfig { lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_scale };
    let stable = stable_lists(&[params, exp_avgs, exp_avg_sqs, state_steps], &[(max_exp_avg_sqs, amsgrad)]);
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if check_only {
            return Ok(());
        }
        let s = &c.stable;
        let x = if amsgrad { Some(&s[4][..]) } else { None };
        return CheckCache::count(cache, by_dtype!(c.dtype, run_adam(py, &s[0], &c.grads, &s[1], &s[2], x, &s[3], &cfg)));
    }
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let m = g.like_params(exp_avgs, "exp_avgs", true)?;
    let v = g.like_params(exp_avg_sqs, "exp_avg_sqs", true)?;
    let x = g.optional_like_params(max_exp_avg_sqs, "max_exp_avg_sqs", amsgrad, "amsgrad=True")?;
    let st = g.steps(state_steps, "state_steps")?;
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run_adam(py, &p, &gr, &m, &v, x.as_deref(), &st, &cfg)))
}

#[allow(clippy::too_many_arguments)]
fn run_adam<T: Float + numpy::Element>(
    py: Python<'_>,
    p: &[Raw],
    gr: &[Raw],
    m: &[Raw],
    v: &[Raw],
    x: Option<&[Raw]>,
    st: &[Raw],
    cfg: &AdamConfig,
) -> PyResult<()> {
    let tensors: Vec<AdamTensor<'_, T>> = (0..p.len())
        .map(|i| {
            // SAFETY: `Group` checked that each array has dtype `T` (steps: float32, one
            // element), is C-contiguous and aligned, that written arrays are writeable and that
            // no written array overlaps any other array of this call; the caller's `Group`
            // keeps every array alive until this function returns.
            unsafe {
                AdamTensor {
                    param: p[i].slice_mut(),
                    grad: gr[i].slice(),
                    exp_avg: m[i].slice_mut(),
                    exp_avg_sq: v[i].slice_mut(),
                    max_exp_avg_sq: x.map(|x| x[i].slice_mut()),
                    step: &mut st[i].slice_mut::<f32>()[0],
                }
            }
        })
        .collect();
    run_core(py, move || core_adam(tensors, cfg))
}

/// One SGD step over a parameter group, in place (torch's `_single_tensor_sgd`).
///
/// With `momentum != 0`, `momentum_buffer_list` holds one buffer per parameter and
/// `fresh_buffers[i]` says that buffer was just created: this step sets it to the gradient,
/// as torch's first step does.
#[pyfunction]
#[pyo3(signature = (params, grads, momentum_buffer_list, fresh_buffers,
    lr, momentum, dampening, weight_decay, nesterov, maximize, grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn sgd_step<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    momentum_buffer_list: Option<&Bound<'py, PyAny>>,
    fresh_buffers: Vec<bool>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let cfg = SgdConfig { lr, momentum, dampening, weight_decay, nesterov, maximize, grad_scale };
    let with_momentum = momentum != 0.0;
    let stable = stable_lists(&[params], &[(momentum_buffer_list, with_momentum)]);
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if !with_momentum || fresh_buffers.len() == c.grads.len() {
            if check_only {
                return Ok(());
            }
            let s = &c.stable;
            return CheckCache::count(cache, by_dtype!(c.dtype, run_sgd(py, &s[0], &c.grads, s.get(1).map(|b| &b[..]), &fresh_buffers, &cfg)));
        }
    }
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let b = g.optional_like_params(momentum_buffer_list, "momentum_buffer_list", with_momentum, "momentum != 0")?;
    if with_momentum && fresh_buffers.len() != g.len() {
        return Err(PyValueError::new_err(format!(
            "fresh_buffers has {} flags but params has {}",
            fresh_buffers.len(),
            g.len()
        )));
    }
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run_sgd(py, &p, &gr, b.as_deref(), &fresh_buffers, &cfg)))
}

fn run_sgd<T: Float + numpy::Element>(
    py: Python<'_>,
    p: &[Raw],
    gr: &[Raw],
    b: Option<&[Raw]>,
    fresh: &[bool],
    cfg: &SgdConfig,
) -> PyResult<()> {
    let tensors: Vec<SgdTensor<'_, T>> = (0..p.len())
        .map(|i| {
            // SAFETY: as in `run_adam`: dtype, layout, writeability and non-overlap were
            // checked by `Group`, which keeps the arrays alive for this call.
            unsafe {
                SgdTensor {
                    param: p[i].slice_mut(),
                    grad: gr[i].slice(),
                    momentum_buffer: b.map(|b| b[i].slice_mut()),
                    fresh_buffer: fresh.get(i).copied().unwrap_or(false),
                }
            }
        })
        .collect();
    run_core(py, move || core_sgd(tensors, cfg))
}

/// One Adagrad step over a parameter group, in place (torch's `_single_tensor_adagrad`).
#[pyfunction]
#[pyo3(signature = (params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
    grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn adagrad_step<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    state_sums: &Bound<'py, PyAny>,
    state_steps: &Bound<'py, PyAny>,
    lr: f64,
    lr_decay: f64,
    weight_decay: f64,
    eps: f64,
    maximize: bool,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let cfg = AdagradConfig { lr, lr_decay, weight_decay, eps, maximize, grad_scale };
    let stable = [params, state_sums, state_steps];
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if check_only {
            return Ok(());
        }
        let s = &c.stable;
        return CheckCache::count(cache, by_dtype!(c.dtype, run_adagrad(py, &s[0], &c.grads, &s[1], &s[2], &cfg)));
    }
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let s = g.like_params(state_sums, "state_sums", true)?;
    let st = g.steps(state_steps, "state_steps")?;
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run_adagrad(py, &p, &gr, &s, &st, &cfg)))
}

fn run_adagrad<T: Float + numpy::Element>(py: Python<'_>, p: &[Raw], gr: &[Raw], s: &[Raw], st: &[Raw], cfg: &AdagradConfig) -> PyResult<()> {
    let tensors: Vec<AdagradTensor<'_, T>> = (0..p.len())
        .map(|i| {
            // SAFETY: as in `run_adam`: dtype, layout, writeability and non-overlap were
            // checked by `Group`, which keeps the arrays alive for this call.
            unsafe {
                AdagradTensor { param: p[i].slice_mut(), grad: gr[i].slice(), sum: s[i].slice_mut(), step: &mut st[i].slice_mut::<f32>()[0] }
            }
        })
        .collect();
    run_core(py, move || core_adagrad(tensors, cfg))
}

/// One RMSprop step over a parameter group, in place (torch's `_single_tensor_rmsprop`).
/// `momentum_buffer_list` is needed when `momentum > 0`, `grad_avgs` when `centered`.
#[pyfunction]
#[pyo3(signature = (params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps,
    lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn rmsprop_step<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    square_avgs: &Bound<'py, PyAny>,
    grad_avgs: Option<&Bound<'py, PyAny>>,
    momentum_buffer_list: Option<&Bound<'py, PyAny>>,
    state_steps: &Bound<'py, PyAny>,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let cfg = RmspropConfig { lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale };
    let (with_avg, with_momentum) = (centered, momentum > 0.0);
    let stable = stable_lists(&[params, square_avgs, state_steps], &[(grad_avgs, with_avg), (momentum_buffer_list, with_momentum)]);
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if check_only {
            return Ok(());
        }
        let s = &c.stable;
        let mut extra = s[3..].iter();
        let ga = if with_avg { extra.next().map(|a| &a[..]) } else { None };
        let b = if with_momentum { extra.next().map(|a| &a[..]) } else { None };
        return CheckCache::count(cache, by_dtype!(c.dtype, run_rmsprop(py, &s[0], &c.grads, &s[1], ga, b, &s[2], &cfg)));
    }
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let sq = g.like_params(square_avgs, "square_avgs", true)?;
    let ga = g.optional_like_params(grad_avgs, "grad_avgs", centered, "centered=True")?;
    let b = g.optional_like_params(momentum_buffer_list, "momentum_buffer_list", momentum > 0.0, "momentum > 0")?;
    let st = g.steps(state_steps, "state_steps")?;
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run_rmsprop(py, &p, &gr, &sq, ga.as_deref(), b.as_deref(), &st, &cfg)))
}

#[allow(clippy::too_many_arguments)]
fn run_rmsprop<T: Float + numpy::Element>(
    py: Python<'_>,
    p: &[Raw],
    gr: &[Raw],
    sq: &[Raw],
    ga: Option<&[Raw]>,
    b: Option<&[Raw]>,
    st: &[Raw],
    cfg: &RmspropConfig,
) -> PyResult<()> {
    let tensors: Vec<RmspropTensor<'_, T>> = (0..p.len())
        .map(|i| {
            // SAFETY: as in `run_adam`: dtype, layout, writeability and non-overlap were
            // checked by `Group`, which keeps the arrays alive for this call.
            unsafe {
                RmspropTensor {
                    param: p[i].slice_mut(),
                    grad: gr[i].slice(),
                    square_avg: sq[i].slice_mut(),
                    momentum_buffer: b.map(|b| b[i].slice_mut()),
                    grad_avg: ga.map(|a| a[i].slice_mut()),
                    step: &mut st[i].slice_mut::<f32>()[0],
                }
            }
        })
        .collect();
    run_core(py, move || core_rmsprop(tensors, cfg))
}

/// One step of an element-wise optimizer (`fastopt_core::optim::elementwise`) over a group.
///
/// `states` holds one list per state buffer and `counters` one list per float32 counter, in
/// the order `elementwise_layout(name)` gives; `hyper` maps hyperparameter names to numbers
/// (flags as 0/1).
#[pyfunction]
#[pyo3(signature = (name, params, grads, states, counters, hyper, grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn elementwise_step<'py>(
    py: Python<'py>,
    name: &str,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    states: &Bound<'py, PyAny>,
    counters: &Bound<'py, PyAny>,
    hyper: HashMap<String, f64>,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let (state_names, counter_names) =
        elementwise::layout(name).ok_or_else(|| PyValueError::new_err(format!("unknown element-wise optimizer {name:?}")))?;
    let state_lists = items(states, "states")?;
    let counter_lists = items(counters, "counters")?;
    if state_lists.len() != state_names.len() || counter_lists.len() != counter_names.len() {
        return Err(PyValueError::new_err(format!(
            "{name} takes state lists {state_names:?} and counter lists {counter_names:?}, got {} and {}",
            state_lists.len(),
            counter_lists.len()
        )));
    }
    let ns = state_lists.len();
    let stable: Vec<&Bound<'py, PyAny>> = std::iter::once(params).chain(&state_lists).chain(&counter_lists).collect();
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if check_only {
            return Ok(());
        }
        let (s, k) = c.stable[1..].split_at(ns);
        return CheckCache::count(cache, by_dtype!(c.dtype, run_elementwise(py, name, &c.stable[0], &c.grads, s, k, &hyper, grad_scale)));
    }
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let mut s = Vec::with_capacity(state_names.len());
    for (list, &n) in state_lists.iter().zip(state_names) {
        s.push(g.like_params(list, n, true)?);
    }
    let mut c = Vec::with_capacity(counter_names.len());
    for (list, &n) in counter_lists.iter().zip(counter_names) {
        c.push(g.steps(list, n)?);
    }
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run_elementwise(py, name, &p, &gr, &s, &c, &hyper, grad_scale)))
}

/// The state buffers and counters an element-wise optimizer takes, in order.
#[pyfunction]
pub fn elementwise_layout(name: &str) -> PyResult<(Vec<&'static str>, Vec<&'static str>)> {
    elementwise::layout(name)
        .map(|(s, c)| (s.to_vec(), c.to_vec()))
        .ok_or_else(|| PyValueError::new_err(format!("unknown element-wise optimizer {name:?}")))
}

#[allow(clippy::too_many_arguments)]
fn run_elementwise<T: Float + numpy::Element>(
    py: Python<'_>,
    name: &str,
    p: &[Raw],
    gr: &[Raw],
    s: &[Vec<Raw>],
    c: &[Vec<Raw>],
    hyper: &HashMap<String, f64>,
    grad_scale: f64,
) -> PyResult<()> {
    let n = p.len();
    // Every tensor's state and counter references, tensor by tensor, in two allocations.
    // SAFETY: as in `run_adam`: dtype (counters: float32, one element), layout, writeability
    // and non-overlap were checked by `Group`, which keeps the arrays alive for this call.
    let mut states: Vec<&mut [T]> = (0..n).flat_map(|i| s.iter().map(move |list| unsafe { list[i].slice_mut() })).collect();
    let mut counters: Vec<&mut f32> =
        (0..n).flat_map(|i| c.iter().map(move |list| unsafe { &mut list[i].slice_mut::<f32>()[0] })).collect();
    let (mut s_rest, mut c_rest) = (&mut states[..], &mut counters[..]);
    let mut tensors: Vec<ElemTensor<'_, T>> = Vec::with_capacity(n);
    for i in 0..n {
        let (ts, sr) = std::mem::take(&mut s_rest).split_at_mut(s.len());
        let (tc, cr) = std::mem::take(&mut c_rest).split_at_mut(c.len());
        (s_rest, c_rest) = (sr, cr);
        // SAFETY: as above.
        let (param, grad) = unsafe { (p[i].slice_mut(), gr[i].slice()) };
        tensors.push(ElemTensor { param, grad, states: ts, counters: tc });
    }
    run_core(py, move || elementwise::step(name, tensors, hyper, grad_scale))
}

/// One LAMB step over a group, in place (two passes: moments and norms, then the update).
#[pyfunction]
#[pyo3(signature = (params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, beta1, beta2, eps, weight_decay,
    bias_correction, maximize, grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn lamb_step<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    exp_avgs: &Bound<'py, PyAny>,
    exp_avg_sqs: &Bound<'py, PyAny>,
    state_steps: &Bound<'py, PyAny>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    bias_correction: bool,
    maximize: bool,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let cfg = LambConfig { lr, beta1, beta2, eps, weight_decay, bias_correction, maximize, grad_scale };
    let stable = [params, exp_avgs, exp_avg_sqs, state_steps];
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if check_only {
            return Ok(());
        }
        let s = &c.stable;
        return CheckCache::count(cache, by_dtype!(c.dtype, run_lamb(py, &s[0], &c.grads, &s[1], &s[2], &s[3], &cfg)));
    }
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let m = g.like_params(exp_avgs, "exp_avgs", true)?;
    let v = g.like_params(exp_avg_sqs, "exp_avg_sqs", true)?;
    let st = g.steps(state_steps, "state_steps")?;
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run_lamb(py, &p, &gr, &m, &v, &st, &cfg)))
}

fn run_lamb<T: Float + numpy::Element>(py: Python<'_>, p: &[Raw], gr: &[Raw], m: &[Raw], v: &[Raw], st: &[Raw], cfg: &LambConfig) -> PyResult<()> {
    let tensors: Vec<LambTensor<'_, T>> = (0..p.len())
        .map(|i| {
            // SAFETY: as in `run_adam`: dtype, layout, writeability and non-overlap were
            // checked by `Group`, which keeps the arrays alive for this call.
            unsafe {
                LambTensor {
                    param: p[i].slice_mut(),
                    grad: gr[i].slice(),
                    exp_avg: m[i].slice_mut(),
                    exp_avg_sq: v[i].slice_mut(),
                    step: &mut st[i].slice_mut::<f32>()[0],
                }
            }
        })
        .collect();
    run_core(py, move || core_lamb(tensors, cfg))
}

/// Checks a group's params and grads as the kernels do (dtype, layout, writeability, shapes,
/// overlap) without changing anything: for optimizers whose update runs as array
/// operations outside a fused kernel.
#[pyfunction]
pub fn check_group<'py>(params: &Bound<'py, PyAny>, grads: &Bound<'py, PyAny>) -> PyResult<()> {
    let (mut g, _) = Group::new(params)?;
    g.like_params(grads, "grads", false)?;
    g.finish()
}
