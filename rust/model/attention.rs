//! RoPE and causal grouped-query attention over the KV cache.

use super::kv_cache::KvCache;
use crate::gguf::GgmlType;
use crate::matmul::{Pool, all_finite, quantize_activations};
use crate::{Error, Result};

/// Rotary position embedding, llama.cpp's "normal" mode (GGUF `llama` files permute Q/K so
/// that adjacent pairs rotate): for pair i of the first `n_rot` dims of each head,
/// theta = pos * freq_scale * base^(-2i/n_rot).
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    pub fn new(n_rot: usize, head_dim: usize, freq_base: f32, freq_scale: f32) -> Rope {
        let inv_freq = (0..n_rot / 2)
            .map(|i| {
                (freq_scale as f64 * (freq_base as f64).powf(-2.0 * i as f64 / n_rot as f64)) as f32
            })
            .collect();
        Rope { inv_freq, head_dim }
    }

    /// Rotates every head of each row (heads of `head_dim`, back to back) for position `pos`;
    /// the angles are computed once for all of them.
    pub fn apply(&self, rows: &mut [&mut [f32]], pos: usize) {
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            for row in rows.iter_mut() {
                for head in row.chunks_exact_mut(self.head_dim) {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0 * cos - x1 * sin;
                    head[2 * i + 1] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// One query head's working memory, reused across tokens and calls.
#[derive(Default)]
pub struct HeadScratch {
    scores: Vec<f32>,
    query: Vec<u8>,
    v_row: Vec<f32>,
    /// This head's output for every token of the batch: [n_tokens][head_dim].
    out: Vec<f32>,
}

/// Query heads per KV head that attention handles (Mixtral/Mistral: 4, Llama-3-70B: 8).
const MAX_GROUP: usize = 64;

pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// The cached positions one token attends to: `len` positions of the cache from `start` (its
/// sequence's first position, so several sequences can share one batch).
#[derive(Clone, Copy, Debug)]
pub struct KeySpan {
    pub start: usize,
    pub len: usize,
}

/// `out[t] = softmax(q_t K^T / sqrt(d)) V` for each head, token t seeing the cache positions
/// of `spans[t]`. `q` is [n][n_head*head_dim]; K/V rows of the batch are already in the cache.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    pool: &Pool,
    shape: &AttentionShape,
    cache: &KvCache,
    layer: usize,
    spans: &[KeySpan],
    q: &[f32],
    heads: &mut [HeadScratch],
    out: &mut [f32],
) -> Result<()> {
    // Checked once here so that quantizing each head's query below cannot fail.
    if !all_finite(q) {
        return Err(Error::invalid(
            "non-finite attention queries (NaN or Inf): the model's weights hold NaN or Inf values",
        ));
    }
    let AttentionShape {
        n_head,
        n_head_kv,
        head_dim,
    } = *shape;
    let q_dim = n_head * head_dim;
    let n = spans.len();
    debug_assert_eq!(q.len(), n * q_dim);
    let group = n_head / n_head_kv;
    if group > MAX_GROUP {
        return Err(Error::Unsupported(format!(
            "attention shape: {n_head} query heads over {n_head_kv} KV heads (at most {MAX_GROUP} per KV head)"
        )));
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    #[cfg(target_arch = "x86_64")]
    let simd = crate::quant::Isa::active() >= crate::quant::Isa::Avx512
        && super::attention_avx512::usable(head_dim);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    let simd_type = |ty: GgmlType| simd && matches!(ty, GgmlType::F16 | GgmlType::Q8_0);
    let (simd_k, simd_v) = (simd_type(cache.k.ty), simd_type(cache.v.ty));
    // One task per KV head: the `group` query heads that share it read each cached K row and
    // dequantize each V row once between them (GQA: 4 query heads per KV head in Mixtral).
    pool.for_each_mut(&mut heads[..n_head_kv], |kv_head, s| {
        s.out.resize(group * n * head_dim, 0.0);
        for (t, span) in spans.iter().enumerate() {
            let (first, n_keys) = (span.start, span.len);
            let queries = &q[t * q_dim + kv_head * group * head_dim..][..group * head_dim];
            s.scores.resize(group * n_keys, 0.0);
            if simd_k {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: usable(head_dim) was checked; f16 rows of head_dim elements.
                unsafe {
                    use super::attention_avx512::{F16Row, Q8Row, scores};
                    let key = |p| cache.k.head(layer, first + p, kv_head);
                    if cache.k.ty == GgmlType::F16 {
                        scores::<F16Row>(key, queries, head_dim, scale, n_keys, &mut s.scores)
                    } else {
                        scores::<Q8Row>(key, queries, head_dim, scale, n_keys, &mut s.scores)
                    }
                };
            } else {
                quantize_activations(cache.k_act, queries, &mut s.query)
                    .expect("finite (checked above), whole blocks");
                let q_bytes = s.query.len() / group;
                for p in 0..n_keys {
                    let k = cache.k.head(layer, first + p, kv_head);
                    for j in 0..group {
                        s.scores[j * n_keys + p] =
                            (cache.k_dot)(k, &s.query[j * q_bytes..][..q_bytes]) * scale;
                    }
                }
            }
            // Softmax: the scores become the weights of the values.
            for scores in s.scores.chunks_exact_mut(n_keys) {
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let sum = if simd {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: usable(head_dim) was checked.
                    unsafe {
                        super::attention_avx512::exp_shifted(scores, max)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!()
                } else {
                    let mut sum = 0f32;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    sum
                };
                let inv = 1.0 / sum;
                for score in scores.iter_mut() {
                    *score *= inv;
                }
            }
            if simd_v {
                s.v_row.resize(group * head_dim, 0.0);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: usable(head_dim) was checked; f16 rows of head_dim elements.
                unsafe {
                    use super::attention_avx512::{F16Row, Q8Row, weighted_values};
                    let value = |p| cache.v.head(layer, first + p, kv_head);
                    let (w, out) = (&s.scores, &mut s.v_row);
                    if cache.v.ty == GgmlType::F16 {
                        weighted_values::<F16Row>(value, w, head_dim, n_keys, out)
                    } else {
                        weighted_values::<Q8Row>(value, w, head_dim, n_keys, out)
                    }
                };
                for j in 0..group {
                    s.out[(j * n + t) * head_dim..][..head_dim]
                        .copy_from_slice(&s.v_row[j * head_dim..][..head_dim]);
                }
                continue;
            }
            s.v_row.resize(head_dim, 0.0);
            for j in 0..group {
                s.out[(j * n + t) * head_dim..][..head_dim].fill(0.0);
            }
            for p in 0..n_keys {
                (cache.v_dequant)(cache.v.head(layer, first + p, kv_head), &mut s.v_row);
                for j in 0..group {
                    let w = s.scores[j * n_keys + p];
                    let o = &mut s.out[(j * n + t) * head_dim..][..head_dim];
                    for (acc, v) in o.iter_mut().zip(&s.v_row) {
                        *acc += w * v;
                    }
                }
            }
        }
    });
    for (kv_head, s) in heads[..n_head_kv].iter().enumerate() {
        for j in 0..group {
            let h = kv_head * group + j;
            for t in 0..n {
                out[t * q_dim + h * head_dim..][..head_dim]
                    .copy_from_slice(&s.out[(j * n + t) * head_dim..][..head_dim]);
            }
        }
    }
    Ok(())
}
