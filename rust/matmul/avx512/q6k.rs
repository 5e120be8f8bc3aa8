//! Q6_K rows unpacked into the batched product's panel with vector operations.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::quant::kquants::BlockQ6K;

/// Q6_K rows in the batched product's form: per 128 elements, four runs of 32 built from low
/// nibbles (`ql`) and 2-bit high parts (`qh`), minus 32; the 16 signed scales times `d`.
#[inline(always)]
pub(crate) unsafe fn q6_k_row(row: &[u8], q: &mut [u8], sd: &mut [f32], _m: &mut [f32]) {
    let blocks: &[BlockQ6K] = bytemuck::cast_slice(row);
    let low4 = _mm256_set1_epi8(0x0F);
    let two = _mm256_set1_epi8(0x03);
    let offset = _mm256_set1_epi8(32);
    for (b, block) in blocks.iter().enumerate() {
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(block.ql.as_ptr().add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(block.ql.as_ptr().add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(block.qh.as_ptr().add(32 * n) as *const __m256i);
            // High parts (qh >> 2j) & 3 moved to bits 4..6.
            let high = [
                _mm256_slli_epi16(_mm256_and_si256(qh, two), 4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4),
            ];
            let runs = [
                _mm256_or_si256(_mm256_and_si256(ql0, low4), high[0]),
                _mm256_or_si256(_mm256_and_si256(ql1, low4), high[1]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), high[2]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4), high[3]),
            ];
            for (j, run) in runs.iter().enumerate() {
                let at = 256 * b + 128 * n + 32 * j;
                let v = _mm256_sub_epi8(*run, offset);
                _mm256_storeu_si256(q.as_mut_ptr().add(at) as *mut __m256i, v);
            }
        }
        let scales = _mm512_cvtepi8_epi32(_mm_loadu_si128(block.scales.as_ptr() as *const __m128i));
        let d = _mm512_set1_ps(block.d.to_f32());
        _mm512_storeu_ps(
            sd.as_mut_ptr().add(16 * b),
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(scales)),
        );
    }
}
