//! LAMB (You et al., ICLR 2020, Algorithm 2): Adam's direction, plus decoupled weight decay,
//! scaled per tensor by the trust ratio `||p|| / ||r||`.
//!
//! Two passes, because the ratio needs both norms before any parameter moves: the first
//! updates `m` and `v` and accumulates `||p||^2` and `||r||^2` in fixed blocks (double
//! precision, independent of the thread count, as `reduce::total_norm`); the second
//! recomputes `r` from the updated state and applies `p -= lr * trust * r`.
//! ```text
//! m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//! r = (m/bc1) / (sqrt(v/bc2) + eps) + wd * p          (bc = 1 when bias_correction is off)
//! p = p - lr * trust * r,   trust = ||p|| / ||r||  (1 if either norm is 0)
//! ```

use super::engine::{bias_correction, next_step, Ema, Grad};
use super::hyper::hyper;
use crate::float::Float;
use crate::parallel::{self, Split};
use crate::reduce::{dot_f64, BLOCK};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

hyper! {
    /// LAMB's hyperparameters.
    LambConfig for "lamb" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, bias_correction: bool, maximize: bool }
}

pub struct LambTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub exp_avg: &'a mut [T],
    pub exp_avg_sq: &'a mut [T],
    pub step: &'a mut f32,
}

#[derive(Clone, Copy, Debug)]
struct Scalars<T> {
    g: Grad<T>,
    m: Ema<T>,
    v: Ema<T>,
    inv_bc1: T,
    inv_bc2: T,
    eps: T,
    weight_decay: T,
    /// -lr * trust, set between the passes
    neg_rate: T,
}

impl<T: Float> Scalars<T> {
    #[inline(always)]
    fn direction(&self, p: T, m: T, v: T) -> T {
        m * self.inv_bc1 / ((v * self.inv_bc2).sqrt() + self.eps) + self.weight_decay * p
    }
}

/// Pass 1 over whole blocks: moments, then the partial sums of p^2 and r^2 per block.
struct Moments<'a, T> {
    p: &'a [T],
    g: &'a [T],
    m: &'a mut [T],
    v: &'a mut [T],
    out: &'a mut [(f64, f64)],
    k: Scalars<T>,
}

impl<T: Float> Split for Moments<'_, T> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let blocks = mid.div_ceil(BLOCK).min(self.out.len());
        let at = (blocks * BLOCK).min(self.p.len());
        let (p0, p1) = self.p.split_at(at);
        let (g0, g1) = self.g.split_at(at);
        let (m0, m1) = self.m.split_at_mut(at);
        let (v0, v1) = self.v.split_at_mut(at);
        let (o0, o1) = self.out.split_at_mut(blocks);
        (Moments { p: p0, g: g0, m: m0, v: v0, out: o0, k: self.k }, Moments { p: p1, g: g1, m: m1, v: v1, out: o1, k: self.k })
    }
}

impl<T: Float> SimdKernel for Moments<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let k = self.k;
        // Each block in two vectorizable loops: the moments and the direction r into a
        // block-sized scratch (in L1), then the float64 sums of p^2 and r^2.
        let mut r = vec![T::ZERO; BLOCK.min(self.p.len())];
        let blocks = self.p.chunks(BLOCK).zip(self.g.chunks(BLOCK)).zip(self.m.chunks_mut(BLOCK)).zip(self.v.chunks_mut(BLOCK));
        for ((((p, g), m), v), slot) in blocks.zip(self.out.iter_mut()) {
            let n = p.len();
            let (g, m, v, r) = (&g[..n], &mut m[..n], &mut v[..n], &mut r[..n]);
            for i in 0..n {
                let gi = k.g.plain(g[i]);
                let mi = k.m.mean::<A>(m[i], gi);
                let vi = k.v.square::<A>(v[i], gi);
                m[i] = mi;
                v[i] = vi;
                r[i] = k.direction(p[i], mi, vi);
            }
            *slot = (dot_f64(p, p), dot_f64(r, r));
        }
    }
}

/// Pass 2: p -= lr * trust * r.
struct Apply<'a, T> {
    p: &'a mut [T],
    m: &'a [T],
    v: &'a [T],
    k: Scalars<T>,
}

impl<T: Float> Split for Apply<'_, T> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (m0, m1) = self.m.split_at(mid);
        let (v0, v1) = self.v.split_at(mid);
        (Apply { p: p0, m: m0, v: v0, k: self.k }, Apply { p: p1, m: m1, v: v1, k: self.k })
    }
}

impl<T: Float> SimdKernel for Apply<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let n = self.p.len();
        let (m, v) = (&self.m[..n], &self.v[..n]);
        for i in 0..n {
            let pi = self.p[i];
            self.p[i] = A::madd(self.k.direction(pi, m[i], v[i]), self.k.neg_rate, pi);
        }
    }
}

/// One LAMB step over every tensor of a group, in place.
pub fn lamb_step<T: Float>(tensors: Vec<LambTensor<'_, T>>, cfg: &LambConfig, grad_scale: f64) -> Result<(), Error> {
    lamb_step_at(tensors, cfg, grad_scale, simd::level())
}

pub(crate) fn lamb_step_at<T: Float>(tensors: Vec<LambTensor<'_, T>>, cfg: &LambConfig, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        check_len("grads", i, t.grad.len(), n)?;
        check_len("exp_avgs", i, t.exp_avg.len(), n)?;
        check_len("exp_avg_sqs", i, t.exp_avg_sq.len(), n)?;
    }
    let g = Grad::new(cfg.maximize, grad_scale, 0.0, false, cfg.lr);
    let counts: Vec<usize> = tensors.iter().map(|t| t.param.len().div_ceil(BLOCK)).collect();
    let mut partials = vec![(0.0f64, 0.0f64); counts.iter().sum()];
    let mut scalars = Vec::with_capacity(tensors.len());
    let mut rest: &mut [(f64, f64)] = &mut partials;
    let mut bufs = Vec::with_capacity(tensors.len());
    let mut outs = Vec::with_capacity(tensors.len());
    for (t, &n) in tensors.into_iter().zip(&counts) {
        let step = next_step(&mut [&mut *t.step]);
        let (bc1, bc2) =
            if cfg.bias_correction { (bias_correction(cfg.beta1, step), bias_correction(cfg.beta2, step)) } else { (1.0, 1.0) };
        scalars.push(Scalars {
            g,
            m: Ema::new(cfg.beta1),
            v: Ema::new(cfg.beta2),
            inv_bc1: T::from_f64(1.0 / bc1),
            inv_bc2: T::from_f64(1.0 / bc2),
            eps: T::from_f64(cfg.eps),
            weight_decay: T::from_f64(cfg.weight_decay),
            neg_rate: T::ZERO,
        });
        let (out, tail) = rest.split_at_mut(n);
        rest = tail;
        outs.push(out);
        bufs.push((t.param, t.grad, t.exp_avg, t.exp_avg_sq));
    }
    // Pass 1 reads the parameters and fills the partial sums.
    let pass1: Vec<Moments<'_, T>> = bufs
        .iter_mut()
        .zip(outs)
        .zip(&scalars)
        .map(|(((p, g, m, v), out), k)| Moments { p: &**p, g: *g, m: &mut **m, v: &mut **v, out, k: *k })
        .collect();
    parallel::for_each(pass1, |c| simd::dispatch_at(level, c));
    // The trust ratio of each tensor, from its partials in block order.
    let mut start = 0;
    let mut seconds = Vec::with_capacity(bufs.len());
    for ((p, _g, m, v), (k, &n)) in bufs.iter_mut().zip(scalars.iter().zip(&counts)) {
        let (pp, rr) = partials[start..start + n].iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        start += n;
        let (pn, rn) = (pp.sqrt(), rr.sqrt());
        let trust = if pn > 0.0 && rn > 0.0 { pn / rn } else { 1.0 };
        let k = Scalars { neg_rate: T::from_f64(-cfg.lr * trust), ..*k };
        seconds.push(Apply { p: &mut **p, m: &**m, v: &**v, k });
    }
    parallel::for_each(seconds, |c| simd::dispatch_at(level, c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::data;

    #[test]
    fn trust_ratio_and_thread_independence() {
        let _lock = crate::test_util::global();
        let n = 3 * BLOCK + 11;
        let cfg = LambConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-6, weight_decay: 0.01, bias_correction: true, maximize: false };
        let mut results = vec![];
        for threads in [1, 2] {
            crate::parallel::set_num_threads(threads).unwrap();
            for level in available() {
                let (mut p, g) = (data::<f64>(n, 1), data::<f64>(n, 2));
                let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
                let mut step = 0.0f32;
                let t = LambTensor { param: &mut p, grad: &g, exp_avg: &mut m, exp_avg_sq: &mut v, step: &mut step };
                lamb_step_at(vec![t], &cfg, 1.0, level).unwrap();
                results.push((level, p));
            }
        }
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        // the same bits for a level, whatever the thread count
        for (l, p) in &results {
            let same = results.iter().filter(|(m, _)| m == l).all(|(_, q)| q.iter().zip(p).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(same, "{l:?}");
        }
        // first step: m_hat = g, v_hat = g^2, r = g/(|g|+eps) + wd*p; trust = ||p0||/||r||
        let (p0, g) = (data::<f64>(n, 1), data::<f64>(n, 2));
        let r: Vec<f64> = p0.iter().zip(&g).map(|(p, g)| g / (g.abs() + 1e-6) + 0.01 * p).collect();
        let trust = p0.iter().map(|x| x * x).sum::<f64>().sqrt() / r.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (i, q) in results[0].1.iter().enumerate() {
            let want = p0[i] - 0.01 * trust * r[i];
            assert!((q - want).abs() <= 1e-12 * want.abs().max(1.0), "{i}: {q} vs {want}");
        }
    }
}
