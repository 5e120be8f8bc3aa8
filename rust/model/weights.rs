//! The model's tensors, located in the memory-mapped file and checked against the config.
//! Nothing is copied except the small norm vectors: a `Tensor` is a byte range of the map.
//!
//! MoE experts come in two layouts (see FORMATS.md): merged 3-D tensors
//! (`blk.N.ffn_gate_exps.weight`, `ne` = [n_embd, n_ff, n_expert]) and, in files made before
//! April 2024, one tensor per expert (`blk.N.ffn_gate.E.weight`). Both become the same list of
//! per-expert matrices, since an expert's slice of a merged tensor is contiguous.

use super::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::kernels::TypeKernels;
use crate::matmul::{QMatrix, activation_type};
use crate::quant;

/// A weight matrix: `rows` rows of `cols` elements of `ty` at `start..start+len` in the file,
/// with its type's kernels for the active tier (resolved at load, passed to every product).
#[derive(Clone, Copy, Debug)]
pub struct Tensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub start: usize,
    pub len: usize,
    pub kernels: &'static TypeKernels,
}

impl Tensor {
    /// The matrix view over the file's bytes (shape and length were validated at load).
    pub fn mat<'a>(&self, file: &'a [u8]) -> QMatrix<'a> {
        QMatrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &file[self.start..self.start + self.len],
            kernels: self.kernels,
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.len / self.rows
    }
}

pub struct ExpertFfn {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

pub enum Ffn {
    Dense(ExpertFfn),
    Moe {
        /// [n_expert rows of n_embd]: the router.
        router: Tensor,
        experts: Vec<ExpertFfn>,
    },
}

/// The Q, K and V biases (Qwen2), present for all three or none.
pub struct QkvBias {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Views of `attn_q`/`attn_k`/`attn_v`, or of the row blocks of a fused `attn_qkv`.
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub qkv_bias: Option<QkvBias>,
    /// Per-head RMSNorm weights of Q and K (`head_dim` each), where the architecture has them.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Tensor,
    /// Norm of the attention output before its residual add (Gemma).
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn,
    /// Norm of the feed-forward output before its residual add (Gemma).
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// Per-frequency divisors of the rope angles: Llama 3.1's `rope_freqs`, or Phi-3's
/// `rope_factors_short` / `rope_factors_long` (the long ones beyond the original context).
#[derive(Default)]
pub struct RopeFactors {
    pub short: Option<Vec<f32>>,
    pub long: Option<Vec<f32>>,
}

pub struct Weights {
    pub n_vocab: usize,
    pub token_embd: Tensor,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// `output.weight`, or the token embedding when the file ties them.
    pub output: Tensor,
    pub rope_factors: RopeFactors,
}

fn info<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo> {
    file.tensor(name)
        .ok_or_else(|| Error::invalid(format!("model file lacks tensor '{name}'")))
}

fn shape_error(c: &Config, t: &TensorInfo, want: &[usize]) -> Error {
    Error::invalid(format!(
        "tensor '{}' has shape {:?}, but the metadata says {want:?} ({})",
        t.name,
        t.dims,
        shape_keys(c, &t.name)
    ))
}

/// The metadata keys (with their values) that set the expected shape of tensor `name`, so a
/// file whose metadata contradicts its tensors names both.
fn shape_keys(c: &Config, name: &str) -> String {
    let kind = name.trim_end_matches(".weight").trim_end_matches(".bias");
    let kind = kind
        .rsplit('.')
        .find(|p| p.parse::<usize>().is_err())
        .unwrap_or(kind);
    let head = ["attention.key_length"];
    let keys: Vec<&str> = match kind {
        "attn_q" | "attn_output" => {
            [&["embedding_length", "attention.head_count"][..], &head].concat()
        }
        "attn_k" | "attn_v" => {
            [&["embedding_length", "attention.head_count_kv"][..], &head].concat()
        }
        "attn_qkv" => vec![
            "embedding_length",
            "attention.head_count",
            "attention.head_count_kv",
            head[0],
        ],
        "attn_q_norm" | "attn_k_norm" => head.to_vec(),
        "ffn_gate" | "ffn_up" | "ffn_down" => vec!["embedding_length", "feed_forward_length"],
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
            vec![
                "embedding_length",
                "expert_feed_forward_length",
                "expert_count",
            ]
        }
        "ffn_gate_inp" => vec!["embedding_length", "expert_count"],
        "rope_freqs" | "rope_factors_long" | "rope_factors_short" => vec!["rope.dimension_count"],
        _ => vec!["embedding_length"],
    };
    let value = |k: &str| match k {
        "embedding_length" => c.n_embd,
        "attention.head_count" => c.n_head,
        "attention.head_count_kv" => c.n_head_kv,
        "attention.key_length" => c.head_dim,
        "feed_forward_length" => c.n_ff,
        "expert_feed_forward_length" => c.n_ff_exp,
        "expert_count" => c.n_expert,
        _ => c.n_rot,
    };
    keys.iter()
        .map(|k| format!("{}.{k} = {}", c.arch.name, value(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_dims(c: &Config, t: &TensorInfo, want: &[usize]) -> Result<()> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if dims != want {
        return Err(shape_error(c, t, want));
    }
    Ok(())
}

/// A matrix of `rows` x `cols` (ggml dims [cols, rows]), times `count` stacked (3-D) if > 1.
fn matrices(
    file: &GgufFile,
    c: &Config,
    name: &str,
    cols: usize,
    rows: usize,
    count: usize,
) -> Result<Vec<Tensor>> {
    let t = info(file, name)?;
    let want: Vec<usize> = if count > 1 {
        vec![cols, rows, count]
    } else {
        vec![cols, rows]
    };
    check_dims(c, t, &want)?;
    if activation_type(t.ty).is_none() {
        return Err(Error::Unsupported(format!(
            "tensor type {} for tensor '{name}' (no matrix product for this type)",
            t.ty
        )));
    }
    let data = file.tensor_data(t);
    let one = data.len() / count;
    // Validates block divisibility and byte count once, and resolves the kernels.
    let kernels = QMatrix::new(t.ty, rows, cols, &data[..one])
        .map_err(|e| Error::invalid(format!("tensor '{name}': {e}")))?
        .kernels;
    let base = (file.data_offset + t.offset) as usize;
    Ok((0..count)
        .map(|i| Tensor {
            ty: t.ty,
            rows,
            cols,
            start: base + i * one,
            len: one,
            kernels,
        })
        .collect())
}

fn matrix(file: &GgufFile, c: &Config, name: &str, cols: usize, rows: usize) -> Result<Tensor> {
    Ok(matrices(file, c, name, cols, rows, 1)?[0])
}

impl Tensor {
    /// Consecutive row blocks of `sizes` rows (a fused tensor's parts; each row's bytes are
    /// contiguous in every GGUF type, so a block is a byte range).
    fn split_rows(&self, sizes: &[usize]) -> Vec<Tensor> {
        let rb = self.row_bytes();
        let mut start = self.start;
        sizes
            .iter()
            .map(|&rows| {
                let t = Tensor {
                    rows,
                    start,
                    len: rows * rb,
                    ..*self
                };
                start += t.len;
                t
            })
            .collect()
    }
}

/// Q, K and V: separate tensors, or the row blocks of a fused `attn_qkv` (Phi-3).
fn attention_projections(file: &GgufFile, c: &Config, l: usize) -> Result<[Tensor; 3]> {
    let name = |s: &str| format!("blk.{l}.{s}.weight");
    let (q, kv) = (c.q_dim(), c.kv_dim());
    if file.tensor(&name("attn_qkv")).is_some() {
        let fused = matrix(file, c, &name("attn_qkv"), c.n_embd, q + 2 * kv)?;
        let parts = fused.split_rows(&[q, kv, kv]);
        return Ok([parts[0], parts[1], parts[2]]);
    }
    Ok([
        matrix(file, c, &name("attn_q"), c.n_embd, q)?,
        matrix(file, c, &name("attn_k"), c.n_embd, kv)?,
        matrix(file, c, &name("attn_v"), c.n_embd, kv)?,
    ])
}

/// Q/K/V biases: `attn_qkv.bias` split, or `attn_{q,k,v}.bias`, or none.
fn qkv_bias(file: &GgufFile, c: &Config, l: usize) -> Result<Option<QkvBias>> {
    let name = |s: &str| format!("blk.{l}.{s}.bias");
    let (q, kv) = (c.q_dim(), c.kv_dim());
    if file.tensor(&name("attn_qkv")).is_some() {
        let mut all = vector(file, c, &name("attn_qkv"), q + 2 * kv)?;
        let v = all.split_off(q + kv);
        let k = all.split_off(q);
        return Ok(Some(QkvBias { q: all, k, v }));
    }
    let present = ["attn_q", "attn_k", "attn_v"].map(|t| file.tensor(&name(t)).is_some());
    match present {
        [false, false, false] => Ok(None),
        [true, true, true] => Ok(Some(QkvBias {
            q: vector(file, c, &name("attn_q"), q)?,
            k: vector(file, c, &name("attn_k"), kv)?,
            v: vector(file, c, &name("attn_v"), kv)?,
        })),
        _ => Err(Error::invalid(format!(
            "layer {l} has biases for some of Q, K and V but not all: each of {}, {} and {} \
             must be present or none",
            name("attn_q"),
            name("attn_k"),
            name("attn_v")
        ))),
    }
}

/// A norm vector the architecture requires (`Some`) or lacks (`None`).
fn norm_if(
    file: &GgufFile,
    c: &Config,
    wanted: bool,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>> {
    wanted.then(|| vector(file, c, name, len)).transpose()
}

/// A 1-D tensor that may be absent.
fn optional_vector(
    file: &GgufFile,
    c: &Config,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>> {
    norm_if(file, c, file.tensor(name).is_some(), name, len)
}

/// A 1-D tensor (norm weights) dequantized to f32.
fn vector(file: &GgufFile, c: &Config, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = info(file, name)?;
    check_dims(c, t, &[len])?;
    let mut out = vec![0.0; len];
    quant::dequantize(t.ty, file.tensor_data(t), &mut out)
        .map_err(|e| Error::invalid(format!("tensor '{name}': {e}")))?;
    Ok(out)
}

fn load_ffn(file: &GgufFile, c: &Config, l: usize) -> Result<Ffn> {
    let e = c.n_embd;
    if c.n_expert == 0 {
        let f = c.n_ff;
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        let down = matrix(file, c, &name("ffn_down"), f, e)?;
        if file.tensor(&name("ffn_gate")).is_none() {
            // Phi-3 fuses them: `ffn_up` holds the gate's rows, then the up rows.
            let fused = matrix(file, c, &name("ffn_up"), e, 2 * f)?;
            let parts = fused.split_rows(&[f, f]);
            return Ok(Ffn::Dense(ExpertFfn {
                gate: parts[0],
                up: parts[1],
                down,
            }));
        }
        return Ok(Ffn::Dense(ExpertFfn {
            gate: matrix(file, c, &name("ffn_gate"), e, f)?,
            up: matrix(file, c, &name("ffn_up"), e, f)?,
            down,
        }));
    }
    let f = c.n_ff_exp;
    let router = matrix(
        file,
        c,
        &format!("blk.{l}.ffn_gate_inp.weight"),
        e,
        c.n_expert,
    )?;
    let n = c.n_expert;
    let experts = if file
        .tensor(&format!("blk.{l}.ffn_gate_exps.weight"))
        .is_some()
    {
        let gate = matrices(file, c, &format!("blk.{l}.ffn_gate_exps.weight"), e, f, n)?;
        let up = matrices(file, c, &format!("blk.{l}.ffn_up_exps.weight"), e, f, n)?;
        let down = matrices(file, c, &format!("blk.{l}.ffn_down_exps.weight"), f, e, n)?;
        (0..n)
            .map(|i| ExpertFfn {
                gate: gate[i],
                up: up[i],
                down: down[i],
            })
            .collect()
    } else {
        (0..n)
            .map(|i| {
                Ok(ExpertFfn {
                    gate: matrix(file, c, &format!("blk.{l}.ffn_gate.{i}.weight"), e, f)?,
                    up: matrix(file, c, &format!("blk.{l}.ffn_up.{i}.weight"), e, f)?,
                    down: matrix(file, c, &format!("blk.{l}.ffn_down.{i}.weight"), f, e)?,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Ffn::Moe { router, experts })
}

impl Weights {
    pub fn load(file: &GgufFile, c: &Config) -> Result<Weights> {
        let embd = info(file, "token_embd.weight")?;
        if embd.dims.len() != 2 || embd.dims[0] as usize != c.n_embd || embd.dims[1] == 0 {
            return Err(shape_error(c, embd, &[c.n_embd, 0]));
        }
        let n_vocab = embd.dims[1] as usize;
        if quant::dequant_fn(embd.ty, quant::Isa::Scalar).is_none() {
            return Err(Error::Unsupported(format!(
                "tensor type {} for token_embd.weight",
                embd.ty
            )));
        }
        let token_embd = matrix(file, c, "token_embd.weight", c.n_embd, n_vocab)?;
        let output = match file.tensor("output.weight") {
            Some(_) => matrix(file, c, "output.weight", c.n_embd, n_vocab)?,
            None => token_embd,
        };
        let (e, a) = (c.n_embd, c.arch);
        let layers = (0..c.n_layer)
            .map(|l| {
                let name = |s: &str| format!("blk.{l}.{s}.weight");
                let [wq, wk, wv] = attention_projections(file, c, l)?;
                Ok(Layer {
                    attn_norm: vector(file, c, &name("attn_norm"), e)?,
                    wq,
                    wk,
                    wv,
                    qkv_bias: qkv_bias(file, c, l)?,
                    q_norm: norm_if(file, c, a.qk_norm, &name("attn_q_norm"), c.head_dim)?,
                    k_norm: norm_if(file, c, a.qk_norm, &name("attn_k_norm"), c.head_dim)?,
                    wo: matrix(file, c, &name("attn_output"), c.q_dim(), e)?,
                    post_attn_norm: norm_if(
                        file,
                        c,
                        a.post_norms,
                        &name("post_attention_norm"),
                        e,
                    )?,
                    ffn_norm: vector(file, c, &name("ffn_norm"), e)?,
                    ffn: load_ffn(file, c, l)?,
                    post_ffn_norm: norm_if(file, c, a.post_norms, &name("post_ffw_norm"), e)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let half = c.n_rot / 2;
        let rope_factors = match optional_vector(file, c, "rope_freqs.weight", half)? {
            Some(freqs) => RopeFactors {
                short: Some(freqs.clone()),
                long: Some(freqs),
            },
            None => RopeFactors {
                short: optional_vector(file, c, "rope_factors_short.weight", half)?,
                long: optional_vector(file, c, "rope_factors_long.weight", half)?,
            },
        };
        Ok(Weights {
            n_vocab,
            token_embd,
            layers,
            output_norm: vector(file, c, "output_norm.weight", e)?,
            output,
            rope_factors,
        })
    }

    /// Every weight matrix the products read (views of fused tensors counted apart).
    pub fn matrices(&self) -> Vec<Tensor> {
        let mut out = vec![self.token_embd];
        for layer in &self.layers {
            out.extend([layer.wq, layer.wk, layer.wv, layer.wo]);
            let experts: &[ExpertFfn] = match &layer.ffn {
                Ffn::Dense(e) => std::slice::from_ref(e),
                Ffn::Moe { router, experts } => {
                    out.push(*router);
                    experts
                }
            };
            for e in experts {
                out.extend([e.gate, e.up, e.down]);
            }
        }
        if self.output.start != self.token_embd.start {
            out.push(self.output);
        }
        out
    }

    /// Every weight tensor's byte range, for prefetching the map with progress.
    pub fn ranges(&self) -> Vec<(usize, usize)> {
        self.matrices().iter().map(|t| (t.start, t.len)).collect()
    }
}
