//! Adagrad (`torch.optim.Adagrad`), one fused pass per element.
//!
//! Per element, in torch's order (`_single_tensor_adagrad`):
//! ```text
//! g   = maximize ? -grad : grad;   g = g + wd * p          (weight_decay != 0)
//! sum = sum + g * g                (addcmul, one rounding with FMA)
//! p   = p + (-clr * g) / (sqrt(sum) + eps),   clr = lr / (1 + (step - 1) * lr_decay)
//! ```

use super::engine::{self, Layout, next_step, Grad, Rule, Storage, Tensor, MAX_STATES};
use super::hyper::hyper;
use crate::float::Float;
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// Adagrad's hyperparameters.
    AdagradConfig for "adagrad" { lr: f64, lr_decay: f64, weight_decay: f64, eps: f64, maximize: bool }
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig { lr: 1e-2, lr_decay: 0.0, weight_decay: 0.0, eps: 1e-10, maximize: false }
    }
}

pub fn layout(_: &AdagradConfig) -> Layout {
    (&[("sum", "state_sums")], &["step"])
}

#[derive(Clone, Copy, Debug)]
struct Adagrad<T, const L2: bool> {
    g: Grad<T>,
    eps: T,
    neg_clr: T,
}

impl<T: Float, const L2: bool> Rule<T> for Adagrad<T, L2> {
    const STATES: usize = 1;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = if L2 { self.g.with_l2::<A>(p, g) } else { self.g.plain(g) };
        let sum = A::madd(g, g, s[0]);
        s[0] = sum;
        p + self.neg_clr * g / (sum.sqrt() + self.eps)
    }
}

fn run<P: Storage, S: Storage<Arith = P::Arith>, const L2: bool>(
    h: &AdagradConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, false, h.lr);
    engine::run(tensors, layout(h), level, |c, _| {
        let step = next_step(c);
        let clr = h.lr / (1.0 + (step - 1.0) * h.lr_decay);
        Adagrad::<P::Arith, L2> { g, eps: P::Arith::from_f64(h.eps), neg_clr: P::Arith::from_f64(-clr) }
    })
}

/// One Adagrad step over every tensor of a parameter group, in place.
pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &AdagradConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    if h.weight_decay != 0.0 {
        run::<P, S, true>(h, tensors, grad_scale, level)
    } else {
        run::<P, S, false>(h, tensors, grad_scale, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, madd_ref, misaligned_lengths};

    fn check<T: Float + Storage<Arith = T>>() {
        for level in available() {
            for (lr_decay, wd, maximize, scale) in [(0.0, 0.0, false, 1.0), (0.1, 0.05, true, 1.0), (0.01, 0.0, false, 0.4)] {
                let cfg = AdagradConfig { lr: 0.1, lr_decay, weight_decay: wd, eps: 1e-10, maximize };
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let (mut p, g) = (data::<T>(total, 1), data::<T>(total, 2));
                    let mut s = vec![T::from_f64(0.1); total];
                    let (mut rp, mut rs) = (p.clone(), s.clone());
                    let (mut step, mut rstep) = (0.0f32, 0.0f32);
                    let fma = level.fused_multiply_add();
                    for _ in 0..3 {
                        let (mut states, mut counters) = ([&mut s[off..]], [&mut step]);
                        let t = Tensor { param: &mut p[off..], grad: &g[off..], states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                        super::step(&cfg, vec![t], scale, level).unwrap();
                        // torch's loop, one whole-array operation at a time
                        rstep += 1.0;
                        let clr = T::from_f64(-(cfg.lr / (1.0 + (rstep as f64 - 1.0) * lr_decay)));
                        let sc = T::from_f64(scale);
                        let mut grad: Vec<T> = g[off..].iter().map(|&x| if maximize { -(x * sc) } else { x * sc }).collect();
                        if wd != 0.0 {
                            for (gi, &pi) in grad.iter_mut().zip(&rp[off..]) {
                                *gi = madd_ref(pi, T::from_f64(wd), *gi, fma);
                            }
                        }
                        for (si, &gi) in rs[off..].iter_mut().zip(&grad) {
                            *si = madd_ref(gi, gi, *si, fma);
                        }
                        let eps = T::from_f64(cfg.eps);
                        for ((pi, &gi), &si) in rp[off..].iter_mut().zip(&grad).zip(&rs[off..]) {
                            *pi = *pi + clr * gi / (si.sqrt() + eps);
                        }
                    }
                    assert!(p == rp && s == rs, "{level:?} {cfg:?} len {len} off {off}");
                    assert_eq!(step, rstep);
                }
            }
        }
    }

    #[test]
    fn matches_reference_bitwise_f32() {
        check::<f32>();
    }

    #[test]
    fn matches_reference_bitwise_f64() {
        check::<f64>();
    }
}
