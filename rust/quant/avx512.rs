//! AVX-512 dequantization for the types where 16-lane conversion measurably beats AVX2
//! (see benches/bench_dequant.py): the plain and nibble layouts. Same operation order as the
//! reference, so bit-identical; checked by `tests.rs` like every tier.
//!
//! Safety: `dequant_fn` is only called by the dispatcher after AVX-512 F/BW/VL and F16C were
//! detected.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::DequantFn;
use super::grids::KVALUES_IQ4NL;
use super::iquants::BlockIq4Xs;
use super::kquants::{BlockQ4K, k4_scale_min};
use super::legacy::{BlockQ4_0, BlockQ8_0};
use crate::gguf::GgmlType;

/// `scale * q` for 16 signed bytes.
#[inline(always)]
unsafe fn store16(out: *mut f32, q: __m128i, scale: __m512) {
    _mm512_storeu_ps(
        out,
        _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))),
    );
}

/// `scale * q - min` for 16 signed bytes.
#[inline(always)]
unsafe fn store16_sub(out: *mut f32, q: __m128i, scale: __m512, min: __m512) {
    let y = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
    _mm512_storeu_ps(out, _mm512_sub_ps(y, min));
}

/// The 16 low nibbles and the 16 high nibbles of 16 bytes.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> (__m128i, __m128i) {
    let bytes = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    (
        _mm_and_si128(bytes, mask),
        _mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn f16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(
            o.add(i),
            _mm512_cvtph_ps(_mm256_loadu_si256(s.add(2 * i) as *const __m256i)),
        );
        i += 16;
    }
    super::reference_fn(GgmlType::F16).expect("F16 has a reference")(&src[2 * i..], &mut dst[i..]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q8_0(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ8_0] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(b.d.to_f32());
        let p = b.qs.as_ptr() as *const __m128i;
        store16(out.as_mut_ptr(), _mm_loadu_si128(p), d);
        store16(out.as_mut_ptr().add(16), _mm_loadu_si128(p.add(1)), d);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q4_0(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4_0] = bytemuck::cast_slice(src);
    let eight = _mm_set1_epi8(8);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(b.d.to_f32());
        let (lo, hi) = nibbles(b.qs.as_ptr());
        store16(out.as_mut_ptr(), _mm_sub_epi8(lo, eight), d);
        store16(out.as_mut_ptr().add(16), _mm_sub_epi8(hi, eight), d);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q4_k(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4K] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for g in 0..4 {
            // 32 bytes hold sub-block 2g (low nibbles) and 2g + 1 (high nibbles).
            let (lo0, hi0) = nibbles(b.qs.as_ptr().add(32 * g));
            let (lo1, hi1) = nibbles(b.qs.as_ptr().add(32 * g + 16));
            for (h, (first, second)) in [(lo0, lo1), (hi0, hi1)].into_iter().enumerate() {
                let (sc, m) = k4_scale_min(&b.scales, 2 * g + h);
                let (dl, ml) = (
                    _mm512_set1_ps(d * sc as f32),
                    _mm512_set1_ps(dmin * m as f32),
                );
                let o = out.as_mut_ptr().add(64 * g + 32 * h);
                store16_sub(o, first, dl, ml);
                store16_sub(o.add(16), second, dl, ml);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn iq4_xs(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq4Xs] = bytemuck::cast_slice(src);
    let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for ib in 0..8 {
            let dl = _mm512_set1_ps(d * b.scale(ib) as f32);
            let (lo, hi) = nibbles(b.qs.as_ptr().add(16 * ib));
            let o = out.as_mut_ptr().add(32 * ib);
            store16(o, _mm_shuffle_epi8(table, lo), dl);
            store16(o.add(16), _mm_shuffle_epi8(table, hi), dl);
        }
    }
}

/// The AVX-512 kernel for `ty`, if there is one. Call only when AVX-512 F/BW/VL are present.
pub(super) fn dequant_fn(ty: GgmlType) -> Option<DequantFn> {
    Some(match ty {
        GgmlType::F16 => |s, d| unsafe { f16(s, d) },
        GgmlType::Q8_0 => |s, d| unsafe { q8_0(s, d) },
        GgmlType::Q4_0 => |s, d| unsafe { q4_0(s, d) },
        GgmlType::Q4_K => |s, d| unsafe { q4_k(s, d) },
        GgmlType::IQ4_XS => |s, d| unsafe { iq4_xs(s, d) },
        _ => return None,
    })
}
