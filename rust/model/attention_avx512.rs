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

/// Rows ahead of the current one that are prefetched: a row's loads otherwise wait on memory
/// (measured: half the time of the scores at 4096 cached positions).
const AHEAD: usize = 8;

#[inline(always)]
unsafe fn prefetch_row(row: &[u8]) {
    for line in (0..row.len()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(line) as *const i8);
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
            if p + AHEAD < n_keys {
                prefetch_row(key(p + AHEAD));
            }
            let mut acc = [_mm512_setzero_ps(); HEADS_PER_PASS];
            for v in 0..vecs {
                let kv = R::load16(k, v);
                for (j, a) in acc.iter_mut().enumerate().take(heads) {
                    let qv = _mm512_loadu_ps(q.as_ptr().add(j * head_dim + 16 * v));
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
            let sums = hsum4(acc);
            for (j, &sum) in sums.iter().enumerate().take(heads) {
                *scores.get_unchecked_mut((j0 + j) * n_keys + p) = sum;
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
                if p + AHEAD < n_keys {
                    prefetch_row(value(p + AHEAD));
                }
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

/// The four vectors' sums, reduced together (one shuffle tree instead of four).
#[inline(always)]
unsafe fn hsum4(v: [__m512; 4]) -> [f32; 4] {
    let (a, b, c, d) = (halves(v[0]), halves(v[1]), halves(v[2]), halves(v[3]));
    // hadd pairs: lanes hold partial sums of (a, b) and (c, d), then of all four.
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let abcd = _mm256_hadd_ps(ab, cd);
    let sums = _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    );
    std::mem::transmute::<__m128, [f32; 4]>(sums)
}

/// The sum of a vector's two 256-bit halves.
#[inline(always)]
unsafe fn halves(x: __m512) -> __m256 {
    _mm256_add_ps(
        _mm512_castps512_ps256(x),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
    )
}

/// `exp(x - max)` for every score, and their sum (the softmax's numerators): a degree-6
/// polynomial after range reduction by powers of two, within 2 ulp of `f32::exp`.
/// Safety: `usable(..)`.
#[target_feature(enable = "avx512f,f16c")]
pub unsafe fn exp_shifted(scores: &mut [f32], max: f32) -> f32 {
    let mut sum = _mm512_setzero_ps();
    let chunks = scores.len() / 16;
    for i in 0..chunks {
        let p = scores.as_mut_ptr().add(16 * i);
        let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p), _mm512_set1_ps(max)));
        _mm512_storeu_ps(p, e);
        sum = _mm512_add_ps(sum, e);
    }
    let mut total = _mm512_reduce_add_ps(sum);
    for v in &mut scores[16 * chunks..] {
        *v = (*v - max).exp();
        total += *v;
    }
    total
}

#[inline(always)]
unsafe fn exp512(x: __m512) -> __m512 {
    // x = n ln2 + r, |r| <= ln2 / 2; exp(x) = 2^n exp(r).
    let x = _mm512_max_ps(x, _mm512_set1_ps(-103.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_softmax_exponential_is_within_two_ulp() {
        if !super::usable(16) {
            return;
        }
        let mut x: Vec<f32> = (0..2000)
            .map(|i| -(i as f32) * 0.05 - 1e-3 * (i % 7) as f32)
            .collect();
        let want: Vec<f32> = x.iter().map(|v| (v - 0.5).exp()).collect();
        // SAFETY: usable() checked the features.
        let sum = unsafe { super::exp_shifted(&mut x, 0.5) };
        for (got, want) in x.iter().zip(&want) {
            assert!(
                (got - want).abs() <= 2.5 * f32::EPSILON * want.abs() + f32::MIN_POSITIVE,
                "{got} vs {want}"
            );
        }
        let want_sum: f32 = want.iter().sum();
        assert!((sum - want_sum).abs() <= 1e-5 * want_sum);
    }
}
