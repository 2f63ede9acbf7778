//! fastopt-core: the arithmetic of neural-network training as plain Rust functions on slices.
//!
//! No Python here. Each optimizer step is one fused pass over every element of every tensor
//! of a parameter group, run at the SIMD level chosen in [`simd`] and split across threads by
//! [`parallel`]. The Python bindings live in the `fastopt-py` crate.

pub mod bandwidth;
pub mod blockwise;
pub mod float;
pub mod half;
pub mod math;
pub mod nn;
pub mod optim;
pub mod parallel;
pub mod reduce;
pub mod simd;

pub use float::Float;

/// A caller error the kernels detect before writing anything. Each names the argument it is
/// about, in the caller's words (`grads[3]`, `lr`); the binding maps the kind to a Python
/// exception type in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A bad value: a length that does not match, a missing or unexpected buffer, an
    /// argument out of its range (Python: ValueError).
    Value(String),
    /// An argument of the wrong kind: an unknown or missing hyperparameter, an unknown
    /// optimizer (Python: TypeError).
    Type(String),
}

impl Error {
    pub fn value(msg: impl Into<String>) -> Error {
        Error::Value(msg.into())
    }
    pub fn type_error(msg: impl Into<String>) -> Error {
        Error::Type(msg.into())
    }
    pub fn message(&self) -> &str {
        match self {
            Error::Value(m) | Error::Type(m) => m,
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// Checks that `len` equals the parameter's length, naming the buffer otherwise.
pub(crate) fn check_len(what: &str, index: usize, len: usize, expected: usize) -> Result<(), Error> {
    if len != expected {
        return Err(Error::value(format!(
            "{what}[{index}] has {len} elements but params[{index}] has {expected}"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::Float;

    /// Held by tests that change or depend on the process-wide SIMD level or thread count
    /// (tests run concurrently).
    pub static GLOBAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub fn global() -> std::sync::MutexGuard<'static, ()> {
        GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deterministic values in about [-2, 2) with a few exact zeros.
    pub fn data<T: Float>(n: usize, seed: u64) -> Vec<T> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if i % 29 == 5 {
                    T::ZERO
                } else {
                    T::from_f64(((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0)
                }
            })
            .collect()
    }

    /// Lengths 0..=67 each at sub-slice offsets 0..=3 (offsets misalign the start).
    pub fn misaligned_lengths() -> impl Iterator<Item = (usize, usize)> {
        (0..=67usize).flat_map(|n| (0..=3usize).map(move |off| (n, off)))
    }

    pub fn madd_ref<T: Float>(a: T, b: T, c: T, fma: bool) -> T {
        if fma {
            a.fma(b, c)
        } else {
            a * b + c
        }
    }

    /// torch's lerp (ATen `Lerp.h`): `self + w * (end - self)` for |w| < 0.5, else
    /// `end - (end - self) * (1 - w)`; its vectorized form uses fmadd.
    pub fn lerp_ref<T: Float>(start: T, end: T, w: T, fma: bool) -> T {
        let d = end - start;
        if w.to_f64().abs() < 0.5 {
            madd_ref(w, d, start, fma)
        } else if fma {
            (w - T::ONE).fma(d, end)
        } else {
            end - d * (T::ONE - w)
        }
    }
}
