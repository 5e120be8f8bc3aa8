//! The llama-family transformer (Llama, Mistral, Mixtral MoE) over a memory-mapped GGUF file:
//! token embedding, RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU or MoE
//! feed-forward, output norm and head. One `eval` call runs a batch of tokens through every
//! layer and returns logits; Python drives the decode loop around it.

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
pub mod config;
mod ffn;
pub mod imatrix;
pub mod kv_cache;
pub mod profile;
pub mod weights;

use std::path::Path;

use attention::{AttentionShape, HeadScratch, Rope, attend};
use ffn::{FfnContext, FfnScratch};
use imatrix::{ActivationStats, Input, LayerRecorder, StatEntry};
use profile::{Component, Profile, Timer};
use weights::{Ffn, Weights};

pub use config::Config;
pub use kv_cache::{KV_TYPES, KvCache};

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, Value};
use crate::matmul::{Pool, matmul, matmul_many};
use crate::quant::{DequantFn, Isa, dequant_fn};

#[derive(Clone)]
pub struct ModelParams {
    /// Context length; 0 takes the model's trained length.
    pub n_ctx: usize,
    pub n_threads: Option<usize>,
    /// Prompt tokens per forward pass.
    pub n_batch: usize,
    pub type_k: GgmlType,
    pub type_v: GgmlType,
    /// Full metadata keys with their replacement values.
    pub overrides: Vec<(String, Value)>,
    /// Scan every weight for NaN/Inf at load (reads the whole file once).
    pub check_tensors: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            n_ctx: 0,
            n_threads: None,
            n_batch: 512,
            type_k: GgmlType::F16,
            type_v: GgmlType::F16,
            overrides: Vec::new(),
            check_tensors: false,
        }
    }
}

/// Activations of one batch, kept between calls so steady-state decoding does not allocate.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    act: Vec<u8>,
    heads: Vec<HeadScratch>,
    ffn: FfnScratch,
}

pub struct Model {
    file: GgufFile,
    pub config: Config,
    weights: Weights,
    pool: Pool,
    isa: Isa,
    cache: KvCache,
    rope: Rope,
    embd_dequant: DequantFn,
    n_batch: usize,
    /// Positions filled in the KV cache.
    n_past: usize,
    scratch: Scratch,
    /// Every weight tensor's byte range in the file, for prefetching.
    weight_ranges: Vec<(usize, usize)>,
    /// Time per component since load or the last `take_profile`.
    profile: Profile,
    /// Input activation statistics, while an importance matrix is being collected.
    stats: Option<ActivationStats>,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let ss: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
        let scale = (1.0 / (ss / w.len() as f64 + eps as f64).sqrt()) as f32;
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * g;
        }
    }
}

fn add(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

impl Model {
    pub fn load(path: impl AsRef<Path>, params: ModelParams) -> Result<Model> {
        Self::from_file(GgufFile::open(path)?, params)
    }

    pub fn from_file(file: GgufFile, params: ModelParams) -> Result<Model> {
        if params.check_tensors {
            crate::quant::check_tensor_values(&file)?;
        }
        let config = Config::from_gguf(&file, &params.overrides)?;
        let weights = Weights::load(&file, &config)?;
        let n_ctx = if params.n_ctx == 0 {
            config.n_ctx_train
        } else {
            params.n_ctx
        };
        if n_ctx > config.n_ctx_train {
            return Err(Error::invalid(format!(
                "context of {n_ctx} tokens exceeds the model's trained context of {}",
                config.n_ctx_train
            )));
        }
        if params.n_batch == 0 {
            return Err(Error::invalid("n_batch must be at least 1"));
        }
        let cache = KvCache::new(
            config.n_layer,
            n_ctx,
            config.n_head_kv,
            config.head_dim,
            params.type_k,
            params.type_v,
        )?;
        let pool = Pool::new(params.n_threads)?;
        let isa = Isa::active();
        let (embd_dequant, _) = dequant_fn(weights.token_embd.ty, isa).expect("checked at load");
        let rope = Rope::new(
            config.n_rot,
            config.head_dim,
            config.rope_freq_base,
            config.rope_freq_scale,
        );
        let mut scratch = Scratch::default();
        scratch
            .heads
            .resize_with(config.n_head, HeadScratch::default);
        let weight_ranges = weights.ranges();
        Ok(Model {
            file,
            config,
            weights,
            pool,
            isa,
            cache,
            rope,
            embd_dequant,
            n_batch: params.n_batch,
            n_past: 0,
            scratch,
            weight_ranges,
            profile: Profile::default(),
            stats: None,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.weights.n_vocab
    }
    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }
    pub fn n_past(&self) -> usize {
        self.n_past
    }
    pub fn n_threads(&self) -> usize {
        self.pool.threads()
    }
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
    pub fn kv_types(&self) -> (GgmlType, GgmlType) {
        (self.cache.k.ty, self.cache.v.ty)
    }
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
    pub fn weight_ranges(&self) -> &[(usize, usize)] {
        &self.weight_ranges
    }

    /// The time per component since load or the previous call, and starts over.
    pub fn take_profile(&mut self) -> Profile {
        std::mem::take(&mut self.profile)
    }

    /// Starts (or restarts) collecting input activation statistics for an importance matrix.
    pub fn start_activation_stats(&mut self) {
        let file = &self.file;
        self.stats = Some(ActivationStats::new(&self.config, &self.weights, |name| {
            file.tensor(name).is_some()
        }));
    }

    /// The statistics collected since `start_activation_stats`, which stops collecting.
    pub fn take_activation_stats(&mut self) -> Option<Vec<StatEntry>> {
        self.stats.take().map(ActivationStats::into_entries)
    }

    /// Forgets cached positions from `n` on (to reuse a shared prompt prefix).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.n_past {
            return Err(Error::invalid(format!(
                "cannot keep {n} positions: only {} are cached",
                self.n_past
            )));
        }
        self.n_past = n;
        Ok(())
    }

    /// Runs `tokens` at positions n_past.. through the model, in batches of `n_batch`, and
    /// replaces `logits` with the logits of every token (`logits_all`) or of the last one.
    /// Fails before changing anything if the tokens do not fit the context or are not in the
    /// vocabulary.
    pub fn eval(&mut self, tokens: &[u32], logits_all: bool, logits: &mut Vec<f32>) -> Result<()> {
        let first = if logits_all {
            0
        } else {
            tokens.len().saturating_sub(1)
        };
        self.eval_from(tokens, first, logits)
    }

    /// As `eval`, with the logits of tokens `first..` only (perplexity scores the second half
    /// of each chunk: the output head, a large share of the work, then runs on half the rows).
    pub fn eval_from(&mut self, tokens: &[u32], first: usize, logits: &mut Vec<f32>) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to evaluate"));
        }
        if first >= tokens.len() {
            return Err(Error::invalid(format!(
                "logits from token {first} of {}: past the last one",
                tokens.len()
            )));
        }
        let n_ctx = self.cache.n_ctx;
        if self.n_past + tokens.len() > n_ctx {
            return Err(Error::invalid(format!(
                "{} tokens do not fit in the context: {} of {n_ctx} positions are used, {} are \
                 free (raise n_ctx or shorten the prompt)",
                tokens.len(),
                self.n_past,
                n_ctx - self.n_past
            )));
        }
        let n_vocab = self.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {n_vocab}"
            )));
        }
        logits.clear();
        let start = self.n_past;
        for (i, batch) in tokens.chunks(self.n_batch).enumerate() {
            // Rows of this batch (from `offset` on) whose logits are wanted, if any.
            let offset = i * self.n_batch;
            let rows = (first < offset + batch.len()).then(|| first.saturating_sub(offset));
            if let Err(e) = self.forward(batch, rows.map(|r| (r, &mut *logits))) {
                self.n_past = start; // nothing of a failed call is kept
                return Err(e);
            }
        }
        // NaN/Inf weights (a corrupt or hostile file) poison everything downstream; refuse
        // the result and forget these positions rather than hand a sampler non-finite logits.
        if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
            self.n_past = start;
            let position = start + first + i / n_vocab;
            return Err(Error::invalid(format!(
                "the model produced a non-finite logit ({}) at position {position}: the file's \
                 weights hold NaN or Inf values",
                logits[i]
            )));
        }
        Ok(())
    }

    /// One batch; `logits` = (first row wanted, where to append the logits of rows first..).
    fn forward(&mut self, tokens: &[u32], logits: Option<(usize, &mut Vec<f32>)>) -> Result<()> {
        let c = &self.config;
        let n = tokens.len();
        let (e, qd, kvd) = (c.n_embd, c.q_dim(), c.kv_dim());
        let bytes = self.file.bytes();
        let s = &mut self.scratch;
        let (pool, isa) = (&self.pool, self.isa);
        let prof = &mut self.profile;
        let mut timer = Timer::start();

        s.x.resize(n * e, 0.0);
        let embd = &self.weights.token_embd;
        for (row, &t) in s.x.chunks_exact_mut(e).zip(tokens) {
            let start = embd.start + t as usize * embd.row_bytes();
            (self.embd_dequant)(&bytes[start..start + embd.row_bytes()], row);
        }
        s.normed.resize(n * e, 0.0);
        s.q.resize(n * qd, 0.0);
        s.k.resize(n * kvd, 0.0);
        s.v.resize(n * kvd, 0.0);
        s.attn.resize(n * qd, 0.0);
        s.proj.resize(n * e, 0.0);
        let shape = AttentionShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
        };

        for (l, layer) in self.weights.layers.iter().enumerate() {
            let rec = self
                .stats
                .as_ref()
                .map(|stats| LayerRecorder { stats, layer: l });
            let cx = FfnContext {
                pool,
                file: bytes,
                isa,
                rec,
            };
            rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.normed);
            timer.lap(prof, Component::Embed);
            if let Some(r) = rec {
                r.record(Input::Qkv, 0, &s.normed);
            }
            matmul_many(
                pool,
                &[
                    layer.wq.mat(bytes),
                    layer.wk.mat(bytes),
                    layer.wv.mat(bytes),
                ],
                &s.normed,
                &mut [&mut s.q, &mut s.k, &mut s.v],
                &mut s.act,
                isa,
            )?;
            for t in 0..n {
                let pos = self.n_past + t;
                self.rope.apply(
                    &mut [&mut s.q[t * qd..][..qd], &mut s.k[t * kvd..][..kvd]],
                    pos,
                );
                self.cache.k.write(l, pos, &s.k[t * kvd..][..kvd]);
                self.cache.v.write(l, pos, &s.v[t * kvd..][..kvd]);
            }
            attend(
                pool,
                &shape,
                &self.cache,
                l,
                self.n_past,
                &s.q,
                &mut s.heads,
                &mut s.attn,
            )?;
            if let Some(r) = rec {
                r.record(Input::AttnOutput, 0, &s.attn);
            }
            matmul(
                pool,
                &layer.wo.mat(bytes),
                &s.attn,
                &mut s.proj,
                &mut s.act,
                isa,
            )?;
            timer.lap(prof, Component::Attention);
            add(&mut s.x, &s.proj);

            rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.normed);
            timer.lap(prof, Component::Embed);
            match &layer.ffn {
                Ffn::Dense(f) => ffn::dense(&cx, f, &s.normed, &mut s.proj, &mut s.ffn)?,
                Ffn::Moe { router, experts } => ffn::moe(
                    &cx,
                    router,
                    experts,
                    c.n_expert_used,
                    &s.normed,
                    &mut s.proj,
                    &mut s.ffn,
                    (&mut timer, &mut *prof),
                )?,
            }
            timer.lap(prof, Component::Experts);
            add(&mut s.x, &s.proj);
        }
        self.n_past += n;
        prof.tokens += n as u64;
        prof.batches += 1;

        if let Some((first, logits)) = logits {
            let rows = first..n;
            let m = rows.len();
            rms_norm(
                &s.x[rows.start * e..],
                &self.weights.output_norm,
                c.rms_eps,
                &mut s.normed[..m * e],
            );
            let old = logits.len();
            logits.resize(old + m * self.weights.n_vocab, 0.0);
            let out = self.weights.output.mat(bytes);
            matmul(
                pool,
                &out,
                &s.normed[..m * e],
                &mut logits[old..],
                &mut s.act,
                isa,
            )?;
        }
        timer.lap(prof, Component::Head);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
