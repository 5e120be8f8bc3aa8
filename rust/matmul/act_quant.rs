//! Activations to Q8_0 / Q8_K with AVX-512, bit-identical to the reference quantizers
//! (`quant::quantize`): every product quantizes its input first, and the scalar versions call
//! libm's `rint` per element (a tenth of a prefill's time went there).
//!
//! Q8_0: `d = amax / 127`, `q = round(x / d)` (halves away from zero), d stored as f16.
//! Q8_K: `iscale = -127 / x_max` (x_max the signed extreme, the first on ties),
//! `q = min(rint(iscale * x), 127)`, `d = 1 / iscale`, with the sums of each 16 quants.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::gguf::GgmlType;
use crate::quant::block::F16Le;
use crate::quant::kquants::BlockQ8K;
use crate::quant::legacy::BlockQ8_0;

pub fn detected() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// Appends `x`'s blocks of `ty` (Q8_0 or Q8_K) to `out`; false for any other type. Safety:
/// `detected()`; `x` holds whole blocks.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> bool {
    match ty {
        GgmlType::Q8_0 => {
            for chunk in x.chunks_exact(32) {
                out.extend_from_slice(bytemuck::bytes_of(&q8_0(chunk)));
            }
        }
        GgmlType::Q8_K => {
            for chunk in x.chunks_exact(256) {
                out.extend_from_slice(bytemuck::bytes_of(&q8_k(chunk)));
            }
        }
        _ => return false,
    }
    true
}

/// `round` (halves away from zero) in every lane: truncate, then step away where the dropped
/// fraction is at least one half (exact: the fraction of a float is exact).
#[inline(always)]
unsafe fn round_away(v: __m512) -> __m512 {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let frac = _mm512_sub_ps(v, t);
    // +-1 with v's sign (integer operations: the float ones need AVX-512 DQ).
    let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
    let sign_one = _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_set1_epi32(0x3F80_0000)));
    let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(frac), _mm512_set1_ps(0.5));
    _mm512_mask_add_ps(t, away, t, sign_one)
}

#[inline(always)]
unsafe fn q8_0(x: &[f32]) -> BlockQ8_0 {
    let v = [
        _mm512_loadu_ps(x.as_ptr()),
        _mm512_loadu_ps(x.as_ptr().add(16)),
    ];
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    let d = amax / 127.0;
    let id = if d != 0.0 && (1.0 / d).is_finite() {
        1.0 / d
    } else {
        0.0
    };
    let mut qs = [0i8; 32];
    for (h, v) in v.iter().enumerate() {
        let q = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(*v, _mm512_set1_ps(id))));
        _mm_storeu_si128(
            qs.as_mut_ptr().add(16 * h) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
    }
    BlockQ8_0 {
        d: F16Le::from_f32(d),
        qs,
    }
}

#[inline(always)]
unsafe fn q8_k(x: &[f32]) -> BlockQ8K {
    let mut v = [_mm512_setzero_ps(); 16];
    for (i, vi) in v.iter_mut().enumerate() {
        *vi = _mm512_loadu_ps(x.as_ptr().add(16 * i));
    }
    let mut m = _mm512_abs_ps(v[0]);
    for vi in &v[1..] {
        m = _mm512_max_ps(m, _mm512_abs_ps(*vi));
    }
    let amax = _mm512_reduce_max_ps(m);
    if amax == 0.0 {
        return BlockQ8K {
            d: 0f32.to_le_bytes(),
            qs: [0; 256],
            bsums: [[0; 2]; 16],
        };
    }
    // The first element of that magnitude gives the sign.
    let mut first = amax;
    for (i, vi) in v.iter().enumerate() {
        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(*vi), _mm512_set1_ps(amax));
        if hit != 0 {
            first = x[16 * i + hit.trailing_zeros() as usize];
            break;
        }
    }
    let iscale = -127.0 / first;
    let mut qs = [0i8; 256];
    let mut bsums = [[0u8; 2]; 16];
    for (g, vi) in v.iter().enumerate() {
        let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(_mm512_set1_ps(iscale), *vi),
        );
        let q = _mm512_cvttps_epi32(_mm512_min_ps(r, _mm512_set1_ps(127.0)));
        _mm_storeu_si128(
            qs.as_mut_ptr().add(16 * g) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
        bsums[g] = (_mm512_reduce_add_epi32(q) as i16).to_le_bytes();
    }
    BlockQ8K {
        d: (1.0 / iscale).to_le_bytes(),
        qs,
        bsums,
    }
}
