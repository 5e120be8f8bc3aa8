//! Attention over an f16 or q8_0 cache with float vectors (AVX-512 or AVX2, through `Lanes`),
//! for the query heads of one KV head together: each K and V row is read and converted once
//! for all of them (GQA: 4 in Mixtral), where the generic path calls a dot product per (query
//! head, key) and an axpy per (query head, value). Deep in a context (the seed runs
//! `-c 16384`) these loops are most of a decoded token.

#![allow(unsafe_op_in_unsafe_fn)]

use super::lanes::{Lanes, V256, V512};
use super::softmax::Tier;
use crate::gguf::GgmlType;

/// Query heads handled per pass over the keys.
const HEADS_PER_PASS: usize = 4;
/// Largest head size of the fast path.
pub const MAX_HEAD_DIM: usize = 128;

/// How a cache row is read as floats, a vector at a time.
trait CacheRow {
    /// Floats `N v .. N v + N` of the head's row at `row`.
    unsafe fn load<L: Lanes>(row: *const u8, v: usize) -> L;
}

/// f16 rows.
struct F16Row;
impl CacheRow for F16Row {
    #[inline(always)]
    unsafe fn load<L: Lanes>(row: *const u8, v: usize) -> L {
        L::load_f16(row.add(2 * L::N * v))
    }
}

/// q8_0 rows: blocks of an f16 scale and 32 signed bytes.
struct Q8Row;
impl CacheRow for Q8Row {
    #[inline(always)]
    unsafe fn load<L: Lanes>(row: *const u8, v: usize) -> L {
        let first = L::N * v;
        let block = row.add(34 * (first / 32));
        L::load_i8(block.add(2 + first % 32), f16_to_f32(block))
    }
}

/// The f16 at `p`, converted with F16C (`half`'s conversion is software at the baseline ISA:
/// per vector of a q8_0 row it cost a tenth of the decode at 8,192 cached tokens).
#[inline(always)]
unsafe fn f16_to_f32(p: *const u8) -> f32 {
    use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Rows ahead of the current one that are prefetched: a row's loads otherwise wait on memory
/// (measured: half the time of the scores at 4096 cached positions).
const AHEAD: usize = 8;

#[inline(always)]
unsafe fn prefetch_row(row: &[u8]) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for line in (0..row.len()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(line) as *const i8);
    }
}

/// Whether `tier` has the fast path for this head size and cache type.
pub fn usable(tier: Tier, head_dim: usize, ty: GgmlType) -> bool {
    tier != Tier::Scalar
        && head_dim.is_multiple_of(16)
        && head_dim <= MAX_HEAD_DIM
        && matches!(ty, GgmlType::F16 | GgmlType::Q8_0)
}

/// `scores[j * n_keys + p] = scale * q_j . K_p` for the `group` query heads in `queries`
/// (`group` rows of `head_dim` floats); `key(p)` is position p's K row of this head (of type
/// `ty`). Needs `usable(tier, head_dim, ty)`.
#[allow(clippy::too_many_arguments)]
pub fn scores<'a>(
    tier: Tier,
    ty: GgmlType,
    key: impl Fn(usize) -> &'a [u8],
    queries: &[f32],
    head_dim: usize,
    scale: f32,
    n_keys: usize,
    scores: &mut [f32],
) {
    assert!(usable(tier, head_dim, ty));
    let args = (queries, head_dim, scale, n_keys, scores);
    // SAFETY: the tier's features were detected (Isa::active); rows hold head_dim elements.
    unsafe {
        match (tier, ty) {
            (Tier::Avx512, GgmlType::F16) => scores_512::<F16Row>(key, args),
            (Tier::Avx512, _) => scores_512::<Q8Row>(key, args),
            (_, GgmlType::F16) => scores_256::<F16Row>(key, args),
            _ => scores_256::<Q8Row>(key, args),
        }
    }
}

/// `out_j = sum_p weights[j * n_keys + p] * V_p` for every query head j of the group (`out`:
/// `group` rows of `head_dim`, overwritten); `value(p)` is position p's V row of this head.
/// Needs `usable(tier, head_dim, ty)`.
pub fn weighted_values<'a>(
    tier: Tier,
    ty: GgmlType,
    value: impl Fn(usize) -> &'a [u8],
    weights: &[f32],
    head_dim: usize,
    n_keys: usize,
    out: &mut [f32],
) {
    assert!(usable(tier, head_dim, ty));
    let args = (weights, head_dim, n_keys, out);
    // SAFETY: as in `scores`.
    unsafe {
        match (tier, ty) {
            (Tier::Avx512, GgmlType::F16) => values_512::<F16Row>(value, args),
            (Tier::Avx512, _) => values_512::<Q8Row>(value, args),
            (_, GgmlType::F16) => values_256::<F16Row>(value, args),
            _ => values_256::<Q8Row>(value, args),
        }
    }
}

type ScoreArgs<'s> = (&'s [f32], usize, f32, usize, &'s mut [f32]);
type ValueArgs<'s> = (&'s [f32], usize, usize, &'s mut [f32]);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn scores_512<'a, R: CacheRow>(key: impl Fn(usize) -> &'a [u8], a: ScoreArgs) {
    scores_lanes::<V512, R>(key, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_256<'a, R: CacheRow>(key: impl Fn(usize) -> &'a [u8], a: ScoreArgs) {
    scores_lanes::<V256, R>(key, a)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn values_512<'a, R: CacheRow>(value: impl Fn(usize) -> &'a [u8], a: ValueArgs) {
    values_lanes::<V512, R>(value, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_256<'a, R: CacheRow>(value: impl Fn(usize) -> &'a [u8], a: ValueArgs) {
    values_lanes::<V256, R>(value, a)
}

#[inline(always)]
unsafe fn scores_lanes<'a, L: Lanes, R: CacheRow>(
    key: impl Fn(usize) -> &'a [u8],
    (queries, head_dim, scale, n_keys, scores): ScoreArgs,
) {
    let group = queries.len() / head_dim;
    let vecs = head_dim / L::N;
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
            let mut acc = [L::zero(); HEADS_PER_PASS];
            for v in 0..vecs {
                let kv = R::load::<L>(k, v);
                for (j, a) in acc.iter_mut().enumerate().take(heads) {
                    let qv = L::load(q.as_ptr().add(j * head_dim + L::N * v));
                    *a = qv.fmadd(kv, *a);
                }
            }
            let sums = L::hsum4(acc);
            for (j, &sum) in sums.iter().enumerate().take(heads) {
                *scores.get_unchecked_mut((j0 + j) * n_keys + p) = sum;
            }
        }
    }
}

#[inline(always)]
unsafe fn values_lanes<'a, L: Lanes, R: CacheRow>(
    value: impl Fn(usize) -> &'a [u8],
    (weights, head_dim, n_keys, out): ValueArgs,
) {
    let group = out.len() / head_dim;
    let vecs_per_row = head_dim / L::N;
    // Passes over ACC_VECS vectors of 4 query heads: the accumulators stay in registers, and
    // each V row is read once in all.
    const MAX_ACC: usize = 4;
    for j0 in (0..group).step_by(HEADS_PER_PASS) {
        let heads = (group - j0).min(HEADS_PER_PASS);
        for v0 in (0..vecs_per_row).step_by(L::ACC_VECS) {
            let vecs = (vecs_per_row - v0).min(L::ACC_VECS);
            let mut acc = [[L::zero(); MAX_ACC]; HEADS_PER_PASS];
            for p in 0..n_keys {
                let v_row = value(p).as_ptr();
                if p + AHEAD < n_keys {
                    prefetch_row(value(p + AHEAD));
                }
                for v in 0..vecs {
                    let vv = R::load::<L>(v_row, v0 + v);
                    for (j, a) in acc.iter_mut().enumerate().take(heads) {
                        let w = L::splat(*weights.get_unchecked((j0 + j) * n_keys + p));
                        a[v] = w.fmadd(vv, a[v]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(heads) {
                for (v, x) in a.iter().enumerate().take(vecs) {
                    x.store(out.as_mut_ptr().add((j0 + j) * head_dim + L::N * (v0 + v)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Isa, quantize::quantize};

    /// Every SIMD tier's scores and weighted values against f64 sums over the dequantized rows,
    /// for both cache types and a group of 5 query heads (one full pass and a partial one).
    #[test]
    fn simd_attention_matches_the_plain_sums() {
        let (head_dim, group, n_keys) = (64, 5, 37);
        let val = |i: usize| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 3.0;
        let rows: Vec<f32> = (0..n_keys * head_dim).map(val).collect();
        let queries: Vec<f32> = (0..group * head_dim).map(|i| val(i + 5)).collect();
        let weights: Vec<f32> = (0..group * n_keys).map(|i| val(i + 11).abs()).collect();
        let mut tiers = vec![];
        if Isa::detected() >= Isa::Avx2 {
            tiers.push(Tier::Avx2);
        }
        if Isa::detected() >= Isa::Avx512 {
            tiers.push(Tier::Avx512);
        }
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let mut bytes = Vec::new();
            if ty == GgmlType::F16 {
                bytes.extend(
                    rows.iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes()),
                );
            } else {
                quantize(ty, &rows, &mut bytes).unwrap();
            }
            let mut deq = vec![0f32; rows.len()];
            (crate::quant::reference_fn(ty).unwrap())(&bytes, &mut deq);
            let row_bytes = bytes.len() / n_keys;
            let at = |p: usize| &bytes[p * row_bytes..][..row_bytes];
            for &tier in &tiers {
                let mut s = vec![0f32; group * n_keys];
                scores(tier, ty, at, &queries, head_dim, 0.125, n_keys, &mut s);
                let mut out = vec![0f32; group * head_dim];
                weighted_values(tier, ty, at, &weights, head_dim, n_keys, &mut out);
                for j in 0..group {
                    for p in 0..n_keys {
                        let want: f64 = (0..head_dim)
                            .map(|d| {
                                queries[j * head_dim + d] as f64 * deq[p * head_dim + d] as f64
                            })
                            .sum::<f64>()
                            * 0.125;
                        let got = s[j * n_keys + p] as f64;
                        assert!((got - want).abs() < 1e-5, "{tier:?} {ty}: {got} vs {want}");
                    }
                    for d in 0..head_dim {
                        let want: f64 = (0..n_keys)
                            .map(|p| weights[j * n_keys + p] as f64 * deq[p * head_dim + d] as f64)
                            .sum();
                        let got = out[j * head_dim + d] as f64;
                        assert!((got - want).abs() < 1e-4, "{tier:?} {ty}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
