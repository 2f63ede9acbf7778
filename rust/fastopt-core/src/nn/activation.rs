//! Element-wise activations and their backward passes (torch's formulas, computed with the
//! vectorized transcendentals of [`crate::math`]).
//!
//! `forward` maps `x` into `out` (or `out` in place); `backward` maps the gradient of the
//! output and what the forward saved into the gradient of the input. What is saved follows
//! torch: the output for relu, sigmoid and tanh, the input for every other activation.

use crate::float::Float;
use crate::math::Math;
use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel};
use crate::Error;

/// An activation with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Relu,
    LeakyRelu {
        slope: f64,
    },
    /// `scale * x` for x > 0, else `scale * alpha * (exp(input_scale * x) - 1)` (elu, selu).
    Elu {
        alpha: f64,
        scale: f64,
        input_scale: f64,
    },
    Sigmoid,
    Tanh,
    /// `x * Phi(x)` with the exact normal CDF.
    Gelu,
    /// torch's `approximate='tanh'`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    Silu,
    /// `log(1 + exp(beta x)) / beta`, or `x` where `beta x > threshold`.
    Softplus {
        beta: f64,
        threshold: f64,
    },
}

/// selu's constants (torch's, from the paper).
pub const SELU_ALPHA: f64 = 1.673_263_242_354_377_284_817_042_991_671_7;
pub const SELU_SCALE: f64 = 1.050_700_987_355_480_493_419_334_985_294_6;

impl Act {
    /// Whether `backward` takes the forward's output (otherwise its input).
    pub fn saves_output(self) -> bool {
        matches!(self, Act::Relu | Act::Sigmoid | Act::Tanh)
    }
}

const SQRT1_2: f64 = core::f64::consts::FRAC_1_SQRT_2;
/// 1/sqrt(2) minus its float32 / float64 rounding.
const SQRT1_2_ERR_F32: f64 = 1.210_161_710_447_897e-8;
const SQRT1_2_ERR_F64: f64 = -4.833_646_656_726_457e-17;
/// 1 / sqrt(2 pi).
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_677_939_946_059_934_4;
/// sqrt(2 / pi).
const SQRT_2_PI: f64 = 0.797_884_560_802_865_355_879_892_119_868_8;
const KAPPA: f64 = 0.044_715;

/// Evaluates `$body` with `$op` bound to the kernel of activation `$act` for element type
/// `$t`, its parameters rounded to `$t` once (torch rounds elu's `alpha * scale` once, too):
/// one monomorphized kernel per activation, chosen outside the element loop.
macro_rules! with_op {
    ($act:expr, $t:ty, $op:ident => $body:expr) => {{
        let t = <$t>::from_f64;
        match $act {
            Act::Relu => {
                let $op = Relu;
                $body
            }
            Act::LeakyRelu { slope } => {
                let $op = Leaky(t(slope));
                $body
            }
            Act::Elu { alpha, scale, input_scale } => {
                let $op = Elu { neg: t(alpha * scale), pos: t(scale), ins: t(input_scale) };
                $body
            }
            Act::Sigmoid => {
                let $op = Sigmoid;
                $body
            }
            Act::Tanh => {
                let $op = Tanh;
                $body
            }
            Act::Gelu => {
                let $op = Gelu;
                $body
            }
            Act::GeluTanh => {
                let $op = GeluTanh;
                $body
            }
            Act::Silu => {
                let $op = Silu;
                $body
            }
            Act::Softplus { beta, threshold } => {
                let $op = Softplus { beta: t(beta), threshold: t(threshold) };
                $body
            }
        }
    }};
}

#[inline(always)]
fn half<T: Float>() -> T {
    T::from_f64(0.5)
}

/// The forward function of each activation, on one element.
trait Forward<T>: Copy + Send + Sync {
    fn f<A: Arith>(self, x: T) -> T;
}
/// The backward function: the input gradient from the output gradient `g` and the saved `s`.
trait Backward<T>: Copy + Send + Sync {
    fn f<A: Arith>(self, g: T, s: T) -> T;
}

macro_rules! unit_ops {
    ($($name:ident),*) => { $( #[derive(Clone, Copy)] struct $name; )* };
}
unit_ops!(Relu, Sigmoid, Tanh, Gelu, GeluTanh, Silu);
#[derive(Clone, Copy)]
struct Leaky<T>(T);
#[derive(Clone, Copy)]
struct Elu<T> {
    neg: T,
    pos: T,
    ins: T,
}
#[derive(Clone, Copy)]
struct Softplus<T> {
    beta: T,
    threshold: T,
}

impl<T: Math> Forward<T> for Relu {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        // NaN stays NaN, as torch's clamp_min.
        if x <= T::ZERO {
            T::ZERO
        } else {
            x
        }
    }
}
impl<T: Math> Backward<T> for Relu {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, y: T) -> T {
        if y <= T::ZERO {
            T::ZERO
        } else {
            g
        }
    }
}
impl<T: Math> Forward<T> for Leaky<T> {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        if x > T::ZERO {
            x
        } else {
            x * self.0
        }
    }
}
impl<T: Math> Backward<T> for Leaky<T> {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, x: T) -> T {
        if x > T::ZERO {
            g
        } else {
            g * self.0
        }
    }
}
impl<T: Math> Forward<T> for Elu<T> {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        let neg = (x * self.ins).expm1::<A>() * self.neg;
        if x > T::ZERO {
            x * self.pos
        } else {
            neg
        }
    }
}
impl<T: Math> Backward<T> for Elu<T> {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, x: T) -> T {
        let neg = g * self.ins * self.neg * (x * self.ins).exp::<A>();
        if x > T::ZERO {
            g * self.pos
        } else {
            neg
        }
    }
}
impl<T: Math> Forward<T> for Sigmoid {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        x.sigmoid::<A>()
    }
}
impl<T: Math> Backward<T> for Sigmoid {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, y: T) -> T {
        g * (T::ONE - y) * y
    }
}
impl<T: Math> Forward<T> for Tanh {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        x.tanh::<A>()
    }
}
impl<T: Math> Backward<T> for Tanh {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, y: T) -> T {
        g * (T::ONE - y * y)
    }
}
/// `(z, lo)` with `z + lo = -x / sqrt 2` to about twice the working precision: the rounded
/// product, its exact rounding error, and the error of the rounded constant.
#[inline(always)]
fn gelu_arg<T: Math>(x: T) -> (T, T) {
    let c = T::from_f64(SQRT1_2);
    let c_err = T::from_f64(if core::mem::size_of::<T>() == 4 { SQRT1_2_ERR_F32 } else { SQRT1_2_ERR_F64 });
    let (p, e) = (-x).two_prod(c);
    // Dekker's split overflows for huge |x|, where erfc has long saturated anyway.
    let lo = if x.abs() < T::from_f64(1e6) { e + -x * c_err } else { T::ZERO };
    (p, lo)
}

impl<T: Math> Forward<T> for Gelu {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        // x (1 + erf(x / sqrt 2)) / 2 = x erfc(-x / sqrt 2) / 2: the erfc form keeps the negative
        // tail's relative accuracy (1 + erf cancels there), and the argument's rounding error
        // is corrected to first order (the tail amplifies it by about x^2).
        let (z, lo) = gelu_arg(x);
        x * half::<T>() * z.erfc_dd::<A>(lo).0
    }
}
impl<T: Math> Backward<T> for Gelu {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, x: T) -> T {
        // Phi(x) + x phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi) = exp(-z^2) / sqrt(2 pi).
        let (z, lo) = gelu_arg(x);
        let (erfc, e) = z.erfc_dd::<A>(lo);
        let cdf = half::<T>() * erfc;
        let pdf = T::from_f64(INV_SQRT_2PI) * e;
        g * A::madd(x, pdf, cdf)
    }
}
impl<T: Math> Forward<T> for GeluTanh {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        // (1 + tanh(u)) / 2 == sigmoid(2u), which does not cancel for negative x.
        let u = T::from_f64(SQRT_2_PI) * A::madd(T::from_f64(KAPPA) * x, x * x, x);
        x * (u + u).sigmoid::<A>()
    }
}
impl<T: Math> Backward<T> for GeluTanh {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, x: T) -> T {
        // d/dx of x (1 + tanh(u)) / 2 (torch's formula), rewritten with s = sigmoid(2u):
        // (1 + tanh u) / 2 = s and 1 - tanh^2 u = 4 s (1 - s), which do not cancel where
        // tanh(u) rounds to -1 or 1.
        let x2 = x * x;
        let u = T::from_f64(SQRT_2_PI) * A::madd(T::from_f64(KAPPA) * x, x2, x);
        let e = (-(u + u)).exp::<A>();
        let s = T::ONE / (T::ONE + e);
        // 1 - s = e s, or 1 where e overflowed (s = 0).
        let oms = if s == T::ZERO { T::ONE } else { e * s };
        let du = T::from_f64(SQRT_2_PI) * A::madd(T::from_f64(3.0 * KAPPA), x2, T::ONE);
        g * A::madd((x + x) * s * oms, du, s)
    }
}
impl<T: Math> Forward<T> for Silu {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        x * x.sigmoid::<A>()
    }
}
impl<T: Math> Backward<T> for Silu {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, x: T) -> T {
        let s = x.sigmoid::<A>();
        g * s * A::madd(x, T::ONE - s, T::ONE)
    }
}
impl<T: Math> Forward<T> for Softplus<T> {
    #[inline(always)]
    fn f<A: Arith>(self, x: T) -> T {
        let bx = x * self.beta;
        let soft = (bx.exp::<A>()).log1p::<A>() / self.beta;
        if bx > self.threshold {
            x
        } else {
            soft
        }
    }
}
impl<T: Math> Backward<T> for Softplus<T> {
    #[inline(always)]
    fn f<A: Arith>(self, g: T, x: T) -> T {
        // exp(bx) / (exp(bx) + 1) as a sigmoid, which cannot overflow to inf / inf.
        let bx = x * self.beta;
        if bx > self.threshold {
            g
        } else {
            g * bx.sigmoid::<A>()
        }
    }
}

/// `out = f(x)`, or `out = f(out)` when `x` is `None`.
struct Map<'a, T, F> {
    x: Option<&'a [T]>,
    out: &'a mut [T],
    op: F,
}

impl<T: Send + Sync, F: Send + Copy> Split for Map<'_, T, F> {
    fn len(&self) -> usize {
        self.out.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (o0, o1) = self.out.split_at_mut(mid);
        let (x0, x1) = match self.x {
            Some(x) => {
                let (a, b) = x.split_at(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        (
            Map {
                x: x0,
                out: o0,
                op: self.op,
            },
            Map {
                x: x1,
                out: o1,
                op: self.op,
            },
        )
    }
}

impl<T: Math, F: Forward<T>> SimdKernel for Map<'_, T, F> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        // Plain loops, not closures: a closure is a function of its own that LLVM may decline
        // to inline when the body is large (gelu), and outside the `#[target_feature]`
        // wrapper it would run without SIMD and with a library call for every FMA.
        let op = self.op;
        match self.x {
            Some(x) => {
                for (o, &v) in self.out.iter_mut().zip(x) {
                    *o = op.f::<A>(v);
                }
            }
            None => {
                for o in self.out.iter_mut() {
                    *o = op.f::<A>(*o);
                }
            }
        }
    }
}

/// `out = f(g, s)`, or `out = f(out, s)` (the gradient updated in place) when `g` is `None`.
struct Map2<'a, T, F> {
    g: Option<&'a [T]>,
    s: &'a [T],
    out: &'a mut [T],
    op: F,
}

impl<T: Send + Sync, F: Send + Copy> Split for Map2<'_, T, F> {
    fn len(&self) -> usize {
        self.out.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (o0, o1) = self.out.split_at_mut(mid);
        let (s0, s1) = self.s.split_at(mid);
        let (g0, g1) = match self.g {
            Some(g) => {
                let (a, b) = g.split_at(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        (
            Map2 {
                g: g0,
                s: s0,
                out: o0,
                op: self.op,
            },
            Map2 {
                g: g1,
                s: s1,
                out: o1,
                op: self.op,
            },
        )
    }
}

impl<T: Math, F: Backward<T>> SimdKernel for Map2<'_, T, F> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        // Plain loops, as in `Map::run`.
        let op = self.op;
        match self.g {
            Some(g) => {
                for ((o, &g), &s) in self.out.iter_mut().zip(g).zip(self.s) {
                    *o = op.f::<A>(g, s);
                }
            }
            None => {
                for (o, &s) in self.out.iter_mut().zip(self.s) {
                    *o = op.f::<A>(*o, s);
                }
            }
        }
    }
}

fn check(what: &str, len: usize, out: usize) -> Result<(), Error> {
    if len != out {
        return Err(Error::value(format!(
            "{what} has {len} elements but out has {out}"
        )));
    }
    Ok(())
}

/// `out = act(x)`; `x = None` applies the activation to `out` in place.
pub fn forward<T: Math>(act: Act, x: Option<&[T]>, out: &mut [T]) -> Result<(), Error> {
    if let Some(x) = x {
        check("input", x.len(), out.len())?;
    }
    fn go<T: Math, F: Forward<T>>(x: Option<&[T]>, out: &mut [T], op: F) {
        parallel::for_each(vec![Map { x, out, op }], simd::dispatch);
    }
    with_op!(act, T, op => go(x, out, op));
    Ok(())
}

/// `out = d act / d x * grad`, from the gradient of the output and what the forward saved
/// (see [`Act::saves_output`]); `grad = None` means the gradient is `out`, updated in place.
pub fn backward<T: Math>(
    act: Act,
    grad: Option<&[T]>,
    saved: &[T],
    out: &mut [T],
) -> Result<(), Error> {
    if let Some(g) = grad {
        check("grad_output", g.len(), out.len())?;
    }
    check(
        if act.saves_output() {
            "output"
        } else {
            "input"
        },
        saved.len(),
        out.len(),
    )?;
    fn go<T: Math, F: Backward<T>>(g: Option<&[T]>, s: &[T], out: &mut [T], op: F) {
        parallel::for_each(vec![Map2 { g, s, out, op }], simd::dispatch);
    }
    with_op!(act, T, op => go(grad, saved, out, op));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    const ACTS: [Act; 10] = [
        Act::Relu,
        Act::LeakyRelu { slope: 0.01 },
        Act::Elu {
            alpha: 1.0,
            scale: 1.0,
            input_scale: 1.0,
        },
        Act::Elu {
            alpha: SELU_ALPHA,
            scale: SELU_SCALE,
            input_scale: 1.0,
        },
        Act::Sigmoid,
        Act::Tanh,
        Act::Gelu,
        Act::GeluTanh,
        Act::Silu,
        Act::Softplus {
            beta: 2.0,
            threshold: 20.0,
        },
    ];

    /// The same formulas in float64 with the C library (tanh, erf via libm, exp).
    fn reference(a: Act, x: f64) -> f64 {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        match a {
            Act::Relu => x.max(0.0),
            Act::LeakyRelu { slope } => {
                if x > 0.0 {
                    x
                } else {
                    x * slope
                }
            }
            Act::Elu {
                alpha,
                scale,
                input_scale,
            } => {
                if x > 0.0 {
                    scale * x
                } else {
                    alpha * scale * (input_scale * x).exp_m1()
                }
            }
            Act::Sigmoid => sig(x),
            Act::Tanh => x.tanh(),
            Act::Gelu => 0.5 * x * libm::erfc(-x * SQRT1_2),
            Act::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_PI * (x + KAPPA * x * x * x)).tanh()),
            Act::Silu => x * sig(x),
            Act::Softplus { beta, threshold } => {
                if beta * x > threshold {
                    x
                } else {
                    (beta * x).exp().ln_1p() / beta
                }
            }
        }
    }

    #[test]
    fn forward_and_in_place_match_float64_formulas_at_every_level_and_thread_count() {
        let _g = crate::test_util::global();
        let before = simd::level();
        let x: Vec<f32> = data::<f32>(70_001, 3).iter().map(|v| v * 4.0).collect();
        for a in ACTS {
            let want: Vec<f64> = x.iter().map(|&v| reference(a, f64::from(v))).collect();
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 2] {
                crate::parallel::set_num_threads(threads).unwrap();
                for level in simd::available() {
                    simd::set_level(level).unwrap();
                    let mut out = vec![0f32; x.len()];
                    forward(a, Some(&x), &mut out).unwrap();
                    let mut inplace = x.clone();
                    forward(a, None, &mut inplace).unwrap();
                    assert!(out == inplace, "{a:?}: in place differs");
                    for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                        let err = (f64::from(o) - w).abs();
                        assert!(
                            err <= 4e-7 * w.abs() + 2e-7,
                            "{a:?} x={} got {o} want {w}",
                            x[i]
                        );
                    }
                    if level == simd::detected() {
                        match &first {
                            None => first = Some(out),
                            Some(f) => assert!(f == &out, "{a:?} differs between thread counts"),
                        }
                    }
                }
            }
        }
        simd::set_level(before).unwrap();
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
    }

    #[test]
    fn backward_matches_finite_differences() {
        let _g = crate::test_util::global();
        let x: Vec<f64> = data::<f64>(4001, 5)
            .iter()
            .map(|v| v * 3.0 + 0.013)
            .collect();
        let g: Vec<f64> = data::<f64>(4001, 6);
        for a in ACTS {
            let mut y = vec![0.0; x.len()];
            forward(a, Some(&x), &mut y).unwrap();
            let saved = if a.saves_output() { &y } else { &x };
            let mut gx = vec![0.0; x.len()];
            backward(a, Some(&g), saved, &mut gx).unwrap();
            let mut inplace = g.clone();
            backward(a, None, saved, &mut inplace).unwrap();
            if let Some(i) = (0..x.len()).find(|&i| gx[i].to_bits() != inplace[i].to_bits()) {
                panic!(
                    "{a:?}: in place differs at x={}: {} vs {}",
                    x[i], gx[i], inplace[i]
                );
            }
            for i in 0..x.len() {
                let h = 1e-6;
                let d = (reference(a, x[i] + h) - reference(a, x[i] - h)) / (2.0 * h);
                assert!(
                    (gx[i] - g[i] * d).abs() <= 1e-6 * (1.0 + d.abs()),
                    "{a:?} x={} got {} want {}",
                    x[i],
                    gx[i],
                    g[i] * d
                );
            }
        }
    }

    #[test]
    fn length_mismatch_is_an_error_before_writing() {
        let mut out = vec![7.0f32; 3];
        assert!(forward(Act::Relu, Some(&[1.0f32; 4]), &mut out).is_err());
        assert!(backward(Act::Tanh, Some(&[1.0f32; 3]), &[1.0; 2], &mut out).is_err());
        assert_eq!(out, vec![7.0; 3]);
    }
}
