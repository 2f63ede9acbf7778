//! LAMB (You et al., ICLR 2020, Algorithm 2): Adam's direction, plus decoupled weight decay,
//! scaled per tensor by the trust ratio `||p|| / ||r||`.
//!
//! Two passes of the engine, because the ratio needs both norms before any parameter moves:
//! a reducing pass ([`engine::sweep`]) updates `m` and `v` and sums `p^2` and `r^2` (float64,
//! fixed blocks, independent of the thread count); then [`engine::apply`] recomputes `r` from
//! the updated state and applies `p -= lr * trust * r`, reading the moments without writing
//! them back.
//! ```text
//! m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//! r = (m/bc1) / (sqrt(v/bc2) + eps) + wd * p          (bc = 1 when bias_correction is off)
//! p = p - lr * trust * r,   trust = ||p|| / ||r||  (1 if either norm is 0; NaN if either is NaN)
//! ```

use super::engine::{self, bias_correction, next_step, Ema, Grad, Layout, Rule, Storage, Tensor, MAX_STATES};
use super::hyper::hyper;
use crate::float::Float;
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// LAMB's hyperparameters.
    /// LAMB's hyperparameters. `bias_correction`: the moments divided by `1 - beta**t` before
    /// the ratio (the paper's Algorithm 2, optax); `debias_step`: instead the step size
    /// multiplied by `sqrt(1 - beta2**t) / (1 - beta1**t)` after it (torch-optimizer's
    /// `debias`); `clamp`: the parameter's norm clamped to at most this in the ratio (their
    /// `clamp_value`; infinite: none).
    LambConfig for "lamb" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, bias_correction: bool, debias_step: bool, clamp: f64, maximize: bool }
}

/// Adam's moments and the step counter.
pub const LAYOUT: Layout = (&[("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")], &["step"]);

#[derive(Clone, Copy, Debug)]
struct Scalars<T> {
    g: Grad<T>,
    m: Ema<T>,
    v: Ema<T>,
    inv_bc1: T,
    inv_bc2: T,
    eps: T,
    weight_decay: T,
    /// The step size before the trust ratio: `lr`, or with `debias_step`
    /// `lr * sqrt(1 - beta2**t) / (1 - beta1**t)`.
    rate: f64,
}

impl<T: Float> Scalars<T> {
    fn new(cfg: &LambConfig, grad_scale: f64, step: f64) -> Self {
        let (bc1, bc2) = if cfg.bias_correction && !cfg.debias_step {
            (bias_correction(cfg.beta1, step), bias_correction(cfg.beta2, step))
        } else {
            (1.0, 1.0)
        };
        Scalars {
            g: Grad::new(cfg.maximize, grad_scale, 0.0, false, cfg.lr),
            m: Ema::new(cfg.beta1),
            v: Ema::new(cfg.beta2),
            inv_bc1: T::from_f64(1.0 / bc1),
            inv_bc2: T::from_f64(1.0 / bc2),
            eps: T::from_f64(cfg.eps),
            weight_decay: T::from_f64(cfg.weight_decay),
            rate: if cfg.debias_step {
                cfg.lr * (bias_correction(cfg.beta2, step).sqrt() / bias_correction(cfg.beta1, step))
            } else {
                cfg.lr
            },
        }
    }

    #[inline(always)]
    fn direction(&self, p: T, m: T, v: T) -> T {
        m * self.inv_bc1 / ((v * self.inv_bc2).sqrt() + self.eps) + self.weight_decay * p
    }
}

/// Pass 1: the moments (the parameter is only read), then `p` and `r` to square.
#[derive(Clone, Copy, Debug)]
struct Moments<T>(Scalars<T>);

impl<T: Float> Rule<T> for Moments<T> {
    const STATES: usize = 2;
    const WRITES: u32 = 0b110;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.0.g.plain(g);
        s[0] = self.0.m.mean::<A>(s[0], g);
        s[1] = self.0.v.square::<A>(s[1], g);
        p
    }
    #[inline(always)]
    fn sums<A: Arith>(&self, p: T, _g: T, s: &[T; MAX_STATES]) -> [T; 2] {
        [p, self.0.direction(p, s[0], s[1])]
    }
}

/// Pass 2: `p -= lr * trust * r` (the moments are only read).
#[derive(Clone, Copy, Debug)]
struct Step<T> {
    k: Scalars<T>,
    /// -lr * trust
    neg_rate: T,
}

impl<T: Float> Rule<T> for Step<T> {
    const STATES: usize = 2;
    const WRITES: u32 = 0b1;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, _g: T, s: &mut [T; MAX_STATES]) -> T {
        A::madd(self.k.direction(p, s[0], s[1]), self.neg_rate, p)
    }
}

/// One LAMB step over every tensor of a group, in place (state buffers as in [`LAYOUT`]).
/// Checks every tensor before touching any.
pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(h: &LambConfig, mut tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let swept = engine::sweep(&mut tensors, LAYOUT, level, |c, _| Moments(Scalars::new(h, grad_scale, next_step(c))))?;
    // Each tensor's trust ratio, from its sums, with the constants of its first pass.
    let steps: Vec<Step<P::Arith>> = swept
        .into_iter()
        .map(|((pp, rr), Moments(k))| {
            let (pn, rn) = (pp.sqrt(), rr.sqrt());
            // clamp(0, clamp): NaN stays NaN
            let pn = if pn > h.clamp { h.clamp } else { pn };
            // 1 when either norm is 0; a NaN norm (a NaN or infinite element) makes the whole
            // tensor NaN, as every published LAMB does, rather than an unscaled step.
            let trust = if pn == 0.0 || rn == 0.0 { 1.0 } else { pn / rn };
            Step { k, neg_rate: P::Arith::from_f64(-k.rate * trust) }
        })
        .collect();
    engine::apply(&mut tensors, &steps, level);
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
        let n = 3 * crate::reduce::BLOCK + 11;
        let cfg = LambConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-6, weight_decay: 0.01, bias_correction: true, debias_step: false, clamp: f64::INFINITY, maximize: false };
        let mut results = vec![];
        for threads in [1, 2] {
            crate::parallel::set_num_threads(threads).unwrap();
            for level in available() {
                let (mut p, g) = (data::<f64>(n, 1), data::<f64>(n, 2));
                let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
                let mut count = 0.0f32;
                let (mut states, mut counters) = ([&mut m[..], &mut v[..]], [&mut count]);
                let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                step(&cfg, vec![t], 1.0, level).unwrap();
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
