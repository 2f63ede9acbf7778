//! Prodigy (Mishchenko & Defazio, 2024; the authors' `prodigyopt` package): Adam whose step
//! size `d` is estimated from the run itself. The estimate needs two sums over every tensor
//! of every group before any parameter moves, so a step is two passes of the engine with the
//! estimate between them ([`step`], from the groups' values: one call for a single group, or
//! the first pass over each group, then the update over each):
//!
//! 1. [`stats`], a reducing pass ([`engine::sweep`], the parameter only read): the moments
//!    and the estimate's running sum `s`, and the two sums it returns, `sum g * (p0 - p)` and
//!    `sum |s|` (float64, fixed blocks, independent of the thread count).
//! 2. [`estimate`], then [`update`] ([`engine::run`]): the step with the new `d`, reading
//!    the moments.
//! ```text
//! dlr = d * lr                                     (use_bias_correction: times sqrt(1 - b2^(k+1)) / (1 - b1^(k+1)))
//! g = g + wd * p                                   (decouple=False)
//! m = b1 * m + d * (1 - b1) * g;   v = b2 * v + d^2 * (1 - b2) * g * g
//! s = b3 * s + (d / d0) * dlr * g                  (safeguard_warmup: (d / d0) * d)
//! d_numerator = b3 * d_numerator + (d / d0) * dlr * sum g * (p0 - p);   d_denom = sum |s|
//! d_hat = d_coef * d_numerator / d_denom;  d = max(d, d_hat) on the first estimate;
//! d_max = max(d_max, d_hat);  d = min(d_max, d * growth_rate)
//! p = p - wd * dlr * p                             (decouple=True)
//! p = p - dlr * m / (sqrt(v) + d * eps)            (beta1 = 0: p - dlr * d * g / (...))
//! ```
//! The coefficients (`d * (1 - b1)`, ...) are computed in float64 as `prodigyopt` computes
//! them; each is rounded once to the arithmetic type, as torch rounds a scalar argument.

use super::engine::{self, Ema, Grad, Layout, Rule, Storage, Tensor, MAX_STATES, next_step};
use super::hyper::hyper;
use crate::float::Float;
use crate::simd::{Arith, SimdLevel};
use crate::Error;

/// Prodigy's first pass (made by [`ProdigyConfig::stats_config`], not a rule of its own):
/// `beta3` the factor of the estimate's average `s` and `s_coef` the gradient's coefficient
/// in it, `beta1` (whether the layout has the first moment), `weight_decay` the coupled (L2)
/// decay, 0 when decoupled; `maximize` negates the gradient (beyond the authors').
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProdigyStatsConfig {
    pub beta1: f64,
    pub beta3: f64,
    pub s_coef: f64,
    pub weight_decay: f64,
    pub maximize: bool,
}

/// Prodigy's update (made by [`ProdigyConfig::update_config`], not a rule of its own): the
/// moments unless `moments` is off (a group at lr 0: they stay; `beta1`, `beta2` their
/// factors, `m_coef`, `v_coef` the gradient's coefficients in them), then the step: `m_rate`
/// (`-dlr`) multiplies `m / denom`, or with `beta1 = 0` `g_rate` (`-dlr * d`) multiplies
/// `g / denom`; `d_eps` is `d * eps`; `decay` the decoupled decay factor `-wd * dlr` (applied
/// when `decouple`); `weight_decay` the coupled decay, 0 when decoupled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProdigyUpdateConfig {
    pub moments: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub m_coef: f64,
    pub v_coef: f64,
    pub m_rate: f64,
    pub g_rate: f64,
    pub d_eps: f64,
    pub decay: f64,
    pub decouple: bool,
    pub weight_decay: f64,
    pub maximize: bool,
}

hyper! {
    /// Prodigy's step over one group, from the group's values (`group_lr` its lr, `lr` the
    /// largest of every group's, `beta1..3`, `eps`, `weight_decay`, `decouple`,
    /// `use_bias_correction`, `safeguard_warmup`, `d`, `d0`, `d_max`, `d_numerator`,
    /// `d_coef`, `growth_rate`, `k`, `maximize`; `beta3` given, not None). A group at lr 0
    /// takes no part in the estimate (no first pass) and its moments stay, but the update
    /// still decays and steps it, with the step's `d * lr`, as the authors'. `pass` 0: the whole step over the only group; 1: the first pass alone over one
    /// of several groups (`d`, `lr`, `beta1`, `beta2`, `beta3`, `decouple`, `k` and
    /// `use_bias_correction` the first group's, as the authors'); 2: the update alone, after
    /// the first pass over every group, with `delta` and `denom` the sums of their first
    /// passes' results (and the first group's estimate values). See [`step`].
    ProdigyConfig for "prodigy" { group_lr: f64, lr: f64, beta1: f64, beta2: f64, beta3: f64, eps: f64, weight_decay: f64, decouple: bool, use_bias_correction: bool, safeguard_warmup: bool, d: f64, d0: f64, d_max: f64, d_numerator: f64, d_coef: f64, growth_rate: f64, k: f64, maximize: bool, pass: f64, delta: f64, denom: f64 }
}

impl ProdigyConfig {
    /// The step's `d * lr` (times Adam's bias correction with `use_bias_correction`).
    pub fn dlr(&self) -> f64 {
        let k = self.k + 1.0;
        // (`** 0.5` as the authors write it: the same `pow`)
        let correction = if self.use_bias_correction { (1.0 - self.beta2.powf(k)).powf(0.5) / (1.0 - self.beta1.powf(k)) } else { 1.0 };
        self.d * self.lr * correction
    }

    /// The first pass's coefficients.
    pub fn stats_config(&self) -> ProdigyStatsConfig {
        let (d, dlr) = (self.d, self.dlr());
        ProdigyStatsConfig {
            beta1: self.beta1,
            beta3: self.beta3,
            s_coef: if self.safeguard_warmup { (d / self.d0) * d } else { (d / self.d0) * dlr },
            weight_decay: if self.decouple { 0.0 } else { self.weight_decay },
            maximize: self.maximize,
        }
    }

    /// The update's coefficients with the new estimate `d` (the moments' and `dlr` are the
    /// step's: the old estimate's).
    pub fn update_config(&self, d: f64) -> ProdigyUpdateConfig {
        let (old, dlr) = (self.d, self.dlr());
        ProdigyUpdateConfig {
            moments: self.group_lr != 0.0,
            beta1: self.beta1,
            beta2: self.beta2,
            m_coef: old * (1.0 - self.beta1),
            v_coef: old * old * (1.0 - self.beta2),
            m_rate: -dlr,
            g_rate: -dlr * d,
            d_eps: d * self.eps,
            decay: -self.weight_decay * dlr,
            decouple: self.decouple && self.weight_decay != 0.0,
            weight_decay: if self.decouple { 0.0 } else { self.weight_decay },
            maximize: self.maximize,
        }
    }

    /// This group's part of the estimate's numerator from its first pass's `sum g * (p0 - p)`.
    pub fn delta(&self, dot: f64) -> f64 {
        (self.d / self.d0) * self.dlr() * dot
    }
}

/// The estimate after a step's first pass over every group: the new `[d_numerator, d_denom,
/// d, d_max, d_hat]` from the group's values and the sums (`delta` the sum of the groups'
/// [`ProdigyConfig::delta`], `denom` of their `sum |s|`), as the authors'. With `denom == 0`
/// (no gradient moved the estimate) nothing changes and no update follows.
pub fn estimate(h: &ProdigyConfig, delta: f64, denom: f64) -> [f64; 5] {
    if denom == 0.0 {
        return [h.d_numerator, denom, h.d, h.d_max, h.d];
    }
    let numerator = h.d_numerator * h.beta3 + delta;
    let d_hat = h.d_coef * numerator / denom;
    let mut d = h.d;
    if d == h.d0 {
        d = d.max(d_hat);
    }
    let d_max = h.d_max.max(d_hat);
    let d = d_max.min(d * h.growth_rate);
    [numerator, denom, d, d_max, d_hat]
}

/// Prodigy's step over a group (see [`ProdigyConfig`] for `pass`). Returns pass 1's `[delta,
/// sum |s|]`, or the estimate ([`estimate`]) the update (if any: not when `denom == 0`) took.
/// Checks every tensor before touching any.
pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &ProdigyConfig,
    mut tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<Vec<f64>, Error> {
    let (delta, denom) = if h.pass == 2.0 {
        (h.delta, h.denom)
    } else if h.pass == 0.0 || h.pass == 1.0 {
        let (delta, abs_sum) = if h.group_lr == 0.0 {
            (0.0, 0.0)
        } else {
            let (dot, abs_sum) = stats_at(&h.stats_config(), &mut tensors, grad_scale, level)?;
            (h.delta(dot), abs_sum)
        };
        if h.pass == 1.0 {
            return Ok(vec![delta, abs_sum]);
        }
        (0.0 + delta, abs_sum) // (a sum over the one group, from 0 as over several)
    } else {
        return Err(Error::value(format!("prodigy: pass must be 0, 1 or 2, got {}", h.pass)));
    };
    let out = estimate(h, delta, denom);
    if denom != 0.0 {
        update(&h.update_config(out[2]), tensors, grad_scale, level)?;
    }
    Ok(out.to_vec())
}

/// `s`, `p0` (the parameter at the first step), the moments (the first only with
/// `beta1 > 0`, as `prodigyopt` keeps it) and the step counter.
pub const LAYOUT: Layout = (&[("s", "s_list"), ("p0", "p0_list"), ("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")], &["step"]);
pub const LAYOUT_NO_M: Layout = (&[("s", "s_list"), ("p0", "p0_list"), ("exp_avg_sq", "exp_avg_sqs")], &["step"]);

/// The layout for `beta1`.
pub fn layout(beta1: f64) -> Layout {
    if beta1 > 0.0 {
        LAYOUT
    } else {
        LAYOUT_NO_M
    }
}

/// The gradient with the coupled decay (`grad.add_(p, alpha=wd)`) when `L2` (a constant, so
/// the loop is compiled without the choice and vectorizes at every level).
#[inline(always)]
fn l2<T: Float, A: Arith, const L2: bool>(g: &Grad<T>, p: T, grad: T) -> T {
    if L2 {
        g.with_l2::<A>(p, grad)
    } else {
        g.plain(grad)
    }
}

/// Pass 1: `s`; sums `g * (p0 - p)` and `|s|` (reads the parameter, the gradient, `s` and
/// `p0`; writes `s` alone: the moments wait for the update, which reads them anyway).
#[derive(Clone, Copy, Debug)]
struct Stats<T, const M: bool, const L2: bool> {
    g: Grad<T>,
    s: Ema<T>,
}

impl<T: Float, const M: bool, const L2: bool> Rule<T> for Stats<T, M, L2> {
    const STATES: usize = 3 + M as usize;
    const WRITES: u32 = 1 << 1;
    const SQUARED: bool = false;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        // torch's `mul_(b).add_(g, alpha=c)` (see `Ema`)
        s[0] = self.s.mean::<A>(s[0], l2::<T, A, L2>(&self.g, p, g));
        p
    }
    #[inline(always)]
    fn sums<A: Arith>(&self, p: T, g: T, s: &[T; MAX_STATES]) -> [T; 2] {
        let g = l2::<T, A, L2>(&self.g, p, g);
        [g * (s[1] - p), s[0].abs()]
    }
}

/// Pass 2: the moments (with the step's `d`; unless `MOVE` is off), then the step (with the
/// new one).
#[derive(Clone, Copy, Debug)]
struct Update<T, const M: bool, const L2: bool, const MOVE: bool> {
    g: Grad<T>,
    m: Ema<T>,
    v: Ema<T>,
    m_rate: T,
    g_rate: T,
    d_eps: T,
    decay: Option<T>,
}

impl<T: Float, const M: bool, const L2: bool, const MOVE: bool> Rule<T> for Update<T, M, L2, MOVE> {
    const STATES: usize = 3 + M as usize;
    /// The parameter and the moments (buffers 2 and 3 with the first moment, 2 without).
    const WRITES: u32 = if MOVE { 1 | 1 << 3 | 1 << (3 + M as u32) } else { 1 };
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = l2::<T, A, L2>(&self.g, p, g);
        if MOVE {
            if M {
                s[2] = self.m.mean::<A>(s[2], g);
            }
            // torch's `mul_(b2).addcmul_(g, g, value=c)`, `mul_(b).add_(g, alpha=c)` (see `Ema`)
            s[2 + M as usize] = self.v.square::<A>(s[2 + M as usize], g);
        }
        let denom = s[2 + M as usize].sqrt() + self.d_eps;
        // `p.add_(p, alpha=-wd * dlr)`: one rounding with FMA, as torch's vectorized add
        // (decoupled decay: never with the coupled one, so `g` is the same either way)
        let p = match self.decay {
            Some(c) => A::madd(p, c, p),
            None => p,
        };
        // `p.addcdiv_(t, denom, value=rate)`: `p + rate * t / denom`, as torch's kernel
        if M {
            p + self.m_rate * s[2] / denom
        } else {
            p + self.g_rate * g / denom
        }
    }
}

fn stats_with<P: Storage, S: Storage<Arith = P::Arith>, const M: bool, const L2: bool>(
    h: &ProdigyStatsConfig,
    tensors: &mut [Tensor<'_, P, S>],
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(f64, f64), Error> {
    let rule = Stats::<P::Arith, M, L2> {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, 0.0),
        s: Ema { beta: P::Arith::from_f64(h.beta3), one_minus: P::Arith::from_f64(h.s_coef) },
    };
    let swept = engine::sweep(tensors, layout(h.beta1), level, |_, _| rule)?;
    Ok(swept.iter().fold((0.0, 0.0), |(a, b), ((x, y), _)| (a + x, b + y)))
}

/// Prodigy's first pass over a group: returns `(sum g * (p0 - p), sum |s|)` over all its
/// tensors. The parameters are only read; the counters are left as they are. Checks every
/// tensor before touching any.
pub fn stats<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &ProdigyStatsConfig,
    mut tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(f64, f64), Error> {
    stats_at(h, &mut tensors, grad_scale, level)
}

fn stats_at<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &ProdigyStatsConfig,
    tensors: &mut [Tensor<'_, P, S>],
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(f64, f64), Error> {
    match (h.beta1 > 0.0, h.weight_decay != 0.0) {
        (true, true) => stats_with::<P, S, true, true>(h, tensors, grad_scale, level),
        (true, false) => stats_with::<P, S, true, false>(h, tensors, grad_scale, level),
        (false, true) => stats_with::<P, S, false, true>(h, tensors, grad_scale, level),
        (false, false) => stats_with::<P, S, false, false>(h, tensors, grad_scale, level),
    }
}

fn update_with<P: Storage, S: Storage<Arith = P::Arith>, const M: bool, const L2: bool, const MOVE: bool>(
    h: &ProdigyUpdateConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let ema = |beta: f64, coef: f64| Ema { beta: P::Arith::from_f64(beta), one_minus: P::Arith::from_f64(coef) };
    let rule = Update::<P::Arith, M, L2, MOVE> {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, 0.0),
        m: ema(h.beta1, h.m_coef),
        v: ema(h.beta2, h.v_coef),
        m_rate: P::Arith::from_f64(h.m_rate),
        g_rate: P::Arith::from_f64(h.g_rate),
        d_eps: P::Arith::from_f64(h.d_eps),
        decay: if h.decouple && h.decay != 0.0 { Some(P::Arith::from_f64(h.decay)) } else { None },
    };
    engine::run(tensors, layout(h.beta1), level, |c, _| {
        next_step(c);
        rule
    })
}

/// Prodigy's update over a group (after [`stats`] over every group and the new `d`), in
/// place; counts the step. Checks every tensor before touching any.
pub fn update<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &ProdigyUpdateConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    match (h.beta1 > 0.0, h.weight_decay != 0.0, h.moments) {
        (true, true, true) => update_with::<P, S, true, true, true>(h, tensors, grad_scale, level),
        (true, false, true) => update_with::<P, S, true, false, true>(h, tensors, grad_scale, level),
        (false, true, true) => update_with::<P, S, false, true, true>(h, tensors, grad_scale, level),
        (false, false, true) => update_with::<P, S, false, false, true>(h, tensors, grad_scale, level),
        (true, true, false) => update_with::<P, S, true, true, false>(h, tensors, grad_scale, level),
        (true, false, false) => update_with::<P, S, true, false, false>(h, tensors, grad_scale, level),
        (false, true, false) => update_with::<P, S, false, true, false>(h, tensors, grad_scale, level),
        (false, false, false) => update_with::<P, S, false, false, false>(h, tensors, grad_scale, level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::available;

    /// Both passes against the formulas in float64, element by element (FMA or not, the
    /// operations round at most once each, so the result is within a few ulps), and the two
    /// sums against plain loops, at every SIMD level and across the block boundary.
    #[test]
    fn two_passes_match_the_formulas() {
        let n = 9000; // more than one block of the reducing pass
        let p: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
        let g: Vec<f64> = (0..n).map(|i| ((i * 53 % 89) as f64 - 44.0) / 40.0).collect();
        let p0: Vec<f64> = p.iter().map(|x| x * 0.5 + 0.25).collect();
        let s_in: Vec<f64> = (0..n).map(|i| (i % 7) as f64 * 1e-3 - 2e-3).collect();
        let m_in: Vec<f64> = (0..n).map(|i| (i % 5) as f64 * 1e-2).collect();
        let v_in: Vec<f64> = (0..n).map(|i| (i % 3) as f64 * 1e-3).collect();
        let (b1, b2, b3, mc, vc, sc, wd) = (0.9, 0.999, 0.97, 0.3, 0.02, 1.5, 0.01);
        let (m_rate, d_eps, decay) = (-0.05, 1e-7, -0.002);
        for level in available() {
            let (mut pp, mut s, mut p0v, mut m, mut v) = (p.clone(), s_in.clone(), p0.clone(), m_in.clone(), v_in.clone());
            let mut step = 0f32;
            let h = ProdigyStatsConfig { beta1: b1, beta3: b3, s_coef: sc, weight_decay: wd, maximize: false };
            let mut states: Vec<&mut [f64]> = vec![&mut s, &mut p0v, &mut m, &mut v];
            let mut counters: Vec<&mut f32> = vec![&mut step];
            let t = Tensor { param: &mut pp, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
            let (dot, abs) = stats(&h, vec![t], 1.0, level).unwrap();
            let gl: Vec<f64> = (0..n).map(|i| g[i] + wd * p[i]).collect();
            let s_ref: Vec<f64> = (0..n).map(|i| b3 * s_in[i] + sc * gl[i]).collect();
            let dot_ref: f64 = (0..n).map(|i| gl[i] * (p0[i] - p[i])).sum();
            let abs_ref: f64 = s_ref.iter().map(|x| x.abs()).sum();
            assert!((dot - dot_ref).abs() <= 1e-12 * dot_ref.abs().max(1.0), "{level:?}: {dot} vs {dot_ref}");
            assert!((abs - abs_ref).abs() <= 1e-12 * abs_ref, "{level:?}: {abs} vs {abs_ref}");
            assert_eq!(pp, p, "the first pass only reads the parameter");
            assert_eq!((m.clone(), v.clone(), step), (m_in.clone(), v_in.clone(), 0.0), "and leaves the moments");
            let hu = ProdigyUpdateConfig { moments: true, beta1: b1, beta2: b2, m_coef: mc, v_coef: vc, m_rate, g_rate: 0.0, d_eps, decay, decouple: true, weight_decay: wd, maximize: false };
            let mut states: Vec<&mut [f64]> = vec![&mut s, &mut p0v, &mut m, &mut v];
            let mut counters: Vec<&mut f32> = vec![&mut step];
            let t = Tensor { param: &mut pp, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
            update(&hu, vec![t], 1.0, level).unwrap();
            assert_eq!(step, 1.0);
            for i in 0..n {
                let m_ref = b1 * m_in[i] + mc * gl[i];
                let v_ref = b2 * v_in[i] + vc * gl[i] * gl[i];
                let p_ref = p[i] + decay * p[i] + m_rate * m_ref / (v_ref.sqrt() + d_eps);
                for (x, r) in [(s[i], s_ref[i]), (m[i], m_ref), (v[i], v_ref), (pp[i], p_ref)] {
                    assert!((x - r).abs() <= 1e-14 * r.abs().max(1.0), "{level:?} [{i}]: {x} vs {r}");
                }
            }
        }
    }

    /// The whole step in one call (one group) equals the first pass, then the update with
    /// the sums (several groups: here one), bit for bit, and the estimate follows the
    /// authors' formulas; a gradient that moves nothing leaves everything as it was.
    #[test]
    fn whole_step_equals_its_two_passes() {
        let n = 9000;
        let p: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 40.0).collect();
        let p0: Vec<f32> = p.iter().map(|x| x * 0.5 + 0.25).collect();
        let h = ProdigyConfig {
            group_lr: 1.0, lr: 1.0, beta1: 0.9, beta2: 0.999, beta3: 0.999f64.sqrt(), eps: 1e-8, weight_decay: 0.01, decouple: true,
            use_bias_correction: true, safeguard_warmup: false, d: 1e-6, d0: 1e-6, d_max: 1e-6, d_numerator: 0.5,
            d_coef: 1.0, growth_rate: f64::INFINITY, k: 3.0, maximize: false, pass: 0.0, delta: 0.0, denom: 0.0,
        };
        for level in available() {
            let run = |h: &ProdigyConfig, pp: &mut Vec<f32>, st: &mut [Vec<f32>; 4], step: &mut f32| {
                let [s, q, m, v] = st;
                let mut states: Vec<&mut [f32]> = vec![s, q, m, v];
                let mut counters: Vec<&mut f32> = vec![step];
                let t = Tensor { param: pp, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                step_of(h, vec![t], level)
            };
            let fresh = || [vec![0f32; n], p0.clone(), vec![0f32; n], vec![0f32; n]];
            let (mut pa, mut sa, mut ka) = (p.clone(), fresh(), 0f32);
            let whole = run(&h, &mut pa, &mut sa, &mut ka);
            let (mut pb, mut sb, mut kb) = (p.clone(), fresh(), 0f32);
            let first = run(&ProdigyConfig { pass: 1.0, ..h }, &mut pb, &mut sb, &mut kb);
            assert_eq!((pb.clone(), kb), (p.clone(), 0.0), "{level:?}: the first pass only reads the parameter");
            let update = run(&ProdigyConfig { pass: 2.0, delta: first[0], denom: first[1], ..h }, &mut pb, &mut sb, &mut kb);
            assert_eq!(whole, update, "{level:?}");
            assert_eq!((pa, sa, ka), (pb, sb, kb), "{level:?}");
            // the estimate: d0 == d, so d = max(d, d_hat); no growth limit
            let numerator = 0.5 * h.beta3 + first[0];
            let d_hat = numerator / first[1];
            assert_eq!(whole, vec![numerator, first[1], d_hat.max(1e-6), d_hat.max(1e-6), d_hat], "{level:?}");
            // a zero gradient moves nothing: same values back, nothing written, no step counted
            let zero = vec![0f32; n];
            let (mut pc, mut sc, mut kc) = (p.clone(), fresh(), 0f32);
            let [s, q, m, v] = &mut sc;
            let mut states: Vec<&mut [f32]> = vec![s, q, m, v];
            let mut counters: Vec<&mut f32> = vec![&mut kc];
            let t = Tensor { param: &mut pc, grad: &zero, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
            assert_eq!(step_of(&h, vec![t], level), vec![0.5, 0.0, 1e-6, 1e-6, 1e-6]);
            assert_eq!((pc, kc), (p.clone(), 0.0));
        }
        let bad = ProdigyConfig { pass: 3.0, ..h };
        assert!(step::<f32, f32>(&bad, vec![], 1.0, SimdLevel::Scalar).is_err());
    }

    fn step_of(h: &ProdigyConfig, tensors: Vec<Tensor<'_, f32, f32>>, level: SimdLevel) -> Vec<f64> {
        step(h, tensors, 1.0, level).unwrap()
    }

    /// Without the first moment: three buffers, and the update steps along the gradient.
    #[test]
    fn without_the_first_moment() {
        let (mut p, g) = (vec![1.0f32, -2.0, 3.0], vec![0.5f32, 0.25, -1.0]);
        let (mut s, mut p0, mut v) = (vec![0f32; 3], p.clone(), vec![0f32; 3]);
        let mut step = 0f32;
        let h = ProdigyStatsConfig { beta1: 0.0, beta3: 0.5, s_coef: 1.0, weight_decay: 0.0, maximize: false };
        let mut states: Vec<&mut [f32]> = vec![&mut s, &mut p0, &mut v];
        let mut counters: Vec<&mut f32> = vec![&mut step];
        let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
        assert_eq!(stats(&h, vec![t], 1.0, SimdLevel::Scalar).unwrap(), (0.0, 1.75));
        let hu = ProdigyUpdateConfig { moments: true, beta1: 0.0, beta2: 0.5, m_coef: 0.0, v_coef: 0.5, m_rate: 0.0, g_rate: -1.0, d_eps: 0.0, decay: 0.0, decouple: false, weight_decay: 0.0, maximize: false };
        let mut states: Vec<&mut [f32]> = vec![&mut s, &mut p0, &mut v];
        let mut counters: Vec<&mut f32> = vec![&mut step];
        let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
        update(&hu, vec![t], 1.0, SimdLevel::Scalar).unwrap();
        // v = 0.5 g^2, so g / sqrt(v) = sign(g) * sqrt(2)
        let r = std::f32::consts::SQRT_2;
        assert_eq!(p, vec![1.0 - r, -2.0 - r, 3.0 + r]);
    }
}
