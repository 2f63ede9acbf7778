//! Adafactor (Shazeer & Stern, 2018) as torch.optim.Adafactor computes it: the whole rule,
//! over every tensor of a group ([`step`]).
//!
//! A vector (a parameter of fewer than 2 dimensions) keeps a full second moment and takes
//! two passes of the engine: a reducing pass ([`engine::sweep`]) lerps the variance and sums
//! the squares of the parameter (for the relative step size) and of the update
//! `u = g / sqrt(max(v, eps1^2))` (for the update clipping by `d`); then [`engine::apply`]
//! applies `p = p * (1 - lr * wd) - alpha / denom * u`.
//!
//! A parameter of 2 or more dimensions, seen as `(batch, rows, cols)`, keeps one variance per
//! row and per column. Its three passes are split by whole rows, because an element's update
//! depends on its row and its column:
//!
//! 1. [`factored_sums`]: the squared-gradient sums of every row and every column and the
//!    parameter's sum of squares (float64); the small row/column vectors are then lerped
//!    towards their means.
//! 2. [`factored_update_sq`]: the sum of squares of the update
//!    `u = g / sqrt(max(r_i c_j / rmean, eps1^2))`, for the update clipping by `d`.
//! 3. [`factored_apply`]: `p = p * decay + scale * u` (torch's `mul_` then `add_(alpha=)`).
//!
//! `u` is computed as torch computes it (`r_i c_j / rmean`, clamped, `1 / sqrt(.)` as its
//! `rsqrt_`, times `g`), except that `r_i / rmean` is divided once per row. The sums are in
//! float64 in a fixed order, so results do not depend on the thread count.

use super::engine::{self, next_step, pow_half, Lerp, Rule, Tensor, MAX_STATES};
use crate::reduce::sum_f64;
use crate::simd::SimdLevel;
use crate::float::Float;
use crate::parallel::{self, Split};
use crate::reduce::dot_f64;
use crate::simd::{self, Arith, SimdKernel};
use crate::{check_len, Error};

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
    /// The gradient's scale (clipping) and sign (maximize): see [`engine::Grad`].
    sign: T,
}

impl<T: Float> Split for SumBlock<'_, T> {
    fn len(&self) -> usize {
        self.g.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        // A block is the unit of the reduction: it is never cut (cutting later than `mid`).
        let empty = SumBlock { g: &[], p: &[], cols: self.cols, row_sq: &mut [], col_part: &mut [], p_part: &mut [], sign: self.sign };
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
        let SumBlock { g, p, cols, row_sq, col_part, p_part, sign } = self;
        if p_part.is_empty() {
            return;
        }
        for v in col_part.iter_mut() {
            *v = 0.0;
        }
        for (row, slot) in g.chunks_exact(cols).zip(row_sq.iter_mut()) {
            let mut acc = 0.0;
            for (c, &v) in col_part.iter_mut().zip(row) {
                let v = (v * sign).to_f64();
                *c += v * v;
                acc += v * v;
            }
            *slot = acc;
        }
        p_part[0] = dot_f64(p, p);
    }
}

/// The per-row, per-column and whole-parameter sums of squares (see the module docs), of the
/// gradient times `sign`. Returns `sum(p^2)`. The same result whatever the thread count: rows
/// are reduced in blocks of 64 whose partial sums are merged in order.
pub fn factored_sums<T: Float>(g: &[T], p: &[T], f: Factored, sign: T, row_sq: &mut [f64], col_sq: &mut [f64], level: SimdLevel) -> Result<f64, Error> {
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
            items.push(SumBlock { g: g0, p: p0, cols: f.cols, row_sq: r0, col_part: c0, p_part: q0, sign });
            (gr, pr, rr, cr, ppr) = (g1, p1, r1, c1, q1);
        }
    }
    parallel::for_each(items, |c| simd::dispatch_at(level, c));
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
    /// The gradient's scale (clipping) and sign (maximize): see [`engine::Grad`].
    pub sign: T,
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
    scaled(g, rr * c, eps1_sq)
}

/// torch's `rsqrt(clamp(v, min=eps1_sq)) * g`; NaN stays NaN.
#[inline(always)]
fn scaled<T: Float>(g: T, v: T, eps1_sq: T) -> T {
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
                            let u = update(gc[j] * s.sign, rr, cc[j], s.eps1_sq).to_f64();
                            acc[j] += u * u;
                        }
                    }
                    for (&gv, &c) in ch.remainder().iter().zip(c8.remainder()) {
                        let u = update(gv * s.sign, rr, c, s.eps1_sq).to_f64();
                        acc[0] += u * u;
                    }
                    u_sq[k] = acc.iter().sum();
                }
                Some(p) => {
                    let prow = &mut p[k * f.cols..][..f.cols];
                    for ((pv, &gv), &c) in prow.iter_mut().zip(grow).zip(cols) {
                        *pv = A::madd(update(gv * s.sign, rr, c, s.eps1_sq), scale, *pv * decay);
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
pub fn factored_update_sq<T: Float>(g: &[T], f: Factored, s: Stats<'_, T>, level: SimdLevel) -> Result<f64, Error> {
    f.check("grad", g.len(), f.len())?;
    check_stats(f, &s)?;
    if g.is_empty() {
        return Ok(0.0);
    }
    let mut u_sq = vec![0f64; f.batch * f.rows];
    let rows = Rows { g, p: None, u_sq: &mut u_sq, row0: 0, f, s, decay: T::ONE, scale: T::ZERO };
    parallel::for_each(vec![rows], |c| simd::dispatch_at(level, c));
    Ok(u_sq.iter().sum())
}

/// `p = p * decay + scale * u` in place (torch: `p.mul_(decay)` when weight decay is on, then
/// `p.add_(u, alpha=scale)`; with `decay == 1` the product is exact, as skipping it).
pub fn factored_apply<T: Float>(p: &mut [T], g: &[T], f: Factored, s: Stats<'_, T>, decay: T, scale: T, level: SimdLevel) -> Result<(), Error> {
    f.check("param", p.len(), f.len())?;
    f.check("grad", g.len(), f.len())?;
    check_stats(f, &s)?;
    if g.is_empty() {
        return Ok(());
    }
    let rows = Rows { g, p: Some(p), u_sq: &mut [], row0: 0, f, s, decay, scale };
    parallel::for_each(vec![rows], |c| simd::dispatch_at(level, c));
    Ok(())
}

/// Adafactor's hyperparameters, torch's names (`eps1` None: the dtype's machine epsilon).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorConfig {
    pub lr: f64,
    pub beta2_decay: f64,
    pub eps1: Option<f64>,
    pub eps2: f64,
    pub d: f64,
    pub weight_decay: f64,
    pub maximize: bool,
}

/// A tensor's second moment.
pub enum Variance<'a, T> {
    /// A parameter of 2 or more dimensions: one variance per row (`batch x rows`) and per
    /// column (`batch x cols`), torch's `row_var` and `col_var`.
    Factored { f: Factored, row_var: &'a mut [T], col_var: &'a mut [T] },
    /// Fewer dimensions: one per element, torch's `variance`.
    Full(&'a mut [T]),
}

/// One tensor of a group: its buffers and its float32 `step`.
pub struct AdafactorTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub var: Variance<'a, T>,
    pub step: &'a mut f32,
}

/// A step's constants for one tensor, from its (incremented) step.
#[derive(Clone, Copy, Debug)]
struct Constants {
    /// `1 - beta2_t = step ** beta2_decay`, the lerp weight.
    weight: f64,
    /// `min(lr, 1 / sqrt(step))`.
    rho: f64,
    eps1: f64,
}

impl AdafactorConfig {
    fn constants<T: Float>(&self, step: f64) -> Constants {
        let inv = 1.0 / pow_half(step);
        Constants {
            weight: step.powf(self.beta2_decay),
            rho: if inv < self.lr { inv } else { self.lr },
            eps1: self.eps1.unwrap_or(T::EPSILON.to_f64()),
        }
    }

    /// `(decay, scale)` of the last pass: `p = p * decay + scale * u`, from the sums of
    /// squares of the parameter (before the step) and of the update, over `n` elements.
    fn last_pass(&self, k: Constants, p_sq: f64, u_sq: f64, n: usize) -> (f64, f64) {
        let root_n = pow_half(n as f64);
        // Python's max(eps2, x) and max(1.0, x), NaN included: x only when it is larger.
        let rms = p_sq.sqrt() / root_n;
        let alpha = if rms > self.eps2 { rms } else { self.eps2 } * k.rho;
        let ratio = u_sq.sqrt() / (root_n * self.d);
        let denom = if ratio > 1.0 { ratio } else { 1.0 };
        let decay = if self.weight_decay != 0.0 { 1.0 - self.lr * self.weight_decay } else { 1.0 };
        (decay, -alpha / denom)
    }

    fn sign<T: Float>(&self, grad_scale: f64) -> T {
        let scale = T::from_f64(grad_scale);
        if self.maximize {
            -scale
        } else {
            scale
        }
    }
}

/// A vector's first pass: the variance lerped towards `g^2`; `p` and `u` squared and summed.
#[derive(Clone, Copy, Debug)]
struct Second<T> {
    sign: T,
    lerp: Lerp<T>,
    eps1_sq: T,
    /// The step's constants, for the second pass.
    k: Constants,
}

impl<T: Float> Rule<T> for Second<T> {
    const STATES: usize = 1;
    const WRITES: u32 = 0b10;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = g * self.sign;
        s[0] = self.lerp.apply::<A>(s[0], g * g);
        p
    }
    #[inline(always)]
    fn sums<A: Arith>(&self, p: T, g: T, s: &[T; MAX_STATES]) -> [T; 2] {
        [p, scaled(g * self.sign, s[0], self.eps1_sq)]
    }
}

/// A vector's second pass: `p = p * decay + scale * u` (the variance is only read).
#[derive(Clone, Copy, Debug)]
struct Move<T> {
    sign: T,
    eps1_sq: T,
    decay: T,
    scale: T,
}

impl<T: Float> Rule<T> for Move<T> {
    const STATES: usize = 1;
    const WRITES: u32 = 0b1;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        A::madd(scaled(g * self.sign, s[0], self.eps1_sq), self.scale, p * self.decay)
    }
}

/// Lerps a row or column variance towards its mean square, torch's
/// `var.lerp_(norm(g, dim).square_().div_(count), weight)`, from the float64 sums of squares.
struct Means<'a, T> {
    var: &'a mut [T],
    sq: &'a [f64],
    count: T,
    lerp: Lerp<T>,
}

impl<T: Float> SimdKernel for Means<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        for (v, &q) in self.var.iter_mut().zip(self.sq) {
            let norm = T::from_f64(q.sqrt());
            *v = self.lerp.apply::<A>(*v, norm * norm / self.count);
        }
    }
}

/// One Adafactor step over every tensor of a group, in place; every gradient element is
/// multiplied by `grad_scale` as it is read (clipping folded into the step). Checks every
/// tensor before touching any. Unlike torch, which divides by zero, an empty parameter only
/// counts the step.
pub fn step<T: Float + engine::Storage<Arith = T>>(cfg: &AdafactorConfig, tensors: Vec<AdafactorTensor<'_, T>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        check_len("grads", i, t.grad.len(), n)?;
        match &t.var {
            Variance::Full(v) => check_len("variances", i, v.len(), n)?,
            Variance::Factored { f, row_var, col_var } => {
                f.check(&format!("params[{i}]"), n, f.len())?;
                f.check(&format!("row_vars[{i}]"), row_var.len(), f.per_row())?;
                f.check(&format!("col_vars[{i}]"), col_var.len(), f.per_col())?;
            }
        }
    }
    let sign: T = cfg.sign(grad_scale);
    let mut full: Vec<Tensor<'_, T>> = vec![];
    let mut full_states: Vec<[&mut [T]; 1]> = vec![];
    let mut full_steps: Vec<[&mut f32; 1]> = vec![];
    let mut full_buffers = vec![];
    for t in tensors {
        match t.var {
            Variance::Full(v) => {
                full_states.push([v]);
                full_steps.push([t.step]);
                full_buffers.push((t.param, t.grad));
            }
            Variance::Factored { f, row_var, col_var } => factored(cfg, t.param, t.grad, f, row_var, col_var, t.step, sign, level)?,
        }
    }
    for (((param, grad), states), counters) in full_buffers.into_iter().zip(&mut full_states).zip(&mut full_steps) {
        full.push(Tensor { param, grad, states, counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false });
    }
    if full.is_empty() {
        return Ok(());
    }
    const LAYOUT: engine::Layout = (&[("variance", "variances")], &["step"]);
    let swept = engine::sweep(&mut full, LAYOUT, level, |c, _| {
        let k = cfg.constants::<T>(next_step(c));
        Second { sign, lerp: Lerp::new(k.weight), eps1_sq: T::from_f64(k.eps1 * k.eps1), k }
    })?;
    let moves: Vec<Move<T>> = full
        .iter()
        .zip(swept)
        .map(|(t, ((p_sq, u_sq), first))| {
            let (decay, scale) = cfg.last_pass(first.k, p_sq, u_sq, t.param.len());
            Move { sign, eps1_sq: first.eps1_sq, decay: T::from_f64(decay), scale: T::from_f64(scale) }
        })
        .collect();
    engine::apply(&mut full, &moves, level);
    Ok(())
}

/// The three passes of one factored tensor (checked by [`step`], so the passes' own checks
/// pass).
#[allow(clippy::too_many_arguments)]
fn factored<T: Float>(
    cfg: &AdafactorConfig,
    p: &mut [T],
    g: &[T],
    f: Factored,
    row_var: &mut [T],
    col_var: &mut [T],
    step: &mut f32,
    sign: T,
    level: SimdLevel,
) -> Result<(), Error> {
    let k = cfg.constants::<T>(next_step(&mut [step]));
    if p.is_empty() {
        return Ok(());
    }
    let (mut row_sq, mut col_sq) = (vec![0.0; row_var.len()], vec![0.0; col_var.len()]);
    let p_sq = factored_sums(g, p, f, sign, &mut row_sq, &mut col_sq, level)?;
    let lerp = Lerp::new(k.weight);
    simd::dispatch_at(level, Means { var: row_var, sq: &row_sq, count: T::from_f64(f.cols as f64), lerp });
    simd::dispatch_at(level, Means { var: col_var, sq: &col_sq, count: T::from_f64(f.rows as f64), lerp });
    // torch: row_var.mean(dim=-2).clamp_(min=eps1), per batch entry (the sum in float64).
    let eps1 = T::from_f64(k.eps1);
    let row_mean: Vec<T> = row_var
        .chunks(f.rows)
        .map(|r| {
            let m = T::from_f64(sum_f64(r) / f.rows as f64);
            if m < eps1 { eps1 } else { m }
        })
        .collect();
    let s = Stats { row_var, col_var, row_mean: &row_mean, eps1_sq: T::from_f64(k.eps1 * k.eps1), sign };
    let u_sq = factored_update_sq(g, f, s, level)?;
    let (decay, scale) = cfg.last_pass(k, p_sq, u_sq, p.len());
    factored_apply(p, g, f, s, T::from_f64(decay), T::from_f64(scale), level)
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
        let psq = factored_sums(&g, &p, f, 1.0, &mut rs, &mut cs, simd::level()).unwrap();
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
        let s = Stats { row_var: &rv, col_var: &cv, row_mean: &rm, eps1_sq: 1e-30, sign: 1.0 };
        let usq = factored_update_sq(&g, f, s, simd::level()).unwrap();
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
        factored_apply(&mut p2, &g, f, s, 0.9, -0.01, simd::level()).unwrap();
        for (a, b) in p2.iter().zip(&q) {
            assert!((a - b).abs() <= 1e-14 * (1.0 + b.abs()));
        }
        assert!(factored_sums(&g[1..], &p, f, 1.0, &mut rs, &mut cs, simd::level()).is_err());
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
        let s = Stats { row_var: &rv, col_var: &cv, row_mean: &rm, eps1_sq: 1e-30, sign: 1.0 };
        let mut results = vec![];
        for threads in [1, 2, 3] {
            crate::parallel::set_num_threads(threads).unwrap();
            let (mut rs, mut cs) = (vec![0.0; 450], vec![0.0; 903]);
            let psq = factored_sums(&g, &p, f, 1.0, &mut rs, &mut cs, simd::level()).unwrap();
            let usq = factored_update_sq(&g, f, s, simd::level()).unwrap();
            let mut q = p.clone();
            factored_apply(&mut q, &g, f, s, 0.99, -0.01, simd::level()).unwrap();
            results.push((psq.to_bits(), usq.to_bits(), rs, cs, q));
        }
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    /// torch.optim.Adafactor's single-tensor loop, transcribed in float64 (row/column means
    /// of the squared gradient, the lerps, the outer product over the mean row variance).
    fn reference(cfg: &AdafactorConfig, shape: &[usize], p: &mut [f64], g: &[f64], state: &mut [Vec<f64>], step: f64, sign: f64) {
        let w = step.powf(cfg.beta2_decay);
        let rho = cfg.lr.min(1.0 / step.sqrt());
        let n = p.len() as f64;
        let alpha = cfg.eps2.max((p.iter().map(|v| v * v).sum::<f64>() / n).sqrt()) * rho;
        let e1 = cfg.eps1.unwrap_or(f64::EPSILON);
        let g: Vec<f64> = g.iter().map(|v| v * sign).collect();
        let lerp = |s: &mut f64, x: f64| *s += w * (x - *s);
        let u: Vec<f64> = if shape.len() >= 2 {
            let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            let batch = p.len() / (rows * cols);
            let mut u = vec![0.0; p.len()];
            for b in 0..batch {
                let at = |i: usize, j: usize| (b * rows + i) * cols + j;
                for i in 0..rows {
                    lerp(&mut state[0][b * rows + i], (0..cols).map(|j| g[at(i, j)].powi(2)).sum::<f64>() / cols as f64);
                }
                for j in 0..cols {
                    lerp(&mut state[1][b * cols + j], (0..rows).map(|i| g[at(i, j)].powi(2)).sum::<f64>() / rows as f64);
                }
                let rmean = ((0..rows).map(|i| state[0][b * rows + i]).sum::<f64>() / rows as f64).max(e1);
                for i in 0..rows {
                    for j in 0..cols {
                        let v = (state[0][b * rows + i] * state[1][b * cols + j] / rmean).max(e1 * e1);
                        u[at(i, j)] = g[at(i, j)] / v.sqrt();
                    }
                }
            }
            u
        } else {
            state[0].iter_mut().zip(&g).for_each(|(s, x)| lerp(s, x * x));
            state[0].iter().zip(&g).map(|(v, x)| x / v.max(e1 * e1).sqrt()).collect()
        };
        let denom = 1f64.max((u.iter().map(|v| v * v).sum::<f64>() / n).sqrt() / cfg.d);
        for (q, x) in p.iter_mut().zip(&u) {
            *q = *q * (1.0 - cfg.lr * cfg.weight_decay) - alpha / denom * x;
        }
    }

    #[test]
    fn step_matches_torchs_algorithm() {
        let cfg = AdafactorConfig { lr: 0.05, beta2_decay: -0.8, eps1: None, eps2: 1e-3, d: 1.0, weight_decay: 0.1, maximize: true };
        let shapes: [&[usize]; 4] = [&[], &[9000], &[2, 70, 33], &[17, 1]];
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let mut ps: Vec<Vec<f64>> = shapes.iter().enumerate().map(|(k, s)| data(numel(s), k as u64 + 1)).collect();
        let mut want = ps.clone();
        let mut states: Vec<Vec<Vec<f64>>> = shapes
            .iter()
            .map(|s| match s.len() {
                0 | 1 => vec![vec![0.0; numel(s)]],
                k => {
                    let batch: usize = s[..k - 2].iter().product();
                    vec![vec![0.0; batch * s[k - 2]], vec![0.0; batch * s[k - 1]]]
                }
            })
            .collect();
        let mut ref_states = states.clone();
        let mut steps = vec![0f32; shapes.len()];
        for t in 1..=5 {
            let gs: Vec<Vec<f64>> = shapes.iter().enumerate().map(|(k, s)| data(numel(s), 10 * t + k as u64)).collect();
            let tensors = ps
                .iter_mut()
                .zip(&gs)
                .zip(states.iter_mut())
                .zip(steps.iter_mut())
                .zip(shapes)
                .map(|((((p, g), st), step), s)| {
                    let var = match (s.len(), &mut st[..]) {
                        (0 | 1, [v]) => Variance::Full(&mut v[..]),
                        (k, [r, c]) => Variance::Factored {
                            f: Factored { batch: s[..k - 2].iter().product(), rows: s[k - 2], cols: s[k - 1] },
                            row_var: &mut r[..],
                            col_var: &mut c[..],
                        },
                        _ => unreachable!(),
                    };
                    AdafactorTensor { param: &mut p[..], grad: &g[..], var, step }
                })
                .collect();
            step(&cfg, tensors, 0.5, simd::level()).unwrap();
            for (k, s) in shapes.iter().enumerate() {
                reference(&cfg, s, &mut want[k], &gs[k], &mut ref_states[k], t as f64, -0.5);
            }
        }
        assert!(steps.iter().all(|&s| s == 5.0));
        for ((p, q), s) in ps.iter().flatten().zip(want.iter().flatten()).zip(0..) {
            assert!((p - q).abs() <= 1e-12 * q.abs().max(1e-3), "{s}: {p} vs {q}");
        }
        for (a, b) in states.iter().flatten().flatten().zip(ref_states.iter().flatten().flatten()) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-12), "{a} vs {b}");
        }
    }

    #[test]
    fn a_bad_tensor_leaves_every_tensor_untouched() {
        let cfg = AdafactorConfig { lr: 0.01, beta2_decay: -0.8, eps1: None, eps2: 1e-3, d: 1.0, weight_decay: 0.0, maximize: false };
        let (mut p0, g0, mut v0) = (vec![1.0f32; 5], vec![0.5f32; 5], vec![0f32; 5]);
        let (mut p1, g1, mut r1, mut c1) = (vec![1.0f32; 6], vec![0.5f32; 6], vec![0f32; 2], vec![0f32; 4]);
        let (mut s0, mut s1) = (0f32, 0f32);
        let tensors = vec![
            AdafactorTensor { param: &mut p0[..], grad: &g0[..], var: Variance::Full(&mut v0[..]), step: &mut s0 },
            AdafactorTensor {
                param: &mut p1[..],
                grad: &g1[..],
                // 2 x 3 needs 3 column variances, not 4
                var: Variance::Factored { f: Factored { batch: 1, rows: 2, cols: 3 }, row_var: &mut r1[..], col_var: &mut c1[..] },
                step: &mut s1,
            },
        ];
        let e = step(&cfg, tensors, 1.0, simd::level()).unwrap_err();
        assert!(e.message().contains("col_vars[1] has 4 elements"), "{}", e.message());
        assert!(p0.iter().chain(&p1).all(|&x| x == 1.0) && v0.iter().chain(&r1).chain(&c1).all(|&x| x == 0.0));
        assert_eq!((s0, s1), (0.0, 0.0));
    }
}
