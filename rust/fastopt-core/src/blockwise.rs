//! 8-bit blockwise storage of optimizer state (Dettmers et al. 2022, "8-bit Optimizers via
//! Block-wise Quantization"), as bitsandbytes and torchao keep it.
//!
//! A state buffer of `n` float32 values is kept as `n` one-byte codes and one float32
//! `absmax` per block of [`QBLOCK`] elements (the last block may be short). A value is
//! `map[code] * absmax`, where `map` is one of the two *dynamic quantile maps* of
//! bitsandbytes' `create_dynamic_map` (identical in torchao): [`Map::Signed`] for values of
//! either sign (first moments, momentum), [`Map::Unsigned`] for values that are never
//! negative (second moments, accumulated squares), which spends its sign bit on precision.
//!
//! Quantizing a block, as torchao's `scale_tensor` and `quantize_8bit_with_qmap`:
//! ```text
//! absmax = max(max |x|, 1e-12)              (a NaN in the block makes it NaN)
//! y      = x / absmax                       (float32 division)
//! c      = the largest code with map[c] <= y (0 when there is none, or y is NaN)
//! code   = c + 1  if c < 255 and y - map[c] >= (map[c + 1] - map[c]) * 0.5  else c
//! ```
//! every operation in float32, so the codes and absmax equal torchao's bit for bit.
//! (bitsandbytes' own CPU quantizer searches approximately and picks a farther code for
//! about a third of the values; its maps are the same.)
//!
//! The search is a table lookup: `fl(y - map[c])` grows with `y`, so the rounding rule is
//! `y >= t[c]` for the smallest float32 `t[c]` that passes it, and the code is the number of
//! thresholds `t[0..255]` at or below `y`. A table indexed by the sign, exponent and top 8
//! mantissa bits of `y` gives that count at the low end of `y`'s bucket; no bucket holds
//! more than one threshold (checked when the table is built), so one comparison finishes it.

use std::sync::OnceLock;

/// Elements per block of one absmax.
pub const QBLOCK: usize = 256;

/// The smallest absmax a block stores (torchao's `clip(1e-12)`): an all-zero block
/// quantizes to the code of 0.
pub const MIN_ABSMAX: f32 = 1e-12;

/// One code of 8-bit blockwise state: the state storage format
/// ([`Storage`](crate::optim::Storage)) of `state_dtype='int8'`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Q8(pub u8);

impl Q8 {
    /// The codes as bytes.
    pub fn bytes(codes: &[Q8]) -> &[u8] {
        // SAFETY: `Q8` is `repr(transparent)` over `u8`: the same size, alignment and valid
        // values, so the same memory read as `u8` is `codes.len()` valid bytes.
        unsafe { std::slice::from_raw_parts(codes.as_ptr().cast(), codes.len()) }
    }

    /// The codes as bytes, writable.
    pub fn bytes_mut(codes: &mut [Q8]) -> &mut [u8] {
        // SAFETY: as in `bytes`; every `u8` written is a valid `Q8`, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(codes.as_mut_ptr().cast(), codes.len()) }
    }
}

/// Which dynamic quantile map a buffer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// `create_dynamic_map(signed=True)`: 127 negative values, 0, 127 positive ones and 1.
    Signed,
    /// `create_dynamic_map(signed=False)`: 0, 254 positive values and 1.
    Unsigned,
}

impl Map {
    /// The map for a buffer: unsigned when `unsigned`.
    pub fn of(unsigned: bool) -> Map {
        if unsigned { Map::Unsigned } else { Map::Signed }
    }

    /// The 256 values, ascending (bitsandbytes' `create_dynamic_map`, as float32).
    pub fn values(self) -> &'static [f32; 256] {
        &self.tables().values
    }

    fn tables(self) -> &'static Tables {
        static SIGNED: OnceLock<Tables> = OnceLock::new();
        static UNSIGNED: OnceLock<Tables> = OnceLock::new();
        match self {
            Map::Signed => SIGNED.get_or_init(|| Tables::new(&SIGNED_BITS)),
            Map::Unsigned => UNSIGNED.get_or_init(|| Tables::new(&UNSIGNED_BITS)),
        }
    }

    /// The code of `y` (a value already divided by its block's absmax): the nearest value of
    /// the map by torchao's rule (module docs). NaN gives 0.
    #[inline(always)]
    pub fn code(self, y: f32) -> u8 {
        self.tables().code(y)
    }
}

// bitsandbytes' `create_dynamic_map(signed=True)` and `(signed=False)`, float32 bits
// (tests compare them with the values bitsandbytes and torchao compute).
const SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];
const UNSIGNED_BITS: [u32; 256] = [
    0x00000000, 0x34ae7baa, 0x35500998, 0x360e9b38, 0x3692ccf6, 0x36de4c51, 0x3714e5d5, 0x3783126e,
    0x37e171a0, 0x381fe868, 0x384f1800, 0x387e479a, 0x3896bb99, 0x38ae5364, 0x38c5eb31, 0x3906594b,
    0x394154ca, 0x397c5049, 0x399ba5e4, 0x39b923a2, 0x39d6a163, 0x39f41f22, 0x3a08ce71, 0x3a178d50,
    0x3a264c30, 0x3a350b10, 0x3a43c9ef, 0x3a5288d0, 0x3a6147af, 0x3a70068e, 0x3a7ec56e, 0x3a958106,
    0x3aba5e35, 0x3adf3b64, 0x3b020c4a, 0x3b147ae1, 0x3b26e978, 0x3b395810, 0x3b4bc6a7, 0x3b5e3540,
    0x3b70a3d7, 0x3b818937, 0x3b8ac082, 0x3b93f7cf, 0x3b9d2f1a, 0x3ba66666, 0x3baf9db2, 0x3bb8d4fd,
    0x3bc20c4a, 0x3bcb4395, 0x3bd47ae1, 0x3bddb22e, 0x3be6e978, 0x3bf020c5, 0x3bf9580f, 0x3c0147ae,
    0x3c05e354, 0x3c0a7ef9, 0x3c0f1aa0, 0x3c13b645, 0x3c1851eb, 0x3c1ced92, 0x3c218937, 0x3c2f5c2a,
    0x3c466667, 0x3c5d70a3, 0x3c747ae2, 0x3c85c28f, 0x3c9147af, 0x3c9ccccd, 0x3ca851eb, 0x3cb3d70b,
    0x3cbf5c29, 0x3ccae147, 0x3cd66667, 0x3ce1eb87, 0x3ced70a3, 0x3cf8f5c3, 0x3d023d70, 0x3d080000,
    0x3d0dc28f, 0x3d13851f, 0x3d1947af, 0x3d1f0a3d, 0x3d24cccd, 0x3d2a8f5c, 0x3d3051eb, 0x3d36147b,
    0x3d3bd70a, 0x3d41999a, 0x3d475c28, 0x3d4d1eb8, 0x3d52e147, 0x3d58a3d7, 0x3d5e6667, 0x3d6428f7,
    0x3d69eb87, 0x3d6fae15, 0x3d7570a3, 0x3d7b3333, 0x3d807ae2, 0x3d835c2a, 0x3d863d71, 0x3d891eb8,
    0x3d8c0000, 0x3d8ee148, 0x3d91c290, 0x3d94a3d7, 0x3d97851f, 0x3d9a6667, 0x3d9d47af, 0x3da028f6,
    0x3da30a3e, 0x3da5eb85, 0x3da8cccd, 0x3dabae15, 0x3dae8f5c, 0x3db170a4, 0x3db451eb, 0x3db73333,
    0x3dba147b, 0x3dbcf5c3, 0x3dbfd70b, 0x3dc2b852, 0x3dc5999a, 0x3dc87ae2, 0x3dcb5c29, 0x3dd40000,
    0x3de26666, 0x3df0cccd, 0x3dff3333, 0x3e06cccc, 0x3e0e0000, 0x3e153334, 0x3e1c6666, 0x3e23999a,
    0x3e2acccc, 0x3e320000, 0x3e393334, 0x3e406666, 0x3e47999a, 0x3e4ecccc, 0x3e560000, 0x3e5d3334,
    0x3e646666, 0x3e6b999a, 0x3e72cccc, 0x3e7a0000, 0x3e809999, 0x3e843333, 0x3e87cccd, 0x3e8b6666,
    0x3e8f0000, 0x3e92999a, 0x3e963333, 0x3e99cccc, 0x3e9d6666, 0x3ea10000, 0x3ea4999a, 0x3ea83333,
    0x3eabcccc, 0x3eaf6666, 0x3eb30000, 0x3eb6999a, 0x3eba3333, 0x3ebdcccc, 0x3ec16666, 0x3ec50000,
    0x3ec8999a, 0x3ecc3333, 0x3ecfcccc, 0x3ed36666, 0x3ed70000, 0x3eda999a, 0x3ede3333, 0x3ee1cccc,
    0x3ee56666, 0x3ee90000, 0x3eec999a, 0x3ef03333, 0x3ef3cccc, 0x3ef76666, 0x3efb0000, 0x3efe9999,
    0x3f01199a, 0x3f02e666, 0x3f04b333, 0x3f068000, 0x3f084ccc, 0x3f0a199a, 0x3f0be666, 0x3f0db334,
    0x3f0f8000, 0x3f114ccd, 0x3f13199a, 0x3f14e666, 0x3f16b334, 0x3f188000, 0x3f1a4ccd, 0x3f1c199a,
    0x3f1de666, 0x3f1fb334, 0x3f218000, 0x3f234ccd, 0x3f25199a, 0x3f26e666, 0x3f28b334, 0x3f2a8000,
    0x3f2c4ccd, 0x3f2e199a, 0x3f2fe666, 0x3f31b334, 0x3f338000, 0x3f354ccd, 0x3f37199a, 0x3f38e666,
    0x3f3ab334, 0x3f3c8000, 0x3f3e4ccd, 0x3f40199a, 0x3f41e666, 0x3f43b334, 0x3f458000, 0x3f474ccc,
    0x3f49199a, 0x3f4ae666, 0x3f4cb334, 0x3f4e8000, 0x3f504ccc, 0x3f52199a, 0x3f53e666, 0x3f55b334,
    0x3f578000, 0x3f594ccc, 0x3f5b199a, 0x3f5ce666, 0x3f5eb334, 0x3f608000, 0x3f624ccc, 0x3f64199a,
    0x3f65e666, 0x3f67b334, 0x3f698000, 0x3f6b4ccc, 0x3f6d199a, 0x3f6ee666, 0x3f70b334, 0x3f728000,
    0x3f744ccc, 0x3f76199a, 0x3f77e666, 0x3f79b334, 0x3f7b8000, 0x3f7d4ccc, 0x3f7f199a, 0x3f800000,
];

/// Buckets per sign: 0 for |y| < 2**-23, then 256 per binary exponent from 2**-23 up to 2,
/// and one for 2 and above (infinity included).
const BUCKETS: usize = 2 + (128 - FIRST_EXP as usize) * 256;
/// The bucket of NaN, after both signs' (its count is 0, and NaN passes no threshold).
const NAN_BUCKET: usize = 2 * BUCKETS;
/// The biased exponent of 2**-23: the maps' smallest nonzero magnitude (3.25e-7) lies above.
const FIRST_EXP: u32 = 104;

/// A map's values, its thresholds and its bucket table.
struct Tables {
    values: [f32; 256],
    /// `thresholds[c]`: the smallest float32 `y` that rounds from code `c` up to `c + 1`;
    /// `thresholds[255]` is NaN, which no `y` reaches (no code above 255).
    thresholds: [f32; 256],
    /// For each bucket of positive then negative `y`, the number of thresholds at or below
    /// every `y` of the bucket; last, NaN's (0).
    base: Vec<u8>,
}

/// The bucket of `y`: its sign's block of [`BUCKETS`], then its magnitude's; NaN's own.
/// Branch-free integer arithmetic, so a loop of it vectorizes.
#[inline(always)]
fn bucket(y: f32) -> u32 {
    let bits = y.to_bits();
    let mag = bits & 0x7fff_ffff;
    // (0 below 2**-23, then one per 8 top mantissa bits, the last for 2 and above)
    let below = (FIRST_EXP << 8) - 1;
    let i = ((mag >> 15).max(below) - below).min(BUCKETS as u32 - 1);
    if mag > 0x7f80_0000 { NAN_BUCKET as u32 } else { i + (bits >> 31) * BUCKETS as u32 }
}

/// The smallest magnitude of bucket `i` (of one sign).
fn bucket_floor(i: usize) -> f32 {
    if i == 0 { 0.0 } else { f32::from_bits(((i - 1) as u32 + (FIRST_EXP << 8)) << 15) }
}

/// The largest magnitude of bucket `i` (of one sign): just below the next one's smallest.
fn bucket_ceil(i: usize) -> f32 {
    if i + 1 == BUCKETS { f32::INFINITY } else { bucket_floor(i + 1).next_down() }
}

impl Tables {
    fn new(bits: &[u32; 256]) -> Tables {
        let values = bits.map(f32::from_bits);
        let mut thresholds = [f32::NAN; 256];
        for c in 0..255 {
            let (low, half) = (values[c], (values[c + 1] - values[c]) * 0.5);
            // `y - low` rounds monotonically in `y`: walk down while the rule passes, then up
            // until it does.
            let mut y = low + half;
            while y - low >= half {
                y = y.next_down();
            }
            while y - low < half {
                y = y.next_up();
            }
            thresholds[c] = y;
        }
        let count = |y: f32| thresholds.iter().filter(|&&t| t <= y).count();
        let mut base = vec![0u8; 2 * BUCKETS + 1];
        for i in 0..BUCKETS {
            // positive `y` from the bucket's floor; negative `y` from its most negative value
            let (lo, hi) = (bucket_floor(i), bucket_ceil(i).min(f32::MAX));
            for (k, (from, to)) in [(lo, hi), (-hi, -lo)].into_iter().enumerate() {
                let (a, b) = (count(from), count(to));
                assert!(b - a <= 1, "a bucket holds two thresholds of the quantile map");
                base[i + k * BUCKETS] = a as u8;
            }
        }
        Tables { values, thresholds, base }
    }

    /// The code of `y` in its bucket `b` ([`bucket`]).
    #[inline(always)]
    fn code_in(&self, y: f32, b: u32) -> u8 {
        let c = self.base[b as usize];
        c + (y >= self.thresholds[c as usize]) as u8
    }

    #[inline(always)]
    fn code(&self, y: f32) -> u8 {
        self.code_in(y, bucket(y))
    }
}

/// Quantizes one block: `codes[i]` for `values[i] / absmax` (module docs); returns the
/// absmax to store. `values` and `codes` have the same length, at most [`QBLOCK`].
#[inline(always)]
pub fn quantize_block(values: &[f32], map: Map, codes: &mut [u8]) -> f32 {
    let n = values.len().min(codes.len()).min(QBLOCK);
    let (values, codes) = (&values[..n], &mut codes[..n]);
    // The largest magnitude by its bits (the order of non-negative floats; a NaN's bits are
    // above infinity's), so the loop vectorizes.
    let top = values.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff));
    let absmax = if top > 0x7f80_0000 { f32::NAN } else { f32::from_bits(top).max(MIN_ABSMAX) };
    let t = map.tables();
    // (the division and the buckets in vector loops; only the two table reads per value
    // are scalar)
    let (mut y, mut b) = ([0f32; QBLOCK], [0u32; QBLOCK]);
    let (y, b) = (&mut y[..n], &mut b[..n]);
    for (d, &x) in y.iter_mut().zip(values) {
        *d = x / absmax;
    }
    for (k, &v) in b.iter_mut().zip(y.iter()) {
        *k = bucket(v);
    }
    // (the tables as local slices: a byte store could alias their fields, which LLVM would
    // then reload for every value)
    let (base, thresholds) = (&t.base[..], &t.thresholds);
    for ((c, &v), &k) in codes.iter_mut().zip(y.iter()).zip(b.iter()) {
        let low = base[k as usize];
        *c = low + (v >= thresholds[low as usize]) as u8;
    }
    absmax
}

/// The values of one block: `map[codes[i]] * absmax`.
#[inline(always)]
pub fn dequantize_block(codes: &[u8], absmax: f32, map: Map, values: &mut [f32]) {
    let v: &[f32; 256] = map.values();
    for (x, &c) in values.iter_mut().zip(codes) {
        *x = v[c as usize] * absmax;
    }
}

/// How many absmax values a buffer of `n` elements keeps.
pub fn blocks(n: usize) -> usize {
    n.div_ceil(QBLOCK)
}

/// Quantizes a whole buffer, block by block (`absmax.len() == blocks(values.len())`).
pub fn quantize(values: &[f32], map: Map, codes: &mut [u8], absmax: &mut [f32]) {
    for ((v, c), a) in values.chunks(QBLOCK).zip(codes.chunks_mut(QBLOCK)).zip(absmax.iter_mut()) {
        *a = quantize_block(v, map, c);
    }
}

/// Dequantizes a whole buffer, block by block.
pub fn dequantize(codes: &[u8], absmax: &[f32], map: Map, values: &mut [f32]) {
    for ((c, v), &a) in codes.chunks(QBLOCK).zip(values.chunks_mut(QBLOCK)).zip(absmax) {
        dequantize_block(c, a, map, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torchao's `quantize_8bit_with_qmap` on one scaled value: a branch-free binary search
    /// for the largest code at or below `y`, then the rounding rule.
    fn reference(y: f32, q: &[f32; 256]) -> u8 {
        let mut c = 0usize;
        for step in [128, 64, 32, 16, 8, 4, 2, 1] {
            if y >= q[c + step - usize::from(c + step > 255)] && c + step <= 255 {
                c += step;
            }
        }
        let up = (c + 1).min(255);
        if y - q[c] >= (q[up] - q[c]) * 0.5 { up as u8 } else { c as u8 }
    }

    fn next_u32(state: &mut u64) -> u32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*state >> 32) as u32
    }

    #[test]
    fn maps_are_ascending_with_zero_and_one() {
        for map in [Map::Signed, Map::Unsigned] {
            let v = map.values();
            assert!(v.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(v[255], 1.0);
            assert!(v.contains(&0.0));
        }
        assert_eq!(Map::Signed.values()[127], 0.0);
        assert_eq!(Map::Unsigned.values()[0], 0.0);
    }

    #[test]
    fn codes_match_the_binary_search_at_every_threshold_and_at_random() {
        for map in [Map::Signed, Map::Unsigned] {
            let (q, t) = (map.values(), map.tables());
            let mut ys: Vec<f32> = vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0, f32::INFINITY, f32::NEG_INFINITY, 1e-30, -1e-30, f32::MIN_POSITIVE];
            for c in 0..256 {
                for x in [q[c], t.thresholds[c]] {
                    if x.is_finite() {
                        let (mut lo, mut hi) = (x, x);
                        for _ in 0..3 {
                            ys.extend([lo, hi]);
                            (lo, hi) = (lo.next_down(), hi.next_up());
                        }
                    }
                }
            }
            let mut s = 7u64;
            for _ in 0..200_000 {
                // uniform in [-1, 1], and log-uniform magnitudes down to 1e-9
                let u = next_u32(&mut s) as f32 / u32::MAX as f32 * 2.0 - 1.0;
                let e = (next_u32(&mut s) % 30) as i32;
                ys.extend([u, u * 10f32.powi(-e / 3)]);
            }
            for &y in &ys {
                assert_eq!(map.code(y), reference(y, q), "{map:?} y = {y:e}");
            }
            assert_eq!(map.code(f32::NAN), 0);
        }
    }

    #[test]
    fn blocks_quantize_by_their_own_absmax() {
        let mut s = 3u64;
        let n = 3 * QBLOCK + 17;
        let x: Vec<f32> = (0..n).map(|i| (next_u32(&mut s) as f32 / u32::MAX as f32 - 0.5) * (1 + i / QBLOCK) as f32).collect();
        let (mut codes, mut absmax) = (vec![0u8; n], vec![0f32; blocks(n)]);
        quantize(&x, Map::Signed, &mut codes, &mut absmax);
        for (b, a) in absmax.iter().enumerate() {
            let block = &x[b * QBLOCK..((b + 1) * QBLOCK).min(n)];
            assert_eq!(*a, block.iter().fold(0f32, |m, v| m.max(v.abs())));
        }
        let mut back = vec![0f32; n];
        dequantize(&codes, &absmax, Map::Signed, &mut back);
        for (i, (&v, &w)) in x.iter().zip(&back).enumerate() {
            // the signed map's coarsest step in [0.1, 1] is 0.9 / 64 of the absmax
            assert!((v - w).abs() <= absmax[i / QBLOCK] * 0.0071, "{i}: {v} {w}");
        }
        // an all-zero block keeps the code of 0; a NaN makes its block's absmax NaN
        let mut z = vec![0f32; QBLOCK];
        let mut c = vec![0u8; QBLOCK];
        assert_eq!(quantize_block(&z, Map::Signed, &mut c), MIN_ABSMAX);
        assert!(c.iter().all(|&k| k == 127));
        z[5] = f32::NAN;
        assert!(quantize_block(&z, Map::Unsigned, &mut c).is_nan());
        assert!(c.iter().all(|&k| k == 0));
    }
}
