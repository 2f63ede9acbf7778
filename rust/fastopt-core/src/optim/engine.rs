//! The rule engine: every single-pass optimizer is a [`Rule`], one driver ([`run`]) applies
//! it to every element of every tensor of a parameter group.
//!
//! A rule is the per-element update of one tensor: given the parameter, the gradient and up
//! to [`MAX_STATES`] state values, it returns the new parameter and updates the state. Its
//! constants (bias corrections, step sizes) are computed once per tensor from the group's
//! hyperparameters and the tensor's float32 counters (torch's `state['step']` and the like)
//! by the `make` closure given to [`run`]; tensors whose counters are equal share them.
//!
//! The driver owns everything else, once for all rules: the length checks, the work split
//! across threads ([`crate::parallel`]), the SIMD dispatch ([`crate::simd`]) and the loop.
//!
//! Storage is orthogonal to the rule. The driver is generic over how parameters and
//! gradients ([`Storage`] `P`) and state buffers (`S`) are stored; a rule computes in the
//! arithmetic type `P::Arith` and sees loaded values only. Today `f32` and `f64` store their
//! own arithmetic type (load and store are the identity); a half-precision or 8-bit format
//! is one more `Storage` implementation, not a copy of the rules.
//!
//! The building blocks shared by the rules are here too: the gradient prologue ([`Grad`]:
//! clipping scale, maximize, L2 or decoupled weight decay), torch's `lerp` ([`Lerp`]), the
//! moments' running averages ([`Ema`]) and the bias corrections ([`bias_correction`]).

use crate::float::Float;
use crate::parallel::{self, Split};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

/// The most state buffers a rule keeps per tensor (AMSBound: three).
pub const MAX_STATES: usize = 4;
/// The most float32 counters a rule keeps per tensor (ASGD: step, eta, mu).
pub const MAX_COUNTERS: usize = 3;

/// How one element is stored in memory, and the type the rules compute it in.
pub trait Storage: Copy + Send + Sync + 'static {
    type Arith: Float;
    fn load(self) -> Self::Arith;
    fn store(x: Self::Arith) -> Self;
    /// The buffer as its arithmetic type, when the storage is that type (multi-pass
    /// optimizers that are not generic over storage, such as LAMB, run on these only).
    fn as_arith(x: &mut [Self]) -> Option<&mut [Self::Arith]>;
    fn as_arith_ref(x: &[Self]) -> Option<&[Self::Arith]>;
}

/// Storage that is its own arithmetic type: load and store are the identity.
macro_rules! identity_storage {
    ($($t:ty),*) => {$(
        impl Storage for $t {
            type Arith = $t;
            #[inline(always)]
            fn load(self) -> $t {
                self
            }
            #[inline(always)]
            fn store(x: $t) -> $t {
                x
            }
            fn as_arith(x: &mut [$t]) -> Option<&mut [$t]> {
                Some(x)
            }
            fn as_arith_ref(x: &[$t]) -> Option<&[$t]> {
                Some(x)
            }
        }
    )*};
}

identity_storage!(f32, f64);

/// A state buffer's key in torch's `state` dict and the name of its list in the functional
/// API (which error messages use).
pub type StateName = (&'static str, &'static str);

/// A rule's state buffers, in the order a step takes them, and its float32 counters.
pub type Layout = (&'static [StateName], &'static [&'static str]);

/// The per-element update of one tensor, with its per-tensor constants.
pub trait Rule<T: Float>: Copy + Send + Sync {
    /// How many state buffers the rule uses (the first `STATES` of `s`).
    const STATES: usize;
    /// The new parameter value; updates `s` in place.
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T;
}

/// One tensor of a group: its buffers and its float32 counters (`step` first). The state
/// and counter references are borrowed slices, not owned vectors, so that a caller with many
/// tensors cuts them from one allocation per call instead of two per tensor. `fresh` says
/// the state buffers were created for this step (SGD's first step copies the gradient into
/// its momentum buffer instead of averaging with it).
pub struct Tensor<'a, P, S = P> {
    pub param: &'a mut [P],
    pub grad: &'a [P],
    pub states: &'a mut [&'a mut [S]],
    pub counters: &'a mut [&'a mut f32],
    pub fresh: bool,
}

struct Chunk<'a, P, S, R> {
    p: &'a mut [P],
    g: &'a [P],
    s: [&'a mut [S]; MAX_STATES],
    rule: &'a R,
}

/// Splits a used state buffer; an unused (empty) one stays empty on both sides.
fn cut<T>(x: &mut [T], mid: usize) -> (&mut [T], &mut [T]) {
    if x.is_empty() {
        (&mut [], &mut [])
    } else {
        x.split_at_mut(mid)
    }
}

impl<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>> Split for Chunk<'_, P, S, R> {
    fn len(&self) -> usize {
        self.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = self.g.split_at(mid);
        let [a, b, c, d] = self.s;
        let ((a0, a1), (b0, b1), (c0, c1), (d0, d1)) = (cut(a, mid), cut(b, mid), cut(c, mid), cut(d, mid));
        (Chunk { p: p0, g: g0, s: [a0, b0, c0, d0], rule: self.rule }, Chunk { p: p1, g: g1, s: [a1, b1, c1, d1], rule: self.rule })
    }
}

impl<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>> SimdKernel for Chunk<'_, P, S, R> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let [a, b, c, d] = self.s;
        body::<P, S, A, R>(self.p, self.g, a, b, c, d, self.rule);
    }
}

/// Separate `&mut` slices (not an array of them) so that LLVM knows they do not alias; equal
/// lengths up front let it drop the bounds checks and vectorize.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn body<P: Storage, S: Storage<Arith = P::Arith>, A: Arith, R: Rule<P::Arith>>(
    p: &mut [P],
    g: &[P],
    s0: &mut [S],
    s1: &mut [S],
    s2: &mut [S],
    s3: &mut [S],
    rule: &R,
) {
    let n = p.len();
    let g = &g[..n];
    let s0 = if R::STATES > 0 { &mut s0[..n] } else { s0 };
    let s1 = if R::STATES > 1 { &mut s1[..n] } else { s1 };
    let s2 = if R::STATES > 2 { &mut s2[..n] } else { s2 };
    let s3 = if R::STATES > 3 { &mut s3[..n] } else { s3 };
    for i in 0..n {
        let mut st = [<P::Arith as Float>::ZERO; MAX_STATES];
        if R::STATES > 0 { st[0] = s0[i].load() }
        if R::STATES > 1 { st[1] = s1[i].load() }
        if R::STATES > 2 { st[2] = s2[i].load() }
        if R::STATES > 3 { st[3] = s3[i].load() }
        p[i] = P::store(rule.update::<A>(p[i].load(), g[i].load(), &mut st));
        if R::STATES > 0 { s0[i] = S::store(st[0]) }
        if R::STATES > 1 { s1[i] = S::store(st[1]) }
        if R::STATES > 2 { s2[i] = S::store(st[2]) }
        if R::STATES > 3 { s3[i] = S::store(st[3]) }
    }
}

/// Checks every tensor against the layout, then builds each tensor's rule with
/// `make(counters, fresh)` (which updates the counters, e.g. `step += 1`) and runs the pass
/// over all tensors. Nothing is written when a check fails.
pub fn run<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>>(
    tensors: Vec<Tensor<'_, P, S>>,
    (states, counters): Layout,
    level: SimdLevel,
    mut make: impl FnMut(&mut [&mut f32], bool) -> R,
) -> Result<(), Error> {
    // (the declared layout against the rule: the same for every tensor)
    let bad_layout = states.len() != R::STATES || counters.len() > MAX_COUNTERS;
    let mut total = 0;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        total += n;
        check_len("grads", i, t.grad.len(), n)?;
        if bad_layout || t.states.len() != states.len() || t.counters.len() != counters.len() {
            let lists: Vec<&str> = states.iter().map(|s| s.1).collect();
            return Err(Error::value(format!(
                "params[{i}]: expected the state buffers {lists:?} and the counters {counters:?}, got {} buffers and {} counters",
                t.states.len(),
                t.counters.len()
            )));
        }
        for (s, name) in t.states.iter().zip(states) {
            check_len(name.1, i, s.len(), n)?;
        }
    }
    // `make` depends only on a tensor's counters and `fresh` (and the call's
    // hyperparameters), which are usually equal across a group: tensors whose counters match
    // the previous tensor's reuse its rule and counter updates, so the per-tensor `pow` calls
    // run once per call. Compared by bits, so a NaN counter is always recomputed. Each
    // distinct rule is kept once and the pieces of work refer to it.
    let mut rules: Vec<R> = Vec::with_capacity(1);
    let mut which: Vec<usize> = Vec::with_capacity(tensors.len());
    let mut memo: Option<([u32; MAX_COUNTERS], bool, [f32; MAX_COUNTERS])> = None;
    let mut tensors = tensors;
    for t in tensors.iter_mut() {
        let mut before = [0u32; MAX_COUNTERS];
        for (b, c) in before.iter_mut().zip(t.counters.iter()) {
            *b = c.to_bits();
        }
        match memo {
            Some((b, fresh, after)) if b == before && fresh == t.fresh => {
                for (c, a) in t.counters.iter_mut().zip(after) {
                    **c = a;
                }
            }
            _ => {
                rules.push(make(t.counters, t.fresh));
                let mut after = [0f32; MAX_COUNTERS];
                for (a, c) in after.iter_mut().zip(t.counters.iter()) {
                    *a = **c;
                }
                memo = Some((before, t.fresh, after));
            }
        }
        which.push(rules.len() - 1);
    }
    let chunks = tensors.into_iter().zip(which).map(|(t, k)| {
        // Moves each state reference out (leaving an empty slice); unused slots stay empty.
        let mut take = |k: usize| t.states.get_mut(k).map(std::mem::take).unwrap_or_default();
        let s = [take(0), take(1), take(2), take(3)];
        Chunk { p: t.param, g: t.grad, s, rule: &rules[k] }
    });
    parallel::for_each_of(total, chunks, |c| simd::dispatch_at(level, c));
    Ok(())
}

/// The gradient prologue every rule starts with: the gradient scaled (clipping folded into
/// the step) and negated (maximize), then either L2 weight decay added, as torch's
/// `grad.add(param, alpha=wd)`, or decoupled decay `p * (1 - lr * wd)` applied to the
/// parameter first.
#[derive(Clone, Copy, Debug)]
pub struct Grad<T> {
    /// `±grad_scale`: `g * (±scale)` rounds exactly like `(g * scale)` negated, so clipping
    /// then stepping is reproduced bit for bit.
    pub sign: T,
    pub weight_decay: T,
    /// L2 decay is on (`weight_decay != 0` and not decoupled).
    pub l2: bool,
    /// Decoupled decay factor `1 - lr * wd` (1 when off).
    pub decay: T,
}

impl<T: Float> Grad<T> {
    pub fn new(maximize: bool, grad_scale: f64, weight_decay: f64, decoupled: bool, lr: f64) -> Self {
        let scale = T::from_f64(grad_scale);
        Grad {
            sign: if maximize { -scale } else { scale },
            weight_decay: T::from_f64(weight_decay),
            l2: weight_decay != 0.0 && !decoupled,
            decay: if weight_decay != 0.0 && decoupled { T::from_f64(1.0 - lr * weight_decay) } else { T::ONE },
        }
    }

    /// The gradient as the rule reads it; decays `p` when decay is decoupled.
    #[inline(always)]
    pub fn read<A: Arith>(&self, p: &mut T, g: T) -> T {
        if self.l2 {
            self.with_l2::<A>(*p, g)
        } else {
            self.decoupled(p, g)
        }
    }

    /// L2 decay: `g * sign + wd * p` (one rounding with FMA, as torch's vectorized add).
    #[inline(always)]
    pub fn with_l2<A: Arith>(&self, p: T, g: T) -> T {
        A::madd(p, self.weight_decay, g * self.sign)
    }

    /// No L2 term: `p *= decay` (decoupled decay, or 1), then `g * sign`.
    #[inline(always)]
    pub fn decoupled(&self, p: &mut T, g: T) -> T {
        *p = *p * self.decay;
        g * self.sign
    }

    /// Neither decay: `g * sign` (rules without decoupled decay, when `wd == 0`).
    #[inline(always)]
    pub fn plain(&self, g: T) -> T {
        g * self.sign
    }
}

/// torch's `lerp(start, end, w)` for a fixed weight: `start + w * (end - start)` when
/// `|w| < 0.5`, otherwise `end - (1 - w) * (end - start)`, each one multiply-add.
#[derive(Clone, Copy, Debug)]
pub struct Lerp<T> {
    pub small: bool,
    pub coef: T,
}

impl<T: Float> Lerp<T> {
    pub fn new(weight: f64) -> Self {
        let w = T::from_f64(weight);
        let small = w.to_f64().abs() < 0.5;
        Lerp { small, coef: if small { w } else { w - T::ONE } }
    }
    #[inline(always)]
    pub fn apply<A: Arith>(&self, start: T, end: T) -> T {
        A::madd(self.coef, end - start, if self.small { start } else { end })
    }
}

/// A running average with coefficient `beta`, as torch updates its moments: `s * beta`, then
/// `(1 - beta) * x` (or `(1 - beta) * x * x`) added with one rounding for the last product and
/// the sum at the FMA levels (torch's `add_(x, alpha=1-beta)` and `addcmul_`).
#[derive(Clone, Copy, Debug)]
pub struct Ema<T> {
    pub beta: T,
    pub one_minus: T,
}

impl<T: Float> Ema<T> {
    pub fn new(beta: f64) -> Self {
        Ema { beta: T::from_f64(beta), one_minus: T::from_f64(1.0 - beta) }
    }
    /// `beta * s + (1 - beta) * x`.
    #[inline(always)]
    pub fn mean<A: Arith>(&self, s: T, x: T) -> T {
        A::madd(x, self.one_minus, s * self.beta)
    }
    /// `beta * s + (1 - beta) * x * x`.
    #[inline(always)]
    pub fn square<A: Arith>(&self, s: T, x: T) -> T {
        A::madd(self.one_minus * x, x, s * self.beta)
    }
}

/// `1 - beta**step`, computed in double precision with `pow` as Python computes it.
pub fn bias_correction(beta: f64, step: f64) -> f64 {
    1.0 - beta.powf(step)
}

/// `x ** 0.5` as Python computes it: a call to the C library's `pow`, which `black_box`
/// keeps from being rewritten into `sqrt` (the two can differ in the last bit).
pub fn pow_half(x: f64) -> f64 {
    x.powf(core::hint::black_box(0.5f64))
}

/// Increments the `step` counter (the first) and returns it as a double.
pub fn next_step(c: &mut [&mut f32]) -> f64 {
    *c[0] += 1.0;
    *c[0] as f64
}
