//! Prodigy (Mishchenko & Defazio, 2024; the authors' `prodigyopt` package): Adam whose step
//! size `d` is estimated from the run itself. The estimate needs two sums over every tensor
//! of every group before any parameter moves, so a step is two passes of the engine, with
//! the caller (which holds `d`) between them:
//!
//! 1. [`stats`], a reducing pass ([`engine::sweep`], the parameter only read): the moments
//!    and the estimate's running sum `s`, and the two sums it returns, `sum g * (p0 - p)` and
//!    `sum |s|` (float64, fixed blocks, independent of the thread count).
//! 2. [`update`] ([`engine::run`]): the step with the new `d`, reading the moments.
//! ```text
//! g = g + wd * p                                   (decouple=False)
//! m = b1 * m + d * (1 - b1) * g;   v = b2 * v + d^2 * (1 - b2) * g * g
//! s = b3 * s + (d / d0) * dlr * g                  (safeguard_warmup: (d / d0) * d)
//! ... the caller: d from d_numerator += (d / d0) * dlr * sum g * (p0 - p), d_denom = sum |s|
//! p = p - wd * dlr * p                             (decouple=True)
//! p = p - dlr * m / (sqrt(v) + d * eps)            (beta1 = 0: p - dlr * d * g / (...))
//! ```
//! The caller computes the coefficients (`d * (1 - b1)`, ...) in float64 as `prodigyopt`
//! does; each is rounded once to the arithmetic type, as torch rounds a scalar argument.

use super::engine::{self, Ema, Grad, Layout, Rule, Storage, Tensor, MAX_STATES, next_step};
use super::hyper::hyper;
use crate::float::Float;
use crate::simd::{Arith, SimdLevel};
use crate::Error;

hyper! {
    /// Prodigy's first pass: `beta1..3` the averages' factors, `m_coef`, `v_coef` and
    /// `s_coef` the coefficients of the gradient in them, `weight_decay` the coupled (L2)
    /// decay, 0 when decoupled; `maximize` negates the gradient (beyond the authors').
    ProdigyStatsConfig for "prodigy_stats" { beta1: f64, beta2: f64, beta3: f64, m_coef: f64, v_coef: f64, s_coef: f64, weight_decay: f64, maximize: bool }
}

hyper! {
    /// Prodigy's update: `m_rate` (`-dlr`) multiplies `m / denom`, or with `beta1 = 0`
    /// `g_rate` (`-dlr * d`) multiplies `g / denom`; `d_eps` is `d * eps`; `decay` the
    /// decoupled decay factor `-wd * dlr` (applied when `decouple`); `weight_decay` the coupled
    /// decay, 0 when decoupled.
    ProdigyUpdateConfig for "prodigy_update" { beta1: f64, m_rate: f64, g_rate: f64, d_eps: f64, decay: f64, decouple: bool, weight_decay: f64, maximize: bool }
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

/// Pass 1: `s`, `m`, `v`; sums `g * (p0 - p)` and `|s|`.
#[derive(Clone, Copy, Debug)]
struct Stats<T, const M: bool, const L2: bool> {
    g: Grad<T>,
    m: Ema<T>,
    v: Ema<T>,
    s: Ema<T>,
}

impl<T: Float, const M: bool, const L2: bool> Rule<T> for Stats<T, M, L2> {
    const STATES: usize = 3 + M as usize;
    const WRITES: u32 = !1;
    const SQUARED: bool = false;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let g = l2::<T, A, L2>(&self.g, p, g);
        if M {
            s[2] = self.m.mean::<A>(s[2], g);
        }
        // torch's `mul_(b2).addcmul_(g, g, value=c)`, `mul_(b).add_(g, alpha=c)` (see `Ema`)
        s[2 + M as usize] = self.v.square::<A>(s[2 + M as usize], g);
        s[0] = self.s.mean::<A>(s[0], g);
        p
    }
    #[inline(always)]
    fn sums<A: Arith>(&self, p: T, g: T, s: &[T; MAX_STATES]) -> [T; 2] {
        let g = l2::<T, A, L2>(&self.g, p, g);
        [g * (s[1] - p), s[0].abs()]
    }
}

/// Pass 2: the step, reading the moments.
#[derive(Clone, Copy, Debug)]
struct Update<T, const M: bool, const L2: bool> {
    g: Grad<T>,
    m_rate: T,
    g_rate: T,
    d_eps: T,
    decay: Option<T>,
}

impl<T: Float, const M: bool, const L2: bool> Rule<T> for Update<T, M, L2> {
    const STATES: usize = 3 + M as usize;
    const WRITES: u32 = 1;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let denom = s[2 + M as usize].sqrt() + self.d_eps;
        // `p.add_(p, alpha=-wd * dlr)`: one rounding with FMA, as torch's vectorized add
        let p = match self.decay {
            Some(c) => A::madd(p, c, p),
            None => p,
        };
        // `p.addcdiv_(t, denom, value=rate)`: `p + rate * t / denom`, as torch's kernel
        if M {
            p + self.m_rate * s[2] / denom
        } else {
            p + self.g_rate * l2::<T, A, L2>(&self.g, p, g) / denom
        }
    }
}

fn stats_with<P: Storage, S: Storage<Arith = P::Arith>, const M: bool, const L2: bool>(
    h: &ProdigyStatsConfig,
    mut tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(f64, f64), Error> {
    let ema = |beta: f64, coef: f64| Ema { beta: P::Arith::from_f64(beta), one_minus: P::Arith::from_f64(coef) };
    let rule = Stats::<P::Arith, M, L2> {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, 0.0),
        m: ema(h.beta1, h.m_coef),
        v: ema(h.beta2, h.v_coef),
        s: ema(h.beta3, h.s_coef),
    };
    let swept = engine::sweep(&mut tensors, layout(h.beta1), level, |_, _| rule)?;
    Ok(swept.iter().fold((0.0, 0.0), |(a, b), ((x, y), _)| (a + x, b + y)))
}

/// Prodigy's first pass over a group: returns `(sum g * (p0 - p), sum |s|)` over all its
/// tensors. The parameters are only read; the counters are left as they are. Checks every
/// tensor before touching any.
pub fn stats<P: Storage, S: Storage<Arith = P::Arith>>(
    h: &ProdigyStatsConfig,
    tensors: Vec<Tensor<'_, P, S>>,
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

fn update_with<P: Storage, S: Storage<Arith = P::Arith>, const M: bool, const L2: bool>(
    h: &ProdigyUpdateConfig,
    tensors: Vec<Tensor<'_, P, S>>,
    grad_scale: f64,
    level: SimdLevel,
) -> Result<(), Error> {
    let rule = Update::<P::Arith, M, L2> {
        g: Grad::new(h.maximize, grad_scale, h.weight_decay, false, 0.0),
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
    match (h.beta1 > 0.0, h.weight_decay != 0.0) {
        (true, true) => update_with::<P, S, true, true>(h, tensors, grad_scale, level),
        (true, false) => update_with::<P, S, true, false>(h, tensors, grad_scale, level),
        (false, true) => update_with::<P, S, false, true>(h, tensors, grad_scale, level),
        (false, false) => update_with::<P, S, false, false>(h, tensors, grad_scale, level),
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
            let h = ProdigyStatsConfig { beta1: b1, beta2: b2, beta3: b3, m_coef: mc, v_coef: vc, s_coef: sc, weight_decay: wd, maximize: false };
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
            assert_eq!(step, 0.0);
            let hu = ProdigyUpdateConfig { beta1: b1, m_rate, g_rate: 0.0, d_eps, decay, decouple: true, weight_decay: 0.0, maximize: false };
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

    /// Without the first moment: three buffers, and the update steps along the gradient.
    #[test]
    fn without_the_first_moment() {
        let (mut p, g) = (vec![1.0f32, -2.0, 3.0], vec![0.5f32, 0.25, -1.0]);
        let (mut s, mut p0, mut v) = (vec![0f32; 3], p.clone(), vec![0f32; 3]);
        let mut step = 0f32;
        let h = ProdigyStatsConfig { beta1: 0.0, beta2: 0.5, beta3: 0.5, m_coef: 0.0, v_coef: 0.5, s_coef: 1.0, weight_decay: 0.0, maximize: false };
        let mut states: Vec<&mut [f32]> = vec![&mut s, &mut p0, &mut v];
        let mut counters: Vec<&mut f32> = vec![&mut step];
        let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
        assert_eq!(stats(&h, vec![t], 1.0, SimdLevel::Scalar).unwrap(), (0.0, 1.75));
        let hu = ProdigyUpdateConfig { beta1: 0.0, m_rate: 0.0, g_rate: -1.0, d_eps: 0.0, decay: 0.0, decouple: false, weight_decay: 0.0, maximize: false };
        let mut states: Vec<&mut [f32]> = vec![&mut s, &mut p0, &mut v];
        let mut counters: Vec<&mut f32> = vec![&mut step];
        let t = Tensor { param: &mut p, grad: &g, states: &mut states, counters: &mut counters, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
        update(&hu, vec![t], 1.0, SimdLevel::Scalar).unwrap();
        // v = 0.5 g^2, so g / sqrt(v) = sign(g) * sqrt(2)
        let r = std::f32::consts::SQRT_2;
        assert_eq!(p, vec![1.0 - r, -2.0 - r, 3.0 + r]);
    }
}
