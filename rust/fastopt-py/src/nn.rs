//! Activations, softmax, cross-entropy and BatchNorm passes: argument checks and GIL release
//! around `fastopt_core::nn`. Shapes and reductions are decided in Python
//! (`fastopt/nn/functional.py`); here every array is checked for dtype, layout, length and
//! overlap before anything is written.

use crate::arrays::{Dtype, Group, Raw, run_core};
use fastopt_core::math::Math;
use fastopt_core::nn::activation::{self, Act};
use fastopt_core::nn::batchnorm::{self, PerChannel, Shape};
use fastopt_core::nn::softmax::{self as sm, Axis};
use numpy::Element;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn act(name: &str, a: f64, b: f64, c: f64) -> PyResult<Act> {
    Ok(match name {
        "relu" => Act::Relu,
        "leaky_relu" => Act::LeakyRelu { slope: a },
        "elu" => Act::Elu { alpha: a, scale: b, input_scale: c },
        "sigmoid" => Act::Sigmoid,
        "tanh" => Act::Tanh,
        "gelu" => Act::Gelu,
        "gelu_tanh" => Act::GeluTanh,
        "silu" => Act::Silu,
        "softplus" => Act::Softplus { beta: a, threshold: b },
        _ => return Err(PyValueError::new_err(format!("unknown activation {name:?}"))),
    })
}

/// `out = act(x)`, or in place when `x is out`. Parameters `a, b, c`: leaky_relu slope;
/// elu alpha, scale, input_scale; softplus beta, threshold.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn act_forward<'py>(py: Python<'py>, name: &str, x: &Bound<'py, PyAny>, out: &Bound<'py, PyAny>, a: f64, b: f64, c: f64) -> PyResult<()> {
    let act = act(name, a, b, c)?;
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rx = if x.is(out) { None } else { Some(g.array(x, "input", false, None, None)?) };
    g.finish()?;
    fn run<T: Math + Element>(py: Python<'_>, act: Act, x: Option<Raw>, out: Raw) -> PyResult<()> {
        // SAFETY: `Group` checked dtype `T`, layout and that `out` (written) overlaps no
        // other array; the arrays are kept alive by the caller's `Group` for this call.
        let (x, out) = unsafe { (x.map(|r| r.slice::<T>()), out.slice_mut::<T>()) };
        run_core(py, move || activation::forward(act, x, out))
    }
    by_dtype!(g.dtype, run(py, act, rx, ro))
}

/// `out = d act/dx * grad_output` from what the forward saved (its output for relu, sigmoid
/// and tanh, its input otherwise); in place when `grad_output is out`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn act_backward<'py>(
    py: Python<'py>,
    name: &str,
    grad_output: &Bound<'py, PyAny>,
    saved: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    a: f64,
    b: f64,
    c: f64,
) -> PyResult<()> {
    let act = act(name, a, b, c)?;
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rg = if grad_output.is(out) { None } else { Some(g.array(grad_output, "grad_output", false, None, None)?) };
    let rs = g.array(saved, if act.saves_output() { "output" } else { "input" }, false, None, None)?;
    g.finish()?;
    fn run<T: Math + Element>(py: Python<'_>, act: Act, gr: Option<Raw>, s: Raw, out: Raw) -> PyResult<()> {
        // SAFETY: as in `act_forward`.
        let (gr, s, out) = unsafe { (gr.map(|r| r.slice::<T>()), s.slice::<T>(), out.slice_mut::<T>()) };
        run_core(py, move || activation::backward(act, gr, s, out))
    }
    by_dtype!(g.dtype, run(py, act, rg, rs, ro))
}

/// softmax (or log_softmax) of `x`, seen as `(outer, n, inner)`, over the middle axis.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn softmax<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, out: &Bound<'py, PyAny>, outer: usize, n: usize, inner: usize, log: bool) -> PyResult<()> {
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rx = g.array(x, "input", false, None, None)?;
    g.finish()?;
    let axis = Axis { outer, n, inner };
    fn run<T: Math + Element>(py: Python<'_>, x: Raw, out: Raw, axis: Axis, log: bool) -> PyResult<()> {
        // SAFETY: as in `act_forward`.
        let (x, out) = unsafe { (x.slice::<T>(), out.slice_mut::<T>()) };
        run_core(py, move || sm::softmax(x, out, axis, log))
    }
    by_dtype!(g.dtype, run(py, rx, ro, axis, log))
}

/// The input gradient of softmax / log_softmax from `grad_output` and the forward's output.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn softmax_backward<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    output: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    outer: usize,
    n: usize,
    inner: usize,
    log: bool,
) -> PyResult<()> {
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rg = g.array(grad_output, "grad_output", false, None, None)?;
    let ry = g.array(output, "output", false, None, None)?;
    g.finish()?;
    let axis = Axis { outer, n, inner };
    fn run<T: Math + Element>(py: Python<'_>, gr: Raw, y: Raw, out: Raw, axis: Axis, log: bool) -> PyResult<()> {
        // SAFETY: as in `act_forward`.
        let (gr, y, out) = unsafe { (gr.slice::<T>(), y.slice::<T>(), out.slice_mut::<T>()) };
        run_core(py, move || sm::softmax_backward(gr, y, out, axis, log))
    }
    by_dtype!(g.dtype, run(py, rg, ry, ro, axis, log))
}

/// Per-row cross-entropy losses (float64) of logits `(rows, classes)` against int64 targets.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    classes: usize,
    label_smoothing: f64,
    ignore_index: i64,
    losses: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (mut g, rx) = Group::single(input, "input", false)?;
    let rows = if classes == 0 { 0 } else { rx.len() / classes };
    let rt = g.int64(target, "target", rows)?;
    let rl = g.array(losses, "losses", true, None, Some(Dtype::F64))?;
    g.finish()?;
    fn run<T: Math + Element>(py: Python<'_>, x: Raw, t: Raw, l: Raw, c: usize, s: f64, ig: i64) -> PyResult<()> {
        // SAFETY: `Group` checked the dtypes (`T`, int64, float64), layouts and that `losses`
        // (written) overlaps nothing; the caller's `Group` keeps the arrays alive.
        let (x, t, l) = unsafe { (x.slice::<T>(), t.slice::<i64>(), l.slice_mut::<f64>()) };
        run_core(py, move || sm::cross_entropy(x, t, c, s, ig, l))
    }
    by_dtype!(g.dtype, run(py, rx, rt, rl, classes, label_smoothing, ignore_index))
}


/// The gradient of `sum_i scale[i] * loss_i` with respect to the logits, into `out`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    classes: usize,
    label_smoothing: f64,
    ignore_index: i64,
    scale: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (mut g, rx) = Group::single(input, "input", false)?;
    let rows = if classes == 0 { 0 } else { rx.len() / classes };
    let rt = g.int64(target, "target", rows)?;
    let rs = g.array(scale, "scale", false, None, Some(Dtype::F64))?;
    let ro = g.array(out, "out", true, None, None)?;
    g.finish()?;
    #[allow(clippy::too_many_arguments)]
    fn run<T: Math + Element>(py: Python<'_>, x: Raw, t: Raw, sc: Raw, o: Raw, c: usize, s: f64, ig: i64) -> PyResult<()> {
        // SAFETY: as in `cross_entropy`; `out` is the only array written.
        let (x, t, sc, o) = unsafe { (x.slice::<T>(), t.slice::<i64>(), sc.slice::<f64>(), o.slice_mut::<T>()) };
        run_core(py, move || sm::cross_entropy_backward(x, t, c, s, ig, sc, o))
    }
    by_dtype!(g.dtype, run(py, rx, rt, rs, ro, classes, label_smoothing, ignore_index))
}

/// Per-channel mean and biased variance (float64 outputs) of `x` seen as `(n, c, l)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn bn_stats<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, n: usize, c: usize, l: usize, mean: &Bound<'py, PyAny>, var: &Bound<'py, PyAny>) -> PyResult<()> {
    let (mut g, rx) = Group::single(x, "input", false)?;
    let rm = g.array(mean, "mean", true, Some(&[c]), Some(Dtype::F64))?;
    let rv = g.array(var, "var", true, Some(&[c]), Some(Dtype::F64))?;
    g.finish()?;
    let s = Shape { n, c, l };
    fn run<T: Math + Element>(py: Python<'_>, x: Raw, m: Raw, v: Raw, s: Shape) -> PyResult<()> {
        // SAFETY: `Group` checked dtypes, layouts and that the written outputs overlap nothing.
        let (x, m, v) = unsafe { (x.slice::<T>(), m.slice_mut::<f64>(), v.slice_mut::<f64>()) };
        run_core(py, move || batchnorm::stats(x, s, m, v))
    }
    by_dtype!(g.dtype, run(py, rx, rm, rv, s))
}

/// Per-channel `sum(g)` and `sum(g * (x - mean))` (float64 outputs).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn bn_backward_sums<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    mean: &Bound<'py, PyAny>,
    n: usize,
    c: usize,
    l: usize,
    sum_g: &Bound<'py, PyAny>,
    sum_gx: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (mut g, rg) = Group::single(grad_output, "grad_output", false)?;
    let rx = g.array(x, "input", false, None, None)?;
    let rm = g.array(mean, "mean", false, Some(&[c]), None)?;
    let r1 = g.array(sum_g, "sum_g", true, Some(&[c]), Some(Dtype::F64))?;
    let r2 = g.array(sum_gx, "sum_gx", true, Some(&[c]), Some(Dtype::F64))?;
    g.finish()?;
    let s = Shape { n, c, l };
    fn run<T: Math + Element>(py: Python<'_>, gr: Raw, x: Raw, m: Raw, a: Raw, b: Raw, s: Shape) -> PyResult<()> {
        // SAFETY: as in `bn_stats`.
        let (gr, x, m, a, b) = unsafe { (gr.slice::<T>(), x.slice::<T>(), m.slice::<T>(), a.slice_mut::<f64>(), b.slice_mut::<f64>()) };
        run_core(py, move || batchnorm::backward_sums(gr, x, m, s, a, b))
    }
    by_dtype!(g.dtype, run(py, rg, rx, rm, r1, r2, s))
}

/// `out = (x - mean[c]) * scale[c] + shift[c]` over `(n, c, l)`; in place when `x is out`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn bn_normalize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    n: usize,
    c: usize,
    l: usize,
    mean: &Bound<'py, PyAny>,
    scale: &Bound<'py, PyAny>,
    shift: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rx = if x.is(out) { None } else { Some(g.array(x, "input", false, None, None)?) };
    let rm = g.array(mean, "mean", false, Some(&[c]), None)?;
    let rsc = g.array(scale, "scale", false, Some(&[c]), None)?;
    let rsh = g.array(shift, "shift", false, Some(&[c]), None)?;
    g.finish()?;
    let s = Shape { n, c, l };
    #[allow(clippy::too_many_arguments)]
    fn run<T: Math + Element>(py: Python<'_>, x: Option<Raw>, o: Raw, m: Raw, sc: Raw, sh: Raw, s: Shape) -> PyResult<()> {
        // SAFETY: as in `bn_stats`; `out` is the only array written.
        let (x, o) = unsafe { (x.map(|r| r.slice::<T>()), o.slice_mut::<T>()) };
        let p = unsafe { PerChannel { mean: m.slice::<T>(), scale: sc.slice::<T>(), shift: sh.slice::<T>(), k: None } };
        run_core(py, move || batchnorm::normalize(x, o, s, p))
    }
    by_dtype!(g.dtype, run(py, rx, ro, rm, rsc, rsh, s))
}

/// `out = (g - shift[c] - (x - mean[c]) * k[c]) * scale[c]`, or `g * scale[c]` when `k` is None.
#[pyfunction]
#[pyo3(signature = (grad_output, x, out, n, c, l, mean, scale, shift, k))]
#[allow(clippy::too_many_arguments)]
pub fn bn_backward_input<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    n: usize,
    c: usize,
    l: usize,
    mean: &Bound<'py, PyAny>,
    scale: &Bound<'py, PyAny>,
    shift: &Bound<'py, PyAny>,
    k: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rg = g.array(grad_output, "grad_output", false, None, None)?;
    let rx = g.array(x, "input", false, None, None)?;
    let rm = g.array(mean, "mean", false, Some(&[c]), None)?;
    let rsc = g.array(scale, "scale", false, Some(&[c]), None)?;
    let rsh = g.array(shift, "shift", false, Some(&[c]), None)?;
    let rk = match k {
        Some(k) => Some(g.array(k, "k", false, Some(&[c]), None)?),
        None => None,
    };
    g.finish()?;
    let s = Shape { n, c, l };
    #[allow(clippy::too_many_arguments)]
    fn run<T: Math + Element>(py: Python<'_>, gr: Raw, x: Raw, o: Raw, m: Raw, sc: Raw, sh: Raw, k: Option<Raw>, s: Shape) -> PyResult<()> {
        // SAFETY: as in `bn_stats`; `out` is the only array written.
        let (gr, x, o) = unsafe { (gr.slice::<T>(), x.slice::<T>(), o.slice_mut::<T>()) };
        let p = unsafe { PerChannel { mean: m.slice::<T>(), scale: sc.slice::<T>(), shift: sh.slice::<T>(), k: k.map(|k| k.slice::<T>()) } };
        run_core(py, move || batchnorm::backward_input(gr, x, o, s, p))
    }
    by_dtype!(g.dtype, run(py, rg, rx, ro, rm, rsc, rsh, rk, s))
}

fn opt_vec<'py>(g: &mut Group<'py>, v: Option<&Bound<'py, PyAny>>, name: &'static str, c: usize) -> PyResult<Option<Raw>> {
    match v {
        Some(v) if !v.is_none() => Ok(Some(g.array(v, name, false, Some(&[c]), None)?)),
        _ => Ok(None),
    }
}

/// Training forward, fused: per-channel mean and biased variance (float64, into `mean`/`var`)
/// and `out = (x - mean) / sqrt(var + eps) * weight + bias`. `out` must not be `x`.
#[pyfunction]
#[pyo3(signature = (x, out, n, c, l, weight, bias, eps, mean, var))]
#[allow(clippy::too_many_arguments)]
pub fn bn_train_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    n: usize,
    c: usize,
    l: usize,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
    mean: &Bound<'py, PyAny>,
    var: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rx = g.array(x, "input", false, None, None)?;
    let rw = opt_vec(&mut g, weight, "weight", c)?;
    let rb = opt_vec(&mut g, bias, "bias", c)?;
    let rm = g.array(mean, "mean", true, Some(&[c]), Some(Dtype::F64))?;
    let rv = g.array(var, "var", true, Some(&[c]), Some(Dtype::F64))?;
    g.finish()?;
    let s = Shape { n, c, l };
    #[allow(clippy::too_many_arguments)]
    fn run<T: Math + Element>(py: Python<'_>, x: Raw, o: Raw, w: Option<Raw>, b: Option<Raw>, m: Raw, v: Raw, s: Shape, eps: f64) -> PyResult<()> {
        // SAFETY: `Group` checked dtypes, layouts and that the written arrays (`out`, `mean`,
        // `var`) overlap nothing; the caller's `Group` keeps every array alive.
        let (x, o, m, v) = unsafe { (x.slice::<T>(), o.slice_mut::<T>(), m.slice_mut::<f64>(), v.slice_mut::<f64>()) };
        let (w, b) = unsafe { (w.map(|r| r.slice::<T>()), b.map(|r| r.slice::<T>())) };
        run_core(py, move || batchnorm::train_forward(x, o, s, w, b, eps, m, v))
    }
    by_dtype!(g.dtype, run(py, rx, ro, rw, rb, rm, rv, s, eps))
}

/// Training backward, fused: per-channel `sum(g)`, `sum(g * (x - mean))` (float64) and the
/// input gradient into `out`.
#[pyfunction]
#[pyo3(signature = (grad_output, x, out, n, c, l, mean, invstd, weight, sum_g, sum_gx))]
#[allow(clippy::too_many_arguments)]
pub fn bn_train_backward<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    n: usize,
    c: usize,
    l: usize,
    mean: &Bound<'py, PyAny>,
    invstd: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    sum_g: &Bound<'py, PyAny>,
    sum_gx: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (mut g, ro) = Group::single(out, "out", true)?;
    let rg = g.array(grad_output, "grad_output", false, None, None)?;
    let rx = g.array(x, "input", false, None, None)?;
    let rm = g.array(mean, "mean", false, Some(&[c]), None)?;
    let ri = g.array(invstd, "invstd", false, Some(&[c]), None)?;
    let rw = opt_vec(&mut g, weight, "weight", c)?;
    let r1 = g.array(sum_g, "sum_g", true, Some(&[c]), Some(Dtype::F64))?;
    let r2 = g.array(sum_gx, "sum_gx", true, Some(&[c]), Some(Dtype::F64))?;
    g.finish()?;
    let s = Shape { n, c, l };
    #[allow(clippy::too_many_arguments)]
    fn run<T: Math + Element>(py: Python<'_>, gr: Raw, x: Raw, o: Raw, m: Raw, i: Raw, w: Option<Raw>, a: Raw, b: Raw, s: Shape) -> PyResult<()> {
        // SAFETY: as in `bn_train_forward`; the written arrays are `out`, `sum_g`, `sum_gx`.
        let (gr, x, o, m, i) = unsafe { (gr.slice::<T>(), x.slice::<T>(), o.slice_mut::<T>(), m.slice::<T>(), i.slice::<T>()) };
        let (w, a, b) = unsafe { (w.map(|r| r.slice::<T>()), a.slice_mut::<f64>(), b.slice_mut::<f64>()) };
        run_core(py, move || batchnorm::train_backward(gr, x, o, s, m, i, w, a, b))
    }
    by_dtype!(g.dtype, run(py, rg, rx, ro, rm, ri, rw, r1, r2, s))
}
