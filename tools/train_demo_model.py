"""Train ferrollm's embedded demo model: a small Mixtral (MoE, top-2 of 4 experts, GQA) on the
Python standard library's source (a development tool; needs PyTorch, which ferrollm does not).

The network is written directly in llama.cpp's conventions so that the exported GGUF needs no
weight permutation: RoPE rotates adjacent pairs (x[2i], x[2i+1]) ("normal" mode of arch llama),
query head h reads K/V head h // (n_head / n_head_kv), RMSNorm multiplies after normalising,
the router softmaxes the top-k logits only (Mixtral), and the output head is tied to the
token embedding.

    python tools/build_demo_corpus.py --out corpus
    python tools/train_demo_model.py --corpus corpus --out ckpt [--device cuda] [--steps N]

``--out`` receives the weights as float16 ``.npz`` shards (each under 16 MiB) plus
``card.json`` (shape, steps, seed, losses, timings) and logits of a fixed prompt computed by this
float32 network, which ``tools/export_demo_model.py`` uses to check the exported file.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Shape:
    n_vocab: int = 32000
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 8
    n_head_kv: int = 2
    n_ff: int = 768
    n_expert: int = 4
    n_expert_used: int = 2
    n_ctx: int = 512
    rope_base: float = 10000.0
    rms_eps: float = 1e-5


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope_tables(shape: Shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = shape.n_embd // shape.n_head
    inv_freq = shape.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(shape.n_ctx, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); rotates adjacent pairs, as llama.cpp's normal mode."""
    seq = x.shape[-2]
    c, s = cos[:seq], sin[:seq]
    x0, x1 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


class Block(nn.Module):
    def __init__(self, s: Shape, dropout: float = 0.0):
        super().__init__()
        self.s = s
        self.dropout = dropout
        hd = s.n_embd // s.n_head
        self.attn_norm = nn.Parameter(torch.ones(s.n_embd))
        self.wq = nn.Linear(s.n_embd, s.n_head * hd, bias=False)
        self.wk = nn.Linear(s.n_embd, s.n_head_kv * hd, bias=False)
        self.wv = nn.Linear(s.n_embd, s.n_head_kv * hd, bias=False)
        self.wo = nn.Linear(s.n_head * hd, s.n_embd, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(s.n_embd))
        self.router = nn.Linear(s.n_embd, s.n_expert, bias=False)
        std = s.n_embd**-0.5
        self.gate = nn.Parameter(torch.randn(s.n_expert, s.n_ff, s.n_embd) * std)
        self.up = nn.Parameter(torch.randn(s.n_expert, s.n_ff, s.n_embd) * std)
        self.down = nn.Parameter(
            torch.randn(s.n_expert, s.n_embd, s.n_ff) * s.n_ff**-0.5 / math.sqrt(2 * s.n_layer)
        )
        nn.init.normal_(self.wo.weight, std=std / math.sqrt(2 * s.n_layer))

    def attention(self, x, cos, sin):
        s = self.s
        b, t, _ = x.shape
        hd = s.n_embd // s.n_head
        q = self.wq(x).view(b, t, s.n_head, hd).transpose(1, 2)
        k = self.wk(x).view(b, t, s.n_head_kv, hd).transpose(1, 2)
        v = self.wv(x).view(b, t, s.n_head_kv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = s.n_head // s.n_head_kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, s.n_head * hd))

    def moe(self, x):
        """All experts computed densely (4 small experts: simpler and fast enough); the output
        mixes the top-k with softmax weights over the chosen logits, as Mixtral does."""
        s = self.s
        logits = self.router(x).float()  # (b, t, E)
        top_logits, top_idx = logits.topk(s.n_expert_used, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, top_idx, top_logits.softmax(-1))
        h = torch.einsum("btd,efd->btef", x, self.gate)
        u = torch.einsum("btd,efd->btef", x, self.up)
        y = torch.einsum("btef,edf->bted", F.silu(h) * u, self.down)
        out = (y * weights.to(y.dtype).unsqueeze(-1)).sum(-2)
        # Switch-Transformer balance loss: fraction routed x mean probability, per expert.
        probs = logits.softmax(-1).reshape(-1, s.n_expert)
        routed = torch.zeros_like(probs).scatter(-1, top_idx.reshape(-1, s.n_expert_used), 1.0)
        balance = s.n_expert * (routed.mean(0) / s.n_expert_used * probs.mean(0)).sum()
        return out, balance

    def forward(self, x, cos, sin):
        # Dropout on what each sub-layer adds: the corpus is small, so training runs several epochs.
        attn = self.attention(rms_norm(x, self.attn_norm, self.s.rms_eps), cos, sin)
        x = x + F.dropout(attn, self.dropout, self.training)
        y, balance = self.moe(rms_norm(x, self.ffn_norm, self.s.rms_eps))
        return x + F.dropout(y, self.dropout, self.training), balance


class DemoModel(nn.Module):
    def __init__(self, s: Shape, dropout: float = 0.0):
        super().__init__()
        self.s = s
        self.embed = nn.Parameter(torch.randn(s.n_vocab, s.n_embd) * 0.02)
        self.blocks = nn.ModuleList(Block(s, dropout) for _ in range(s.n_layer))
        self.output_norm = nn.Parameter(torch.ones(s.n_embd))

    def forward(self, tokens, cos, sin):
        x = self.embed[tokens]
        balance = 0.0
        for block in self.blocks:
            x, b = block(x, cos, sin)
            balance = balance + b
        x = rms_norm(x, self.output_norm, self.s.rms_eps)
        return x @ self.embed.t(), balance / self.s.n_layer

    def gguf_tensors(self) -> dict[str, np.ndarray]:
        """Weights under their GGUF names, as float32 numpy arrays in numpy (row-major) shape
        (output.weight absent: the head is tied to token_embd)."""

        def np32(t):
            return t.detach().float().cpu().numpy()

        out = {"token_embd.weight": np32(self.embed)}
        for i, b in enumerate(self.blocks):
            p = f"blk.{i}."
            out[p + "attn_norm.weight"] = np32(b.attn_norm)
            out[p + "attn_q.weight"] = np32(b.wq.weight)
            out[p + "attn_k.weight"] = np32(b.wk.weight)
            out[p + "attn_v.weight"] = np32(b.wv.weight)
            out[p + "attn_output.weight"] = np32(b.wo.weight)
            out[p + "ffn_norm.weight"] = np32(b.ffn_norm)
            out[p + "ffn_gate_inp.weight"] = np32(b.router.weight)
            out[p + "ffn_gate_exps.weight"] = np32(b.gate)
            out[p + "ffn_up_exps.weight"] = np32(b.up)
            out[p + "ffn_down_exps.weight"] = np32(b.down)
        out["output_norm.weight"] = np32(self.output_norm)
        return out


def batches(data: np.ndarray, batch: int, n_ctx: int, rng: np.random.Generator):
    while True:
        starts = rng.integers(0, data.size - n_ctx - 1, size=batch)
        window = np.stack([data[i : i + n_ctx + 1] for i in starts]).astype(np.int64)
        yield torch.from_numpy(window)


@torch.no_grad()
def evaluate(model, data: np.ndarray, n_ctx: int, device, cos, sin, max_windows: int = 64) -> float:
    """Mean next-token loss over non-overlapping windows of the held-out stream."""
    model.eval()
    n = min(max_windows, (data.size - 1) // n_ctx)
    losses = []
    for i in range(0, n, 16):
        rows = [data[j * n_ctx : j * n_ctx + n_ctx + 1] for j in range(i, min(n, i + 16))]
        w = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, _ = model(w[:, :-1], cos, sin)
        losses.append(
            F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        )
    model.train()
    return sum(losses) / (n * n_ctx)


def save_shards(tensors: dict[str, np.ndarray], out: Path, limit: int = 15 * 2**20) -> list[str]:
    """float16 npz shards, each under `limit` bytes (device transfers take files of <16 MiB)."""
    shards, current, size = [], {}, 0
    for name, arr in tensors.items():
        nbytes = arr.size * 2
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr.astype(np.float16)
        size += nbytes
    shards.append(current)
    names = []
    for i, shard in enumerate(shards):
        names.append(f"weights-{i:02d}.npz")
        np.savez(out / names[-1], **shard)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=0, help="0: as many as fit --minutes (recorded)")
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--max-epochs", type=float, default=12.0, help="cap on passes over the corpus")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--micro-batch", type=int, default=0, help="sequences per forward (0: 64 on GPU, 4 on CPU)"
    )
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    corpus, out = Path(args.corpus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = np.fromfile(corpus / "train.u16", dtype=np.uint16)
    heldout = np.fromfile(corpus / "heldout.u16", dtype=np.uint16)
    shape = Shape()
    model = DemoModel(shape, args.dropout).to(device)
    cos, sin = rope_tables(shape, device)
    n_params = sum(p.numel() for p in model.parameters())
    active = n_params - sum(p.numel() for b in model.blocks for p in (b.gate, b.up, b.down)) * (
        1 - shape.n_expert_used / shape.n_expert
    )
    print(
        f"parameters: {n_params:,} ({active:,.0f} active per token); train {train.size:,} tokens", flush=True
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    step_fn = torch.compile(model) if args.compile else model
    data = batches(train, args.batch, shape.n_ctx, rng)
    tokens_per_step = args.batch * shape.n_ctx
    micro = args.micro_batch or (64 if device.type == "cuda" else 4)

    def train_step(step: int, total: int) -> tuple[float, float]:
        warmup = max(1, total // 50)
        lr = args.lr * (
            step / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        )
        lr = max(lr, args.lr * 0.02) if step >= warmup else lr
        for g in opt.param_groups:
            g["lr"] = lr
        w = next(data).to(device, non_blocking=True)
        # Micro-batches accumulate into one step (the CPU cannot hold 64 x 512 x 32000 logits).
        loss_sum = balance_sum = 0.0
        for part in w.split(micro):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits, balance = step_fn(part[:, :-1], cos, sin)
                loss = F.cross_entropy(logits.float().flatten(0, 1), part[:, 1:].flatten())
            share = part.shape[0] / w.shape[0]
            ((loss + 0.01 * balance) * share).backward()
            loss_sum += loss.item() * share
            balance_sum += balance.item() * share
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, balance_sum

    # Steps: given, or as many as the time budget allows at the measured speed (recorded in the
    # card, so `--steps N` reproduces the run). Timing steps run at warm-up learning rate.
    max_steps = int(args.max_epochs * train.size / tokens_per_step)
    total = args.steps or max_steps
    t0 = time.time()
    losses = []
    probe = 0 if args.steps else 30
    for step in range(probe):
        losses.append(train_step(step, max(total, 1000)))
    if not args.steps:
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.time() - t0) / max(probe, 1)
        total = max(probe + 1, min(max_steps, int(args.minutes * 60 / per_step)))
        print(f"{per_step * 1000:.1f} ms/step -> {total} steps", flush=True)
    history = []
    for step in range(probe, total):
        loss, balance = train_step(step, total)
        losses.append((loss, balance))
        if step % 200 == 0 or step == total - 1:
            held = evaluate(model, heldout, shape.n_ctx, device, cos, sin)
            history.append({"step": step, "train_loss": loss, "heldout_loss": held, "balance": balance})
            print(f"step {step}/{total} loss {loss:.3f} held-out {held:.3f} balance {balance:.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)  # fmt: skip
    train_seconds = time.time() - t0
    final_train = float(np.mean([l for l, _ in losses[-50:]]))
    final_heldout = evaluate(model, heldout, shape.n_ctx, device, cos, sin, max_windows=10_000)

    # Reference logits of the float32 network for a fixed prompt: the export is checked against them.
    model.float().eval()
    check_tokens = train[:64].astype(np.int64)
    with torch.no_grad():
        check_logits, _ = model(torch.from_numpy(check_tokens)[None].to(device), cos, sin)
    np.savez(out / "check.npz", tokens=check_tokens, logits=check_logits[0].float().cpu().numpy()[-8:])

    shards = save_shards(model.gguf_tensors(), out)
    card = {
        "shape": asdict(shape),
        "parameters": n_params,
        "active_parameters": int(active),
        "seed": args.seed,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "steps": total,
        "batch": args.batch,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": total * tokens_per_step,
        "epochs": total * tokens_per_step / train.size,
        "lr": args.lr,
        "dropout": args.dropout,
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": final_train,
        "heldout_loss": final_heldout,
        "heldout_perplexity": math.exp(final_heldout),
        "history": history,
        "corpus": json.loads((corpus / "manifest.json").read_text()) | {"heldout": None},
        "shards": shards,
    }
    (out / "card.json").write_text(json.dumps(card, indent=1))
    print(f"done: {total} steps, train loss {final_train:.3f}, held-out loss {final_heldout:.3f} "
          f"(ppl {math.exp(final_heldout):.2f}), {train_seconds:.0f}s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
