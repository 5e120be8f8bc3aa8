//! Activation statistics for importance matrices: per weight matrix (per expert for MoE), the
//! sum of squared input activations of each column and the number of rows seen, as llama.cpp's
//! `imatrix` tool collects them. The quantizers weigh each column's error by its mean square.
//!
//! Matrices that read the same input share one entry (q/k/v; gate/up), named after all of them.
//! Recording is off unless `Model::start_activation_stats` was called; the forward pass then
//! adds one pass over its inputs per matrix product.

use std::sync::Mutex;

use super::config::Config;
use super::weights::{Ffn, Weights};

/// One statistics entry: `n_mat` matrices (experts) of `cols` input columns.
pub struct StatEntry {
    /// The tensors this input feeds (each gets these statistics).
    pub names: Vec<String>,
    pub cols: usize,
    /// Sums of squares, `n_mat * cols`, expert-major.
    pub sums: Vec<f64>,
    /// Rows (tokens) seen per matrix.
    pub counts: Vec<u64>,
}

impl StatEntry {
    fn new(names: Vec<String>, cols: usize, n_mat: usize) -> StatEntry {
        StatEntry {
            names,
            cols,
            sums: vec![0.0; n_mat * cols],
            counts: vec![0; n_mat],
        }
    }
}

/// Where the inputs of one kind of product go.
#[derive(Clone, Copy)]
struct Slot {
    entry: usize,
    /// Experts stored as separate tensors: expert i has entry `entry + i`.
    split: bool,
}

#[derive(Clone, Copy)]
pub enum Input {
    Qkv,
    AttnOutput,
    Router,
    GateUp,
    Down,
}

struct LayerSlots {
    qkv: Slot,
    attn_output: Slot,
    router: Option<Slot>,
    gate_up: Slot,
    down: Slot,
}

pub struct ActivationStats {
    entries: Mutex<Vec<StatEntry>>,
    layers: Vec<LayerSlots>,
}

impl ActivationStats {
    pub fn new(c: &Config, w: &Weights, file_has: impl Fn(&str) -> bool) -> ActivationStats {
        let mut entries = Vec::new();
        let mut add = |names: Vec<String>, cols: usize, n_mat: usize| {
            entries.push(StatEntry::new(names, cols, n_mat));
            entries.len() - 1
        };
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let name = |s: &str| format!("blk.{l}.{s}.weight");
                let single = |entry| Slot {
                    entry,
                    split: false,
                };
                // Fused tensors (Phi-3's attn_qkv, its gate+up in ffn_up) get the entry alone.
                let present = |names: &[&str]| -> Vec<String> {
                    names
                        .iter()
                        .map(|s| name(s))
                        .filter(|n| file_has(n))
                        .collect()
                };
                let qkv = single(add(
                    present(&["attn_q", "attn_k", "attn_v", "attn_qkv"]),
                    c.n_embd,
                    1,
                ));
                let attn_output = single(add(vec![name("attn_output")], c.q_dim(), 1));
                let (router, gate_up, down) = match &layer.ffn {
                    Ffn::Dense(_) => (
                        None,
                        single(add(present(&["ffn_gate", "ffn_up"]), c.n_embd, 1)),
                        single(add(vec![name("ffn_down")], c.n_ff, 1)),
                    ),
                    Ffn::Moe { experts, .. } => {
                        let n = experts.len();
                        let router = Some(single(add(vec![name("ffn_gate_inp")], c.n_embd, 1)));
                        if file_has(&name("ffn_gate_exps")) {
                            let names = vec![name("ffn_gate_exps"), name("ffn_up_exps")];
                            let gate_up = single(add(names, c.n_embd, n));
                            (
                                router,
                                gate_up,
                                single(add(vec![name("ffn_down_exps")], c.n_ff_exp, n)),
                            )
                        } else {
                            let per = |s: &str, i: usize| format!("blk.{l}.{s}.{i}.weight");
                            // One entry per expert, consecutive.
                            let mut per_expert = |names: &dyn Fn(usize) -> Vec<String>, cols| {
                                let entry = add(names(0), cols, 1);
                                (1..n).for_each(|i| _ = add(names(i), cols, 1));
                                Slot { entry, split: true }
                            };
                            let gate_up = per_expert(
                                &|i| vec![per("ffn_gate", i), per("ffn_up", i)],
                                c.n_embd,
                            );
                            let down = per_expert(&|i| vec![per("ffn_down", i)], c.n_ff_exp);
                            (router, gate_up, down)
                        }
                    }
                };
                LayerSlots {
                    qkv,
                    attn_output,
                    router,
                    gate_up,
                    down,
                }
            })
            .collect();
        ActivationStats {
            entries: Mutex::new(entries),
            layers,
        }
    }

    /// Adds the rows of `x` (inputs of `input` in `layer`, for `expert`) to the statistics.
    pub fn record(&self, layer: usize, input: Input, expert: usize, x: &[f32]) {
        let s = &self.layers[layer];
        let slot = match input {
            Input::Qkv => s.qkv,
            Input::AttnOutput => s.attn_output,
            Input::Router => match s.router {
                Some(r) => r,
                None => return,
            },
            Input::GateUp => s.gate_up,
            Input::Down => s.down,
        };
        let (entry, mat) = if slot.split {
            (slot.entry + expert, 0)
        } else {
            (slot.entry, expert)
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = &mut entries[entry];
        let cols = e.cols;
        let sums = &mut e.sums[mat * cols..][..cols];
        for row in x.chunks_exact(cols) {
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += v as f64 * v as f64;
            }
        }
        e.counts[mat] += (x.len() / cols) as u64;
    }

    pub fn into_entries(self) -> Vec<StatEntry> {
        self.entries.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}
