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

use crate::float::Float;
use crate::parallel::{self, split_opt, Split};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
    /// Every gradient element is multiplied by this as it is read (clipping folded into the
    /// step); 1.0 leaves gradients as they are.
    pub grad_scale: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, maximize: false, grad_scale: 1.0 }
    }
}

/// One tensor's buffers. `momentum_buffer` is present exactly when `momentum != 0`;
/// `fresh_buffer` says it was just created, so this step fills it with the gradient
/// (torch's first step clones the gradient, without dampening).
pub struct SgdTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub momentum_buffer: Option<&'a mut [T]>,
    pub fresh_buffer: bool,
}

#[derive(Clone, Copy, Debug)]
struct Scalars<T> {
    sign: T,
    weight_decay: T,
    l2: bool,
    momentum: T,
    one_minus_dampening: T,
    nesterov: bool,
    fresh: bool,
    neg_lr: T,
}

struct Chunk<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    buf: Option<&'a mut [T]>,
    s: Scalars<T>,
}

impl<T: Float> Split for Chunk<'_, T> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let (b0, b1) = split_opt(self.buf, mid);
        (Chunk { p: p0, g: g0, buf: b0, s: self.s }, Chunk { p: p1, g: g1, buf: b1, s: self.s })
    }
}

impl<T: Float> SimdKernel for Chunk<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let s = self.s;
        match (self.buf, s.l2) {
            (Some(b), true) => body::<T, A, true, true>(self.p, self.g, b, &s),
            (Some(b), false) => body::<T, A, true, false>(self.p, self.g, b, &s),
            (None, true) => body::<T, A, false, true>(self.p, self.g, &mut [], &s),
            (None, false) => body::<T, A, false, false>(self.p, self.g, &mut [], &s),
        }
    }
}

#[inline(always)]
fn body<T: Float, A: Arith, const MOM: bool, const L2: bool>(p: &mut [T], g: &[T], buf: &mut [T], s: &Scalars<T>) {
    let n = p.len();
    let g = &g[..n];
    let buf = if MOM { &mut buf[..n] } else { buf };
    for i in 0..n {
        let pi = p[i];
        let mut gi = g[i] * s.sign;
        if L2 {
            gi = A::madd(pi, s.weight_decay, gi);
        }
        if MOM {
            let decayed = buf[i] * s.momentum;
            let b = if s.fresh { gi } else { A::madd(gi, s.one_minus_dampening, decayed) };
            buf[i] = b;
            gi = if s.nesterov { A::madd(b, s.momentum, gi) } else { b };
        }
        p[i] = A::madd(gi, s.neg_lr, pi);
    }
}

/// One SGD step over every tensor of a parameter group, in place. Checks every tensor
/// before touching any.
pub fn sgd_step<T: Float>(tensors: Vec<SgdTensor<'_, T>>, cfg: &SgdConfig) -> Result<(), Error> {
    sgd_step_at(tensors, cfg, simd::level())
}

pub(crate) fn sgd_step_at<T: Float>(tensors: Vec<SgdTensor<'_, T>>, cfg: &SgdConfig, level: SimdLevel) -> Result<(), Error> {
    let with_momentum = cfg.momentum != 0.0;
    for (i, t) in tensors.iter().enumerate() {
        check_len("grads", i, t.grad.len(), t.param.len())?;
        match (&t.momentum_buffer, with_momentum) {
            (Some(b), true) => check_len("momentum_buffer_list", i, b.len(), t.param.len())?,
            (None, false) => {}
            (None, true) => return Err(Error(format!("momentum_buffer_list[{i}] is required with momentum != 0"))),
            (Some(_), false) => return Err(Error(format!("momentum_buffer_list[{i}] given with momentum=0"))),
        }
    }
    let base = Scalars {
        sign: if cfg.maximize { -T::from_f64(cfg.grad_scale) } else { T::from_f64(cfg.grad_scale) },
        weight_decay: T::from_f64(cfg.weight_decay),
        l2: cfg.weight_decay != 0.0,
        momentum: T::from_f64(cfg.momentum),
        one_minus_dampening: T::from_f64(1.0 - cfg.dampening),
        nesterov: cfg.nesterov,
        fresh: false,
        neg_lr: T::from_f64(-cfg.lr),
    };
    let chunks: Vec<Chunk<'_, T>> = tensors
        .into_iter()
        .map(|t| Chunk { s: Scalars { fresh: t.fresh_buffer, ..base }, p: t.param, g: t.grad, buf: t.momentum_buffer })
        .collect();
    parallel::for_each(chunks, |c| simd::dispatch_at(level, c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, madd_ref, misaligned_lengths};

    /// torch's single-tensor loop, as separate whole-array operations.
    fn reference<T: Float>(p: &mut [T], g: &[T], buf: &mut Option<Vec<T>>, c: &SgdConfig, fma: bool) {
        let scale = T::from_f64(c.grad_scale);
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

    fn check<T: Float>() {
        let mut cfgs = vec![];
        for momentum in [0.0, 0.9] {
            for dampening in [0.0, 0.3] {
                for nesterov in [false, true] {
                    if nesterov && (momentum == 0.0 || dampening != 0.0) {
                        continue;
                    }
                    for weight_decay in [0.0, 0.05] {
                        for (maximize, grad_scale) in [(false, 1.0), (true, 1.0), (false, 0.37)] {
                            cfgs.push(SgdConfig { lr: 0.1, momentum, dampening, weight_decay, nesterov, maximize, grad_scale });
                        }
                    }
                }
            }
        }
        for level in available() {
            for cfg in &cfgs {
                for (len, off) in misaligned_lengths() {
                    let total = len + off;
                    let mut p = data::<T>(total, 7);
                    let g = data::<T>(total, 8);
                    let mut rp = p.clone();
                    let mut buf = vec![T::ZERO; total];
                    let mut rbuf: Option<Vec<T>> = None;
                    for k in 0..3 {
                        let t = SgdTensor {
                            param: &mut p[off..],
                            grad: &g[off..],
                            momentum_buffer: if cfg.momentum != 0.0 { Some(&mut buf[off..]) } else { None },
                            fresh_buffer: k == 0,
                        };
                        sgd_step_at(vec![t], cfg, level).unwrap();
                        reference(&mut rp[off..], &g[off..], &mut rbuf, cfg, level.fused_multiply_add());
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
        let t = SgdTensor { param: &mut p, grad: &g, momentum_buffer: None, fresh_buffer: true };
        let cfg = SgdConfig { momentum: 0.9, ..Default::default() };
        assert!(sgd_step(vec![t], &cfg).unwrap_err().0.contains("momentum_buffer_list[0]"));
        assert_eq!(p, vec![1.0; 3]);
    }
}
