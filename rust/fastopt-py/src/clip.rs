//! Gradient norms and clipping passes.

use crate::arrays::{core_err, Dtype, Group, Raw};
use fastopt_core::reduce::{self, Norm};
use fastopt_core::Float;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The `norm_type` norm of all elements of all `grads` (one float32/float64 dtype per call),
/// accumulated in double precision; the same whatever the thread count.
#[pyfunction]
pub fn total_norm<'py>(py: Python<'py>, grads: &Bound<'py, PyAny>, norm_type: f64) -> PyResult<f64> {
    let norm = Norm::from_order(norm_type).map_err(core_err)?;
    let (mut g, raws) = Group::first_list(grads, "grads", false)?;
    g.finish()?;
    Ok(match g.dtype {
        Dtype::F32 => run_norm::<f32>(py, &raws, norm),
        Dtype::F64 => run_norm::<f64>(py, &raws, norm),
    })
}

fn run_norm<T: Float + numpy::Element>(py: Python<'_>, raws: &[Raw], norm: Norm) -> f64 {
    // SAFETY: `Group` checked dtype `T`, contiguity and alignment; the arrays are only read and
    // the caller's `Group` keeps them alive for this call.
    let slices: Vec<&[T]> = raws.iter().map(|r| unsafe { r.slice::<T>() }).collect();
    py.detach(move || reduce::total_norm(&slices, norm))
}

/// Multiplies every element of every array by `factor` (rounded to the arrays' dtype), in place.
#[pyfunction]
pub fn scale_<'py>(py: Python<'py>, arrays: &Bound<'py, PyAny>, factor: f64) -> PyResult<()> {
    let (mut g, raws) = Group::first_list(arrays, "grads", true)?;
    g.finish()?;
    match g.dtype {
        Dtype::F32 => run_scale::<f32>(py, &raws, f32::from_f64(factor), None),
        Dtype::F64 => run_scale::<f64>(py, &raws, factor, None),
    }
    Ok(())
}

/// Clamps every element of every array into `[-clip_value, clip_value]`, in place.
#[pyfunction]
pub fn clamp_<'py>(py: Python<'py>, arrays: &Bound<'py, PyAny>, clip_value: f64) -> PyResult<()> {
    if clip_value.is_nan() {
        return Err(PyValueError::new_err("clip_value must not be NaN"));
    }
    let (mut g, raws) = Group::first_list(arrays, "grads", true)?;
    g.finish()?;
    match g.dtype {
        Dtype::F32 => {
            let c = f32::from_f64(clip_value);
            run_scale::<f32>(py, &raws, 1.0, Some((-c, c)))
        }
        Dtype::F64 => run_scale::<f64>(py, &raws, 1.0, Some((-clip_value, clip_value))),
    }
    Ok(())
}

fn run_scale<T: Float + numpy::Element>(py: Python<'_>, raws: &[Raw], factor: T, clamp: Option<(T, T)>) {
    // SAFETY: `Group` checked dtype `T`, layout, writeability and that no two arrays overlap;
    // the caller's `Group` keeps them alive for this call.
    let slices: Vec<&mut [T]> = raws.iter().map(|r| unsafe { r.slice_mut::<T>() }).collect();
    py.detach(move || match clamp {
        None => reduce::scale(slices, factor),
        Some((lo, hi)) => reduce::clamp(slices, lo, hi),
    })
}
