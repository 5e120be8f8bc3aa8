//! AVX-512 attention over an f16 or q8_0 cache, for the query heads of one KV head together: each K
//! and V row is read and converted once for all of them (GQA: 4 in Mixtral), where the
//! generic path calls a dot product per (query head, key) and an axpy per (query head, value).
//! Deep in a context (the seed runs `-c 16384`) these loops are most of a decoded token.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// Query heads handled per pass over the keys.
const HEADS_PER_PASS: usize = 4;
/// Largest head size of the fast path (8 vectors of 16 floats).
pub const MAX_HEAD_DIM: usize = 128;

/// How a cache row is read as floats, 16 at a time.
pub trait CacheRow {
    /// Floats `16 v .. 16 v + 16` of the head's row at `row`.
    unsafe fn load16(row: *const u8, v: usize) -> __m512;
}

/// f16 rows.
pub struct F16Row;
impl CacheRow for F16Row {
    #[inline(always)]
    unsafe fn load16(row: *const u8, v: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32 * v) as *const __m256i))
    }
}

/// q8_0 rows: blocks of an f16 scale and 32 signed bytes (two vectors per block).
pub struct Q8Row;
impl CacheRow for Q8Row {
    #[inline(always)]
    unsafe fn load16(row: *const u8, v: usize) -> __m512 {
        let block = row.add(34 * (v / 2));
        let d = _mm512_cvtph_ps(_mm256_set1_epi16((block as *const i16).read_unaligned()));
        let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(
            block.add(2 + 16 * (v % 2)) as *const __m128i
        ));
        _mm512_mul_ps(d, _mm512_cvtepi32_ps(q))
    }
}

pub fn usable(head_dim: usize) -> bool {
    head_dim.is_multiple_of(16)
        && head_dim <= MAX_HEAD_DIM
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("f16c")
}

/// `scores[j * n_keys + p] = scale * q_j . K_p` for the `group` query heads in `queries`
/// (`group` rows of `head_dim` floats); `key(p)` is position p's K row of this head.
/// Safety: `usable(head_dim)`.
#[target_feature(enable = "avx512f,f16c")]
pub unsafe fn scores<'a, R: CacheRow>(
    key: impl Fn(usize) -> &'a [u8],
    queries: &[f32],
    head_dim: usize,
    scale: f32,
    n_keys: usize,
    scores: &mut [f32],
) {
    let group = queries.len() / head_dim;
    let vecs = head_dim / 16;
    // The scaled queries stay in L1 (read as memory operands of the FMAs).
    let mut q = [0f32; HEADS_PER_PASS * MAX_HEAD_DIM];
    for j0 in (0..group).step_by(HEADS_PER_PASS) {
        let heads = (group - j0).min(HEADS_PER_PASS);
        for (d, &x) in q
            .iter_mut()
            .zip(&queries[j0 * head_dim..(j0 + heads) * head_dim])
        {
            *d = x * scale;
        }
        for p in 0..n_keys {
            let k = key(p).as_ptr();
            let mut acc = [_mm512_setzero_ps(); HEADS_PER_PASS];
            for v in 0..vecs {
                let kv = R::load16(k, v);
                for (j, a) in acc.iter_mut().enumerate().take(heads) {
                    let qv = _mm512_loadu_ps(q.as_ptr().add(j * head_dim + 16 * v));
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
            for (j, a) in acc.iter().enumerate().take(heads) {
                *scores.get_unchecked_mut((j0 + j) * n_keys + p) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// `out_j = sum_p weights[j * n_keys + p] * V_p` for every query head j of the group (`out`:
/// `group` rows of `head_dim`, overwritten); `value(p)` is position p's V row of this head.
/// Safety: `usable(head_dim)`.
#[target_feature(enable = "avx512f,f16c")]
pub unsafe fn weighted_values<'a, R: CacheRow>(
    value: impl Fn(usize) -> &'a [u8],
    weights: &[f32],
    head_dim: usize,
    n_keys: usize,
    out: &mut [f32],
) {
    let group = out.len() / head_dim;
    // Passes over 64 dimensions of 4 query heads: 16 accumulators in registers, and each V row
    // is read once in all.
    const VECS_PER_PASS: usize = 4;
    for j0 in (0..group).step_by(HEADS_PER_PASS) {
        let heads = (group - j0).min(HEADS_PER_PASS);
        for v0 in (0..head_dim / 16).step_by(VECS_PER_PASS) {
            let vecs = (head_dim / 16 - v0).min(VECS_PER_PASS);
            let mut acc = [[_mm512_setzero_ps(); VECS_PER_PASS]; HEADS_PER_PASS];
            for p in 0..n_keys {
                let v_row = value(p).as_ptr();
                for v in 0..vecs {
                    let vv = R::load16(v_row, v0 + v);
                    for (j, a) in acc.iter_mut().enumerate().take(heads) {
                        let w = _mm512_set1_ps(*weights.get_unchecked((j0 + j) * n_keys + p));
                        a[v] = _mm512_fmadd_ps(w, vv, a[v]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(heads) {
                for (v, x) in a.iter().enumerate().take(vecs) {
                    let at = (j0 + j) * head_dim + 16 * (v0 + v);
                    _mm512_storeu_ps(out.as_mut_ptr().add(at), *x);
                }
            }
        }
    }
}
