//! The decoder-only transformer over a memory-mapped GGUF file: token embedding, RMSNorm,
//! RoPE, grouped-query attention with a KV cache (sliding-window layers where the model has
//! them), gated or MoE feed-forward, output norm and head. One pass serves every architecture
//! in `arch::ARCHS` (Llama, Mistral, Mixtral, Qwen2/3, Qwen3-MoE, Gemma 2/3, Phi-3): their
//! differences are data. One `eval` call runs a batch of tokens through every layer and
//! returns logits; Python drives the decode loop around it.
//!
//! The KV cache holds `n_seq` independent sequences (a server's slots); `eval_batch` runs
//! tokens of several of them in one forward pass, so each weight streams once per step for
//! all of them (continuous batching). `eval` and friends work on sequence 0.

pub mod arch;
mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_simd;
pub mod config;
mod ffn;
mod forward;
pub mod imatrix;
pub mod kv_cache;
#[cfg(target_arch = "x86_64")]
mod lanes;
mod observer;
pub mod profile;
pub mod softmax;
pub mod weights;

use std::path::Path;

use attention::{AttentionShape, HeadScratch, KeySpan, Rope};
use ffn::FfnScratch;
use imatrix::{ActivationStats, StatEntry};
use observer::{Capture, Observer};
use profile::Profile;
use weights::Weights;

pub use config::Config;
use kv_cache::CacheShape;
pub use kv_cache::{KV_TYPES, KvCache, layer_positions};

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, Value};
use crate::matmul::Pool;
use crate::quant::DequantFn;

#[derive(Clone)]
pub struct ModelParams {
    /// Context length of each sequence; 0 takes the model's trained length.
    pub n_ctx: usize,
    /// Sequences the KV cache holds (each of `n_ctx` positions).
    pub n_seq: usize,
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
            n_seq: 1,
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
    /// Per token of the batch: its position in its sequence and the cache positions it sees
    /// in global layers (from its sequence's start) and in sliding-window layers.
    pos: Vec<usize>,
    spans: Vec<KeySpan>,
    spans_swa: Vec<KeySpan>,
    /// Rows of the batch whose logits are wanted, in output order.
    rows: Vec<usize>,
    /// `eval_batch`'s tokens, back to back, and its runs.
    tokens: Vec<u32>,
    runs: Vec<Run>,
}

/// Consecutive tokens of one sequence within a batch.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub seq: usize,
    pub len: usize,
}

pub struct Model {
    file: GgufFile,
    pub config: Config,
    weights: Weights,
    pool: Pool,
    cache: KvCache,
    /// The rope of global layers, then that of sliding-window layers.
    ropes: [Rope; 2],
    /// Heads, head size, score scale and cap of every layer's attention.
    attn_shape: AttentionShape,
    embd_dequant: DequantFn,
    n_batch: usize,
    /// Positions of each sequence's context (the cache holds n_seq of them back to back).
    n_ctx: usize,
    /// Positions filled in the KV cache, per sequence.
    n_past: Vec<usize>,
    /// Per sequence, the first position every sliding layer still holds (their rings have
    /// overwritten those before, or a loaded state lacked them); 0 without sliding layers.
    held_from: Vec<usize>,
    /// Positions of a sequence the sliding layers' rings hold (`n_ctx` without them).
    ring: usize,
    scratch: Scratch,
    /// Every weight tensor's byte range in the file, for prefetching.
    weight_ranges: Vec<(usize, usize)>,
    /// What passes report besides logits: time per component, activation statistics,
    /// hidden states.
    observer: Observer,
    /// `exact_batch_rows`, fixed by the weight types.
    exact_rows: usize,
}

/// The most rows each product of `w` computes as it computes one (the minimum over its
/// weight types); the token embedding counts only when it is also the output head, since it is
/// otherwise read row by row.
fn exact_rows(w: &Weights) -> usize {
    w.matrices()
        .iter()
        .filter(|t| t.start != w.token_embd.start || w.output.start == t.start)
        .map(|t| t.kernels.exact_rows)
        .min()
        .unwrap_or(1)
        .max(1)
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
        if n_ctx > config.n_ctx_max {
            return Err(Error::invalid(if config.n_ctx_max > config.n_ctx_train {
                format!(
                    "context of {n_ctx} tokens exceeds the {} its rope scaling allows",
                    config.n_ctx_max
                )
            } else {
                format!(
                    "context of {n_ctx} tokens exceeds the model's trained context of {} (a \
                     longer one needs rope scaling: override {arch}.rope.scaling.type and \
                     {arch}.rope.scaling.factor)",
                    config.n_ctx_train,
                    arch = config.arch.name
                )
            }));
        }
        if params.n_batch == 0 {
            return Err(Error::invalid("n_batch must be at least 1"));
        }
        if params.n_seq == 0 {
            return Err(Error::invalid("n_seq must be at least 1"));
        }
        let positions =
            layer_positions(n_ctx, config.swa_window, &config.swa_layers, params.n_batch);
        let shape = CacheShape {
            n_ctx,
            n_seq: params.n_seq,
            positions,
            sliding: config.swa_layers.clone(),
        };
        let ring = shape.positions.iter().copied().min().unwrap_or(n_ctx);
        let cache = KvCache::new(
            &shape,
            config.n_head_kv,
            config.head_dim,
            params.type_k,
            params.type_v,
        )?;
        let pool = Pool::new(params.n_threads)?;
        let (embd_dequant, _) = weights
            .token_embd
            .kernels
            .dequantize
            .expect("checked at load");
        // Phi-3's long factors serve contexts beyond the original one.
        let factors = &weights.rope_factors;
        let factors = if n_ctx > config.rope.n_ctx_orig {
            factors.long.as_deref()
        } else {
            factors.short.as_deref()
        };
        let rope = |cfg| {
            Rope::new(
                cfg,
                config.arch.rope,
                config.n_rot,
                config.head_dim,
                factors,
            )
        };
        let ropes = [rope(&config.rope), rope(&config.rope_swa)];
        let attn_shape = AttentionShape {
            n_head: config.n_head,
            n_head_kv: config.n_head_kv,
            head_dim: config.head_dim,
            scale: config.attn_scale,
            softcap: config.attn_softcap,
        };
        let mut scratch = Scratch::default();
        scratch
            .heads
            .resize_with(config.n_head, HeadScratch::default);
        let weight_ranges = weights.ranges();
        let exact_rows = exact_rows(&weights);
        Ok(Model {
            file,
            config,
            weights,
            pool,
            cache,
            ropes,
            attn_shape,
            embd_dequant,
            n_batch: params.n_batch,
            n_ctx,
            n_past: vec![0; params.n_seq],
            held_from: vec![0; params.n_seq],
            ring,
            scratch,
            weight_ranges,
            observer: Observer::default(),
            exact_rows,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.weights.n_vocab
    }
    /// Positions of each sequence.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    pub fn n_seq(&self) -> usize {
        self.n_past.len()
    }
    /// Positions cached for sequence 0.
    pub fn n_past(&self) -> usize {
        self.n_past[0]
    }
    pub fn n_past_seq(&self, seq: usize) -> Result<usize> {
        self.check_seq(seq)?;
        Ok(self.n_past[seq])
    }
    fn check_seq(&self, seq: usize) -> Result<()> {
        if seq >= self.n_seq() {
            return Err(Error::invalid(format!(
                "sequence {seq} does not exist: the cache holds {} sequences",
                self.n_seq()
            )));
        }
        Ok(())
    }
    pub fn n_threads(&self) -> usize {
        self.pool.threads()
    }
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
    /// The most tokens one `eval` may take for each token's logits to be the bits it gets
    /// alone (see `matmul::exact_rows`), over the model's weight types.
    pub fn exact_batch_rows(&self) -> usize {
        self.exact_rows
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
        std::mem::take(&mut self.observer.profile)
    }

    /// Starts (or restarts) collecting input activation statistics for an importance matrix.
    pub fn start_activation_stats(&mut self) {
        let file = &self.file;
        self.observer.stats = Some(ActivationStats::new(&self.config, &self.weights, |name| {
            file.tensor(name).is_some()
        }));
    }

    /// The statistics collected since `start_activation_stats`, which stops collecting.
    pub fn take_activation_stats(&mut self) -> Option<Vec<StatEntry>> {
        self.observer
            .stats
            .take()
            .map(ActivationStats::into_entries)
    }

    /// Whether some layers attend through a sliding window.
    fn sliding(&self) -> bool {
        self.config.swa_window > 0 && self.config.swa_layers.contains(&true)
    }

    /// Forgets sequence 0's cached positions from `n` on (to reuse a shared prompt prefix);
    /// returns the positions kept (see `truncate_seq`).
    pub fn truncate(&mut self, n: usize) -> Result<usize> {
        self.truncate_seq(0, n)
    }

    /// Forgets cached positions of `seq` from `n` on and returns how many are kept: `n`, or
    /// 0 where the sliding layers no longer hold the window before `n` (their rings moved on,
    /// or a loaded state lacked it): the sequence then starts over.
    pub fn truncate_seq(&mut self, seq: usize, n: usize) -> Result<usize> {
        self.check_seq(seq)?;
        if n > self.n_past[seq] {
            return Err(Error::invalid(format!(
                "cannot keep {n} positions of sequence {seq}: only {} are cached",
                self.n_past[seq]
            )));
        }
        let held = n.saturating_sub(self.config.swa_window) >= self.held_from[seq];
        let n = if held { n } else { 0 };
        if n == 0 {
            self.held_from[seq] = 0;
        }
        self.n_past[seq] = n;
        Ok(n)
    }

    /// Sequence `seq`'s cached positions as bytes: a header that names the cache's shape and
    /// types, then its K and V rows. `load_kv` restores them, in this model or another
    /// instance of the same file and cache types.
    pub fn save_kv(&self, seq: usize) -> Result<Vec<u8>> {
        self.check_seq(seq)?;
        let n = self.n_past[seq];
        // Sliding layers: their window and what the ring holds before it, up to the margin
        // every ring has (so that the restored prefix can still be cut back a little).
        let held = n.saturating_sub(self.held_from[seq]);
        let recent = held.min(self.config.swa_window + kv_cache::MIN_RING_MARGIN);
        let mut out = self.kv_state(n, recent).header();
        out.reserve(self.cache.k.saved_len(n, recent) + self.cache.v.saved_len(n, recent));
        self.cache.k.save(seq * self.n_ctx, n, recent, &mut out);
        self.cache.v.save(seq * self.n_ctx, n, recent, &mut out);
        Ok(out)
    }

    /// Replaces sequence `seq`'s cache with a state from `save_kv`; refuses (changing
    /// nothing) a state of another cache shape or type, or one longer than the context.
    pub fn load_kv(&mut self, seq: usize, data: &[u8]) -> Result<()> {
        self.check_seq(seq)?;
        let bad = |why: String| Error::invalid(format!("cannot load this KV state: {why}"));
        let (n, recent, body) = self.kv_state(0, 0).read(data).map_err(|shape| {
            bad(match shape {
                false => "it is not a ferrollm KV state".into(),
                true => format!(
                    "it was saved from a cache of another shape or type (this model: {} layers, \
                     {} KV heads of {}, K {} and V {})",
                    self.config.n_layer,
                    self.config.n_head_kv,
                    self.config.head_dim,
                    self.cache.k.ty,
                    self.cache.v.ty
                ),
            })
        })?;
        if n > self.n_ctx {
            return Err(bad(format!(
                "it holds {n} positions; the context has {}",
                self.n_ctx
            )));
        }
        let window = self.config.swa_window;
        if self.sliding() && !(n.min(window)..=n.min(self.ring)).contains(&recent) {
            return Err(bad(format!(
                "its sliding-window layers hold {recent} of {n} positions (a window is {window})"
            )));
        }
        let (k_len, v_len) = (
            self.cache.k.saved_len(n, recent),
            self.cache.v.saved_len(n, recent),
        );
        if body.len() != k_len + v_len {
            return Err(bad(format!(
                "{} bytes of rows, expected {} for {n} positions",
                body.len(),
                k_len + v_len
            )));
        }
        let base = seq * self.n_ctx;
        self.cache.k.load(base, n, recent, &body[..k_len]);
        self.cache.v.load(base, n, recent, &body[k_len..]);
        self.n_past[seq] = n;
        self.held_from[seq] = if self.sliding() { n - recent } else { 0 };
        Ok(())
    }

    /// The saved-state header of this cache with `n` positions, `recent` of them in the
    /// sliding layers.
    fn kv_state(&self, n: usize, recent: usize) -> kv_cache::StateHeader {
        let c = &self.config;
        kv_cache::StateHeader {
            shape: [c.n_layer, c.n_head_kv, c.head_dim, c.swa_window],
            types: [self.cache.k.ty, self.cache.v.ty],
            n,
            recent,
        }
    }

    /// Checks that `n` more tokens fit sequence `seq` and are in the vocabulary.
    fn check_tokens(&self, seq: usize, tokens: &[u32]) -> Result<()> {
        let (n_ctx, past) = (self.n_ctx, self.n_past[seq]);
        if past + tokens.len() > n_ctx {
            return Err(Error::invalid(format!(
                "{} tokens do not fit in the context: {past} of {n_ctx} positions are used, {} are \
                 free (raise n_ctx or shorten the prompt)",
                tokens.len(),
                n_ctx - past
            )));
        }
        let n_vocab = self.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(self.out_of_vocabulary(bad as i64));
        }
        Ok(())
    }

    /// The error for a token id the vocabulary lacks (negative ones too, from the bindings).
    pub fn out_of_vocabulary(&self, token: i64) -> Error {
        let n_vocab = self.n_vocab();
        Error::invalid(format!(
            "token id {token} is outside the vocabulary of {n_vocab} (valid ids: 0..{})",
            n_vocab - 1
        ))
    }

    /// NaN/Inf weights (a corrupt or hostile file) poison everything downstream: refuses
    /// logits that are not all finite; `position(i)` is the position of logit row i.
    fn check_logits(
        logits: &[f32],
        n_vocab: usize,
        position: impl Fn(usize) -> usize,
    ) -> Result<()> {
        match logits.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::invalid(format!(
                "the model produced a non-finite logit ({}) at position {}: the file's weights \
                 hold NaN or Inf values",
                logits[i],
                position(i / n_vocab)
            ))),
        }
    }

    /// Runs each sequence's tokens after its cached positions, all in one forward pass (the
    /// caller keeps the batch to a size it can afford: no splitting here), and replaces
    /// `logits` with the logits of each run's last token, in order: [runs.len()][n_vocab].
    /// A sequence may appear once. Fails before changing anything on bad input; a failed
    /// pass keeps none of its positions.
    pub fn eval_batch(&mut self, runs: &[(usize, &[u32])], logits: &mut Vec<f32>) -> Result<()> {
        if runs.is_empty() {
            return Err(Error::invalid("no sequences to evaluate"));
        }
        for (i, &(seq, tokens)) in runs.iter().enumerate() {
            self.check_seq(seq)?;
            if tokens.is_empty() {
                return Err(Error::invalid(format!(
                    "no tokens to evaluate for sequence {seq}"
                )));
            }
            if runs[..i].iter().any(|&(s, _)| s == seq) {
                return Err(Error::invalid(format!(
                    "sequence {seq} appears twice in one batch"
                )));
            }
            self.check_tokens(seq, tokens)?;
        }
        // The batch is laid out in scratch buffers taken for the call (no allocation per step).
        let (mut flat, mut batch) = (
            std::mem::take(&mut self.scratch.tokens),
            std::mem::take(&mut self.scratch.runs),
        );
        flat.clear();
        batch.clear();
        self.scratch.rows.clear();
        for &(seq, tokens) in runs {
            flat.extend_from_slice(tokens);
            self.scratch.rows.push(flat.len() - 1);
            batch.push(Run {
                seq,
                len: tokens.len(),
            });
        }
        logits.clear();
        let mut result = self.forward(&flat, &batch, logits);
        if result.is_ok() {
            let n_vocab = self.n_vocab();
            result = Self::check_logits(logits, n_vocab, |r| self.n_past[runs[r].0] - 1);
            if result.is_err() {
                for run in &batch {
                    self.n_past[run.seq] -= run.len; // nothing of a failed call is kept
                }
            }
        }
        (self.scratch.tokens, self.scratch.runs) = (flat, batch);
        result
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
        self.check_tokens(0, tokens)?;
        logits.clear();
        let start = self.n_past[0];
        for (i, batch) in tokens.chunks(self.n_batch).enumerate() {
            // Rows of this batch (from `offset` on) whose logits are wanted, if any.
            let offset = i * self.n_batch;
            self.scratch.rows.clear();
            self.scratch
                .rows
                .extend(first.saturating_sub(offset).min(batch.len())..batch.len());
            let run = Run {
                seq: 0,
                len: batch.len(),
            };
            if let Err(e) = self.forward(batch, &[run], logits) {
                self.n_past[0] = start; // nothing of a failed call is kept
                return Err(e);
            }
        }
        let result = Self::check_logits(logits, self.n_vocab(), |r| start + first + r);
        if result.is_err() {
            self.n_past[0] = start;
        }
        result
    }

    /// Runs `tokens` (in one batch, on sequence 0 after its cached positions) and returns the
    /// residual stream of each token entering each layer, then after the output norm, as
    /// Hugging Face's `output_hidden_states` does: [n_layer + 1][tokens.len()][n_embd]
    /// (routers built from prompts, as mergekit-moe's `hidden` gate mode).
    pub fn hidden_states(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let size = (self.config.n_layer + 1) * tokens.len() * self.config.n_embd;
        self.captured(tokens, Capture::Layers(Vec::with_capacity(size)))
    }

    /// Runs `tokens` as `hidden_states` does and returns only each token's state after the
    /// output norm, [tokens.len()][n_embd] (what llama.cpp pools into embeddings), without
    /// running the output head.
    pub fn embeddings(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let size = tokens.len() * self.config.n_embd;
        self.captured(tokens, Capture::Output(Vec::with_capacity(size)))
    }

    fn captured(&mut self, tokens: &[u32], capture: Capture) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to evaluate"));
        }
        self.check_tokens(0, tokens)?;
        self.observer.capture = Some(capture);
        self.scratch.rows.clear();
        self.scratch.rows.extend(0..tokens.len());
        let mut logits = Vec::new();
        let run = Run {
            seq: 0,
            len: tokens.len(),
        };
        let result = self.forward(tokens, &[run], &mut logits);
        let out = self.observer.capture.take().expect("set above");
        result.map(|()| out.into_inner())
    }
}

#[cfg(test)]
mod tests;
