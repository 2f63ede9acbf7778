//! `fastopt._fastopt`: the compiled module. It converts and checks arguments, releases the
//! GIL and calls `fastopt-core`; it does no arithmetic of its own.

/// Calls the generic `f::<T>(args)` for the call's element type: `by_dtype!(g.dtype, run(a, b))`
/// (defined before the modules that use it).
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            $crate::arrays::Dtype::F32 => $f::<f32>($($arg),*),
            $crate::arrays::Dtype::F64 => $f::<f64>($($arg),*),
            d => Err($crate::arrays::unsupported(d)),
        }
    };
}

/// Calls the generic `f::<P, S>(args)` for an optimizer step's parameter and state dtypes
/// (`by_storage!(g.dtype, g.sdtype, run(a, b))`): float32 and float64 alone, float16 and
/// bfloat16 with their state in their own dtype or in float32, float32 with bfloat16 state,
/// float32, float16 and bfloat16 with 8-bit blockwise state (`Dtype::keeps_state_in`).
macro_rules! by_storage {
    ($dtype:expr, $sdtype:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        use $crate::arrays::Dtype as D;
        use fastopt_core::blockwise::Q8;
        use fastopt_core::half::{Bf16, F16};
        match ($dtype, $sdtype) {
            (D::F32, D::F32) => $f::<f32, f32>($($arg),*),
            (D::F32, D::BF16) => $f::<f32, Bf16>($($arg),*),
            (D::F64, D::F64) => $f::<f64, f64>($($arg),*),
            (D::BF16, D::BF16) => $f::<Bf16, Bf16>($($arg),*),
            (D::BF16, D::F32) => $f::<Bf16, f32>($($arg),*),
            (D::F16, D::F16) => $f::<F16, F16>($($arg),*),
            (D::F16, D::F32) => $f::<F16, f32>($($arg),*),
            (D::F32, D::U8) => $f::<f32, Q8>($($arg),*),
            (D::BF16, D::U8) => $f::<Bf16, Q8>($($arg),*),
            (D::F16, D::U8) => $f::<F16, Q8>($($arg),*),
            (p, s) => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "{} parameters cannot keep {} state", p.name(), s.name()
            ))),
        }
    }};
}

mod adafactor;
mod arrays;
mod clip;
mod nn;
mod optim;

use fastopt_core::{bandwidth, parallel, simd};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The SIMD level kernels run at now: "avx512", "avx2", "neon" or "scalar".
#[pyfunction]
fn simd_level() -> &'static str {
    simd::level().name()
}

/// The best SIMD level this CPU supports.
#[pyfunction]
fn detected_simd_level() -> &'static str {
    simd::detected().name()
}

/// Every SIMD level this CPU can run, lowest first.
#[pyfunction]
fn available_simd_levels() -> Vec<&'static str> {
    simd::available().into_iter().map(|l| l.name()).collect()
}

/// Forces a SIMD level (one of `available_simd_levels()`); mainly for tests.
#[pyfunction]
fn set_simd_level(level: &str) -> PyResult<()> {
    let l = simd::SimdLevel::parse(level).ok_or_else(|| {
        PyValueError::new_err(format!("level must be one of 'avx512', 'avx2', 'neon', 'scalar', got {level:?}"))
    })?;
    simd::set_level(l).map_err(PyValueError::new_err)
}

/// Threads the kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    parallel::num_threads()
}

/// Sets the threads the kernels use (at least 1).
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    if n < 1 {
        return Err(PyValueError::new_err(format!("n must be at least 1, got {n}")));
    }
    parallel::set_num_threads(n as usize).map_err(PyValueError::new_err)
}

/// The cores available to this process (the default thread count).
#[pyfunction]
fn default_num_threads() -> usize {
    parallel::default_threads()
}

/// What the kernels ignore of `FASTOPT_NUM_THREADS` and `FASTOPT_SIMD`, one message each
/// (the package warns with them when imported).
#[pyfunction]
fn environment_problems() -> Vec<String> {
    [parallel::env_problem(), simd::env_problem()].into_iter().flatten().collect()
}

/// The most threads `set_num_threads` accepts (4 per core).
#[pyfunction]
fn max_num_threads() -> usize {
    parallel::max_threads()
}

/// The memory-bandwidth probe at the current threads: `(copy, triad)` in bytes per second,
/// best of `repeats` runs over float32 buffers of `elements` elements each (GIL released).
#[pyfunction]
fn bandwidth_probe(py: Python<'_>, elements: usize, repeats: usize) -> PyResult<(f64, f64)> {
    if elements == 0 || repeats == 0 {
        return Err(PyValueError::new_err(format!("elements and repeats must be at least 1, got {elements} and {repeats}")));
    }
    let bw = arrays::detach(py, move || bandwidth::probe(elements, repeats))?.map_err(pyo3::exceptions::PyMemoryError::new_err)?;
    Ok((bw.copy, bw.triad))
}

#[pymodule]
mod _fastopt {
    #[pymodule_export]
    use super::adafactor::adafactor_step;
    #[pymodule_export]
    use super::arrays::CheckCache;
    #[pymodule_export]
    use super::clip::{axpy_, axpy_dot, clamp_, dot, scale_, total_norm};
    #[pymodule_export]
    use super::nn::{act_backward, act_forward, bn_backward_input, bn_backward_sums, bn_normalize, bn_stats, bn_train_backward, bn_train_forward, cross_entropy, cross_entropy_backward, softmax, softmax_backward};
    #[pymodule_export]
    use super::optim::{dequantize_blockwise, quantile_map, quantize_blockwise, rule_names, step, Rule};
    #[pymodule_export]
    use super::{available_simd_levels, bandwidth_probe, default_num_threads, detected_simd_level, environment_problems, get_num_threads, max_num_threads, set_num_threads, set_simd_level, simd_level};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
