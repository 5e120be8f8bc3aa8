//! AVX2 (+F16C) dequantization. Every kernel performs the same float operations in the same
//! order as the reference in `Block::dequantize` (multiply, then add or subtract; never a fused
//! multiply-add), so results are bit-identical; `tests` in `dequant.rs` check each against it.
//!
//! Safety: the functions here are `#[target_feature]`; the type table (`crate::kernels`) hands out
//! safe wrappers only where the CPU was found to support AVX2 and F16C.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::block::{F16Le, u16_le, u32_le};
use super::grids::*;
use super::iquants::*;
use super::kquants::*;
use super::legacy::*;

/// 8 signed bytes (the low half of `q`) to 8 floats.
#[inline(always)]
unsafe fn i8x8_to_f32(q: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
}

/// Writes `scale * q` (or `scale * q + offset` when OFFSET) for 16 signed bytes.
#[inline(always)]
unsafe fn store16<const OFFSET: bool>(out: *mut f32, q: __m128i, scale: __m256, offset: __m256) {
    let halves = [q, _mm_srli_si128(q, 8)];
    for (h, part) in halves.into_iter().enumerate() {
        let mut y = _mm256_mul_ps(scale, i8x8_to_f32(part));
        if OFFSET {
            y = _mm256_add_ps(y, offset);
        }
        _mm256_storeu_ps(out.add(8 * h), y);
    }
}

/// Writes 32 elements: the first 16 with (scale0, offset0), the next 16 with (scale1, offset1).
#[inline(always)]
unsafe fn store32<const OFFSET: bool>(
    out: *mut f32,
    q: __m256i,
    scales: [f32; 2],
    offsets: [f32; 2],
) {
    store16::<OFFSET>(
        out,
        _mm256_castsi256_si128(q),
        _mm256_set1_ps(scales[0]),
        _mm256_set1_ps(offsets[0]),
    );
    store16::<OFFSET>(
        out.add(16),
        _mm256_extracti128_si256(q, 1),
        _mm256_set1_ps(scales[1]),
        _mm256_set1_ps(offsets[1]),
    );
}

/// Low nibbles of 16 bytes in the low lane, high nibbles in the high lane: a 4-bit block's
/// 32 elements in order.
#[inline(always)]
pub(crate) unsafe fn nibbles32(qs: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(bytes, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// Byte i of the result is 0xFF where bit i of `bits` is set.
#[inline(always)]
pub(crate) unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(
            0,
            0x0101010101010101,
            0x0202020202020202,
            0x0303030303030303,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q4_0(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4_0] = bytemuck::cast_slice(src);
    let eight = _mm256_set1_epi8(8);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let q = _mm256_sub_epi8(nibbles32(b.qs.as_ptr()), eight);
        let d = b.d.to_f32();
        store32::<false>(out.as_mut_ptr(), q, [d, d], [0.0; 2]);
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q4_1(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4_1] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        store32::<true>(out.as_mut_ptr(), nibbles32(b.qs.as_ptr()), [d, d], [m, m]);
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q5_0(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ5_0] = bytemuck::cast_slice(src);
    let (bit4, sixteen) = (_mm256_set1_epi8(0x10), _mm256_set1_epi8(16));
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let high = _mm256_and_si256(bits_to_bytes(u32::from_le_bytes(b.qh)), bit4);
        let q = _mm256_sub_epi8(_mm256_or_si256(nibbles32(b.qs.as_ptr()), high), sixteen);
        let d = b.d.to_f32();
        store32::<false>(out.as_mut_ptr(), q, [d, d], [0.0; 2]);
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q5_1(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ5_1] = bytemuck::cast_slice(src);
    let bit4 = _mm256_set1_epi8(0x10);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let high = _mm256_and_si256(bits_to_bytes(u32::from_le_bytes(b.qh)), bit4);
        let q = _mm256_or_si256(nibbles32(b.qs.as_ptr()), high);
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        store32::<true>(out.as_mut_ptr(), q, [d, d], [m, m]);
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q8_0(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ8_0] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let q = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
        let d = b.d.to_f32();
        store32::<false>(out.as_mut_ptr(), q, [d, d], [0.0; 2]);
    }
}

/// Looks up 32 4-bit indices in the IQ4_NL codebook.
#[inline(always)]
pub(crate) unsafe fn iq4nl_lookup(idx: __m256i) -> __m256i {
    let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    _mm256_shuffle_epi8(_mm256_set_m128i(table, table), idx)
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq4_nl(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq4Nl] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(32)) {
        let d = b.d.to_f32();
        store32::<false>(
            out.as_mut_ptr(),
            iq4nl_lookup(nibbles32(b.qs.as_ptr())),
            [d, d],
            [0.0; 2],
        );
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq4_xs(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq4Xs] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for ib in 0..8 {
            let dl = d * b.scale(ib) as f32;
            let q = iq4nl_lookup(nibbles32(b.qs.as_ptr().add(16 * ib)));
            store32::<false>(out.as_mut_ptr().add(32 * ib), q, [dl, dl], [0.0; 2]);
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q2_k(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ2K] = bytemuck::cast_slice(src);
    let three = _mm256_set1_epi8(3);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for g in 0..2 {
            let qs = _mm256_loadu_si256(b.qs.as_ptr().add(32 * g) as *const __m256i);
            for j in 0..4 {
                let q =
                    _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32)), three);
                let s = 8 * g + 2 * j;
                let (s0, s1) = (b.scales[s], b.scales[s + 1]);
                let scales = [d * (s0 & 0xF) as f32, d * (s1 & 0xF) as f32];
                let mins = [dmin * (s0 >> 4) as f32, dmin * (s1 >> 4) as f32];
                store32_sub(out.as_mut_ptr().add(128 * g + 32 * j), q, scales, mins);
            }
        }
    }
}

/// Like `store32` but computes `scale * q - min` (Q2_K, Q4_K, Q5_K).
#[inline(always)]
unsafe fn store32_sub(out: *mut f32, q: __m256i, scales: [f32; 2], mins: [f32; 2]) {
    let halves = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
    for (h, half) in halves.into_iter().enumerate() {
        let (s, m) = (_mm256_set1_ps(scales[h]), _mm256_set1_ps(mins[h]));
        for (p, part) in [half, _mm_srli_si128(half, 8)].into_iter().enumerate() {
            let y = _mm256_sub_ps(_mm256_mul_ps(s, i8x8_to_f32(part)), m);
            _mm256_storeu_ps(out.add(16 * h + 8 * p), y);
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q3_k(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ3K] = bytemuck::cast_slice(src);
    let (three, four) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        let hmask = _mm256_loadu_si256(b.hmask.as_ptr() as *const __m256i);
        for g in 0..2 {
            let qs = _mm256_loadu_si256(b.qs.as_ptr().add(32 * g) as *const __m256i);
            for j in 0..4 {
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32)), three);
                let bit = _mm256_set1_epi8(1 << (4 * g + j));
                let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), _mm256_setzero_si256());
                let q = _mm256_sub_epi8(low, _mm256_and_si256(clear, four));
                let s = 8 * g + 2 * j;
                let scales = [
                    d * q3k_scale(&b.scales, s) as f32,
                    d * q3k_scale(&b.scales, s + 1) as f32,
                ];
                store32::<false>(out.as_mut_ptr().add(128 * g + 32 * j), q, scales, [0.0; 2]);
            }
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q4_k(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ4K] = bytemuck::cast_slice(src);
    q45_k(
        blocks.iter().map(|b| (b.d, b.dmin, &b.scales, &b.qs, None)),
        dst,
    )
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q5_k(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ5K] = bytemuck::cast_slice(src);
    q45_k(
        blocks
            .iter()
            .map(|b| (b.d, b.dmin, &b.scales, &b.qs, Some(&b.qh))),
        dst,
    )
}

type Q45Parts<'a> = (
    F16Le,
    F16Le,
    &'a [u8; 12],
    &'a [u8; 128],
    Option<&'a [u8; 32]>,
);

/// Q4_K and Q5_K share scales, mins and nibble order; Q5_K adds a fifth bit from `qh`.
#[inline(always)]
unsafe fn q45_k<'a>(blocks: impl Iterator<Item = Q45Parts<'a>>, dst: &mut [f32]) {
    let (mask, bit4) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
    for ((d, dmin, scales, qs, qh), out) in blocks.zip(dst.chunks_exact_mut(256)) {
        let (d, dmin) = (d.to_f32(), dmin.to_f32());
        let qh = qh.map(|h| _mm256_loadu_si256(h.as_ptr() as *const __m256i));
        for g in 0..4 {
            let bytes = _mm256_loadu_si256(qs.as_ptr().add(32 * g) as *const __m256i);
            for h in 0..2 {
                let sub = 2 * g + h;
                let mut q = _mm256_and_si256(
                    _mm256_srl_epi16(bytes, _mm_cvtsi32_si128(4 * h as i32)),
                    mask,
                );
                if let Some(qh) = qh {
                    let bit = _mm256_set1_epi8(1 << sub);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    q = _mm256_or_si256(q, _mm256_and_si256(set, bit4));
                }
                let (sc, m) = k4_scale_min(scales, sub);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                store32_sub(out.as_mut_ptr().add(32 * sub), q, [dl, dl], [ml, ml]);
            }
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn q6_k(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockQ6K] = bytemuck::cast_slice(src);
    let (mask4, mask2, off) = (
        _mm256_set1_epi8(0x0F),
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(32),
    );
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for g in 0..2 {
            let qh = _mm256_loadu_si256(b.qh.as_ptr().add(32 * g) as *const __m256i);
            for j in 0..4 {
                let ql =
                    _mm256_loadu_si256(b.ql.as_ptr().add(64 * g + 32 * (j % 2)) as *const __m256i);
                let low = _mm256_and_si256(
                    _mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (j / 2) as i32)),
                    mask4,
                );
                let high =
                    _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32)), mask2);
                let q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), off);
                let s = 8 * g + 2 * j;
                let scales = [d * b.scales[s] as f32, d * b.scales[s + 1] as f32];
                store32::<false>(out.as_mut_ptr().add(128 * g + 32 * j), q, scales, [0.0; 2]);
            }
        }
    }
}

/// Sign flip mask: lane k is -0.0 (only the sign bit) where bit k of `signs` is set.
#[inline(always)]
unsafe fn sign_mask8(signs: u8) -> __m256 {
    let select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let set = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32(signs as i32), select),
        select,
    );
    _mm256_castsi256_ps(_mm256_and_si256(set, _mm256_set1_epi32(i32::MIN)))
}

/// `db * grid * (+-1)` for 8 unsigned grid bytes: the multiply by -1 of the reference is an exact
/// sign flip, done here with xor.
#[inline(always)]
unsafe fn store_signed_grid8(out: *mut f32, db: __m256, row: u64, signs: u8) {
    let g = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(row as i64)));
    _mm256_storeu_ps(out, _mm256_xor_ps(_mm256_mul_ps(db, g), sign_mask8(signs)));
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq2_xxs(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq2Xxs] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for ib in 0..8 {
            let aux = u32_le(&b.qs[8 * ib + 4..]);
            let db = _mm256_set1_ps(d * (0.5 + (aux >> 28) as f32) * 0.25);
            for k in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize];
                let row = IQ2XXS_GRID[b.qs[8 * ib + k] as usize];
                store_signed_grid8(out.as_mut_ptr().add(32 * ib + 8 * k), db, row, signs);
            }
        }
    }
}

#[inline(always)]
fn nibble(bytes: &[u8], i: usize) -> u8 {
    (bytes[i / 2] >> (4 * (i % 2))) & 0xF
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq2_xs(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq2Xs] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for e in 0..32 {
            let q = u16_le(b.qs[e]);
            let db = _mm256_set1_ps(d * (0.5 + nibble(&b.scales, e / 2) as f32) * 0.25);
            let row = IQ2XS_GRID[(q & 511) as usize];
            store_signed_grid8(
                out.as_mut_ptr().add(8 * e),
                db,
                row,
                KSIGNS_IQ2XS[(q >> 9) as usize],
            );
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq2_s(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq2S] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for e in 0..32 {
            let high = ((b.qh[e / 4] >> (2 * (e % 4))) & 3) as usize;
            let db = _mm256_set1_ps(d * (0.5 + nibble(&b.scales, e / 2) as f32) * 0.25);
            let row = IQ2S_GRID[b.qs[e] as usize | (high << 8)];
            store_signed_grid8(out.as_mut_ptr().add(8 * e), db, row, b.signs[e]);
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq3_xxs(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq3Xxs] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for ib in 0..8 {
            let aux = u32_le(&b.scales_signs[4 * ib..]);
            let db = _mm256_set1_ps(d * (0.5 + (aux >> 28) as f32) * 0.5);
            for k in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize];
                let q = &b.qs[8 * ib + 2 * k..];
                let row =
                    IQ3XXS_GRID[q[0] as usize] as u64 | ((IQ3XXS_GRID[q[1] as usize] as u64) << 32);
                store_signed_grid8(out.as_mut_ptr().add(32 * ib + 8 * k), db, row, signs);
            }
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq3_s(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq3S] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        let index = |g: usize| b.qs[g] as usize | ((((b.qh[g / 8] >> (g % 8)) & 1) as usize) << 8);
        for e in 0..32 {
            let db = _mm256_set1_ps(d * (1 + 2 * nibble(&b.scales, e / 4)) as f32);
            let row = IQ3S_GRID[index(2 * e)] as u64 | ((IQ3S_GRID[index(2 * e + 1)] as u64) << 32);
            store_signed_grid8(out.as_mut_ptr().add(8 * e), db, row, b.signs[e]);
        }
    }
}

/// `dl * (grid + delta)` for 8 signed ternary grid bytes.
#[inline(always)]
unsafe fn store_iq1_grid8(out: *mut f32, dl: __m256, row: u64, delta: __m256) {
    let g = i8x8_to_f32(_mm_cvtsi64_si128(row as i64));
    _mm256_storeu_ps(out, _mm256_mul_ps(dl, _mm256_add_ps(g, delta)));
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq1_s(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq1S] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d.to_f32();
        for ib in 0..8 {
            let qh = u16_le(b.qh[ib]);
            let dl = _mm256_set1_ps(d * (2 * ((qh >> 12) & 7) + 1) as f32);
            let delta = _mm256_set1_ps(if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            });
            for k in 0..4 {
                let idx = b.qs[4 * ib + k] as usize | ((((qh >> (3 * k)) & 7) as usize) << 8);
                store_iq1_grid8(
                    out.as_mut_ptr().add(32 * ib + 8 * k),
                    dl,
                    IQ1S_GRID[idx],
                    delta,
                );
            }
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn iq1_m(src: &[u8], dst: &mut [f32]) {
    let blocks: &[BlockIq1M] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(256)) {
        let d = b.d();
        let sc = b.scales.map(u16_le);
        for e in 0..32 {
            let s = e / 2;
            let dl = _mm256_set1_ps(d * (2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) + 1) as f32);
            let h = (b.qh[e / 2] >> (4 * (e % 2))) & 0xF;
            let delta = _mm256_set1_ps(if h & 8 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA });
            let idx = b.qs[e] as usize | (((h & 7) as usize) << 8);
            store_iq1_grid8(out.as_mut_ptr().add(8 * e), dl, IQ1S_GRID[idx], delta);
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn f16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            o.add(i),
            _mm256_cvtph_ps(_mm_loadu_si128(s.add(2 * i) as *const __m128i)),
        );
        i += 8;
    }
    for j in i..n {
        *o.add(j) = F16Le([src[2 * j], src[2 * j + 1]]).to_f32();
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn bf16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(s.add(2 * i) as *const __m128i));
        _mm256_storeu_ps(o.add(i), _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
        i += 8;
    }
    for j in i..n {
        *o.add(j) = f32::from_bits((u16::from_le_bytes([src[2 * j], src[2 * j + 1]]) as u32) << 16);
    }
}
