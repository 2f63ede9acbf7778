//! The shared machinery of element-wise optimizers: a per-tensor [`Rule`] (its constants
//! computed from the hyperparameters and the tensor's float32 counters, such as `step`)
//! applied in one fused pass to every element, with up to [`MAX_STATES`] state buffers, the
//! same chunking, threading and SIMD dispatch as every kernel.
//!
//! Each optimizer here follows torch's single-tensor loop operation by operation; the
//! reference in the tests below runs torch's sequence of whole-array operations instead.

use crate::float::{nan_max, Float};
use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

pub const MAX_STATES: usize = 4;

/// The per-element update of one tensor.
/// The most counters an optimizer keeps per tensor (ASGD: step, eta, mu).
const MAX_COUNTERS: usize = 3;

pub trait Rule<T: Float>: Copy + Send + Sync {
    /// How many state buffers the rule uses (the first `STATES` of `s`).
    const STATES: usize;
    /// The new parameter value; updates `s` in place.
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T;
}

/// One tensor of a group: its buffers and its float32 counters (`step` first). The state
/// and counter references are borrowed slices, not owned vectors, so that a caller with many
/// tensors cuts them from one allocation per call instead of two per tensor.
pub struct ElemTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub states: &'a mut [&'a mut [T]],
    pub counters: &'a mut [&'a mut f32],
}

struct Chunk<'a, T, R> {
    p: &'a mut [T],
    g: &'a [T],
    s: [&'a mut [T]; MAX_STATES],
    rule: R,
}

/// Splits a used state buffer; an unused (empty) one stays empty on both sides.
fn cut<T>(x: &mut [T], mid: usize) -> (&mut [T], &mut [T]) {
    if x.is_empty() {
        (&mut [], &mut [])
    } else {
        x.split_at_mut(mid)
    }
}

impl<T: Float, R: Rule<T>> Split for Chunk<'_, T, R> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let [a, b, c, d] = self.s;
        let ((a0, a1), (b0, b1), (c0, c1), (d0, d1)) = (cut(a, mid), cut(b, mid), cut(c, mid), cut(d, mid));
        (Chunk { p: p0, g: g0, s: [a0, b0, c0, d0], rule: self.rule }, Chunk { p: p1, g: g1, s: [a1, b1, c1, d1], rule: self.rule })
    }
}

impl<T: Float, R: Rule<T>> SimdKernel for Chunk<'_, T, R> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let [a, b, c, d] = self.s;
        body::<T, A, R>(self.p, self.g, a, b, c, d, &self.rule);
    }
}

/// Separate `&mut` slices (not an array of them) so that LLVM knows they do not alias.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn body<T: Float, A: Arith, R: Rule<T>>(p: &mut [T], g: &[T], s0: &mut [T], s1: &mut [T], s2: &mut [T], s3: &mut [T], rule: &R) {
    let n = p.len();
    let g = &g[..n];
    let s0 = if R::STATES > 0 { &mut s0[..n] } else { s0 };
    let s1 = if R::STATES > 1 { &mut s1[..n] } else { s1 };
    let s2 = if R::STATES > 2 { &mut s2[..n] } else { s2 };
    let s3 = if R::STATES > 3 { &mut s3[..n] } else { s3 };
    for i in 0..n {
        let mut st = [T::ZERO; MAX_STATES];
        if R::STATES > 0 {
            st[0] = s0[i];
        }
        if R::STATES > 1 {
            st[1] = s1[i];
        }
        if R::STATES > 2 {
            st[2] = s2[i];
        }
        if R::STATES > 3 {
            st[3] = s3[i];
        }
        p[i] = rule.update::<A>(p[i], g[i], &mut st);
        if R::STATES > 0 {
            s0[i] = st[0];
        }
        if R::STATES > 1 {
            s1[i] = st[1];
        }
        if R::STATES > 2 {
            s2[i] = st[2];
        }
        if R::STATES > 3 {
            s3[i] = st[3];
        }
    }
}

/// Checks every tensor, builds each tensor's rule from its counters (which `make` updates,
/// e.g. `step += 1`), then runs the pass over all tensors.
pub fn run<T: Float, R: Rule<T>>(
    tensors: Vec<ElemTensor<'_, T>>,
    counters: usize,
    level: SimdLevel,
    mut make: impl FnMut(&mut [&mut f32]) -> R,
) -> Result<(), Error> {
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        check_len("grads", i, t.grad.len(), n)?;
        if t.states.len() != R::STATES || t.counters.len() != counters {
            return Err(Error(format!(
                "params[{i}]: expected {} state buffers and {counters} counters, got {} and {}",
                R::STATES,
                t.states.len(),
                t.counters.len()
            )));
        }
        for s in t.states.iter() {
            check_len("state", i, s.len(), n)?;
        }
    }
    // `make` depends only on a tensor's counters (and the call's hyperparameters), and the
    // counters are usually equal across a group: tensors whose counters match the previous
    // tensor's reuse its rule and counter updates, so the per-tensor `pow` calls run once per
    // call (as in `adam_step`). Compared by bits, so a NaN counter is always recomputed.
    let mut memo: Option<([u32; MAX_COUNTERS], [f32; MAX_COUNTERS], R)> = None;
    let bits = |c: &[&mut f32]| {
        let mut b = [0u32; MAX_COUNTERS];
        for (b, c) in b.iter_mut().zip(c) {
            *b = c.to_bits();
        }
        b
    };
    let chunks: Vec<Chunk<'_, T, R>> = tensors
        .into_iter()
        .map(|t| {
            let before = bits(t.counters);
            let rule = match memo {
                Some((b, after, rule)) if b == before && t.counters.len() <= MAX_COUNTERS => {
                    for (c, a) in t.counters.iter_mut().zip(after) {
                        **c = a;
                    }
                    rule
                }
                _ => {
                    let rule = make(t.counters);
                    let mut after = [0f32; MAX_COUNTERS];
                    for (a, c) in after.iter_mut().zip(t.counters.iter()) {
                        *a = **c;
                    }
                    if t.counters.len() <= MAX_COUNTERS {
                        memo = Some((before, after, rule));
                    }
                    rule
                }
            };
            // Moves each state reference out (leaving an empty slice); unused slots stay empty.
            let mut take = |k: usize| t.states.get_mut(k).map(std::mem::take).unwrap_or_default();
            let s = [take(0), take(1), take(2), take(3)];
            Chunk { p: t.param, g: t.grad, s, rule }
        })
        .collect();
    parallel::for_each(chunks, |c| simd::dispatch_at(level, c));
    Ok(())
}

/// Hyperparameters by name, as the Python layer passes them.
pub trait Hyper {
    fn get(&self, name: &str) -> Result<f64, Error>;
    fn flag(&self, name: &str) -> Result<bool, Error> {
        Ok(self.get(name)? != 0.0)
    }
}

impl Hyper for std::collections::HashMap<String, f64> {
    fn get(&self, name: &str) -> Result<f64, Error> {
        self.get(name).copied().ok_or_else(|| Error(format!("missing hyperparameter {name:?}")))
    }
}

/// The element-wise optimizers by name: the state buffers (in order) and counters each
/// needs. The Python layer allocates them; [`step`] runs one.
pub fn layout(name: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match name {
        "adamax" => (&["exp_avg", "exp_inf"], &["step"]),
        "adadelta" => (&["square_avg", "acc_delta"], &["step"]),
        "nadam" => (&["exp_avg", "exp_avg_sq"], &["step", "mu_product"]),
        "radam" => (&["exp_avg", "exp_avg_sq"], &["step"]),
        "adabound" => (&["exp_avg", "exp_avg_sq"], &["step"]),
        "amsbound" => (&["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], &["step"]),
        "lion" => (&["exp_avg"], &["step"]),
        "adabelief" => (&["exp_avg", "exp_avg_var"], &["step"]),
        "asgd" => (&["ax"], &["step", "eta", "mu"]),
        "rprop" => (&["prev", "step_size"], &["step"]),
        _ => return None,
    })
}

/// One step of the element-wise optimizer `name` over a group.
pub fn step<T: Float>(name: &str, tensors: Vec<ElemTensor<'_, T>>, h: &dyn Hyper, grad_scale: f64) -> Result<(), Error> {
    step_at(name, tensors, h, grad_scale, simd::level())
}

/// The gradient as the rules read it: scaled (clipping) and negated (maximize), then with L2
/// weight decay added, as torch's `grad.add(param, alpha=wd)`.
#[derive(Clone, Copy, Debug)]
struct Grad<T> {
    sign: T,
    weight_decay: T,
    l2: bool,
    /// Decoupled decay: `p * (1 - lr * wd)` before the update (1 when off).
    decay: T,
}

impl<T: Float> Grad<T> {
    fn new(h: &dyn Hyper, grad_scale: f64, decoupled: bool) -> Result<Self, Error> {
        let scale = T::from_f64(grad_scale);
        let wd = h.get("weight_decay")?;
        Ok(Grad {
            sign: if h.flag("maximize")? { -scale } else { scale },
            weight_decay: T::from_f64(wd),
            l2: wd != 0.0 && !decoupled,
            decay: if wd != 0.0 && decoupled { T::from_f64(1.0 - h.get("lr")? * wd) } else { T::ONE },
        })
    }

    #[inline(always)]
    fn read<A: Arith>(&self, p: &mut T, g: T) -> T {
        let g = g * self.sign;
        if self.l2 {
            A::madd(*p, self.weight_decay, g)
        } else {
            *p = *p * self.decay;
            g
        }
    }
}

/// torch's `lerp(start, end, w)` constants for a fixed weight.
#[derive(Clone, Copy, Debug)]
struct Lerp<T> {
    small: bool,
    coef: T,
}

impl<T: Float> Lerp<T> {
    fn new(weight: f64) -> Self {
        let w = T::from_f64(weight);
        let small = w.to_f64().abs() < 0.5;
        Lerp { small, coef: if small { w } else { w - T::ONE } }
    }
    #[inline(always)]
    fn apply<A: Arith>(&self, start: T, end: T) -> T {
        A::madd(self.coef, end - start, if self.small { start } else { end })
    }
}

#[derive(Clone, Copy, Debug)]
struct Adamax<T> {
    g: Grad<T>,
    lerp: Lerp<T>,
    beta2: T,
    eps: T,
    neg_clr: T,
}

impl<T: Float> Rule<T> for Adamax<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        s[0] = self.lerp.apply::<A>(s[0], g);
        s[1] = nan_max(s[1] * self.beta2, g.abs() + self.eps);
        p + self.neg_clr * s[0] / s[1]
    }
}

#[derive(Clone, Copy, Debug)]
struct Adadelta<T> {
    g: Grad<T>,
    rho: T,
    one_minus_rho: T,
    eps: T,
    neg_lr: T,
}

impl<T: Float> Rule<T> for Adadelta<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let sq = A::madd(self.one_minus_rho * g, g, s[0] * self.rho);
        s[0] = sq;
        let std = (sq + self.eps).sqrt();
        let delta = (s[1] + self.eps).sqrt() / std * g;
        s[1] = A::madd(self.one_minus_rho * delta, delta, s[1] * self.rho);
        A::madd(delta, self.neg_lr, p)
    }
}

#[derive(Clone, Copy, Debug)]
struct Nadam<T> {
    g: Grad<T>,
    lerp: Lerp<T>,
    beta2: T,
    one_minus_beta2: T,
    bc2: T,
    inv_bc2: T,
    eps: T,
    c_grad: T,
    c_avg: T,
}

impl<T: Float> Rule<T> for Nadam<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        s[0] = self.lerp.apply::<A>(s[0], g);
        s[1] = A::madd(self.one_minus_beta2 * g, g, s[1] * self.beta2);
        let denom = A::div_by_const(s[1], self.bc2, self.inv_bc2).sqrt() + self.eps;
        let p = p + self.c_grad * g / denom;
        p + self.c_avg * s[0] / denom
    }
}

#[derive(Clone, Copy, Debug)]
struct Radam<T> {
    g: Grad<T>,
    lerp: Lerp<T>,
    beta2: T,
    one_minus_beta2: T,
    bc1: T,
    inv_bc1: T,
    lr: T,
    rectified: bool,
    bc2_sqrt: T,
    eps: T,
    rect: T,
}

impl<T: Float> Rule<T> for Radam<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        s[0] = self.lerp.apply::<A>(s[0], g);
        s[1] = A::madd(self.one_minus_beta2 * g, g, s[1] * self.beta2);
        let corrected = A::div_by_const(s[0], self.bc1, self.inv_bc1);
        let update = if self.rectified {
            // torch: `bc2 ** 0.5 / (sqrt(v) + eps)` is a reciprocal times the number.
            let adaptive = T::ONE / (s[1].sqrt() + self.eps) * self.bc2_sqrt;
            corrected * self.lr * adaptive * self.rect
        } else {
            corrected * self.lr
        };
        A::madd(update, -T::ONE, p)
    }
}

/// AdaBound / AMSBound (Luo et al., ICLR 2019, Algorithm 2 and the authors' reference code):
/// Adam whose per-element step size is clamped into bounds that converge to `final_lr`.
#[derive(Clone, Copy, Debug)]
struct AdaBound<T, const AMS: bool> {
    g: Grad<T>,
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    eps: T,
    step_size: T,
    lower: T,
    upper: T,
}

impl<T: Float, const AMS: bool> Rule<T> for AdaBound<T, AMS> {
    const STATES: usize = 2 + AMS as usize;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        s[0] = A::madd(g, self.one_minus_beta1, s[0] * self.beta1);
        s[1] = A::madd(self.one_minus_beta2 * g, g, s[1] * self.beta2);
        let v = if AMS {
            s[2] = nan_max(s[2], s[1]);
            s[2]
        } else {
            s[1]
        };
        let denom = v.sqrt() + self.eps;
        let size = self.step_size / denom;
        // clamp_(lower, upper): NaN stays NaN
        let size = if size < self.lower { self.lower } else if size > self.upper { self.upper } else { size };
        p - size * s[0]
    }
}

/// Lion (Chen et al., 2023): the sign of an interpolation of momentum and gradient, with
/// decoupled weight decay.
#[derive(Clone, Copy, Debug)]
struct Lion<T> {
    g: Grad<T>,
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    neg_lr: T,
}

impl<T: Float> Rule<T> for Lion<T> {
    const STATES: usize = 1;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let c = A::madd(g, self.one_minus_beta1, s[0] * self.beta1);
        // torch.sign: -1, 0 (keeping the zero's sign) or 1; NaN stays NaN.
        let sign = if c > T::ZERO { T::ONE } else if c < T::ZERO { -T::ONE } else { c };
        s[0] = A::madd(g, self.one_minus_beta2, s[0] * self.beta2);
        A::madd(sign, self.neg_lr, p)
    }
}

/// AdaBelief (Zhuang et al., NeurIPS 2020, Algorithm 1): Adam whose second moment tracks
/// the "belief" (g - m)^2 instead of g^2.
#[derive(Clone, Copy, Debug)]
struct AdaBelief<T> {
    g: Grad<T>,
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    eps: T,
    bc2: T,
    inv_bc2: T,
    neg_step_size: T,
}

impl<T: Float> Rule<T> for AdaBelief<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let m = A::madd(g, self.one_minus_beta1, s[0] * self.beta1);
        s[0] = m;
        let r = g - m;
        s[1] = A::madd(self.one_minus_beta2 * r, r, s[1] * self.beta2) + self.eps;
        let denom = A::div_by_const(s[1], self.bc2, self.inv_bc2).sqrt() + self.eps;
        p + self.neg_step_size * m / denom
    }
}

/// ASGD (`torch.optim.ASGD`): SGD with decay of the step and a running average `ax` of the
/// iterates. `eta` and `mu` are torch's per-tensor float32 0-d tensors. `COPY` is the case
/// where every tensor of the call has `mu == 1` (torch's default until step `t0` = 1e6), in
/// which torch copies the parameter into `ax`: that variant never reads `ax`, one memory
/// stream in five less.
#[derive(Clone, Copy, Debug)]
struct Asgd<T, const COPY: bool> {
    g: Grad<T>,
    decay: T,
    neg_eta: T,
    mu: T,
    average: bool,
}

impl<T: Float, const COPY: bool> Rule<T> for Asgd<T, COPY> {
    const STATES: usize = 1;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let p = A::madd(g, self.neg_eta, p * self.decay);
        // torch: ax.add_(param.sub(ax).mul_(mu)), or a copy when mu is exactly 1
        s[0] = if !COPY && self.average { s[0] + (p - s[0]) * self.mu } else { p };
        p
    }
}

/// Runs ASGD with the `COPY` variant chosen by the caller (see [`Asgd`]).
fn asgd<T: Float, const COPY: bool>(tensors: Vec<ElemTensor<'_, T>>, level: SimdLevel, h: &dyn Hyper, grad_scale: f64) -> Result<(), Error> {
    let (lr, lambd, alpha, t0) = (h.get("lr")?, h.get("lambd")?, h.get("alpha")?, h.get("t0")?);
    let g = Grad::new(h, grad_scale, false)?;
    run(tensors, 3, level, |c| {
        *c[0] += 1.0;
        let step = *c[0] as f64;
        // This step uses the eta and mu of the previous one; then they are renewed.
        let (eta, mu) = (*c[1] as f64, *c[2] as f64);
        *c[1] = (lr / (1.0 + lambd * lr * step).powf(alpha)) as f32;
        *c[2] = (1.0 / (step - t0).max(1.0)) as f32;
        Asgd::<T, COPY> { g, decay: T::from_f64(1.0 - lambd * eta), neg_eta: T::from_f64(-eta), mu: T::from_f64(mu), average: mu != 1.0 }
    })
}

/// Rprop (`torch.optim.Rprop`): per-element step sizes grown by `etaplus` while the gradient
/// keeps its sign and shrunk by `etaminus` when it flips (the gradient is then ignored once).
#[derive(Clone, Copy, Debug)]
struct Rprop<T> {
    g: Grad<T>,
    etaminus: T,
    etaplus: T,
    min: T,
    max: T,
}

impl<T: Float> Rule<T> for Rprop<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let prod = g * s[0];
        // torch takes sign(g * prev) and maps 1 -> etaplus, -1 -> etaminus, 0 -> 1; its CPU
        // sign(NaN) is 0, so a NaN product (a NaN or infinite gradient element) keeps the
        // step size, and sign(NaN) = 0 below leaves the parameter as it is for that step.
        let factor = if prod > T::ZERO {
            self.etaplus
        } else if prod < T::ZERO {
            self.etaminus
        } else {
            T::ONE
        };
        let size = s[1] * factor;
        let size = if size < self.min { self.min } else if size > self.max { self.max } else { size };
        s[1] = size;
        let g = if prod < T::ZERO { T::ZERO } else { g };
        s[0] = g;
        let sign = if g > T::ZERO {
            T::ONE
        } else if g < T::ZERO {
            -T::ONE
        } else if g == T::ZERO {
            g // keeps the sign of zero, as torch's sign(+-0)
        } else {
            T::ZERO // NaN: torch's CPU sign(NaN) is 0
        };
        p - sign * size
    }
}

fn adabound<T: Float, const AMS: bool>(
    tensors: Vec<ElemTensor<'_, T>>,
    h: &dyn Hyper,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let (lr, b1, b2, eps) = (h.get("lr")?, h.get("beta1")?, h.get("beta2")?, h.get("eps")?);
    let (final_lr, gamma) = (h.get("final_lr")?, h.get("gamma")?);
    let g = Grad::new(h, grad_scale, h.flag("decoupled_weight_decay")?)?;
    run(tensors, 1, level, |c| {
        *c[0] += 1.0;
        let step = *c[0] as f64;
        let (bc1, bc2) = (1.0 - b1.powf(step), 1.0 - b2.powf(step));
        AdaBound::<T, AMS> {
            g,
            beta1: T::from_f64(b1),
            one_minus_beta1: T::from_f64(1.0 - b1),
            beta2: T::from_f64(b2),
            one_minus_beta2: T::from_f64(1.0 - b2),
            eps: T::from_f64(eps),
            step_size: T::from_f64(lr * bc2.sqrt() / bc1),
            lower: T::from_f64(final_lr * (1.0 - 1.0 / (gamma * step + 1.0))),
            upper: T::from_f64(final_lr * (1.0 + 1.0 / (gamma * step))),
        }
    })
}

pub(crate) fn step_at<T: Float>(
    name: &str,
    tensors: Vec<ElemTensor<'_, T>>,
    h: &dyn Hyper,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let half = core::hint::black_box(0.5f64);
    match name {
        "adamax" => {
            let (lr, b1, b2, eps) = (h.get("lr")?, h.get("beta1")?, h.get("beta2")?, h.get("eps")?);
            let g = Grad::new(h, grad_scale, false)?;
            run(tensors, 1, level, |c| {
                *c[0] += 1.0;
                let clr = lr / (1.0 - b1.powf(*c[0] as f64));
                Adamax { g, lerp: Lerp::new(1.0 - b1), beta2: T::from_f64(b2), eps: T::from_f64(eps), neg_clr: T::from_f64(-clr) }
            })
        }
        "adadelta" => {
            let (lr, rho, eps) = (h.get("lr")?, h.get("rho")?, h.get("eps")?);
            let g = Grad::new(h, grad_scale, false)?;
            let rule = Adadelta { g, rho: T::from_f64(rho), one_minus_rho: T::from_f64(1.0 - rho), eps: T::from_f64(eps), neg_lr: T::from_f64(-lr) };
            run(tensors, 1, level, |c| {
                *c[0] += 1.0;
                rule
            })
        }
        "nadam" => {
            let (lr, b1, b2, eps, md) = (h.get("lr")?, h.get("beta1")?, h.get("beta2")?, h.get("eps")?, h.get("momentum_decay")?);
            let g = Grad::new(h, grad_scale, h.flag("decoupled_weight_decay")?)?;
            run(tensors, 2, level, |c| {
                *c[0] += 1.0;
                let step = *c[0] as f64;
                let bc2 = 1.0 - b2.powf(step);
                let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(step * md));
                let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((step + 1.0) * md));
                // torch multiplies the float32 `mu_product` tensor by the number in float32.
                *c[1] *= mu as f32;
                let mp = *c[1] as f64;
                let mp_next = mp * mu_next;
                let bc2_t = T::from_f64(bc2);
                Nadam {
                    g,
                    lerp: Lerp::new(1.0 - b1),
                    beta2: T::from_f64(b2),
                    one_minus_beta2: T::from_f64(1.0 - b2),
                    bc2: bc2_t,
                    inv_bc2: T::ONE / bc2_t,
                    eps: T::from_f64(eps),
                    c_grad: T::from_f64(-lr * (1.0 - mu) / (1.0 - mp)),
                    c_avg: T::from_f64(-lr * mu_next / (1.0 - mp_next)),
                }
            })
        }
        "radam" => {
            let (lr, b1, b2, eps) = (h.get("lr")?, h.get("beta1")?, h.get("beta2")?, h.get("eps")?);
            let g = Grad::new(h, grad_scale, h.flag("decoupled_weight_decay")?)?;
            run(tensors, 1, level, |c| {
                *c[0] += 1.0;
                let step = *c[0] as f64;
                let bc1 = 1.0 - b1.powf(step);
                let bc2 = 1.0 - b2.powf(step);
                let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                let rho_t = rho_inf - 2.0 * step * b2.powf(step) / bc2;
                let rectified = rho_t > 5.0;
                let rect = if rectified {
                    ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).powf(half)
                } else {
                    1.0
                };
                let bc1_t = T::from_f64(bc1);
                Radam {
                    g,
                    lerp: Lerp::new(1.0 - b1),
                    beta2: T::from_f64(b2),
                    one_minus_beta2: T::from_f64(1.0 - b2),
                    bc1: bc1_t,
                    inv_bc1: T::ONE / bc1_t,
                    lr: T::from_f64(lr),
                    rectified,
                    bc2_sqrt: T::from_f64(bc2.powf(half)),
                    eps: T::from_f64(eps),
                    rect: T::from_f64(rect),
                }
            })
        }
        "adabound" => adabound::<T, false>(tensors, h, grad_scale, level),
        "amsbound" => adabound::<T, true>(tensors, h, grad_scale, level),
        "lion" => {
            let (lr, b1, b2) = (h.get("lr")?, h.get("beta1")?, h.get("beta2")?);
            let rule = Lion {
                g: Grad::new(h, grad_scale, true)?,
                beta1: T::from_f64(b1),
                one_minus_beta1: T::from_f64(1.0 - b1),
                beta2: T::from_f64(b2),
                one_minus_beta2: T::from_f64(1.0 - b2),
                neg_lr: T::from_f64(-lr),
            };
            run(tensors, 1, level, |c| {
                *c[0] += 1.0;
                rule
            })
        }
        "adabelief" => {
            let (lr, b1, b2, eps) = (h.get("lr")?, h.get("beta1")?, h.get("beta2")?, h.get("eps")?);
            let g = Grad::new(h, grad_scale, h.flag("decoupled_weight_decay")?)?;
            run(tensors, 1, level, |c| {
                *c[0] += 1.0;
                let step = *c[0] as f64;
                let bc1 = 1.0 - b1.powf(step);
                let bc2 = T::from_f64(1.0 - b2.powf(step));
                AdaBelief {
                    g,
                    beta1: T::from_f64(b1),
                    one_minus_beta1: T::from_f64(1.0 - b1),
                    beta2: T::from_f64(b2),
                    one_minus_beta2: T::from_f64(1.0 - b2),
                    eps: T::from_f64(eps),
                    bc2,
                    inv_bc2: T::ONE / bc2,
                    neg_step_size: T::from_f64(-lr / bc1),
                }
            })
        }
        "asgd" => {
            // The mu this step uses is the stored one (renewed after the step).
            if tensors.iter().all(|t| t.counters.get(2).is_some_and(|mu| **mu == 1.0)) {
                asgd::<T, true>(tensors, level, h, grad_scale)
            } else {
                asgd::<T, false>(tensors, level, h, grad_scale)
            }
        }
        "rprop" => {
            let rule = Rprop {
                g: Grad::new(h, grad_scale, false)?,
                etaminus: T::from_f64(h.get("etaminus")?),
                etaplus: T::from_f64(h.get("etaplus")?),
                min: T::from_f64(h.get("step_size_min")?),
                max: T::from_f64(h.get("step_size_max")?),
            };
            run(tensors, 1, level, |c| {
                *c[0] += 1.0;
                rule
            })
        }
        other => Err(Error(format!("unknown element-wise optimizer {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, lerp_ref, madd_ref, misaligned_lengths};
    use std::collections::HashMap;

    fn hyper(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Runs `name` three times over a misaligned sub-slice at every level and checks it
    /// against `reference`, torch's sequence of whole-array operations.
    fn check<T: Float>(
        name: &str,
        h: &HashMap<String, f64>,
        reference: impl Fn(&mut [T], &[T], &mut [Vec<T>], f32, bool),
    ) {
        for level in available() {
            for (len, off) in misaligned_lengths() {
                let total = len + off;
                let (mut p, g) = (data::<T>(total, 5), data::<T>(total, 6));
                let mut s: Vec<Vec<T>> = (0..2).map(|k| data::<T>(total, 7 + k).iter().map(|x| x.abs()).collect()).collect();
                let (mut rp, mut rs) = (p[off..].to_vec(), s.iter().map(|v| v[off..].to_vec()).collect::<Vec<_>>());
                let mut step = 0.0f32;
                for _ in 0..3 {
                    let (a, b) = s.split_at_mut(1);
                    let mut states = [&mut a[0][off..], &mut b[0][off..]];
                    let mut counters = [&mut step];
                    let t = ElemTensor { param: &mut p[off..], grad: &g[off..], states: &mut states, counters: &mut counters };
                    step_at(name, vec![t], h, 1.0, level).unwrap();
                    reference(&mut rp, &g[off..], &mut rs, step, level.fused_multiply_add());
                }
                let same = |a: &[T], b: &[T]| a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()));
                assert!(same(&p[off..], &rp), "{name} {level:?} len {len} off {off}");
                assert!(same(&s[0][off..], &rs[0]) && same(&s[1][off..], &rs[1]), "{name} state {level:?} len {len}");
            }
        }
    }

    fn adamax<T: Float>() {
        let h = hyper(&[("lr", 0.01), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.1), ("maximize", 1.0)]);
        check::<T>("adamax", &h, |p, g, s, step, fma| {
            let grad: Vec<T> = g.iter().zip(p.iter()).map(|(&x, &pi)| madd_ref(pi, T::from_f64(0.1), -x, fma)).collect();
            for (m, &gi) in s[0].iter_mut().zip(&grad) {
                *m = lerp_ref(*m, gi, T::from_f64(1.0 - 0.9), fma);
            }
            for (u, &gi) in s[1].iter_mut().zip(&grad) {
                *u = nan_max(*u * T::from_f64(0.999), gi.abs() + T::from_f64(1e-8));
            }
            let clr = T::from_f64(-(0.01 / (1.0 - 0.9f64.powf(step as f64))));
            for i in 0..p.len() {
                p[i] = p[i] + clr * s[0][i] / s[1][i];
            }
        });
    }

    fn adadelta<T: Float>() {
        let h = hyper(&[("lr", 0.5), ("rho", 0.9), ("eps", 1e-6), ("weight_decay", 0.0), ("maximize", 0.0)]);
        check::<T>("adadelta", &h, |p, g, s, _step, fma| {
            let (rho, c) = (T::from_f64(0.9), T::from_f64(1.0 - 0.9));
            let eps = T::from_f64(1e-6);
            for (sq, &gi) in s[0].iter_mut().zip(g) {
                *sq = madd_ref(c * gi, gi, *sq * rho, fma);
            }
            let std: Vec<T> = s[0].iter().map(|&x| (x + eps).sqrt()).collect();
            let delta: Vec<T> = s[1].iter().zip(&std).zip(g).map(|((&a, &sd), &gi)| (a + eps).sqrt() / sd * gi).collect();
            for (a, &d) in s[1].iter_mut().zip(&delta) {
                *a = madd_ref(c * d, d, *a * rho, fma);
            }
            for (pi, &d) in p.iter_mut().zip(&delta) {
                *pi = madd_ref(d, T::from_f64(-0.5), *pi, fma);
            }
        });
    }

    #[test]
    fn adamax_matches_reference_bitwise() {
        adamax::<f32>();
        adamax::<f64>();
    }

    #[test]
    fn adadelta_matches_reference_bitwise() {
        adadelta::<f32>();
        adadelta::<f64>();
    }

    /// ASGD over a group whose tensors are at different steps (so some average and some copy
    /// in the same call), across `t0`, against the per-tensor formula.
    fn asgd_mixed_steps<T: Float>() {
        let (lr, lambd, alpha, t0) = (0.05, 1e-3, 0.75, 2.0);
        let h = hyper(&[("lr", lr), ("lambd", lambd), ("alpha", alpha), ("t0", t0), ("weight_decay", 0.0), ("maximize", 0.0)]);
        for level in available() {
            let fma = level.fused_multiply_add();
            let n = 37;
            let g = data::<T>(n, 6);
            let mut p = [data::<T>(n, 5), data::<T>(n, 8)];
            let mut ax = [vec![T::ZERO; n], vec![T::ZERO; n]];
            // [step, eta, mu] as torch initialises them; the second tensor starts 3 steps on.
            let mut c = [[0.0f32, lr as f32, 1.0], [3.0, lr as f32, 1.0]];
            let (mut rp, mut rax, mut rc) = (p.clone(), ax.clone(), c);
            for _ in 0..5 {
                let [p0, p1] = &mut p;
                let [a0, a1] = &mut ax;
                let [c0, c1] = &mut c;
                let [s0, e0, m0] = c0;
                let [s1, e1, m1] = c1;
                let (mut st0, mut st1) = ([&mut a0[..]], [&mut a1[..]]);
                let (mut c0, mut c1) = ([s0, e0, m0], [s1, e1, m1]);
                let tensors = vec![
                    ElemTensor { param: &mut p0[..], grad: &g, states: &mut st0, counters: &mut c0 },
                    ElemTensor { param: &mut p1[..], grad: &g, states: &mut st1, counters: &mut c1 },
                ];
                step_at("asgd", tensors, &h, 1.0, level).unwrap();
                for k in 0..2 {
                    rc[k][0] += 1.0;
                    let step = rc[k][0] as f64;
                    let (eta, mu) = (rc[k][1] as f64, rc[k][2] as f64);
                    for i in 0..n {
                        let q = madd_ref(g[i], T::from_f64(-eta), rp[k][i] * T::from_f64(1.0 - lambd * eta), fma);
                        rp[k][i] = q;
                        rax[k][i] = if mu != 1.0 { rax[k][i] + (q - rax[k][i]) * T::from_f64(mu) } else { q };
                    }
                    rc[k][1] = (lr / (1.0 + lambd * lr * step).powf(alpha)) as f32;
                    rc[k][2] = (1.0 / (step - t0).max(1.0)) as f32;
                }
                assert_eq!(c, rc);
                assert!(p == rp && ax == rax, "asgd {level:?}");
            }
            assert!(c[1][2] < 1.0 && ax[1] != p[1], "the test must reach the averaging branch");
        }
    }

    #[test]
    fn asgd_mixed_steps_match_formula() {
        asgd_mixed_steps::<f32>();
        asgd_mixed_steps::<f64>();
    }

    #[test]
    fn wrong_buffer_count_and_unknown_names_are_errors() {
        let (mut p, g, mut s) = (vec![0.0f64; 4], vec![1.0f64; 4], vec![0.0f64; 4]);
        let mut step = 0.0f32;
        let (mut states, mut counters) = ([&mut s[..]], [&mut step]);
        let t = ElemTensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters };
        let h = hyper(&[("lr", 0.01), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.0), ("maximize", 0.0)]);
        assert!(step_at("adamax", vec![t], &h, 1.0, SimdLevel::Scalar).unwrap_err().0.contains("2 state buffers"));
        assert_eq!(step, 0.0);
        assert!(step_at::<f64>("bogus", vec![], &h, 1.0, SimdLevel::Scalar).is_err());
        assert!(step_at::<f64>("adamax", vec![], &hyper(&[]), 1.0, SimdLevel::Scalar).unwrap_err().0.contains("missing hyperparameter"));
        assert_eq!(layout("nadam").unwrap().1, &["step", "mu_product"]);
    }
}
