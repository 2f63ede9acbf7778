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

/// Bulk conversions: every value of `src` into `dst` (the shorter length), exactly as the
/// element functions above convert it. `x86` says the caller runs inside a function compiled
/// with AVX2, FMA and F16C on a CPU that has them ([`crate::simd::Arith::X86`], a constant
/// of the kernel); the loops
/// then use those instructions (F16C's conversions, 16 bfloat16 values per AVX2 pack), and
/// otherwise plain loops the compiler vectorizes as it can.
#[inline(always)]
pub fn widen_f16(src: &[F16], dst: &mut [f32], x86: bool) {
    #[cfg(target_arch = "x86_64")]
    if x86 {
        // SAFETY: with `x86` the caller runs on a CPU with AVX and F16C (see above).
        return unsafe { x86::widen_f16(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// See [`widen_f16`].
#[inline(always)]
pub fn narrow_f16(src: &[f32], dst: &mut [F16], x86: bool) {
    #[cfg(target_arch = "x86_64")]
    if x86 {
        // SAFETY: with `x86` the caller runs on a CPU with AVX and F16C (see above).
        return unsafe { x86::narrow_f16(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = F16::from_f32(s);
    }
}

/// See [`widen_f16`] (a shift, which every level vectorizes).
#[inline(always)]
pub fn widen_bf16(src: &[Bf16], dst: &mut [f32], _x86: bool) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// See [`widen_f16`].
#[inline(always)]
pub fn narrow_bf16(src: &[f32], dst: &mut [Bf16], x86: bool) {
    #[cfg(target_arch = "x86_64")]
    if x86 {
        // SAFETY: with `x86` the caller runs on a CPU with AVX2 (see above).
        return unsafe { x86::narrow_bf16(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Bf16::from_f32(s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Bf16, F16};
    use std::arch::x86_64::*;

    /// SAFETY (every function here): the CPU has the features the function is compiled
    /// with. Every pointer access is at an index below the shorter of the two lengths.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn widen_f16(src: &[F16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // (`F16` is a transparent u16: 8 of them are 16 bytes; unaligned loads/stores)
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }

    /// `vcvtps2ph` rounds to nearest even and overflows to infinity as
    /// [`F16::from_f32`] does, but keeps a NaN's payload bits: NaNs are first replaced by
    /// the quiet NaN with their sign, which it converts to `0x7E00 | sign`.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn narrow_f16(src: &[f32], dst: &mut [F16]) {
        let n = src.len().min(dst.len());
        let sign = _mm256_set1_ps(-0.0);
        let quiet = _mm256_set1_ps(f32::NAN);
        let mut i = 0;
        while i + 8 <= n {
            unsafe {
                let x = _mm256_loadu_ps(src.as_ptr().add(i));
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
                let x = _mm256_blendv_ps(x, _mm256_or_ps(_mm256_and_ps(x, sign), quiet), nan);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = F16::from_f32(src[j]);
        }
    }

    /// [`Bf16::from_f32`] on 8 lanes: the rounded high halves in the low 16 bits of each lane.
    #[target_feature(enable = "avx2")]
    unsafe fn round_bf16(x: __m256) -> __m256i {
        let b = _mm256_castps_si256(x);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff));
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(b, bias));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), nan)
    }

    /// 16 values per iteration: two rounded vectors packed (both below 2**16, so the
    /// saturating pack is exact) and put back in order (the pack interleaves 128-bit lanes).
    #[target_feature(enable = "avx2")]
    pub unsafe fn narrow_bf16(src: &[f32], dst: &mut [Bf16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            unsafe {
                let a = round_bf16(_mm256_loadu_ps(src.as_ptr().add(i)));
                let b = round_bf16(_mm256_loadu_ps(src.as_ptr().add(i + 8)));
                let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), packed);
            }
            i += 16;
        }
        for j in i..n {
            dst[j] = Bf16::from_f32(src[j]);
        }
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
    /// Float32 inputs for the conversion tests: a sweep of bit patterns of both signs,
    /// NaNs with payloads, the overflow and underflow edges.
    fn f32_sweep() -> Vec<f32> {
        let mut v: Vec<f32> = (0..0x8000_0000u32).step_by(0x1fff).flat_map(|b| [b, b | 0x8000_0000]).map(f32::from_bits).collect();
        v.extend([f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffff_ffff), f32::from_bits(0x7fc0_2000)]);
        v.extend([65519.99, 65520.0, -65520.0, 1e-8, -6e-8, 3e-8, f32::INFINITY, f32::MIN_POSITIVE / 3.0]);
        v
    }

    /// The bulk conversions (at every length, so every vector body and tail) give the bits
    /// of the element functions: x86's F16C and AVX2 loops where the CPU has them, and the
    /// plain loops.
    #[test]
    fn bulk_conversions_equal_the_element_conversions() {
        let x86 = cfg!(target_arch = "x86_64") && crate::simd::available().contains(&crate::simd::SimdLevel::Avx2);
        let codes: Vec<u16> = (0..=u16::MAX).collect();
        let sweep = f32_sweep();
        for fast in [false, x86] {
            let f16: Vec<F16> = codes.iter().map(|&c| F16(c)).collect();
            let bf16: Vec<Bf16> = codes.iter().map(|&c| Bf16(c)).collect();
            let mut wide = vec![0f32; codes.len()];
            widen_f16(&f16, &mut wide, fast);
            for (c, w) in f16.iter().zip(&wide) {
                assert_eq!(w.to_bits(), c.to_f32().to_bits(), "float16 {:#06x}", c.0);
            }
            widen_bf16(&bf16, &mut wide, fast);
            for (c, w) in bf16.iter().zip(&wide) {
                assert_eq!(w.to_bits(), c.to_f32().to_bits(), "bfloat16 {:#06x}", c.0);
            }
            for len in (0..40).chain([sweep.len()]) {
                let src = &sweep[sweep.len() - len..];
                let (mut h, mut b) = (vec![F16(1); len], vec![Bf16(1); len]);
                narrow_f16(src, &mut h, fast);
                narrow_bf16(src, &mut b, fast);
                for ((x, h), b) in src.iter().zip(&h).zip(&b) {
                    assert_eq!(h.0, F16::from_f32(*x).0, "float16 of {:#010x} (x86 {fast})", x.to_bits());
                    assert_eq!(b.0, Bf16::from_f32(*x).0, "bfloat16 of {:#010x} (x86 {fast})", x.to_bits());
                }
            }
        }
    }
}
