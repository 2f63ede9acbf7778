//! RMSprop (`torch.optim.RMSprop`), one fused pass per element.
//!
//! Per element, in torch's order (`_single_tensor_rmsprop`):
//! ```text
//! g   = maximize ? -grad : grad;   g = g + wd * p                (weight_decay != 0)
//! sq  = sq * alpha + (1 - alpha) * g * g                         (addcmul, FMA-contracted)
//! avg = centered ? sqrt(sq - ga * ga), ga = lerp(ga, g, 1 - alpha) : sqrt(sq);  avg += eps
//! momentum > 0:  buf = buf * momentum + g / avg;  p = p - lr * buf
//! otherwise:     p = p + (-lr * g) / avg
//! ```

use super::engine::{self, Layout, Ema, next_step, Grad, Lerp, Rule, Storage, Tensor, MAX_STATES};
use super::hyper::hyper;
use crate::float::Float;
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// RMSprop's hyperparameters.
    RmspropConfig for "rmsprop" { lr: f64, alpha: f64, eps: f64, weight_decay: f64, momentum: f64, centered: bool, maximize: bool }
}

impl Default for RmspropConfig {
    fn default() -> Self {
        RmspropConfig { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0, centered: false, maximize: false }
    }
}

/// `square_avg`, then `momentum_buffer` when `momentum > 0`, then `grad_avg` when `centered`.
pub fn layout(h: &RmspropConfig) -> Layout {
    const SQ: (&str, &str) = ("square_avg", "square_avgs");
    const BUF: (&str, &str) = ("momentum_buffer", "momentum_buffer_list");
    const GA: (&str, &str) = ("grad_avg", "grad_avgs");
    let states: &'static [(&str, &str)] = match (h.momentum > 0.0, h.centered) {
        (true, true) => &[SQ, BUF, GA],
        (true, false) => &[SQ, BUF],
        (false, true) => &[SQ, GA],
        (false, false) => &[SQ],
    };
    (states, &["step"])
}

#[derive(Clone, Copy, Debug)]
struct Rmsprop<T, const MOM: bool, const CEN: bool, const L2: bool> {
    g: Grad<T>,
    sq: Ema<T>,
    lerp: Lerp<T>,
    eps: T,
    momentum: T,
    neg_lr: T,
}

impl<T: Float, const MOM: bool, const CEN: bool, const L2: bool> Rule<T> for Rmsprop<T, MOM, CEN, L2> {
    const STATES: usize = 1 + MOM as usize + CEN as usize;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = if L2 { self.g.with_l2::<A>(p, g) } else { self.g.plain(g) };
        let sq = self.sq.square::<A>(s[0], g);
        s[0] = sq;
        let avg = if CEN {
            let k = 1 + MOM as usize;
            let a = self.lerp.apply::<A>(s[k], g);
            s[k] = a;
            A::madd(-a, a, sq).sqrt()
        } else {
            sq.sqrt()
        };
        let avg = avg + self.eps;
        if MOM {
            let b = s[1] * self.momentum + g / avg;
            s[1] = b;
            A::madd(b, self.neg_lr, p)
        } else {
            p + self.neg_lr * g / avg
        }
    }
}

fn run<P: Storage, S: Storage<Arith = P::Arith>, const MOM: bool, const CEN: bool, const L2: bool>(
    h: &RmspropConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let rule = Rmsprop::<P::Arith, MOM, CEN, L2> {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, h.lr),
        sq: Ema::new(h.alpha),
        lerp: Lerp::new(1.0 - h.alpha),
        eps: P::Arith::from_f64(h.eps),
        momentum: P::Arith::from_f64(h.momentum),
        neg_lr: P::Arith::from_f64(-h.lr),
    };
    engine::run(tensors, layout(h), level, |c, _| {
        next_step(c);
        rule
    })
}

/// One RMSprop step over every tensor of a parameter group, in place.
pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &RmspropConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    macro_rules! go {
        ($mom:expr, $cen:expr) => {
            if h.weight_decay != 0.0 {
                run::<P, S, $mom, $cen, true>(h, tensors, grad_scale, level)
            } else {
                run::<P, S, $mom, $cen, false>(h, tensors, grad_scale, level)
            }
        };
    }
    match (h.momentum > 0.0, h.centered) {
        (true, true) => go!(true, true),
        (true, false) => go!(true, false),
        (false, true) => go!(false, true),
        (false, false) => go!(false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, lerp_ref, madd_ref, misaligned_lengths};

    fn check<T: Float + Storage<Arith = T>>() {
        for level in available() {
            let fma = level.fused_multiply_add();
            for (momentum, centered, wd, maximize, alpha) in
                [(0.0, false, 0.0, false, 0.99), (0.9, false, 0.1, true, 0.9), (0.0, true, 0.0, false, 0.3), (0.5, true, 0.05, false, 0.99)]
            {
                let cfg = RmspropConfig { lr: 0.01, alpha, eps: 1e-8, weight_decay: wd, momentum, centered, maximize };
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let (mut p, g) = (data::<T>(total, 3), data::<T>(total, 4));
                    let (mut sq, mut buf, mut ga) = (vec![T::ZERO; total], vec![T::ZERO; total], vec![T::ZERO; total]);
                    let (mut rp, mut rsq, mut rbuf, mut rga) = (p.clone(), sq.clone(), buf.clone(), ga.clone());
                    let mut step = 0.0f32;
                    for _ in 0..3 {
                        let mut states: Vec<&mut [T]> = vec![&mut sq[off..]];
                        if momentum > 0.0 {
                            states.push(&mut buf[off..]);
                        }
                        if centered {
                            states.push(&mut ga[off..]);
                        }
                        let mut counters = [&mut step];
                        let t = Tensor { param: &mut p[off..], grad: &g[off..], states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                        super::step(&cfg, vec![t], 1.0, level).unwrap();
                        // torch's loop, one whole-array operation at a time
                        let mut grad: Vec<T> = g[off..].iter().map(|&x| if maximize { -x } else { x }).collect();
                        if wd != 0.0 {
                            for (gi, &pi) in grad.iter_mut().zip(&rp[off..]) {
                                *gi = madd_ref(pi, T::from_f64(wd), *gi, fma);
                            }
                        }
                        let (a, c) = (T::from_f64(alpha), T::from_f64(1.0 - alpha));
                        for (si, &gi) in rsq[off..].iter_mut().zip(&grad) {
                            *si = *si * a;
                            *si = madd_ref(c * gi, gi, *si, fma);
                        }
                        let mut avg: Vec<T> = if centered {
                            for (ai, &gi) in rga[off..].iter_mut().zip(&grad) {
                                *ai = lerp_ref(*ai, gi, c, fma);
                            }
                            rsq[off..].iter().zip(&rga[off..]).map(|(&s, &a)| madd_ref(-a, a, s, fma).sqrt()).collect()
                        } else {
                            rsq[off..].iter().map(|s| s.sqrt()).collect()
                        };
                        avg.iter_mut().for_each(|x| *x = *x + T::from_f64(cfg.eps));
                        let neg_lr = T::from_f64(-cfg.lr);
                        if momentum > 0.0 {
                            for ((bi, &gi), &av) in rbuf[off..].iter_mut().zip(&grad).zip(&avg) {
                                *bi = *bi * T::from_f64(momentum);
                                *bi = *bi + gi / av;
                            }
                            for (pi, &bi) in rp[off..].iter_mut().zip(&rbuf[off..]) {
                                *pi = madd_ref(bi, neg_lr, *pi, fma);
                            }
                        } else {
                            for ((pi, &gi), &av) in rp[off..].iter_mut().zip(&grad).zip(&avg) {
                                *pi = *pi + neg_lr * gi / av;
                            }
                        }
                    }
                    let same = |a: &[T], b: &[T]| a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()));
                    assert!(same(&p, &rp) && same(&sq, &rsq) && same(&buf, &rbuf) && same(&ga, &rga), "{level:?} {cfg:?} len {len} off {off}");
                    assert_eq!(step, 3.0);
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
