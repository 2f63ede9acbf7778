//! Gradient norms and the in-place element-wise passes of gradient clipping.
//!
//! [`total_norm`] is one reduction over all tensors whose result does not depend on the thread
//! count or the SIMD level: every tensor is cut into fixed blocks of [`BLOCK`] elements, each
//! block's partial (a sum in double precision over 8 fixed lanes, or a maximum/minimum) is
//! written to its own slot, whichever thread computes it, and the slots are combined in order.
//!
//! float16 and bfloat16 values ([`ClipValue`]) are widened exactly to float32 a block or a
//! tile at a time: the norm is that of their float32 copies, bit for bit, and scaling or
//! clamping is done in float32 and rounded once to nearest even (torch's results), without
//! a float32 copy of the tensors.

use crate::float::{nan_max, Float};
use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel};
use crate::Error;


/// Elements per partial of a reduction (a multiple of 64).
pub const BLOCK: usize = 8192;

/// Which norm: torch's `norm_type` (2, 1, inf, -inf, 0 = count of non-zeros, or p > 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    L2,
    L1,
    Inf,
    NegInf,
    Zero,
    P(f64),
}

impl Norm {
    pub fn from_order(p: f64) -> Result<Norm, Error> {
        Ok(match p {
            x if x == 2.0 => Norm::L2,
            x if x == 1.0 => Norm::L1,
            x if x == f64::INFINITY => Norm::Inf,
            x if x == f64::NEG_INFINITY => Norm::NegInf,
            x if x == 0.0 => Norm::Zero,
            x if x > 0.0 && x.is_finite() => Norm::P(x),
            x => return Err(Error::value(format!("norm_type must be positive, 0, inf or -inf, got {x}"))),
        })
    }

    /// The partial of an empty set and the start of every block's accumulation.
    fn identity(self) -> f64 {
        match self {
            Norm::Inf => 0.0,
            Norm::NegInf => f64::INFINITY,
            _ => 0.0,
        }
    }

    fn combine(self, a: f64, b: f64) -> f64 {
        match self {
            Norm::Inf => nan_max(a, b),
            Norm::NegInf => {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.min(b)
                }
            }
            _ => a + b,
        }
    }

    fn finish(self, acc: f64) -> f64 {
        match self {
            Norm::L2 => acc.sqrt(),
            Norm::P(p) => acc.powf(1.0 / p),
            _ => acc,
        }
    }
}

#[inline(always)]
fn lanes<T: Float>(x: &[T], norm: Norm) -> f64 {
    let mut acc = [norm.identity(); 8];
    let mut chunks = x.chunks_exact(8);
    match norm {
        Norm::L2 => {
            for c in &mut chunks {
                for j in 0..8 {
                    let v = c[j].to_f64();
                    acc[j] += v * v;
                }
            }
            for (j, v) in chunks.remainder().iter().enumerate() {
                let v = v.to_f64();
                acc[j] += v * v;
            }
        }
        Norm::L1 => {
            for c in &mut chunks {
                for j in 0..8 {
                    acc[j] += c[j].to_f64().abs();
                }
            }
            for (j, v) in chunks.remainder().iter().enumerate() {
                acc[j] += v.to_f64().abs();
            }
        }
        Norm::Zero => {
            for c in &mut chunks {
                for j in 0..8 {
                    acc[j] += if c[j] != T::ZERO { 1.0 } else { 0.0 };
                }
            }
            for (j, v) in chunks.remainder().iter().enumerate() {
                acc[j] += if *v != T::ZERO { 1.0 } else { 0.0 };
            }
        }
        Norm::Inf | Norm::NegInf => {
            for (j, v) in x.iter().enumerate() {
                acc[j % 8] = norm.combine(acc[j % 8], v.to_f64().abs());
            }
        }
        Norm::P(p) => {
            for (j, v) in x.iter().enumerate() {
                acc[j % 8] += v.to_f64().abs().powf(p);
            }
        }
    }
    acc.iter().fold(norm.identity(), |a, &b| norm.combine(a, b))
}

/// Sum in float64 over 8 lanes.
#[inline(always)]
pub(crate) fn sum_f64<T: Float>(row: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            acc[j] += c[j].to_f64();
        }
    }
    chunks.remainder().iter().map(|v| v.to_f64()).sum::<f64>() + acc.iter().sum::<f64>()
}

/// Dot product in float64 over 8 lanes.
#[inline(always)]
pub(crate) fn dot_f64<T: Float>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            acc[j] += x[j].to_f64() * y[j].to_f64();
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x.to_f64() * y.to_f64())
        .sum::<f64>()
        + acc.iter().sum::<f64>()
}

/// The values the clipping passes read and write: float32 and float64 as they are, float16
/// and bfloat16 through float32 (widened exactly, rounded once to nearest even).
pub trait ClipValue: Copy + Send + Sync {
    /// The arithmetic type.
    type Arith: Float;
    /// One block's partial of `norm` (at most [`BLOCK`] values): the same as the partial of
    /// the block's values in `Arith`.
    fn partial<A: Arith>(block: &[Self], norm: Norm) -> f64;
    /// Every value replaced by `f` of it, computed in `Arith`.
    fn map<A: Arith>(data: &mut [Self], f: impl Fn(Self::Arith) -> Self::Arith);
}

macro_rules! clip_as_is {
    ($($t:ty),*) => {$(
        impl ClipValue for $t {
            type Arith = $t;
            #[inline(always)]
            fn partial<A: Arith>(block: &[$t], norm: Norm) -> f64 {
                lanes(block, norm)
            }
            #[inline(always)]
            fn map<A: Arith>(data: &mut [$t], f: impl Fn($t) -> $t) {
                data.iter_mut().for_each(|x| *x = f(*x));
            }
        }
    )*};
}

clip_as_is!(f32, f64);

macro_rules! clip_widened {
    ($($t:ty),*) => {$(
        impl ClipValue for $t {
            type Arith = f32;
            #[inline(always)]
            fn partial<A: Arith>(block: &[$t], norm: Norm) -> f64 {
                let mut wide = [0f32; BLOCK];
                let wide = &mut wide[..block.len()];
                <$t as crate::optim::engine::Storage>::load_all::<A>(block, wide);
                lanes(wide, norm)
            }
            #[inline(always)]
            fn map<A: Arith>(data: &mut [$t], f: impl Fn(f32) -> f32) {
                use crate::optim::engine::Storage;
                let mut tile = [0f32; 1024];
                for part in data.chunks_mut(1024) {
                    let tile = &mut tile[..part.len()];
                    <$t>::load_all::<A>(part, tile);
                    tile.iter_mut().for_each(|x| *x = f(*x));
                    <$t>::store_all::<A>(tile, part);
                }
            }
        }
    )*};
}

clip_widened!(crate::half::Bf16, crate::half::F16);

/// A run of whole blocks of one tensor and the slots of their partials.
struct Blocks<'a, T> {
    data: &'a [T],
    out: &'a mut [f64],
    norm: Norm,
}

impl<T: ClipValue> Split for Blocks<'_, T> {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        // Cut on a block boundary (at or after `mid`) so the partials do not change.
        let blocks = mid.div_ceil(BLOCK).min(self.out.len());
        let at = (blocks * BLOCK).min(self.data.len());
        let (d0, d1) = self.data.split_at(at);
        let (o0, o1) = self.out.split_at_mut(blocks);
        (Blocks { data: d0, out: o0, norm: self.norm }, Blocks { data: d1, out: o1, norm: self.norm })
    }
}

impl<T: ClipValue> SimdKernel for Blocks<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        for (slot, block) in self.out.iter_mut().zip(self.data.chunks(BLOCK)) {
            *slot = T::partial::<A>(block, self.norm);
        }
    }
}

/// The norm of all elements of all `tensors` together (torch's `get_total_norm`, which is
/// the same as the norm of the per-tensor norms), accumulated in double precision.
pub fn total_norm<T: ClipValue>(tensors: &[&[T]], norm: Norm) -> f64 {
    let counts: Vec<usize> = tensors.iter().map(|t| t.len().div_ceil(BLOCK)).collect();
    let mut partials = vec![norm.identity(); counts.iter().sum()];
    let mut rest: &mut [f64] = &mut partials;
    let mut runs = Vec::with_capacity(tensors.len());
    for (t, &n) in tensors.iter().zip(&counts) {
        let (out, tail) = rest.split_at_mut(n);
        rest = tail;
        runs.push(Blocks { data: t, out, norm });
    }
    parallel::for_each(runs, simd::dispatch);
    let acc = partials.iter().fold(norm.identity(), |a, &b| norm.combine(a, b));
    norm.finish(acc)
}

struct Scale<'a, T: ClipValue> {
    data: &'a mut [T],
    factor: T::Arith,
    clamp: Option<(T::Arith, T::Arith)>,
}

impl<T: ClipValue> Split for Scale<'_, T> {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (a, b) = self.data.split_at_mut(mid);
        (Scale { data: a, ..self }, Scale { data: b, factor: self.factor, clamp: self.clamp })
    }
}

impl<T: ClipValue> SimdKernel for Scale<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let factor = self.factor;
        match self.clamp {
            None => T::map::<A>(self.data, |x| x * factor),
            // torch's clamp_: NaN stays NaN.
            Some((lo, hi)) => T::map::<A>(self.data, |v| if v > hi { hi } else if v < lo { lo } else { v }),
        }
    }
}

/// Multiplies every element of every tensor by `factor` (torch's `g.mul_(clip_coef)`).
pub fn scale<T: ClipValue>(tensors: Vec<&mut [T]>, factor: T::Arith) {
    let items = tensors.into_iter().map(|data| Scale { data, factor, clamp: None }).collect();
    parallel::for_each(items, simd::dispatch);
}

/// Clamps every element into `[lo, hi]` in place (torch's `clip_grad_value_`).
pub fn clamp<T: ClipValue>(tensors: Vec<&mut [T]>, lo: T::Arith, hi: T::Arith) {
    let items = tensors.into_iter().map(|data| Scale { data, factor: T::Arith::ONE, clamp: Some((lo, hi)) }).collect();
    parallel::for_each(items, simd::dispatch);
}

/// Pairs of blocks of two vectors and the slots of their partial dot products.
struct DotBlocks<'a, T> {
    a: &'a [T],
    b: &'a [T],
    out: &'a mut [f64],
}

impl<T: Float> Split for DotBlocks<'_, T> {
    fn len(&self) -> usize {
        self.a.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let blocks = mid.div_ceil(BLOCK).min(self.out.len());
        let at = (blocks * BLOCK).min(self.a.len());
        let (a0, a1) = self.a.split_at(at);
        let (b0, b1) = self.b.split_at(at);
        let (o0, o1) = self.out.split_at_mut(blocks);
        (DotBlocks { a: a0, b: b0, out: o0 }, DotBlocks { a: a1, b: b1, out: o1 })
    }
}

/// Lanes of the dot products: element i of a block adds to lane i % 32, kept as four
/// accumulators of eight float64 lanes (four independent AVX-512 registers), so the sum is not
/// one chain of dependent additions (with one accumulator a dot product ran at the adder's
/// latency). The lanes are summed in order at the end of the block.
const DOT_LANES: usize = 32;

#[derive(Clone, Copy)]
struct Lanes([[f64; 8]; 4]);

impl Lanes {
    #[inline(always)]
    fn new() -> Self {
        Lanes([[0.0; 8]; 4])
    }
    /// Adds the 32 products `x[j] * y[j]` to lanes j = 0..32 (slices of 32; a plain function,
    /// not a closure, so it inlines into the `#[target_feature]` wrapper and vectorizes).
    #[inline(always)]
    fn add_products<T: Float>(&mut self, x: &[T], y: &[T]) {
        let (x, y) = (&x[..DOT_LANES], &y[..DOT_LANES]);
        let [a0, a1, a2, a3] = &mut self.0;
        for j in 0..8 {
            a0[j] += x[j].to_f64() * y[j].to_f64();
            a1[j] += x[8 + j].to_f64() * y[8 + j].to_f64();
            a2[j] += x[16 + j].to_f64() * y[16 + j].to_f64();
            a3[j] += x[24 + j].to_f64() * y[24 + j].to_f64();
        }
    }
    #[inline(always)]
    fn add(&mut self, lane: usize, v: f64) {
        self.0[lane / 8][lane % 8] += v;
    }
    #[inline(always)]
    fn sum(&self) -> f64 {
        self.0.iter().flatten().sum()
    }
}

/// Adds `a[i] * b[i]` to lane `i % DOT_LANES`, whole rows of lanes first: a block's partial
/// dot product (the one definition, shared with `axpy_dot`).
#[inline(always)]
fn block_dot<T: Float>(a: &[T], b: &[T]) -> f64 {
    let n = a.len();
    let b = &b[..n];
    let mut acc = Lanes::new();
    let full = n - n % DOT_LANES;
    for base in (0..full).step_by(DOT_LANES) {
        acc.add_products(&a[base..], &b[base..]);
    }
    for i in full..n {
        acc.add(i - full, a[i].to_f64() * b[i].to_f64());
    }
    acc.sum()
}

impl<T: Float> SimdKernel for DotBlocks<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        for ((slot, a), b) in self.out.iter_mut().zip(self.a.chunks(BLOCK)).zip(self.b.chunks(BLOCK)) {
            *slot = block_dot(a, b);
        }
    }
}

/// The dot product of two equally long vectors, accumulated in double precision in fixed
/// blocks (the same result whatever the thread count).
pub fn dot<T: Float>(a: &[T], b: &[T]) -> Result<f64, Error> {
    if a.len() != b.len() {
        return Err(Error::value(format!("dot of {} and {} elements", a.len(), b.len())));
    }
    let mut partials = vec![0.0f64; a.len().div_ceil(BLOCK)];
    parallel::for_each(vec![DotBlocks { a, b, out: &mut partials }], simd::dispatch);
    Ok(partials.iter().sum())
}

struct Axpy<'a, T> {
    y: &'a mut [T],
    x: &'a [T],
    alpha: T,
}

impl<T: Float> Split for Axpy<'_, T> {
    fn len(&self) -> usize {
        self.y.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (y0, y1) = self.y.split_at_mut(mid);
        let (x0, x1) = self.x.split_at(mid);
        (Axpy { y: y0, x: x0, alpha: self.alpha }, Axpy { y: y1, x: x1, alpha: self.alpha })
    }
}

impl<T: Float> SimdKernel for Axpy<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let n = self.y.len();
        let x = &self.x[..n];
        for i in 0..n {
            self.y[i] = A::madd(x[i], self.alpha, self.y[i]);
        }
    }
}

/// Blocks of `y += alpha * x` followed by the partial dot products `z . y` of the same blocks.
struct AxpyDotBlocks<'a, T> {
    y: &'a mut [T],
    x: &'a [T],
    z: &'a [T],
    alpha: T,
    out: &'a mut [f64],
}

impl<T: Float> Split for AxpyDotBlocks<'_, T> {
    fn len(&self) -> usize {
        self.y.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let blocks = mid.div_ceil(BLOCK).min(self.out.len());
        let at = (blocks * BLOCK).min(self.y.len());
        let (y0, y1) = self.y.split_at_mut(at);
        let (x0, x1) = self.x.split_at(at);
        let (z0, z1) = self.z.split_at(at);
        let (o0, o1) = self.out.split_at_mut(blocks);
        let alpha = self.alpha;
        (AxpyDotBlocks { y: y0, x: x0, z: z0, alpha, out: o0 }, AxpyDotBlocks { y: y1, x: x1, z: z1, alpha, out: o1 })
    }
}

impl<T: Float> SimdKernel for AxpyDotBlocks<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let AxpyDotBlocks { y, x, z, alpha, out } = self;
        for ((slot, y), (x, z)) in out.iter_mut().zip(y.chunks_mut(BLOCK)).zip(x.chunks(BLOCK).zip(z.chunks(BLOCK))) {
            // The same arithmetic, in the same blocks, lanes and order, as `axpy` then `dot`,
            // in one loop: each updated element is multiplied into its lane at once.
            let n = y.len();
            let (x, z) = (&x[..n], &z[..n]);
            let mut acc = Lanes::new();
            // Runs of 256 elements (L1-resident): the axpy loop, then the run's products into
            // the lanes. (One loop over both vectorized poorly: the updated row could not be
            // proven apart from `x`.)
            for start in (0..n).step_by(256) {
                let end = (start + 256).min(n);
                let (yr, xr) = (&mut y[start..end], &x[start..end]);
                for i in 0..yr.len() {
                    yr[i] = A::madd(xr[i], alpha, yr[i]);
                }
                let full = start + (end - start) / DOT_LANES * DOT_LANES;
                for base in (start..full).step_by(DOT_LANES) {
                    acc.add_products(&z[base..], &y[base..]);
                }
                for i in full..end {
                    acc.add(i % DOT_LANES, z[i].to_f64() * y[i].to_f64());
                }
            }
            *slot = acc.sum();
        }
    }
}

/// `y += alpha * x`, then returns `z . y`, in one pass over memory; bit-identical to
/// [`axpy`] followed by [`dot`] (L-BFGS's two-loop recursion alternates the two).
pub fn axpy_dot<T: Float>(y: &mut [T], alpha: T, x: &[T], z: &[T]) -> Result<f64, Error> {
    if y.len() != x.len() || y.len() != z.len() {
        return Err(Error::value(format!("axpy_dot of {}, {} and {} elements", y.len(), x.len(), z.len())));
    }
    let mut partials = vec![0.0f64; y.len().div_ceil(BLOCK)];
    parallel::for_each(vec![AxpyDotBlocks { y, x, z, alpha, out: &mut partials }], simd::dispatch);
    Ok(partials.iter().sum())
}

/// `y += alpha * x` in place (torch's `y.add_(x, alpha=alpha)`: one rounding with FMA).
pub fn axpy<T: Float>(y: &mut [T], alpha: T, x: &[T]) -> Result<(), Error> {
    if y.len() != x.len() {
        return Err(Error::value(format!("axpy of {} and {} elements", y.len(), x.len())));
    }
    parallel::for_each(vec![Axpy { y, x, alpha }], simd::dispatch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    fn naive(ts: &[Vec<f64>], norm: Norm) -> f64 {
        let all: Vec<f64> = ts.iter().flatten().map(|x| x.abs()).collect();
        match norm {
            Norm::L2 => all.iter().map(|x| x * x).sum::<f64>().sqrt(),
            Norm::L1 => all.iter().sum(),
            Norm::Inf => all.iter().cloned().fold(0.0, f64::max),
            Norm::NegInf => all.iter().cloned().fold(f64::INFINITY, f64::min),
            Norm::Zero => all.iter().filter(|&&x| x != 0.0).count() as f64,
            Norm::P(p) => all.iter().map(|x| x.powf(p)).sum::<f64>().powf(1.0 / p),
        }
    }

    #[test]
    fn norms_match_a_naive_reference_and_ignore_thread_count() {
        let _lock = crate::test_util::global();
        let sizes = [0usize, 1, 7, 8, 9, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, 70_000];
        let ts: Vec<Vec<f64>> = sizes.iter().enumerate().map(|(i, &n)| data::<f64>(n, i as u64 + 1)).collect();
        let slices: Vec<&[f64]> = ts.iter().map(|t| t.as_slice()).collect();
        for norm in [Norm::L2, Norm::L1, Norm::Inf, Norm::NegInf, Norm::Zero, Norm::P(3.0), Norm::P(0.5)] {
            let mut results = vec![];
            for threads in [1, 2, 3] {
                crate::parallel::set_num_threads(threads).unwrap();
                results.push(total_norm(&slices, norm));
            }
            crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
            assert!(results.iter().all(|r| r.to_bits() == results[0].to_bits()), "{norm:?} {results:?}");
            let want = naive(&ts, norm);
            assert!((results[0] - want).abs() <= 1e-12 * want.abs().max(1.0), "{norm:?}: {} vs {want}", results[0]);
        }
        assert_eq!(total_norm::<f32>(&[], Norm::L2), 0.0);
        let with_nan = [1.0f32, f32::NAN, 2.0];
        assert!(total_norm(&[&with_nan[..]], Norm::L2).is_nan());
        assert!(total_norm(&[&with_nan[..]], Norm::Inf).is_nan());
        assert!(Norm::from_order(-1.0).is_err());
    }

    /// float16 and bfloat16: the norm of their float32 copies bit for bit (any thread count,
    /// every norm), and scaling and clamping in float32 rounded once, NaNs kept.
    #[test]
    fn sixteen_bit_values_are_read_as_their_float32_copies() {
        use crate::half::{Bf16, F16};
        use crate::optim::engine::Storage;
        fn check<H: ClipValue<Arith = f32> + Storage<Arith = f32> + PartialEq + std::fmt::Debug>() {
            let sizes = [0usize, 1, 9, BLOCK + 1, 3 * BLOCK + 5, 70_000];
            let mut ts: Vec<Vec<H>> = sizes.iter().enumerate()
                .map(|(i, &n)| data::<f32>(n, i as u64 + 1).into_iter().map(|x| H::store(x * 3.0)).collect()).collect();
            ts[2][4] = H::store(f32::NAN);
            let wide: Vec<Vec<f32>> = ts.iter().map(|t| t.iter().map(|x| x.load()).collect()).collect();
            let (halves, floats): (Vec<&[H]>, Vec<&[f32]>) = (ts.iter().map(|t| &t[..]).collect(), wide.iter().map(|t| &t[..]).collect());
            let clean: Vec<&[H]> = halves.iter().enumerate().filter(|&(i, _)| i != 2).map(|(_, t)| *t).collect();
            let clean32: Vec<&[f32]> = floats.iter().enumerate().filter(|&(i, _)| i != 2).map(|(_, t)| *t).collect();
            for norm in [Norm::L2, Norm::L1, Norm::Inf, Norm::NegInf, Norm::Zero, Norm::P(3.0)] {
                for threads in [1, 2, 3] {
                    crate::parallel::set_num_threads(threads).unwrap();
                    assert_eq!(total_norm(&clean, norm).to_bits(), total_norm(&clean32, norm).to_bits(), "{norm:?}");
                    assert!(total_norm(&halves, norm).is_nan() || matches!(norm, Norm::Zero | Norm::NegInf));
                }
            }
            crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
            let mut scaled = ts.clone();
            scale(scaled.iter_mut().map(|t| &mut t[..]).collect(), 0.3f32);
            let mut clamped = ts.clone();
            clamp(clamped.iter_mut().map(|t| &mut t[..]).collect(), -0.5f32, 0.5);
            for ((s, c), w) in scaled.iter().zip(&clamped).zip(&wide) {
                for ((s, c), &x) in s.iter().zip(c).zip(w) {
                    assert_eq!(s.load().to_bits(), H::store(x * 0.3).load().to_bits());
                    let want = if x.is_nan() { x } else { x.clamp(-0.5, 0.5) };
                    assert_eq!(c.load().to_bits(), H::store(want).load().to_bits());
                }
            }
        }
        let _lock = crate::test_util::global();
        check::<Bf16>();
        check::<F16>();
    }

    #[test]
    fn dot_and_axpy() {
        let _lock = crate::test_util::global();
        let n = 3 * BLOCK + 13;
        let (a, b) = (data::<f64>(n, 1), data::<f64>(n, 2));
        let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let got = dot(&a, &b).unwrap();
        assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0));
        crate::parallel::set_num_threads(1).unwrap();
        let one = dot(&a, &b).unwrap();
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        assert_eq!(one.to_bits(), got.to_bits());
        let mut y = a.clone();
        axpy(&mut y, 0.5, &b).unwrap();
        assert!(y.iter().zip(a.iter().zip(&b)).all(|(y, (a, b))| (y - (a + 0.5 * b)).abs() <= 1e-15 * (a.abs() + b.abs() + 1.0)));
        assert!(dot(&a[..3], &b[..4]).is_err() && axpy(&mut y[..3], 1.0, &b[..4]).is_err());
    }

    #[test]
    fn scale_and_clamp_in_place() {
        let mut a = data::<f32>(BLOCK * 5 + 3, 4);
        let before = a.clone();
        scale(vec![&mut a[..]], 0.5);
        assert!(a.iter().zip(&before).all(|(x, y)| *x == *y * 0.5));
        let mut b = vec![-3.0f32, -0.5, 0.0, 0.5, 3.0, f32::NAN];
        clamp(vec![&mut b[..]], -1.0, 1.0);
        assert_eq!(&b[..5], &[-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert!(b[5].is_nan());
    }

    #[test]
    fn axpy_dot_is_axpy_then_dot() {
        let _g = crate::test_util::global();
        for n in [0usize, 1, 7, 8191, 8192, 8193, 100_003] {
            let x: Vec<f64> = crate::test_util::data(n, 1);
            let z: Vec<f64> = crate::test_util::data(n, 2);
            let y0: Vec<f64> = crate::test_util::data(n, 3);
            for threads in [1, 2] {
                crate::parallel::set_num_threads(threads).unwrap();
                let (mut a, mut b) = (y0.clone(), y0.clone());
                let d = axpy_dot(&mut a, 0.37, &x, &z).unwrap();
                axpy(&mut b, 0.37, &x).unwrap();
                assert_eq!(a, b);
                assert_eq!(d.to_bits(), dot(&z, &b).unwrap().to_bits());
            }
        }
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        assert!(axpy_dot(&mut [0.0f32; 2], 1.0, &[0.0; 2], &[0.0; 3]).is_err());
    }
}
