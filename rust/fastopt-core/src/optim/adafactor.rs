//! Adafactor's factored update (torch.optim.Adafactor, parameters of 2 or more dimensions),
//! in three passes over a `(batch, rows, cols)` tensor instead of NumPy's temporaries:
//!
//! 1. [`factored_sums`]: the squared-gradient sums of every row and every column and the
//!    parameter's sum of squares (float64), for the row/column statistics and the relative
//!    step size (the caller lerps the small row/column vectors, as torch does).
//! 2. [`factored_update_sq`]: the sum of squares of the update
//!    `u = g / sqrt(max(r_i c_j / rmean, eps1^2))`, for the update clipping by `d`.
//! 3. [`factored_apply`]: `p = p * decay + scale * u` (torch's `mul_` then `add_(alpha=)`).
//!
//! `u` is computed as torch computes it (`r_i c_j / rmean`, clamped, `1 / sqrt(.)` as its
//! `rsqrt_`, times `g`), except that `r_i / rmean` is divided once per row. The passes run on the calling
//! thread; sums accumulate in float64 in a fixed order.

use crate::float::Float;
use crate::simd::{self, Arith, SimdKernel};
use crate::Error;

/// `(batch, rows, cols)`: the leading dimensions, then the last two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Factored {
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Factored {
    fn check(self, what: &str, len: usize, expected: usize) -> Result<(), Error> {
        if len != expected {
            return Err(Error(format!("{what} has {len} elements, not {expected} for {} x {} x {}", self.batch, self.rows, self.cols)));
        }
        Ok(())
    }
    fn len(self) -> usize {
        self.batch * self.rows * self.cols
    }
}

struct Sums<'a, T> {
    g: &'a [T],
    p: &'a [T],
    f: Factored,
    row_sq: &'a mut [f64],
    col_sq: &'a mut [f64],
    p_sq: &'a mut f64,
}

impl<T: Float> SimdKernel for Sums<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Sums { g, p, f, row_sq, col_sq, p_sq } = self;
        for v in col_sq.iter_mut() {
            *v = 0.0;
        }
        for b in 0..f.batch {
            let cols = &mut col_sq[b * f.cols..][..f.cols];
            for i in 0..f.rows {
                let row = &g[(b * f.rows + i) * f.cols..][..f.cols];
                let mut acc = [0f64; 8];
                let mut ch = row.chunks_exact(8);
                let mut k = 0;
                for c in &mut ch {
                    for j in 0..8 {
                        let v = c[j].to_f64();
                        acc[j] += v * v;
                        cols[k + j] += v * v;
                    }
                    k += 8;
                }
                for (j, v) in ch.remainder().iter().enumerate() {
                    let v = v.to_f64();
                    acc[j] += v * v;
                    cols[k + j] += v * v;
                }
                row_sq[b * f.rows + i] = acc.iter().sum();
            }
        }
        let mut acc = [0f64; 8];
        let mut ch = p.chunks_exact(8);
        for c in &mut ch {
            for j in 0..8 {
                acc[j] += c[j].to_f64() * c[j].to_f64();
            }
        }
        *p_sq = ch.remainder().iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>() + acc.iter().sum::<f64>();
    }
}

/// The per-row, per-column and whole-parameter sums of squares (see the module docs).
/// Returns `sum(p^2)`.
pub fn factored_sums<T: Float>(g: &[T], p: &[T], f: Factored, row_sq: &mut [f64], col_sq: &mut [f64]) -> Result<f64, Error> {
    f.check("grad", g.len(), f.len())?;
    f.check("param", p.len(), f.len())?;
    f.check("row_sq", row_sq.len(), f.batch * f.rows)?;
    f.check("col_sq", col_sq.len(), f.batch * f.cols)?;
    let mut p_sq = 0.0;
    simd::dispatch(Sums { g, p, f, row_sq, col_sq, p_sq: &mut p_sq });
    Ok(p_sq)
}

/// The row/column statistics of one pass 2 or 3.
pub struct Stats<'a, T> {
    pub row_var: &'a [T],
    pub col_var: &'a [T],
    /// Per batch entry: the mean row variance, clamped to at least eps1.
    pub row_mean: &'a [T],
    pub eps1_sq: T,
}

impl<T: Copy> Clone for Stats<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Copy> Copy for Stats<'_, T> {}

/// torch's `u = rsqrt(clamp(r * c / rmean, min=eps1^2)) * g` with `rr = r / rmean` divided
/// once per row (torch divides the product: the variance estimate may differ in its last
/// bit, within the parity bars); NaN stays NaN.
#[inline(always)]
fn update<T: Float>(g: T, rr: T, c: T, eps1_sq: T) -> T {
    let v = rr * c;
    let v = if v < eps1_sq { eps1_sq } else { v };
    T::ONE / v.sqrt() * g
}

struct Pass<'a, T> {
    g: &'a [T],
    p: Option<&'a mut [T]>,
    f: Factored,
    s: Stats<'a, T>,
    decay: T,
    scale: T,
    out: &'a mut f64,
}

impl<T: Float> SimdKernel for Pass<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Pass { g, mut p, f, s, decay, scale, out } = self;
        let mut acc = [0f64; 8];
        for b in 0..f.batch {
            let rmean = s.row_mean[b];
            let cols = &s.col_var[b * f.cols..][..f.cols];
            for i in 0..f.rows {
                let r = s.row_var[b * f.rows + i] / rmean;
                let off = (b * f.rows + i) * f.cols;
                let grow = &g[off..][..f.cols];
                match p.as_deref_mut() {
                    None => {
                        let mut ch = grow.chunks_exact(8);
                        let mut k = 0;
                        for gc in &mut ch {
                            for j in 0..8 {
                                let u = update(gc[j], r, cols[k + j], s.eps1_sq).to_f64();
                                acc[j] += u * u;
                            }
                            k += 8;
                        }
                        for (j, &gv) in ch.remainder().iter().enumerate() {
                            let u = update(gv, r, cols[k + j], s.eps1_sq).to_f64();
                            acc[j] += u * u;
                        }
                    }
                    Some(p) => {
                        let prow = &mut p[off..][..f.cols];
                        for ((pv, &gv), &c) in prow.iter_mut().zip(grow).zip(cols) {
                            *pv = A::madd(update(gv, r, c, s.eps1_sq), scale, *pv * decay);
                        }
                    }
                }
            }
        }
        *out = acc.iter().sum();
    }
}

fn check_stats<T>(f: Factored, s: &Stats<'_, T>) -> Result<(), Error> {
    f.check("row_var", s.row_var.len(), f.batch * f.rows)?;
    f.check("col_var", s.col_var.len(), f.batch * f.cols)?;
    f.check("row_mean", s.row_mean.len(), f.batch)
}

/// `sum(u^2)` over the tensor (see the module docs).
pub fn factored_update_sq<T: Float>(g: &[T], f: Factored, s: Stats<'_, T>) -> Result<f64, Error> {
    f.check("grad", g.len(), f.len())?;
    check_stats(f, &s)?;
    let mut out = 0.0;
    simd::dispatch(Pass { g, p: None, f, s, decay: T::ONE, scale: T::ZERO, out: &mut out });
    Ok(out)
}

/// `p = p * decay + scale * u` in place (torch: `p.mul_(decay)` when weight decay is on, then
/// `p.add_(u, alpha=scale)`; with `decay == 1` the product is exact, as skipping it).
pub fn factored_apply<T: Float>(p: &mut [T], g: &[T], f: Factored, s: Stats<'_, T>, decay: T, scale: T) -> Result<(), Error> {
    f.check("param", p.len(), f.len())?;
    f.check("grad", g.len(), f.len())?;
    check_stats(f, &s)?;
    let mut out = 0.0;
    simd::dispatch(Pass { g, p: Some(p), f, s, decay, scale, out: &mut out });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    #[test]
    fn passes_match_a_direct_transcription() {
        let f = Factored { batch: 2, rows: 5, cols: 19 };
        let g: Vec<f64> = data(f.len(), 1);
        let p: Vec<f64> = data(f.len(), 2);
        let (mut rs, mut cs) = (vec![0.0; 10], vec![0.0; 38]);
        let psq = factored_sums(&g, &p, f, &mut rs, &mut cs).unwrap();
        assert!((psq - p.iter().map(|v| v * v).sum::<f64>()).abs() < 1e-12);
        for b in 0..2 {
            for i in 0..5 {
                let want: f64 = (0..19).map(|j| g[(b * 5 + i) * 19 + j].powi(2)).sum();
                assert!((rs[b * 5 + i] - want).abs() < 1e-12);
            }
            for j in 0..19 {
                let want: f64 = (0..5).map(|i| g[(b * 5 + i) * 19 + j].powi(2)).sum();
                assert!((cs[b * 19 + j] - want).abs() < 1e-12);
            }
        }
        let rv: Vec<f64> = rs.iter().map(|v| v / 19.0).collect();
        let cv: Vec<f64> = cs.iter().map(|v| v / 5.0).collect();
        let rm = vec![0.3, 0.0];
        let s = Stats { row_var: &rv, col_var: &cv, row_mean: &rm, eps1_sq: 1e-30 };
        let usq = factored_update_sq(&g, f, s).unwrap();
        let mut want = 0.0;
        let mut q = p.clone();
        for b in 0..2 {
            for i in 0..5 {
                for j in 0..19 {
                    let k = (b * 5 + i) * 19 + j;
                    let v = (rv[b * 5 + i] / rm[b] * cv[b * 19 + j]).max(1e-30);
                    let u = 1.0 / v.sqrt() * g[k];
                    want += u * u;
                    q[k] = q[k] * 0.9 + -0.01 * u;
                }
            }
        }
        assert!((usq - want).abs() <= 1e-12 * want);
        let mut p2 = p.clone();
        factored_apply(&mut p2, &g, f, s, 0.9, -0.01).unwrap();
        for (a, b) in p2.iter().zip(&q) {
            assert!((a - b).abs() <= 1e-14 * (1.0 + b.abs()));
        }
        assert!(factored_sums(&g[1..], &p, f, &mut rs, &mut cs).is_err());
    }
}
