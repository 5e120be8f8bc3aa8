//! The architectures the engine runs, each described as data: how its layers differ from
//! Llama's. One forward pass (`super::Model::forward`) reads these descriptions; adding an
//! architecture is adding a row to `ARCHS`, not copying the pass.
//!
//! Facts from llama.cpp's graph for each architecture (`src/models/*.cpp`): the rope style
//! (`llama_model_rope_type`), the feed-forward activation, Gemma's embedding scale and extra
//! norms, the sliding-window layer patterns and their rope bases. What the tensors say
//! (biases, fused Q/K/V, fused gate/up, Q/K norms) is read from the file by `weights`.

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" mode. GGUF `llama` files permute Q/K
    /// rows at conversion so that this matches Hugging Face's rotate-half.
    Normal,
    /// Pairs (i, i + n_rot/2), Hugging Face's rotate-half on unpermuted rows ("neox").
    Neox,
}

/// The gate's activation in the gated feed-forward `down(act(gate x) * up x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Mistral, Qwen, Phi-3).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma: `gelu_pytorch_tanh`).
    GeluTanh,
}

/// Which layers attend through a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swa {
    /// None, whatever the metadata says (llama.cpp ignores Phi-3's and Qwen2's windows).
    Never,
    /// Every layer, when the file gives `{arch}.attention.sliding_window` (Mistral v0.1).
    AllLayers,
    /// Layers `l` with `l % period < period - 1` (the last of each period is global), unless
    /// `{arch}.attention.sliding_window_pattern` says otherwise. `default_window` applies when
    /// the file gives no window; 0 means no sliding layers then (Gemma 3 text-only files).
    Pattern {
        period: usize,
        default_window: usize,
    },
}

/// The rope of sliding-window layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SwaRope {
    /// The same rope as the global layers (Gemma 2).
    Global,
    /// Its own base (unless `{arch}.rope.freq_base_swa` is given) and no scaling (Gemma 3's
    /// local layers keep the 10k base while the global ones are stretched).
    Base(f32),
}

#[derive(Debug, PartialEq)]
pub struct Arch {
    pub name: &'static str,
    pub rope: RopeStyle,
    pub act: Activation,
    /// The token embedding is multiplied by sqrt(n_embd) (Gemma).
    pub embed_scaled: bool,
    /// RMSNorm of each Q and K head before rope (`attn_q_norm`, `attn_k_norm`: Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and feed-forward outputs before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`: Gemma 2 and 3).
    pub post_norms: bool,
    pub swa: Swa,
    pub swa_rope: SwaRope,
    /// Layer counts of the models whose attention scale is 1/sqrt(n_embd / n_head) rather than
    /// 1/sqrt(head_dim) (Gemma's 27B), when the file gives no `{arch}.attention.scale`.
    pub scale_by_embd_per_head: &'static [usize],
}

const LLAMA: Arch = Arch {
    name: "llama",
    rope: RopeStyle::Normal,
    act: Activation::Silu,
    embed_scaled: false,
    qk_norm: false,
    post_norms: false,
    swa: Swa::AllLayers,
    swa_rope: SwaRope::Global,
    scale_by_embd_per_head: &[],
};

pub const ARCHS: &[Arch] = &[
    LLAMA,
    Arch {
        name: "qwen2",
        rope: RopeStyle::Neox,
        swa: Swa::Never,
        ..LLAMA
    },
    Arch {
        name: "qwen3",
        rope: RopeStyle::Neox,
        qk_norm: true,
        swa: Swa::Never,
        ..LLAMA
    },
    Arch {
        name: "qwen3moe",
        rope: RopeStyle::Neox,
        qk_norm: true,
        swa: Swa::Never,
        ..LLAMA
    },
    Arch {
        name: "phi3",
        rope: RopeStyle::Neox,
        swa: Swa::Never,
        ..LLAMA
    },
    Arch {
        name: "gemma2",
        rope: RopeStyle::Neox,
        act: Activation::GeluTanh,
        embed_scaled: true,
        post_norms: true,
        swa: Swa::Pattern {
            period: 2,
            default_window: 4096,
        },
        swa_rope: SwaRope::Global,
        scale_by_embd_per_head: &[46],
        ..LLAMA
    },
    Arch {
        name: "gemma3",
        rope: RopeStyle::Neox,
        act: Activation::GeluTanh,
        embed_scaled: true,
        qk_norm: true,
        post_norms: true,
        swa: Swa::Pattern {
            period: 6,
            default_window: 0,
        },
        swa_rope: SwaRope::Base(10000.0),
        scale_by_embd_per_head: &[62],
    },
];

pub fn find(name: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name)
}

pub fn names() -> Vec<&'static str> {
    ARCHS.iter().map(|a| a.name).collect()
}
