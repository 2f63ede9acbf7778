//! Gradient norms and clipping passes.

use crate::arrays::{core_err, detach, run_core, shape_str, unsupported, Dtype, Group, Raw};
use fastopt_core::half::{Bf16, F16};
use fastopt_core::reduce::{self, ClipValue, Norm};
use fastopt_core::Float;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use numpy::PyUntypedArray;
use numpy::prelude::*;

/// The `norm_type` norm of all elements of all `grads` (one dtype per call: float32,
/// float64, or float16/bfloat16 read as their exact float32 values), accumulated in double
/// precision; the same whatever the thread count.
#[pyfunction]
pub fn total_norm<'py>(py: Python<'py>, grads: &Bound<'py, PyAny>, norm_type: f64) -> PyResult<f64> {
    let norm = Norm::from_order(norm_type).map_err(core_err)?;
    let (mut g, raws) = Group::first_list(grads, "grads", false)?;
    g.finish()?;
    match g.dtype {
        Dtype::F32 => run_norm::<f32>(py, &raws, norm),
        Dtype::F64 => run_norm::<f64>(py, &raws, norm),
        Dtype::F16 => run_norm::<F16>(py, &raws, norm),
        Dtype::BF16 => run_norm::<Bf16>(py, &raws, norm),
        d @ Dtype::U8 => Err(unsupported(d)),
    }
}

fn run_norm<T: ClipValue>(py: Python<'_>, raws: &[Raw], norm: Norm) -> PyResult<f64> {
    // SAFETY: `Group` checked dtype `T`, contiguity and alignment; the arrays are only read and
    // the caller's `Group` keeps them alive for this call.
    let slices: Vec<&[T]> = raws.iter().map(|r| unsafe { r.slice::<T>() }).collect();
    detach(py, move || reduce::total_norm(&slices, norm))
}

/// Multiplies every element of every array by `factor` (rounded to the arrays' dtype; for
/// float16/bfloat16 arrays to float32, the product rounded once), in place.
#[pyfunction]
pub fn scale_<'py>(py: Python<'py>, arrays: &Bound<'py, PyAny>, factor: f64) -> PyResult<()> {
    let (mut g, raws) = Group::first_list(arrays, "grads", true)?;
    g.finish()?;
    let f = f32::from_f64(factor);
    match g.dtype {
        Dtype::F32 => run_scale::<f32>(py, &raws, f, None),
        Dtype::F64 => run_scale::<f64>(py, &raws, factor, None),
        Dtype::F16 => run_scale::<F16>(py, &raws, f, None),
        Dtype::BF16 => run_scale::<Bf16>(py, &raws, f, None),
        d @ Dtype::U8 => Err(unsupported(d)),
    }
}

/// Clamps every element of every array into `[-clip_value, clip_value]` (for float16/bfloat16
/// arrays, the bound rounded to float32), in place.
#[pyfunction]
pub fn clamp_<'py>(py: Python<'py>, arrays: &Bound<'py, PyAny>, clip_value: f64) -> PyResult<()> {
    if clip_value.is_nan() {
        return Err(PyValueError::new_err("clip_value must not be NaN"));
    }
    let (mut g, raws) = Group::first_list(arrays, "grads", true)?;
    g.finish()?;
    let c = f32::from_f64(clip_value);
    match g.dtype {
        Dtype::F32 => run_scale::<f32>(py, &raws, 1.0, Some((-c, c))),
        Dtype::F64 => run_scale::<f64>(py, &raws, 1.0, Some((-clip_value, clip_value))),
        Dtype::F16 => run_scale::<F16>(py, &raws, 1.0, Some((-c, c))),
        Dtype::BF16 => run_scale::<Bf16>(py, &raws, 1.0, Some((-c, c))),
        d @ Dtype::U8 => Err(unsupported(d)),
    }
}

fn run_scale<T: ClipValue>(py: Python<'_>, raws: &[Raw], factor: T::Arith, clamp: Option<(T::Arith, T::Arith)>) -> PyResult<()> {
    // SAFETY: `Group` checked dtype `T`, layout, writeability and that no two arrays overlap;
    // the caller's `Group` keeps them alive for this call.
    let slices: Vec<&mut [T]> = raws.iter().map(|r| unsafe { r.slice_mut::<T>() }).collect();
    detach(py, move || match clamp {
        None => reduce::scale(slices, factor),
        Some((lo, hi)) => reduce::clamp(slices, lo, hi),
    })
}

/// The dot product of two arrays of the same shape and dtype, accumulated in double precision.
#[pyfunction]
pub fn dot<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<f64> {
    let (g, r) = same_shape(&[(a, "a", false), (b, "b", false)])?;
    let (ra, rb) = (&r[..1], &r[1..]);
    fn run<T: Float + numpy::Element>(py: Python<'_>, a: Raw, b: Raw) -> PyResult<f64> {
        // SAFETY: `Group` checked dtype `T`, layout and shapes; both arrays are only read and
        // are kept alive by the caller's `Group`.
        let (a, b) = unsafe { (a.slice::<T>(), b.slice::<T>()) };
        run_core(py, move || reduce::dot(a, b))
    }
    by_dtype!(g.dtype, run(py, ra[0], rb[0]))
}

/// `y += alpha * x` in place (one rounding with FMA, as torch's `add_(x, alpha=)`).
#[pyfunction]
pub fn axpy_<'py>(py: Python<'py>, y: &Bound<'py, PyAny>, alpha: f64, x: &Bound<'py, PyAny>) -> PyResult<()> {
    let (g, r) = same_shape(&[(y, "y", true), (x, "x", false)])?;
    let (ry, rx) = (&r[..1], &r[1..]);
    fn run<T: Float + numpy::Element>(py: Python<'_>, y: Raw, x: Raw, alpha: T) -> PyResult<()> {
        // SAFETY: `Group` checked dtype `T`, layout, that `y` is writeable and does not
        // overlap `x`; the caller's `Group` keeps both alive.
        let (y, x) = unsafe { (y.slice_mut::<T>(), x.slice::<T>()) };
        run_core(py, move || reduce::axpy(y, alpha, x))
    }
    match g.dtype {
        Dtype::F32 => run::<f32>(py, ry[0], rx[0], f32::from_f64(alpha)),
        Dtype::F64 => run::<f64>(py, ry[0], rx[0], alpha),
        d => Err(unsupported(d)),
    }
}

/// `y += alpha * x`, then `z . y` (double-precision accumulation), in one pass; the same
/// result as `axpy_` followed by `dot`.
#[pyfunction]
pub fn axpy_dot<'py>(py: Python<'py>, y: &Bound<'py, PyAny>, alpha: f64, x: &Bound<'py, PyAny>, z: &Bound<'py, PyAny>) -> PyResult<f64> {
    let (g, r) = same_shape(&[(y, "y", true), (x, "x", false), (z, "z", false)])?;
    let (ry, rx, rz) = (&r[..1], &r[1..2], &r[2..]);
    fn run<T: Float + numpy::Element>(py: Python<'_>, y: Raw, x: Raw, z: Raw, alpha: T) -> PyResult<f64> {
        // SAFETY: `Group` checked dtype `T`, layouts, shapes, and that `y` (written) overlaps
        // neither `x` nor `z`; the caller's `Group` keeps all three alive.
        let (y, x, z) = unsafe { (y.slice_mut::<T>(), x.slice::<T>(), z.slice::<T>()) };
        run_core(py, move || reduce::axpy_dot(y, alpha, x, z))
    }
    match g.dtype {
        Dtype::F32 => run::<f32>(py, ry[0], rx[0], rz[0], f32::from_f64(alpha)),
        Dtype::F64 => run::<f64>(py, ry[0], rx[0], rz[0], alpha),
        d => Err(unsupported(d)),
    }
}

/// Single arrays of one call that must have the first one's shape and dtype: checked as the
/// kernels check (layout, writeability, no overlap with a written one), errors naming the
/// caller's arguments (`b has shape (4,) but a has shape (3,)`).
fn same_shape<'py>(arrays: &[(&Bound<'py, PyAny>, &'static str, bool)]) -> PyResult<(Group<'py>, Vec<Raw>)> {
    let (first, first_name, written) = arrays[0];
    let (mut g, raw) = Group::single(first, first_name, written)?;
    let shape: Vec<usize> = first.cast::<PyUntypedArray>().map(|a| a.shape().to_vec()).unwrap_or_default();
    let mut raws = vec![raw];
    for &(obj, name, written) in &arrays[1..] {
        if let Ok(arr) = obj.cast::<PyUntypedArray>() {
            if arr.shape() != shape.as_slice() {
                return Err(PyValueError::new_err(format!("{name} has shape {} but {first_name} has shape {}", shape_str(arr.shape()), shape_str(&shape))));
            }
        }
        // (the shape was checked just above, naming the first array)
        raws.push(g.array(obj, name, written, None, None)?);
    }
    g.finish()?;
    Ok((g, raws))
}
