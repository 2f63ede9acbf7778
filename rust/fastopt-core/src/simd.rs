//! The one place that decides the SIMD level.
//!
//! Kernels are generic `#[inline(always)]` bodies (see [`SimdKernel`]); [`dispatch`]
//! instantiates them inside functions compiled with `#[target_feature]` for the chosen level,
//! where LLVM vectorizes them for that instruction set. The level is detected once, can be
//! forced lower with the environment variable `FASTOPT_SIMD=avx512|avx2|scalar` (read once, on
//! first use) or at run time with [`set_level`].
//!
//! Rounding contract: FMA-capable levels ([`Fused`] arithmetic) compute the multiply-adds that
//! torch's vectorized CPU kernels compute with `fmadd` (lerp, `add(alpha=)`) with one rounding;
//! the scalar level ([`Separate`]) rounds the product and the sum separately, as torch's scalar
//! loops do. Every other operation is IEEE-exact at every level (sqrt, division), so results
//! differ between levels by at most that contraction, and never with the thread count or the
//! position of an element in its buffer (vector body and remainder use the same arithmetic).

use crate::float::Float;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable code, no FMA contraction (the compiler may still use SSE2 / baseline NEON).
    Scalar = 1,
    /// AArch64 NEON with FMA.
    Neon = 2,
    /// x86-64 AVX2 + FMA (+ F16C, which every AVX2 CPU has).
    Avx2 = 3,
    /// x86-64 AVX-512 (F, VL, DQ, BW) + FMA + F16C.
    Avx512 = 4,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Neon => "neon",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "baseline" => Some(SimdLevel::Scalar),
            "neon" => Some(SimdLevel::Neon),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx-512" | "avx512f" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    /// Whether this level computes multiply-adds with one rounding.
    pub fn fused_multiply_add(self) -> bool {
        self != SimdLevel::Scalar
    }

    fn from_u8(v: u8) -> SimdLevel {
        match v {
            4 => SimdLevel::Avx512,
            3 => SimdLevel::Avx2,
            2 => SimdLevel::Neon,
            _ => SimdLevel::Scalar,
        }
    }
}

/// The best level this CPU supports (detected once).
pub fn detected() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        SimdLevel::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        SimdLevel::Avx2
    } else {
        SimdLevel::Scalar
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> SimdLevel {
    // NEON (with FMA) is part of the AArch64 baseline.
    SimdLevel::Neon
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> SimdLevel {
    SimdLevel::Scalar
}

/// Every level this CPU can run, lowest first.
pub fn available() -> Vec<SimdLevel> {
    let mut levels = vec![SimdLevel::Scalar];
    match detected() {
        SimdLevel::Avx512 => levels.extend([SimdLevel::Avx2, SimdLevel::Avx512]),
        SimdLevel::Avx2 => levels.push(SimdLevel::Avx2),
        SimdLevel::Neon => levels.push(SimdLevel::Neon),
        SimdLevel::Scalar => {}
    }
    levels
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level kernels run at now.
pub fn level() -> SimdLevel {
    let v = ACTIVE.load(Ordering::Relaxed);
    if v != 0 {
        return SimdLevel::from_u8(v);
    }
    // An unknown or unsupported request falls back to the best supported level: an
    // environment variable must never make a kernel run instructions the CPU lacks.
    let chosen = env_request().and_then(|(_, l)| l).unwrap_or_else(detected);
    // Another thread may have raced us; both computed the same value.
    ACTIVE.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// A non-blank `FASTOPT_SIMD`: the text, and the level it asks for if this CPU has it.
fn env_request() -> Option<(String, Option<SimdLevel>)> {
    let s = std::env::var("FASTOPT_SIMD").ok().filter(|s| !s.trim().is_empty())?;
    let l = SimdLevel::parse(&s).filter(|l| available().contains(l));
    Some((s, l))
}

/// Why `FASTOPT_SIMD` is ignored, if it is set and is not one of this CPU's levels.
pub fn env_problem() -> Option<String> {
    match env_request()? {
        (_, Some(_)) => None,
        (s, None) => {
            let names: Vec<&str> = available().iter().map(|l| l.name()).collect();
            Some(format!("FASTOPT_SIMD='{s}' is not one of this CPU's levels ({}); using {}", names.join(", "), level().name()))
        }
    }
}

/// Forces a level. Fails (and changes nothing) when the CPU does not support it.
pub fn set_level(l: SimdLevel) -> Result<(), String> {
    if !available().contains(&l) {
        let names: Vec<&str> = available().iter().map(|l| l.name()).collect();
        return Err(format!(
            "SIMD level '{}' is not supported by this CPU (available: {})",
            l.name(),
            names.join(", ")
        ));
    }
    ACTIVE.store(l as u8, Ordering::Relaxed);
    Ok(())
}

/// How multiply-adds are rounded in a kernel body.
pub trait Arith {
    /// `a * b + c`.
    fn madd<T: Float>(a: T, b: T, c: T) -> T;
    /// `a / c`, correctly rounded, given `inv_c = 1 / c`: a plain division, or with FMA the
    /// division-free [`crate::float::div_by_const`], which gives the same bits.
    fn div_by_const<T: Float>(a: T, c: T, inv_c: T) -> T;
    /// Whether the kernel body is compiled for, and runs on, x86-64 with AVX2, FMA and F16C
    /// (the AVX2 and AVX-512 levels): bulk conversions between 16-bit and float32 values
    /// then use those instructions ([`crate::half`]).
    const X86: bool = false;
    /// Whether the kernel body is compiled for 512-bit vectors (the AVX-512 level), where
    /// some 16-bit formats convert faster inside the rule's loop than through tiles
    /// (`Storage::DIRECT` in [`crate::optim::engine`]).
    const WIDE: bool = false;
}

/// One rounding (hardware FMA); only instantiated where the target has FMA.
pub struct Fused;
/// One rounding, inside the x86-64 AVX2 (`WIDE` false) and AVX-512 (`WIDE` true: see
/// [`Arith::WIDE`]) wrappers of [`dispatch_at`] only (the CPU has AVX2, FMA and F16C: see
/// [`Arith::X86`]). Private, so that no other code can run a kernel with it.
struct X86Fused<const WIDE: bool>;
/// Two roundings (product, then sum).
pub struct Separate;

impl Arith for Fused {
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a.fma(b, c)
    }
    #[inline(always)]
    fn div_by_const<T: Float>(a: T, c: T, inv_c: T) -> T {
        crate::float::div_by_const(a, c, inv_c)
    }
}

impl<const W: bool> Arith for X86Fused<W> {
    const X86: bool = true;
    const WIDE: bool = W;
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        Fused::madd(a, b, c)
    }
    #[inline(always)]
    fn div_by_const<T: Float>(a: T, c: T, inv_c: T) -> T {
        Fused::div_by_const(a, c, inv_c)
    }
}

impl Arith for Separate {
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a * b + c
    }
    #[inline(always)]
    fn div_by_const<T: Float>(a: T, c: T, _inv_c: T) -> T {
        // Without hardware FMA the correction would be a library call per element.
        a / c
    }
}

/// A unit of element-wise work whose body is generic over the multiply-add rounding.
/// Implementations mark `run` `#[inline(always)]` so that it is compiled with the target
/// features of the wrapper [`dispatch`] calls it from.
pub trait SimdKernel {
    fn run<A: Arith>(self);
}

/// Runs `k` at the active SIMD level.
#[inline]
pub fn dispatch<K: SimdKernel>(k: K) {
    dispatch_at(level(), k)
}

/// Runs `k` at level `l`; a level the CPU lacks runs the scalar body instead.
#[inline]
pub fn dispatch_at<K: SimdKernel>(l: SimdLevel, k: K) {
    #[cfg(target_arch = "x86_64")]
    {
        if l == SimdLevel::Avx512 && detected() == SimdLevel::Avx512 {
            // SAFETY: `detected()` has confirmed at run time that this CPU supports every
            // feature `run_avx512` is compiled with (avx512f/vl/dq/bw, avx2, fma, f16c).
            return unsafe { run_avx512(k) };
        }
        if l == SimdLevel::Avx2 && detected() >= SimdLevel::Avx2 {
            // SAFETY: `detected()` has confirmed avx2, fma and f16c at run time.
            return unsafe { run_avx2(k) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if l == SimdLevel::Neon {
            // NEON and FMA are baseline on AArch64.
            return k.run::<Fused>();
        }
    }
    let _ = l;
    k.run::<Separate>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,f16c")]
unsafe fn run_avx512<K: SimdKernel>(k: K) {
    k.run::<X86Fused<true>>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<K: SimdKernel>(k: K) {
    k.run::<X86Fused<false>>()
}
