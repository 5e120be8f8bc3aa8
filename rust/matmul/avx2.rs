//! SIMD dot products, one generic body per weight type compiled twice: for AVX2 (`vpmaddubsw`
//! + `vpmaddwd`) and for AVX-512 VNNI (`vpdpbusd` / `vpdpwssd` on 256-bit vectors, which fuse
//! the multiply and the accumulate). The integer arithmetic is exactly that of `scalar`: every
//! partial sum fits its lanes (activations are within +-127, so `vpmaddubsw` never saturates),
//! and only the order of the float accumulation differs.
//!
//! Weight quants that are unsigned (Q4_K, Q5_K, Q2_K, and Q3_K / Q6_K with their offset moved
//! into the Q8_K group sums) go straight into `vpmaddubsw`; signed ones use the sign trick
//! (|w| times the activation with w's sign).
//!
//! Safety: every function is `unsafe` for its target features; `dot_fn` hands out safe wrappers
//! only for a tier the CPU was found to support.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::VecDotFn;
use crate::gguf::GgmlType;
use crate::quant::Isa;
use crate::quant::avx2::{bits_to_bytes, iq4nl_lookup, nibbles32};
use crate::quant::block::{F16Le, u16_le, u32_le};
use crate::quant::grids::*;
use crate::quant::iquants::*;
use crate::quant::kquants::*;
use crate::quant::legacy::*;

/// The integer multiply-accumulate steps that differ between AVX2 and AVX-512 VNNI.
trait Madd {
    /// acc + (sums of 4 adjacent products of unsigned bytes `x` and signed bytes `y`).
    unsafe fn dot_u8i8(acc: __m256i, x: __m256i, y: __m256i) -> __m256i;
    /// acc + (sums of 2 adjacent products of i16 lanes).
    unsafe fn madd_i16(acc: __m256i, x: __m256i, y: __m256i) -> __m256i;
}

struct Avx2;
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

struct Vnni;
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
    _mm256_sign_epi8(y, _mm256_or_si256(bits_to_bytes(signs), _mm256_set1_epi8(1)))
}

// ---- 32-element weight blocks against Q8_0 -------------------------------------------------

/// The shared loop of the Q8_0-activation kernels: `int_dot(w, a)` returns the block's i32x8
/// partial sums of q*x, `scale(w)` the weight's scale; two accumulators hide FMA latency.
/// `offset(w)`, when the type has one (Q4_1, Q5_1), multiplies the activation sum.
#[inline(always)]
unsafe fn dot_blocks_q8_0<B: bytemuck::Pod, M: Madd>(
    w: &[u8],
    a: &[u8],
    int_dot: impl Fn(&B, __m256i) -> __m256i,
    scale: impl Fn(&B) -> f32,
    offset: Option<fn(&B) -> f32>,
) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut offsets = 0f32;
    for (i, (wb, ab)) in w.iter().zip(a).enumerate() {
        let qa = load(ab.qs.as_ptr() as *const u8);
        let da = fp16(ab.d);
        let sums = _mm256_cvtepi32_ps(int_dot(wb, qa));
        acc[i % 2] = _mm256_fmadd_ps(_mm256_set1_ps(scale(wb) * da), sums, acc[i % 2]);
        if let Some(offset) = offset {
            let asum = M::dot_u8i8(_mm256_setzero_si256(), _mm256_set1_epi8(1), qa);
            offsets += offset(wb) * da * hsum_epi32(asum) as f32;
        }
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1])) + offsets
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// The fifth bits of a Q5 block as bytes: `set` where the bit is 1, `clear` where it is 0.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4], set: i8, clear: i8) -> __m256i {
    let mask = bits_to_bytes(u32::from_le_bytes(qh));
    _mm256_blendv_epi8(_mm256_set1_epi8(clear), _mm256_set1_epi8(set), mask)
}

unsafe fn q4_0<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    let eight = _mm256_set1_epi8(8);
    dot_blocks_q8_0::<BlockQ4_0, M>(
        w,
        a,
        |b, qa| {
            let q = _mm256_sub_epi8(nibbles32(b.qs.as_ptr()), eight);
            dot_i8i8::<M>(_mm256_setzero_si256(), q, qa)
        },
        |b| fp16(b.d),
        None,
    )
}

unsafe fn q4_1<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_0::<BlockQ4_1, M>(
        w,
        a,
        |b, qa| M::dot_u8i8(_mm256_setzero_si256(), nibbles32(b.qs.as_ptr()), qa),
        |b| fp16(b.d),
        Some(|b| b.m.to_f32()),
    )
}

unsafe fn q5_0<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_0::<BlockQ5_0, M>(
        w,
        a,
        |b, qa| {
            // nibble | 0xF0 is nibble - 16 as a signed byte.
            let q = _mm256_or_si256(nibbles32(b.qs.as_ptr()), fifth_bits(b.qh, 0, -16));
            dot_i8i8::<M>(_mm256_setzero_si256(), q, qa)
        },
        |b| fp16(b.d),
        None,
    )
}

unsafe fn q5_1<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_0::<BlockQ5_1, M>(
        w,
        a,
        |b, qa| {
            let q = _mm256_or_si256(nibbles32(b.qs.as_ptr()), fifth_bits(b.qh, 16, 0));
            M::dot_u8i8(_mm256_setzero_si256(), q, qa)
        },
        |b| fp16(b.d),
        Some(|b| b.m.to_f32()),
    )
}

unsafe fn q8_0<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_0::<BlockQ8_0, M>(
        w,
        a,
        |b, qa| dot_i8i8::<M>(_mm256_setzero_si256(), load(b.qs.as_ptr() as *const u8), qa),
        |b| fp16(b.d),
        None,
    )
}

unsafe fn iq4_nl<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_0::<BlockIq4Nl, M>(
        w,
        a,
        |b, qa| {
            let q = iq4nl_lookup(nibbles32(b.qs.as_ptr()));
            dot_i8i8::<M>(_mm256_setzero_si256(), q, qa)
        },
        |b| fp16(b.d),
        None,
    )
}

// ---- super-blocks against Q8_K -------------------------------------------------------------

/// The shared loop of the Q8_K-activation kernels. `block(w, a)` returns the super-block's
/// i32x8 partial sums of scale*q*x and a scalar correction `(factor, int)` that adds
/// `factor * da * int` (mins against the activation group sums); `scale(w)` is the weight's d.
#[inline(always)]
unsafe fn dot_blocks_q8_k<B: bytemuck::Pod>(
    w: &[u8],
    a: &[u8],
    block: impl Fn(&B, &BlockQ8K) -> (__m256i, f32, i32),
    scale: impl Fn(&B) -> f32,
) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8K] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    let mut corrections = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let da = f32::from_le_bytes(ab.d);
        let (sums, factor, int) = block(wb, ab);
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(scale(wb) * da),
            _mm256_cvtepi32_ps(sums),
            acc,
        );
        corrections += factor * da * int as f32;
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

/// Bits `shift..shift+width` of every byte of `v` (shift by a run-time count).
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

unsafe fn q2_k<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockQ2K>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for g in 0..2 {
                let bits = load(b.qs.as_ptr().add(32 * g));
                for j in 0..4 {
                    let q = bit_field(bits, 2 * j as u32, 3);
                    let s = 8 * g + 2 * j;
                    let sc = scale_pair((b.scales[s] & 0xF) as i16, (b.scales[s + 1] & 0xF) as i16);
                    sums = scaled_u8::<M>(sums, q, act(ab, 128 * g + 32 * j), sc);
                }
            }
            let mins = group_sums(ab, |g| (b.scales[g] >> 4) as i32);
            (sums, -b.dmin.to_f32(), mins)
        },
        |b| fp16(b.d),
    )
}

unsafe fn q3_k<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockQ3K>(
        w,
        a,
        |b, ab| {
            let scales: [i16; 16] = std::array::from_fn(|s| q3k_scale(&b.scales, s) as i16);
            let hmask = load(b.hmask.as_ptr());
            let mut sums = _mm256_setzero_si256();
            for g in 0..2 {
                let bits = load(b.qs.as_ptr().add(32 * g));
                for j in 0..4 {
                    // q + 4 = low bits | high bit << 2, unsigned; the -4 goes to the group sums.
                    let high = bit_field(hmask, (4 * g + j) as u32, 1);
                    let q = _mm256_or_si256(
                        bit_field(bits, 2 * j as u32, 3),
                        _mm256_slli_epi16(high, 2),
                    );
                    let s = 8 * g + 2 * j;
                    let sc = scale_pair(scales[s], scales[s + 1]);
                    sums = scaled_u8::<M>(sums, q, act(ab, 128 * g + 32 * j), sc);
                }
            }
            let offset = group_sums(ab, |g| scales[g] as i32);
            (sums, -4.0 * fp16(b.d), offset)
        },
        |b| fp16(b.d),
    )
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
    let sm: [(u8, u8); 8] = std::array::from_fn(|j| k4_scale_min(scales, j));
    let high = qh.map(|qh| load(qh.as_ptr()));
    let mut sums = _mm256_setzero_si256();
    for g in 0..4 {
        let bits = load(qs.as_ptr().add(32 * g));
        for h in 0..2 {
            let sub = 2 * g + h;
            let mut q = bit_field(bits, 4 * h as u32, 0xF);
            if let Some(high) = high {
                q = _mm256_or_si256(q, _mm256_slli_epi16(bit_field(high, sub as u32, 1), 4));
            }
            let sc = _mm256_set1_epi16(sm[sub].0 as i16);
            sums = scaled_u8::<M>(sums, q, act(ab, 32 * sub), sc);
        }
    }
    let mins = group_sums(ab, |g| sm[g / 2].1 as i32);
    (sums, -dmin, mins)
}

unsafe fn q4_k<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockQ4K>(
        w,
        a,
        |b, ab| q45_k::<M>(ab, &b.scales, &b.qs, None, fp16(b.dmin)),
        |b| fp16(b.d),
    )
}

unsafe fn q5_k<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockQ5K>(
        w,
        a,
        |b, ab| q45_k::<M>(ab, &b.scales, &b.qs, Some(&b.qh), fp16(b.dmin)),
        |b| fp16(b.d),
    )
}

unsafe fn q6_k<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockQ6K>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for g in 0..2 {
                let ql = [load(b.ql.as_ptr().add(64 * g)), load(b.ql.as_ptr().add(64 * g + 32))];
                let qh = load(b.qh.as_ptr().add(32 * g));
                for j in 0..4 {
                    // q + 32, unsigned; the -32 goes to the group sums.
                    let low = bit_field(ql[j % 2], 4 * (j / 2) as u32, 0xF);
                    let high = _mm256_slli_epi16(bit_field(qh, 2 * j as u32, 3), 4);
                    let s = 8 * g + 2 * j;
                    let sc = scale_pair(b.scales[s] as i16, b.scales[s + 1] as i16);
                    let q = _mm256_or_si256(low, high);
                    sums = scaled_u8::<M>(sums, q, act(ab, 128 * g + 32 * j), sc);
                }
            }
            let offset = group_sums(ab, |g| b.scales[g] as i32);
            (sums, -32.0 * fp16(b.d), offset)
        },
        |b| fp16(b.d),
    )
}

unsafe fn iq4_xs<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq4Xs>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let q = iq4nl_lookup(nibbles32(b.qs.as_ptr().add(16 * ib)));
                let pairs = pairs_i8i8(q, act(ab, 32 * ib));
                sums = M::madd_i16(sums, pairs, _mm256_set1_epi16(b.scale(ib) as i16));
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d),
    )
}

/// Four packed 8-value grid rows (unsigned) as 32 bytes.
#[inline(always)]
unsafe fn grid_rows(rows: [u64; 4]) -> __m256i {
    _mm256_set_epi64x(rows[3] as i64, rows[2] as i64, rows[1] as i64, rows[0] as i64)
}

/// One 32-element span of an IQ2/IQ3 type: unsigned grid values, sign bits, scale pair.
#[inline(always)]
unsafe fn signed_grid_span<M: Madd>(
    acc: __m256i,
    grid: __m256i,
    signs: u32,
    x: __m256i,
    scales: __m256i,
) -> __m256i {
    M::madd_i16(acc, _mm256_maddubs_epi16(grid, apply_signs(x, signs)), scales)
}

/// Four 7-bit sign indices expanded to a u32 of sign bits.
#[inline(always)]
fn ksigns4(aux: u32) -> u32 {
    (0..4).fold(0, |s, k| {
        s | (KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize] as u32) << (8 * k)
    })
}

unsafe fn iq2_xxs<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq2Xxs>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let idx = &b.qs[8 * ib..8 * ib + 4];
                let aux = u32_le(&b.qs[8 * ib + 4..]);
                let grid = grid_rows(std::array::from_fn(|k| IQ2XXS_GRID[idx[k] as usize]));
                let sc = _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1);
                sums = signed_grid_span::<M>(sums, grid, ksigns4(aux), act(ab, 32 * ib), sc);
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d) * 0.125,
    )
}

unsafe fn iq2_xs<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq2Xs>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let q: [u16; 4] = std::array::from_fn(|k| u16_le(b.qs[4 * ib + k]));
                let grid = grid_rows(q.map(|q| IQ2XS_GRID[(q & 511) as usize]));
                let signs = (0..4).fold(0u32, |s, k| {
                    s | (KSIGNS_IQ2XS[(q[k] >> 9) as usize] as u32) << (8 * k)
                });
                let sc = b.scales[ib];
                let sc = scale_pair(2 * (sc & 0xF) as i16 + 1, 2 * (sc >> 4) as i16 + 1);
                sums = signed_grid_span::<M>(sums, grid, signs, act(ab, 32 * ib), sc);
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d) * 0.125,
    )
}

unsafe fn iq2_s<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq2S>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let qh = b.qh[ib] as usize;
                let grid = grid_rows(std::array::from_fn(|k| {
                    IQ2S_GRID[b.qs[4 * ib + k] as usize | (((qh >> (2 * k)) & 3) << 8)]
                }));
                let signs = u32_le(&b.signs[4 * ib..]);
                let sc = b.scales[ib];
                let sc = scale_pair(2 * (sc & 0xF) as i16 + 1, 2 * (sc >> 4) as i16 + 1);
                sums = signed_grid_span::<M>(sums, grid, signs, act(ab, 32 * ib), sc);
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d) * 0.125,
    )
}

/// Eight packed 4-value grid rows as 32 bytes.
#[inline(always)]
unsafe fn grid4_rows(rows: [u32; 8]) -> __m256i {
    _mm256_loadu_si256(rows.as_ptr() as *const __m256i)
}

unsafe fn iq3_xxs<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq3Xxs>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let idx = &b.qs[8 * ib..8 * ib + 8];
                let aux = u32_le(&b.scales_signs[4 * ib..]);
                let grid = grid4_rows(std::array::from_fn(|k| IQ3XXS_GRID[idx[k] as usize]));
                let sc = _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1);
                sums = signed_grid_span::<M>(sums, grid, ksigns4(aux), act(ab, 32 * ib), sc);
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d) * 0.25,
    )
}

unsafe fn iq3_s<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq3S>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let qh = b.qh[ib] as usize;
                let grid = grid4_rows(std::array::from_fn(|k| {
                    IQ3S_GRID[b.qs[8 * ib + k] as usize | (((qh >> k) & 1) << 8)]
                }));
                let signs = u32_le(&b.signs[4 * ib..]);
                let s = (b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF;
                let sc = _mm256_set1_epi16(2 * s as i16 + 1);
                sums = signed_grid_span::<M>(sums, grid, signs, act(ab, 32 * ib), sc);
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d),
    )
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

unsafe fn iq1_s<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq1S>(
        w,
        a,
        |b, ab| {
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let qh = u16_le(b.qh[ib]);
                let rows = std::array::from_fn(|k| {
                    IQ1S_GRID[b.qs[4 * ib + k] as usize | ((((qh >> (3 * k)) & 7) as usize) << 8)]
                });
                let q = iq1_quants(rows, [qh & 0x8000 != 0; 4]);
                let sc = _mm256_set1_epi16(2 * ((qh >> 12) & 7) as i16 + 1);
                sums = M::madd_i16(sums, pairs_i8i8(q, act(ab, 32 * ib)), sc);
            }
            (sums, 0.0, 0)
        },
        |b| fp16(b.d) * 0.125,
    )
}

unsafe fn iq1_m<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    dot_blocks_q8_k::<BlockIq1M>(
        w,
        a,
        |b, ab| {
            let sc = b.scales.map(u16_le);
            let mut sums = _mm256_setzero_si256();
            for ib in 0..8 {
                let h: [u8; 4] =
                    std::array::from_fn(|k| (b.qh[2 * ib + k / 2] >> (4 * (k % 2))) & 0xF);
                let rows = std::array::from_fn(|k| {
                    IQ1S_GRID[b.qs[4 * ib + k] as usize | (((h[k] & 7) as usize) << 8)]
                });
                let q = iq1_quants(rows, h.map(|h| h & 8 != 0));
                let ls = |s: usize| 2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) as i16 + 1;
                let scales = scale_pair(ls(2 * ib), ls(2 * ib + 1));
                sums = M::madd_i16(sums, pairs_i8i8(q, act(ab, 32 * ib)), scales);
            }
            (sums, 0.0, 0)
        },
        |b| b.d() * 0.125,
    )
}

// ---- float weights against f32 activations -------------------------------------------------

/// `load8(i)` gives weights 8i..8i+8 as floats; four accumulators hide FMA latency.
#[inline(always)]
unsafe fn dot_float(
    n: usize,
    a: &[u8],
    load8: impl Fn(usize) -> __m256,
    tail: impl Fn(usize) -> f32,
) -> f32 {
    let x = a.as_ptr() as *const f32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let n8 = n / 8;
    for i in 0..n8 {
        acc[i % 4] = _mm256_fmadd_ps(load8(i), _mm256_loadu_ps(x.add(8 * i)), acc[i % 4]);
    }
    let mut sum = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for j in 8 * n8..n {
        sum += tail(j) * std::ptr::read_unaligned(x.add(j));
    }
    sum
}

unsafe fn f32_<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    let p = w.as_ptr() as *const f32;
    dot_float(
        w.len() / 4,
        a,
        |i| _mm256_loadu_ps(p.add(8 * i)),
        |j| std::ptr::read_unaligned(p.add(j)),
    )
}

unsafe fn f16_<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    let p = w.as_ptr();
    dot_float(
        w.len() / 2,
        a,
        |i| _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * i) as *const __m128i)),
        |j| F16Le([w[2 * j], w[2 * j + 1]]).to_f32(),
    )
}

unsafe fn bf16_<M: Madd>(w: &[u8], a: &[u8]) -> f32 {
    let p = w.as_ptr();
    dot_float(
        w.len() / 2,
        a,
        |i| {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(16 * i) as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
        },
        |j| f32::from_bits((u16::from_le_bytes([w[2 * j], w[2 * j + 1]]) as u32) << 16),
    )
}

// ---- the two compiled tiers ----------------------------------------------------------------

macro_rules! tier {
    ($module:ident, $features:literal, $madd:ty) => {
        mod $module {
            use super::*;
            tier!(@entries $features, $madd,
                F32 => f32_, F16 => f16_, BF16 => bf16_,
                Q4_0 => q4_0, Q4_1 => q4_1, Q5_0 => q5_0, Q5_1 => q5_1, Q8_0 => q8_0,
                IQ4_NL => iq4_nl, Q2_K => q2_k, Q3_K => q3_k, Q4_K => q4_k, Q5_K => q5_k,
                Q6_K => q6_k, IQ2_XXS => iq2_xxs, IQ2_XS => iq2_xs, IQ2_S => iq2_s,
                IQ3_XXS => iq3_xxs, IQ3_S => iq3_s, IQ1_S => iq1_s, IQ1_M => iq1_m,
                IQ4_XS => iq4_xs);
        }
    };
    (@entries $features:literal, $madd:ty, $($ty:ident => $kernel:ident),*) => {
        $(
            #[target_feature(enable = $features)]
            unsafe fn $kernel(w: &[u8], a: &[u8]) -> f32 {
                super::$kernel::<$madd>(w, a)
            }
        )*
        pub(super) fn table(ty: GgmlType) -> Option<VecDotFn> {
            match ty {
                $(GgmlType::$ty => Some(|w, a| unsafe { $kernel(w, a) }),)*
                _ => None,
            }
        }
    };
}

tier!(avx2_tier, "avx2,fma,f16c", Avx2);
tier!(
    vnni_tier,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    Vnni
);

fn vnni_detected() -> bool {
    Isa::detected() >= Isa::Avx512 && is_x86_feature_detected!("avx512vnni")
}

/// The SIMD kernel for `ty` at or below `isa` (already capped at the detected tier).
pub(super) fn dot_fn(ty: GgmlType, isa: Isa) -> Option<(VecDotFn, Isa)> {
    if isa >= Isa::Avx512 && vnni_detected() {
        return vnni_tier::table(ty).map(|f| (f, Isa::Avx512));
    }
    if isa >= Isa::Avx2 {
        return avx2_tier::table(ty).map(|f| (f, Isa::Avx2));
    }
    None
}
