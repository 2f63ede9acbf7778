//! Adagrad (`torch.optim.Adagrad`), one fused pass per element.
//!
//! Per element, in torch's order (`_single_tensor_adagrad`):
//! ```text
//! g   = maximize ? -grad : grad;   g = g + wd * p          (weight_decay != 0)
//! sum = sum + g * g                (addcmul, one rounding with FMA)
//! p   = p + (-clr * g) / (sqrt(sum) + eps),   clr = lr / (1 + (step - 1) * lr_decay)
//! ```

use crate::float::Float;
use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    pub lr: f64,
    pub lr_decay: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub maximize: bool,
    /// Multiplies every gradient element as it is read (clipping folded into the step).
    pub grad_scale: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig { lr: 1e-2, lr_decay: 0.0, weight_decay: 0.0, eps: 1e-10, maximize: false, grad_scale: 1.0 }
    }
}

pub struct AdagradTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub sum: &'a mut [T],
    /// torch's float32 `state['step']`, incremented by the step.
    pub step: &'a mut f32,
}

#[derive(Clone, Copy, Debug)]
struct Scalars<T> {
    sign: T,
    weight_decay: T,
    l2: bool,
    eps: T,
    neg_clr: T,
}

struct Chunk<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    s: &'a mut [T],
    k: Scalars<T>,
}

impl<T: Float> Split for Chunk<'_, T> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let (s0, s1) = self.s.split_at_mut(mid);
        (Chunk { p: p0, g: g0, s: s0, k: self.k }, Chunk { p: p1, g: g1, s: s1, k: self.k })
    }
}

impl<T: Float> SimdKernel for Chunk<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        if self.k.l2 {
            body::<T, A, true>(self.p, self.g, self.s, &self.k)
        } else {
            body::<T, A, false>(self.p, self.g, self.s, &self.k)
        }
    }
}

#[inline(always)]
fn body<T: Float, A: Arith, const L2: bool>(p: &mut [T], g: &[T], s: &mut [T], k: &Scalars<T>) {
    let n = p.len();
    let (g, s) = (&g[..n], &mut s[..n]);
    for i in 0..n {
        let pi = p[i];
        let mut gi = g[i] * k.sign;
        if L2 {
            gi = A::madd(pi, k.weight_decay, gi);
        }
        let si = A::madd(gi, gi, s[i]);
        s[i] = si;
        p[i] = pi + k.neg_clr * gi / (si.sqrt() + k.eps);
    }
}

/// One Adagrad step over every tensor of a parameter group, in place.
pub fn adagrad_step<T: Float>(tensors: Vec<AdagradTensor<'_, T>>, cfg: &AdagradConfig) -> Result<(), Error> {
    adagrad_step_at(tensors, cfg, simd::level())
}

pub(crate) fn adagrad_step_at<T: Float>(
    tensors: Vec<AdagradTensor<'_, T>>,
    cfg: &AdagradConfig,
    level: SimdLevel,
) -> Result<(), Error> {
    for (i, t) in tensors.iter().enumerate() {
        check_len("grads", i, t.grad.len(), t.param.len())?;
        check_len("state_sums", i, t.sum.len(), t.param.len())?;
    }
    let scale = T::from_f64(cfg.grad_scale);
    let chunks: Vec<Chunk<'_, T>> = tensors
        .into_iter()
        .map(|t| {
            *t.step += 1.0;
            let step = *t.step as f64;
            let clr = cfg.lr / (1.0 + (step - 1.0) * cfg.lr_decay);
            let k = Scalars {
                sign: if cfg.maximize { -scale } else { scale },
                weight_decay: T::from_f64(cfg.weight_decay),
                l2: cfg.weight_decay != 0.0,
                eps: T::from_f64(cfg.eps),
                neg_clr: T::from_f64(-clr),
            };
            Chunk { p: t.param, g: t.grad, s: t.sum, k }
        })
        .collect();
    parallel::for_each(chunks, |c| simd::dispatch_at(level, c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, madd_ref, misaligned_lengths};

    fn check<T: Float>() {
        for level in available() {
            for (lr_decay, wd, maximize, scale) in [(0.0, 0.0, false, 1.0), (0.1, 0.05, true, 1.0), (0.01, 0.0, false, 0.4)] {
                let cfg = AdagradConfig { lr: 0.1, lr_decay, weight_decay: wd, eps: 1e-10, maximize, grad_scale: scale };
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let (mut p, g) = (data::<T>(total, 1), data::<T>(total, 2));
                    let mut s = vec![T::from_f64(0.1); total];
                    let (mut rp, mut rs) = (p.clone(), s.clone());
                    let (mut step, mut rstep) = (0.0f32, 0.0f32);
                    let fma = level.fused_multiply_add();
                    for _ in 0..3 {
                        let t = AdagradTensor { param: &mut p[off..], grad: &g[off..], sum: &mut s[off..], step: &mut step };
                        adagrad_step_at(vec![t], &cfg, level).unwrap();
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
