//! SGD with momentum, dampening, Nesterov, L2 weight decay and maximize
//! (`torch.optim.SGD`), as one fused pass per element.
//!
//! Per element, in torch's order (`torch/optim/sgd.py`, `_single_tensor_sgd`):
//! ```text
//! g   = maximize ? -grad : grad
//! g   = g + wd * p                                  (weight_decay != 0)
//! buf = first step ? g : buf * momentum + (1 - dampening) * g     (momentum != 0)
//! g   = nesterov ? g + momentum * buf : buf
//! p   = p + (-lr) * g
//! ```

use super::engine::{self, Layout, Grad, Rule, Storage, Tensor, MAX_STATES};
use super::hyper::hyper;
use crate::float::Float;
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// SGD's hyperparameters.
    SgdConfig for "sgd" { lr: f64, momentum: f64, dampening: f64, weight_decay: f64, nesterov: bool, maximize: bool }
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, maximize: false }
    }
}

/// The momentum buffer exists exactly when `momentum != 0`; SGD keeps no counter. A tensor
/// whose buffer was just created (`fresh`) has it set to the gradient, as torch's first step
/// clones the gradient (without dampening).
pub fn layout(h: &SgdConfig) -> Layout {
    (if h.momentum != 0.0 { &[("momentum_buffer", "momentum_buffer_list")] } else { &[] }, &[])
}

#[derive(Clone, Copy, Debug)]
struct Sgd<T, const MOM: bool, const L2: bool> {
    g: Grad<T>,
    momentum: T,
    one_minus_dampening: T,
    nesterov: bool,
    fresh: bool,
    neg_lr: T,
}

impl<T: Float, const MOM: bool, const L2: bool> Rule<T> for Sgd<T, MOM, L2> {
    const STATES: usize = MOM as usize;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let mut g = if L2 { self.g.with_l2::<A>(p, g) } else { self.g.plain(g) };
        if MOM {
            let decayed = s[0] * self.momentum;
            let b = if self.fresh { g } else { A::madd(g, self.one_minus_dampening, decayed) };
            s[0] = b;
            g = if self.nesterov { A::madd(b, self.momentum, g) } else { b };
        }
        A::madd(g, self.neg_lr, p)
    }
}

fn run<P: Storage, S: Storage<Arith = P::Arith>, const MOM: bool, const L2: bool>(
    h: &SgdConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let base = Sgd::<P::Arith, MOM, L2> {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, h.lr),
        momentum: P::Arith::from_f64(h.momentum),
        one_minus_dampening: P::Arith::from_f64(1.0 - h.dampening),
        nesterov: h.nesterov,
        fresh: false,
        neg_lr: P::Arith::from_f64(-h.lr),
    };
    engine::run(tensors, layout(h), level, |_, fresh| Sgd { fresh, ..base })
}

/// One SGD step over every tensor of a parameter group, in place. Checks every tensor
/// before touching any.
pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &SgdConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    match (h.momentum != 0.0, h.weight_decay != 0.0) {
        (true, true) => run::<P, S, true, true>(h, tensors, grad_scale, level),
        (true, false) => run::<P, S, true, false>(h, tensors, grad_scale, level),
        (false, true) => run::<P, S, false, true>(h, tensors, grad_scale, level),
        (false, false) => run::<P, S, false, false>(h, tensors, grad_scale, level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, madd_ref, misaligned_lengths};

    /// torch's single-tensor loop, as separate whole-array operations.
    fn reference<T: Float + Storage<Arith = T>>(p: &mut [T], g: &[T], buf: &mut Option<Vec<T>>, c: &SgdConfig, grad_scale: f64, fma: bool) {
        let scale = T::from_f64(grad_scale);
        let mut grad: Vec<T> = g.iter().map(|&x| if c.maximize { -(x * scale) } else { x * scale }).collect();
        if c.weight_decay != 0.0 {
            let wd = T::from_f64(c.weight_decay);
            for (gi, &pi) in grad.iter_mut().zip(p.iter()) {
                *gi = madd_ref(pi, wd, *gi, fma);
            }
        }
        if c.momentum != 0.0 {
            let (mo, alpha) = (T::from_f64(c.momentum), T::from_f64(1.0 - c.dampening));
            match buf {
                None => *buf = Some(grad.clone()),
                Some(b) => {
                    b.iter_mut().for_each(|x| *x = *x * mo);
                    for (bi, &gi) in b.iter_mut().zip(&grad) {
                        *bi = madd_ref(gi, alpha, *bi, fma);
                    }
                }
            }
            let b = buf.as_ref().unwrap();
            if c.nesterov {
                for (gi, &bi) in grad.iter_mut().zip(b) {
                    *gi = madd_ref(bi, mo, *gi, fma);
                }
            } else {
                grad = b.clone();
            }
        }
        let neg_lr = T::from_f64(-c.lr);
        for (pi, &gi) in p.iter_mut().zip(&grad) {
            *pi = madd_ref(gi, neg_lr, *pi, fma);
        }
    }

    fn check<T: Float + Storage<Arith = T>>() {
        let mut cfgs = vec![];
        for momentum in [0.0, 0.9] {
            for dampening in [0.0, 0.3] {
                for nesterov in [false, true] {
                    if nesterov && (momentum == 0.0 || dampening != 0.0) {
                        continue;
                    }
                    for weight_decay in [0.0, 0.05] {
                        for (maximize, grad_scale) in [(false, 1.0), (true, 1.0), (false, 0.37)] {
                            cfgs.push((SgdConfig { lr: 0.1, momentum, dampening, weight_decay, nesterov, maximize }, grad_scale));
                        }
                    }
                }
            }
        }
        for level in available() {
            for (cfg, scale) in &cfgs {
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let mut p = data::<T>(total, 7);
                    let g = data::<T>(total, 8);
                    let mut rp = p.clone();
                    let mut buf = vec![T::ZERO; total];
                    let mut rbuf: Option<Vec<T>> = None;
                    for k in 0..3 {
                        let mut states: Vec<&mut [T]> = if cfg.momentum != 0.0 { vec![&mut buf[off..]] } else { vec![] };
                        let t = Tensor { param: &mut p[off..], grad: &g[off..], states: &mut states, counters: &mut [], low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: k == 0 };
                        super::step(cfg, vec![t], *scale, level).unwrap();
                        reference(&mut rp[off..], &g[off..], &mut rbuf, cfg, *scale, level.fused_multiply_add());
                    }
                    assert!(p.iter().zip(&rp).all(|(a, b)| a == b), "param {level:?} {cfg:?} len {len} off {off}");
                    if let Some(rb) = &rbuf {
                        assert!(buf[off..].iter().zip(rb).all(|(a, b)| a == b), "buffer {level:?} {cfg:?} len {len}");
                    }
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
    fn missing_buffer_is_an_error_not_a_panic() {
        let mut p = vec![1.0f64; 3];
        let g = vec![1.0f64; 3];
        let t: Tensor<'_, f64> = Tensor { param: &mut p, grad: &g, states: &mut [], counters: &mut [], low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: true };
        let cfg = SgdConfig { momentum: 0.9, ..Default::default() };
        let err = step(&cfg, vec![t], 1.0, crate::simd::level()).unwrap_err();
        assert!(err.message().contains("momentum_buffer_list"), "{err}");
        assert_eq!(p, vec![1.0; 3]);
    }
    /// A compensated step (one state buffer more than the layout's: [`crate::optim::engine::Kahan`]):
    /// bfloat16 parameters and compensation, every level, lengths across several conversion
    /// tiles, against the formula in float32 with each stored value rounded once; and the
    /// small steps plain bfloat16 drops reach the parameter.
    #[test]
    fn compensated_step_keeps_what_rounding_drops() {
        use crate::half::Bf16;
        let r = |x: f32| Bf16::from_f32(x).to_f32();
        for level in available() {
            let n = 600;
            let cfg = SgdConfig { lr: 1e-3, ..SgdConfig::default() };
            let p0: Vec<f32> = data::<f32>(n, 1).iter().map(|&x| r(1.0 + x)).collect();
            let g: Vec<Bf16> = data::<f32>(n, 2).iter().map(|&x| Bf16::from_f32(x)).collect();
            let mut p: Vec<Bf16> = p0.iter().map(|&x| Bf16::from_f32(x)).collect();
            let mut plain = p.clone();
            let mut c = vec![Bf16(0); n];
            let (mut rp, mut rc) = (p0.clone(), vec![0f32; n]);
            for _ in 0..200 {
                let mut states: Vec<&mut [Bf16]> = vec![&mut c];
                let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut [], low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                crate::optim::Config::Sgd(cfg).step_at(vec![t], 1.0, level).unwrap();
                let t: Tensor<Bf16> = Tensor { param: &mut plain, grad: &g, states: &mut [], counters: &mut [], low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                crate::optim::Config::Sgd(cfg).step_at(vec![t], 1.0, level).unwrap();
                let fma = level.fused_multiply_add();
                for i in 0..n {
                    let u = madd_ref(g[i].to_f32(), -(cfg.lr as f32), rp[i], fma);
                    let y = (u - rp[i]) + rc[i];
                    let t = r(rp[i] + y);
                    rc[i] = r(y - (t - rp[i]));
                    rp[i] = t;
                }
            }
            assert!(p.iter().zip(&rp).all(|(a, b)| a.to_f32() == *b), "{level:?}");
            assert!(c.iter().zip(&rc).all(|(a, b)| a.to_f32() == *b), "{level:?}");
            // 200 steps of at most 2e-4 each: plain bfloat16 (ulp 2**-7 near 1) moves less
            // than the compensated parameter, which stays within one ulp of the exact path
            let exact: Vec<f64> = p0.iter().zip(&g).map(|(&x, gi)| x as f64 - 200.0 * 1e-3 * gi.to_f32() as f64).collect();
            let err = |v: &[Bf16]| v.iter().zip(&exact).map(|(a, e)| (a.to_f32() as f64 - e).abs()).fold(0.0, f64::max);
            assert!(err(&p) <= 2f64.powi(-7) && err(&plain) > 2.0 * err(&p), "{level:?} {} {}", err(&p), err(&plain));
        }
    }
}
