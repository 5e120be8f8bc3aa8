//! The 32-element types against Q8_0, two blocks per 512-bit vector.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::{PREFETCH_BYTES, nibbles64};
use crate::matmul::unpack::Unpack32;
use crate::quant::block::F16Le;
use crate::quant::grids::KVALUES_IQ4NL;
use crate::quant::legacy::{BlockIq4Nl, BlockQ4_0, BlockQ8_0};

/// A 32-element weight type: the i32 sums (8 lanes per block) of two blocks' quants times
/// their activations.
pub(super) trait ZmmPair: bytemuck::Pod + Unpack32 {
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i;
    fn d(&self) -> F16Le;
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
    #[inline(always)]
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i {
        // (q - 8) x = q x - 8 x: the unsigned nibbles go straight into vpdpbusd.
        let q = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles64(&w[0].qs, &w[1].qs), x);
        let eight = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), x);
        _mm512_sub_epi32(q, eight)
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
    fn d(&self) -> F16Le {
        self.d
    }
}

impl ZmmPair for BlockIq4Nl {
    #[inline(always)]
    unsafe fn pair_sums(w: &[Self; 2], x: __m512i) -> __m512i {
        let table =
            _mm512_broadcast_i32x4(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
        let q = _mm512_shuffle_epi8(table, nibbles64(&w[0].qs, &w[1].qs));
        signed_sums(q, x)
    }
    fn d(&self) -> F16Le {
        self.d
    }
}

#[inline(always)]
pub(super) unsafe fn dot_pairs<B: ZmmPair>(w: &[u8], a: &[u8]) -> f32 {
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
