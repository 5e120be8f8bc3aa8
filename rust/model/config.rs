//! Hyper-parameters of a model, read from GGUF metadata (`{arch}.*` keys), with user
//! overrides applied first, as llama.cpp's `--override-kv KEY=TYPE:VALUE` does. What differs
//! between architectures beyond these numbers is in `super::arch`.

use super::arch::{self, Arch, Swa, SwaRope};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// The `{arch}.` keys the engine reads; overrides must name one of them.
pub const CONFIG_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "expert_feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.layer_norm_rms_epsilon",
    "attention.scale",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.freq_base_swa",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.attn_factor",
    "rope.scaling.original_context_length",
    "rope.scaling.yarn_log_multiplier",
    "rope.scaling.yarn_ext_factor",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "expert_count",
    "expert_used_count",
    "expert_weights_norm",
    "vocab_size",
];

/// YaRN's blend of interpolated and extrapolated frequencies (llama.cpp's `rope_yarn`).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub ext_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

/// One rope: theta_i = pos * freq_scale * base^(-2i/n_rot) / factor_i (factors from the file's
/// `rope_freqs` or Phi-3's long/short tensors), blended by YaRN, cos and sin times `mscale`.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub base: f32,
    pub freq_scale: f32,
    pub yarn: Option<Yarn>,
    /// Scale of cos and sin (so of q.k by its square): YaRN's magnitude correction times the
    /// file's `rope.scaling.attn_factor`.
    pub mscale: f32,
    /// The context the model was trained at before scaling (YaRN's correction range, Phi-3's
    /// choice of long factors).
    pub n_ctx_orig: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: &'static Arch,
    pub n_ctx_train: usize,
    /// The longest context the rope scaling allows (n_ctx_train without scaling).
    pub n_ctx_max: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    /// Feed-forward size of each expert (`expert_feed_forward_length`, else `n_ff`).
    pub n_ff_exp: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that RoPE rotates.
    pub n_rot: usize,
    pub rms_eps: f32,
    pub rope: RopeConfig,
    /// The rope of sliding-window layers.
    pub rope_swa: RopeConfig,
    /// Positions a sliding-window layer sees (itself included); 0 when there are none.
    pub swa_window: usize,
    /// Per layer: whether it attends through the sliding window.
    pub swa_layers: Vec<bool>,
    /// Multiplies q.k before the softmax.
    pub attn_scale: f32,
    /// Gemma 2's soft caps: x -> cap * tanh(x / cap) on attention scores and on logits.
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// 0 for a dense model.
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Whether the chosen experts' weights are renormalised to sum to 1 (`expert_weights_norm`).
    pub expert_weights_norm: bool,
}

/// Metadata with overrides laid over it.
struct Keys<'a> {
    file: &'a GgufFile,
    arch: String,
    overrides: &'a [(String, Value)],
}

impl Keys<'_> {
    fn get(&self, suffix: &str) -> Option<Value> {
        let key = format!("{}.{suffix}", self.arch);
        self.overrides
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| self.file.get(&key).cloned())
    }

    fn uint(&self, suffix: &str) -> Result<Option<usize>> {
        match self.get(suffix) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                Error::invalid(format!(
                    "metadata {}.{suffix} should be a non-negative integer, got {v} ({})",
                    self.arch,
                    v.type_name()
                ))
            }),
        }
    }

    fn required(&self, suffix: &str) -> Result<usize> {
        self.uint(suffix)?
            .ok_or_else(|| Error::invalid(format!("model metadata lacks {}.{suffix}", self.arch)))
    }

    fn float(&self, suffix: &str) -> Result<Option<f32>> {
        match self.get(suffix) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(x)),
            Some(Value::F64(x)) => Ok(Some(x as f32)),
            Some(v) => v.as_u64().map(|n| Some(n as f32)).ok_or_else(|| {
                Error::invalid(format!(
                    "metadata {}.{suffix} should be a number, got {v}",
                    self.arch
                ))
            }),
        }
    }
}

impl Config {
    /// Reads the hyper-parameters; `overrides` are full keys (`llama.expert_used_count`).
    pub fn from_gguf(file: &GgufFile, overrides: &[(String, Value)]) -> Result<Config> {
        let name = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("model metadata lacks general.architecture"))?
            .to_string();
        let arch = arch::find(&name).ok_or_else(|| {
            Error::Unsupported(format!(
                "model architecture '{name}' (supported: {})",
                arch::names().join(", ")
            ))
        })?;
        for (key, _) in overrides {
            let known = key
                .strip_prefix(&format!("{name}."))
                .is_some_and(|s| CONFIG_KEYS.contains(&s));
            if !known {
                return Err(Error::invalid(format!(
                    "unknown override key '{key}'; keys that can be overridden: {}",
                    CONFIG_KEYS
                        .iter()
                        .map(|k| format!("{name}.{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let keys = Keys {
            file,
            arch: name.clone(),
            overrides,
        };
        let n_embd = keys.required("embedding_length")?;
        let n_head = keys.required("attention.head_count")?;
        let n_head_kv = keys.uint("attention.head_count_kv")?.unwrap_or(n_head);
        if n_embd == 0 || n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::invalid(format!(
                "bad attention shape: embedding {n_embd}, {n_head} heads, {n_head_kv} KV heads \
                 (heads must be a nonzero multiple of KV heads)"
            )));
        }
        let head_dim = keys
            .uint("attention.key_length")?
            .unwrap_or(n_embd / n_head);
        let n_rot = keys.uint("rope.dimension_count")?.unwrap_or(head_dim);
        if head_dim == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "bad head shape: head size {head_dim}, rope dimensions {n_rot}"
            )));
        }
        let n_layer = keys.required("block_count")?;
        let n_ctx_train = keys.required("context_length")?;
        let n_ff = keys.required("feed_forward_length")?;
        if n_layer == 0 || n_ff == 0 || n_ctx_train == 0 {
            return Err(Error::invalid(format!(
                "bad model shape: {n_layer} layers, feed-forward {n_ff}, context {n_ctx_train}"
            )));
        }
        let n_expert = keys.uint("expert_count")?.unwrap_or(0);
        let n_expert_used = keys.uint("expert_used_count")?.unwrap_or(0);
        if n_expert > 0 && !(1..=n_expert).contains(&n_expert_used) {
            return Err(Error::invalid(format!(
                "{name}.expert_used_count is {n_expert_used}; it must be in 1..={n_expert} \
                 ({name}.expert_count)"
            )));
        }
        if n_expert == 1 {
            return Err(Error::invalid(format!(
                "{name}.expert_count of 1 is not a MoE"
            )));
        }
        let (rope, n_ctx_max) = rope_config(&keys, n_ctx_train)?;
        let rope_swa = match arch.swa_rope {
            SwaRope::Global => rope.clone(),
            SwaRope::Base(base) => RopeConfig {
                base: keys.float("rope.freq_base_swa")?.unwrap_or(base),
                freq_scale: 1.0,
                yarn: None,
                mscale: 1.0,
                n_ctx_orig: rope.n_ctx_orig,
            },
        };
        let (swa_window, swa_layers) = sliding_layers(&keys, arch.swa, n_layer)?;
        let attn_scale = match keys.float("attention.scale")? {
            Some(scale) => scale,
            None if arch.scale_by_embd_per_head.contains(&n_layer) => {
                1.0 / ((n_embd / n_head) as f32).sqrt()
            }
            None => 1.0 / (head_dim as f32).sqrt(),
        };
        let softcap =
            |key: &str| -> Result<Option<f32>> { Ok(keys.float(key)?.filter(|&cap| cap != 0.0)) };
        Ok(Config {
            arch,
            n_ctx_train,
            n_ctx_max,
            n_embd,
            n_layer,
            n_ff,
            n_ff_exp: keys.uint("expert_feed_forward_length")?.unwrap_or(n_ff),
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rms_eps: keys
                .float("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope,
            rope_swa,
            swa_window,
            swa_layers,
            attn_scale,
            attn_softcap: softcap("attn_logit_softcapping")?,
            final_softcap: softcap("final_logit_softcapping")?,
            n_expert,
            n_expert_used: if n_expert > 0 { n_expert_used } else { 0 },
            expert_weights_norm: match keys.get("expert_weights_norm") {
                None => true,
                Some(Value::Bool(b)) => b,
                Some(v) => {
                    return Err(Error::invalid(format!(
                        "metadata {name}.expert_weights_norm should be a boolean, got {v}"
                    )));
                }
            },
        })
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// The global rope and the longest context it allows (llama.cpp's `rope.scaling.*` reading).
fn rope_config(keys: &Keys, n_ctx_train: usize) -> Result<(RopeConfig, usize)> {
    let scaling = match keys.get("rope.scaling.type") {
        None => "none".to_string(),
        Some(Value::String(t)) => t,
        Some(v) => {
            return Err(Error::invalid(format!(
                "metadata {}.rope.scaling.type should be a string, got {v}",
                keys.arch
            )));
        }
    };
    let factor = match keys.float("rope.scaling.factor")? {
        None => 1.0,
        Some(f) if f.is_finite() && f > 0.0 => f,
        Some(f) => return Err(Error::invalid(format!("bad rope.scaling.factor {f}"))),
    };
    let n_ctx_orig = keys
        .uint("rope.scaling.original_context_length")?
        .unwrap_or(n_ctx_train);
    let attn_factor = keys.float("rope.scaling.attn_factor")?.unwrap_or(1.0);
    let base = keys.float("rope.freq_base")?.unwrap_or(10000.0);
    if !(base.is_finite() && base > 1.0) {
        return Err(Error::invalid(format!("bad rope.freq_base {base}")));
    }
    let (freq_scale, yarn, mscale) = match scaling.as_str() {
        "none" => (1.0, None, attn_factor),
        "linear" => (1.0 / factor, None, attn_factor),
        "yarn" => {
            // llama.cpp's magnitude: the file's attn_factor times get_mscale(factor), with
            // DeepSeek's log multiplier dividing it when given.
            let mscale = |m: f32| {
                if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * m * factor.ln() + 1.0
                }
            };
            let log_mul = keys
                .float("rope.scaling.yarn_log_multiplier")?
                .unwrap_or(0.0);
            let magnitude = if log_mul != 0.0 {
                mscale(1.0) / mscale(log_mul)
            } else {
                mscale(1.0)
            };
            let yarn = Yarn {
                ext_factor: keys.float("rope.scaling.yarn_ext_factor")?.unwrap_or(1.0),
                beta_fast: keys.float("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: keys.float("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            };
            // Without extrapolation (ext_factor 0) llama.cpp applies no magnitude either.
            let magnitude = if yarn.ext_factor == 0.0 {
                1.0
            } else {
                magnitude
            };
            (1.0 / factor, Some(yarn), magnitude * attn_factor)
        }
        other => {
            return Err(Error::Unsupported(format!(
                "rope scaling type '{other}' (supported: none, linear, yarn)"
            )));
        }
    };
    // A stretched rope covers factor times the original context (llama.cpp lets n_ctx go
    // there); Llama 3.1's and Phi-3's files already give the long context as context_length.
    let n_ctx_max = if scaling == "none" {
        n_ctx_train
    } else {
        n_ctx_train.max((n_ctx_orig as f64 * factor as f64) as usize)
    };
    let rope = RopeConfig {
        base,
        freq_scale,
        yarn,
        mscale,
        n_ctx_orig,
    };
    Ok((rope, n_ctx_max))
}

/// The sliding window and which layers use it (llama.cpp's `set_swa_pattern`).
fn sliding_layers(keys: &Keys, swa: Swa, n_layer: usize) -> Result<(usize, Vec<bool>)> {
    let window = keys.uint("attention.sliding_window")?;
    let none = Ok((0, vec![false; n_layer]));
    match swa {
        Swa::Never => none,
        Swa::AllLayers => match window {
            Some(w) if w > 0 => Ok((w, vec![true; n_layer])),
            _ => none,
        },
        Swa::Pattern {
            period,
            default_window,
        } => {
            let window = window.unwrap_or(default_window);
            if window == 0 {
                return none;
            }
            let layers = match keys.get("attention.sliding_window_pattern") {
                Some(Value::Array(_, flags)) => {
                    let flags: Vec<bool> = flags
                        .iter()
                        .map(|v| matches!(v, Value::Bool(true)))
                        .collect();
                    if flags.len() != n_layer {
                        return Err(Error::invalid(format!(
                            "{}.attention.sliding_window_pattern has {} entries for {n_layer} layers",
                            keys.arch,
                            flags.len()
                        )));
                    }
                    flags
                }
                Some(v) => {
                    let p = v.as_u64().ok_or_else(|| {
                        Error::invalid(format!(
                            "{}.attention.sliding_window_pattern should be a count or a list of \
                             booleans, got {v}",
                            keys.arch
                        ))
                    })? as usize;
                    pattern(p, n_layer)
                }
                None => pattern(period, n_layer),
            };
            Ok((window, layers))
        }
    }
}

/// Every layer but the last of each `period` slides; a period of 0 makes all of them slide.
fn pattern(period: usize, n_layer: usize) -> Vec<bool> {
    (0..n_layer)
        .map(|l| period == 0 || l % period < period - 1)
        .collect()
}
