//! What a forward pass reports besides its logits, behind one observer that the pass calls at
//! fixed points: the time per component (always kept), input activation statistics for an
//! importance matrix (while collected) and the hidden states a call copies out
//! (`hidden_states`, `embeddings`). Each hook tests its `Option` once per call, never per
//! element, so a pass that collects nothing pays a branch per product.

use super::imatrix::{ActivationStats, Input};
use super::profile::{Component, Profile, Timer};

/// Activations a call copies out besides (or instead of) logits.
pub enum Capture {
    /// The residual stream entering each layer, then after the output norm (`hidden_states`).
    Layers(Vec<f32>),
    /// Only the rows after the output norm, with no output head (`embeddings`).
    Output(Vec<f32>),
}

impl Capture {
    pub fn into_inner(self) -> Vec<f32> {
        let (Capture::Layers(out) | Capture::Output(out)) = self;
        out
    }
}

pub struct Observer {
    /// Time per component since load or the last `Model::take_profile`.
    pub profile: Profile,
    /// Input activation statistics, while an importance matrix is being collected.
    pub stats: Option<ActivationStats>,
    pub capture: Option<Capture>,
    clock: Timer,
    /// The layer the pass is in, which the statistics are kept per.
    layer: usize,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            profile: Profile::default(),
            stats: None,
            capture: None,
            clock: Timer::start(),
            layer: 0,
        }
    }
}

impl Observer {
    /// A pass begins: the time from here on is charged to its components.
    pub fn start_pass(&mut self) {
        self.clock = Timer::start();
    }

    /// Charges the time since the previous lap to `c`.
    pub fn lap(&mut self, c: Component) {
        self.clock.lap(&mut self.profile, c);
    }

    /// Layer `l` begins on the residual stream `x`.
    pub fn on_layer(&mut self, l: usize, x: &[f32]) {
        self.layer = l;
        if let Some(Capture::Layers(h)) = &mut self.capture {
            h.extend_from_slice(x);
        }
    }

    /// `x`: rows about to enter the current layer's `input` product (of `expert`).
    pub fn on_input(&self, input: Input, expert: usize, x: &[f32]) {
        if let Some(stats) = &self.stats {
            stats.record(self.layer, input, expert, x);
        }
    }

    /// Every layer has run on `n` tokens.
    pub fn on_layers_done(&mut self, n: usize) {
        self.profile.tokens += n as u64;
        self.profile.batches += 1;
    }

    /// `normed`: the wanted rows after the output norm. Whether the output head is to run on
    /// them (not where the call wants only these states).
    pub fn on_output(&mut self, normed: &[f32]) -> bool {
        match &mut self.capture {
            Some(Capture::Layers(h)) => h.extend_from_slice(normed),
            Some(Capture::Output(h)) => {
                h.extend_from_slice(normed);
                return false;
            }
            None => {}
        }
        true
    }
}
