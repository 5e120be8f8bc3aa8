//! Where the forward pass spends its time, per component, summed over calls (read and reset
//! from Python: `ferrollm`'s `--profile` and the engine benchmark). One clock read per
//! component boundary, a few dozen per token: far below a microsecond per layer.

use std::time::Instant;

/// The parts of a forward pass that are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Token embedding lookup, RMSNorms and residual adds.
    Embed,
    /// Q/K/V/output projections, RoPE, KV cache writes and the attention itself.
    Attention,
    /// The MoE router's matrix product and the top-k choice.
    Router,
    /// The feed-forward networks: the chosen experts of an MoE layer, or the dense SwiGLU.
    Experts,
    /// Output norm and head (the logits).
    Head,
}

pub const COMPONENTS: [(Component, &str); 5] = [
    (Component::Embed, "embed_norm"),
    (Component::Attention, "attention"),
    (Component::Router, "router"),
    (Component::Experts, "experts"),
    (Component::Head, "head"),
];

#[derive(Clone, Debug, Default)]
pub struct Profile {
    seconds: [f64; COMPONENTS.len()],
    /// Tokens evaluated and forward passes (batches) run.
    pub tokens: u64,
    pub batches: u64,
}

impl Profile {
    pub fn seconds(&self, c: Component) -> f64 {
        self.seconds[c as usize]
    }
}

/// A running clock: `lap` charges the time since the previous lap to a component.
pub struct Timer(Instant);

impl Timer {
    pub fn start() -> Timer {
        Timer(Instant::now())
    }

    pub fn lap(&mut self, profile: &mut Profile, c: Component) {
        let now = Instant::now();
        profile.seconds[c as usize] += (now - self.0).as_secs_f64();
        self.0 = now;
    }
}
