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

use super::engine::{self, Layout, bias_correction, Ema, next_step, pow_half, Grad, Lerp, Rule, Stepwise, Storage, Tensor, MAX_STATES};
use super::hyper::hyper;
use crate::float::{nan_max, Float};
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// Adam's hyperparameters (AdamW: `decoupled_weight_decay`: multiply the parameter by
    /// `1 - lr * weight_decay` instead of adding `weight_decay * param` to the gradient).
    /// `cautious`: the cautious mask of Liang et al. (2024), see [`engine::run_cautious`].
    AdamConfig for "adam" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, cautious: bool }
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
            cautious: false,
        }
    }
}

/// State buffers (torch's names, then the functional API's list names) and counters.
pub fn layout(h: &AdamConfig) -> Layout {
    const PLAIN: &[(&str, &str)] = &[("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")];
    const AMS: &[(&str, &str)] = &[("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs"), ("max_exp_avg_sq", "max_exp_avg_sqs")];
    (if h.amsgrad { AMS } else { PLAIN }, &["step"])
}

/// The per-tensor constants of one step, already rounded to the element type.
#[derive(Clone, Copy, Debug)]
struct Adam<T, const AMS: bool, const L2: bool> {
    g: Grad<T>,
    lerp: Lerp<T>,
    v: Ema<T>,
    bc2_sqrt: T,
    inv_bc2_sqrt: T,
    eps: T,
    neg_step_size: T,
}

impl<T: Float, const AMS: bool, const L2: bool> Rule<T> for Adam<T, AMS, L2> {
    const STATES: usize = 2 + AMS as usize;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let (p, delta, _) = self.split::<A>(p, g, s);
        p + delta
    }
}

impl<T: Float, const AMS: bool, const L2: bool> Stepwise<T> for Adam<T, AMS, L2> {
    #[inline(always)]
    fn split<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> (T, T, T) {
        let g = if L2 { self.g.with_l2::<A>(p, g) } else { self.g.decoupled(&mut p, g) };
        let m = self.lerp.apply::<A>(s[0], g);
        s[0] = m;
        // torch's addcmul `v*beta2 + (1-beta2)*g*g`: its vectorized kernel is compiled with FMA
        // contraction, so the sum and the last product round once.
        let v = self.v.square::<A>(s[1], g);
        s[1] = v;
        let v = if AMS {
            s[2] = nan_max(s[2], v);
            s[2]
        } else {
            v
        };
        // `sqrt(v) / sqrt(bc2)`, correctly rounded, without a division (see `div_by_const`).
        let denom = A::div_by_const(v.sqrt(), self.bc2_sqrt, self.inv_bc2_sqrt) + self.eps;
        (p, self.neg_step_size * m / denom, g)
    }
}

fn run<P: Storage, S: Storage<Arith = P::Arith>, const AMS: bool, const L2: bool>(
    h: &AdamConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, h.decoupled_weight_decay, h.lr);
    let make = |c: &mut [&mut f32], _| {
        let step = next_step(c);
        let bc2_sqrt = P::Arith::from_f64(pow_half(bias_correction(h.beta2, step)));
        Adam::<P::Arith, AMS, L2> {
            g,
            lerp: Lerp::new(1.0 - h.beta1),
            v: Ema::new(h.beta2),
            bc2_sqrt,
            inv_bc2_sqrt: P::Arith::ONE / bc2_sqrt,
            eps: P::Arith::from_f64(h.eps),
            neg_step_size: P::Arith::from_f64(-(h.lr / bias_correction(h.beta1, step))),
        }
    };
    if h.cautious {
        engine::run_cautious(tensors, layout(h), level, make)
    } else {
        engine::run(tensors, layout(h), level, make)
    }
}

/// One Adam/AdamW step over every tensor of a parameter group, in place. Checks every
/// tensor before touching any.
pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &AdamConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let l2 = h.weight_decay != 0.0 && !h.decoupled_weight_decay;
    match (h.amsgrad, l2) {
        (true, true) => run::<P, S, true, true>(h, tensors, grad_scale, level),
        (true, false) => run::<P, S, true, false>(h, tensors, grad_scale, level),
        (false, true) => run::<P, S, false, true>(h, tensors, grad_scale, level),
        (false, false) => run::<P, S, false, false>(h, tensors, grad_scale, level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Config;
    use crate::simd::available;
    use crate::test_util::{data, lerp_ref, madd_ref, misaligned_lengths};

    /// torch's single-tensor loop, one whole-array operation after another (as separate
    /// passes, the way torch runs them), in double precision for the scalars.
    #[allow(clippy::too_many_arguments)]
    fn reference<T: Float + Storage<Arith = T>>(
        p: &mut [T],
        g: &[T],
        m: &mut [T],
        v: &mut [T],
        vmax: Option<&mut [T]>,
        step: &mut f32,
        c: &AdamConfig,
        grad_scale: f64,
        fma: bool,
    ) {
        *step += 1.0;
        let t = *step as f64;
        let scale = T::from_f64(grad_scale);
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

    fn configs() -> Vec<(AdamConfig, f64)> {
        let mut out = vec![];
        for amsgrad in [false, true] {
            for maximize in [false, true] {
                for (wd, dec) in [(0.0, false), (0.1, false), (0.1, true)] {
                    for (beta1, grad_scale) in [(0.9, 1.0), (0.3, 0.37)] {
                        let cfg = AdamConfig {
                            lr: 0.01,
                            beta1,
                            beta2: 0.99,
                            eps: 1e-8,
                            weight_decay: wd,
                            amsgrad,
                            maximize,
                            decoupled_weight_decay: dec,
                            cautious: false,
                        };
                        out.push((cfg, grad_scale));
                    }
                }
            }
        }
        out
    }

    fn check<T: Float + Storage<Arith = T>>() {
        for level in available() {
            for (cfg, scale) in configs() {
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
                        let mut states: Vec<&mut [T]> = vec![&mut m[off..], &mut v[off..]];
                        if cfg.amsgrad {
                            states.push(&mut x[off..]);
                        }
                        let mut counters = [&mut step];
                        let t = Tensor { param: &mut p[off..], grad: &g[off..], states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                        super::step(&cfg, vec![t], scale, level).unwrap();
                        reference(
                            &mut rp[off..],
                            &g[off..],
                            &mut rm[off..],
                            &mut rv[off..],
                            if cfg.amsgrad { Some(&mut rx[off..]) } else { None },
                            &mut rstep,
                            &cfg,
                            scale,
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

    /// A 16-bit step is the float32 step on the loaded values with every stored value
    /// rounded once (state in the parameter's dtype, or in float32), at every level.
    fn check_half<H: Storage<Arith = f32> + PartialEq + core::fmt::Debug>(round: impl Fn(f32) -> f32) {
        let rounded = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(&round).collect() };
        for level in available() {
            for (cfg, scale) in configs() {
                let n = 37 + 2 * 256; // (several conversion tiles and a partial one)
                let p32 = rounded(data::<f32>(n, 1));
                let g32 = rounded(data::<f32>(n, 2));
                let m32 = rounded(data::<f32>(n, 3));
                let v32: Vec<f32> = rounded(data::<f32>(n, 4).iter().map(|&x| x * x).collect());
                let x32: Vec<f32> = rounded(v32.iter().map(|&y| y * 1.5).collect());
                let h = |v: &[f32]| -> Vec<H> { v.iter().map(|&x| H::store(x)).collect() };
                let (mut p, g, mut m, mut v, mut x) = (h(&p32), h(&g32), h(&m32), h(&v32), h(&x32));
                let (mut rp, mut rm, mut rv, mut rx) = (p32.clone(), m32.clone(), v32.clone(), x32.clone());
                // the same with float32 state beside 16-bit parameters
                let (mut p2, mut m2, mut v2, mut x2) = (h(&p32), m32.clone(), v32.clone(), x32.clone());
                let (mut rp2, mut rm2, mut rv2, mut rx2) = (p32.clone(), m32.clone(), v32.clone(), x32.clone());
                // and 16-bit state beside float32 parameters
                let (mut p3, mut m3, mut v3, mut x3) = (p32.clone(), h(&m32), h(&v32), h(&x32));
                let (mut rp3, mut rm3, mut rv3, mut rx3) = (p32.clone(), m32.clone(), v32.clone(), x32.clone());
                let (mut step, mut rstep, mut step2, mut rstep2) = (3.0f32, 3.0f32, 3.0f32, 3.0f32);
                let (mut step3, mut rstep3) = (3.0f32, 3.0f32);
                for _ in 0..3 {
                    let mut states: Vec<&mut [H]> = vec![&mut m, &mut v];
                    let mut states2: Vec<&mut [f32]> = vec![&mut m2, &mut v2];
                    if cfg.amsgrad {
                        states.push(&mut x);
                        states2.push(&mut x2);
                    }
                    let mut counters = [&mut step];
                    let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                    let mut counters = [&mut step2];
                    let t = Tensor { param: &mut p2, grad: &g, states: &mut states2, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                    let mut states3: Vec<&mut [H]> = vec![&mut m3, &mut v3];
                    if cfg.amsgrad {
                        states3.push(&mut x3);
                    }
                    let mut counters = [&mut step3];
                    let t = Tensor { param: &mut p3, grad: &g32, states: &mut states3, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                    let fma = level.fused_multiply_add();
                    fn ams(on: bool, x: &mut [f32]) -> Option<&mut [f32]> {
                        if on { Some(x) } else { None }
                    }
                    reference(&mut rp, &g32, &mut rm, &mut rv, ams(cfg.amsgrad, &mut rx), &mut rstep, &cfg, scale, fma);
                    for w in [&mut rp, &mut rm, &mut rv, &mut rx] {
                        w.iter_mut().for_each(|y| *y = round(*y));
                    }
                    reference(&mut rp2, &g32, &mut rm2, &mut rv2, ams(cfg.amsgrad, &mut rx2), &mut rstep2, &cfg, scale, fma);
                    rp2.iter_mut().for_each(|y| *y = round(*y));
                    reference(&mut rp3, &g32, &mut rm3, &mut rv3, ams(cfg.amsgrad, &mut rx3), &mut rstep3, &cfg, scale, fma);
                    for w in [&mut rm3, &mut rv3, &mut rx3] {
                        w.iter_mut().for_each(|y| *y = round(*y));
                    }
                }
                assert_eq!((step, step2, step3), (rstep, rstep2, rstep3));
                let same = |a: &[H], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.load() == *y || (x.load().is_nan() && y.is_nan()));
                let same32 = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()));
                assert!(same(&p, &rp) && same(&m, &rm) && same(&v, &rv) && same(&x, &rx), "{level:?} {cfg:?}");
                assert!(same(&p2, &rp2) && same32(&m2, &rm2) && same32(&v2, &rv2) && same32(&x2, &rx2), "float32 state {level:?} {cfg:?}");
                assert!(same32(&p3, &rp3) && same(&m3, &rm3) && same(&v3, &rv3) && same(&x3, &rx3), "float32 params {level:?} {cfg:?}");
            }
        }
    }

    /// A 16-bit parameter with a float32 master (float32 state) steps the master exactly as a
    /// float32 parameter steps, over several tiles, at every level: the master kept whole
    /// (the parameter its value rounded to nearest even) or, with `low`, as the parameter's
    /// low bits (bfloat16: the parameter is the master's high half, [`split_master`]). With
    /// `f32_grads` the gradients are float32 values that the 16-bit format cannot hold
    /// ([`Tensor::grad_f32`]), read exactly.
    fn check_masters<H: Storage<Arith = f32>>(low: bool, f32_grads: bool) {
        use crate::optim::engine::{join_master, split_master};
        for level in available() {
            for (cfg, scale) in configs() {
                let n = 37 + 2 * 256;
                let mut reference: Vec<f32> = data::<f32>(n, 1);
                let mut master = reference.clone();
                let g: Vec<H> = data::<f32>(n, 2).into_iter().map(H::store).collect();
                let g32: Vec<f32> = if f32_grads { data::<f32>(n, 2).iter().map(|x| x * (1.0 + f32::EPSILON)).collect() } else { g.iter().map(|x| x.load()).collect() };
                let (grad, grad_f32): (&[H], &[f32]) = if f32_grads { (&[], &g32) } else { (&g, &[]) };
                let mut m: Vec<f32> = data::<f32>(n, 3);
                let mut v: Vec<f32> = data::<f32>(n, 4).iter().map(|&x| x * x).collect();
                let mut x: Vec<f32> = v.iter().map(|&y| y * 1.5).collect();
                let (mut rm, mut rv, mut rx) = (m.clone(), v.clone(), x.clone());
                let high = |y: &f32| f32::from_bits((split_master(y.to_bits()).0 as u32) << 16);
                let mut p: Vec<H> = master.iter().map(|y| H::store(if low { high(y) } else { *y })).collect();
                let mut bits: Vec<u16> = master.iter().map(|y| if low { split_master(y.to_bits()).1 } else { 0 }).collect();
                let (mut step, mut rstep) = (3.0f32, 3.0f32);
                for _ in 0..3 {
                    let mut states: Vec<&mut [f32]> = vec![&mut m, &mut v];
                    let mut rstates: Vec<&mut [f32]> = vec![&mut rm, &mut rv];
                    if cfg.amsgrad {
                        states.push(&mut x);
                        rstates.push(&mut rx);
                    }
                    let mut counters = [&mut step];
                    let (low_bits, full): (&mut [u16], &mut [f32]) = if low { (&mut bits, &mut []) } else { (&mut [], &mut master) };
                    let t = Tensor { param: &mut p, grad, states: &mut states, counters: &mut counters, low_bits, master: full, grad_f32, stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                    let mut counters = [&mut rstep];
                    let t = Tensor { param: &mut reference, grad: &g32, states: &mut rstates, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                }
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                if low {
                    master = p.iter().zip(&bits).map(|(h, &l)| f32::from_bits(join_master((h.load().to_bits() >> 16) as u16, l))).collect();
                }
                assert!(same(&master, &reference), "{level:?} {cfg:?} low {low}");
                assert!(same(&m, &rm) && same(&v, &rv) && same(&x, &rx), "{level:?} {cfg:?} low {low}");
                let stored: Vec<f32> = p.iter().map(|h| h.load()).collect();
                let view: Vec<f32> = reference.iter().map(|y| if low { high(y) } else { H::store(*y).load() }).collect();
                assert!(same(&stored, &view), "{level:?} {cfg:?} low {low}");
            }
        }
    }

    #[test]
    fn a_float32_master_beside_16bit_parameters_steps_as_float32() {
        for f32_grads in [false, true] {
            check_masters::<crate::half::Bf16>(true, f32_grads);
            check_masters::<crate::half::Bf16>(false, f32_grads);
            check_masters::<crate::half::F16>(false, f32_grads);
        }
    }

    /// With a stochastic rounding key a bfloat16 or float16 parameter is the float32 step
    /// (from the widened parameter, float32 state) rounded by `stochastic_round` or
    /// `stochastic_round_f16` at each element's index, at every level and over several tiles;
    /// float32 parameters are refused.
    #[test]
    fn stochastic_rounding_rounds_the_float32_step_by_index() {
        use crate::half::{Bf16, F16};
        use crate::optim::engine::{stochastic_round, stochastic_round_f16};
        fn check<P: Storage<Arith = f32>>(round: fn(u32, u32, usize) -> u32) {
            for level in available() {
                let (cfg, scale) = configs()[1];
                let n = 19 + 3 * 256;
                let mut p: Vec<P> = data::<f32>(n, 1).into_iter().map(P::store).collect();
                let mut reference: Vec<f32> = p.iter().map(|x| x.load()).collect();
                let g: Vec<f32> = data::<f32>(n, 2);
                let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
                let (mut rm, mut rv) = (m.clone(), v.clone());
                let (mut step, mut rstep) = (0f32, 0f32);
                for key in [7u32, 0xdead_beef] {
                    let mut states: Vec<&mut [f32]> = vec![&mut m, &mut v];
                    let mut counters = [&mut step];
                    let t = Tensor { param: &mut p, grad: &[], states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &g, stochastic: Some(key), scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                    let mut states: Vec<&mut [f32]> = vec![&mut rm, &mut rv];
                    let mut counters = [&mut rstep];
                    let t = Tensor { param: &mut reference, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    super::step(&cfg, vec![t], scale, level).unwrap();
                    for (i, r) in reference.iter_mut().enumerate() {
                        *r = f32::from_bits(round(r.to_bits(), key, i));
                    }
                    let got: Vec<u32> = p.iter().map(|x| x.load().to_bits()).collect();
                    let want: Vec<u32> = reference.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(got, want, "{level:?} key {key}");
                    assert_eq!((m.clone(), v.clone()), (rm.clone(), rv.clone()));
                }
            }
        }
        check::<Bf16>(stochastic_round);
        check::<F16>(stochastic_round_f16);
        let mut w = vec![1f32; 4];
        let (mut m, mut v, mut step) = (vec![0f32; 4], vec![0f32; 4], 0f32);
        let mut states: Vec<&mut [f32]> = vec![&mut m, &mut v];
        let mut counters = [&mut step];
        let g = vec![0.5f32; 4];
        let t = Tensor { param: &mut w, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: Some(1), scales: &mut [], unsigned: 0, fresh: false };
        let err = super::step(&configs()[0].0, vec![t], 1.0, crate::simd::level()).unwrap_err();
        assert!(err.to_string().contains("takes float16 or bfloat16 parameters only"), "{err}");
    }

    /// Stochastic rounding: exact values stay, others go to one of their two neighbours, the
    /// mean of many is the value, infinities and NaNs are left to the store.
    #[test]
    fn stochastic_round_is_unbiased_and_picks_a_neighbour() {
        use crate::half::F16;
        use crate::optim::engine::{stochastic_round, stochastic_round_f16};
        /// The mean of 2^20 roundings of `x` is `x` within 3 sigma, each one of `lo`, `hi`.
        fn unbiased(x: f32, lo: f32, hi: f32, round: impl Fn(u32, usize) -> u32) {
            let n = 1 << 20;
            let mut sum = 0f64;
            for i in 0..n {
                let r = f32::from_bits(round(x.to_bits(), i));
                assert!(r == lo || r == hi, "{x}: {r} is neither {lo} nor {hi}");
                sum += r as f64;
            }
            let (a, b) = (lo as f64, hi as f64);
            let q = (x as f64 - a) / (b - a);
            let sigma = (b - a).abs() * (q * (1.0 - q) / n as f64).sqrt();
            assert!((sum / n as f64 - x as f64).abs() <= 3.0 * sigma, "{x}");
        }
        for x in [1.0f32, -3.5, 0.0, f32::MIN_POSITIVE] {
            assert_eq!(stochastic_round(x.to_bits(), 3, 9), x.to_bits());
        }
        for x in [1.0f32, -3.5, 0.0, -0.0, 65504.0, 2f32.powi(-24), -5.0 * 2f32.powi(-24), 2f32.powi(-14)] {
            assert_eq!(stochastic_round_f16(x.to_bits(), 3, 9), x.to_bits(), "{x}");
        }
        for bits in [f32::INFINITY.to_bits(), f32::NEG_INFINITY.to_bits(), f32::NAN.to_bits()] {
            assert_eq!(stochastic_round(bits, 3, 9), bits);
            assert_eq!(stochastic_round_f16(bits, 3, 9), bits);
        }
        // float16's largest and beyond: the store's usual rounding
        for x in [65505.0f32, -70000.0, 1e30] {
            assert_eq!(stochastic_round_f16(x.to_bits(), 3, 9), x.to_bits());
        }
        for x in [1.0f32 + 2f32.powi(-10), -(3.0 + 2f32.powi(-12)), 1e-30] {
            let (lo, hi) = (x.to_bits() & 0xffff_0000, (x.to_bits() & 0xffff_0000) + 0x1_0000);
            unbiased(x, f32::from_bits(lo), f32::from_bits(hi), |b, i| stochastic_round(b, 0x1234_5678, i));
        }
        // float16: normal (spacing 2^-10 at 1), near the largest, subnormal (spacing 2^-24),
        // below the smallest subnormal, and float32 subnormals
        let tiny = 2f32.powi(-24);
        for (x, lo, hi) in [(1.0f32 + 2f32.powi(-13), 1.0f32, 1.0 + 2f32.powi(-10)),
                            (-(3.0 + 3.0 * 2f32.powi(-12)), -3.0, -(3.0 + 2f32.powi(-9))),
                            (65500.0, 65472.0, 65504.0),
                            (1e-6, 16.0 * tiny, 17.0 * tiny),
                            (0.3 * tiny, 0.0, tiny),
                            (-1e-40, -0.0, -tiny)] {
            unbiased(x, lo, hi, |b, i| stochastic_round_f16(b, 0x1234_5678, i));
            for i in 0..64 {
                let r = f32::from_bits(stochastic_round_f16(x.to_bits(), 7, i));
                assert_eq!(F16::store(r).load().to_bits(), r.to_bits(), "{x} -> {r} is not a float16");
            }
        }
    }

    /// float32 gradients go with 16-bit parameters only, and in place of the parameter's.
    #[test]
    fn float32_gradients_are_checked() {
        use crate::half::Bf16;
        fn attempt<P: Storage<Arith = f32>>(p: &mut [P], grad: &[P], grad_f32: &[f32]) -> Result<f32, Error> {
            let (mut m, mut v, mut step) = (vec![0f32; p.len()], vec![0f32; p.len()], 0f32);
            let mut states: Vec<&mut [f32]> = vec![&mut m, &mut v];
            let mut counters = [&mut step];
            let t = Tensor { param: p, grad, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32, stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
            super::step(&configs()[0].0, vec![t], 1.0, crate::simd::level())?;
            Ok(step)
        }
        let (g32, gh) = (vec![0.5f32; 4], vec![Bf16::store(0.5); 4]);
        let err = attempt::<f32>(&mut [1.0; 4], &[], &g32).unwrap_err();
        assert!(err.to_string().contains("float32 gradients go with float16 or bfloat16 parameters only"), "{err}");
        let mut ph = vec![Bf16::store(1.0); 4];
        let err = attempt(&mut ph, &gh, &g32).unwrap_err();
        assert!(err.to_string().contains("gradients given twice"), "{err}");
        assert!(attempt(&mut ph, &[], &g32[..3]).is_err());
        assert_eq!(ph[0].load(), 1.0, "nothing written");
        assert_eq!(attempt(&mut ph, &[], &g32).unwrap(), 1.0);
        assert!(ph[0].load() < 1.0);
    }

    #[test]
    fn bfloat16_and_float16_round_the_float32_step_once() {
        use crate::half::{Bf16, F16};
        check_half::<Bf16>(|x| Bf16::from_f32(x).to_f32());
        check_half::<F16>(|x| F16::from_f32(x).to_f32());
    }

    #[test]
    fn checks_before_writing() {
        let mut p = vec![1.0f32; 4];
        let g = vec![1.0f32; 3];
        let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        let mut step = 0.0;
        let (mut states, mut counters) = ([&mut m[..], &mut v[..]], [&mut step]);
        let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
        let err = Config::Adam(AdamConfig::default()).step(vec![t], 1.0).unwrap_err();
        assert!(err.message().contains("grads[0]"), "{err}");
        assert_eq!(step, 0.0);
        assert!(p.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let _lock = crate::test_util::global();
        let n = crate::parallel::SERIAL_BELOW * 3 + 17;
        let run = |threads: usize| {
            crate::parallel::set_num_threads(threads).unwrap();
            assert_eq!(crate::parallel::num_threads(), threads);
            let mut p = data::<f32>(n, 1);
            let g = data::<f32>(n, 2);
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut step = 0.0;
            for _ in 0..2 {
                let (mut states, mut counters) = ([&mut m[..], &mut v[..]], [&mut step]);
                let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                Config::Adam(AdamConfig::default()).step(vec![t], 1.0).unwrap();
            }
            p
        };
        let one = run(1);
        let two = run(2);
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
        assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn cautious_keeps_the_steps_that_agree_with_the_gradient_scaled() {
        let _lock = crate::test_util::global();
        let n = 20_000; // (above the serial threshold: both passes split across threads)
        let cfg = AdamConfig { lr: 0.01, weight_decay: 0.0, ..AdamConfig::default() };
        let p0: Vec<f64> = data(n, 11);
        let g: Vec<f64> = data(n, 12);
        // the state of a few earlier steps, so that the momentum disagrees with some gradients
        let m0: Vec<f64> = data(n, 13);
        let v0: Vec<f64> = data::<f64>(n, 14).iter().map(|x| x * x + 0.1).collect();
        let run_one = |c: AdamConfig| {
            let (mut p, mut m, mut v, mut t) = (p0.clone(), m0.clone(), v0.clone(), 3.0f32);
            let (mut states, mut counters) = ([&mut m[..], &mut v[..]], [&mut t]);
            let tensor = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
            step(&c, vec![tensor], 1.0, crate::simd::level()).unwrap();
            (p, m, v, t)
        };
        let (plain, pm, pv, pt) = run_one(cfg);
        let (masked, cm, cv, ct) = run_one(AdamConfig { cautious: true, ..cfg });
        assert!(pm == cm && pv == cv && pt == ct, "the state moves as without the mask");
        let agree: Vec<bool> = (0..n).map(|i| (plain[i] - p0[i]) * g[i] < 0.0).collect();
        let kept = agree.iter().filter(|&&a| a).count();
        assert!(kept > n / 4 && kept < n * 3 / 4, "{kept}");
        let scale = n as f64 / (kept as f64 + 1.0);
        for i in 0..n {
            let want = if agree[i] { p0[i] + (plain[i] - p0[i]) * scale } else { p0[i] };
            assert!((masked[i] - want).abs() <= 1e-13 * want.abs().max(1.0), "{i}: {} vs {want}", masked[i]);
        }
    }
}
