//! Hyper-parameters of a llama-family model, read from GGUF metadata (`{arch}.*` keys), with
//! user overrides applied first, as llama.cpp's `--override-kv KEY=TYPE:VALUE` does.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// Architectures whose graph this engine runs. Mistral and Mixtral files use `llama`.
pub const SUPPORTED_ARCHS: &[&str] = &["llama"];

/// The `{arch}.` keys the engine reads; overrides must name one of them.
pub const CONFIG_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.layer_norm_rms_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "expert_count",
    "expert_used_count",
    "vocab_size",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: String,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that RoPE rotates.
    pub n_rot: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// 1/factor for linear rope scaling, 1 otherwise.
    pub rope_freq_scale: f32,
    /// 0 for a dense model.
    pub n_expert: usize,
    pub n_expert_used: usize,
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
        let arch = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("model metadata lacks general.architecture"))?
            .to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(Error::Unsupported(format!(
                "model architecture '{arch}' (supported: {})",
                SUPPORTED_ARCHS.join(", ")
            )));
        }
        for (key, _) in overrides {
            let known = key
                .strip_prefix(&format!("{arch}."))
                .is_some_and(|s| CONFIG_KEYS.contains(&s));
            if !known {
                return Err(Error::invalid(format!(
                    "unknown override key '{key}'; keys that can be overridden: {}",
                    CONFIG_KEYS
                        .iter()
                        .map(|k| format!("{arch}.{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let keys = Keys {
            file,
            arch: arch.clone(),
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
        let rope_freq_scale = match keys.get("rope.scaling.type") {
            None => 1.0,
            Some(Value::String(t)) if t == "none" => 1.0,
            Some(Value::String(t)) if t == "linear" => {
                let factor = keys.float("rope.scaling.factor")?.unwrap_or(1.0);
                if factor.is_nan() || factor <= 0.0 {
                    return Err(Error::invalid(format!("bad rope.scaling.factor {factor}")));
                }
                1.0 / factor
            }
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "rope scaling type {other} (supported: none, linear)"
                )));
            }
        };
        let n_expert = keys.uint("expert_count")?.unwrap_or(0);
        let n_expert_used = keys.uint("expert_used_count")?.unwrap_or(0);
        if n_expert > 0 && !(1..=n_expert).contains(&n_expert_used) {
            return Err(Error::invalid(format!(
                "{arch}.expert_used_count is {n_expert_used}; it must be in 1..={n_expert} \
                 ({arch}.expert_count)"
            )));
        }
        if n_expert == 1 {
            return Err(Error::invalid(format!(
                "{arch}.expert_count of 1 is not a MoE"
            )));
        }
        let config = Config {
            arch: arch.clone(),
            n_ctx_train: keys.required("context_length")?,
            n_embd,
            n_layer: keys.required("block_count")?,
            n_ff: keys.required("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rms_eps: keys
                .float("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope_freq_base: keys.float("rope.freq_base")?.unwrap_or(10000.0),
            rope_freq_scale,
            n_expert,
            n_expert_used: if n_expert > 0 { n_expert_used } else { 0 },
        };
        if config.n_layer == 0 || config.n_ff == 0 || config.n_ctx_train == 0 {
            return Err(Error::invalid(format!(
                "bad model shape: {} layers, feed-forward {}, context {}",
                config.n_layer, config.n_ff, config.n_ctx_train
            )));
        }
        Ok(config)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
