//! Adafactor's step (see `fastopt_core::optim::adafactor`): its state is not shaped like its
//! parameters (one variance per row and per column of a matrix), so it has its own entry
//! point beside the engine's `step`. Checks every array, then runs the whole rule with the
//! GIL released.

use crate::arrays::{run_core, CheckCache, Group, Raw};
use fastopt_core::optim::adafactor::{self, AdafactorConfig, AdafactorTensor, Factored, Variance};
use fastopt_core::{simd, Float};
use numpy::Element;
use pyo3::prelude::*;

/// One Adafactor step over a parameter group, in place (torch.optim.adafactor's functional
/// arguments). For a parameter of 2 or more dimensions of shape ``(..., rows, cols)``,
/// ``row_vars[i]`` has shape ``(..., rows, 1)`` and ``col_vars[i]`` ``(..., 1, cols)``
/// (``variances[i]`` is ignored and may be None); otherwise ``variances[i]`` has the
/// parameter's shape (the other two are ignored). ``state_steps``: one-element float32
/// counters. ``eps1`` None: the dtype's machine epsilon. With ``check_only`` every argument is
/// checked and nothing is written. ``cache``: the group's ``CheckCache``, which counts the
/// completed call (its arrays are checked every time).
#[pyfunction]
#[pyo3(signature = (params, grads, row_vars, col_vars, variances, state_steps, *, lr, beta2_decay, eps1, eps2, d, weight_decay, maximize, grad_scale=1.0, check_only=false, cache=None))]
#[allow(clippy::too_many_arguments)]
pub fn adafactor_step<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    row_vars: &Bound<'py, PyAny>,
    col_vars: &Bound<'py, PyAny>,
    variances: &Bound<'py, PyAny>,
    state_steps: &Bound<'py, PyAny>,
    lr: f64,
    beta2_decay: f64,
    eps1: Option<f64>,
    eps2: f64,
    d: f64,
    weight_decay: f64,
    maximize: bool,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
) -> PyResult<()> {
    let cfg = AdafactorConfig { lr, beta2_decay, eps1, eps2, d, weight_decay, maximize };
    let (mut g, p) = Group::new(params)?;
    let gr = g.like_params(grads, "grads", false)?;
    let (rows, cols, fulls) = (g.entries(row_vars, "row_vars")?, g.entries(col_vars, "col_vars")?, g.entries(variances, "variances")?);
    let mut vars = Vec::with_capacity(g.len());
    for (i, ((r, c), v)) in rows.into_iter().zip(cols).zip(fulls).enumerate() {
        let shape = g.param_shape(i).to_vec();
        vars.push(match shape.len() {
            0 | 1 => State::Full(g.item(v, "variances", i, &shape, true)?),
            k => {
                let (lead, last) = shape.split_at(k - 2);
                let f = Factored { batch: lead.iter().product(), rows: last[0], cols: last[1] };
                let row = [lead, &[f.rows, 1]].concat();
                let col = [lead, &[1, f.cols]].concat();
                State::Factored(f, g.item(r, "row_vars", i, &row, true)?, g.item(c, "col_vars", i, &col, true)?)
            }
        });
    }
    let steps = g.steps(state_steps, "state_steps")?;
    g.finish()?;
    if check_only {
        return Ok(());
    }
    CheckCache::count(cache, by_dtype!(g.dtype, run(py, &cfg, &p, &gr, &vars, &steps, grad_scale)))
}

/// A parameter's checked state arrays.
enum State {
    Factored(Factored, Raw, Raw),
    Full(Raw),
}

fn run<T: Float + Element + fastopt_core::optim::Storage<Arith = T>>(
    py: Python<'_>,
    cfg: &AdafactorConfig,
    p: &[Raw],
    gr: &[Raw],
    vars: &[State],
    steps: &[Raw],
    grad_scale: f64,
) -> PyResult<()> {
    // SAFETY: `Group` checked that each array has dtype `T` (steps: float32, one element), is
    // C-contiguous and aligned, that written arrays are writeable and that no written array
    // overlaps any other array of this call; the caller's `Group` keeps every array alive
    // until this function returns.
    let tensors: Vec<AdafactorTensor<'_, T>> = (0..p.len())
        .map(|i| unsafe {
            let var = match vars[i] {
                State::Full(v) => Variance::Full(v.slice_mut()),
                State::Factored(f, r, c) => Variance::Factored { f, row_var: r.slice_mut(), col_var: c.slice_mut() },
            };
            AdafactorTensor { param: p[i].slice_mut(), grad: gr[i].slice(), var, step: &mut steps[i].slice_mut::<f32>()[0] }
        })
        .collect();
    let cfg = *cfg;
    run_core(py, move || adafactor::step(&cfg, tensors, grad_scale, simd::level()))
}
