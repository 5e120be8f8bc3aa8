//! One forward pass, read top to bottom as llama2.c's `transformer()`: embed the tokens, run
//! each layer (an attention block, then a feed-forward block, each added to the residual
//! stream `x`), then the output norm and head. The observer (`Model::observer`) sees the
//! pass at fixed points: timing laps, inputs of the matrix products, hidden states.

use super::attention::{KeySpan, Rope, attend, softcap};
use super::ffn::{self, FfnContext};
use super::imatrix::Input;
use super::kv_cache::KvCache;
use super::profile::Component;
use super::weights::{Ffn, Layer};
use super::{Model, Run, Scratch};
use crate::error::{Error, Result};
use crate::matmul::{FlushDenormals, Pool, matmul, matmul_many};

impl Model {
    /// One batch of `runs` (tokens back to back); appends to `logits` those of the rows in
    /// `scratch.rows`.
    pub(super) fn forward(
        &mut self,
        tokens: &[u32],
        runs: &[Run],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        // No subnormal operand anywhere in the pass (see matmul::denormals).
        let _flush = FlushDenormals::on();
        self.observer.start_pass();
        self.embed(tokens);
        self.place(runs)?;
        for l in 0..self.config.n_layer {
            self.layer(l)?;
        }
        self.observer.on_layers_done(tokens.len());
        self.head(logits)?;
        // Only a pass that ran to the end keeps its positions.
        for run in runs {
            self.n_past[run.seq] += run.len;
        }
        Ok(())
    }

    /// Layer `l` on the residual stream `scratch.x`.
    fn layer(&mut self, l: usize) -> Result<()> {
        self.observer.on_layer(l, &self.scratch.x);
        self.attention_block(l)?;
        self.ffn_block(l)
    }

    /// The token embeddings of `tokens` as the residual stream (scaled by sqrt(n_embd) where
    /// the architecture does), and the scratch sized for them.
    fn embed(&mut self, tokens: &[u32]) {
        let (c, s) = (&self.config, &mut self.scratch);
        let (n, e) = (tokens.len(), c.n_embd);
        let bytes = self.file.bytes();
        s.x.resize(n * e, 0.0);
        let embd = &self.weights.token_embd;
        for (row, &t) in s.x.chunks_exact_mut(e).zip(tokens) {
            let start = embd.start + t as usize * embd.row_bytes();
            (self.embd_dequant)(&bytes[start..start + embd.row_bytes()], row);
        }
        if c.arch.embed_scaled {
            let scale = (e as f32).sqrt();
            s.x.iter_mut().for_each(|v| *v *= scale);
        }
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        s.normed.resize(n * e, 0.0);
        s.q.resize(n * qd, 0.0);
        s.k.resize(n * kvd, 0.0);
        s.v.resize(n * kvd, 0.0);
        s.attn.resize(n * qd, 0.0);
        s.proj.resize(n * e, 0.0);
    }

    /// Each token's position and the cache positions it attends to (`scratch.pos`, `spans`,
    /// `spans_swa`). Refuses a run longer than the sliding layers' rings hold beyond their
    /// window.
    fn place(&mut self, runs: &[Run]) -> Result<()> {
        let (c, s) = (&self.config, &mut self.scratch);
        // A sliding layer's ring must hold a run's rows and the window before them at once.
        let margin = self.ring - c.swa_window.min(self.ring);
        if self.ring < self.n_ctx
            && let Some(run) = runs.iter().find(|r| r.len > margin)
        {
            return Err(Error::invalid(format!(
                "{} tokens in one pass: the sliding-window layers' cache holds {margin} beyond their window (n_batch or less per pass)",
                run.len
            )));
        }
        s.pos.clear();
        s.spans.clear();
        s.spans_swa.clear();
        for run in runs {
            // The rows about to be written overwrite the ring's oldest (even if this pass fails).
            let end = self.n_past[run.seq] + run.len;
            self.held_from[run.seq] = self.held_from[run.seq].max(end.saturating_sub(self.ring));
            let (start, past) = (run.seq * self.n_ctx, self.n_past[run.seq]);
            for i in 0..run.len {
                let pos = past + i;
                s.pos.push(pos);
                s.spans.push(KeySpan {
                    start,
                    len: pos + 1,
                });
                if c.swa_window > 0 {
                    // A sliding layer sees the last `swa_window` positions, itself included.
                    let first = (pos + 1).saturating_sub(c.swa_window);
                    s.spans_swa.push(KeySpan {
                        start: start + first,
                        len: pos + 1 - first,
                    });
                }
            }
        }
        Ok(())
    }

    /// `x += wo · attention(q, K, V)` of `norm(x)`, the batch's K and V rows first written to
    /// the cache.
    fn attention_block(&mut self, l: usize) -> Result<()> {
        let (c, w) = (&self.config, &self.weights.layers[l]);
        let (s, obs, pool) = (&mut self.scratch, &mut self.observer, &self.pool);
        let bytes = self.file.bytes();
        rms_norm(&s.x, &w.attn_norm, c.rms_eps, &mut s.normed);
        obs.lap(Component::Embed);
        obs.on_input(Input::Qkv, 0, &s.normed);
        project_qkv(pool, bytes, w, c.rms_eps, s)?;
        let sliding = c.swa_layers[l];
        rope_into_cache(&self.ropes[sliding as usize], &mut self.cache, l, s);
        let spans = if sliding { &s.spans_swa } else { &s.spans };
        let shape = &self.attn_shape;
        attend(
            pool,
            shape,
            &self.cache,
            l,
            spans,
            &s.q,
            &mut s.heads,
            &mut s.attn,
        )?;
        obs.on_input(Input::AttnOutput, 0, &s.attn);
        matmul(pool, &w.wo.mat(bytes), &s.attn, &mut s.proj, &mut s.act)?;
        post_norm(&mut s.proj, w.post_attn_norm.as_deref(), c.rms_eps);
        obs.lap(Component::Attention);
        add(&mut s.x, &s.proj);
        Ok(())
    }

    /// `x += ffn(norm(x))`: the gated feed-forward network, or the experts the router picks.
    fn ffn_block(&mut self, l: usize) -> Result<()> {
        let (c, w) = (&self.config, &self.weights.layers[l]);
        let (s, obs) = (&mut self.scratch, &mut self.observer);
        rms_norm(&s.x, &w.ffn_norm, c.rms_eps, &mut s.normed);
        obs.lap(Component::Embed);
        let cx = FfnContext {
            pool: &self.pool,
            file: self.file.bytes(),
            act: c.arch.act,
        };
        match &w.ffn {
            Ffn::Dense(f) => ffn::dense(&cx, f, &s.normed, &mut s.proj, &mut s.ffn, obs)?,
            Ffn::Moe { router, experts } => ffn::moe(
                &cx,
                router,
                experts,
                c.n_expert_used,
                c.expert_weights_norm,
                &s.normed,
                &mut s.proj,
                &mut s.ffn,
                obs,
            )?,
        }
        post_norm(&mut s.proj, w.post_ffn_norm.as_deref(), c.rms_eps);
        obs.lap(Component::Experts);
        add(&mut s.x, &s.proj);
        Ok(())
    }

    /// The output norm of the rows in `scratch.rows`, then the output head: their logits,
    /// appended to `logits`.
    fn head(&mut self, logits: &mut Vec<f32>) -> Result<()> {
        let (c, s) = (&self.config, &mut self.scratch);
        let (e, m) = (c.n_embd, s.rows.len());
        for (j, &row) in s.rows.iter().enumerate() {
            rms_norm(
                &s.x[row * e..][..e],
                &self.weights.output_norm,
                c.rms_eps,
                &mut s.normed[j * e..][..e],
            );
        }
        if m > 0 && self.observer.on_output(&s.normed[..m * e]) {
            let old = logits.len();
            logits.resize(old + m * self.weights.n_vocab, 0.0);
            let out = self.weights.output.mat(self.file.bytes());
            let (pool, rows) = (&self.pool, &s.normed[..m * e]);
            matmul(pool, &out, rows, &mut logits[old..], &mut s.act)?;
            if let Some(cap) = c.final_softcap {
                softcap(&mut logits[old..], cap);
            }
        }
        self.observer.lap(Component::Head);
        Ok(())
    }
}

/// `q, k, v = wq·x, wk·x, wv·x` of `s.normed`, with their biases and per-head norms where
/// the layer has them.
fn project_qkv(pool: &Pool, bytes: &[u8], w: &Layer, eps: f32, s: &mut Scratch) -> Result<()> {
    matmul_many(
        pool,
        &[w.wq.mat(bytes), w.wk.mat(bytes), w.wv.mat(bytes)],
        &s.normed,
        &mut [&mut s.q, &mut s.k, &mut s.v],
        &mut s.act,
    )?;
    if let Some(b) = &w.qkv_bias {
        for (x, bias) in [(&mut s.q, &b.q), (&mut s.k, &b.k), (&mut s.v, &b.v)] {
            x.chunks_exact_mut(bias.len())
                .for_each(|row| add(row, bias));
        }
    }
    if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
        rms_norm_in_place(&mut s.q, qn, eps);
        rms_norm_in_place(&mut s.k, kn, eps);
    }
    Ok(())
}

/// Rotates each token's q and k by its position, then writes its k and v rows to layer `l`'s
/// cache.
fn rope_into_cache(rope: &Rope, cache: &mut KvCache, l: usize, s: &mut Scratch) {
    let n = s.pos.len();
    let (qd, kvd) = (s.q.len() / n, s.k.len() / n);
    for (t, (&pos, span)) in s.pos.iter().zip(&s.spans).enumerate() {
        let k = &mut s.k[t * kvd..][..kvd];
        rope.apply(&mut [&mut s.q[t * qd..][..qd], &mut *k], pos);
        cache.k.write(l, span.start + pos, k);
        cache.v.write(l, span.start + pos, &s.v[t * kvd..][..kvd]);
    }
}

/// 1 / RMS of `row`, in f64 so that long rows sum exactly enough.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
    (1.0 / (ss / row.len() as f64 + eps as f64).sqrt()) as f32
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let scale = inv_rms(row, eps);
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// RMSNorm of each `w.len()` slice of `x` in place (per head for Q/K norms; Gemma's
/// post-norms).
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let scale = inv_rms(row, eps);
        for (v, &g) in row.iter_mut().zip(w) {
            *v *= scale * g;
        }
    }
}

/// The norm of a block's output before its residual add, where the layer has one (Gemma).
fn post_norm(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    if let Some(w) = w {
        rms_norm_in_place(x, w, eps);
    }
}

fn add(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}
