//! The feed-forward blocks: gated (`down(act(gate x) * up x)`, SwiGLU or GeGLU) and the MoE
//! around it (Mixtral, Qwen3-MoE: softmax over the chosen experts' router logits).
//!
//! MoE dispatch: the router picks each token's top-k experts (softmax over the selected
//! logits); tokens are then grouped by expert so that each chosen expert's weights stream
//! from memory once per batch, whatever the number of tokens routed to it.

use super::arch::Activation;
use super::imatrix::Input;
use super::observer::Observer;
use super::profile::Component;
use super::softmax::{exp_normal, normal_or_zero};
use super::weights::{ExpertFfn, Tensor};
use crate::error::Result;
use crate::matmul::{Pool, matmul, matmul_many};

#[derive(Default)]
pub struct FfnScratch {
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<u8>,
    router_logits: Vec<f32>,
    /// (expert, token, weight) for every routing choice of the batch.
    routes: Vec<(u32, u32, f32)>,
    expert_in: Vec<f32>,
    expert_out: Vec<f32>,
}

pub struct FfnContext<'a> {
    pub pool: &'a Pool,
    pub file: &'a [u8],
    pub act: Activation,
}

fn silu(x: f32) -> f32 {
    // exp_normal: a large activation's exp(-x) is 0, not a subnormal.
    x / (1.0 + exp_normal(-x))
}

/// GELU's tanh approximation (`gelu_pytorch_tanh`, ggml's `gelu`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// `out = down(act(gate x) * up x)` for the rows of `x` (n x n_embd).
#[allow(clippy::too_many_arguments)]
fn gated(
    cx: &FfnContext,
    e: &ExpertFfn,
    expert: usize,
    x: &[f32],
    out: &mut [f32],
    gate: &mut Vec<f32>,
    up: &mut Vec<f32>,
    act: &mut Vec<u8>,
    obs: &Observer,
) -> Result<()> {
    let n = x.len() / e.gate.cols;
    obs.on_input(Input::GateUp, expert, x);
    gate.resize(n * e.gate.rows, 0.0);
    up.resize(n * e.up.rows, 0.0);
    matmul_many(
        cx.pool,
        &[e.gate.mat(cx.file), e.up.mat(cx.file)],
        x,
        &mut [&mut gate[..], &mut up[..]],
        act,
    )?;
    let activation = match cx.act {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh,
    };
    for (g, u) in gate.iter_mut().zip(up.iter()) {
        *g = activation(*g) * u;
    }
    obs.on_input(Input::Down, expert, gate);
    matmul(cx.pool, &e.down.mat(cx.file), gate, out, act)
}

pub fn dense(
    cx: &FfnContext,
    e: &ExpertFfn,
    x: &[f32],
    out: &mut [f32],
    s: &mut FfnScratch,
    obs: &Observer,
) -> Result<()> {
    gated(cx, e, 0, x, out, &mut s.gate, &mut s.up, &mut s.act, obs)
}

/// Top-`k` of `logits` (ties to the lower index), appended to `routes` for `token` with their
/// softmax weights: over the selection when `renorm` (Mixtral, Qwen3-MoE), else over all the
/// experts (Qwen3-MoE's `norm_topk_prob = false`).
fn route(logits: &[f32], k: usize, renorm: bool, token: usize, routes: &mut Vec<(u32, u32, f32)>) {
    let start = routes.len();
    for (e, &l) in logits.iter().enumerate() {
        // Insertion into the sorted selection kept at routes[start..]: k is tiny (2..8).
        let sel = &routes[start..];
        let at = sel
            .iter()
            .position(|&(_, _, sl)| l > sl)
            .unwrap_or(sel.len());
        if at < k {
            if sel.len() == k {
                routes.pop();
            }
            routes.insert(start + at, (e as u32, token as u32, l));
        }
    }
    let max = routes[start].2;
    let sum: f32 = if renorm {
        routes[start..].iter().map(|r| exp_normal(r.2 - max)).sum()
    } else {
        logits.iter().map(|&l| exp_normal(l - max)).sum()
    };
    for r in &mut routes[start..] {
        // A weight is 0 or normal: it scales a whole expert's output.
        r.2 = normal_or_zero(exp_normal(r.2 - max) / sum);
    }
}

/// The observer's lap charges the routing to the router; the caller charges the rest to the
/// experts.
#[allow(clippy::too_many_arguments)]
pub fn moe(
    cx: &FfnContext,
    router: &Tensor,
    experts: &[ExpertFfn],
    n_used: usize,
    renorm: bool,
    x: &[f32],
    out: &mut [f32],
    s: &mut FfnScratch,
    obs: &mut Observer,
) -> Result<()> {
    let n_embd = router.cols;
    let n = x.len() / n_embd;
    let n_expert = experts.len();
    s.router_logits.resize(n * n_expert, 0.0);
    obs.on_input(Input::Router, 0, x);
    matmul(
        cx.pool,
        &router.mat(cx.file),
        x,
        &mut s.router_logits,
        &mut s.act,
    )?;
    s.routes.clear();
    for t in 0..n {
        route(
            &s.router_logits[t * n_expert..][..n_expert],
            n_used,
            renorm,
            t,
            &mut s.routes,
        );
    }
    s.routes.sort_unstable_by_key(|&(e, t, _)| (e, t));
    obs.lap(Component::Router);
    out.fill(0.0);
    let mut rest = &s.routes[..];
    while let Some(&(expert, _, _)) = rest.first() {
        let m = rest.iter().take_while(|r| r.0 == expert).count();
        let (group, tail) = rest.split_at(m);
        rest = tail;
        s.expert_in.clear();
        for &(_, t, _) in group {
            s.expert_in
                .extend_from_slice(&x[t as usize * n_embd..][..n_embd]);
        }
        s.expert_out.resize(m * n_embd, 0.0);
        gated(
            cx,
            &experts[expert as usize],
            expert as usize,
            &s.expert_in,
            &mut s.expert_out,
            &mut s.gate,
            &mut s.up,
            &mut s.act,
            obs,
        )?;
        for (i, &(_, t, w)) in group.iter().enumerate() {
            let dst = &mut out[t as usize * n_embd..][..n_embd];
            for (d, y) in dst.iter_mut().zip(&s.expert_out[i * n_embd..][..n_embd]) {
                *d += w * y;
            }
        }
    }
    Ok(())
}
