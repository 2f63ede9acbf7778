//! Batch normalization over `(N, C, L)` (L = the product of the spatial sizes; 1 for `(N, C)`).
//!
//! Statistics are computed per channel in float64 by merging chunk statistics (Chan et al.'s
//! parallel form of Welford's update): each chunk (a contiguous `L`-run of one sample, or a
//! block of rows when `L == 1`) contributes its count, mean and sum of squared deviations from
//! its own mean, so a float32 batch with mean 1e4 and std 1 keeps its variance (a sum of
//! squares would lose it). A channel is always reduced by one thread in a fixed order, so the
//! results do not depend on the thread count.

use crate::float::Float;
use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel};
use crate::Error;

/// `(N, C, L)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub c: usize,
    pub l: usize,
}

impl Shape {
    #[cfg(test)]
    fn len(self) -> usize {
        self.n * self.c * self.l
    }
    /// `n * c * l`, or None where it overflows (no array has that many elements).
    fn checked_len(self) -> Option<usize> {
        self.n.checked_mul(self.c)?.checked_mul(self.l)
    }
    fn check(self, what: &str, len: usize) -> Result<(), Error> {
        if Some(len) != self.checked_len() {
            return Err(Error::value(format!(
                "{what} has {len} elements, not {} x {} x {}",
                self.n, self.c, self.l
            )));
        }
        Ok(())
    }
    fn check_c(self, what: &str, len: usize) -> Result<(), Error> {
        if len != self.c {
            return Err(Error::value(format!(
                "{what} has {len} elements but there are {} channels",
                self.c
            )));
        }
        Ok(())
    }
}

/// Rows per chunk when `L == 1`.
const ROW_BLOCK: usize = 256;

/// A range of channels and its per-channel outputs.
struct Channels<'a, T> {
    x: &'a [T],
    g: Option<&'a [T]>,
    mean: Option<&'a [T]>,
    s: Shape,
    c0: usize,
    out1: &'a mut [f64],
    out2: &'a mut [f64],
}

impl<T: Send + Sync> Split for Channels<'_, T> {
    fn len(&self) -> usize {
        self.out1.len() * self.s.n * self.s.l
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let per = (self.s.n * self.s.l).max(1);
        let mut k = mid.div_ceil(per);
        if self.s.l == 1 {
            // Keep channel ranges whole vectors wide.
            k = k.next_multiple_of(16);
        }
        let k = k.min(self.out1.len());
        let (a1, b1) = self.out1.split_at_mut(k);
        let (a2, b2) = self.out2.split_at_mut(k);
        let c0 = self.c0;
        (
            Channels {
                x: self.x,
                g: self.g,
                mean: self.mean,
                s: self.s,
                c0,
                out1: a1,
                out2: a2,
            },
            Channels {
                x: self.x,
                g: self.g,
                mean: self.mean,
                s: self.s,
                c0: c0 + k,
                out1: b1,
                out2: b2,
            },
        )
    }
}

/// Independent float64 accumulators per reduction: enough to hide the add latency (a
/// reduction with one vector of partial sums runs at one vector per add latency).
const LANES: usize = 32;

#[inline(always)]
fn sum_lanes<T: Float>(v: &[T]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut ch = v.chunks_exact(LANES);
    for c in &mut ch {
        for j in 0..LANES {
            acc[j] += c[j].to_f64();
        }
    }
    ch.remainder().iter().map(|x| x.to_f64()).sum::<f64>() + acc.iter().sum::<f64>()
}

#[inline(always)]
fn dev2_lanes<T: Float>(v: &[T], m: f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut ch = v.chunks_exact(LANES);
    for c in &mut ch {
        for j in 0..LANES {
            let d = c[j].to_f64() - m;
            acc[j] += d * d;
        }
    }
    ch.remainder().iter().map(|x| (x.to_f64() - m) * (x.to_f64() - m)).sum::<f64>() + acc.iter().sum::<f64>()
}

/// Merges chunk statistics `(nb, mb, m2b)` into `(na, ma, m2a)`.
#[inline(always)]
fn merge(na: f64, ma: &mut f64, m2a: &mut f64, nb: f64, mb: f64, m2b: f64) {
    let n = na + nb;
    let d = mb - *ma;
    *ma += d * (nb / n);
    *m2a += m2b + d * d * (na * nb / n);
}

/// Mean and biased variance of channels `c0 .. c0 + mean.len()`.
#[inline(always)]
fn stats_range<T: Float>(x: &[T], s: Shape, c0: usize, mean: &mut [f64], var: &mut [f64]) {
    let w = mean.len();
    if s.l > 1 {
        for (k, (m, v)) in mean.iter_mut().zip(var.iter_mut()).enumerate() {
            let c = c0 + k;
            let (mut cnt, mut mu, mut m2) = (0.0, 0.0, 0.0);
            for i in 0..s.n {
                let seg = &x[(i * s.c + c) * s.l..][..s.l];
                let sm = sum_lanes(seg) / s.l as f64;
                merge(cnt, &mut mu, &mut m2, s.l as f64, sm, dev2_lanes(seg, sm));
                cnt += s.l as f64;
            }
            *m = if cnt > 0.0 { mu } else { f64::NAN };
            *v = if cnt > 0.0 { m2 / cnt } else { f64::NAN };
        }
        return;
    }
    for m in mean.iter_mut() {
        *m = 0.0;
    }
    for v in var.iter_mut() {
        *v = 0.0;
    }
    let mut bs = [0f64; CHANNEL_BLOCK];
    let mut bm2 = [0f64; CHANNEL_BLOCK];
    for q0 in (0..w).step_by(CHANNEL_BLOCK) {
        let q = (w - q0).min(CHANNEL_BLOCK);
        let (bs, bm2) = (&mut bs[..q], &mut bm2[..q]);
        let mut cnt = 0.0;
        for r0 in (0..s.n).step_by(ROW_BLOCK) {
            let rows = (s.n - r0).min(ROW_BLOCK);
            for v in bs.iter_mut() {
                *v = 0.0;
            }
            for v in bm2.iter_mut() {
                *v = 0.0;
            }
            for i in r0..r0 + rows {
                let row = &x[i * s.c + c0 + q0..][..q];
                for (a, &v) in bs.iter_mut().zip(row) {
                    *a += v.to_f64();
                }
            }
            let inv = 1.0 / rows as f64;
            for v in bs.iter_mut() {
                *v *= inv;
            }
            for i in r0..r0 + rows {
                let row = &x[i * s.c + c0 + q0..][..q];
                for ((a, &v), &m) in bm2.iter_mut().zip(row).zip(bs.iter()) {
                    let d = v.to_f64() - m;
                    *a += d * d;
                }
            }
            // merge() with the factors every channel shares hoisted out of the loop.
            let nb = rows as f64;
            let (wb, wab) = (nb / (cnt + nb), cnt * nb / (cnt + nb));
            for ((m, v), (&mb, &m2b)) in mean[q0..q0 + q].iter_mut().zip(var[q0..q0 + q].iter_mut()).zip(bs.iter().zip(bm2.iter())) {
                let d = mb - *m;
                *m += d * wb;
                *v += m2b + d * d * wab;
            }
            cnt += nb;
        }
        for k in q0..q0 + q {
            var[k] = if cnt > 0.0 { var[k] / cnt } else { f64::NAN };
            if cnt == 0.0 {
                mean[k] = f64::NAN;
            }
        }
    }
}

/// `sum(g)` and `sum(g * (x - mean))` of channels `c0 .. c0 + sg.len()`.
#[inline(always)]
fn sums_range<T: Float>(g: &[T], x: &[T], mean: &[T], s: Shape, c0: usize, sg: &mut [f64], sgx: &mut [f64]) {
    let w = sg.len();
    if s.l > 1 {
        for k in 0..w {
            let c = c0 + k;
            let mu = mean[c].to_f64();
            let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
            for i in 0..s.n {
                let off = (i * s.c + c) * s.l;
                let (xs, gs) = (&x[off..][..s.l], &g[off..][..s.l]);
                let mut cx = xs.chunks_exact(LANES);
                let mut cg = gs.chunks_exact(LANES);
                for (xv, gv) in (&mut cx).zip(&mut cg) {
                    for j in 0..LANES {
                        let gg = gv[j].to_f64();
                        a[j] += gg;
                        b[j] += gg * (xv[j].to_f64() - mu);
                    }
                }
                for (xv, gv) in cx.remainder().iter().zip(cg.remainder()) {
                    a[0] += gv.to_f64();
                    b[0] += gv.to_f64() * (xv.to_f64() - mu);
                }
            }
            sg[k] = a.iter().sum();
            sgx[k] = b.iter().sum();
        }
        return;
    }
    for v in sg.iter_mut() {
        *v = 0.0;
    }
    for v in sgx.iter_mut() {
        *v = 0.0;
    }
    let mu = &mean[c0..][..w];
    for i in 0..s.n {
        let (xs, gs) = (&x[i * s.c + c0..][..w], &g[i * s.c + c0..][..w]);
        for k in 0..w {
            let gg = gs[k].to_f64();
            sg[k] += gg;
            sgx[k] += gg * (xs[k].to_f64() - mu[k].to_f64());
        }
    }
}

struct Stats<'a, T>(Channels<'a, T>);

impl<T: Float> SimdKernel for Stats<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Channels { x, s, c0, out1, out2, .. } = self.0;
        stats_range(x, s, c0, out1, out2);
    }
}

struct Sums<'a, T>(Channels<'a, T>);

impl<T: Float> SimdKernel for Sums<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Channels { x, g, mean, s, c0, out1, out2 } = self.0;
        sums_range(g.unwrap_or(&[]), x, mean.unwrap_or(&[]), s, c0, out1, out2);
    }
}

/// Channels per block of the `L == 1` statistics (a block of `N x 256` elements stays in L2
/// between its two sweeps).
const CHANNEL_BLOCK: usize = 256;

/// `(x - mean) * scale + shift`: the normalization of one element.
#[inline(always)]
fn norm_elem<A: Arith, T: Float>(x: T, m: T, sc: T, sh: T) -> T {
    A::madd(x - m, sc, sh)
}

/// `(g - shift - (x - mean) * k) * scale`: the input gradient of one element in training
/// mode (`shift` = mean of g, `k` = invstd^2 * mean of g (x - mean)).
#[inline(always)]
fn grad_elem<T: Float>(g: T, x: T, m: T, sc: T, sh: T, k: T) -> T {
    (g - sh - (x - m) * k) * sc
}

/// Forward coefficients of one channel from its statistics: `(mean, scale, shift)` with
/// `scale = weight / sqrt(var + eps)`, each rounded once to the element type.
#[inline(always)]
fn forward_coefs<T: Float>(mean: f64, var: f64, eps: f64, weight: Option<T>, bias: Option<T>) -> (T, T, T) {
    let inv = 1.0 / (var + eps).sqrt();
    (T::from_f64(mean), T::from_f64(inv * weight.map_or(1.0, T::to_f64)), bias.unwrap_or(T::ZERO))
}

/// Backward coefficients of one channel from its sums over M elements:
/// `(scale, shift, k) = (invstd * weight, sum_g / M, sum_gx * invstd^2 / M)`.
#[inline(always)]
fn backward_coefs<T: Float>(sum_g: f64, sum_gx: f64, count: f64, invstd: T, weight: Option<T>) -> (T, T, T) {
    let inv = invstd.to_f64();
    (T::from_f64(inv * weight.map_or(1.0, T::to_f64)), T::from_f64(sum_g / count), T::from_f64(sum_gx * inv * inv / count))
}

/// The output of the fused passes: written by channel, from several threads.
struct OutPtr<T> {
    ptr: *mut T,
    len: usize,
}
impl<T> Clone for OutPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for OutPtr<T> {}
// SAFETY: an `OutPtr` is made from a `&mut [T]` that outlives the call (see `train_forward`),
// and each work item writes only the elements of its own channels (`OutPtr::run` below),
// so sharing the pointer between threads never lets two threads touch the same element.
unsafe impl<T: Send> Send for OutPtr<T> {}
unsafe impl<T: Sync> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// # Safety
    /// `start + len <= self.len`, and no other live reference covers these elements: the
    /// callers only take runs of elements of the channels their work item owns.
    // (a shared pointer handing out disjoint mutable runs, as `slice::split_at_mut` would if
    // the runs were known up front: the contract above is what keeps them disjoint)
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn run(&self, start: usize, len: usize) -> &mut [T] {
        debug_assert!(start + len <= self.len);
        // SAFETY: per this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Training forward or backward of a channel range of an `(N, C, L > 1)` tensor: each
/// channel's reduction, then its element-wise pass while its planes are in cache.
struct Train<'a, T> {
    ch: Channels<'a, T>,
    out: OutPtr<T>,
    weight: Option<&'a [T]>,
    bias: Option<&'a [T]>,
    /// Backward: the forward's invstd.
    invstd: Option<&'a [T]>,
    eps: f64,
}

impl<T: Send + Sync> Split for Train<'_, T> {
    fn len(&self) -> usize {
        self.ch.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (a, b) = self.ch.split_at(mid);
        let t = |ch| Train { ch, out: self.out, weight: self.weight, bias: self.bias, invstd: self.invstd, eps: self.eps };
        (t(a), t(b))
    }
}

impl<T: Float> SimdKernel for Train<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Train { ch, out, weight, bias, invstd, eps } = self;
        let Channels { x, g, mean, s, c0, out1, out2 } = ch;
        let count = (s.n * s.l) as f64;
        for k in 0..out1.len() {
            let c = c0 + k;
            let (o1, o2) = (&mut out1[k..k + 1], &mut out2[k..k + 1]);
            let (w, b) = (weight.map(|w| w[c]), bias.map(|b| b[c]));
            let (m, sc, sh, kk) = match g {
                None => {
                    stats_range(x, s, c, o1, o2);
                    let (m, sc, sh) = forward_coefs(o1[0], o2[0], eps, w, b);
                    (m, sc, sh, T::ZERO)
                }
                Some(g) => {
                    let m = mean.unwrap_or(&[])[c];
                    sums_range(g, x, mean.unwrap_or(&[]), s, c, o1, o2);
                    let (sc, sh, kk) = backward_coefs(o1[0], o2[0], count, invstd.unwrap_or(&[])[c], w);
                    (m, sc, sh, kk)
                }
            };
            for i in 0..s.n {
                let off = (i * s.c + c) * s.l;
                let xs = &x[off..][..s.l];
                // SAFETY: channel `c` belongs to this work item (Channels splits hand out
                // disjoint channel ranges), and this run lies inside `out` (same shape as x).
                let o = unsafe { out.run(off, s.l) };
                match g {
                    None => {
                        for (o, &x) in o.iter_mut().zip(xs) {
                            *o = norm_elem::<A, T>(x, m, sc, sh);
                        }
                    }
                    Some(g) => {
                        for ((o, &x), &g) in o.iter_mut().zip(xs).zip(&g[off..][..s.l]) {
                            *o = grad_elem(g, x, m, sc, sh, kk);
                        }
                    }
                }
            }
        }
    }
}

/// Training forward: the mean and biased variance (float64, into `mean`/`var`), then
/// `out = (x - mean) * invstd * weight + bias` with `invstd = 1 / sqrt(var + eps)`. For
/// `L > 1` in one pass over memory (each channel normalized while its planes are in cache);
/// for `(N, C)` as two sequential sweeps (channel blocks strided by rows measured slower).
#[allow(clippy::too_many_arguments)]
pub fn train_forward<T: Float>(
    x: &[T],
    out: &mut [T],
    s: Shape,
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
    mean: &mut [f64],
    var: &mut [f64],
) -> Result<(), Error> {
    s.check("input", x.len())?;
    s.check("out", out.len())?;
    s.check_c("mean", mean.len())?;
    s.check_c("var", var.len())?;
    if let Some(w) = weight {
        s.check_c("weight", w.len())?;
    }
    if let Some(b) = bias {
        s.check_c("bias", b.len())?;
    }
    if s.l == 1 {
        stats(x, s, mean, var)?;
        let coefs: Vec<(T, T, T)> =
            (0..s.c).map(|c| forward_coefs(mean[c], var[c], eps, weight.map(|w| w[c]), bias.map(|b| b[c]))).collect();
        let (m, sc, sh) = unzip3(&coefs);
        return normalize(Some(x), out, s, PerChannel { mean: &m, scale: &sc, shift: &sh, k: None });
    }
    let out = OutPtr { ptr: out.as_mut_ptr(), len: out.len() };
    let ch = Channels { x, g: None, mean: None, s, c0: 0, out1: mean, out2: var };
    parallel::for_each(vec![Train { ch, out, weight, bias, invstd: None, eps }], simd::dispatch);
    Ok(())
}

/// Training backward: `sum(g)` and `sum(g * (x - mean))` (float64, into `sum_g`/`sum_gx`),
/// then `out = (g - sum_g/M - (x - mean) * invstd^2 * sum_gx/M) * invstd * weight`
/// (M = N*L); one pass over memory for `L > 1`, two sequential sweeps for `(N, C)`.
#[allow(clippy::too_many_arguments)]
pub fn train_backward<T: Float>(
    g: &[T],
    x: &[T],
    out: &mut [T],
    s: Shape,
    mean: &[T],
    invstd: &[T],
    weight: Option<&[T]>,
    sum_g: &mut [f64],
    sum_gx: &mut [f64],
) -> Result<(), Error> {
    s.check("grad_output", g.len())?;
    s.check("input", x.len())?;
    s.check("out", out.len())?;
    s.check_c("mean", mean.len())?;
    s.check_c("invstd", invstd.len())?;
    s.check_c("sum_g", sum_g.len())?;
    s.check_c("sum_gx", sum_gx.len())?;
    if let Some(w) = weight {
        s.check_c("weight", w.len())?;
    }
    if s.l == 1 {
        backward_sums(g, x, mean, s, sum_g, sum_gx)?;
        let count = (s.n * s.l) as f64;
        let coefs: Vec<(T, T, T)> =
            (0..s.c).map(|c| backward_coefs(sum_g[c], sum_gx[c], count, invstd[c], weight.map(|w| w[c]))).collect();
        let (sc, sh, k) = unzip3(&coefs);
        return backward_input(g, x, out, s, PerChannel { mean, scale: &sc, shift: &sh, k: Some(&k) });
    }
    let out = OutPtr { ptr: out.as_mut_ptr(), len: out.len() };
    let ch = Channels { x, g: Some(g), mean: Some(mean), s, c0: 0, out1: sum_g, out2: sum_gx };
    parallel::for_each(vec![Train { ch, out, weight, bias: None, invstd: Some(invstd), eps: 0.0 }], simd::dispatch);
    Ok(())
}

fn unzip3<T: Copy>(v: &[(T, T, T)]) -> (Vec<T>, Vec<T>, Vec<T>) {
    (v.iter().map(|t| t.0).collect(), v.iter().map(|t| t.1).collect(), v.iter().map(|t| t.2).collect())
}

/// Per-channel mean and biased variance (float64) of `x`, seen as `(N, C, L)`.
pub fn stats<T: Float>(x: &[T], s: Shape, mean: &mut [f64], var: &mut [f64]) -> Result<(), Error> {
    s.check("input", x.len())?;
    s.check_c("mean", mean.len())?;
    s.check_c("var", var.len())?;
    let ch = Channels {
        x,
        g: None,
        mean: None,
        s,
        c0: 0,
        out1: mean,
        out2: var,
    };
    parallel::for_each(vec![ch], |w| simd::dispatch(Stats(w)));
    Ok(())
}

/// Per-channel `sum(g)` and `sum(g * (x - mean))` in float64.
pub fn backward_sums<T: Float>(
    g: &[T],
    x: &[T],
    mean: &[T],
    s: Shape,
    sum_g: &mut [f64],
    sum_gx: &mut [f64],
) -> Result<(), Error> {
    s.check("grad_output", g.len())?;
    s.check("input", x.len())?;
    s.check_c("mean", mean.len())?;
    s.check_c("sum_g", sum_g.len())?;
    s.check_c("sum_gx", sum_gx.len())?;
    let ch = Channels {
        x,
        g: Some(g),
        mean: Some(mean),
        s,
        c0: 0,
        out1: sum_g,
        out2: sum_gx,
    };
    parallel::for_each(vec![ch], |w| simd::dispatch(Sums(w)));
    Ok(())
}

/// Per-channel parameters of an element-wise pass.
pub struct PerChannel<'a, T> {
    pub mean: &'a [T],
    pub scale: &'a [T],
    pub shift: &'a [T],
    /// Backward only: the per-channel `k` of `(x - mean) * k` (None in eval mode).
    pub k: Option<&'a [T]>,
}

impl<T> Clone for PerChannel<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PerChannel<'_, T> {}

fn cut<T>(v: Option<&[T]>, mid: usize) -> (Option<&[T]>, Option<&[T]>) {
    match v {
        Some(v) => {
            let (a, b) = v.split_at(mid);
            (Some(a), Some(b))
        }
        None => (None, None),
    }
}

/// A flat range of the output starting at element `start`.
struct Flat<'a, T> {
    a: Option<&'a [T]>,
    b: Option<&'a [T]>,
    out: &'a mut [T],
    start: usize,
    s: Shape,
    p: PerChannel<'a, T>,
    backward: bool,
}

impl<T: Send + Sync> Split for Flat<'_, T> {
    fn len(&self) -> usize {
        self.out.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let ((a0, a1), (b0, b1)) = (cut(self.a, mid), cut(self.b, mid));
        let (o0, o1) = self.out.split_at_mut(mid);
        (
            Flat {
                a: a0,
                b: b0,
                out: o0,
                start: self.start,
                s: self.s,
                p: self.p,
                backward: self.backward,
            },
            Flat {
                a: a1,
                b: b1,
                out: o1,
                start: self.start + mid,
                s: self.s,
                p: self.p,
                backward: self.backward,
            },
        )
    }
}

impl<T: Float> SimdKernel for Flat<'_, T> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Flat {
            a,
            b,
            out,
            start,
            s,
            p,
            backward,
        } = self;
        let mut done = 0;
        while done < out.len() {
            let idx = start + done;
            // A run of elements whose channel parameters are constant (L > 1) or consecutive
            // (L == 1: along one row).
            let (c, run) = if s.l > 1 {
                ((idx / s.l) % s.c, s.l - idx % s.l)
            } else {
                (idx % s.c, s.c - idx % s.c)
            };
            let run = run.min(out.len() - done);
            let o = &mut out[done..done + run];
            let av = a.map(|v| &v[done..done + run]);
            let bv = b.map(|v| &v[done..done + run]);
            if s.l > 1 {
                let (m, sc, sh) = (p.mean[c], p.scale[c], p.shift[c]);
                if !backward {
                    // out = (x - mean) * scale + shift; x is `a`, or `out` itself.
                    match av {
                        Some(x) => {
                            for (o, &x) in o.iter_mut().zip(x) {
                                *o = norm_elem::<A, T>(x, m, sc, sh);
                            }
                        }
                        None => {
                            for o in o.iter_mut() {
                                *o = norm_elem::<A, T>(*o, m, sc, sh);
                            }
                        }
                    }
                } else {
                    let (g, x) = (av.unwrap_or(&[]), bv.unwrap_or(&[]));
                    match p.k {
                        // out = (g - shift - (x - mean) * k) * scale
                        Some(k) => {
                            let k = k[c];
                            for (o, (&g, &x)) in o.iter_mut().zip(g.iter().zip(x)) {
                                *o = grad_elem(g, x, m, sc, sh, k);
                            }
                        }
                        None => {
                            for (o, &g) in o.iter_mut().zip(g) {
                                *o = g * sc;
                            }
                        }
                    }
                }
            } else {
                let (m, sc, sh) = (
                    &p.mean[c..c + run],
                    &p.scale[c..c + run],
                    &p.shift[c..c + run],
                );
                if !backward {
                    match av {
                        Some(x) => {
                            for ((o, &x), (&m, (&sc, &sh))) in
                                o.iter_mut().zip(x).zip(m.iter().zip(sc.iter().zip(sh)))
                            {
                                *o = norm_elem::<A, T>(x, m, sc, sh);
                            }
                        }
                        None => {
                            for (o, (&m, (&sc, &sh))) in
                                o.iter_mut().zip(m.iter().zip(sc.iter().zip(sh)))
                            {
                                *o = norm_elem::<A, T>(*o, m, sc, sh);
                            }
                        }
                    }
                } else {
                    let (g, x) = (av.unwrap_or(&[]), bv.unwrap_or(&[]));
                    match p.k {
                        Some(k) => {
                            let k = &k[c..c + run];
                            let it = o
                                .iter_mut()
                                .zip(g.iter().zip(x))
                                .zip(m.iter().zip(k))
                                .zip(sc.iter().zip(sh));
                            for (((o, (&g, &x)), (&m, &k)), (&sc, &sh)) in it {
                                *o = grad_elem(g, x, m, sc, sh, k);
                            }
                        }
                        None => {
                            for ((o, &g), &sc) in o.iter_mut().zip(g).zip(sc) {
                                *o = g * sc;
                            }
                        }
                    }
                }
            }
            done += run;
        }
    }
}

fn check_params<T>(s: Shape, p: &PerChannel<'_, T>) -> Result<(), Error> {
    s.check_c("mean", p.mean.len())?;
    s.check_c("scale", p.scale.len())?;
    s.check_c("shift", p.shift.len())?;
    if let Some(k) = p.k {
        s.check_c("k", k.len())?;
    }
    Ok(())
}

/// `out = (x - mean[c]) * scale[c] + shift[c]`; `x = None` normalizes `out` in place.
pub fn normalize<T: Float>(
    x: Option<&[T]>,
    out: &mut [T],
    s: Shape,
    p: PerChannel<'_, T>,
) -> Result<(), Error> {
    s.check("out", out.len())?;
    if let Some(x) = x {
        s.check("input", x.len())?;
    }
    check_params(s, &p)?;
    let f = Flat {
        a: x,
        b: None,
        out,
        start: 0,
        s,
        p: PerChannel { k: None, ..p },
        backward: false,
    };
    parallel::for_each(vec![f], simd::dispatch);
    Ok(())
}

/// `out = (g - shift[c] - (x - mean[c]) * k[c]) * scale[c]` (training), or
/// `out = g * scale[c]` when `p.k` is None (eval).
pub fn backward_input<T: Float>(
    g: &[T],
    x: &[T],
    out: &mut [T],
    s: Shape,
    p: PerChannel<'_, T>,
) -> Result<(), Error> {
    s.check("grad_output", g.len())?;
    s.check("input", x.len())?;
    s.check("out", out.len())?;
    check_params(s, &p)?;
    let f = Flat {
        a: Some(g),
        b: Some(x),
        out,
        start: 0,
        s,
        p,
        backward: true,
    };
    parallel::for_each(vec![f], simd::dispatch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    #[test]
    fn a_shape_whose_size_overflows_is_an_error() {
        // (1 + 2**63) * 2 * 8 wraps to 16 in unchecked arithmetic.
        let x = vec![0f32; 16];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        let s = Shape { n: 1 + (1usize << 63), c: 2, l: 8 };
        assert!(stats(&x, s, &mut m, &mut v).is_err());
    }

    #[test]
    fn stats_are_stable_and_thread_independent() {
        let _g = crate::test_util::global();
        for s in [
            Shape {
                n: 300,
                c: 37,
                l: 1,
            },
            Shape { n: 8, c: 5, l: 49 },
            Shape { n: 1, c: 3, l: 2 },
            Shape {
                n: 200,
                c: 40,
                l: 9,
            },
        ] {
            // float32, mean 1e4, std about 1: a float32 sum of squares would lose the variance.
            let x: Vec<f32> = data::<f64>(s.len(), 2)
                .iter()
                .map(|v| (1e4 + v) as f32)
                .collect();
            let mut results = vec![];
            for threads in [1, 2] {
                crate::parallel::set_num_threads(threads).unwrap();
                let (mut m, mut v) = (vec![0.0; s.c], vec![0.0; s.c]);
                stats(&x, s, &mut m, &mut v).unwrap();
                results.push((m, v));
            }
            assert_eq!(results[0], results[1]);
            let (m, v) = &results[0];
            for c in 0..s.c {
                let vals: Vec<f64> = (0..s.n)
                    .flat_map(|i| (0..s.l).map(move |j| (i * s.c + c) * s.l + j))
                    .map(|k| f64::from(x[k]))
                    .collect();
                let mu = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / vals.len() as f64;
                assert!(
                    (m[c] - mu).abs() < 1e-9 && (v[c] - var).abs() < 1e-9 * (1.0 + var),
                    "{s:?} c={c}: {} {} vs {mu} {var}",
                    m[c],
                    v[c]
                );
            }
        }
        crate::parallel::set_num_threads(crate::parallel::default_threads()).unwrap();
    }

    #[test]
    fn fused_training_passes_equal_the_separate_ones() {
        // (both paths take the global SIMD level: no other test may change it meanwhile)
        let _g = crate::test_util::global();
        for s in [Shape { n: 300, c: 150, l: 1 }, Shape { n: 6, c: 5, l: 33 }, Shape { n: 40, c: 3, l: 1000 }] {
            let x: Vec<f64> = data::<f64>(s.len(), 11).iter().map(|v| v * 3.0 + 1.0).collect();
            let g: Vec<f64> = data::<f64>(s.len(), 12);
            let w: Vec<f64> = (0..s.c).map(|c| 0.5 + c as f64 * 0.01).collect();
            let b: Vec<f64> = (0..s.c).map(|c| c as f64 * 0.1).collect();
            let (mut m1, mut v1, mut y1) = (vec![0.0; s.c], vec![0.0; s.c], vec![0.0; s.len()]);
            train_forward(&x, &mut y1, s, Some(&w), Some(&b), 1e-5, &mut m1, &mut v1).unwrap();
            let (mut m2, mut v2, mut y2) = (vec![0.0; s.c], vec![0.0; s.c], vec![0.0; s.len()]);
            stats(&x, s, &mut m2, &mut v2).unwrap();
            assert_eq!((&m1, &v1), (&m2, &v2));
            let inv: Vec<f64> = v2.iter().map(|v| 1.0 / (v + 1e-5f64).sqrt()).collect();
            let sc: Vec<f64> = inv.iter().zip(&w).map(|(i, w)| i * w).collect();
            normalize(Some(&x), &mut y2, s, PerChannel { mean: &m2, scale: &sc, shift: &b, k: None }).unwrap();
            assert_eq!(y1, y2);
            let (mut a1, mut b1, mut gx1) = (vec![0.0; s.c], vec![0.0; s.c], vec![0.0; s.len()]);
            train_backward(&g, &x, &mut gx1, s, &m1, &inv, Some(&w), &mut a1, &mut b1).unwrap();
            let (mut a2, mut b2, mut gx2) = (vec![0.0; s.c], vec![0.0; s.c], vec![0.0; s.len()]);
            backward_sums(&g, &x, &m1, s, &mut a2, &mut b2).unwrap();
            assert_eq!((&a1, &b1), (&a2, &b2));
            let cnt = (s.n * s.l) as f64;
            let gm: Vec<f64> = a2.iter().map(|a| a / cnt).collect();
            let k: Vec<f64> = b2.iter().zip(&inv).map(|(b, i)| b * i * i / cnt).collect();
            backward_input(&g, &x, &mut gx2, s, PerChannel { mean: &m1, scale: &sc, shift: &gm, k: Some(&k) }).unwrap();
            assert_eq!(gx1, gx2);
        }
    }

    #[test]
    fn normalize_and_backward_by_channel() {
        for s in [Shape { n: 70, c: 37, l: 1 }, Shape { n: 6, c: 5, l: 33 }] {
            let x: Vec<f64> = data::<f64>(s.len(), 7);
            let g: Vec<f64> = data::<f64>(s.len(), 8);
            let mean: Vec<f64> = (0..s.c).map(|c| c as f64 * 0.1).collect();
            let scale: Vec<f64> = (0..s.c).map(|c| 1.0 + c as f64).collect();
            let shift: Vec<f64> = (0..s.c).map(|c| -(c as f64)).collect();
            let k: Vec<f64> = (0..s.c).map(|c| 0.5 * c as f64).collect();
            let p = PerChannel {
                mean: &mean,
                scale: &scale,
                shift: &shift,
                k: Some(&k),
            };
            let mut y = vec![0.0; s.len()];
            normalize(Some(&x), &mut y, s, p).unwrap();
            let mut gx = vec![0.0; s.len()];
            backward_input(&g, &x, &mut gx, s, p).unwrap();
            let (mut sg, mut sgx) = (vec![0.0; s.c], vec![0.0; s.c]);
            backward_sums(&g, &x, &mean, s, &mut sg, &mut sgx).unwrap();
            let (mut esg, mut esgx) = (vec![0.0; s.c], vec![0.0; s.c]);
            for i in 0..s.len() {
                let c = (i / s.l) % s.c;
                let (wy, wg) = (
                    (x[i] - mean[c]) * scale[c] + shift[c],
                    (g[i] - shift[c] - (x[i] - mean[c]) * k[c]) * scale[c],
                );
                assert!(
                    (y[i] - wy).abs() < 1e-14 * (1.0 + wy.abs()),
                    "{} vs {wy}",
                    y[i]
                );
                assert!(
                    (gx[i] - wg).abs() < 1e-13 * (1.0 + wg.abs()),
                    "{} vs {wg}",
                    gx[i]
                );
                esg[c] += g[i];
                esgx[c] += g[i] * (x[i] - mean[c]);
            }
            for c in 0..s.c {
                assert!((sg[c] - esg[c]).abs() < 1e-12 && (sgx[c] - esgx[c]).abs() < 1e-12);
            }
        }
    }
}
