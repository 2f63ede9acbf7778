//! The memory-bandwidth probe: STREAM-style copy and triad over buffers much larger than the
//! caches, run the way every kernel runs (the SIMD level of [`crate::simd`], the threads of
//! [`crate::parallel`]), so a kernel's bytes per second can be stated as a fraction of what
//! this machine's memory delivers.
//!
//! - copy: `a[i] = b[i] * one` with `one` = 1 hidden from the compiler — an exact copy that
//!   stays an ordinary vector loop (a plain copy loop becomes a `memcpy` call, whose
//!   non-temporal stores the kernels do not use). Counted as 2 x 4 bytes per element.
//! - triad: `a[i] = b[i] + s * c[i]`, counted as 3 x 4 bytes per element.
//!
//! As STREAM, bytes are what the loop reads plus what it writes (not the extra read a cache
//! does before writing a line), and the figure is the best of several runs.

use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel};
use std::time::Instant;

/// Bytes per second of the two loops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bandwidth {
    pub copy: f64,
    pub triad: f64,
}

struct Copy<'a> {
    a: &'a mut [f32],
    b: &'a [f32],
    one: f32,
}

impl Split for Copy<'_> {
    fn len(&self) -> usize {
        self.a.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (a0, a1) = self.a.split_at_mut(mid);
        let (b0, b1) = self.b.split_at(mid);
        (Copy { a: a0, b: b0, one: self.one }, Copy { a: a1, b: b1, one: self.one })
    }
}

impl SimdKernel for Copy<'_> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let n = self.a.len();
        let b = &self.b[..n];
        for i in 0..n {
            self.a[i] = b[i] * self.one;
        }
    }
}

struct Triad<'a> {
    a: &'a mut [f32],
    b: &'a [f32],
    c: &'a [f32],
    s: f32,
}

impl Split for Triad<'_> {
    fn len(&self) -> usize {
        self.a.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (a0, a1) = self.a.split_at_mut(mid);
        let (b0, b1) = self.b.split_at(mid);
        let (c0, c1) = self.c.split_at(mid);
        (Triad { a: a0, b: b0, c: c0, s: self.s }, Triad { a: a1, b: b1, c: c1, s: self.s })
    }
}

impl SimdKernel for Triad<'_> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let n = self.a.len();
        let (b, c) = (&self.b[..n], &self.c[..n]);
        for i in 0..n {
            self.a[i] = A::madd(self.s, c[i], b[i]);
        }
    }
}

/// `a = b` (as the probe's copy loop), on the current threads.
pub fn copy(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "copy: buffers of different lengths");
    let one = std::hint::black_box(1.0f32);
    parallel::for_each(vec![Copy { a, b, one }], |k| simd::dispatch(k));
}

/// `a = b + s * c`, on the current threads.
pub fn triad(a: &mut [f32], b: &[f32], c: &[f32], s: f32) {
    assert!(a.len() == b.len() && a.len() == c.len(), "triad: buffers of different lengths");
    parallel::for_each(vec![Triad { a, b, c, s }], |k| simd::dispatch(k));
}

/// Measures copy and triad over float32 buffers of `elements` elements each (at least a few
/// times the last-level cache for a memory figure), `repeats` times each (at least 1), and
/// returns the best rate of each. The buffers are first written by the same threads that
/// measure, so their pages are where those threads run.
///
/// Fails, without allocating anything, when three such buffers do not fit in the address
/// space, and when the allocator refuses them (never an abort).
pub fn probe(elements: usize, repeats: usize) -> Result<Bandwidth, String> {
    let n = elements.max(1);
    if n.checked_mul(3 * std::mem::size_of::<f32>()).is_none_or(|total| total > isize::MAX as usize) {
        return Err(format!("three buffers of {n} float32 elements do not fit in the address space"));
    }
    let buffer = || -> Result<Vec<f32>, String> {
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| format!("could not allocate {} bytes for a buffer of {n} float32 elements", n * 4))?;
        v.resize(n, 0f32);
        Ok(v)
    };
    let (mut a, mut b, mut c) = (buffer()?, buffer()?, buffer()?);
    // First touch, on the pool: `vec![0; n]` may leave the pages unmapped.
    triad(&mut b, &a, &a, 0.0);
    triad(&mut c, &a, &a, 0.0);
    triad(&mut a, &b, &c, 0.0);
    let best = |f: &mut dyn FnMut()| {
        f(); // warm-up
        (0..repeats.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let t_copy = best(&mut || copy(&mut a, &b));
    let t_triad = best(&mut || triad(&mut a, &b, &c, 3.0));
    let bytes = (n * std::mem::size_of::<f32>()) as f64;
    Ok(Bandwidth { copy: 2.0 * bytes / t_copy, triad: 3.0 * bytes / t_triad })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_compute_what_they_claim_at_every_level_and_thread_count() {
        let _g = crate::test_util::global();
        let before = simd::level();
        let n = 100_003; // above the serial threshold, an odd length
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        let c: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
        for threads in [1, 2, 3] {
            parallel::set_num_threads(threads).unwrap();
            for level in simd::available() {
                simd::set_level(level).unwrap();
                let mut a = vec![f32::NAN; n];
                copy(&mut a, &b);
                assert_eq!(a, b);
                triad(&mut a, &b, &c, 3.0);
                for i in 0..n {
                    // exact: small integers and halves
                    assert_eq!(a[i], b[i] + 3.0 * c[i], "{level:?} {threads} threads at {i}");
                }
            }
        }
        simd::set_level(before).unwrap();
        parallel::set_num_threads(parallel::default_threads()).unwrap();
    }

    #[test]
    fn probe_reports_positive_finite_rates() {
        // No timing is asserted: only that the figures are usable numbers.
        let bw = probe(1 << 16, 2).unwrap();
        assert!(bw.copy.is_finite() && bw.copy > 0.0);
        assert!(bw.triad.is_finite() && bw.triad > 0.0);
    }

    #[test]
    fn absurd_sizes_are_an_error_not_an_abort() {
        assert!(probe(usize::MAX / 2, 1).unwrap_err().contains("address space"));
        assert!(probe(1 << 61, 1).unwrap_err().contains("address space"));
    }
}
