//! The codebook types (IQ1, IQ2, IQ3) and IQ4_XS taken apart with vector operations: one
//! `Spans` per super-block serves both the decode dot product and the batched product's panel.

#![allow(unsafe_op_in_unsafe_fn)]
// Spans index several per-span arrays (indices, signs, activations) with one counter.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::super::MAX_DOT_TOKENS;
use super::{PREFETCH_BYTES, fp16, load_table, nibbles64};
use crate::quant::grids::*;
use crate::quant::iquants::*;
use crate::quant::kquants::BlockQ8K;

/// A super-block taken apart into four 64-element spans: unsigned values `q`, negated where the
/// span's `signs` has a bit (IQ2/IQ3), and 16 per-16-element group scales in i16 lanes.
pub(super) struct Spans {
    q: [__m512i; 4],
    signs: [u64; 4],
    groups: __m256i,
}

/// A 256-element codebook super-block in the 512-bit kernels.
pub(super) trait ZmmBlock: bytemuck::Pod {
    /// What `q` holds beyond the value where signs are not used (IQ1 stores value + 9 so that
    /// it is unsigned); 0 for the types whose signs are in `Spans::signs`.
    const OFFSET: i16 = 0;
    unsafe fn spans(&self) -> Spans;
    /// The float factor of the integer sums (before the activation's scale).
    unsafe fn scale(&self) -> f32;
}

/// i32 lanes whose total is the super-block's integer dot product with `ab`.
#[inline(always)]
unsafe fn block_dot<B: ZmmBlock>(wb: &B, ab: &BlockQ8K) -> __m512i {
    spans_dot::<B>(&wb.spans(), ab)
}

/// As `block_dot`, from the super-block already taken apart.
#[inline(always)]
unsafe fn spans_dot<B: ZmmBlock>(s: &Spans, ab: &BlockQ8K) -> __m512i {
    let mut acc = _mm512_setzero_si512();
    for c in 0..4 {
        let scales = span_scales(s.groups, c);
        acc = if B::OFFSET == 0 {
            signed_span(acc, s.q[c], s.signs[c], act64(ab, c), scales)
        } else {
            _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(s.q[c], act64(ab, c)), scales)
        };
    }
    if B::OFFSET != 0 {
        // Take the offset back: OFFSET * sum over groups of scale * (group's activation sum).
        let bsums = _mm256_loadu_si256(ab.bsums.as_ptr() as *const __m256i);
        let scaled = _mm256_mullo_epi16(s.groups, _mm256_set1_epi16(B::OFFSET));
        acc = _mm512_sub_epi32(
            acc,
            _mm512_zextsi256_si512(_mm256_madd_epi16(bsums, scaled)),
        );
    }
    acc
}

/// One weight row in the batched product's form (see `gemm`): per element the value as a signed
/// byte, per group of `G` (16 or 32) elements the float scale `sd`. The codebook types have no
/// group offsets: `m` is left alone.
#[inline(always)]
pub(super) unsafe fn unpack_row<B: ZmmBlock, const G: usize>(
    row: &[u8],
    q: &mut [u8],
    sd: &mut [f32],
    _m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    for (b, block) in blocks.iter().enumerate() {
        let s = block.spans();
        for k in 0..4 {
            let v = if B::OFFSET == 0 {
                _mm512_mask_sub_epi8(s.q[k], s.signs[k], _mm512_setzero_si512(), s.q[k])
            } else {
                _mm512_sub_epi8(s.q[k], _mm512_set1_epi8(B::OFFSET as i8))
            };
            _mm512_storeu_si512(q.as_mut_ptr().add(256 * b + 64 * k) as *mut __m512i, v);
        }
        let g = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(s.groups));
        let g = _mm512_mul_ps(g, _mm512_set1_ps(block.scale()));
        if G == 16 {
            _mm512_storeu_ps(sd.as_mut_ptr().add(16 * b), g);
        } else {
            // Groups of 32: the two halves share a scale.
            let even = _mm512_maskz_compress_ps(0x5555, g);
            _mm256_storeu_ps(sd.as_mut_ptr().add(8 * b), _mm512_castps512_ps256(even));
        }
    }
}

#[inline(always)]
pub(super) unsafe fn dot<B: ZmmBlock>(w: &[u8], a: &[u8]) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8K] = bytemuck::cast_slice(a);
    let mut acc = _mm512_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let p = (wb as *const B as *const i8).wrapping_add(PREFETCH_BYTES);
        for line in 0..std::mem::size_of::<B>().div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line));
        }
        let factor = _mm512_set1_ps(wb.scale() * f32::from_le_bytes(ab.d));
        acc = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(block_dot(wb, ab)), acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// `out[t] = dot(w, a_t)` for the `out.len()` (at most `MAX_DOT_TOKENS`) activation rows
/// back to back in `a`: each super-block is taken apart once for all of them. Each token's
/// sums run in `dot`'s order, so its result is `dot`'s, bit for bit.
#[inline(always)]
pub(super) unsafe fn dot_many<B: ZmmBlock>(w: &[u8], a: &[u8], out: &mut [f32]) {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8K] = bytemuck::cast_slice(a);
    let (n, per_row) = (out.len(), w.len());
    let mut acc = [_mm512_setzero_ps(); MAX_DOT_TOKENS];
    for (b, wb) in w.iter().enumerate() {
        let p = (wb as *const B as *const i8).wrapping_add(PREFETCH_BYTES);
        for line in 0..std::mem::size_of::<B>().div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line));
        }
        let s = wb.spans();
        let scale = wb.scale();
        for (t, acc) in acc.iter_mut().enumerate().take(n) {
            let ab = &a[t * per_row + b];
            let factor = _mm512_set1_ps(scale * f32::from_le_bytes(ab.d));
            *acc = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(spans_dot::<B>(&s, ab)), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(acc);
    }
}

/// The 64 activations of span `c` (0..4) of a super-block.
#[inline(always)]
unsafe fn act64(ab: &BlockQ8K, c: usize) -> __m512i {
    _mm512_loadu_si512(ab.qs.as_ptr().add(64 * c) as *const __m512i)
}

/// i16 lane patterns for `vpermw`: span c's 32 lanes take per-16 scale `4c + lane / 8` from a
/// vector of 16 group scales (one per 16 elements, in element order).
static SPAN_GROUPS: [[u16; 32]; 4] = {
    let mut t = [[0u16; 32]; 4];
    let mut c = 0;
    while c < 4 {
        let mut i = 0;
        while i < 32 {
            t[c][i] = (4 * c + i / 8) as u16;
            i += 1;
        }
        c += 1;
    }
    t
};

/// Span c's per-16 scales as i16 lanes (4 lanes of 8), from the 16 group scales.
#[inline(always)]
unsafe fn span_scales(groups: __m256i, c: usize) -> __m512i {
    _mm512_permutexvar_epi16(load_table(&SPAN_GROUPS[c]), _mm512_castsi256_si512(groups))
}

/// Eight per-32 scales (u32 lanes) as 16 per-16 group scales (i16 lanes).
#[inline(always)]
unsafe fn groups_from_u32(s: __m256i) -> __m256i {
    static DUP: [u16; 16] = [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14];
    _mm256_permutexvar_epi16(_mm256_loadu_si256(DUP.as_ptr() as *const __m256i), s)
}

/// Sixteen 4-bit scales (low nibble first) from 8 bytes, as `2 s + 1` in i16 lanes.
#[inline(always)]
unsafe fn odd_nibble_scales(bytes: &[u8; 8]) -> __m256i {
    let b = _mm_loadl_epi64(bytes.as_ptr() as *const __m128i);
    let lo = _mm_and_si128(b, _mm_set1_epi8(0xF));
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0xF));
    let s = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(lo, hi));
    _mm256_add_epi16(_mm256_add_epi16(s, s), _mm256_set1_epi16(1))
}

/// `2 s + 1` for i32 lanes `s`.
#[inline(always)]
unsafe fn odd(s: __m256i) -> __m256i {
    _mm256_add_epi32(_mm256_add_epi32(s, s), _mm256_set1_epi32(1))
}

/// Seven-bit sign fields with their parity as the eighth bit (the sign rule of IQ2/IQ3).
#[inline(always)]
unsafe fn with_parity(s7: __m256i) -> __m256i {
    let parity = _mm256_and_si256(_mm256_popcnt_epi8(s7), _mm256_set1_epi8(1));
    _mm256_or_si256(s7, _mm256_slli_epi16(parity, 7))
}

/// Sign masks of the four 64-element spans from eight u32 words holding four 7-bit sign fields
/// each (bits 0..28, as IQ2_XXS and IQ3_XXS store them).
#[inline(always)]
unsafe fn packed_signs(aux: __m256i) -> [u64; 4] {
    // Each u64 lane holds two words (two 32-element groups): fields at bits 0,7,14,21,32,...
    let fields = _mm256_set1_epi64x(0x352E_2720_150E_0700);
    let s7 = _mm256_and_si256(
        _mm256_multishift_epi64_epi8(fields, aux),
        _mm256_set1_epi8(0x7F),
    );
    std::mem::transmute(with_parity(s7))
}

impl ZmmBlock for BlockIq4Xs {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        // |value| by table, the sign from the index (the table is sorted: 0..8 negative).
        static ABS: [u8; 16] = {
            let mut t = [0u8; 16];
            let mut i = 0;
            while i < 16 {
                t[i] = KVALUES_IQ4NL[i].unsigned_abs();
                i += 1;
            }
            t
        };
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(ABS.as_ptr() as *const __m128i));
        let mut q = [_mm512_setzero_si512(); 4];
        let mut signs = [0u64; 4];
        for c in 0..4 {
            let (lo, hi) = self.qs[32 * c..32 * c + 32].split_at(16);
            let nib = nibbles64(
                lo.try_into().unwrap_unchecked(),
                hi.try_into().unwrap_unchecked(),
            );
            q[c] = _mm512_shuffle_epi8(table, nib);
            signs[c] = _mm512_testn_epi8_mask(nib, _mm512_set1_epi8(8));
        }
        // Eight 6-bit scales: low nibbles from scales_l, two high bits each from scales_h;
        // minus 32, then one per 16 elements.
        let l = _mm_cvtsi32_si128(u32::from_le_bytes(self.scales_l) as i32);
        let low = _mm_unpacklo_epi8(
            _mm_and_si128(l, _mm_set1_epi8(0xF)),
            _mm_and_si128(_mm_srli_epi16(l, 4), _mm_set1_epi8(0xF)),
        );
        let h = _mm_set1_epi16(u16::from_le_bytes(self.scales_h) as i16);
        let high = _mm_and_si128(
            _mm_srlv_epi16(h, _mm_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14)),
            _mm_set1_epi16(3),
        );
        let s8 = _mm_sub_epi16(
            _mm_or_si128(_mm_cvtepu8_epi16(low), _mm_slli_epi16(high, 4)),
            _mm_set1_epi16(32),
        );
        static DUP: [u16; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];
        let groups = _mm256_permutexvar_epi16(
            _mm256_loadu_si256(DUP.as_ptr() as *const __m256i),
            _mm256_castsi128_si256(s8),
        );
        Spans { q, signs, groups }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

/// One 64-element span: unsigned values `q` against activations negated where `signs` has a
/// bit, the pair sums scaled per i16 lane.
#[inline(always)]
unsafe fn signed_span(
    acc: __m512i,
    q: __m512i,
    signs: u64,
    x: __m512i,
    scales: __m512i,
) -> __m512i {
    let xs = _mm512_mask_sub_epi8(x, signs, _mm512_setzero_si512(), x);
    _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q, xs), scales)
}

/// Eight 8-value grid rows at i32 indices `idx`.
#[inline(always)]
unsafe fn gather8(grid: &[u64], idx: __m256i) -> __m512i {
    _mm512_i32gather_epi64::<8>(idx, grid.as_ptr() as *const i64)
}

/// The four spans' 8-value grid rows at indices `idx`.
#[inline(always)]
unsafe fn gather_spans(grid: &[u64], idx: [__m256i; 4]) -> [__m512i; 4] {
    [
        gather8(grid, idx[0]),
        gather8(grid, idx[1]),
        gather8(grid, idx[2]),
        gather8(grid, idx[3]),
    ]
}

/// Sixteen 4-value grid rows at i32 indices `idx`.
#[inline(always)]
unsafe fn gather16(grid: &[u32], idx: __m512i) -> __m512i {
    _mm512_i32gather_epi32::<4>(idx, grid.as_ptr() as *const i32)
}

/// The i32 indices of 32 8-value rows given as u16 lanes: spans 0..4 of 8 each.
#[inline(always)]
unsafe fn span_indices(idx16: __m512i) -> [__m256i; 4] {
    let lo = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(idx16));
    let hi = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(idx16));
    [
        _mm512_castsi512_si256(lo),
        _mm512_extracti64x4_epi64::<1>(lo),
        _mm512_castsi512_si256(hi),
        _mm512_extracti64x4_epi64::<1>(hi),
    ]
}

impl ZmmBlock for BlockIq2Xxs {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        // 16 words: even ones hold 4 grid indices, odd ones 4 sign fields and the scale.
        let words = _mm512_loadu_si512(self.qs.as_ptr() as *const __m512i);
        static ODD: [u32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0];
        let aux = _mm512_castsi512_si256(_mm512_permutexvar_epi32(load_table(&ODD), words));
        // Index bytes to i32 lanes: lane j of the 32 takes byte 8 (j / 4) + j % 4.
        static IDX: [u8; 64] = {
            let mut t = [0u8; 64];
            let mut j = 0;
            while j < 16 {
                t[4 * j] = (8 * (j / 4) + j % 4) as u8;
                j += 1;
            }
            t
        };
        static IDX_HI: [u8; 64] = {
            let mut t = [0u8; 64];
            let mut j = 0;
            while j < 16 {
                t[4 * j] = (32 + 8 * (j / 4) + j % 4) as u8;
                j += 1;
            }
            t
        };
        let every4 = 0x1111_1111_1111_1111u64;
        let lo = _mm512_maskz_permutexvar_epi8(every4, load_table(&IDX), words);
        let hi = _mm512_maskz_permutexvar_epi8(every4, load_table(&IDX_HI), words);
        let idx = [
            _mm512_castsi512_si256(lo),
            _mm512_extracti64x4_epi64::<1>(lo),
            _mm512_castsi512_si256(hi),
            _mm512_extracti64x4_epi64::<1>(hi),
        ];
        let signs = packed_signs(aux);
        let groups = groups_from_u32(odd(_mm256_srli_epi32(aux, 28)));
        Spans {
            q: gather_spans(&IQ2XXS_GRID, idx),
            signs,
            groups,
        }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl ZmmBlock for BlockIq2Xs {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        let qs = _mm512_loadu_si512(self.qs.as_ptr() as *const __m512i);
        let idx = span_indices(_mm512_and_si512(qs, _mm512_set1_epi16(511)));
        // 7 sign bits per u16, parity as the 8th, narrowed to one byte per 8 elements.
        let s7 = _mm512_srli_epi16(qs, 9);
        let parity = _mm512_and_si512(_mm512_popcnt_epi16(s7), _mm512_set1_epi16(1));
        let s8 = _mm512_or_si512(s7, _mm512_slli_epi16(parity, 7));
        let signs: [u64; 4] = std::mem::transmute(_mm512_cvtepi16_epi8(s8));
        let groups = odd_nibble_scales(&self.scales);
        Spans {
            q: gather_spans(&IQ2XS_GRID, idx),
            signs,
            groups,
        }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

/// u16 lanes `e` (0..32) holding byte `bytes[e / per]` (bytes of a 16-byte vector).
#[inline(always)]
unsafe fn spread_bytes(bytes: __m128i, per: usize) -> __m512i {
    static SPREAD: [[u8; 64]; 3] = {
        let mut t = [[0u8; 64]; 3];
        let mut k = 0;
        while k < 3 {
            let per = [2, 4, 8][k];
            let mut e = 0;
            while e < 32 {
                t[k][2 * e] = (e / per) as u8;
                e += 1;
            }
            k += 1;
        }
        t
    };
    let table = match per {
        2 => &SPREAD[0],
        4 => &SPREAD[1],
        _ => &SPREAD[2],
    };
    let every2 = 0x5555_5555_5555_5555u64;
    _mm512_maskz_permutexvar_epi8(every2, load_table(table), _mm512_castsi128_si512(bytes))
}

/// Per-u16-lane shift counts `step * (e % period)`.
const fn lane_shift_table(step: u16, period: usize) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut e = 0;
    while e < 32 {
        t[e] = step * (e % period) as u16;
        e += 1;
    }
    t
}
static SHIFT_2_BY_4: [u16; 32] = lane_shift_table(2, 4);
static SHIFT_3_BY_4: [u16; 32] = lane_shift_table(3, 4);
static SHIFT_4_BY_2: [u16; 32] = lane_shift_table(4, 2);

impl ZmmBlock for BlockIq2S {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        // Index e = qs[e] | bits 2 (e % 4).. of qh[e / 4] << 8.
        let low = _mm512_cvtepu8_epi16(_mm256_loadu_si256(self.qs.as_ptr() as *const __m256i));
        let qh = spread_bytes(_mm_loadl_epi64(self.qh.as_ptr() as *const __m128i), 4);
        let high = _mm512_and_si512(
            _mm512_srlv_epi16(qh, load_table(&SHIFT_2_BY_4)),
            _mm512_set1_epi16(3),
        );
        let idx = span_indices(_mm512_or_si512(low, _mm512_slli_epi16(high, 8)));
        let signs: [u64; 4] =
            std::mem::transmute(_mm256_loadu_si256(self.signs.as_ptr() as *const __m256i));
        let groups = odd_nibble_scales(&self.scales);
        Spans {
            q: gather_spans(&IQ2S_GRID, idx),
            signs,
            groups,
        }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl ZmmBlock for BlockIq3Xxs {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        let aux = _mm256_loadu_si256(self.scales_signs.as_ptr() as *const __m256i);
        let signs = packed_signs(aux);
        let groups = groups_from_u32(odd(_mm256_srli_epi32(aux, 28)));
        let mut q = [_mm512_setzero_si512(); 4];
        for c in 0..4 {
            let idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                self.qs.as_ptr().add(16 * c) as *const __m128i
            ));
            q[c] = gather16(&IQ3XXS_GRID, idx);
        }
        Spans { q, signs, groups }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.25
    }
}

impl ZmmBlock for BlockIq3S {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        let signs: [u64; 4] =
            std::mem::transmute(_mm256_loadu_si256(self.signs.as_ptr() as *const __m256i));
        // Eight 4-bit scales, one per 32 elements.
        let packed = _mm256_set1_epi32(u32::from_le_bytes(self.scales) as i32);
        let s = _mm256_and_si256(
            _mm256_srlv_epi32(packed, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
            _mm256_set1_epi32(0xF),
        );
        let groups = groups_from_u32(odd(s));
        let mut q = [_mm512_setzero_si512(); 4];
        for c in 0..4 {
            let low = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                self.qs.as_ptr().add(16 * c) as *const __m128i
            ));
            let high = u16::from_le_bytes([self.qh[2 * c], self.qh[2 * c + 1]]);
            let idx = _mm512_mask_or_epi32(low, high, low, _mm512_set1_epi32(256));
            q[c] = gather16(&IQ3S_GRID, idx);
        }
        Spans { q, signs, groups }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d)
    }
}

/// IQ1's values `8 g + shift` (g in -1..=1, shift +-1) made unsigned: `8 (g + 1) + shift + 1`,
/// which is the value plus 9. `positive` has a bit per grid row whose shift is +1.
#[inline(always)]
unsafe fn iq1_unsigned(rows: __m512i, positive: u8) -> __m512i {
    let g1 = _mm512_add_epi8(rows, _mm512_set1_epi8(1));
    // g + 1 <= 2, so a 16-bit shift moves no bit across bytes.
    let g8 = _mm512_slli_epi16(g1, 3);
    _mm512_add_epi8(g8, _mm512_maskz_mov_epi64(positive, _mm512_set1_epi8(2)))
}

/// Spans' grid rows at indices `qs[e] | high[e] << 8` (high in u16 lanes, 3 bits).
#[inline(always)]
unsafe fn iq1_indices(qs: &[u8; 32], high: __m512i) -> [__m256i; 4] {
    let low = _mm512_cvtepu8_epi16(_mm256_loadu_si256(qs.as_ptr() as *const __m256i));
    let high = _mm512_and_si512(high, _mm512_set1_epi16(7));
    span_indices(_mm512_or_si512(low, _mm512_slli_epi16(high, 8)))
}

impl ZmmBlock for BlockIq1S {
    const OFFSET: i16 = 9;
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        // qh[ib]: three index bits per row (bits 0..12), the scale (12..15), the shift sign (15).
        let qh = _mm_loadu_si128(self.qh.as_ptr() as *const __m128i);
        static QH_WORDS: [u16; 32] = {
            let mut t = [0u16; 32];
            let mut e = 0;
            while e < 32 {
                t[e] = (e / 4) as u16;
                e += 1;
            }
            t
        };
        let per_row = _mm512_permutexvar_epi16(load_table(&QH_WORDS), _mm512_castsi128_si512(qh));
        let idx = iq1_indices(
            &self.qs,
            _mm512_srlv_epi16(per_row, load_table(&SHIFT_3_BY_4)),
        );
        let words = _mm256_cvtepu16_epi32(qh);
        let groups = groups_from_u32(odd(_mm256_and_si256(
            _mm256_srli_epi32(words, 12),
            _mm256_set1_epi32(7),
        )));
        // One bit per group of 32 whose shift is +1, then one per row.
        let negative = _mm_movepi16_mask(qh) as u32;
        let mut q = [_mm512_setzero_si512(); 4];
        for c in 0..4 {
            let pair = !(negative >> (2 * c));
            let positive =
                (if pair & 1 != 0 { 0x0F } else { 0 }) | (if pair & 2 != 0 { 0xF0 } else { 0 });
            q[c] = iq1_unsigned(gather8(&IQ1S_GRID, idx[c]), positive);
        }
        Spans {
            q,
            signs: [0; 4],
            groups,
        }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

impl ZmmBlock for BlockIq1M {
    const OFFSET: i16 = 9;
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        // One nibble per row: three index bits and the shift sign.
        let qh = spread_bytes(_mm_loadu_si128(self.qh.as_ptr() as *const __m128i), 2);
        let nib = _mm512_srlv_epi16(qh, load_table(&SHIFT_4_BY_2));
        let idx = iq1_indices(&self.qs, nib);
        let negative = _mm512_test_epi16_mask(nib, _mm512_set1_epi16(8));
        // Sixteen 3-bit scales, four in the low 12 bits of each of the 4 scale words.
        let sc = _mm_loadl_epi64(self.scales.as_ptr() as *const __m128i);
        static WORDS: [u16; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
        let per_group = _mm256_permutexvar_epi16(
            _mm256_loadu_si256(WORDS.as_ptr() as *const __m256i),
            _mm256_castsi128_si256(sc),
        );
        let shifts = _mm256_setr_epi16(0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9);
        let s = _mm256_and_si256(_mm256_srlv_epi16(per_group, shifts), _mm256_set1_epi16(7));
        let groups = _mm256_add_epi16(_mm256_add_epi16(s, s), _mm256_set1_epi16(1));
        let mut q = [_mm512_setzero_si512(); 4];
        for c in 0..4 {
            let positive = !((negative >> (8 * c)) as u8);
            q[c] = iq1_unsigned(gather8(&IQ1S_GRID, idx[c]), positive);
        }
        Spans {
            q,
            signs: [0; 4],
            groups,
        }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        self.d() * 0.125
    }
}
