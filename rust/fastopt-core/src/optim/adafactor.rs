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
//! `rsqrt_`, times `g`), except that `r_i / rmean` is divided once per row. Every pass is
//! split across threads by whole rows, with results independent of the thread count. The passes run on the calling
//! sums accumulate in float64 in a fixed order.

use crate::float::Float;
use crate::parallel::{self, Split};
use crate::reduce::dot_f64;
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
    /// `expected` is None where the size it stands for overflows (no array has that many
    /// elements).
    fn check(self, what: &str, len: usize, expected: Option<usize>) -> Result<(), Error> {
        if Some(len) != expected {
            return Err(Error::value(format!(
                "{what} has {len} elements, not the {} x {} x {} the shape asks",
                self.batch, self.rows, self.cols
            )));
        }
        Ok(())
    }
    fn len(self) -> Option<usize> {
        self.batch.checked_mul(self.rows)?.checked_mul(self.cols)
    }
    fn per_row(self) -> Option<usize> {
        self.batch.checked_mul(self.rows)
    }
    fn per_col(self) -> Option<usize> {
        self.batch.checked_mul(self.cols)
    }
}

/// Rows per block of the first pass (its column partial sums are merged in block order).
const BLOCK_ROWS: usize = 64;

/// A block of rows (never across a batch entry) and the slots of its partial sums.
struct SumBlock<'a, T> {
    g: &'a [T],
    p: &'a [T],
    cols: usize,
    row_sq: &'a mut [f64],
    col_part: &'a mut [f64],
    p_part: &'a mut [f64],
}

impl<T: Send + Sync> Split for SumBlock<'_, T> {
    fn len(&self) -> usize {
        self.g.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        // A block is the unit of the reduction: it is never cut (cutting later than `mid`).
        let empty = SumBlock { g: &[], p: &[], cols: self.cols, row_sq: &mut [], col_part: &mut [], p_part: &mut [] };
        if mid == 0 {
            (empty, self)
        } else {
            (self, empty)
        }
    }
}

impl<T: Float> SimdKernel for SumBlock<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let SumBlock { g, p, cols, row_sq, col_part, p_part } = self;
        if p_part.is_empty() {
            return;
        }
        for v in col_part.iter_mut() {
            *v = 0.0;
        }
        for (row, slot) in g.chunks_exact(cols).zip(row_sq.iter_mut()) {
            let mut acc = 0.0;
            for (c, &v) in col_part.iter_mut().zip(row) {
                let v = v.to_f64();
                *c += v * v;
                acc += v * v;
            }
            *slot = acc;
        }
        p_part[0] = dot_f64(p, p);
    }
}

/// The per-row, per-column and whole-parameter sums of squares (see the module docs).
/// Returns `sum(p^2)`. The same result whatever the thread count: rows are reduced in blocks
/// of 64 whose partial sums are merged in order.
pub fn factored_sums<T: Float>(g: &[T], p: &[T], f: Factored, row_sq: &mut [f64], col_sq: &mut [f64]) -> Result<f64, Error> {
    f.check("grad", g.len(), f.len())?;
    f.check("param", p.len(), f.len())?;
    f.check("row_sq", row_sq.len(), f.per_row())?;
    f.check("col_sq", col_sq.len(), f.per_col())?;
    if g.is_empty() {
        col_sq.iter_mut().for_each(|v| *v = 0.0);
        row_sq.iter_mut().for_each(|v| *v = 0.0);
        return Ok(0.0);
    }
    let per_batch = f.rows.div_ceil(BLOCK_ROWS);
    let blocks = f.batch * per_batch;
    let mut col_parts = vec![0f64; blocks * f.cols];
    let mut p_parts = vec![0f64; blocks];
    let mut items = Vec::with_capacity(blocks);
    let (mut gr, mut pr, mut rr): (&[T], &[T], &mut [f64]) = (g, p, row_sq);
    let (mut cr, mut ppr): (&mut [f64], &mut [f64]) = (&mut col_parts, &mut p_parts);
    for _ in 0..f.batch {
        for k in 0..per_batch {
            let rows = (f.rows - k * BLOCK_ROWS).min(BLOCK_ROWS);
            let n = rows * f.cols;
            let (g0, g1) = gr.split_at(n);
            let (p0, p1) = pr.split_at(n);
            let (r0, r1) = std::mem::take(&mut rr).split_at_mut(rows);
            let (c0, c1) = std::mem::take(&mut cr).split_at_mut(f.cols);
            let (q0, q1) = std::mem::take(&mut ppr).split_at_mut(1);
            items.push(SumBlock { g: g0, p: p0, cols: f.cols, row_sq: r0, col_part: c0, p_part: q0 });
            (gr, pr, rr, cr, ppr) = (g1, p1, r1, c1, q1);
        }
    }
    parallel::for_each(items, simd::dispatch);
    for (b, out) in col_sq.chunks_mut(f.cols).enumerate() {
        out.iter_mut().for_each(|v| *v = 0.0);
        for part in col_parts[b * per_batch * f.cols..][..per_batch * f.cols].chunks(f.cols) {
            for (o, &v) in out.iter_mut().zip(part) {
                *o += v;
            }
        }
    }
    Ok(p_parts.iter().sum())
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

/// Whole rows `row0 ..` of the tensor (flattened over the batch), with their outputs: one
/// `sum(u^2)` slot per row (pass 2), or the parameter's rows (pass 3).
struct Rows<'a, T> {
    g: &'a [T],
    p: Option<&'a mut [T]>,
    u_sq: &'a mut [f64],
    row0: usize,
    f: Factored,
    s: Stats<'a, T>,
    decay: T,
    scale: T,
}

impl<T: Float> Split for Rows<'_, T> {
    fn len(&self) -> usize {
        self.g.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let rows = mid.div_ceil(self.f.cols.max(1)).min(self.g.len() / self.f.cols.max(1));
        let at = rows * self.f.cols;
        let (g0, g1) = self.g.split_at(at);
        let (p0, p1) = crate::parallel::split_opt(self.p, at);
        let k = rows.min(self.u_sq.len());
        let (u0, u1) = self.u_sq.split_at_mut(k);
        let Rows { row0, f, s, decay, scale, .. } = self;
        (
            Rows { g: g0, p: p0, u_sq: u0, row0, f, s, decay, scale },
            Rows { g: g1, p: p1, u_sq: u1, row0: row0 + rows, f, s, decay, scale },
        )
    }
}

impl<T: Float> SimdKernel for Rows<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Rows { g, mut p, u_sq, row0, f, s, decay, scale } = self;
        for (k, grow) in g.chunks_exact(f.cols).enumerate() {
            let row = row0 + k;
            let b = row / f.rows;
            let rr = s.row_var[row] / s.row_mean[b];
            let cols = &s.col_var[b * f.cols..][..f.cols];
            match p.as_deref_mut() {
                None => {
                    let mut acc = [0f64; 8];
                    let mut ch = grow.chunks_exact(8);
                    let mut c8 = cols.chunks_exact(8);
                    for (gc, cc) in (&mut ch).zip(&mut c8) {
                        for j in 0..8 {
                            let u = update(gc[j], rr, cc[j], s.eps1_sq).to_f64();
                            acc[j] += u * u;
                        }
                    }
                    for (&gv, &c) in ch.remainder().iter().zip(c8.remainder()) {
                        let u = update(gv, rr, c, s.eps1_sq).to_f64();
                        acc[0] += u * u;
                    }
                    u_sq[k] = acc.iter().sum();
                }
                Some(p) => {
                    let prow = &mut p[k * f.cols..][..f.cols];
                    for ((pv, &gv), &c) in prow.iter_mut().zip(grow).zip(cols) {
                        *pv = A::madd(update(gv, rr, c, s.eps1_sq), scale, *pv * decay);
                    }
                }
            }
        }
    }
}

fn check_stats<T>(f: Factored, s: &Stats<'_, T>) -> Result<(), Error> {
    f.check("row_var", s.row_var.len(), f.per_row())?;
    f.check("col_var", s.col_var.len(), f.per_col())?;
    f.check("row_mean", s.row_mean.len(), Some(f.batch))
}

/// `sum(u^2)` over the tensor (see the module docs); per-row partials summed in row order,
/// so the same whatever the thread count.
pub fn factored_update_sq<T: Float>(g: &[T], f: Factored, s: Stats<'_, T>) -> Result<f64, Error> {
    f.check("grad", g.len(), f.len())?;
    check_stats(f, &s)?;
    if g.is_empty() {
        return Ok(0.0);
    }
    let mut u_sq = vec![0f64; f.batch * f.rows];
    let rows = Rows { g, p: None, u_sq: &mut u_sq, row0: 0, f, s, decay: T::ONE, scale: T::ZERO };
    parallel::for_each(vec![rows], simd::dispatch);
    Ok(u_sq.iter().sum())
}

/// `p = p * decay + scale * u` in place (torch: `p.mul_(decay)` when weight decay is on, then
/// `p.add_(u, alpha=scale)`; with `decay == 1` the product is exact, as skipping it).
pub fn factored_apply<T: Float>(p: &mut [T], g: &[T], f: Factored, s: Stats<'_, T>, decay: T, scale: T) -> Result<(), Error> {
    f.check("param", p.len(), f.len())?;
    f.check("grad", g.len(), f.len())?;
    check_stats(f, &s)?;
    if g.is_empty() {
        return Ok(());
    }
    let rows = Rows { g, p: Some(p), u_sq: &mut [], row0: 0, f, s, decay, scale };
    parallel::for_each(vec![rows], simd::dispatch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    #[test]
    fn passes_match_a_direct_transcription() {
        let f = Factored { batch: 2, rows: 5, cols: 19 };
        let g: Vec<f64> = data(f.len().unwrap(), 1);
        let p: Vec<f64> = data(f.len().unwrap(), 2);
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

    #[test]
    fn same_results_at_any_thread_count() {
        let _g = crate::test_util::global();
        let f = Factored { batch: 3, rows: 150, cols: 301 };
        let g: Vec<f32> = data(f.len().unwrap(), 4);
        let p: Vec<f32> = data(f.len().unwrap(), 5);
        let rv: Vec<f32> = (0..450).map(|i| 0.5 + i as f32 * 0.01).collect();
        let cv: Vec<f32> = (0..903).map(|i| 0.25 + i as f32 * 0.001).collect();
        let rm = vec![1.0f32, 2.0, 0.5];
        let s = Stats { row_var: &rv, col_var: &cv, row_mean: &rm, eps1_sq: 1e-30 };
        let mut results = vec![];
        for threads in [1, 2, 3] {
            crate::parallel::set_num_threads(threads).unwrap();
            let (mut rs, mut cs) = (vec![0.0; 450], vec![0.0; 903]);
            let psq = factored_sums(&g, &p, f, &mut rs, &mut cs).unwrap();
            let usq = factored_update_sq(&g, f, s).unwrap();
            let mut q = p.clone();
            factored_apply(&mut q, &g, f, s, 0.99, -0.01).unwrap();
            results.push((psq.to_bits(), usq.to_bits(), rs, cs, q));
        }
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}
