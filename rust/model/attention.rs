//! RoPE and causal grouped-query attention over the KV cache.

use super::arch::RopeStyle;
#[cfg(target_arch = "x86_64")]
use super::attention_simd;
use super::config::RopeConfig;
use super::kv_cache::KvCache;
use super::softmax::{Tier, softmax};
use crate::gguf::GgmlType;
use crate::matmul::{Pool, all_finite, quantize_activations};
use crate::{Error, Result};

/// Rotary position embedding: for pair i of the first `n_rot` dims of each head, the angle
/// pos * inv_freq[i], where inv_freq folds in the base, the file's per-frequency factors,
/// linear scaling and YaRN's blend (all linear in pos, so computed once); cos and sin are
/// scaled by `mscale`. Facts from llama.cpp's `rope_yarn` and `ggml_rope_yarn_corr_dims`.
pub struct Rope {
    style: RopeStyle,
    inv_freq: Vec<f32>,
    mscale: f32,
    head_dim: usize,
}

impl Rope {
    pub fn new(
        cfg: &RopeConfig,
        style: RopeStyle,
        n_rot: usize,
        head_dim: usize,
        factors: Option<&[f32]>,
    ) -> Rope {
        let (base, n) = (cfg.base as f64, n_rot as f64);
        // YaRN's correction range: the dims whose wavelength fits the original context
        // between beta_fast and beta_slow rotations.
        let corr_dim = |rotations: f32| {
            n * (cfg.n_ctx_orig as f64 / (rotations as f64 * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let inv_freq = (0..n_rot / 2)
            .map(|i| {
                let factor = factors.map_or(1.0, |f| f[i] as f64);
                let extrap = base.powf(-2.0 * i as f64 / n) / factor;
                let interp = cfg.freq_scale as f64 * extrap;
                let theta = match &cfg.yarn {
                    None => interp,
                    Some(y) => {
                        let low = corr_dim(y.beta_fast).floor().max(0.0);
                        let high = corr_dim(y.beta_slow).ceil().min(n - 1.0);
                        let ramp =
                            1.0 - ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                        let mix = ramp * y.ext_factor as f64;
                        interp * (1.0 - mix) + extrap * mix
                    }
                };
                theta as f32
            })
            .collect();
        Rope {
            style,
            inv_freq,
            mscale: cfg.mscale,
            head_dim,
        }
    }

    /// Rotates every head of each row (heads of `head_dim`, back to back) for position `pos`;
    /// the angles are computed once for all of them.
    pub fn apply(&self, rows: &mut [&mut [f32]], pos: usize) {
        let half = self.inv_freq.len();
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (sin, cos) = (sin * self.mscale, cos * self.mscale);
            let (a, b) = match self.style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            for row in rows.iter_mut() {
                for head in row.chunks_exact_mut(self.head_dim) {
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// Gemma 2's soft cap: x -> cap * tanh(x / cap) (attention scores, logits).
pub fn softcap(xs: &mut [f32], cap: f32) {
    for x in xs {
        *x = cap * (*x / cap).tanh();
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
    /// Multiplies q.k.
    pub scale: f32,
    /// Gemma 2's cap on the scaled scores: cap * tanh(score / cap).
    pub softcap: Option<f32>,
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
        scale,
        softcap,
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
    let tier = Tier::active();
    #[cfg(target_arch = "x86_64")]
    let simd_type = |ty: GgmlType| attention_simd::usable(tier, head_dim, ty);
    #[cfg(not(target_arch = "x86_64"))]
    let simd_type = |_: GgmlType| false;
    let (simd_k, simd_v) = (simd_type(cache.k.ty), simd_type(cache.v.ty));
    // One task per KV head: the `group` query heads that share it read each cached K row and
    // dequantize each V row once between them (GQA: 4 query heads per KV head in Mixtral).
    pool.for_each_mut(&mut heads[..n_head_kv], |kv_head, s| {
        s.out.resize(group * n * head_dim, 0.0);
        for (t, span) in spans.iter().enumerate() {
            let (first, n_keys) = (span.start, span.len);
            let queries = &q[t * q_dim + kv_head * group * head_dim..][..group * head_dim];
            let (keys, values) = (
                cache.k.span(layer, first, kv_head),
                cache.v.span(layer, first, kv_head),
            );
            s.scores.resize(group * n_keys, 0.0);
            if simd_k {
                #[cfg(target_arch = "x86_64")]
                attention_simd::scores(
                    tier,
                    cache.k.ty,
                    |p| keys.at(p),
                    queries,
                    head_dim,
                    scale,
                    n_keys,
                    &mut s.scores,
                );
            } else {
                quantize_activations(cache.k_act, queries, &mut s.query)
                    .expect("finite (checked above), whole blocks");
                let q_bytes = s.query.len() / group;
                for p in 0..n_keys {
                    let k = keys.at(p);
                    for j in 0..group {
                        s.scores[j * n_keys + p] =
                            (cache.k_dot)(k, &s.query[j * q_bytes..][..q_bytes]) * scale;
                    }
                }
            }
            if let Some(cap) = softcap {
                self::softcap(&mut s.scores, cap);
            }
            // Softmax: the scores become the weights of the values.
            for scores in s.scores.chunks_exact_mut(n_keys) {
                softmax(tier, scores);
            }
            if simd_v {
                s.v_row.resize(group * head_dim, 0.0);
                #[cfg(target_arch = "x86_64")]
                attention_simd::weighted_values(
                    tier,
                    cache.v.ty,
                    |p| values.at(p),
                    &s.scores,
                    head_dim,
                    n_keys,
                    &mut s.v_row,
                );
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
                (cache.v_dequant)(values.at(p), &mut s.v_row);
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
