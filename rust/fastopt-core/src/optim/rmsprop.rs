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

use crate::float::Float;
use crate::parallel::{self, split_opt, Split};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmspropConfig {
    pub lr: f64,
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub centered: bool,
    pub maximize: bool,
    /// Multiplies every gradient element as it is read (clipping folded into the step).
    pub grad_scale: f64,
}

impl Default for RmspropConfig {
    fn default() -> Self {
        RmspropConfig { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0, centered: false, maximize: false, grad_scale: 1.0 }
    }
}

/// `momentum_buffer` is present exactly when `momentum > 0`, `grad_avg` when `centered`.
pub struct RmspropTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub square_avg: &'a mut [T],
    pub momentum_buffer: Option<&'a mut [T]>,
    pub grad_avg: Option<&'a mut [T]>,
    pub step: &'a mut f32,
}

#[derive(Clone, Copy, Debug)]
struct Scalars<T> {
    sign: T,
    weight_decay: T,
    l2: bool,
    alpha: T,
    one_minus_alpha: T,
    lerp_small: bool,
    lerp_coef: T,
    eps: T,
    momentum: T,
    neg_lr: T,
}

struct Chunk<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    sq: &'a mut [T],
    buf: Option<&'a mut [T]>,
    ga: Option<&'a mut [T]>,
    k: Scalars<T>,
}

impl<T: Float> Split for Chunk<'_, T> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let (s0, s1) = self.sq.split_at_mut(mid);
        let (b0, b1) = split_opt(self.buf, mid);
        let (a0, a1) = split_opt(self.ga, mid);
        (
            Chunk { p: p0, g: g0, sq: s0, buf: b0, ga: a0, k: self.k },
            Chunk { p: p1, g: g1, sq: s1, buf: b1, ga: a1, k: self.k },
        )
    }
}

impl<T: Float> SimdKernel for Chunk<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let k = self.k;
        macro_rules! go {
            ($mom:expr, $cen:expr, $buf:expr, $ga:expr) => {
                if k.l2 {
                    body::<T, A, $mom, $cen, true>(self.p, self.g, self.sq, $buf, $ga, &k)
                } else {
                    body::<T, A, $mom, $cen, false>(self.p, self.g, self.sq, $buf, $ga, &k)
                }
            };
        }
        match (self.buf, self.ga) {
            (Some(b), Some(a)) => go!(true, true, b, a),
            (Some(b), None) => go!(true, false, b, &mut []),
            (None, Some(a)) => go!(false, true, &mut [], a),
            (None, None) => go!(false, false, &mut [], &mut []),
        }
    }
}

#[inline(always)]
fn body<T: Float, A: Arith, const MOM: bool, const CEN: bool, const L2: bool>(
    p: &mut [T],
    g: &[T],
    sq: &mut [T],
    buf: &mut [T],
    ga: &mut [T],
    k: &Scalars<T>,
) {
    let n = p.len();
    let (g, sq) = (&g[..n], &mut sq[..n]);
    let buf = if MOM { &mut buf[..n] } else { buf };
    let ga = if CEN { &mut ga[..n] } else { ga };
    for i in 0..n {
        let pi = p[i];
        let mut gi = g[i] * k.sign;
        if L2 {
            gi = A::madd(pi, k.weight_decay, gi);
        }
        let si = A::madd(k.one_minus_alpha * gi, gi, sq[i] * k.alpha);
        sq[i] = si;
        let avg = if CEN {
            let a = ga[i];
            let base = if k.lerp_small { a } else { gi };
            let a = A::madd(k.lerp_coef, gi - a, base);
            ga[i] = a;
            A::madd(-a, a, si).sqrt()
        } else {
            si.sqrt()
        };
        let avg = avg + k.eps;
        if MOM {
            let b = buf[i] * k.momentum + gi / avg;
            buf[i] = b;
            p[i] = A::madd(b, k.neg_lr, pi);
        } else {
            p[i] = pi + k.neg_lr * gi / avg;
        }
    }
}

/// One RMSprop step over every tensor of a parameter group, in place.
pub fn rmsprop_step<T: Float>(tensors: Vec<RmspropTensor<'_, T>>, cfg: &RmspropConfig) -> Result<(), Error> {
    rmsprop_step_at(tensors, cfg, simd::level())
}

pub(crate) fn rmsprop_step_at<T: Float>(
    tensors: Vec<RmspropTensor<'_, T>>,
    cfg: &RmspropConfig,
    level: SimdLevel,
) -> Result<(), Error> {
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        check_len("grads", i, t.grad.len(), n)?;
        check_len("square_avgs", i, t.square_avg.len(), n)?;
        match (&t.momentum_buffer, cfg.momentum > 0.0) {
            (Some(b), true) => check_len("momentum_buffer_list", i, b.len(), n)?,
            (None, false) => {}
            _ => return Err(Error(format!("momentum_buffer_list[{i}] must be given exactly when momentum > 0"))),
        }
        match (&t.grad_avg, cfg.centered) {
            (Some(a), true) => check_len("grad_avgs", i, a.len(), n)?,
            (None, false) => {}
            _ => return Err(Error(format!("grad_avgs[{i}] must be given exactly when centered=True"))),
        }
    }
    let scale = T::from_f64(cfg.grad_scale);
    let weight = T::from_f64(1.0 - cfg.alpha);
    let lerp_small = weight.to_f64().abs() < 0.5;
    let k = Scalars {
        sign: if cfg.maximize { -scale } else { scale },
        weight_decay: T::from_f64(cfg.weight_decay),
        l2: cfg.weight_decay != 0.0,
        alpha: T::from_f64(cfg.alpha),
        one_minus_alpha: weight,
        lerp_small,
        lerp_coef: if lerp_small { weight } else { weight - T::ONE },
        eps: T::from_f64(cfg.eps),
        momentum: T::from_f64(cfg.momentum),
        neg_lr: T::from_f64(-cfg.lr),
    };
    let chunks: Vec<Chunk<'_, T>> = tensors
        .into_iter()
        .map(|t| {
            *t.step += 1.0;
            Chunk { p: t.param, g: t.grad, sq: t.square_avg, buf: t.momentum_buffer, ga: t.grad_avg, k }
        })
        .collect();
    parallel::for_each(chunks, |c| simd::dispatch_at(level, c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, lerp_ref, madd_ref, misaligned_lengths};

    fn check<T: Float>() {
        for level in available() {
            let fma = level.fused_multiply_add();
            for (momentum, centered, wd, maximize, alpha) in
                [(0.0, false, 0.0, false, 0.99), (0.9, false, 0.1, true, 0.9), (0.0, true, 0.0, false, 0.3), (0.5, true, 0.05, false, 0.99)]
            {
                let cfg = RmspropConfig { lr: 0.01, alpha, eps: 1e-8, weight_decay: wd, momentum, centered, maximize, grad_scale: 1.0 };
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let (mut p, g) = (data::<T>(total, 3), data::<T>(total, 4));
                    let (mut sq, mut buf, mut ga) = (vec![T::ZERO; total], vec![T::ZERO; total], vec![T::ZERO; total]);
                    let (mut rp, mut rsq, mut rbuf, mut rga) = (p.clone(), sq.clone(), buf.clone(), ga.clone());
                    let mut step = 0.0f32;
                    for _ in 0..3 {
                        let t = RmspropTensor {
                            param: &mut p[off..],
                            grad: &g[off..],
                            square_avg: &mut sq[off..],
                            momentum_buffer: if momentum > 0.0 { Some(&mut buf[off..]) } else { None },
                            grad_avg: if centered { Some(&mut ga[off..]) } else { None },
                            step: &mut step,
                        };
                        rmsprop_step_at(vec![t], &cfg, level).unwrap();
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
