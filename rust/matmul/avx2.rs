//! SIMD dot products, one generic body per weight type compiled twice: for AVX2 (`vpmaddubsw`
//! then `vpmaddwd`) and for AVX-512 VNNI (`vpdpbusd` / `vpdpwssd` on 256-bit vectors, which fuse
//! the multiply and the accumulate). The integer arithmetic is exactly that of `scalar`: every
//! partial sum fits its lanes (activations are within +-127, so `vpmaddubsw` never saturates),
//! and only the order of the float accumulation differs.
//!
//! Weight quants that are unsigned (Q4_K, Q5_K, Q2_K, and Q3_K / Q6_K with their offset moved
//! into the Q8_K group sums) go straight into `vpmaddubsw`; signed ones use the sign trick
//! (|w| times the activation with w's sign).
//!
//! Each type's block step is an `#[inline(always)]` trait method, not a closure: closures do not
//! inherit the target features of the function they are inlined into, and a closure holding
//! intrinsics that LLVM declines to inline costs ten times the kernel.
//!
//! Safety: every function is `unsafe` for its target features; the type table (`crate::kernels`)
//! compiles them into wrappers with those features and hands them out only for a tier the CPU
//! was found to support.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::quant::avx2::{bits_to_bytes, iq4nl_lookup};
use crate::quant::block::{F16Le, u16_le, u32_le};
use crate::quant::grids::*;
use crate::quant::iquants::*;
use crate::quant::kquants::*;
use crate::quant::legacy::*;

/// The integer multiply-accumulate steps that differ between AVX2 and AVX-512 VNNI.
pub(crate) trait Madd {
    /// acc + (sums of 4 adjacent products of unsigned bytes `x` and signed bytes `y`).
    unsafe fn dot_u8i8(acc: __m256i, x: __m256i, y: __m256i) -> __m256i;
    /// acc + (sums of 2 adjacent products of i16 lanes).
    unsafe fn madd_i16(acc: __m256i, x: __m256i, y: __m256i) -> __m256i;
}

pub(crate) struct Avx2;
impl Madd for Avx2 {
    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(x, y);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn madd_i16(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(x, y))
    }
}

pub(crate) struct Vnni;
impl Madd for Vnni {
    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, x, y)
    }
    #[inline(always)]
    unsafe fn madd_i16(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, x, y)
    }
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline(always)]
unsafe fn fp16(x: F16Le) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16_le(x.0) as i32)))
}

/// f16 bits to f32 by table: a pure load, where `vcvtph2ps` and the broadcast after it would
/// compete for port 5 with the shuffles of the 32-element kernels (measured 2x on Q4_0).
pub(crate) fn f16_table() -> &'static [f32; 65536] {
    static TABLE: std::sync::OnceLock<Box<[f32; 65536]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 65536]);
        for (bits, v) in t.iter_mut().enumerate() {
            *v = half::f16::from_bits(bits as u16).to_f32();
        }
        t
    })
}

/// `table[w] * table[a]` in all 8 lanes, from memory broadcasts (no shuffle port).
#[inline(always)]
unsafe fn scale_product(table: &[f32; 65536], w: F16Le, a: F16Le) -> __m256 {
    _mm256_mul_ps(
        _mm256_broadcast_ss(&table[u16_le(w.0) as usize]),
        _mm256_broadcast_ss(&table[u16_le(a.0) as usize]),
    )
}

/// A 4-bit block's 32 elements in order (low nibbles, then high nibbles): the 16 bytes are
/// broadcast to both lanes by the load itself and the high lane shifted, avoiding a lane insert.
#[inline(always)]
unsafe fn nibbles32(qs: *const u8) -> __m256i {
    let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs as *const __m128i));
    let shifted = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// How far ahead of the block being multiplied its row's weights are prefetched. The hardware
/// prefetchers stop at 4 KiB page boundaries and fall behind these compute-heavy loops:
/// without this, DRAM-resident Q4_0 ran at a third of the cache-resident speed.
const PREFETCH_BYTES: usize = 2048;

/// Prefetches the bytes `PREFETCH_BYTES` past `block`, one hint per cache line a block spans
/// (a hint: no fault past the end of the data).
#[inline(always)]
unsafe fn prefetch<B>(block: &B) {
    let p = (block as *const B as *const i8).wrapping_add(PREFETCH_BYTES);
    for line in 0..std::mem::size_of::<B>().div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line));
    }
}

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Signed bytes times signed bytes, summed in fours: |x| * (y with x's sign).
#[inline(always)]
unsafe fn dot_i8i8<M: Madd>(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
    M::dot_u8i8(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Signed products as 16 i16 pair sums (for a per-group scale to follow).
#[inline(always)]
unsafe fn pairs_i8i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// i16 lanes: `lo` for the first 16 elements of a 32-element span, `hi` for the next 16.
#[inline(always)]
unsafe fn scale_pair(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// `y` negated where bit i of `signs` is set.
#[inline(always)]
unsafe fn apply_signs(y: __m256i, signs: u32) -> __m256i {
    _mm256_sign_epi8(
        y,
        _mm256_or_si256(bits_to_bytes(signs), _mm256_set1_epi8(1)),
    )
}

// ---- 32-element weight blocks against Q8_0 -------------------------------------------------

/// A 32-element weight block type in the Q8_0 kernels.
pub(crate) trait Q8_0Weights: bytemuck::Pod {
    /// Whether `w = d * q + m` has an offset `m` (Q4_1, Q5_1).
    const HAS_OFFSET: bool = false;
    /// i32x8 partial sums of q * x for the block's 32 activations `x`.
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i;
    fn scale(&self) -> F16Le;
    unsafe fn offset(&self) -> f32 {
        0.0
    }
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    hsum_epi32x4(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256(v, 1),
    ))
}

#[inline(always)]
unsafe fn hsum_epi32x4(s: __m128i) -> i32 {
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// acc + scale(w) * da * sum(q * x); the offset term, if any, is added to `offsets`.
#[inline(always)]
unsafe fn q8_0_step<B: Q8_0Weights, M: Madd>(
    table: &[f32; 65536],
    acc: __m256,
    offsets: &mut f32,
    wb: &B,
    ab: &BlockQ8_0,
) -> __m256 {
    let x = load(ab.qs.as_ptr() as *const u8);
    if B::HAS_OFFSET {
        let xsum = M::dot_u8i8(_mm256_setzero_si256(), _mm256_set1_epi8(1), x);
        *offsets += wb.offset() * fp16(ab.d) * hsum_epi32(xsum) as f32;
    }
    let sums = _mm256_cvtepi32_ps(wb.int_dot::<M>(x));
    _mm256_fmadd_ps(scale_product(table, wb.scale(), ab.d), sums, acc)
}

#[inline(always)]
pub(crate) unsafe fn dot_q8_0<B: Q8_0Weights, M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let table = f16_table();
    let mut offsets = 0f32;
    // Two independent accumulators (registers, not an indexed array) hide FMA latency.
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let pairs = w.len() / 2;
    for i in 0..pairs {
        prefetch(&w[2 * i]);
        acc0 = q8_0_step::<B, M>(table, acc0, &mut offsets, &w[2 * i], &a[2 * i]);
        acc1 = q8_0_step::<B, M>(table, acc1, &mut offsets, &w[2 * i + 1], &a[2 * i + 1]);
    }
    if w.len() % 2 == 1 {
        acc0 = q8_0_step::<B, M>(table, acc0, &mut offsets, &w[2 * pairs], &a[2 * pairs]);
    }
    hsum_ps(_mm256_add_ps(acc0, acc1)) + offsets
}

/// The fifth bits of a Q5 block as bytes: `set` where the bit is 1, `clear` where it is 0.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4], set: i8, clear: i8) -> __m256i {
    let mask = bits_to_bytes(u32::from_le_bytes(qh));
    _mm256_blendv_epi8(_mm256_set1_epi8(clear), _mm256_set1_epi8(set), mask)
}

impl Q8_0Weights for BlockQ4_0 {
    #[inline(always)]
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i {
        let q = _mm256_sub_epi8(nibbles32(self.qs.as_ptr()), _mm256_set1_epi8(8));
        dot_i8i8::<M>(_mm256_setzero_si256(), q, x)
    }
    #[inline(always)]
    fn scale(&self) -> F16Le {
        self.d
    }
}

impl Q8_0Weights for BlockQ4_1 {
    const HAS_OFFSET: bool = true;
    #[inline(always)]
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i {
        M::dot_u8i8(_mm256_setzero_si256(), nibbles32(self.qs.as_ptr()), x)
    }
    #[inline(always)]
    fn scale(&self) -> F16Le {
        self.d
    }
    #[inline(always)]
    unsafe fn offset(&self) -> f32 {
        fp16(self.m)
    }
}

impl Q8_0Weights for BlockQ5_0 {
    #[inline(always)]
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i {
        // nibble | 0xF0 is nibble - 16 as a signed byte.
        let q = _mm256_or_si256(nibbles32(self.qs.as_ptr()), fifth_bits(self.qh, 0, -16));
        dot_i8i8::<M>(_mm256_setzero_si256(), q, x)
    }
    #[inline(always)]
    fn scale(&self) -> F16Le {
        self.d
    }
}

impl Q8_0Weights for BlockQ5_1 {
    const HAS_OFFSET: bool = true;
    #[inline(always)]
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i {
        let q = _mm256_or_si256(nibbles32(self.qs.as_ptr()), fifth_bits(self.qh, 16, 0));
        M::dot_u8i8(_mm256_setzero_si256(), q, x)
    }
    #[inline(always)]
    fn scale(&self) -> F16Le {
        self.d
    }
    #[inline(always)]
    unsafe fn offset(&self) -> f32 {
        fp16(self.m)
    }
}

impl Q8_0Weights for BlockQ8_0 {
    #[inline(always)]
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i {
        dot_i8i8::<M>(
            _mm256_setzero_si256(),
            load(self.qs.as_ptr() as *const u8),
            x,
        )
    }
    #[inline(always)]
    fn scale(&self) -> F16Le {
        self.d
    }
}

impl Q8_0Weights for BlockIq4Nl {
    #[inline(always)]
    unsafe fn int_dot<M: Madd>(&self, x: __m256i) -> __m256i {
        let q = iq4nl_lookup(nibbles32(self.qs.as_ptr()));
        dot_i8i8::<M>(_mm256_setzero_si256(), q, x)
    }
    #[inline(always)]
    fn scale(&self) -> F16Le {
        self.d
    }
}

// ---- super-blocks against Q8_K -------------------------------------------------------------

/// A 256-element super-block type in the Q8_K kernels.
pub(crate) trait Q8KWeights: bytemuck::Pod {
    /// The super-block's i32x8 partial sums of scale * q * x, and a correction `(factor, n)`
    /// that adds `factor * da * n` (mins or offsets against the activation's group sums).
    unsafe fn block<M: Madd>(&self, x: &BlockQ8K) -> (__m256i, f32, i32);
    /// The float factor of the integer sums.
    unsafe fn scale(&self) -> f32;
}

#[inline(always)]
pub(crate) unsafe fn dot_q8_k<B: Q8KWeights, M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8K] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    let mut corrections = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        prefetch(wb);
        let da = f32::from_le_bytes(ab.d);
        let (sums, factor, n) = wb.block::<M>(ab);
        let scale = _mm256_set1_ps(wb.scale() * da);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc);
        corrections += factor * da * n as f32;
    }
    hsum_ps(acc) + corrections
}

/// The activation's 16 group sums against 16 per-group integers.
#[inline(always)]
fn group_sums(ab: &BlockQ8K, per_group: impl Fn(usize) -> i32) -> i32 {
    (0..16)
        .map(|g| i16::from_le_bytes(ab.bsums[g]) as i32 * per_group(g))
        .sum()
}

#[inline(always)]
unsafe fn act(ab: &BlockQ8K, offset: usize) -> __m256i {
    load(ab.qs.as_ptr().add(offset) as *const u8)
}

/// Bits `shift..` of every byte of `v`, masked (shift by a run-time count).
#[inline(always)]
unsafe fn bit_field(v: __m256i, shift: u32, mask: i8) -> __m256i {
    _mm256_and_si256(
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32)),
        _mm256_set1_epi8(mask),
    )
}

/// 32 unsigned quants times activations, scaled per 16 elements (`scale_pair`) and added.
#[inline(always)]
unsafe fn scaled_u8<M: Madd>(acc: __m256i, q: __m256i, x: __m256i, s: __m256i) -> __m256i {
    M::madd_i16(acc, _mm256_maddubs_epi16(q, x), s)
}

impl Q8KWeights for BlockQ2K {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for g in 0..2 {
            let bits = load(self.qs.as_ptr().add(32 * g));
            for j in 0..4 {
                let q = bit_field(bits, 2 * j as u32, 3);
                let s = 8 * g + 2 * j;
                let sc = scale_pair(
                    (self.scales[s] & 0xF) as i16,
                    (self.scales[s + 1] & 0xF) as i16,
                );
                sums = scaled_u8::<M>(sums, q, act(ab, 128 * g + 32 * j), sc);
            }
        }
        let mins = group_sums(ab, |g| (self.scales[g] >> 4) as i32);
        (sums, -fp16(self.dmin), mins)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

impl Q8KWeights for BlockQ3K {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let scales: [i16; 16] = std::array::from_fn(|s| q3k_scale(&self.scales, s) as i16);
        let hmask = load(self.hmask.as_ptr());
        let mut sums = _mm256_setzero_si256();
        for g in 0..2 {
            let bits = load(self.qs.as_ptr().add(32 * g));
            for j in 0..4 {
                // q + 4 = low bits | high bit << 2, unsigned; the -4 goes to the group sums.
                let high = bit_field(hmask, (4 * g + j) as u32, 1);
                let q =
                    _mm256_or_si256(bit_field(bits, 2 * j as u32, 3), _mm256_slli_epi16(high, 2));
                let s = 8 * g + 2 * j;
                let sc = scale_pair(scales[s], scales[s + 1]);
                sums = scaled_u8::<M>(sums, q, act(ab, 128 * g + 32 * j), sc);
            }
        }
        let offset = group_sums(ab, |g| scales[g] as i32);
        (sums, -4.0 * fp16(self.d), offset)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

/// Q4_K / Q5_K's twelve scale bytes unpacked with word operations: the eight 6-bit scales in
/// the low u64, the eight mins in the high one.
#[inline(always)]
fn k4_scales_mins(packed: &[u8; 12]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f3f3f;
    const LOW4: u32 = 0x0f0f0f0f;
    const LOW2: u32 = 0x03030303;
    let w = [
        u32_le(&packed[0..]),
        u32_le(&packed[4..]),
        u32_le(&packed[8..]),
    ];
    [
        w[0] & LOW6,
        (w[2] & LOW4) | (((w[0] >> 6) & LOW2) << 4),
        w[1] & LOW6,
        ((w[2] >> 4) & LOW4) | (((w[1] >> 6) & LOW2) << 4),
    ]
}

/// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and mins.
#[inline(always)]
unsafe fn q45_k<M: Madd>(
    ab: &BlockQ8K,
    scales: &[u8; 12],
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    dmin: f32,
) -> (__m256i, f32, i32) {
    let sm = k4_scales_mins(scales);
    let sc = |sub: usize| ((sm[sub / 4] >> (8 * (sub % 4))) & 0xFF) as i16;
    // The mins against the activation sums of each 32 (adjacent 16-sums added pairwise).
    let mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, sm[3] as i32, sm[2] as i32));
    let bsums = _mm256_loadu_si256(ab.bsums.as_ptr() as *const __m256i);
    let sums32 = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256(bsums, 1),
    );
    let mins_dot = _mm_madd_epi16(mins, sums32);
    // Not Option::map: a closure would not take on the caller's target features.
    #[allow(clippy::manual_map)]
    let high = match qh {
        Some(qh) => Some(load(qh.as_ptr())),
        None => None,
    };
    let mut sums = _mm256_setzero_si256();
    for g in 0..4 {
        let bits = load(qs.as_ptr().add(32 * g));
        for h in 0..2 {
            let sub = 2 * g + h;
            let mut q = bit_field(bits, 4 * h as u32, 0xF);
            if let Some(high) = high {
                q = _mm256_or_si256(q, _mm256_slli_epi16(bit_field(high, sub as u32, 1), 4));
            }
            sums = scaled_u8::<M>(sums, q, act(ab, 32 * sub), _mm256_set1_epi16(sc(sub)));
        }
    }
    (sums, -dmin, hsum_epi32x4(mins_dot))
}

impl Q8KWeights for BlockQ4K {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        q45_k::<M>(ab, &self.scales, &self.qs, None, fp16(self.dmin))
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

impl Q8KWeights for BlockQ5K {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        q45_k::<M>(ab, &self.scales, &self.qs, Some(&self.qh), fp16(self.dmin))
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

impl Q8KWeights for BlockQ6K {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for g in 0..2 {
            let ql = [
                load(self.ql.as_ptr().add(64 * g)),
                load(self.ql.as_ptr().add(64 * g + 32)),
            ];
            let qh = load(self.qh.as_ptr().add(32 * g));
            for j in 0..4 {
                // q + 32, unsigned; the -32 goes to the group sums.
                let low = bit_field(ql[j % 2], 4 * (j / 2) as u32, 0xF);
                let high = _mm256_slli_epi16(bit_field(qh, 2 * j as u32, 3), 4);
                let s = 8 * g + 2 * j;
                let sc = scale_pair(self.scales[s] as i16, self.scales[s + 1] as i16);
                let q = _mm256_or_si256(low, high);
                sums = scaled_u8::<M>(sums, q, act(ab, 128 * g + 32 * j), sc);
            }
        }
        let offset = group_sums(ab, |g| self.scales[g] as i32);
        (sums, -32.0 * fp16(self.d), offset)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

impl Q8KWeights for BlockIq4Xs {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let q = iq4nl_lookup(nibbles32(self.qs.as_ptr().add(16 * ib)));
            let pairs = pairs_i8i8(q, act(ab, 32 * ib));
            sums = M::madd_i16(sums, pairs, _mm256_set1_epi16(self.scale(ib) as i16));
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

/// Four packed 8-value grid rows as 32 bytes.
#[inline(always)]
unsafe fn grid_rows(rows: [u64; 4]) -> __m256i {
    _mm256_set_epi64x(
        rows[3] as i64,
        rows[2] as i64,
        rows[1] as i64,
        rows[0] as i64,
    )
}

/// Eight packed 4-value grid rows as 32 bytes.
#[inline(always)]
unsafe fn grid4_rows(rows: [u32; 8]) -> __m256i {
    _mm256_loadu_si256(rows.as_ptr() as *const __m256i)
}

/// One 32-element span of an IQ2/IQ3 type: unsigned grid values, sign bits, scales.
#[inline(always)]
unsafe fn signed_grid_span<M: Madd>(
    acc: __m256i,
    grid: __m256i,
    signs: u32,
    x: __m256i,
    scales: __m256i,
) -> __m256i {
    M::madd_i16(
        acc,
        _mm256_maddubs_epi16(grid, apply_signs(x, signs)),
        scales,
    )
}

/// Four 7-bit sign indices expanded to a u32 of sign bits.
#[inline(always)]
fn ksigns4(aux: u32) -> u32 {
    (0..4).fold(0, |s, k| {
        s | (KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize] as u32) << (8 * k)
    })
}

/// Two 4-bit scales `(2 s + 1)` of consecutive 16-element groups.
#[inline(always)]
unsafe fn odd_scale_pair(byte: u8) -> __m256i {
    scale_pair(2 * (byte & 0xF) as i16 + 1, 2 * (byte >> 4) as i16 + 1)
}

impl Q8KWeights for BlockIq2Xxs {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let idx = &self.qs[8 * ib..8 * ib + 4];
            let aux = u32_le(&self.qs[8 * ib + 4..]);
            let grid = grid_rows(std::array::from_fn(|k| IQ2XXS_GRID[idx[k] as usize]));
            let sc = _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1);
            sums = signed_grid_span::<M>(sums, grid, ksigns4(aux), act(ab, 32 * ib), sc);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl Q8KWeights for BlockIq2Xs {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let q: [u16; 4] = std::array::from_fn(|k| u16_le(self.qs[4 * ib + k]));
            let grid = grid_rows(q.map(|q| IQ2XS_GRID[(q & 511) as usize]));
            let signs = (0..4).fold(0u32, |s, k| {
                s | (KSIGNS_IQ2XS[(q[k] >> 9) as usize] as u32) << (8 * k)
            });
            let sc = odd_scale_pair(self.scales[ib]);
            sums = signed_grid_span::<M>(sums, grid, signs, act(ab, 32 * ib), sc);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl Q8KWeights for BlockIq2S {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let qh = self.qh[ib] as usize;
            let grid = grid_rows(std::array::from_fn(|k| {
                IQ2S_GRID[self.qs[4 * ib + k] as usize | (((qh >> (2 * k)) & 3) << 8)]
            }));
            let signs = u32_le(&self.signs[4 * ib..]);
            let sc = odd_scale_pair(self.scales[ib]);
            sums = signed_grid_span::<M>(sums, grid, signs, act(ab, 32 * ib), sc);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl Q8KWeights for BlockIq3Xxs {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let idx = &self.qs[8 * ib..8 * ib + 8];
            let aux = u32_le(&self.scales_signs[4 * ib..]);
            let grid = grid4_rows(std::array::from_fn(|k| IQ3XXS_GRID[idx[k] as usize]));
            let sc = _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1);
            sums = signed_grid_span::<M>(sums, grid, ksigns4(aux), act(ab, 32 * ib), sc);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.25
    }
}

impl Q8KWeights for BlockIq3S {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let qh = self.qh[ib] as usize;
            let grid = grid4_rows(std::array::from_fn(|k| {
                IQ3S_GRID[self.qs[8 * ib + k] as usize | (((qh >> k) & 1) << 8)]
            }));
            let signs = u32_le(&self.signs[4 * ib..]);
            let s = (self.scales[ib / 2] >> (4 * (ib % 2))) & 0xF;
            let sc = _mm256_set1_epi16(2 * s as i16 + 1);
            sums = signed_grid_span::<M>(sums, grid, signs, act(ab, 32 * ib), sc);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

/// IQ1 quants `8 g + shift` from four ternary grid rows and a per-row shift of +-1.
#[inline(always)]
unsafe fn iq1_quants(rows: [u64; 4], negative_shift: [bool; 4]) -> __m256i {
    let g = grid_rows(rows);
    let g2 = _mm256_add_epi8(g, g);
    let g4 = _mm256_add_epi8(g2, g2);
    let shift = grid_rows(negative_shift.map(|n| if n { u64::MAX } else { 0x0101010101010101 }));
    _mm256_add_epi8(_mm256_add_epi8(g4, g4), shift)
}

impl Q8KWeights for BlockIq1S {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let qh = u16_le(self.qh[ib]);
            let rows = std::array::from_fn(|k| {
                IQ1S_GRID[self.qs[4 * ib + k] as usize | ((((qh >> (3 * k)) & 7) as usize) << 8)]
            });
            let q = iq1_quants(rows, [qh & 0x8000 != 0; 4]);
            let sc = _mm256_set1_epi16(2 * ((qh >> 12) & 7) as i16 + 1);
            sums = M::madd_i16(sums, pairs_i8i8(q, act(ab, 32 * ib)), sc);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl Q8KWeights for BlockIq1M {
    #[inline(always)]
    unsafe fn block<M: Madd>(&self, ab: &BlockQ8K) -> (__m256i, f32, i32) {
        let sc = self.scales.map(u16_le);
        let ls = |s: usize| 2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) as i16 + 1;
        let mut sums = _mm256_setzero_si256();
        for ib in 0..8 {
            let h: [u8; 4] =
                std::array::from_fn(|k| (self.qh[2 * ib + k / 2] >> (4 * (k % 2))) & 0xF);
            let rows = std::array::from_fn(|k| {
                IQ1S_GRID[self.qs[4 * ib + k] as usize | (((h[k] & 7) as usize) << 8)]
            });
            let q = iq1_quants(rows, h.map(|h| h & 8 != 0));
            let scales = scale_pair(ls(2 * ib), ls(2 * ib + 1));
            sums = M::madd_i16(sums, pairs_i8i8(q, act(ab, 32 * ib)), scales);
        }
        (sums, 0.0, 0)
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        self.d() * 0.125
    }
}

// ---- float weights against f32 activations -------------------------------------------------

/// A float weight type: 8 weights at a time as f32, and one for the tail.
pub(crate) trait FloatWeights {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    fn one(b: &[u8]) -> f32;
}

pub(crate) struct F32W;
impl FloatWeights for F32W {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    fn one(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

pub(crate) struct F16W;
impl FloatWeights for F16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    fn one(b: &[u8]) -> f32 {
        F16Le([b[0], b[1]]).to_f32()
    }
}

pub(crate) struct Bf16W;
impl FloatWeights for Bf16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
    }
    #[inline(always)]
    fn one(b: &[u8]) -> f32 {
        f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
    }
}

#[inline(always)]
pub(crate) unsafe fn dot_float<F: FloatWeights>(w: &[u8], a: &[u8]) -> f32 {
    let n = w.len() / F::BYTES;
    let (wp, x) = (w.as_ptr(), a.as_ptr() as *const f32);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let n16 = n / 16;
    for i in 0..n16 {
        let (j0, j1) = (16 * i, 16 * i + 8);
        acc0 = _mm256_fmadd_ps(
            F::load8(wp.add(j0 * F::BYTES)),
            _mm256_loadu_ps(x.add(j0)),
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            F::load8(wp.add(j1 * F::BYTES)),
            _mm256_loadu_ps(x.add(j1)),
            acc1,
        );
    }
    let mut sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for j in 16 * n16..n {
        let xj = f32::from_le_bytes([a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]]);
        sum += F::one(&w[j * F::BYTES..]) * xj;
    }
    sum
}
