//! Adafactor's factored passes (see `fastopt_core::optim::adafactor`): argument checks and
//! GIL release. The small row/column vectors are updated in Python.

use crate::arrays::{Dtype, Group, Raw, run_core};
use fastopt_core::optim::adafactor::{self, Factored, Stats};
use fastopt_core::Float;
use numpy::Element;
use pyo3::prelude::*;

/// Row and column sums of `grad**2` (float64, into `row_sq` / `col_sq`) of `grad` seen as
/// `(batch, rows, cols)`; returns `sum(param**2)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn adafactor_sums<'py>(
    py: Python<'py>,
    grad: &Bound<'py, PyAny>,
    param: &Bound<'py, PyAny>,
    batch: usize,
    rows: usize,
    cols: usize,
    row_sq: &Bound<'py, PyAny>,
    col_sq: &Bound<'py, PyAny>,
) -> PyResult<f64> {
    let (mut g, rg) = Group::single(grad, "grad", false)?;
    let rp = g.array(param, "param", false, None, None)?;
    let rr = g.array(row_sq, "row_sq", true, None, Some(Dtype::F64))?;
    let rc = g.array(col_sq, "col_sq", true, None, Some(Dtype::F64))?;
    g.finish()?;
    let f = Factored { batch, rows, cols };
    fn run<T: Float + Element>(py: Python<'_>, g: Raw, p: Raw, r: Raw, c: Raw, f: Factored) -> PyResult<f64> {
        // SAFETY: `Group` checked dtypes, layouts and that the written outputs overlap nothing;
        // the caller's `Group` keeps the arrays alive.
        let (g, p, r, c) = unsafe { (g.slice::<T>(), p.slice::<T>(), r.slice_mut::<f64>(), c.slice_mut::<f64>()) };
        run_core(py, move || adafactor::factored_sums(g, p, f, r, c))
    }
    by_dtype!(g.dtype, run(py, rg, rp, rr, rc, f))
}

/// `sum(u**2)` of the update `u = rsqrt(clamp(r * c / row_mean, min=eps1_sq)) * grad`, or, with
/// `param` given, `param = param * decay + scale * u` in place (returning 0).
#[pyfunction]
#[pyo3(signature = (grad, batch, rows, cols, row_var, col_var, row_mean, eps1_sq, param=None, decay=1.0, scale=0.0))]
#[allow(clippy::too_many_arguments)]
pub fn adafactor_update<'py>(
    py: Python<'py>,
    grad: &Bound<'py, PyAny>,
    batch: usize,
    rows: usize,
    cols: usize,
    row_var: &Bound<'py, PyAny>,
    col_var: &Bound<'py, PyAny>,
    row_mean: &Bound<'py, PyAny>,
    eps1_sq: f64,
    param: Option<&Bound<'py, PyAny>>,
    decay: f64,
    scale: f64,
) -> PyResult<f64> {
    let (mut g, rg) = Group::single(grad, "grad", false)?;
    let rr = g.array(row_var, "row_var", false, None, None)?;
    let rc = g.array(col_var, "col_var", false, None, None)?;
    let rm = g.array(row_mean, "row_mean", false, None, None)?;
    let rp = match param {
        Some(p) => Some(g.array(p, "param", true, None, None)?),
        None => None,
    };
    g.finish()?;
    let f = Factored { batch, rows, cols };
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float + Element>(py: Python<'_>, g: Raw, r: Raw, c: Raw, m: Raw, p: Option<Raw>, f: Factored, e: f64, decay: f64, scale: f64) -> PyResult<f64> {
        // SAFETY: as in `adafactor_sums`; `param` is the only array written.
        let (g, r, c, m) = unsafe { (g.slice::<T>(), r.slice::<T>(), c.slice::<T>(), m.slice::<T>()) };
        let s = Stats { row_var: r, col_var: c, row_mean: m, eps1_sq: T::from_f64(e) };
        match p {
            None => run_core(py, move || adafactor::factored_update_sq(g, f, s)),
            Some(p) => {
                // SAFETY: as above; `param` was checked writeable and non-overlapping.
                let p = unsafe { p.slice_mut::<T>() };
                run_core(py, move || adafactor::factored_apply(p, g, f, s, T::from_f64(decay), T::from_f64(scale)))?;
                Ok(0.0)
            }
        }
    }
    by_dtype!(g.dtype, run(py, rg, rr, rc, rm, rp, f, eps1_sq, decay, scale))
}
