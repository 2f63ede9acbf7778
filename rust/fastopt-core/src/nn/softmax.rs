//! softmax / log_softmax over one axis of a C-contiguous array, their backward passes, and
//! cross-entropy on class indices (with label smoothing and an ignored index).
//!
//! An array is seen as `(outer, n, inner)` with the reduced axis of length `n` in the middle
//! (`inner == 1` for the last axis). Sums of exponentials accumulate in float64; results are
//! the same for every thread count (rows are never split).

use crate::float::{nan_max, Float};
use crate::math::Math;
use crate::parallel::{self, Split};
use crate::reduce::{dot_f64, sum_f64};
use crate::simd::{self, Arith, SimdKernel};
use crate::Error;

/// `(outer, n, inner)`: the reduced axis has length `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub outer: usize,
    pub n: usize,
    pub inner: usize,
}

impl Axis {
    /// `outer * n * inner`, or None where it overflows (no array has that many elements).
    fn checked_len(self) -> Option<usize> {
        self.outer.checked_mul(self.n)?.checked_mul(self.inner)
    }
    fn check(self, what: &str, len: usize) -> Result<(), Error> {
        if self.checked_len() != Some(len) {
            return Err(Error::value(format!(
                "{what} has {len} elements, not {} x {} x {}",
                self.outer, self.n, self.inner
            )));
        }
        Ok(())
    }
}

/// Maximum of a row (NaN if any element is NaN), with independent lanes so it vectorizes.
#[inline(always)]
fn row_max<T: Float>(row: &[T]) -> T {
    let mut acc = [row[0]; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            acc[j] = nan_max(acc[j], c[j]);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(acc[0], |a, &b| nan_max(a, b));
    for a in acc {
        m = nan_max(m, a);
    }
    m
}

/// Whole `(n, inner)` blocks of the inputs and output.
struct Rows<'a, T> {
    a: &'a [T],
    b: Option<&'a [T]>,
    out: &'a mut [T],
    block: usize,
}

impl<T: Send + Sync> Split for Rows<'_, T> {
    fn len(&self) -> usize {
        self.out.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let at = (mid.div_ceil(self.block) * self.block).min(self.out.len());
        let (a0, a1) = self.a.split_at(at);
        let (o0, o1) = self.out.split_at_mut(at);
        let (b0, b1) = match self.b {
            Some(b) => {
                let (x, y) = b.split_at(at);
                (Some(x), Some(y))
            }
            None => (None, None),
        };
        (
            Rows {
                a: a0,
                b: b0,
                out: o0,
                block: self.block,
            },
            Rows {
                a: a1,
                b: b1,
                out: o1,
                block: self.block,
            },
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Softmax,
    LogSoftmax,
    SoftmaxBackward,
    LogSoftmaxBackward,
}

struct SoftKernel<'a, T> {
    rows: Rows<'a, T>,
    axis: Axis,
    kind: Kind,
}

impl<T: Math> SimdKernel for SoftKernel<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let (n, inner) = (self.axis.n, self.axis.inner);
        let block = n * inner;
        let Rows { a, b, out, .. } = self.rows;
        if block == 0 {
            return;
        }
        let mut acc = vec![0f64; if inner > 1 { inner } else { 0 }];
        let mut red = vec![T::ZERO; if inner > 1 { inner } else { 0 }];
        for (k, o) in out.chunks_mut(block).enumerate() {
            let x = &a[k * block..][..block];
            let y = b.map(|b| &b[k * block..][..block]);
            if inner == 1 {
                last_axis::<A, T>(self.kind, x, y, o);
            } else {
                middle_axis::<A, T>(self.kind, x, y, o, n, inner, &mut acc, &mut red);
            }
        }
    }
}

/// One row along the last axis. Forward: `x` is the input. Backward: `x` is the gradient of
/// the output and `y` the forward's output.
#[inline(always)]
fn last_axis<A: Arith, T: Math>(kind: Kind, x: &[T], y: Option<&[T]>, o: &mut [T]) {
    match kind {
        Kind::Softmax | Kind::LogSoftmax => {
            let m = row_max(x);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - m).exp::<A>();
            }
            let s = sum_f64(o);
            if kind == Kind::Softmax {
                let r = T::from_f64(1.0 / s);
                for v in o.iter_mut() {
                    *v = *v * r;
                }
            } else {
                // (x - max) - log(sum): x - max is exact near the maximum, where a combined
                // shift x - (max + log(sum)) would round at the magnitude of max.
                let ls = T::from_f64(s.ln());
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - m) - ls;
                }
            }
        }
        Kind::SoftmaxBackward => {
            let y = y.unwrap_or(&[]);
            let d = T::from_f64(dot_f64(x, y));
            for ((o, &g), &y) in o.iter_mut().zip(x).zip(y) {
                *o = y * (g - d);
            }
        }
        Kind::LogSoftmaxBackward => {
            let y = y.unwrap_or(&[]);
            let s = T::from_f64(sum_f64(x));
            for ((o, &g), &y) in o.iter_mut().zip(x).zip(y) {
                *o = g - y.exp::<A>() * s;
            }
        }
    }
}

/// One `(n, inner)` block reduced over `n`, vectorized across `inner`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn middle_axis<A: Arith, T: Math>(
    kind: Kind,
    x: &[T],
    y: Option<&[T]>,
    o: &mut [T],
    n: usize,
    inner: usize,
    acc: &mut [f64],
    red: &mut [T],
) {
    for a in acc.iter_mut() {
        *a = 0.0;
    }
    match kind {
        Kind::Softmax | Kind::LogSoftmax => {
            red.copy_from_slice(&x[..inner]);
            for j in 1..n {
                for (m, &v) in red.iter_mut().zip(&x[j * inner..][..inner]) {
                    *m = nan_max(*m, v);
                }
            }
            for j in 0..n {
                let (xr, or) = (&x[j * inner..][..inner], &mut o[j * inner..][..inner]);
                for ((o, &v), &m) in or.iter_mut().zip(xr).zip(red.iter()) {
                    *o = (v - m).exp::<A>();
                }
                for (a, &e) in acc.iter_mut().zip(or.iter()) {
                    *a += e.to_f64();
                }
            }
            for j in 0..n {
                let (xr, or) = (&x[j * inner..][..inner], &mut o[j * inner..][..inner]);
                if kind == Kind::Softmax {
                    for (o, &s) in or.iter_mut().zip(acc.iter()) {
                        *o = *o * T::from_f64(1.0 / s);
                    }
                } else {
                    for ((o, &v), (&s, &m)) in or.iter_mut().zip(xr).zip(acc.iter().zip(red.iter()))
                    {
                        *o = (v - m) - T::from_f64(s.ln());
                    }
                }
            }
        }
        Kind::SoftmaxBackward | Kind::LogSoftmaxBackward => {
            let y = y.unwrap_or(&[]);
            for j in 0..n {
                let (g, yr) = (&x[j * inner..][..inner], &y[j * inner..][..inner]);
                if kind == Kind::SoftmaxBackward {
                    for (a, (&g, &y)) in acc.iter_mut().zip(g.iter().zip(yr)) {
                        *a += g.to_f64() * y.to_f64();
                    }
                } else {
                    for (a, &g) in acc.iter_mut().zip(g) {
                        *a += g.to_f64();
                    }
                }
            }
            for j in 0..n {
                let (g, yr, or) = (
                    &x[j * inner..][..inner],
                    &y[j * inner..][..inner],
                    &mut o[j * inner..][..inner],
                );
                if kind == Kind::SoftmaxBackward {
                    for ((o, (&g, &y)), &d) in or.iter_mut().zip(g.iter().zip(yr)).zip(acc.iter()) {
                        *o = y * (g - T::from_f64(d));
                    }
                } else {
                    for ((o, (&g, &y)), &s) in or.iter_mut().zip(g.iter().zip(yr)).zip(acc.iter()) {
                        *o = g - y.exp::<A>() * T::from_f64(s);
                    }
                }
            }
        }
    }
}

fn run<T: Math>(kind: Kind, a: &[T], b: Option<&[T]>, out: &mut [T], axis: Axis) {
    let block = (axis.n * axis.inner).max(1);
    let rows = Rows { a, b, out, block };
    parallel::for_each(vec![rows], |rows| {
        simd::dispatch(SoftKernel { rows, axis, kind })
    });
}

/// `out = softmax(x)` (or `log_softmax`) over the middle axis of `axis`.
pub fn softmax<T: Math>(x: &[T], out: &mut [T], axis: Axis, log: bool) -> Result<(), Error> {
    axis.check("input", x.len())?;
    axis.check("out", out.len())?;
    run(
        if log { Kind::LogSoftmax } else { Kind::Softmax },
        x,
        None,
        out,
        axis,
    );
    Ok(())
}

/// The input gradient of softmax (`y * (g - sum(g * y))`) or of log_softmax
/// (`g - exp(y) * sum(g)`), from the output gradient `grad` and the forward's output `y`.
pub fn softmax_backward<T: Math>(
    grad: &[T],
    y: &[T],
    out: &mut [T],
    axis: Axis,
    log: bool,
) -> Result<(), Error> {
    axis.check("grad_output", grad.len())?;
    axis.check("output", y.len())?;
    axis.check("out", out.len())?;
    run(
        if log {
            Kind::LogSoftmaxBackward
        } else {
            Kind::SoftmaxBackward
        },
        grad,
        Some(y),
        out,
        axis,
    );
    Ok(())
}

/// Checks class indices: each in `[0, classes)` or equal to `ignore_index`.
fn check_targets(target: &[i64], classes: usize, ignore_index: i64) -> Result<(), Error> {
    for (i, &t) in target.iter().enumerate() {
        if t != ignore_index && (t < 0 || t as u64 >= classes as u64) {
            return Err(Error::value(format!("target[{i}] = {t} is out of range for {classes} classes (and is not ignore_index={ignore_index})")));
        }
    }
    Ok(())
}

/// Rows of logits with their targets and per-row outputs.
struct CeRows<'a, T, O> {
    x: &'a [T],
    target: &'a [i64],
    rows: O,
    grad: Option<&'a mut [T]>,
    classes: usize,
}

trait RowSlice: Sized + Send {
    fn split(self, at: usize) -> (Self, Self);
}
impl RowSlice for &mut [f64] {
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_mut(at)
    }
}
impl RowSlice for &[f64] {
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at(at)
    }
}

impl<T: Send + Sync, O: RowSlice> Split for CeRows<'_, T, O> {
    fn len(&self) -> usize {
        self.x.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let c = self.classes.max(1);
        let r = mid.div_ceil(c).min(self.target.len());
        let (x0, x1) = self.x.split_at(r * self.classes);
        let (t0, t1) = self.target.split_at(r);
        let (o0, o1) = self.rows.split(r);
        let (g0, g1) = match self.grad {
            Some(g) => {
                let (a, b) = g.split_at_mut(r * self.classes);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        (
            CeRows {
                x: x0,
                target: t0,
                rows: o0,
                grad: g0,
                classes: self.classes,
            },
            CeRows {
                x: x1,
                target: t1,
                rows: o1,
                grad: g1,
                classes: self.classes,
            },
        )
    }
}

struct CeForward<'a, T> {
    w: CeRows<'a, T, &'a mut [f64]>,
    smoothing: f64,
    ignore: i64,
}

impl<T: Math> SimdKernel for CeForward<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let c = self.w.classes;
        let mut e = vec![T::ZERO; c];
        for ((row, &t), loss) in self
            .w
            .x
            .chunks(c)
            .zip(self.w.target)
            .zip(self.w.rows.iter_mut())
        {
            if t == self.ignore {
                *loss = 0.0;
                continue;
            }
            let m = row_max(row);
            for (e, &v) in e.iter_mut().zip(row) {
                *e = (v - m).exp::<A>();
            }
            let lse = m.to_f64() + sum_f64(&e).ln();
            let nll = lse - row[t as usize].to_f64();
            *loss = if self.smoothing > 0.0 {
                // -(1/C) sum_c log p_c = lse - mean(x)
                let smooth = lse - sum_f64(row) / c as f64;
                (1.0 - self.smoothing) * nll + self.smoothing * smooth
            } else {
                nll
            };
        }
    }
}

struct CeBackward<'a, T> {
    w: CeRows<'a, T, &'a [f64]>,
    smoothing: f64,
    ignore: i64,
}

impl<T: Math> SimdKernel for CeBackward<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let c = self.w.classes;
        let Some(grad) = self.w.grad else { return };
        let off = T::from_f64(self.smoothing / c as f64);
        for (((row, &t), &scale), g) in self
            .w
            .x
            .chunks(c)
            .zip(self.w.target)
            .zip(self.w.rows.iter())
            .zip(grad.chunks_mut(c))
        {
            if t == self.ignore || scale == 0.0 {
                for v in g.iter_mut() {
                    *v = T::ZERO;
                }
                continue;
            }
            let m = row_max(row);
            for (e, &v) in g.iter_mut().zip(row) {
                *e = (v - m).exp::<A>();
            }
            let r = T::from_f64(1.0 / sum_f64(g));
            let w = T::from_f64(scale);
            for v in g.iter_mut() {
                *v = (*v * r - off) * w;
            }
            let tt = t as usize;
            g[tt] = g[tt] - T::from_f64((1.0 - self.smoothing) * scale);
        }
    }
}

/// Per-row cross-entropy of logits `x` (`rows x classes`) against class indices, with label
/// smoothing `smoothing` (torch's: `(1 - s) * nll + s * mean over classes of -log p`); rows
/// whose target is `ignore_index` get 0. Writes one float64 loss per row into `losses`.
pub fn cross_entropy<T: Math>(
    x: &[T],
    target: &[i64],
    classes: usize,
    smoothing: f64,
    ignore_index: i64,
    losses: &mut [f64],
) -> Result<(), Error> {
    check_ce(x.len(), target.len(), classes, losses.len(), "losses")?;
    check_targets(target, classes, ignore_index)?;
    let w = CeRows {
        x,
        target,
        rows: losses,
        grad: None,
        classes,
    };
    parallel::for_each(vec![w], |w| {
        simd::dispatch(CeForward {
            w,
            smoothing,
            ignore: ignore_index,
        })
    });
    Ok(())
}

/// The gradient of `sum_i scale[i] * loss_i` with respect to the logits:
/// `scale[i] * (softmax(x_i) - (1 - s) onehot(t_i) - s / classes)`, 0 on ignored rows.
pub fn cross_entropy_backward<T: Math>(
    x: &[T],
    target: &[i64],
    classes: usize,
    smoothing: f64,
    ignore_index: i64,
    scale: &[f64],
    grad: &mut [T],
) -> Result<(), Error> {
    check_ce(x.len(), target.len(), classes, scale.len(), "scale")?;
    if grad.len() != x.len() {
        return Err(Error::value(format!(
            "out has {} elements but input has {}",
            grad.len(),
            x.len()
        )));
    }
    check_targets(target, classes, ignore_index)?;
    let w = CeRows {
        x,
        target,
        rows: scale,
        grad: Some(grad),
        classes,
    };
    parallel::for_each(vec![w], |w| {
        simd::dispatch(CeBackward {
            w,
            smoothing,
            ignore: ignore_index,
        })
    });
    Ok(())
}

fn check_ce(
    xlen: usize,
    rows: usize,
    classes: usize,
    per_row: usize,
    what: &str,
) -> Result<(), Error> {
    if classes == 0 || Some(xlen) != rows.checked_mul(classes) {
        return Err(Error::value(format!(
            "input has {xlen} elements, not {rows} rows x {classes} classes"
        )));
    }
    if per_row != rows {
        return Err(Error::value(format!(
            "{what} has {per_row} elements but there are {rows} rows"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    fn ref_softmax(x: &[f64], a: Axis, log: bool) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for o in 0..a.outer {
            for i in 0..a.inner {
                let idx = |j: usize| (o * a.n + j) * a.inner + i;
                let m = (0..a.n)
                    .map(|j| x[idx(j)])
                    .fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = (0..a.n).map(|j| (x[idx(j)] - m).exp()).sum();
                for j in 0..a.n {
                    out[idx(j)] = if log {
                        x[idx(j)] - m - s.ln()
                    } else {
                        (x[idx(j)] - m).exp() / s
                    };
                }
            }
        }
        out
    }

    #[test]
    fn softmax_matches_reference_on_every_axis_layout() {
        for a in [
            Axis {
                outer: 3,
                n: 37,
                inner: 1,
            },
            Axis {
                outer: 2,
                n: 5,
                inner: 19,
            },
            Axis {
                outer: 1,
                n: 1,
                inner: 7,
            },
            Axis {
                outer: 4000,
                n: 17,
                inner: 1,
            },
        ] {
            let x: Vec<f64> = data::<f64>(a.checked_len().unwrap(), 9).iter().map(|v| v * 10.0).collect();
            for log in [false, true] {
                let mut out = vec![0.0; x.len()];
                softmax(&x, &mut out, a, log).unwrap();
                let want = ref_softmax(&x, a, log);
                for (o, w) in out.iter().zip(&want) {
                    assert!(
                        (o - w).abs() <= 1e-14 * (1.0 + w.abs()),
                        "{a:?} {log}: {o} vs {w}"
                    );
                }
                // backward against the explicit Jacobian-vector product
                let g: Vec<f64> = data::<f64>(a.checked_len().unwrap(), 10);
                let mut gx = vec![0.0; x.len()];
                softmax_backward(&g, &out, &mut gx, a, log).unwrap();
                let h = 1e-6;
                for k in (0..x.len()).step_by(7).take(60) {
                    let (mut xp, mut xm) = (x.clone(), x.clone());
                    xp[k] += h;
                    xm[k] -= h;
                    let (yp, ym) = (ref_softmax(&xp, a, log), ref_softmax(&xm, a, log));
                    let d: f64 = (0..x.len())
                        .map(|j| g[j] * (yp[j] - ym[j]) / (2.0 * h))
                        .sum();
                    assert!(
                        (gx[k] - d).abs() <= 1e-7 * (1.0 + d.abs()),
                        "{a:?} {log} k={k}: {} vs {d}",
                        gx[k]
                    );
                }
            }
        }
    }

    #[test]
    fn cross_entropy_and_gradient() {
        let (rows, c) = (50, 7);
        let x: Vec<f64> = data::<f64>(rows * c, 4).iter().map(|v| v * 3.0).collect();
        let t: Vec<i64> = (0..rows as i64)
            .map(|i| {
                if i % 11 == 3 {
                    -100
                } else {
                    (i * 5) % c as i64
                }
            })
            .collect();
        for s in [0.0, 0.2] {
            let mut losses = vec![0.0; rows];
            cross_entropy(&x, &t, c, s, -100, &mut losses).unwrap();
            let logp = ref_softmax(
                &x,
                Axis {
                    outer: rows,
                    n: c,
                    inner: 1,
                },
                true,
            );
            for i in 0..rows {
                let want = if t[i] == -100 {
                    0.0
                } else {
                    let lp = &logp[i * c..][..c];
                    -(1.0 - s) * lp[t[i] as usize] - s / c as f64 * lp.iter().sum::<f64>()
                };
                assert!(
                    (losses[i] - want).abs() < 1e-13,
                    "{i}: {} vs {want}",
                    losses[i]
                );
            }
            let scale: Vec<f64> = (0..rows).map(|i| 0.5 + i as f64 * 0.01).collect();
            let mut g = vec![0.0; x.len()];
            cross_entropy_backward(&x, &t, c, s, -100, &scale, &mut g).unwrap();
            let h = 1e-6;
            for k in (0..x.len()).step_by(3) {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[k] += h;
                xm[k] -= h;
                let (mut lp, mut lm) = (vec![0.0; rows], vec![0.0; rows]);
                cross_entropy(&xp, &t, c, s, -100, &mut lp).unwrap();
                cross_entropy(&xm, &t, c, s, -100, &mut lm).unwrap();
                let d: f64 = (0..rows)
                    .map(|i| scale[i] * (lp[i] - lm[i]) / (2.0 * h))
                    .sum();
                assert!((g[k] - d).abs() < 1e-7, "k={k}: {} vs {d}", g[k]);
            }
        }
        let mut losses = vec![0.0; 1];
        assert!(cross_entropy(&[1.0f64, 2.0], &[2], 2, 0.0, -100, &mut losses).is_err());
        assert!(cross_entropy(&[1.0f64, 2.0], &[-1], 2, 0.0, -100, &mut losses).is_err());
    }
}
