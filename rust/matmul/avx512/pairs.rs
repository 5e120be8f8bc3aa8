//! The 32-element types against Q8_0, two blocks per 512-bit vector.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::{PREFETCH_BYTES, nibbles64};
use crate::matmul::unpack::Unpack32;
use crate::quant::block::F16Le;
use crate::quant::grids::KVALUES_IQ4NL;
use crate::quant::legacy::{BlockIq4Nl, BlockQ4_0, BlockQ4_1, BlockQ8_0};

/// A 32-element weight type: the i32 sums (8 lanes per block) of two blocks' quants times
/// their activations.
pub(crate) trait ZmmPair: bytemuck::Pod + Unpack32 {
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i;
    /// The two blocks' quants as 64 signed bytes in element order.
    unsafe fn pair_quants(w: &[Self; 2]) -> __m512i;
    /// One block's elements 0..16 and 16..32 as signed bytes.
    unsafe fn halves(&self) -> (__m128i, __m128i);

    /// Four rows' block `b` as the narrow product's lanes (see `narrow`): two vectors holding,
    /// in 128-bit lane r, row r's elements 0..16 and 16..32 as signed bytes plus 128.
    #[inline(always)]
    unsafe fn four_rows(rows: &[&[Self]; 4], b: usize) -> (__m512i, __m512i) {
        let mut lo = _mm512_setzero_si512();
        let mut hi = _mm512_setzero_si512();
        for (r, row) in rows.iter().enumerate() {
            let (l, h) = row[b].halves();
            lo = _mm512_mask_blend_epi32(0xF << (4 * r), lo, _mm512_broadcast_i32x4(l));
            hi = _mm512_mask_blend_epi32(0xF << (4 * r), hi, _mm512_broadcast_i32x4(h));
        }
        let flip = _mm512_set1_epi8(-128);
        (_mm512_xor_si512(lo, flip), _mm512_xor_si512(hi, flip))
    }
    fn d(&self) -> F16Le;
}

/// One block's 16 bytes of packed nibbles as its elements 0..16 (low nibbles) and 16..32.
#[inline(always)]
unsafe fn nibble_halves(qs: &[u8; 16]) -> (__m128i, __m128i) {
    let v = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    (
        _mm_and_si128(v, mask),
        _mm_and_si128(_mm_srli_epi16(v, 4), mask),
    )
}

/// Two blocks' 32 activations each as one vector.
#[inline(always)]
unsafe fn act_pair(a: &[BlockQ8_0; 2]) -> __m512i {
    let lo = _mm256_loadu_si256(a[0].qs.as_ptr() as *const __m256i);
    let hi = _mm256_loadu_si256(a[1].qs.as_ptr() as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Signed quants times signed activations: |q| against the activations negated where q < 0.
#[inline(always)]
unsafe fn signed_sums(q: __m512i, x: __m512i) -> __m512i {
    let negative = _mm512_movepi8_mask(q);
    let xs = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(q), xs)
}

impl ZmmPair for BlockQ4_0 {
    /// On whole vectors: the 4 rows' nibbles split at once, and the value's -8 and the
    /// lanes' +128 as one +120.
    #[inline(always)]
    unsafe fn four_rows(rows: &[&[Self]; 4], b: usize) -> (__m512i, __m512i) {
        let load = |r: usize| _mm_loadu_si128(rows[r][b].qs.as_ptr() as *const __m128i);
        let mut v = _mm512_castsi128_si512(load(0));
        v = _mm512_inserti32x4::<1>(v, load(1));
        v = _mm512_inserti32x4::<2>(v, load(2));
        v = _mm512_inserti32x4::<3>(v, load(3));
        let (mask, bias) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(120));
        let lo = _mm512_add_epi8(_mm512_and_si512(v, mask), bias);
        let hi = _mm512_add_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), mask), bias);
        (lo, hi)
    }
    #[inline(always)]
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i {
        // (q - 8) x = q x - 8 x: the unsigned nibbles go straight into vpdpbusd.
        let q = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles64(&w[0].qs, &w[1].qs), x);
        let eight = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), x);
        _mm512_sub_epi32(q, eight)
    }
    #[inline(always)]
    unsafe fn pair_quants(w: &[Self; 2]) -> __m512i {
        _mm512_sub_epi8(nibbles64(&w[0].qs, &w[1].qs), _mm512_set1_epi8(8))
    }
    #[inline(always)]
    unsafe fn halves(&self) -> (__m128i, __m128i) {
        let (lo, hi) = nibble_halves(&self.qs);
        let eight = _mm_set1_epi8(8);
        (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight))
    }
    fn d(&self) -> F16Le {
        self.d
    }
}

impl ZmmPair for BlockQ8_0 {
    #[inline(always)]
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i {
        signed_sums(act_pair(w), x)
    }
    #[inline(always)]
    unsafe fn pair_quants(w: &[Self; 2]) -> __m512i {
        act_pair(w)
    }
    #[inline(always)]
    unsafe fn halves(&self) -> (__m128i, __m128i) {
        let p = self.qs.as_ptr() as *const __m128i;
        (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)))
    }
    fn d(&self) -> F16Le {
        self.d
    }
}

impl ZmmPair for BlockIq4Nl {
    #[inline(always)]
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i {
        signed_sums(Self::pair_quants(w), x)
    }
    #[inline(always)]
    unsafe fn pair_quants(w: &[Self; 2]) -> __m512i {
        let table =
            _mm512_broadcast_i32x4(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
        _mm512_shuffle_epi8(table, nibbles64(&w[0].qs, &w[1].qs))
    }
    #[inline(always)]
    unsafe fn halves(&self) -> (__m128i, __m128i) {
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
        let (lo, hi) = nibble_halves(&self.qs);
        (_mm_shuffle_epi8(table, lo), _mm_shuffle_epi8(table, hi))
    }
    fn d(&self) -> F16Le {
        self.d
    }
}

#[inline(always)]
pub(crate) unsafe fn dot_pairs<B: ZmmPair>(w: &[u8], a: &[u8]) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let table = crate::matmul::avx2::f16_table();
    let scale = |wb: &B, ab: &BlockQ8_0| {
        table[u16::from_le_bytes(wb.d().0) as usize] * table[u16::from_le_bytes(ab.d.0) as usize]
    };
    let mut acc = _mm512_setzero_ps();
    let pairs = w.len() / 2;
    for i in 0..pairs {
        let (wp, ap): (&[B; 2], &[BlockQ8_0; 2]) = (
            w[2 * i..2 * i + 2].try_into().unwrap_unchecked(),
            a[2 * i..2 * i + 2].try_into().unwrap_unchecked(),
        );
        let p = (wp as *const [B; 2] as *const i8).wrapping_add(PREFETCH_BYTES);
        _mm_prefetch::<_MM_HINT_T0>(p);
        let sums = B::pair_sums(wp, act_pair(ap));
        let s = _mm512_mask_blend_ps(
            0xFF00,
            _mm512_set1_ps(scale(&wp[0], &ap[0])),
            _mm512_set1_ps(scale(&wp[1], &ap[1])),
        );
        acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(sums), acc);
    }
    let mut total = _mm512_reduce_add_ps(acc);
    if w.len() % 2 == 1 {
        // An odd last block: the reference arithmetic.
        let last = w.len() - 1;
        total += crate::matmul::scalar::dot_q8_0::<B>(
            bytemuck::bytes_of(&w[last]),
            bytemuck::bytes_of(&a[last]),
        );
    }
    total
}

/// Q4_1 (`w = d q + m`, q unsigned nibbles): per pair of blocks, the nibbles and a vector of
/// ones against the activations in two `vpdpbusd`, for `d sum(q x) + m sum(x)` per block
/// (the 256-bit kernels ran small dense models' Q4_1 decode at half Q4_K's speed).
#[inline(always)]
pub(crate) unsafe fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let w: &[BlockQ4_1] = bytemuck::cast_slice(w);
    let a: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let table = crate::matmul::avx2::f16_table();
    let f = |h: F16Le| table[u16::from_le_bytes(h.0) as usize];
    let mut acc = _mm512_setzero_ps();
    let pairs = w.len() / 2;
    for i in 0..pairs {
        let (wp, ap): (&[BlockQ4_1; 2], &[BlockQ8_0; 2]) = (
            w[2 * i..2 * i + 2].try_into().unwrap_unchecked(),
            a[2 * i..2 * i + 2].try_into().unwrap_unchecked(),
        );
        let p = (wp as *const [BlockQ4_1; 2] as *const i8).wrapping_add(PREFETCH_BYTES);
        _mm_prefetch::<_MM_HINT_T0>(p);
        let x = act_pair(ap);
        let zero = _mm512_setzero_si512();
        let qx = _mm512_dpbusd_epi32(zero, nibbles64(&wp[0].qs, &wp[1].qs), x);
        let sx = _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(1), x);
        let (a0, a1) = (f(ap[0].d), f(ap[1].d));
        let d = _mm512_mask_blend_ps(
            0xFF00,
            _mm512_set1_ps(f(wp[0].d) * a0),
            _mm512_set1_ps(f(wp[1].d) * a1),
        );
        let m = _mm512_mask_blend_ps(
            0xFF00,
            _mm512_set1_ps(f(wp[0].m) * a0),
            _mm512_set1_ps(f(wp[1].m) * a1),
        );
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(qx), acc);
        acc = _mm512_fmadd_ps(m, _mm512_cvtepi32_ps(sx), acc);
    }
    let mut total = _mm512_reduce_add_ps(acc);
    if w.len() % 2 == 1 {
        // An odd last block: the reference arithmetic.
        let last = w.len() - 1;
        total += crate::matmul::scalar::dot_q8_0::<BlockQ4_1>(
            bytemuck::bytes_of(&w[last]),
            bytemuck::bytes_of(&a[last]),
        );
    }
    total
}

/// One weight row in the batched product's form (see `gemm`): each pair of blocks' quants as
/// 64 signed bytes in element order, per block its scale; no offsets.
#[inline(always)]
pub(crate) unsafe fn unpack_row_pairs<B: ZmmPair>(
    row: &[u8],
    q: &mut [u8],
    sd: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    let pairs = blocks.len() / 2;
    for i in 0..pairs {
        let wp: &[B; 2] = blocks[2 * i..2 * i + 2].try_into().unwrap_unchecked();
        _mm512_storeu_si512(
            q.as_mut_ptr().add(64 * i) as *mut __m512i,
            B::pair_quants(wp),
        );
        sd[2 * i] = wp[0].d().to_f32();
        sd[2 * i + 1] = wp[1].d().to_f32();
    }
    if blocks.len() % 2 == 1 {
        // An odd last block: the portable unpacker.
        let last = blocks.len() - 1;
        let u = blocks[last].unpack();
        for (d, &v) in q[32 * last..32 * last + 32].iter_mut().zip(&u.q) {
            *d = v as u8;
        }
        sd[last] = u.d;
    }
    m[..blocks.len()].fill(0.0);
}

/// The narrow product's form of 4 rows of a 32-element type, unpacked and interleaved in one
/// pass: `q[quad][row][4]` = value + 128, per block `sd[block][row]` = d (no offsets: `m`
/// is left alone). Rows from `valid` on get zero scales.
#[inline(always)]
pub(crate) unsafe fn lanes_pairs<B: ZmmPair>(
    rows: [&[u8]; 4],
    valid: usize,
    q: &mut [u8],
    sd: &mut [f32],
    _m: &mut [f32],
) {
    let rows: [&[B]; 4] = rows.map(|r| bytemuck::cast_slice(r));
    // Dword r * 4 + k (row r's quad k) goes to k * 4 + r.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for b in 0..rows[0].len() {
        let (lo, hi) = B::four_rows(&rows, b);
        let out = q.as_mut_ptr().add(128 * b) as *mut __m512i;
        _mm512_storeu_si512(out, _mm512_permutexvar_epi32(idx, lo));
        _mm512_storeu_si512(out.add(1), _mm512_permutexvar_epi32(idx, hi));
        let bits: [u16; 4] = std::array::from_fn(|r| u16::from_le_bytes(rows[r][b].d().0));
        let d = _mm_maskz_mov_ps(
            (1u8 << valid) - 1,
            _mm_cvtph_ps(_mm_loadl_epi64(bits.as_ptr() as *const __m128i)),
        );
        _mm_storeu_ps(sd.as_mut_ptr().add(4 * b), d);
    }
}
