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
pub(crate) struct Spans {
    q: [__m512i; 4],
    signs: [u64; 4],
    groups: __m256i,
}

/// A 256-element codebook super-block in the 512-bit kernels.
pub(crate) trait ZmmBlock: bytemuck::Pod {
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
pub(crate) unsafe fn unpack_row<B: ZmmBlock, const G: usize>(
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
pub(crate) unsafe fn dot<B: ZmmBlock>(w: &[u8], a: &[u8]) -> f32 {
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
pub(crate) unsafe fn dot_many<B: ZmmBlock>(w: &[u8], a: &[u8], out: &mut [f32]) {
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
        // The 32 index bytes, in order: byte 8 (r / 4) + r % 4 of the words.
        static IDX: [u8; 64] = {
            let mut t = [0u8; 64];
            let mut r = 0;
            while r < 32 {
                t[r] = (8 * (r / 4) + r % 4) as u8;
                r += 1;
            }
            t
        };
        let idx = _mm512_permutexvar_epi8(load_table(&IDX), words);
        let signs = packed_signs(aux);
        let groups = groups_from_u32(odd(_mm256_srli_epi32(aux, 28)));
        Spans {
            q: rows8_from_codes(&IQ2XXS_CODES, idx, 0, 0),
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
        let (idx, bit8) = index_bytes(qs);
        // 7 sign bits per u16, parity as the 8th, narrowed to one byte per 8 elements.
        let s7 = _mm512_srli_epi16(qs, 9);
        let parity = _mm512_and_si512(_mm512_popcnt_epi16(s7), _mm512_set1_epi16(1));
        let s8 = _mm512_or_si512(s7, _mm512_slli_epi16(parity, 7));
        let signs: [u64; 4] = std::mem::transmute(_mm512_cvtepi16_epi8(s8));
        let groups = odd_nibble_scales(&self.scales);
        Spans {
            q: rows8_from_codes(&IQ2XS_CODES, idx, bit8, 0),
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
        let idx16 = _mm512_or_si512(low, _mm512_slli_epi16(high, 8));
        let (idx, bit8) = index_bytes(idx16);
        let bit9 = _mm512_test_epi16_mask(idx16, _mm512_set1_epi16(0x200)) as u64;
        let signs: [u64; 4] =
            std::mem::transmute(_mm256_loadu_si256(self.signs.as_ptr() as *const __m256i));
        let groups = odd_nibble_scales(&self.scales);
        Spans {
            q: rows8_from_codes(&IQ2S_CODES, idx, bit8, bit9),
            signs,
            groups,
        }
    }
    #[inline(always)]
    unsafe fn scale(&self) -> f32 {
        fp16(self.d) * 0.125
    }
}

/// The IQ2 grids' 8-value rows hold only 8, 25 and 43: a row is a 16-bit code of 2-bit levels,
/// kept as two byte planes (low and high code bytes) for lookups by byte.
const fn codes<const N: usize>(grid: &[u64; N]) -> [[u8; N]; 2] {
    let mut planes = [[0u8; N]; 2];
    let mut i = 0;
    while i < N {
        let mut code = 0u16;
        let mut k = 0;
        while k < 8 {
            let level = match (grid[i] >> (8 * k)) as u8 {
                8 => 0,
                25 => 1,
                43 => 2,
                _ => panic!("an IQ2 grid value other than 8, 25, 43"),
            };
            code |= level << (2 * k);
            k += 1;
        }
        planes[0][i] = code as u8;
        planes[1][i] = (code >> 8) as u8;
        i += 1;
    }
    planes
}

static IQ2XXS_CODES: [[u8; 256]; 2] = codes(&IQ2XXS_GRID);
static IQ2XS_CODES: [[u8; 512]; 2] = codes(&IQ2XS_GRID);
static IQ2S_CODES: [[u8; 1024]; 2] = codes(&IQ2S_GRID);

/// The 8-value rows of 32 indices (low bytes `idx` in lanes 0..32, ninth and tenth bits as
/// masks), as four spans of 8 rows, from the 16-bit codes: two byte lookups, the bytes paired
/// into codes, and each code's 2-bit levels spread over a row's 8 bytes (`vpmultishiftqb`)
/// and mapped to 8/25/43. Replaces four 8-row gathers (one load per element on AMD's cores).
#[inline(always)]
unsafe fn rows8_from_codes<const N: usize>(
    codes: &[[u8; N]; 2],
    idx: __m512i,
    bit8: u64,
    bit9: u64,
) -> [__m512i; 4] {
    let lo = lookup::<N>(codes[0].as_ptr(), idx, bit8, bit9);
    let hi = lookup::<N>(codes[1].as_ptr(), idx, bit8, bit9);
    static PAIR: [u8; 64] = {
        let mut t = [0u8; 64];
        let mut r = 0;
        while r < 32 {
            t[2 * r] = r as u8;
            t[2 * r + 1] = 64 + r as u8;
            r += 1;
        }
        t
    };
    let words = _mm512_permutex2var_epi8(lo, load_table(&PAIR), hi);
    // Not closures: a closure would not take on the caller's target features.
    [
        code_rows(_mm512_castsi512_si128(words)),
        code_rows(_mm512_extracti32x4_epi32::<1>(words)),
        code_rows(_mm512_extracti32x4_epi32::<2>(words)),
        code_rows(_mm512_extracti32x4_epi32::<3>(words)),
    ]
}

/// 32 u16 indices as their low bytes (lanes 0..32) and their ninth bits.
#[inline(always)]
unsafe fn index_bytes(idx16: __m512i) -> (__m512i, u64) {
    let bytes = _mm512_zextsi256_si512(_mm512_cvtepi16_epi8(idx16));
    (
        bytes,
        _mm512_test_epi16_mask(idx16, _mm512_set1_epi16(0x100)) as u64,
    )
}

/// Eight 16-bit codes as eight 8-value rows.
#[inline(always)]
unsafe fn code_rows(codes: __m128i) -> __m512i {
    static VALUES: [u8; 16] = [8, 25, 43, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let values = _mm512_broadcast_i32x4(_mm_loadu_si128(VALUES.as_ptr() as *const __m128i));
    // Byte j of each row: bits 2j.. of its code.
    let shifts = _mm512_set1_epi64(0x0E0C_0A08_0604_0200);
    let levels = _mm512_multishift_epi64_epi8(shifts, _mm512_cvtepu16_epi64(codes));
    _mm512_shuffle_epi8(values, _mm512_and_si512(levels, _mm512_set1_epi8(3)))
}

/// Byte `j` of every row of a 4-byte grid, as four planes (for lookups by byte, below).
const fn planes<const N: usize>(grid: &[u32; N]) -> [[u8; N]; 4] {
    let mut planes = [[0u8; N]; 4];
    let mut i = 0;
    while i < N {
        let mut j = 0;
        while j < 4 {
            planes[j][i] = (grid[i] >> (8 * j)) as u8;
            j += 1;
        }
        i += 1;
    }
    planes
}

static IQ3XXS_PLANES: [[u8; 256]; 4] = planes(&IQ3XXS_GRID);
static IQ3S_PLANES: [[u8; 512]; 4] = planes(&IQ3S_GRID);

/// Byte `i` of a 256-entry table at byte indices `idx` (`high`: their top bits).
#[inline(always)]
unsafe fn lookup256(t: *const u8, idx: __m512i, high: u64) -> __m512i {
    let t = t as *const __m512i;
    let lo = _mm512_permutex2var_epi8(_mm512_loadu_si512(t), idx, _mm512_loadu_si512(t.add(1)));
    let hi = _mm512_permutex2var_epi8(
        _mm512_loadu_si512(t.add(2)),
        idx,
        _mm512_loadu_si512(t.add(3)),
    );
    _mm512_mask_blend_epi8(high, lo, hi)
}

/// The 4-byte grid rows of 64 byte indices, as four spans of 16 rows in index order. Each
/// byte of a row comes from a 256-byte plane by two `vpermi2b` (indices below and above 128)
/// and a blend on the index's top bit; the planes are then interleaved into rows. On AMD's
/// cores this is several times faster than the four 16-row gathers it replaces (a gather is
/// one load per element there: 3.5x the IQ3_XXS decode without them).
/// Byte `i` of an `N`-entry table (256, 512 or 1024) for indices given as their low bytes
/// `idx` and, per byte lane, their ninth and tenth bits.
#[inline(always)]
unsafe fn lookup<const N: usize>(t: *const u8, idx: __m512i, bit8: u64, bit9: u64) -> __m512i {
    let high = _mm512_movepi8_mask(idx);
    let mut v = lookup256(t, idx, high);
    if N >= 512 {
        v = _mm512_mask_blend_epi8(bit8, v, lookup256(t.add(256), idx, high));
    }
    if N == 1024 {
        let w = lookup256(t.add(512), idx, high);
        let w = _mm512_mask_blend_epi8(bit8, w, lookup256(t.add(768), idx, high));
        v = _mm512_mask_blend_epi8(bit9, v, w);
    }
    v
}

/// `N` is 256 or 512 rows; for 512, `bit8` holds each index's ninth bit.
#[inline(always)]
unsafe fn rows4_from_planes<const N: usize>(
    planes: &[[u8; N]; 4],
    idx: __m512i,
    bit8: u64,
) -> [__m512i; 4] {
    // A loop, not array::from_fn: a closure would not take on the caller's target features.
    let mut p = [_mm512_setzero_si512(); 4];
    for (j, plane) in p.iter_mut().enumerate() {
        *plane = lookup::<N>(planes[j].as_ptr(), idx, bit8, 0);
    }
    // Per 128-bit lane L: t0/t1 pair bytes 0,1 (rows 16L..+8 / +8..+16), t2/t3 bytes 2,3;
    // u_k then holds rows 16L + 4k .. +4 whole in lane L.
    let (t0, t1) = (
        _mm512_unpacklo_epi8(p[0], p[1]),
        _mm512_unpackhi_epi8(p[0], p[1]),
    );
    let (t2, t3) = (
        _mm512_unpacklo_epi8(p[2], p[3]),
        _mm512_unpackhi_epi8(p[2], p[3]),
    );
    let u = [
        _mm512_unpacklo_epi16(t0, t2),
        _mm512_unpackhi_epi16(t0, t2),
        _mm512_unpacklo_epi16(t1, t3),
        _mm512_unpackhi_epi16(t1, t3),
    ];
    // Span c is lane c of u0..u3: a 4 x 4 transpose of 128-bit lanes.
    let a = _mm512_shuffle_i64x2::<0b01_00_01_00>(u[0], u[1]);
    let b = _mm512_shuffle_i64x2::<0b01_00_01_00>(u[2], u[3]);
    let c = _mm512_shuffle_i64x2::<0b11_10_11_10>(u[0], u[1]);
    let d = _mm512_shuffle_i64x2::<0b11_10_11_10>(u[2], u[3]);
    [
        _mm512_shuffle_i64x2::<0b10_00_10_00>(a, b),
        _mm512_shuffle_i64x2::<0b11_01_11_01>(a, b),
        _mm512_shuffle_i64x2::<0b10_00_10_00>(c, d),
        _mm512_shuffle_i64x2::<0b11_01_11_01>(c, d),
    ]
}

impl ZmmBlock for BlockIq3Xxs {
    #[inline(always)]
    unsafe fn spans(&self) -> Spans {
        let aux = _mm256_loadu_si256(self.scales_signs.as_ptr() as *const __m256i);
        let signs = packed_signs(aux);
        let groups = groups_from_u32(odd(_mm256_srli_epi32(aux, 28)));
        let idx = _mm512_loadu_si512(self.qs.as_ptr() as *const __m512i);
        let q = rows4_from_planes(&IQ3XXS_PLANES, idx, 0);
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
        // Index i's ninth bit is bit i of qh.
        let idx = _mm512_loadu_si512(self.qs.as_ptr() as *const __m512i);
        let q = rows4_from_planes(&IQ3S_PLANES, idx, u64::from_le_bytes(self.qh));
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
