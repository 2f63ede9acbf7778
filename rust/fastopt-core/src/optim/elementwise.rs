//! The element-wise optimizers beyond the four classics, each a [`Rule`] of the engine: torch's
//! Adamax, Adadelta, NAdam, RAdam, ASGD and Rprop, and beyond torch AdaBound/AMSBound, Lion and
//! AdaBelief.
//!
//! Each follows torch's single-tensor loop operation by operation (or the authors' reference
//! code); the reference in the tests below runs torch's sequence of whole-array operations.

use super::engine::{self, bias_correction, next_step, pow_half, sign, Ema, Grad, Layout, Lerp, Rule, Stepwise, Storage, Tensor, MAX_STATES};
use super::hyper::hyper;
use crate::float::{nan_max, Float};
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// Adamax's hyperparameters.
    AdamaxConfig for "adamax" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, maximize: bool }
    /// Adadelta's hyperparameters.
    AdadeltaConfig for "adadelta" { lr: f64, rho: f64, eps: f64, weight_decay: f64, maximize: bool }
    /// NAdam's hyperparameters.
    NadamConfig for "nadam" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, momentum_decay: f64, decoupled_weight_decay: bool, maximize: bool }
    /// RAdam's hyperparameters.
    RadamConfig for "radam" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, decoupled_weight_decay: bool, maximize: bool }
    /// AdaBelief's hyperparameters, the authors' options (`decoupled_weight_decay` is their
    /// `weight_decouple`; `fixed_decay`: decay by `1 - wd`, not `1 - lr * wd`).
    AdaBeliefConfig for "adabelief" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, decoupled_weight_decay: bool, fixed_decay: bool, amsgrad: bool, rectify: bool, degenerated_to_sgd: bool, maximize: bool }
    /// AdaBound's and AMSBound's hyperparameters.
    AdaBoundConfig for "adabound" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, final_lr: f64, gamma: f64, decoupled_weight_decay: bool, maximize: bool }
    /// Lion's hyperparameters (its weight decay is always decoupled; `cautious`: see
    /// [`engine::run_cautious`]).
    LionConfig for "lion" { lr: f64, beta1: f64, beta2: f64, weight_decay: f64, maximize: bool, cautious: bool }
    /// ASGD's hyperparameters.
    AsgdConfig for "asgd" { lr: f64, lambd: f64, alpha: f64, t0: f64, weight_decay: f64, maximize: bool }
    /// Rprop's hyperparameters (`lr` only fills the initial step sizes, outside the kernel).
    RpropConfig for "rprop" { etaminus: f64, etaplus: f64, step_size_min: f64, step_size_max: f64, maximize: bool }
    /// ADOPT's hyperparameters. The clipping bound is `(step - 1) ** clip_power` (the authors'
    /// default `clip_lambda`, with power 0.25) when `clip_power >= 0`, else `clip` for this
    /// step (a bound a caller's function gave; negative: none).
    AdoptConfig for "adopt" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, decouple: bool, clip: f64, clip_power: f64, maximize: bool }
    /// Schedule-Free AdamW (`adam`) and SGD's hyperparameters for one step: `lr` is this step's
    /// (warmed-up) rate, `ckp1` the averaging weight and `bc2` Adam's `1 - beta2**k`, all
    /// from the group's counters (the optimizer keeps them in its param groups).
    ScheduleFreeConfig for "schedulefree" { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, ckp1: f64, bc2: f64, adam: bool, maximize: bool }
    /// Muon's momentum pass: `buf = lerp(buf, g, 1 - momentum)` and the update it hands to the
    /// Newton-Schulz iteration, `lerp(g, buf, momentum)` (nesterov) or `buf`, written into the
    /// call's "param" array (an output buffer).
    MuonMomentumConfig for "muon_momentum" { momentum: f64, nesterov: bool }
    /// Muon's last pass: `p = p * decay + alpha * u` with `u` (the orthogonalised update) in
    /// the gradient's place (torch's `mul_` then `add_(alpha=)`).
    ScaledAddConfig for "scaled_add" { decay: f64, alpha: f64 }
    /// AdEMAMix's hyperparameters (a warm-up of 0: none).
    AdemamixConfig for "ademamix" { lr: f64, beta1: f64, beta2: f64, beta3: f64, alpha: f64, beta3_warmup: f64, alpha_warmup: f64, eps: f64, weight_decay: f64, maximize: bool }
}

pub const ADAMAX: Layout = (&[("exp_avg", "exp_avgs"), ("exp_inf", "exp_infs")], &["step"]);
pub const ADADELTA: Layout = (&[("square_avg", "square_avgs"), ("acc_delta", "acc_deltas")], &["step"]);
pub const NADAM: Layout = (&[("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")], &["step", "mu_product"]);
pub const RADAM: Layout = (&[("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")], &["step"]);
pub const ADABOUND: Layout = RADAM;
pub const AMSBOUND: Layout =
    (&[("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs"), ("max_exp_avg_sq", "max_exp_avg_sqs")], &["step"]);
pub const LION: Layout = (&[("exp_avg", "exp_avgs")], &["step"]);
pub const ADABELIEF: Layout = (&[("exp_avg", "exp_avgs"), ("exp_avg_var", "exp_avg_vars")], &["step"]);
pub const ADABELIEF_AMS: Layout =
    (&[("exp_avg", "exp_avgs"), ("exp_avg_var", "exp_avg_vars"), ("max_exp_avg_var", "max_exp_avg_vars")], &["step"]);
pub const ASGD: Layout = (&[("ax", "axs")], &["step", "eta", "mu"]);
pub const RPROP: Layout = (&[("prev", "prevs"), ("step_size", "step_size_ops")], &["step"]);
pub const ADOPT: Layout = RADAM;
pub const SCHEDULEFREE_ADAM: Layout = (&[("z", "zs"), ("exp_avg_sq", "exp_avg_sqs")], &[]);
pub const SCHEDULEFREE_SGD: Layout = (&[("z", "zs")], &[]);
pub const MUON_MOMENTUM: Layout = (&[("momentum_buffer", "momentum_buffers")], &[]);
pub const SCALED_ADD: Layout = (&[], &[]);
pub const ADEMAMIX: Layout =
    (&[("exp_avg_fast", "exp_avg_fasts"), ("exp_avg_slow", "exp_avg_slows"), ("exp_avg_sq", "exp_avg_sqs")], &["step"]);

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
    rho: Ema<T>,
    eps: T,
    neg_lr: T,
}

impl<T: Float> Rule<T> for Adadelta<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let sq = self.rho.square::<A>(s[0], g);
        s[0] = sq;
        let std = (sq + self.eps).sqrt();
        let delta = (s[1] + self.eps).sqrt() / std * g;
        s[1] = self.rho.square::<A>(s[1], delta);
        A::madd(delta, self.neg_lr, p)
    }
}

#[derive(Clone, Copy, Debug)]
struct Nadam<T> {
    g: Grad<T>,
    lerp: Lerp<T>,
    v: Ema<T>,
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
        s[1] = self.v.square::<A>(s[1], g);
        let denom = A::div_by_const(s[1], self.bc2, self.inv_bc2).sqrt() + self.eps;
        let p = p + self.c_grad * g / denom;
        p + self.c_avg * s[0] / denom
    }
}

#[derive(Clone, Copy, Debug)]
struct Radam<T, const KIND: u8> {
    g: Grad<T>,
    lerp: Lerp<T>,
    v: Ema<T>,
    bc1: T,
    inv_bc1: T,
    lr: T,
    rectified: bool,
    bc2_sqrt: T,
    eps: T,
    rect: T,
}

// A RAdam rule's `KIND`: every tensor of the call rectified, none, or either (tensors at
// different steps: chosen per tensor). A fixed kind compiles the loop without the choice, so
// it vectorizes at every SIMD level.
const RADAM_ANY: u8 = 0;
const RADAM_RECTIFIED: u8 = 1;
const RADAM_PLAIN: u8 = 2;

impl<T: Float, const KIND: u8> Rule<T> for Radam<T, KIND> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        s[0] = self.lerp.apply::<A>(s[0], g);
        s[1] = self.v.square::<A>(s[1], g);
        let corrected = A::div_by_const(s[0], self.bc1, self.inv_bc1);
        let rectified = match KIND {
            RADAM_RECTIFIED => true,
            RADAM_PLAIN => false,
            _ => self.rectified,
        };
        let update = if rectified {
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
    m: Ema<T>,
    v: Ema<T>,
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
        s[0] = self.m.mean::<A>(s[0], g);
        s[1] = self.v.square::<A>(s[1], g);
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
    m: Ema<T>,
    v: Ema<T>,
    neg_lr: T,
}

impl<T: Float> Rule<T> for Lion<T> {
    const STATES: usize = 1;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        // (`delta` is 0 or -+lr exactly, so the sum rounds once, as torch's add)
        let (p, delta, _) = self.split::<A>(p, g, s);
        p + delta
    }
}

impl<T: Float> Stepwise<T> for Lion<T> {
    #[inline(always)]
    fn split<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> (T, T, T) {
        let g = self.g.read::<A>(&mut p, g);
        // torch's sign of the interpolation: a NaN (from a NaN or infinite gradient element)
        // gives 0, so the parameter only decays, as in the published implementations.
        let direction = sign(self.m.mean::<A>(s[0], g));
        s[0] = self.v.mean::<A>(s[0], g);
        (p, direction * self.neg_lr, g)
    }
}

/// AdaBelief (Zhuang et al., NeurIPS 2020) as the authors' `adabelief-pytorch` (0.2): Adam
/// whose second moment tracks the "belief" (g - m)^2 (plus eps, kept in the state), with
/// their options: AMSGrad's maximum, and RAdam's rectification (`rectify`, on by default):
/// while the variance is not tractable the step is SGD with momentum (`degenerated_to_sgd`)
/// or none.
#[derive(Clone, Copy, Debug)]
struct AdaBelief<T, const AMS: bool, const KIND: u8> {
    g: Grad<T>,
    m: Ema<T>,
    v: Ema<T>,
    eps: T,
    /// This step's update (one of the kinds below) and its constants.
    kind: u8,
    k: [T; 3],
}

// This step's update of AdaBelief, per the authors' code. A rule's `KIND` is the kind every
// tensor of the call takes, so the loop is compiled without choosing (and vectorizes), or
// `ANY_KIND` (tensors at different steps), which chooses per tensor.
const ANY_KIND: u8 = 0;
/// Not rectified: `p -= lr / bc1 * m / (sqrt(s) / sqrt(bc2) + eps)` (with `s` the maximum
/// under AMSGrad); `k = [-lr / bc1, sqrt(bc2), 1 / sqrt(bc2)]`.
const ADAM_KIND: u8 = 1;
/// Rectified: `p -= lr * r * m / (sqrt(s) + eps)` (their code takes `s`, not the maximum);
/// `k[0] = -lr * r`.
const RECTIFIED_KIND: u8 = 2;
/// Early rectified steps: SGD with momentum, `p -= lr / bc1 * m`; `k[0] = -lr / bc1`.
const SGD_KIND: u8 = 3;
/// Early rectified steps without `degenerated_to_sgd`: no update.
const SKIP_KIND: u8 = 4;

impl<T: Float, const AMS: bool, const KIND: u8> Rule<T> for AdaBelief<T, AMS, KIND> {
    const STATES: usize = 2 + AMS as usize;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        let m = self.m.mean::<A>(s[0], g);
        s[0] = m;
        let r = g - m;
        // exp_avg_var.mul_(beta2).addcmul_(r, r, 1 - beta2), then .add_(eps) in place
        let var = self.v.square::<A>(s[1], r) + self.eps;
        s[1] = var;
        let top = if AMS {
            s[2] = nan_max(s[2], var);
            s[2]
        } else {
            var
        };
        let [k0, k1, k2] = self.k;
        match if KIND == ANY_KIND { self.kind } else { KIND } {
            ADAM_KIND => {
                let denom = A::div_by_const(top.sqrt(), k1, k2) + self.eps;
                p + k0 * (m / denom)
            }
            RECTIFIED_KIND => p + k0 * (m / (var.sqrt() + self.eps)),
            SGD_KIND => A::madd(m, k0, p),
            _ => p,
        }
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
        p - sign(g) * size
    }
}


/// ADOPT (Taniguchi et al., NeurIPS 2024, the authors' code): the gradient normalised by the
/// previous second moment (clipped), then momentum; the first step only initialises `v`.
#[derive(Clone, Copy, Debug)]
struct Adopt<T> {
    g: Grad<T>,
    first: bool,
    /// `-lr * wd` for the authors' decoupled decay `p.add_(p, alpha=-lr*wd)` (0: none).
    neg_decay: T,
    eps: T,
    /// The clipping bound (infinite: none).
    clip: T,
    lerp: Lerp<T>,
    v: Ema<T>,
    neg_lr: T,
}

impl<T: Float> Rule<T> for Adopt<T> {
    const STATES: usize = 2;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        if self.first {
            // exp_avg_sq.addcmul_(grad, grad)
            s[1] = A::madd(g, g, s[1]);
            return p;
        }
        let p = A::madd(p, self.neg_decay, p);
        let sq = s[1].sqrt();
        // clamp(sqrt(v), eps): NaN stays NaN
        let denom = if sq < self.eps { self.eps } else { sq };
        let n = g / denom;
        // clamp_(-clip, clip): NaN stays NaN
        let n = if n < -self.clip { -self.clip } else if n > self.clip { self.clip } else { n };
        s[0] = self.lerp.apply::<A>(s[0], n);
        s[1] = self.v.square::<A>(s[1], g);
        A::madd(s[0], self.neg_lr, p)
    }
}

/// AdEMAMix (Pagliardini et al., 2024, the authors' code): Adam's fast momentum plus `alpha`
/// times a slow one (`beta3`), both over Adam's bias-corrected denominator.
#[derive(Clone, Copy, Debug)]
struct Ademamix<T> {
    g: Grad<T>,
    fast: Ema<T>,
    slow: Ema<T>,
    v: Ema<T>,
    bc1: T,
    inv_bc1: T,
    bc2_sqrt: T,
    inv_bc2_sqrt: T,
    alpha: T,
    eps: T,
    weight_decay: T,
    neg_lr: T,
}

impl<T: Float> Rule<T> for Ademamix<T> {
    const STATES: usize = 3;
    #[inline(always)]
    fn update<A: Arith>(&self, mut p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.read::<A>(&mut p, g);
        s[0] = self.fast.mean::<A>(s[0], g);
        s[1] = self.slow.mean::<A>(s[1], g);
        s[2] = self.v.square::<A>(s[2], g);
        let denom = A::div_by_const(s[2].sqrt(), self.bc2_sqrt, self.inv_bc2_sqrt) + self.eps;
        let u = A::madd(self.alpha, s[1], A::div_by_const(s[0], self.bc1, self.inv_bc1)) / denom;
        // update.add_(p, alpha=wd), then p.add_(-lr * update)
        let u = A::madd(p, self.weight_decay, u);
        p + self.neg_lr * u
    }
}


/// Schedule-Free AdamW and SGD (Defazio et al., 2024), as the authors' `schedulefree`
/// package: the parameter is the interpolation `y` between the averaged iterate and `z`, the
/// SGD (or Adam-normalised) sequence; a new state starts with `z = y`.
#[derive(Clone, Copy, Debug)]
struct ScheduleFree<T, const ADAM: bool> {
    g: Grad<T>,
    fresh: bool,
    v: Ema<T>,
    bc2: T,
    inv_bc2: T,
    eps: T,
    weight_decay: T,
    lerp: Lerp<T>,
    /// `lr * (beta1 * (1 - ckp1) - 1)`
    c_y: T,
    neg_lr: T,
}

impl<T: Float, const ADAM: bool> Rule<T> for ScheduleFree<T, ADAM> {
    const STATES: usize = 1 + ADAM as usize;
    #[inline(always)]
    fn update<A: Arith>(&self, y: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.plain(g);
        let z = if self.fresh { y } else { s[0] };
        let gn = if ADAM {
            // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2); denom = (v / bc2).sqrt() + eps
            let v = self.v.square::<A>(s[1], g);
            s[1] = v;
            g / (A::div_by_const(v, self.bc2, self.inv_bc2).sqrt() + self.eps)
        } else {
            g
        };
        let gn = A::madd(y, self.weight_decay, gn);
        let y = A::madd(gn, self.c_y, self.lerp.apply::<A>(y, z));
        s[0] = A::madd(gn, self.neg_lr, z);
        y
    }
}


/// See [`MuonMomentumConfig`].
#[derive(Clone, Copy, Debug)]
struct MuonMomentum<T> {
    g: Grad<T>,
    to_grad: Lerp<T>,
    to_buf: Lerp<T>,
    nesterov: bool,
}

impl<T: Float> Rule<T> for MuonMomentum<T> {
    const STATES: usize = 1;
    #[inline(always)]
    fn update<A: Arith>(&self, _out: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = self.g.plain(g);
        s[0] = self.to_grad.apply::<A>(s[0], g);
        if self.nesterov {
            self.to_buf.apply::<A>(g, s[0])
        } else {
            s[0]
        }
    }
}

/// See [`ScaledAddConfig`].
#[derive(Clone, Copy, Debug)]
struct ScaledAdd<T> {
    decay: T,
    alpha: T,
}

impl<T: Float> Rule<T> for ScaledAdd<T> {
    const STATES: usize = 0;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, u: T, _s: &mut [T; MAX_STATES]) -> T {
        A::madd(u, self.alpha, p * self.decay)
    }
}


pub fn adamax<P: Storage, S: Storage<Arith = P::Arith>>(h: &AdamaxConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, false, h.lr);
    engine::run(tensors, ADAMAX, level, |c, _| {
        let clr = h.lr / bias_correction(h.beta1, next_step(c));
        Adamax { g, lerp: Lerp::new(1.0 - h.beta1), beta2: P::Arith::from_f64(h.beta2), eps: P::Arith::from_f64(h.eps), neg_clr: P::Arith::from_f64(-clr) }
    })
}

pub fn adadelta<P: Storage, S: Storage<Arith = P::Arith>>(h: &AdadeltaConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let rule = Adadelta {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, h.lr),
        rho: Ema::new(h.rho),
        eps: P::Arith::from_f64(h.eps),
        neg_lr: P::Arith::from_f64(-h.lr),
    };
    engine::run(tensors, ADADELTA, level, |c, _| {
        next_step(c);
        rule
    })
}

pub fn nadam<P: Storage, S: Storage<Arith = P::Arith>>(h: &NadamConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let (lr, b1, md) = (h.lr, h.beta1, h.momentum_decay);
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, h.decoupled_weight_decay, h.lr);
    engine::run(tensors, NADAM, level, |c, _| {
        let step = next_step(c);
        let bc2 = bias_correction(h.beta2, step);
        let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(step * md));
        let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((step + 1.0) * md));
        // torch multiplies the float32 `mu_product` tensor by the number in float32.
        *c[1] *= mu as f32;
        let mp = *c[1] as f64;
        let mp_next = mp * mu_next;
        let bc2_t = P::Arith::from_f64(bc2);
        Nadam {
            g,
            lerp: Lerp::new(1.0 - b1),
            v: Ema::new(h.beta2),
            bc2: bc2_t,
            inv_bc2: P::Arith::ONE / bc2_t,
            eps: P::Arith::from_f64(h.eps),
            c_grad: P::Arith::from_f64(-lr * (1.0 - mu) / (1.0 - mp)),
            c_avg: P::Arith::from_f64(-lr * mu_next / (1.0 - mp_next)),
        }
    })
}

pub fn radam<P: Storage, S: Storage<Arith = P::Arith>>(h: &RadamConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    // Whether each tensor's next step (`next_step`'s count) is rectified; one answer for all,
    // the usual case, compiles the loop for it.
    let kinds: Vec<u8> = tensors.iter().map(|t| t.counters.first().map_or(RADAM_ANY, |c| if radam_rect(h, (**c + 1.0) as f64).0 { RADAM_RECTIFIED } else { RADAM_PLAIN })).collect();
    match kinds.split_first() {
        Some((&RADAM_RECTIFIED, rest)) if rest.iter().all(|&k| k == RADAM_RECTIFIED) => radam_kind::<P, S, RADAM_RECTIFIED>(h, tensors, grad_scale, level),
        Some((&RADAM_PLAIN, rest)) if rest.iter().all(|&k| k == RADAM_PLAIN) => radam_kind::<P, S, RADAM_PLAIN>(h, tensors, grad_scale, level),
        _ => radam_kind::<P, S, RADAM_ANY>(h, tensors, grad_scale, level),
    }
}

/// Whether RAdam's step `step` is rectified, and the rectification factor (1 when not).
fn radam_rect(h: &RadamConfig, step: f64) -> (bool, f64) {
    let b2 = h.beta2;
    let bc2 = bias_correction(b2, step);
    let rho_inf = 2.0 / (1.0 - b2) - 1.0;
    let rho_t = rho_inf - 2.0 * step * b2.powf(step) / bc2;
    if rho_t > 5.0 {
        (true, pow_half((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)))
    } else {
        (false, 1.0)
    }
}

fn radam_kind<P: Storage, S: Storage<Arith = P::Arith>, const KIND: u8>(h: &RadamConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let (b1, b2) = (h.beta1, h.beta2);
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, h.decoupled_weight_decay, h.lr);
    engine::run(tensors, RADAM, level, |c, _| {
        let step = next_step(c);
        let bc1 = bias_correction(b1, step);
        let bc2 = bias_correction(b2, step);
        let (rectified, rect) = radam_rect(h, step);
        let bc1_t = P::Arith::from_f64(bc1);
        Radam::<P::Arith, KIND> {
            g,
            lerp: Lerp::new(1.0 - b1),
            v: Ema::new(b2),
            bc1: bc1_t,
            inv_bc1: P::Arith::ONE / bc1_t,
            lr: P::Arith::from_f64(h.lr),
            rectified,
            bc2_sqrt: P::Arith::from_f64(pow_half(bc2)),
            eps: P::Arith::from_f64(h.eps),
            rect: P::Arith::from_f64(rect),
        }
    })
}

pub fn adabound<P: Storage, S: Storage<Arith = P::Arith>, const AMS: bool>(h: &AdaBoundConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let (b1, b2) = (h.beta1, h.beta2);
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, h.decoupled_weight_decay, h.lr);
    let layout = if AMS { AMSBOUND } else { ADABOUND };
    engine::run(tensors, layout, level, |c, _| {
        let step = next_step(c);
        let (bc1, bc2) = (bias_correction(b1, step), bias_correction(b2, step));
        AdaBound::<P::Arith, AMS> {
            g,
            m: Ema::new(b1),
            v: Ema::new(b2),
            eps: P::Arith::from_f64(h.eps),
            step_size: P::Arith::from_f64(h.lr * bc2.sqrt() / bc1),
            lower: P::Arith::from_f64(h.final_lr * (1.0 - 1.0 / (h.gamma * step + 1.0))),
            upper: P::Arith::from_f64(h.final_lr * (1.0 + 1.0 / (h.gamma * step))),
        }
    })
}

pub fn lion<P: Storage, S: Storage<Arith = P::Arith>>(h: &LionConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let rule = Lion {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, true, h.lr),
        m: Ema::new(h.beta1),
        v: Ema::new(h.beta2),
        neg_lr: P::Arith::from_f64(-h.lr),
    };
    let make = |c: &mut [&mut f32], _| {
        next_step(c);
        rule
    };
    if h.cautious {
        engine::run_cautious(tensors, LION, level, make)
    } else {
        engine::run(tensors, LION, level, make)
    }
}

pub fn adabelief<P: Storage, S: Storage<Arith = P::Arith>>(h: &AdaBeliefConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    if h.amsgrad {
        adabelief_as::<P, S, true>(h, tensors, grad_scale, level)
    } else {
        adabelief_as::<P, S, false>(h, tensors, grad_scale, level)
    }
}

fn adabelief_as<P: Storage, S: Storage<Arith = P::Arith>, const AMS: bool>(h: &AdaBeliefConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    // The kind of update each tensor takes at its next step (`next_step`'s count); one kind
    // for all, the usual case, compiles the loop for that kind only.
    let kinds: Vec<u8> = tensors.iter().map(|t| t.counters.first().map_or(ANY_KIND, |c| belief_step::<P::Arith>(h, (**c + 1.0) as f64).0)).collect();
    match kinds.split_first() {
        Some((&k, rest)) if rest.iter().all(|&r| r == k) => match k {
            ADAM_KIND => adabelief_kind::<P, S, AMS, ADAM_KIND>(h, tensors, grad_scale, level),
            RECTIFIED_KIND => adabelief_kind::<P, S, AMS, RECTIFIED_KIND>(h, tensors, grad_scale, level),
            SGD_KIND => adabelief_kind::<P, S, AMS, SGD_KIND>(h, tensors, grad_scale, level),
            SKIP_KIND => adabelief_kind::<P, S, AMS, SKIP_KIND>(h, tensors, grad_scale, level),
            _ => adabelief_kind::<P, S, AMS, ANY_KIND>(h, tensors, grad_scale, level),
        },
        _ => adabelief_kind::<P, S, AMS, ANY_KIND>(h, tensors, grad_scale, level),
    }
}

/// The kind of AdaBelief's update at `step` and its constants (see `ADAM_KIND` and the rest).
fn belief_step<T: Float>(h: &AdaBeliefConfig, step: f64) -> (u8, [T; 3]) {
    let (b1, b2) = (h.beta1, h.beta2);
    let t = |x: f64| T::from_f64(x);
    if !h.rectify {
        let bc2_sqrt = t(bias_correction(b2, step).sqrt());
        return (ADAM_KIND, [t(-(h.lr / bias_correction(b1, step))), bc2_sqrt, T::ONE / bc2_sqrt]);
    }
    // RAdam's length of the approximated simple moving average, as their code.
    let beta2_t = b2.powf(step);
    let n_max = 2.0 / (1.0 - b2) - 1.0;
    let n = n_max - 2.0 * step * beta2_t / (1.0 - beta2_t);
    if n >= 5.0 {
        let r = ((1.0 - beta2_t) * (n - 4.0) / (n_max - 4.0) * (n - 2.0) / n * n_max / (n_max - 2.0)).sqrt() / (1.0 - b1.powf(step));
        (RECTIFIED_KIND, [t(-r * h.lr), T::ZERO, T::ZERO])
    } else if h.degenerated_to_sgd {
        (SGD_KIND, [t(-(1.0 / (1.0 - b1.powf(step))) * h.lr), T::ZERO, T::ZERO])
    } else {
        (SKIP_KIND, [T::ZERO; 3])
    }
}

fn adabelief_kind<P: Storage, S: Storage<Arith = P::Arith>, const AMS: bool, const KIND: u8>(h: &AdaBeliefConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    // (fixed_decay: the factor is 1 - wd, i.e. the decoupled decay with lr taken as 1)
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, h.decoupled_weight_decay, if h.fixed_decay { 1.0 } else { h.lr });
    let layout = if AMS { ADABELIEF_AMS } else { ADABELIEF };
    engine::run(tensors, layout, level, |c, _| {
        let (kind, k) = belief_step(h, next_step(c));
        AdaBelief::<P::Arith, AMS, KIND> { g, m: Ema::new(h.beta1), v: Ema::new(h.beta2), eps: P::Arith::from_f64(h.eps), kind, k }
    })
}

/// ASGD, with the `COPY` variant (see [`Asgd`]) when every tensor's stored `mu` (the one this
/// step uses; renewed after it) is exactly 1.
pub fn asgd<P: Storage, S: Storage<Arith = P::Arith>>(h: &AsgdConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    if tensors.iter().all(|t| t.counters.get(2).is_some_and(|mu| **mu == 1.0)) {
        asgd_as::<P, S, true>(h, tensors, grad_scale, level)
    } else {
        asgd_as::<P, S, false>(h, tensors, grad_scale, level)
    }
}

fn asgd_as<P: Storage, S: Storage<Arith = P::Arith>, const COPY: bool>(h: &AsgdConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let (lr, lambd, alpha, t0) = (h.lr, h.lambd, h.alpha, h.t0);
    let g = Grad::new(h.maximize, grad_scale, h.weight_decay, false, h.lr);
    engine::run(tensors, ASGD, level, |c, _| {
        let step = next_step(c);
        // This step uses the eta and mu of the previous one; then they are renewed.
        let (eta, mu) = (*c[1] as f64, *c[2] as f64);
        *c[1] = (lr / (1.0 + lambd * lr * step).powf(alpha)) as f32;
        *c[2] = (1.0 / (step - t0).max(1.0)) as f32;
        Asgd::<P::Arith, COPY> { g, decay: P::Arith::from_f64(1.0 - lambd * eta), neg_eta: P::Arith::from_f64(-eta), mu: P::Arith::from_f64(mu), average: mu != 1.0 }
    })
}

pub fn rprop<P: Storage, S: Storage<Arith = P::Arith>>(h: &RpropConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let rule = Rprop {
        g: Grad::new(h.maximize, grad_scale, 0.0, false, 0.0),
        etaminus: P::Arith::from_f64(h.etaminus),
        etaplus: P::Arith::from_f64(h.etaplus),
        min: P::Arith::from_f64(h.step_size_min),
        max: P::Arith::from_f64(h.step_size_max),
    };
    engine::run(tensors, RPROP, level, |c, _| {
        next_step(c);
        rule
    })
}

pub fn adopt<P: Storage, S: Storage<Arith = P::Arith>>(h: &AdoptConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let l2 = if h.decouple { 0.0 } else { h.weight_decay };
    let g = Grad::new(h.maximize, grad_scale, l2, false, h.lr);
    let neg_decay = P::Arith::from_f64(if h.decouple { -h.lr * h.weight_decay } else { 0.0 });
    engine::run(tensors, ADOPT, level, |c, _| {
        // The authors' step count is the steps before this one (0 on the first).
        let before = next_step(c) - 1.0;
        let clip = if h.clip_power >= 0.0 { before.powf(h.clip_power) } else if h.clip >= 0.0 { h.clip } else { f64::INFINITY };
        Adopt {
            g,
            first: before == 0.0,
            neg_decay,
            eps: P::Arith::from_f64(h.eps),
            clip: P::Arith::from_f64(clip),
            lerp: Lerp::new(1.0 - h.beta1),
            v: Ema::new(h.beta2),
            neg_lr: P::Arith::from_f64(-h.lr),
        }
    })
}

/// The authors' warm-ups: `alpha` rises linearly from 0; `beta3` rises from `beta1` linearly
/// in half-life `log(0.5) / log(beta) - 1`.
fn ademamix_schedules(h: &AdemamixConfig, step: f64) -> (f64, f64) {
    let alpha = if h.alpha_warmup > 0.0 && step < h.alpha_warmup {
        let a = step / h.alpha_warmup;
        a * h.alpha
    } else {
        h.alpha
    };
    let beta3 = if h.beta3_warmup > 0.0 && step < h.beta3_warmup {
        let half_life = |beta: f64| 0.5f64.ln() / (beta + 1e-8).ln() - 1.0;
        let a = step / h.beta3_warmup;
        0.5f64.powf(1.0 / ((1.0 - a) * half_life(h.beta1) + a * half_life(h.beta3) + 1.0))
    } else {
        h.beta3
    };
    (alpha, beta3)
}

pub fn ademamix<P: Storage, S: Storage<Arith = P::Arith>>(h: &AdemamixConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let g = Grad::new(h.maximize, grad_scale, 0.0, false, h.lr);
    engine::run(tensors, ADEMAMIX, level, |c, _| {
        let step = next_step(c);
        let (alpha, beta3) = ademamix_schedules(h, step);
        let bc1 = P::Arith::from_f64(bias_correction(h.beta1, step));
        let bc2_sqrt = P::Arith::from_f64(bias_correction(h.beta2, step).sqrt());
        Ademamix {
            g,
            fast: Ema::new(h.beta1),
            slow: Ema::new(beta3),
            v: Ema::new(h.beta2),
            bc1,
            inv_bc1: P::Arith::ONE / bc1,
            bc2_sqrt,
            inv_bc2_sqrt: P::Arith::ONE / bc2_sqrt,
            alpha: P::Arith::from_f64(alpha),
            eps: P::Arith::from_f64(h.eps),
            weight_decay: P::Arith::from_f64(h.weight_decay),
            neg_lr: P::Arith::from_f64(-h.lr),
        }
    })
}

pub fn schedulefree<P: Storage, S: Storage<Arith = P::Arith>>(h: &ScheduleFreeConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    if h.adam {
        schedulefree_as::<P, S, true>(h, tensors, grad_scale, level)
    } else {
        schedulefree_as::<P, S, false>(h, tensors, grad_scale, level)
    }
}

fn schedulefree_as<P: Storage, S: Storage<Arith = P::Arith>, const ADAM: bool>(h: &ScheduleFreeConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let t = |x: f64| P::Arith::from_f64(x);
    let bc2 = t(h.bc2);
    let rule = ScheduleFree::<P::Arith, ADAM> {
        g: Grad::new(h.maximize, grad_scale, 0.0, false, h.lr),
        fresh: false,
        v: Ema::new(h.beta2),
        bc2,
        inv_bc2: P::Arith::ONE / bc2,
        eps: t(h.eps),
        weight_decay: t(h.weight_decay),
        lerp: Lerp::new(h.ckp1),
        c_y: t(h.lr * (h.beta1 * (1.0 - h.ckp1) - 1.0)),
        neg_lr: t(-h.lr),
    };
    let layout = if ADAM { SCHEDULEFREE_ADAM } else { SCHEDULEFREE_SGD };
    engine::run(tensors, layout, level, |_, fresh| ScheduleFree { fresh, ..rule })
}

pub fn muon_momentum<P: Storage, S: Storage<Arith = P::Arith>>(h: &MuonMomentumConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let rule = MuonMomentum { g: Grad::new(false, grad_scale, 0.0, false, 0.0), to_grad: Lerp::new(1.0 - h.momentum), to_buf: Lerp::new(h.momentum), nesterov: h.nesterov };
    engine::run(tensors, MUON_MOMENTUM, level, |_, _| rule)
}

pub fn scaled_add<P: Storage, S: Storage<Arith = P::Arith>>(h: &ScaledAddConfig, tensors: Vec<Tensor<'_, P, S>>, _grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let rule = ScaledAdd { decay: P::Arith::from_f64(h.decay), alpha: P::Arith::from_f64(h.alpha) };
    engine::run(tensors, SCALED_ADD, level, |_, _| rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;
    use crate::test_util::{data, lerp_ref, madd_ref, misaligned_lengths};
    use crate::optim::Config;

    /// Two tensors (same start, the moments at 0.1 and 0.2) at step counts `starts`: each
    /// stepped alone by `step`, and both in one call; returns `(alone, together)`.
    fn alone_and_together(
        p0: &[f64],
        g: &[f64],
        starts: [f32; 2],
        step: impl for<'a> Fn(Vec<Tensor<'a, f64>>) -> Result<(), Error>,
    ) -> ([Vec<f64>; 2], [Vec<f64>; 2]) {
        let n = p0.len();
        let mut params = [p0.to_vec(), p0.to_vec()];
        let mut alone = params.clone();
        for (p, &c0) in alone.iter_mut().zip(&starts) {
            let (mut m, mut v, mut c) = (vec![0.1; n], vec![0.2; n], c0);
            let mut st: Vec<&mut [f64]> = vec![&mut m, &mut v];
            let mut cs: Vec<&mut f32> = vec![&mut c];
            step(vec![Tensor { param: p, grad: g, states: &mut st, counters: &mut cs, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false }]).unwrap();
        }
        let ([mut ma, mut mb], [mut va, mut vb], [mut ca, mut cb]) = ([vec![0.1; n], vec![0.1; n]], [vec![0.2; n], vec![0.2; n]], starts);
        let mut sa: Vec<&mut [f64]> = vec![&mut ma, &mut va];
        let mut sb: Vec<&mut [f64]> = vec![&mut mb, &mut vb];
        let mut ka: Vec<&mut f32> = vec![&mut ca];
        let mut kb: Vec<&mut f32> = vec![&mut cb];
        let [pa, pb] = &mut params;
        step(vec![
            Tensor { param: pa, grad: g, states: &mut sa, counters: &mut ka, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false },
            Tensor { param: pb, grad: g, states: &mut sb, counters: &mut kb, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false },
        ])
        .unwrap();
        (alone, params)
    }

    /// RAdam over tensors at different steps (one rectified, one not: the loop that chooses
    /// per tensor) equals each tensor stepped alone (the loop compiled for its kind).
    #[test]
    fn radam_tensors_at_different_steps() {
        let h = RadamConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled_weight_decay: false, maximize: false };
        let (p0, g) = (data(37, 3), data(37, 4));
        let starts = [0.0f32, 9.0];
        assert!(!radam_rect(&h, 1.0).0 && radam_rect(&h, 10.0).0);
        let (alone, together) = alone_and_together(&p0, &g, starts, |t| radam(&h, t, 1.0, SimdLevel::Scalar));
        assert_eq!(together, alone);
    }

    /// AdaBelief over tensors at different steps (each its own kind of update: the loop that
    /// chooses per tensor) equals each tensor stepped alone (the loop compiled for its kind).
    #[test]
    fn adabelief_tensors_at_different_steps() {
        let h = AdaBeliefConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-16, weight_decay: 0.0, decoupled_weight_decay: true, fixed_decay: false, amsgrad: false, rectify: true, degenerated_to_sgd: true, maximize: false };
        let (p0, g) = (data(37, 1), data(37, 2));
        // steps 0 and 5: an SGD step and a rectified one
        let starts = [0.0f32, 5.0];
        let (alone, together) = alone_and_together(&p0, &g, starts, |t| adabelief(&h, t, 1.0, SimdLevel::Scalar));
        assert_eq!(together, alone);
        assert_ne!(alone[0], alone[1]);
    }

    /// Runs `name` three times over a misaligned sub-slice at every level and checks it
    /// against `reference`, torch's sequence of whole-array operations.
    fn check<T: Float + Storage<Arith = T>>(
        name: &str,
        h: &[(&str, f64)],
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
                    let t = Tensor { param: &mut p[off..], grad: &g[off..], states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                    Config::new(name, h).unwrap().step_at(vec![t], 1.0, level).unwrap();
                    reference(&mut rp, &g[off..], &mut rs, step, level.fused_multiply_add());
                }
                let same = |a: &[T], b: &[T]| a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()));
                assert!(same(&p[off..], &rp), "{name} {level:?} len {len} off {off}");
                assert!(same(&s[0][off..], &rs[0]) && same(&s[1][off..], &rs[1]), "{name} state {level:?} len {len}");
            }
        }
    }

    fn adamax<T: Float + Storage<Arith = T>>() {
        let h = &[("lr", 0.01), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.1), ("maximize", 1.0)];
        check::<T>("adamax", h, |p, g, s, step, fma| {
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

    fn adadelta<T: Float + Storage<Arith = T>>() {
        let h = &[("lr", 0.5), ("rho", 0.9), ("eps", 1e-6), ("weight_decay", 0.0), ("maximize", 0.0)];
        check::<T>("adadelta", h, |p, g, s, _step, fma| {
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
    fn asgd_mixed_steps<T: Float + Storage<Arith = T>>() {
        let (lr, lambd, alpha, t0) = (0.05, 1e-3, 0.75, 2.0);
        let h = &[("lr", lr), ("lambd", lambd), ("alpha", alpha), ("t0", t0), ("weight_decay", 0.0), ("maximize", 0.0)];
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
                    Tensor { param: &mut p0[..], grad: &g, states: &mut st0, counters: &mut c0, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false },
                    Tensor { param: &mut p1[..], grad: &g, states: &mut st1, counters: &mut c1, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false },
                ];
                Config::new("asgd", h).unwrap().step_at(tensors, 1.0, level).unwrap();
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
        let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
        let h = [("lr", 0.01), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.0), ("maximize", 0.0)];
        let err = Config::new("adamax", &h).unwrap().step_at(vec![t], 1.0, SimdLevel::Scalar).unwrap_err();
        assert!(matches!(err, Error::Value(_)) && err.message().contains("exp_infs"), "{err}");
        assert_eq!(step, 0.0);
        assert!(matches!(Config::new("bogus", &h), Err(Error::Type(_))));
        let err = Config::new("adamax", &h[1..]).unwrap_err();
        assert!(matches!(err, Error::Type(_)) && err.message().contains("missing hyperparameter \"lr\""), "{err}");
        let extra = [&h[..], &[("bogus", 5.0)]].concat();
        let err = Config::new("adamax", &extra).unwrap_err();
        assert!(matches!(err, Error::Type(_)) && err.message().contains("unexpected hyperparameter \"bogus\""), "{err}");
        assert_eq!(Config::new("nadam", &[("lr", 0.0), ("beta1", 0.0), ("beta2", 0.0), ("eps", 0.0), ("weight_decay", 0.0), ("momentum_decay", 0.0), ("decoupled_weight_decay", 0.0), ("maximize", 0.0)]).unwrap().layout().1, &["step", "mu_product"]);
    }
}
