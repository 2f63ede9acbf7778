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
//! arithmetic type `P::Arith` and sees loaded values only. `f32` and `f64` store their own
//! arithmetic type (load and store are the identity); bfloat16 and float16
//! ([`crate::half`]) compute in `f32` and round each stored value once; 8-bit blockwise
//! state ([`Q8`], [`crate::blockwise`]) is dequantized a block at a time, updated in `f32`
//! and quantized again in the same pass. A new format is one more `Storage`
//! implementation, not a copy of the rules.
//!
//! The building blocks shared by the rules are here too: the gradient prologue ([`Grad`]:
//! clipping scale, maximize, L2 or decoupled weight decay), torch's `lerp` ([`Lerp`]), the
//! moments' running averages ([`Ema`]) and the bias corrections ([`bias_correction`]).

use crate::blockwise::{self, Map, Q8, QBLOCK};
use crate::float::Float;
use crate::parallel::{self, Split};
use crate::reduce::{dot_f64, sum_f64, BLOCK};
use crate::simd::{self, Arith, SimdKernel, SimdLevel};
use crate::{check_len, Error};

/// The most state buffers a rule keeps per tensor (AMSBound: three).
pub const MAX_STATES: usize = 4;
/// The most float32 counters a rule keeps per tensor (ASGD: step, eta, mu).
pub const MAX_COUNTERS: usize = 3;

/// How one element is stored in memory, and the type the rules compute it in.
pub trait Storage: Copy + Send + Sync + 'static {
    /// The type the rules compute in; it stores itself (load and store are the identity).
    type Arith: Float + Storage<Arith = Self::Arith>;
    /// Whether loading and storing convert. A pass over converting storage converts tiles
    /// of values in bulk, runs the rule on the converted tile and converts the written
    /// values back, so that the conversions and the rule each vectorize (one loop doing
    /// both does not).
    const CONVERTS: bool = true;
    /// Whether, at the AVX-512 level ([`Arith::WIDE`]), a pass without float32 masters,
    /// float32 gradients, stochastic rounding or blockwise state loads and stores this
    /// format element by element inside the rule's loop instead of converting tiles (a
    /// master's low bits are joined and split there too: `'remainder'` AdamW at 1e5
    /// elements, 2 threads, 0.252 against 0.319 ns per element). True where load and
    /// store are the identity, and for bfloat16, whose conversions (a shift; an integer
    /// rounding) stay in 512-bit registers. AdamW on 1e8 bfloat16 elements, 2 threads, on a
    /// Zen 4 core pair: 0.193 ns per element against 0.247 through tiles (with `'kahan'`
    /// 0.265 against 0.356; float32 parameters with bfloat16 state 0.278 against 0.409);
    /// at the AVX2 level the tiles are faster (3e7 elements: 0.306 against 0.327), and for
    /// float16 at both (F16C converts 8 values at a time: 0.300 against 0.384 at AVX-512).
    const DIRECT: bool = false;
    fn load(self) -> Self::Arith;
    fn store(x: Self::Arith) -> Self;
    /// [`Storage::load`] of every value of `src` into `dst` (the same length), in a kernel
    /// body run with arithmetic `A` (whose instructions a format may use).
    #[inline(always)]
    fn load_all<A: Arith>(src: &[Self], dst: &mut [Self::Arith]) {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = v.load();
        }
    }
    /// [`Storage::store`] of every value of `src` into `dst` (the same length).
    #[inline(always)]
    fn store_all<A: Arith>(src: &[Self::Arith], dst: &mut [Self]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = Self::store(v);
        }
    }
    /// Whether a parameter stored in this format may keep the low bits of a float32 master
    /// beside it ([`Tensor::low_bits`]: bfloat16 only, the high half of a float32).
    const SPLITS: bool = false;
    /// The float32 masters of a tile: each loaded value (the stored high half) plus its low
    /// bits. Called only where [`Storage::SPLITS`].
    #[inline(always)]
    fn join_low(_tile: &mut [Self::Arith], _low: &[u16]) {}
    /// The inverse of [`Storage::join_low`]: each master of the tile split into the value to
    /// store (exactly representable, so storing it is exact) and its low bits.
    #[inline(always)]
    fn split_low(_tile: &mut [Self::Arith], _low: &mut [u16]) {}
    /// [`Storage::join_low`] of one value.
    #[inline(always)]
    fn join_one(x: Self::Arith, _low: u16) -> Self::Arith {
        x
    }
    /// [`Storage::split_low`] of one value.
    #[inline(always)]
    fn split_one(x: Self::Arith) -> (Self::Arith, u16) {
        (x, 0)
    }
    /// Whether a parameter stored in this format may keep a float32 master copy beside it
    /// ([`Tensor::master`]: the 16-bit formats, which compute in float32).
    const MASTERS: bool = false;
    /// A tile's values from their float32 masters. Called only where [`Storage::MASTERS`].
    #[inline(always)]
    fn from_masters(_tile: &mut [Self::Arith], _master: &[f32]) {}
    /// The float32 masters of a tile's new values.
    #[inline(always)]
    fn to_masters(_tile: &[Self::Arith], _master: &mut [f32]) {}
    /// Whether a parameter stored in this format may be rounded stochastically
    /// ([`Tensor::stochastic`]: bfloat16 and float16).
    const STOCHASTIC: bool = false;
    /// Rounds each value of a tile stochastically to a value of this format (so that storing
    /// it is exact): element `first + j` of the tensor with `key` ([`stochastic_round`],
    /// [`stochastic_round_f16`]).
    /// Called only where [`Storage::STOCHASTIC`].
    #[inline(always)]
    fn round_stochastic(_tile: &mut [Self::Arith], _key: u32, _first: usize) {}
    /// Whether this is blockwise-quantized state ([`Q8`]): a buffer's values need its
    /// blocks' absmax ([`Tensor::scales`]) and map, so a pass converts whole blocks (tiles of
    /// [`QBLOCK`], split between threads at block boundaries) with [`Storage::dequantize`]
    /// and [`Storage::quantize`] instead of `load_all`/`store_all`.
    const BLOCKWISE: bool = false;
    /// The values of one block of codes. Called only where [`Storage::BLOCKWISE`].
    #[inline(always)]
    fn dequantize(_codes: &[Self], _absmax: f32, _map: Map, _values: &mut [Self::Arith]) {}
    /// One block of values quantized into `codes`; returns the block's absmax. Called only
    /// where [`Storage::BLOCKWISE`].
    #[inline(always)]
    fn quantize(_values: &[Self::Arith], _map: Map, _codes: &mut [Self]) -> f32 {
        0.0
    }
}

/// 8-bit blockwise state ([`crate::blockwise`]), computed in float32. Elementwise `load`
/// and `store` cannot see a block's absmax: a pass never calls them on this storage
/// ([`staged`] converts whole blocks), and they return 0.
impl Storage for Q8 {
    type Arith = f32;
    const BLOCKWISE: bool = true;
    #[inline(always)]
    fn load(self) -> f32 {
        0.0
    }
    #[inline(always)]
    fn store(_x: f32) -> Q8 {
        Q8(0)
    }
    #[inline(always)]
    fn dequantize(codes: &[Q8], absmax: f32, map: Map, values: &mut [f32]) {
        blockwise::dequantize_block(Q8::bytes(codes), absmax, map, values)
    }
    #[inline(always)]
    fn quantize(values: &[f32], map: Map, codes: &mut [Q8]) -> f32 {
        blockwise::quantize_block(values, map, Q8::bytes_mut(codes))
    }
}

/// Storage that is its own arithmetic type: load and store are the identity.
macro_rules! identity_storage {
    ($($t:ty),*) => {$(
        impl Storage for $t {
            type Arith = $t;
            const CONVERTS: bool = false;
            const DIRECT: bool = true;
            #[inline(always)]
            fn load(self) -> $t {
                self
            }
            #[inline(always)]
            fn store(x: $t) -> $t {
                x
            }
        }
    )*};
}

identity_storage!(f32, f64);

/// 16-bit storage computed in float32, one rounding (to nearest even) per stored value,
/// converted in bulk by [`crate::half`]'s slice functions.
macro_rules! half_storage {
    ($($t:ty => $widen:ident, $narrow:ident, $round:ident, $splits:expr, $direct:expr);*) => {$(
        impl Storage for $t {
            type Arith = f32;
            const DIRECT: bool = $direct;
            #[inline(always)]
            fn load(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn store(x: f32) -> $t {
                <$t>::from_f32(x)
            }
            #[inline(always)]
            fn load_all<A: Arith>(src: &[$t], dst: &mut [f32]) {
                crate::half::$widen(src, dst, A::X86)
            }
            #[inline(always)]
            fn store_all<A: Arith>(src: &[f32], dst: &mut [$t]) {
                crate::half::$narrow(src, dst, A::X86)
            }
            const SPLITS: bool = $splits;
            const STOCHASTIC: bool = true;
            #[inline(always)]
            fn round_stochastic(tile: &mut [f32], key: u32, first: usize) {
                for (j, t) in tile.iter_mut().enumerate() {
                    *t = f32::from_bits($round(t.to_bits(), key, first.wrapping_add(j)));
                }
            }
            const MASTERS: bool = true;
            #[inline(always)]
            fn from_masters(tile: &mut [f32], master: &[f32]) {
                tile.copy_from_slice(master);
            }
            #[inline(always)]
            fn to_masters(tile: &[f32], master: &mut [f32]) {
                master.copy_from_slice(tile);
            }
            #[inline(always)]
            fn join_low(tile: &mut [f32], low: &[u16]) {
                for (t, &l) in tile.iter_mut().zip(low) {
                    *t = Self::join_one(*t, l);
                }
            }
            #[inline(always)]
            fn split_low(tile: &mut [f32], low: &mut [u16]) {
                for (t, l) in tile.iter_mut().zip(low) {
                    (*t, *l) = Self::split_one(*t);
                }
            }
            #[inline(always)]
            fn join_one(x: f32, low: u16) -> f32 {
                f32::from_bits(join_master((x.to_bits() >> 16) as u16, low))
            }
            #[inline(always)]
            fn split_one(x: f32) -> (f32, u16) {
                let (high, rest) = split_master(x.to_bits());
                (f32::from_bits((high as u32) << 16), rest)
            }
        }
    )*};
}

half_storage!(crate::half::Bf16 => widen_bf16, narrow_bf16, stochastic_round, true, true;
              crate::half::F16 => widen_f16, narrow_f16, stochastic_round_f16, false, false);

/// A float32 master kept as a bfloat16 parameter (its high half, rounded) and 16 low bits:
/// `master = (high << 16) + low` in two's complement (`low` as an int16), exactly. The high
/// half is the master rounded to the nearest bfloat16, ties (low half exactly 0x8000) away
/// from zero: `high = (bits + 0x8000) >> 16`, which leaves `low` in `-0x8000..=0x7fff`. (Round
/// to nearest even cannot be used: at a tie `low` would be +0x8000 for an odd high half.) A
/// NaN master keeps its sign as bfloat16's quiet NaN, with low bits 0.
pub fn split_master(bits: u32) -> (u16, u16) {
    let nan = bits & 0x7fff_ffff > 0x7f80_0000;
    let high = if nan { (bits >> 16) | 0x0040 } else { bits.wrapping_add(0x8000) >> 16 };
    let low = if nan { 0 } else { bits.wrapping_sub(high << 16) as u16 };
    (high as u16, low)
}

/// A 32-bit hash with full avalanche (Wellons' `lowbias32`): the counter-based generator of
/// stochastic rounding.
#[inline(always)]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The stochastic rounding key of tensor `tensor` of a call whose key is `key` (the caller
/// derives that from its seed and step).
pub fn tensor_key(key: u64, tensor: usize) -> u32 {
    mix32((key as u32) ^ mix32(((key >> 32) as u32) ^ (tensor as u32).wrapping_mul(0x9e37_79b9)))
}

/// A float32 value (`bits`) rounded stochastically to bfloat16 (the float32 bits of the
/// result): up in magnitude with probability (low 16 bits) / 2^16, else down, so the
/// expected value is the input exactly. The random 16 bits are [`mix32`] of the element's
/// index in its tensor and the tensor's `key` (the step's), so a result depends on neither
/// the thread count nor how the tensor is cut. Infinities and NaNs are left as they are (the
/// store rounds them as usual); a value above bfloat16's largest may round up to infinity.
#[inline(always)]
pub fn stochastic_round(bits: u32, key: u32, index: usize) -> u32 {
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        return bits;
    }
    let r = mix32((index as u32) ^ key) >> 16;
    bits.wrapping_add(r) & 0xffff_0000
}

/// A float32 value (`bits`) rounded stochastically to float16 (the float32 bits of a value
/// float16 holds exactly): with `s` float16's spacing at the value (2^-24 below 2^-14) and
/// `|x| / s = n + f` (`n` whole, `0 <= f < 1`), `(n + 1) s` with probability `f`, else `n s`,
/// the sign kept. The draw compares the top 24 bits of [`mix32`] of the element's index xor
/// the tensor's `key` with `f * 2^24`, a whole number for magnitudes from 2^-24 up, so the
/// expected value is the input exactly there (below 2^-24, within 2^-48). Magnitudes from float16's largest,
/// 65504, up, infinities and NaNs are left as they are (the store rounds them as usual). Every
/// operation is exact in float32 (scaling by powers of two, a whole part and its remainder).
#[inline(always)]
pub fn stochastic_round_f16(bits: u32, key: u32, index: usize) -> u32 {
    let magnitude = f32::from_bits(bits & 0x7fff_ffff);
    if !(magnitude < 65504.0) {
        return bits;
    }
    // The spacing's exponent field: 10 below the value's, and at least that of 2^-24.
    let spacing = (bits >> 23 & 0xff).max(113) - 10;
    let scaled = magnitude * f32::from_bits((254 - spacing) << 23);
    let whole = scaled.trunc();
    let r = (mix32((index as u32) ^ key) >> 8) as f32;
    let up = if r < (scaled - whole) * 16_777_216.0 { 1.0 } else { 0.0 };
    ((whole + up) * f32::from_bits(spacing << 23)).to_bits() | (bits & 0x8000_0000)
}

/// The float32 master of [`split_master`]'s halves.
pub fn join_master(high: u16, low: u16) -> u32 {
    ((high as u32) << 16).wrapping_add(low as i16 as i32 as u32)
}

/// A state buffer's key in torch's `state` dict and the name of its list in the functional
/// API (which error messages use).
pub type StateName = (&'static str, &'static str);

/// A rule's state buffers, in the order a step takes them, and its float32 counters.
pub type Layout = (&'static [StateName], &'static [&'static str]);

/// The per-element update of one tensor, with its per-tensor constants.
pub trait Rule<T: Float>: Copy + Send + Sync {
    /// How many state buffers the rule uses (the first `STATES` of `s`).
    const STATES: usize;
    /// Which buffers the rule changes: bit 0 the parameter, bit `1 + k` state buffer `k`.
    /// A pass that only reads some of them (LAMB's second pass reads the moments) does not
    /// write them back, so it moves only the bytes it must.
    const WRITES: u32 = !0;
    /// How many of the two values of [`Rule::sums`] a reducing pass sums (the second is
    /// left out when 1).
    const SUMMED: usize = 2;
    /// Whether a reducing pass sums the squares of those values (norms: LAMB's trust ratio)
    /// or the values themselves (dot products and absolute sums: Prodigy's estimate).
    const SQUARED: bool = true;
    /// The new parameter value; updates `s` in place.
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T;
    /// For a reducing pass ([`sweep`]): the two values the pass sums (or whose squares it
    /// sums, see [`Rule::SQUARED`]), from the parameter before the update, the gradient and
    /// the state after it.
    #[inline(always)]
    fn sums<A: Arith>(&self, _p: T, _g: T, _s: &[T; MAX_STATES]) -> [T; 2] {
        [T::ZERO; 2]
    }
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
    /// The low 16 bits of each element's float32 master beside a bfloat16 parameter
    /// ([`split_master`]: `master_weights='remainder'`), or empty. With them the rule sees
    /// the master, exactly, and the pass stores its new value split in two.
    pub low_bits: &'a mut [u16],
    /// A float32 copy of each element beside a float16/bfloat16 parameter
    /// (`master_weights='float32'`), or empty. With it the rule steps the master, which keeps
    /// the new value exactly, and the parameter stores that value rounded to nearest even.
    pub master: &'a mut [f32],
    /// float32 gradients beside a float16/bfloat16 parameter (`grad` is then empty), or
    /// empty: read exactly into the rule's float32 arithmetic, as mixed-precision training
    /// keeps them.
    pub grad_f32: &'a [f32],
    /// Round the new parameter stochastically (float16 or bfloat16 parameters,
    /// `master_weights='stochastic'`) with this key ([`stochastic_round`],
    /// [`stochastic_round_f16`]; derive it from the seed, the step and the tensor), or to
    /// nearest even (None).
    pub stochastic: Option<u32>,
    /// With 8-bit blockwise state ([`Q8`]): for each state buffer, the absmax of each of its
    /// blocks ([`blockwise::blocks`] of the tensor's length); empty otherwise.
    pub scales: &'a mut [&'a mut [f32]],
    /// With 8-bit blockwise state: bit `k` set when state buffer `k` is never negative and
    /// uses the unsigned quantile map ([`Map::Unsigned`]; the rule's second moments).
    /// [`super::Config::step`] sets it from the rule.
    pub unsigned: u32,
    pub fresh: bool,
}

/// A piece of one tensor's pass. With `SUMS`, the piece is whole blocks of [`BLOCK`]
/// elements (the last one may be short) and `out` holds one pair of partial sums per block.
struct Chunk<'a, P, S, R, const SUMS: bool> {
    b: Bufs<'a, P, S>,
    rule: &'a R,
}

/// The buffers of a [`Chunk`] (apart from its rule, so that splitting them is compiled once
/// per storage pair, not once per rule).
struct Bufs<'a, P, S> {
    p: &'a mut [P],
    g: &'a [P],
    s: [&'a mut [S]; MAX_STATES],
    low: &'a mut [u16],
    master: &'a mut [f32],
    g32: &'a [f32],
    /// The stochastic rounding key and the index of the chunk's first element in its tensor.
    sr: Option<(u32, usize)>,
    /// Blockwise state: each buffer's absmax from the chunk's first block (which starts a
    /// block: chunks split at block boundaries), and which buffers are unsigned.
    sc: [&'a mut [f32]; MAX_STATES],
    unsigned: u32,
    out: &'a mut [(f64, f64)],
}

/// Splits a read-only buffer that may be unused (empty).
fn cut_ref<T>(x: &[T], mid: usize) -> (&[T], &[T]) {
    if x.is_empty() {
        (&[], &[])
    } else {
        x.split_at(mid)
    }
}

/// Splits a used state buffer; an unused (empty) one stays empty on both sides.
fn cut<T>(x: &mut [T], mid: usize) -> (&mut [T], &mut [T]) {
    if x.is_empty() {
        (&mut [], &mut [])
    } else {
        x.split_at_mut(mid)
    }
}

/// Splits blockwise state's absmax buffers after element `mid` (a block boundary, or the end).
fn cut_scales(sc: [&mut [f32]; MAX_STATES], mid: usize) -> ([&mut [f32]; MAX_STATES], [&mut [f32]; MAX_STATES]) {
    let [a, b, c, d] = sc;
    let k = mid.div_ceil(QBLOCK);
    let ((a0, a1), (b0, b1), (c0, c1), (d0, d1)) = (cut(a, k), cut(b, k), cut(c, k), cut(d, k));
    ([a0, b0, c0, d0], [a1, b1, c1, d1])
}

// (a reducing pass's blocks, and the staged tiles, are whole blocks of blockwise state)
const _: () = assert!(BLOCK % QBLOCK == 0 && TILE == QBLOCK);

impl<P: Storage, S: Storage<Arith = P::Arith>> Bufs<'_, P, S> {
    /// The first `mid` elements and the rest; with `sums` (a reducing pass) cut only between
    /// blocks, so that the sums do not depend on the split, and blockwise state only between
    /// its blocks (BLOCK is a whole number of them). Called a few times per pass: never
    /// inlined, so that the kernels do not each carry a copy.
    #[inline(never)]
    fn split_at(self, mid: usize, sums: bool) -> (Self, Self) {
        let (mid, blocks) = if sums {
            let blocks = mid.div_ceil(BLOCK).min(self.out.len());
            ((blocks * BLOCK).min(self.p.len()), blocks)
        } else if S::BLOCKWISE {
            ((mid.div_ceil(QBLOCK) * QBLOCK).min(self.p.len()), 0)
        } else {
            (mid, 0)
        };
        let (p0, p1) = self.p.split_at_mut(mid);
        let (g0, g1) = cut_ref(self.g, mid);
        let (o0, o1) = self.out.split_at_mut(blocks);
        let [a, b, c, d] = self.s;
        let ((a0, a1), (b0, b1), (c0, c1), (d0, d1)) = (cut(a, mid), cut(b, mid), cut(c, mid), cut(d, mid));
        let ((l0, l1), (m0, m1), (h0, h1)) = (cut(self.low, mid), cut(self.master, mid), cut_ref(self.g32, mid));
        let (sc0, sc1) = cut_scales(self.sc, mid);
        let unsigned = self.unsigned;
        (
            Bufs { p: p0, g: g0, s: [a0, b0, c0, d0], low: l0, master: m0, g32: h0, sr: self.sr, sc: sc0, unsigned, out: o0 },
            Bufs { p: p1, g: g1, s: [a1, b1, c1, d1], low: l1, master: m1, g32: h1, sr: self.sr.map(|(k, at)| (k, at + mid)), sc: sc1, unsigned, out: o1 },
        )
    }
}

impl<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>, const SUMS: bool> Split for Chunk<'_, P, S, R, SUMS> {
    fn len(&self) -> usize {
        self.b.p.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (b0, b1) = self.b.split_at(mid, SUMS);
        (Chunk { b: b0, rule: self.rule }, Chunk { b: b1, rule: self.rule })
    }
}

impl<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>, const SUMS: bool> SimdKernel for Chunk<'_, P, S, R, SUMS> {
    #[inline(always)]
    fn run<A: Arith>(self) {
        let Chunk { b: Bufs { p, g, s: [a, b, c, d], low, master, g32, mut sr, sc, unsigned, out }, rule } = self;
        if !SUMS {
            body::<P, S, A, R, false>(p, g, [a, b, c, d], (low, master, g32, sr), (sc, unsigned), rule, (&mut [], &mut []));
            return;
        }
        // Block by block: the update, with the values to sum into two block-sized scratch
        // buffers (in L1), then their float64 sums, of squares (`reduce::dot_f64`'s order)
        // or of the values (`reduce::sum_f64`'s).
        let zero = <P::Arith as Float>::ZERO;
        // (the second buffer only for a rule that sums two values)
        let width = BLOCK.min(p.len());
        let mut sq = (vec![zero; width], vec![zero; if R::SUMMED > 1 { width } else { 0 }]);
        let (mut p, mut g, mut s, mut low, mut master, mut g32, mut sc) = (p, g, [a, b, c, d], low, master, g32, sc);
        for slot in out.iter_mut() {
            let n = BLOCK.min(p.len());
            let (p0, p1) = std::mem::take(&mut p).split_at_mut(n);
            let (g0, g1) = cut_ref(g, n);
            let (h0, h1) = cut_ref(g32, n);
            let [a, b, c, d] = s;
            let ((a0, a1), (b0, b1), (c0, c1), (d0, d1)) = (cut(a, n), cut(b, n), cut(c, n), cut(d, n));
            let (l0, l1) = cut(std::mem::take(&mut low), n);
            let (m0, m1) = cut(std::mem::take(&mut master), n);
            let (sc0, sc1) = cut_scales(sc, n);
            let (x, y) = (&mut sq.0[..n], &mut sq.1[..if R::SUMMED > 1 { n } else { 0 }]);
            body::<P, S, A, R, true>(p0, g0, [a0, b0, c0, d0], (l0, m0, h0, sr), (sc0, unsigned), rule, (&mut *x, &mut *y));
            let total = |v: &[P::Arith]| if R::SQUARED { dot_f64(v, v) } else { sum_f64(v) };
            *slot = (total(x), if R::SUMMED > 1 { total(y) } else { 0.0 });
            (p, g, s, low, master, g32, sc) = (p1, g1, [a1, b1, c1, d1], l1, m1, h1, sc1);
            sr = sr.map(|(k, at)| (k, at + n));
        }
    }
}

/// The loop of a pass. Separate `&mut` slices (not an array of them) so that LLVM knows
/// they do not alias; equal lengths up front let it drop the bounds checks and vectorize.
#[inline(always)]
fn body<P: Storage, S: Storage<Arith = P::Arith>, A: Arith, R: Rule<P::Arith>, const SUMS: bool>(
    p: &mut [P],
    g: &[P],
    [s0, s1, s2, s3]: [&mut [S]; MAX_STATES],
    masters: (&mut [u16], &mut [f32], &[f32], Option<(u32, usize)>),
    scales: ([&mut [f32]; MAX_STATES], u32),
    rule: &R,
    (x, y): (&mut [P::Arith], &mut [P::Arith]),
) {
    if P::CONVERTS || S::CONVERTS {
        // (converted in the loop below instead where the level and formats are faster so:
        // `Storage::DIRECT`, with a float32 master's low bits or none; float32 masters and
        // gradients and stochastic rounding take the tiles)
        let (low, master, g32, sr) = masters;
        let inline = A::WIDE && P::DIRECT && S::DIRECT && master.is_empty() && g32.is_empty() && sr.is_none();
        if !inline {
            return staged::<P, S, A, R, SUMS>(p, g, [s0, s1, s2, s3], (low, master, g32, sr), scales, rule, (x, y));
        }
        if P::SPLITS && !low.is_empty() {
            return direct::<P, S, A, R, SUMS, true>(p, g, [s0, s1, s2, s3], low, rule, (x, y));
        }
    }
    direct::<P, S, A, R, SUMS, false>(p, g, [s0, s1, s2, s3], &mut [], rule, (x, y))
}

/// [`body`]'s element loop (values loaded and stored one by one); with `SPLIT`, each
/// parameter is the float32 master joined from its stored high half and `low`, and split
/// again when stored ([`Storage::join_one`], [`Storage::split_one`]).
#[inline(always)]
fn direct<P: Storage, S: Storage<Arith = P::Arith>, A: Arith, R: Rule<P::Arith>, const SUMS: bool, const SPLIT: bool>(
    p: &mut [P],
    g: &[P],
    [s0, s1, s2, s3]: [&mut [S]; MAX_STATES],
    low: &mut [u16],
    rule: &R,
    (x, y): (&mut [P::Arith], &mut [P::Arith]),
) {
    let n = p.len();
    let low = if SPLIT { &mut low[..n] } else { low };
    let g = &g[..n];
    let s0 = if R::STATES > 0 { &mut s0[..n] } else { s0 };
    let s1 = if R::STATES > 1 { &mut s1[..n] } else { s1 };
    let s2 = if R::STATES > 2 { &mut s2[..n] } else { s2 };
    let s3 = if R::STATES > 3 { &mut s3[..n] } else { s3 };
    let x = if SUMS { &mut x[..n] } else { x };
    let y = if SUMS && R::SUMMED > 1 { &mut y[..n] } else { y };
    let w = |k: u32| R::WRITES & (1 << k) != 0;
    for i in 0..n {
        let mut st = [<P::Arith as Float>::ZERO; MAX_STATES];
        if R::STATES > 0 { st[0] = s0[i].load() }
        if R::STATES > 1 { st[1] = s1[i].load() }
        if R::STATES > 2 { st[2] = s2[i].load() }
        if R::STATES > 3 { st[3] = s3[i].load() }
        let (mut old, gi) = (p[i].load(), g[i].load());
        if SPLIT {
            old = P::join_one(old, low[i]);
        }
        let new = rule.update::<A>(old, gi, &mut st);
        if w(0) {
            if SPLIT {
                let (high, rest) = P::split_one(new);
                p[i] = P::store(high);
                low[i] = rest;
            } else {
                p[i] = P::store(new);
            }
        }
        if SUMS {
            let [a, b] = rule.sums::<A>(old, gi, &st);
            x[i] = a;
            if R::SUMMED > 1 {
                y[i] = b;
            }
        }
        if R::STATES > 0 && w(1) { s0[i] = S::store(st[0]) }
        if R::STATES > 1 && w(2) { s1[i] = S::store(st[1]) }
        if R::STATES > 2 && w(3) { s2[i] = S::store(st[2]) }
        if R::STATES > 3 && w(4) { s3[i] = S::store(st[3]) }
    }
}

/// How many elements [`staged`] converts at a time (its buffers stay in L1).
const TILE: usize = 256;

/// [`body`] over converting storage: tile by tile, loads the parameters, gradients and
/// used state into arithmetic-type buffers, runs [`body`] on them, and stores back the
/// buffers the rule writes. The same values are loaded, computed and rounded once, as in
/// one loop. With `low` (the parameters' low bits, [`Tensor::low_bits`]) the parameters'
/// tile holds their float32 masters, joined after loading and split before storing; with
/// `master` ([`Tensor::master`]) it holds the masters, copied in and out. Blockwise state
/// ([`Storage::BLOCKWISE`]; the slices start at a block boundary) is dequantized with its
/// block's absmax from `scales` and quantized back, the new absmax stored there.
#[inline(always)]
fn staged<P: Storage, S: Storage<Arith = P::Arith>, A: Arith, R: Rule<P::Arith>, const SUMS: bool>(
    p: &mut [P],
    g: &[P],
    mut s: [&mut [S]; MAX_STATES],
    (low, master, g32, sr): (&mut [u16], &mut [f32], &[f32], Option<(u32, usize)>),
    (sc, unsigned): ([&mut [f32]; MAX_STATES], u32),
    rule: &R,
    (x, y): (&mut [P::Arith], &mut [P::Arith]),
) {
    let split = P::SPLITS && !low.is_empty();
    let full = P::MASTERS && !master.is_empty();
    let zero = <P::Arith as Float>::ZERO;
    let (mut tp, mut tg) = ([zero; TILE], [zero; TILE]);
    let mut ts = [[zero; TILE]; MAX_STATES];
    let w = |k: usize| R::WRITES & (1 << k) != 0;
    let n = p.len();
    let mut start = 0;
    while start < n {
        let end = (start + TILE).min(n);
        let m = end - start;
        if full {
            P::from_masters(&mut tp[..m], &master[start..end]);
        } else {
            P::load_all::<A>(&p[start..end], &mut tp[..m]);
            if split {
                P::join_low(&mut tp[..m], &low[start..end]);
            }
        }
        if g32.is_empty() {
            P::load_all::<A>(&g[start..end], &mut tg[..m]);
        } else {
            // (float32 gradients: copied exactly into the float32 tile, as a master is)
            P::from_masters(&mut tg[..m], &g32[start..end]);
        }
        for (k, (src, dst)) in s.iter().zip(ts.iter_mut()).enumerate().take(R::STATES) {
            if S::BLOCKWISE {
                S::dequantize(&src[start..end], sc[k][start / QBLOCK], Map::of(unsigned >> k & 1 != 0), &mut dst[..m]);
            } else {
                S::load_all::<A>(&src[start..end], &mut dst[..m]);
            }
        }
        let [t0, t1, t2, t3] = &mut ts;
        fn used<T>(t: &mut [T], k: usize, states: usize, m: usize) -> &mut [T] {
            &mut t[..if k < states { m } else { 0 }]
        }
        let sums = match (SUMS, R::SUMMED > 1) {
            (false, _) => (&mut x[..0], &mut y[..0]),
            (true, false) => (&mut x[start..end], &mut y[..0]),
            (true, true) => (&mut x[start..end], &mut y[start..end]),
        };
        let states = [used(t0, 0, R::STATES, m), used(t1, 1, R::STATES, m), used(t2, 2, R::STATES, m), used(t3, 3, R::STATES, m)];
        let none: [&mut [f32]; MAX_STATES] = Default::default();
        body::<P::Arith, P::Arith, A, R, SUMS>(&mut tp[..m], &tg[..m], states, (&mut [], &mut [], &[], None), (none, 0), rule, sums);
        if w(0) {
            if let Some((key, first)) = sr {
                P::round_stochastic(&mut tp[..m], key, first + start);
            }
            if full {
                P::to_masters(&tp[..m], &mut master[start..end]);
            }
            if split {
                P::split_low(&mut tp[..m], &mut low[start..end]);
            }
            P::store_all::<A>(&tp[..m], &mut p[start..end]);
        }
        for (k, (src, dst)) in ts.iter().zip(s.iter_mut()).enumerate().take(R::STATES) {
            if w(1 + k) {
                if S::BLOCKWISE {
                    sc[k][start / QBLOCK] = S::quantize(&src[..m], Map::of(unsigned >> k & 1 != 0), &mut dst[start..end]);
                } else {
                    S::store_all::<A>(&src[..m], &mut dst[start..end]);
                }
            }
        }
        start = end;
    }
}

/// Checks every tensor against the layout, then builds each tensor's rule with
/// `make(counters, fresh)` (which updates the counters, e.g. `step += 1`) and runs the pass
/// over all tensors. Nothing is written when a check fails.
///
/// Tensors given one state buffer more than the layout's (every tensor alike) take a
/// compensated step ([`Kahan`]): the last buffer ([`KAHAN`]) holds what rounding the
/// parameter to its storage lost, and is added back at the next step.
pub fn run<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>>(
    tensors: Vec<Tensor<'_, P, S>>,
    layout: Layout,
    level: SimdLevel,
    mut make: impl FnMut(&mut [&mut f32], bool) -> R,
) -> Result<(), Error> {
    if tensors.first().is_some_and(|t| t.states.len() == layout.0.len() + 1) {
        // (only converting storage rounds its parameters: the compensated pass is compiled
        // for 16-bit parameters alone)
        if !P::CONVERTS {
            return Err(Error::type_error("a compensated step (a compensation buffer after the state buffers) takes float16 or bfloat16 parameters"));
        }
        if S::BLOCKWISE {
            return Err(Error::type_error("a compensated step keeps its compensation buffer in the state's format: 8-bit blockwise state cannot hold it"));
        }
        if R::STATES >= MAX_STATES {
            return Err(Error::value(format!("a rule with {} state buffers cannot keep a compensation buffer", R::STATES)));
        }
        let kahan = |c: &mut [&mut f32], fresh| Kahan::<R, P> { rule: make(c, fresh), storage: std::marker::PhantomData };
        return run_checked(tensors, layout, Some(KAHAN), level, kahan);
    }
    run_checked(tensors, layout, None, level, make)
}

/// [`run`]'s pass: the checks (the layout's buffers and `extra`), each tensor's rule, the pass.
fn run_checked<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>>(
    mut tensors: Vec<Tensor<'_, P, S>>,
    layout: Layout,
    extra: Option<StateName>,
    level: SimdLevel,
    mut make: impl FnMut(&mut [&mut f32], bool) -> R,
) -> Result<(), Error> {
    let total = check(&tensors, layout, extra, R::STATES)?;
    let (rules, which) = rules_of(counters_of(&mut tensors), &mut make);
    pass::<P, S, R, false>(&mut tensors, &rules, &which, total, level, &mut []);
    Ok(())
}

/// The compensation buffer of a compensated step ([`run`]): its key in torch-style state
/// dicts and its list's name.
pub const KAHAN: StateName = ("kahan_comp", "kahan_comps");

/// Kahan-compensated storage of the parameter (as the optimi library keeps 16-bit
/// parameters): the rule's new value `u` from the stored `p`, then with the compensation
/// `c` (the last state buffer) `y = (u - p) + c`, the stored parameter `t = round(p + y)`
/// (rounded to `P` here, so storing it is exact) and the new compensation `y - (t - p)`,
/// what the rounding lost (stored in the state's format). A small step that rounding to 16
/// bits would drop accumulates in `c` until it moves the parameter.
#[derive(Clone, Copy, Debug)]
pub struct Kahan<R, P> {
    rule: R,
    storage: std::marker::PhantomData<P>,
}

impl<P: Storage, R: Rule<P::Arith>> Rule<P::Arith> for Kahan<R, P> {
    const STATES: usize = R::STATES + 1;
    const WRITES: u32 = R::WRITES | 1 | (1 << (1 + R::STATES));
    #[inline(always)]
    fn update<A: Arith>(&self, p: P::Arith, g: P::Arith, s: &mut [P::Arith; MAX_STATES]) -> P::Arith {
        let u = self.rule.update::<A>(p, g, s);
        let y = (u - p) + s[R::STATES];
        let t = P::store(p + y).load();
        s[R::STATES] = y - (t - p);
        t
    }
}

/// One tensor's result of a [`sweep`]: its two sums and the rule it took.
pub type Swept<R> = ((f64, f64), R);

/// A reducing pass, the first of a multi-pass optimizer: as [`run`], and returns for each
/// tensor the sums (of squares, or of the values: [`Rule::SQUARED`]) of the two values the
/// rule's [`Rule::sums`] gives, in float64 over fixed blocks of [`BLOCK`] elements merged in
/// order, so the same whatever the thread count, with the rule the tensor took (its constants, for the later passes). The
/// tensors stay borrowed for those passes ([`apply`]).
pub fn sweep<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>>(
    tensors: &mut [Tensor<'_, P, S>],
    layout: Layout,
    level: SimdLevel,
    mut make: impl FnMut(&mut [&mut f32], bool) -> R,
) -> Result<Vec<Swept<R>>, Error> {
    let total = check(tensors, layout, None, R::STATES)?;
    let (rules, which) = rules_of(counters_of(tensors), &mut make);
    let counts: Vec<usize> = tensors.iter().map(|t| t.param.len().div_ceil(BLOCK)).collect();
    let mut partials = vec![(0.0, 0.0); counts.iter().sum()];
    pass::<P, S, R, true>(tensors, &rules, &which, total, level, &mut partials);
    let mut rest = &partials[..];
    Ok(counts
        .iter()
        .zip(which)
        .map(|(&n, k)| {
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            (mine.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y)), rules[k])
        })
        .collect())
}

/// A rule whose update is `p' = q + delta`: `q` the parameter after any decay, `delta` the
/// step, for the cautious mask ([`run_cautious`]).
pub trait Stepwise<T: Float>: Rule<T> {
    /// Updates the state as [`Rule::update`] does; returns `q`, `delta` and the gradient the
    /// step descends (the mask keeps the elements where `delta` goes against it).
    fn split<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> (T, T, T);
}

/// The counting pass of [`run_cautious`]: writes nothing, sums 1 where the step agrees with
/// the gradient (so the sum is the count), 0 elsewhere.
#[derive(Clone, Copy, Debug)]
struct Agree<R>(R);

impl<T: Float, R: Stepwise<T>> Rule<T> for Agree<R> {
    const STATES: usize = R::STATES;
    const WRITES: u32 = 0;
    const SUMMED: usize = 1;
    const SQUARED: bool = false;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, _g: T, _s: &mut [T; MAX_STATES]) -> T {
        p
    }
    #[inline(always)]
    fn sums<A: Arith>(&self, p: T, g: T, s: &[T; MAX_STATES]) -> [T; 2] {
        let mut st = *s;
        let (_, delta, g) = self.0.split::<A>(p, g, &mut st);
        [if delta * g < T::ZERO { T::ONE } else { T::ZERO }, T::ZERO]
    }
}

/// The update of [`run_cautious`]: the step where it agrees with the gradient, times the
/// tensor's `scale`, and none elsewhere.
#[derive(Clone, Copy, Debug)]
struct Masked<R, T> {
    rule: R,
    scale: T,
}

impl<T: Float, R: Stepwise<T>> Rule<T> for Masked<R, T> {
    const STATES: usize = R::STATES;
    #[inline(always)]
    fn update<A: Arith>(&self, p: T, g: T, s: &mut [T; MAX_STATES]) -> T {
        let (q, delta, g) = self.rule.split::<A>(p, g, s);
        if delta * g < T::ZERO {
            A::madd(delta, self.scale, q)
        } else {
            q
        }
    }
}

/// A step with the cautious mask of Liang et al. (2024, "Cautious Optimizers"): an element
/// moves only where its step goes against its gradient (`u * g > 0` for `p -= lr * u`), and
/// the kept steps are scaled by `n / (kept + 1)` over the tensor's `n` elements. Two passes:
/// the count (nothing written), then the update with the mask. `make` as for [`run`].
pub fn run_cautious<P: Storage, S: Storage<Arith = P::Arith>, R: Stepwise<P::Arith>>(
    mut tensors: Vec<Tensor<'_, P, S>>,
    layout: Layout,
    level: SimdLevel,
    mut make: impl FnMut(&mut [&mut f32], bool) -> R,
) -> Result<(), Error> {
    let counted = sweep(&mut tensors, layout, level, |c, fresh| Agree(make(c, fresh)))?;
    let masked: Vec<Masked<R, P::Arith>> = tensors
        .iter()
        .zip(counted)
        .map(|(t, ((kept, _), Agree(rule)))| Masked { rule, scale: P::Arith::from_f64(t.param.len() as f64 / (kept + 1.0)) })
        .collect();
    apply(&mut tensors, &masked, level);
    Ok(())
}

/// A later pass of a multi-pass optimizer over tensors a [`sweep`] has checked: `rules[i]`
/// (built from the sums) applied to tensor `i`, one rule per tensor.
pub fn apply<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>>(tensors: &mut [Tensor<'_, P, S>], rules: &[R], level: SimdLevel) {
    let total = tensors.iter().map(|t| t.param.len()).sum();
    let which: Vec<usize> = (0..rules.len()).collect();
    pass::<P, S, R, false>(tensors, rules, &which, total, level, &mut []);
}

/// The lengths of every tensor's buffers and counters against the layout; the number of
/// elements in all.
/// `rule_states` is the rule's [`Rule::STATES`] (a value, not the rule's type: this runs once
/// per call, and one copy per storage pair serves every rule).
fn check<P: Storage, S: Storage<Arith = P::Arith>>(
    tensors: &[Tensor<'_, P, S>],
    (states, counters): Layout,
    extra: Option<StateName>,
    rule_states: usize,
) -> Result<usize, Error> {
    // (the declared layout, and a compensation buffer, against the rule: the same for every tensor)
    let names: Vec<StateName> = states.iter().copied().chain(extra).collect();
    let bad_layout = names.len() != rule_states || counters.len() > MAX_COUNTERS;
    let mut total = 0;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        total += n;
        if t.grad_f32.is_empty() {
            check_len("grads", i, t.grad.len(), n)?;
        } else {
            if !P::MASTERS {
                return Err(Error::type_error(format!("params[{i}]: float32 gradients go with float16 or bfloat16 parameters only")));
            }
            if !t.grad.is_empty() {
                return Err(Error::value(format!("params[{i}]: gradients given twice (in the parameter's dtype and in float32)")));
            }
            check_len("grads", i, t.grad_f32.len(), n)?;
        }
        if bad_layout || t.states.len() != names.len() || t.counters.len() != counters.len() {
            let lists: Vec<&str> = names.iter().map(|s| s.1).collect();
            return Err(Error::value(format!(
                "params[{i}]: expected the state buffers {lists:?} and the counters {counters:?}, got {} buffers and {} counters",
                t.states.len(),
                t.counters.len()
            )));
        }
        for (s, name) in t.states.iter().zip(&names) {
            check_len(name.1, i, s.len(), n)?;
        }
        if !t.low_bits.is_empty() {
            if !P::SPLITS {
                return Err(Error::type_error(format!("params[{i}]: low bits of a float32 master (master_weights='remainder') are kept beside bfloat16 parameters only")));
            }
            if extra.is_some() {
                return Err(Error::value(format!("params[{i}]: a compensated step cannot also keep the low bits of a float32 master")));
            }
            check_len("low_bits", i, t.low_bits.len(), n)?;
        }
        if !t.master.is_empty() {
            if !P::MASTERS {
                return Err(Error::type_error(format!("params[{i}]: float32 masters (master_weights='float32') are kept beside float16 or bfloat16 parameters only")));
            }
            if extra.is_some() || !t.low_bits.is_empty() {
                return Err(Error::value(format!("params[{i}]: a float32 master cannot be combined with a compensation buffer or low bits")));
            }
            check_len("masters", i, t.master.len(), n)?;
        }
        if S::BLOCKWISE {
            if t.scales.len() != t.states.len() {
                return Err(Error::value(format!("params[{i}]: 8-bit blockwise state takes one absmax buffer per state buffer ({}), got {}", t.states.len(), t.scales.len())));
            }
            for (a, name) in t.scales.iter().zip(&names) {
                if a.len() != blockwise::blocks(n) {
                    return Err(Error::value(format!("{}[{i}]'s absmax has {} values but params[{i}] has {n} elements, {} blocks of {QBLOCK}", name.1, a.len(), blockwise::blocks(n))));
                }
            }
        } else if !t.scales.is_empty() {
            return Err(Error::type_error(format!("params[{i}]: absmax buffers go with 8-bit blockwise state only")));
        }
        if t.stochastic.is_some() {
            if !P::STOCHASTIC {
                return Err(Error::type_error(format!("params[{i}]: stochastic rounding (master_weights='stochastic') takes float16 or bfloat16 parameters only")));
            }
            if extra.is_some() || !t.low_bits.is_empty() || !t.master.is_empty() {
                return Err(Error::value(format!("params[{i}]: stochastic rounding cannot be combined with a compensation buffer or a master")));
            }
        }
    }
    Ok(total)
}

/// Each tensor's counters and `fresh` flag, for [`rules_of`] (one copy per storage pair).
fn counters_of<'t, 'a, P, S>(tensors: &'t mut [Tensor<'a, P, S>]) -> Vec<(&'t mut [&'a mut f32], bool)> {
    tensors.iter_mut().map(|t| (&mut *t.counters, t.fresh)).collect()
}

/// Each distinct rule once, and which one each tensor takes, from each tensor's counters and
/// `fresh` flag ([`counters_of`]).
///
/// `make` depends only on a tensor's counters and `fresh` (and the call's hyperparameters),
/// which are usually equal across a group: tensors whose counters match the previous
/// tensor's reuse its rule and counter updates, so the per-tensor `pow` calls run once per
/// call. Compared by bits, so a NaN counter is always recomputed. (`make` is called through
/// a reference, so that one copy of this serves a rule over every storage.)
fn rules_of<R>(slots: Vec<(&mut [&mut f32], bool)>, make: &mut dyn FnMut(&mut [&mut f32], bool) -> R) -> (Vec<R>, Vec<usize>) {
    let mut rules: Vec<R> = Vec::with_capacity(1);
    let mut which: Vec<usize> = Vec::with_capacity(slots.len());
    let mut memo: Option<([u32; MAX_COUNTERS], bool, [f32; MAX_COUNTERS])> = None;
    for (counters, fresh) in slots {
        let mut before = [0u32; MAX_COUNTERS];
        for (b, c) in before.iter_mut().zip(counters.iter()) {
            *b = c.to_bits();
        }
        match memo {
            Some((b, was_fresh, after)) if b == before && was_fresh == fresh => {
                for (c, a) in counters.iter_mut().zip(after) {
                    **c = a;
                }
            }
            _ => {
                rules.push(make(counters, fresh));
                let mut after = [0f32; MAX_COUNTERS];
                for (a, c) in after.iter_mut().zip(counters.iter()) {
                    *a = **c;
                }
                memo = Some((before, fresh, after));
            }
        }
        which.push(rules.len() - 1);
    }
    (rules, which)
}

/// One pass of `rules[which[i]]` over tensor `i` (for each `i < which.len()`), split across
/// threads; with `SUMS`, `partials` holds each tensor's blocks' sums in turn.
fn pass<P: Storage, S: Storage<Arith = P::Arith>, R: Rule<P::Arith>, const SUMS: bool>(
    tensors: &mut [Tensor<'_, P, S>],
    rules: &[R],
    which: &[usize],
    total: usize,
    level: SimdLevel,
    partials: &mut [(f64, f64)],
) {
    let mut rest = partials;
    let chunks = tensors.iter_mut().zip(which).map(|(t, &k)| Chunk::<P, S, R, SUMS> { b: bufs(t, SUMS, &mut rest), rule: &rules[k] });
    parallel::for_each_of(total, chunks, |c| simd::dispatch_at(level, c));
}

/// A tensor's buffers for a pass; with `sums`, its blocks' sums are the next ones of `rest`.
fn bufs<'t, P, S>(t: &'t mut Tensor<'_, P, S>, sums: bool, rest: &mut &'t mut [(f64, f64)]) -> Bufs<'t, P, S> {
    let blocks = if sums { t.param.len().div_ceil(BLOCK) } else { 0 };
    let (out, tail) = std::mem::take(rest).split_at_mut(blocks);
    *rest = tail;
    Bufs {
        p: &mut *t.param,
        g: t.grad,
        s: slots(t.states),
        low: &mut *t.low_bits,
        master: &mut *t.master,
        g32: t.grad_f32,
        sr: t.stochastic.map(|k| (k, 0)),
        sc: slots(t.scales),
        unsigned: t.unsigned,
        out,
    }
}

/// A tensor's buffers in the fixed slots of a pass; unused slots stay empty.
fn slots<'x, T>(list: &'x mut [&mut [T]]) -> [&'x mut [T]; MAX_STATES] {
    let mut it = list.iter_mut().map(|s| &mut **s);
    let mut next = || it.next().unwrap_or_default();
    [next(), next(), next(), next()]
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

    /// The gradient as the rule reads it; decays `p` when decay is decoupled. Both forms are
    /// computed and one is selected (`decay` is 1 under L2, so `p` is unchanged then): a
    /// select, not a branch in the loop, which LLVM vectorizes at every SIMD level.
    #[inline(always)]
    pub fn read<A: Arith>(&self, p: &mut T, g: T) -> T {
        *p = *p * self.decay;
        let plain = g * self.sign;
        let l2 = A::madd(*p, self.weight_decay, plain);
        if self.l2 {
            l2
        } else {
            plain
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

/// torch's CPU `sign`: -1 or 1, a zero keeps its sign, and NaN gives 0 (so a NaN or infinite
/// gradient element leaves a sign-based step at zero, as torch's optimizers do).
#[inline(always)]
pub fn sign<T: Float>(x: T) -> T {
    if x > T::ZERO {
        T::ONE
    } else if x < T::ZERO {
        -T::ONE
    } else if x == T::ZERO {
        x
    } else {
        T::ZERO
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data;

    /// Writes only its second state buffer (`p + g`); tries to change the others.
    #[derive(Clone, Copy)]
    struct Touch;

    impl Rule<f64> for Touch {
        const STATES: usize = 2;
        const WRITES: u32 = 0b100;
        fn update<A: Arith>(&self, p: f64, g: f64, s: &mut [f64; MAX_STATES]) -> f64 {
            s[0] = -1.0;
            s[1] = p + g;
            p * 2.0
        }
        fn sums<A: Arith>(&self, p: f64, _g: f64, s: &[f64; MAX_STATES]) -> [f64; 2] {
            [p, s[1]]
        }
    }

    const LAYOUT: Layout = (&[("a", "a_list"), ("b", "b_list")], &["step"]);

    #[test]
    fn a_master_splits_into_its_nearest_bfloat16_and_joins_back_exactly() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut patterns: Vec<u32> = vec![0, 0x8000_0000, 0x0000_8000, 0x0001_8000, 0x8001_8000, 0x7f7f_8000, 0x7f7f_7fff, 0x7f80_0000, 0xff80_0000, 0x7fc0_0001, 0xffff_ffff, 0x7f80_0001];
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            patterns.push(s as u32);
        }
        for &bits in &patterns {
            let (high, low) = split_master(bits);
            let x = f32::from_bits(bits);
            let view = f32::from_bits((high as u32) << 16);
            if x.is_nan() {
                assert!(view.is_nan() && low == 0 && (view.to_bits() ^ bits) >> 31 == 0, "{bits:#x}");
                continue;
            }
            assert_eq!(join_master(high, low), bits, "{bits:#x}");
            // the nearest bfloat16 (ties away from zero), the float32 value rounded as a number
            let (down, up) = (bits & 0xffff_0000, (bits & 0xffff_0000).wrapping_add(0x1_0000));
            let want = if bits & 0xffff >= 0x8000 { up } else { down };
            assert_eq!((high as u32) << 16, want, "{bits:#x}");
            if bits & 0xffff != 0x8000 {
                assert_eq!(view.to_bits(), crate::half::Bf16::from_f32(x).to_f32().to_bits(), "round to nearest {bits:#x}");
            }
        }
    }

    #[test]
    fn a_sweep_writes_only_what_the_rule_declares_and_sums_the_same_at_any_thread_count() {
        let _g = crate::test_util::global();
        let sizes = [9 * BLOCK + 5, 3, 0]; // (above parallel::SERIAL_BELOW: split across threads)
        let mut results = vec![];
        for threads in [1, 2, 3] {
            parallel::set_num_threads(threads).unwrap();
            let mut ps: Vec<Vec<f64>> = sizes.iter().map(|&n| data(n, n as u64)).collect();
            let gs: Vec<Vec<f64>> = sizes.iter().map(|&n| data(n, n as u64 + 7)).collect();
            let mut a: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.5; n]).collect();
            let mut b: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
            let mut counts = vec![0f32; sizes.len()];
            let mut states: Vec<[&mut [f64]; 2]> = a.iter_mut().zip(b.iter_mut()).map(|(x, y)| [&mut x[..], &mut y[..]]).collect();
            let mut counters: Vec<[&mut f32; 1]> = counts.iter_mut().map(|c| [c]).collect();
            let mut tensors: Vec<Tensor<'_, f64>> = ps
                .iter_mut()
                .zip(&gs)
                .zip(states.iter_mut())
                .zip(counters.iter_mut())
                .map(|(((p, g), s), c)| Tensor { param: &mut p[..], grad: &g[..], states: &mut s[..], counters: &mut c[..], low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false })
                .collect();
            let sums: Vec<(f64, f64)> = sweep(&mut tensors, LAYOUT, simd::level(), |c, _| {
                next_step(c);
                Touch
            })
            .unwrap()
            .into_iter()
            .map(|(sums, _)| sums)
            .collect();
            drop(tensors);
            for k in 0..sizes.len() {
                assert_eq!(ps[k], data::<f64>(sizes[k], sizes[k] as u64), "the parameter is not written");
                assert!(a[k].iter().all(|&x| x == 0.5), "nor the first state");
                let want: Vec<f64> = ps[k].iter().zip(&gs[k]).map(|(p, g)| p + g).collect();
                assert_eq!(b[k], want);
                let (pp, bb): (f64, f64) = (ps[k].iter().map(|x| x * x).sum(), want.iter().map(|x| x * x).sum());
                assert!((sums[k].0 - pp).abs() <= 1e-12 * pp && (sums[k].1 - bb).abs() <= 1e-12 * bb);
            }
            assert!(counts.iter().all(|&c| c == 1.0));
            results.push(sums.iter().map(|(x, y)| (x.to_bits(), y.to_bits())).collect::<Vec<_>>());
        }
        parallel::set_num_threads(parallel::default_threads()).unwrap();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}
