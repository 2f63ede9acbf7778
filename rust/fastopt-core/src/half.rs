//! 16-bit floating-point storage: bfloat16 and IEEE float16, computed in float32.
//!
//! Each is a [`Storage`](crate::optim::Storage) whose arithmetic type is `f32`: a kernel
//! loads every value into float32 exactly, computes, and rounds each stored value once,
//! to nearest with ties to even (torch's conversions: `c10::BFloat16` and
//! `fp16_ieee_from_fp32_value`). The conversions are branch-free bit arithmetic, so the
//! element loops that use them still vectorize.

/// A bfloat16 value (the high 16 bits of a float32), as `ml_dtypes.bfloat16` and torch store it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// An IEEE 754 binary16 value, as `numpy.float16` and torch's `float16` store it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

impl Bf16 {
    /// Exact: a bfloat16 is a float32 whose low 16 bits are zero.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }

    /// Rounds to nearest, ties to even; a NaN becomes the quiet NaN 0x7FC0 (as torch's
    /// `round_to_nearest_even`).
    #[inline(always)]
    pub fn from_f32(x: f32) -> Bf16 {
        let b = x.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        Bf16(if x.is_nan() { 0x7fc0 } else { rounded })
    }
}

impl F16 {
    /// Exact (normal and subnormal values, infinities, NaN payloads), branch-free:
    /// `fp16_ieee_to_fp32_value` of the FP16 library torch uses.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        let w = (self.0 as u32) << 16;
        let sign = w & 0x8000_0000;
        let two_w = w.wrapping_add(w);
        // Normal values: move the exponent and mantissa into place, rebias by multiplying
        // with 2**-112 (exact; infinities and NaNs land on float32's all-ones exponent).
        let normal = f32::from_bits((two_w >> 4) + (0xe0 << 23)) * f32::from_bits(0x0780_0000);
        // Subnormal values: the mantissa as the low bits of 0.5's significand, minus 0.5.
        let subnormal = f32::from_bits((two_w >> 17) | (126 << 23)) - 0.5;
        let magnitude = if two_w < 1 << 27 { subnormal.to_bits() } else { normal.to_bits() };
        f32::from_bits(sign | magnitude)
    }

    /// Rounds to nearest, ties to even, overflow to infinity, gradual underflow; a NaN
    /// becomes the quiet NaN 0x7E00 with its sign (`fp16_ieee_from_fp32_value`). The
    /// rounding is done by float32 additions (round-to-nearest-even, no flush to zero,
    /// which Rust never enables).
    #[inline(always)]
    pub fn from_f32(x: f32) -> F16 {
        // Scale up then down so that values past float16's range become infinite and the
        // bits below float16's precision are rounded off by the addition of `bias` below.
        let base = (x.abs() * f32::from_bits(0x7780_0000)) * f32::from_bits(0x0880_0000);
        let w = x.to_bits();
        let shl1 = w.wrapping_add(w);
        let sign = w & 0x8000_0000;
        let bias = (shl1 & 0xff00_0000).max(0x7100_0000);
        let bits = (f32::from_bits((bias >> 1) + 0x0780_0000) + base).to_bits();
        let nonsign = ((bits >> 13) & 0x7c00) + (bits & 0x0fff);
        F16(((sign >> 16) | if shl1 > 0xff00_0000 { 0x7e00 } else { nonsign }) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round to nearest even through float64 arithmetic, as a reference for float16.
    fn f16_reference(x: f32) -> u16 {
        if x.is_nan() {
            return if x.is_sign_negative() { 0xfe00 } else { 0x7e00 };
        }
        let sign = if x.is_sign_negative() { 0x8000u16 } else { 0 };
        let a = (x as f64).abs();
        // Every float16 magnitude in order; pick the nearest, ties to the even code.
        let mut best = 0u16;
        let mut best_d = f64::INFINITY;
        let lo = {
            // binary search the codes 0..=0x7c00 (monotonic in magnitude)
            let (mut l, mut h) = (0u16, 0x7c00u16);
            while l < h {
                let m = l + (h - l).div_ceil(2);
                if (F16(m).to_f32() as f64) <= a { l = m } else { h = m - 1 }
            }
            l
        };
        for c in [lo, (lo + 1).min(0x7c00)] {
            let v = F16(c).to_f32() as f64;
            let d = (v - a).abs();
            if d < best_d || (d == best_d && c % 2 == 0) {
                best = c;
                best_d = d;
            }
        }
        // Past the largest finite value by half an ulp or more: infinity.
        if a >= 65520.0 {
            best = 0x7c00;
        }
        sign | best
    }

    #[test]
    fn float16_round_trips_every_code_and_rounds_like_ieee() {
        for c in 0..=u16::MAX {
            let x = F16(c).to_f32();
            if x.is_nan() {
                assert!((c & 0x7c00) == 0x7c00 && (c & 0x3ff) != 0);
                assert_eq!(F16::from_f32(x).0 & 0x7c00, 0x7c00);
                continue;
            }
            assert_eq!(F16::from_f32(x).0, c, "code {c:#06x}");
        }
        // Every float32 between codes (ties included), over a sweep of bit patterns.
        let mut b = 0u32;
        while b < 0x8000_0000 {
            for s in [0, 0x8000_0000] {
                let x = f32::from_bits(b | s);
                if !x.is_nan() {
                    assert_eq!(F16::from_f32(x).0, f16_reference(x), "{x:e} ({:#010x})", b | s);
                }
            }
            b += 0x1fff; // odd stride: every low-bit pattern is visited
        }
        assert_eq!(F16::from_f32(f32::NAN).0, 0x7e00);
        assert_eq!(F16::from_f32(65520.0).0, 0x7c00);
        assert_eq!(F16::from_f32(65519.99).0, 0x7bff);
    }

    #[test]
    fn bfloat16_rounds_to_nearest_even() {
        for c in 0..=u16::MAX {
            let x = Bf16(c).to_f32();
            if !x.is_nan() {
                assert_eq!(Bf16::from_f32(x).0, c);
            }
        }
        // Ties: 1 + 2**-8 lies halfway between 1 and 1 + 2**-7 and goes to the even 1.
        assert_eq!(Bf16::from_f32(1.0 + 2f32.powi(-8)).0, 0x3f80);
        assert_eq!(Bf16::from_f32(1.0 + 3.0 * 2f32.powi(-8)).0, 0x3f82);
        assert_eq!(Bf16::from_f32(1.0 + 2f32.powi(-8) + 2f32.powi(-20)).0, 0x3f81);
        assert_eq!(Bf16::from_f32(f32::MAX).0, 0x7f80); // overflows to infinity
        assert_eq!(Bf16::from_f32(-f32::NAN).0, 0x7fc0);
    }
}
