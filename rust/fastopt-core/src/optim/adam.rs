//! Adam and AdamW (`torch.optim.Adam`, `decoupled_weight_decay=True` for AdamW), as one
//! fused pass per element.
//!
//! Per element, in torch's order (`torch/optim/adam.py`, `_single_tensor_adam`):
//! ```text
//! g  = maximize ? -grad : grad
//! g  = g + wd * p                      (L2 decay)      | p = p * (1 - lr * wd)  (decoupled)
//! m  = lerp(m, g, 1 - beta1)           (torch's lerp: two forms depending on |weight| < 0.5)
//! v  = v * beta2 + (1 - beta2) * g * g    (one rounding for the last multiply-add with FMA)
//! vm = max(vmax, v)                    (amsgrad; NaN-propagating like torch.maximum)
//! p  = p + (-lr / bc1) * m / (sqrt(v or vm) / sqrt(bc2) + eps)
//! ```
//! The division by the per-tensor constant `sqrt(bc2)` is done without a divider at the FMA
//! levels (`Arith::div_by_const`), bit-identical to the division.
//! `step` is a float32 counter as in torch; the bias corrections `bc1 = 1 - beta1**step`,
//! `bc2 = 1 - beta2**step`, `sqrt(bc2) = bc2**0.5` and the step size are computed in double
//! precision with `pow`, as Python computes them, then rounded to the element type.

use crate::float::{nan_max, Float};
use crate::parallel::{self, split_opt, Split};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

/// Hyperparameters of one parameter group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
    /// AdamW: multiply the parameter by `1 - lr * weight_decay` instead of adding
    /// `weight_decay * param` to the gradient.
    pub decoupled_weight_decay: bool,
    /// Every gradient element is multiplied by this (rounded to the element type) as it is
    /// read: gradient clipping folded into the step. 1.0 leaves gradients as they are.
    pub grad_scale: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
            grad_scale: 1.0,
        }
    }
}

/// One tensor's buffers. All slices have the parameter's length; `max_exp_avg_sq` is present
/// exactly when `amsgrad` is set.
pub struct AdamTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub exp_avg: &'a mut [T],
    pub exp_avg_sq: &'a mut [T],
    pub max_exp_avg_sq: Option<&'a mut [T]>,
    /// torch's `state['step']`, a float32 counter; incremented by the step.
    pub step: &'a mut f32,
}

/// The per-tensor constants of one step, already rounded to the element type.
#[derive(Clone, Copy, Debug)]
struct Scalars<T> {
    sign: T,
    weight_decay: T,
    decay: T,
    lerp_small: bool,
    lerp_coef: T,
    beta2: T,
    one_minus_beta2: T,
    bc2_sqrt: T,
    inv_bc2_sqrt: T,
    eps: T,
    neg_step_size: T,
    l2: bool,
}

impl<T: Float> Scalars<T> {
    fn new(cfg: &AdamConfig, step: f32) -> Self {
        let step = step as f64;
        // `black_box` keeps `pow(x, 0.5)` a call to the C library's pow, as Python's
        // `x ** 0.5` is, instead of being rewritten into sqrt.
        let half = core::hint::black_box(0.5f64);
        let bc1 = 1.0 - cfg.beta1.powf(step);
        let bc2 = 1.0 - cfg.beta2.powf(step);
        let step_size = cfg.lr / bc1;
        let decays = cfg.weight_decay != 0.0;
        let weight = T::from_f64(1.0 - cfg.beta1);
        let lerp_small = weight.to_f64().abs() < 0.5;
        Scalars {
            // g * (±scale) rounds exactly like (g * scale) negated: clip-then-step bit for bit.
            sign: if cfg.maximize { -T::from_f64(cfg.grad_scale) } else { T::from_f64(cfg.grad_scale) },
            weight_decay: T::from_f64(cfg.weight_decay),
            decay: if decays && cfg.decoupled_weight_decay {
                T::from_f64(1.0 - cfg.lr * cfg.weight_decay)
            } else {
                T::ONE
            },
            lerp_small,
            lerp_coef: if lerp_small { weight } else { weight - T::ONE },
            beta2: T::from_f64(cfg.beta2),
            one_minus_beta2: T::from_f64(1.0 - cfg.beta2),
            bc2_sqrt: T::from_f64(bc2.powf(half)),
            inv_bc2_sqrt: T::ONE / T::from_f64(bc2.powf(half)),
            eps: T::from_f64(cfg.eps),
            neg_step_size: T::from_f64(-step_size),
            l2: decays && !cfg.decoupled_weight_decay,
        }
    }
}

struct Chunk<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    m: &'a mut [T],
    v: &'a mut [T],
    vmax: Option<&'a mut [T]>,
    s: Scalars<T>,
}

impl<T: Float> Split for Chunk<'_, T> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let (m0, m1) = self.m.split_at_mut(mid);
        let (v0, v1) = self.v.split_at_mut(mid);
        let (x0, x1) = split_opt(self.vmax, mid);
        (
            Chunk { p: p0, g: g0, m: m0, v: v0, vmax: x0, s: self.s },
            Chunk { p: p1, g: g1, m: m1, v: v1, vmax: x1, s: self.s },
        )
    }
}

impl<T: Float> SimdKernel for Chunk<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let s = self.s;
        match (self.vmax, s.l2) {
            (Some(x), true) => body::<T, A, true, true>(self.p, self.g, self.m, self.v, x, &s),
            (Some(x), false) => body::<T, A, true, false>(self.p, self.g, self.m, self.v, x, &s),
            (None, true) => body::<T, A, false, true>(self.p, self.g, self.m, self.v, &mut [], &s),
            (None, false) => body::<T, A, false, false>(self.p, self.g, self.m, self.v, &mut [], &s),
        }
    }
}

#[inline(always)]
fn body<T: Float, A: Arith, const AMS: bool, const L2: bool>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    vmax: &mut [T],
    s: &Scalars<T>,
) {
    let n = p.len();
    // Equal lengths up front let LLVM drop the bounds checks and vectorize.
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let vmax = if AMS { &mut vmax[..n] } else { vmax };
    for i in 0..n {
        let mut pi = p[i];
        let mut gi = g[i] * s.sign;
        if L2 {
            gi = A::madd(pi, s.weight_decay, gi);
        } else {
            pi = pi * s.decay;
        }
        let mi = m[i];
        let base = if s.lerp_small { mi } else { gi };
        let mi = A::madd(s.lerp_coef, gi - mi, base);
        // torch's addcmul `v*beta2 + (1-beta2)*g*g`: its vectorized kernel is compiled with FMA
        // contraction, so the sum and the last product round once.
        let vi = A::madd(s.one_minus_beta2 * gi, gi, v[i] * s.beta2);
        let vu = if AMS {
            let x = nan_max(vmax[i], vi);
            vmax[i] = x;
            x
        } else {
            vi
        };
        // `sqrt(v) / sqrt(bc2)`, correctly rounded, without a division (see `div_by_const`).
        let denom = A::div_by_const(vu.sqrt(), s.bc2_sqrt, s.inv_bc2_sqrt) + s.eps;
        p[i] = pi + s.neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

/// One Adam/AdamW step over every tensor of a parameter group, in place. Checks every
/// tensor before touching any.
pub fn adam_step<T: Float>(tensors: Vec<AdamTensor<'_, T>>, cfg: &AdamConfig) -> Result<(), Error> {
    adam_step_at(tensors, cfg, simd::level())
}

pub(crate) fn adam_step_at<T: Float>(
    tensors: Vec<AdamTensor<'_, T>>,
    cfg: &AdamConfig,
    level: SimdLevel,
) -> Result<(), Error> {
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        check_len("grads", i, t.grad.len(), n)?;
        check_len("exp_avgs", i, t.exp_avg.len(), n)?;
        check_len("exp_avg_sqs", i, t.exp_avg_sq.len(), n)?;
        match (&t.max_exp_avg_sq, cfg.amsgrad) {
            (Some(x), true) => check_len("max_exp_avg_sqs", i, x.len(), n)?,
            (None, false) => {}
            (None, true) => return Err(Error(format!("max_exp_avg_sqs[{i}] is required with amsgrad=True"))),
            (Some(_), false) => return Err(Error(format!("max_exp_avg_sqs[{i}] given with amsgrad=False"))),
        }
    }
    // The per-tensor constants depend only on the step count, which is usually the same for
    // every tensor of a group: compute them once per distinct count (four `pow` calls, a third
    // of the step's cost over many one-element tensors).
    let mut memo: Option<(f32, Scalars<T>)> = None;
    let chunks: Vec<Chunk<'_, T>> = tensors
        .into_iter()
        .map(|t| {
            *t.step += 1.0;
            let s = match memo {
                Some((step, s)) if step == *t.step => s,
                _ => {
                    let s = Scalars::new(cfg, *t.step);
                    memo = Some((*t.step, s));
                    s
                }
            };
            Chunk {
                s,
                p: t.param,
                g: t.grad,
                m: t.exp_avg,
                v: t.exp_avg_sq,
                vmax: t.max_exp_avg_sq,
            }
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

    /// torch's single-tensor loop, one whole-array operation after another (as separate
    /// passes, the way torch runs them), in double precision for the scalars.
    #[allow(clippy::too_many_arguments)]
    fn reference<T: Float>(
        p: &mut [T],
        g: &[T],
        m: &mut [T],
        v: &mut [T],
        vmax: Option<&mut [T]>,
        step: &mut f32,
        c: &AdamConfig,
        fma: bool,
    ) {
        *step += 1.0;
        let t = *step as f64;
        let scale = T::from_f64(c.grad_scale);
        let mut grad: Vec<T> = g.iter().map(|&x| if c.maximize { -(x * scale) } else { x * scale }).collect();
        if c.weight_decay != 0.0 {
            if c.decoupled_weight_decay {
                let f = T::from_f64(1.0 - c.lr * c.weight_decay);
                p.iter_mut().for_each(|x| *x = *x * f);
            } else {
                let wd = T::from_f64(c.weight_decay);
                for (gi, &pi) in grad.iter_mut().zip(p.iter()) {
                    *gi = madd_ref(pi, wd, *gi, fma);
                }
            }
        }
        let w = T::from_f64(1.0 - c.beta1);
        for (mi, &gi) in m.iter_mut().zip(&grad) {
            *mi = lerp_ref(*mi, gi, w, fma);
        }
        let (b2, c2) = (T::from_f64(c.beta2), T::from_f64(1.0 - c.beta2));
        for (vi, &gi) in v.iter_mut().zip(&grad) {
            *vi = *vi * b2;
            *vi = madd_ref(c2 * gi, gi, *vi, fma);
        }
        let bc1 = 1.0 - c.beta1.powf(t);
        let bc2 = 1.0 - c.beta2.powf(t);
        let ss = T::from_f64(-(c.lr / bc1));
        let bc2s = T::from_f64(bc2.powf(core::hint::black_box(0.5)));
        let src: Vec<T> = match vmax {
            Some(x) => {
                for (xi, &vi) in x.iter_mut().zip(v.iter()) {
                    *xi = nan_max(*xi, vi);
                }
                x.to_vec()
            }
            None => v.to_vec(),
        };
        let eps = T::from_f64(c.eps);
        for i in 0..p.len() {
            let denom = src[i].sqrt() / bc2s + eps;
            p[i] = p[i] + ss * m[i] / denom;
        }
    }

    fn configs() -> Vec<AdamConfig> {
        let mut out = vec![];
        for amsgrad in [false, true] {
            for maximize in [false, true] {
                for (wd, dec) in [(0.0, false), (0.1, false), (0.1, true)] {
                    for (beta1, grad_scale) in [(0.9, 1.0), (0.3, 0.37)] {
                        out.push(AdamConfig {
                            lr: 0.01,
                            beta1,
                            beta2: 0.99,
                            eps: 1e-8,
                            weight_decay: wd,
                            amsgrad,
                            maximize,
                            decoupled_weight_decay: dec,
                            grad_scale,
                        });
                    }
                }
            }
        }
        out
    }

    fn check<T: Float>() {
        for level in available() {
            for cfg in configs() {
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let mut p = data::<T>(total, 1);
                    let g = data::<T>(total, 2);
                    let mut m = data::<T>(total, 3);
                    let mut v: Vec<T> = data::<T>(total, 4).iter().map(|&x| x * x).collect();
                    let mut x: Vec<T> = v.iter().map(|&y| y * T::from_f64(1.5)).collect();
                    let (mut rp, mut rm, mut rv, mut rx) = (p.clone(), m.clone(), v.clone(), x.clone());
                    let (mut step, mut rstep) = (3.0f32, 3.0f32);
                    for _ in 0..3 {
                        let t = AdamTensor {
                            param: &mut p[off..],
                            grad: &g[off..],
                            exp_avg: &mut m[off..],
                            exp_avg_sq: &mut v[off..],
                            max_exp_avg_sq: if cfg.amsgrad { Some(&mut x[off..]) } else { None },
                            step: &mut step,
                        };
                        adam_step_at(vec![t], &cfg, level).unwrap();
                        reference(
                            &mut rp[off..],
                            &g[off..],
                            &mut rm[off..],
                            &mut rv[off..],
                            if cfg.amsgrad { Some(&mut rx[off..]) } else { None },
                            &mut rstep,
                            &cfg,
                            level.fused_multiply_add(),
                        );
                    }
                    assert_eq!(step, rstep);
                    let same = |a: &[T], b: &[T]| a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()));
                    assert!(same(&p, &rp), "param {level:?} {cfg:?} len {len} off {off}");
                    assert!(same(&m, &rm), "exp_avg {level:?} {cfg:?} len {len}");
                    assert!(same(&v, &rv), "exp_avg_sq {level:?} {cfg:?} len {len}");
                    assert!(same(&x, &rx), "max_exp_avg_sq {level:?} {cfg:?} len {len}");
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

    #[test]
    fn public_entry_point_checks_before_writing() {
        let mut p = vec![1.0f32; 4];
        let g = vec![1.0f32; 3];
        let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        let mut step = 0.0;
        let t = AdamTensor { param: &mut p, grad: &g, exp_avg: &mut m, exp_avg_sq: &mut v, max_exp_avg_sq: None, step: &mut step };
        let err = adam_step(vec![t], &AdamConfig::default()).unwrap_err();
        assert!(err.0.contains("grads[0]"), "{err}");
        assert_eq!(step, 0.0);
        assert!(p.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let n = crate::parallel::SERIAL_BELOW * 3 + 17;
        let run = |threads: usize| {
            crate::parallel::set_num_threads(threads).unwrap();
            let mut p = data::<f32>(n, 1);
            let g = data::<f32>(n, 2);
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut step = 0.0;
            for _ in 0..2 {
                let t = AdamTensor { param: &mut p, grad: &g, exp_avg: &mut m, exp_avg_sq: &mut v, max_exp_avg_sq: None, step: &mut step };
                adam_step(vec![t], &AdamConfig::default()).unwrap();
            }
            p
        };
        let one = run(1);
        let two = run(2);
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
