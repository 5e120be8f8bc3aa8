"""An independent float64 forward pass of llama-family GGUF models, in numpy.

It reads the file with gguf-py (not ferrollm's reader), dequantizes with gguf-py's numpy
reference, and follows the published architecture (RMSNorm, RoPE on adjacent pairs, grouped-
query attention, SwiGLU; Mixtral MoE: softmax over the top-k router logits). It shares no code
with the engine: a test oracle, slow and simple.
"""

from __future__ import annotations

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class ReferenceModel:
    def __init__(self, path: str, n_expert_used: int | None = None, kv_round=None):
        """``kv_round(k_or_v)`` (optional) rounds cached rows the way a quantized cache would."""
        r = GGUFReader(path)
        self.kv_round = kv_round
        # Rounds a matrix product's input as an engine's activation quantization does (tests
        # that isolate that effect set it); identity by default.
        self.act = lambda x: x
        self.meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}
        self.t = {}
        for t in r.tensors:
            data = np.asarray(t.data)
            if t.tensor_type.name not in ("F32", "F16"):
                data = dequantize(data, t.tensor_type)
            shape = tuple(int(d) for d in reversed(t.shape))
            self.t[t.name] = data.astype(np.float64).reshape(shape)
        m = self.meta
        self.n_layer = int(m["llama.block_count"])
        self.n_head = int(m["llama.attention.head_count"])
        self.n_head_kv = int(m.get("llama.attention.head_count_kv", self.n_head))
        self.n_embd = int(m["llama.embedding_length"])
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = int(m.get("llama.rope.dimension_count", self.head_dim))
        self.eps = float(m.get("llama.attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(m.get("llama.rope.freq_base", 10000.0))
        self.n_expert = int(m.get("llama.expert_count", 0))
        self.n_used = n_expert_used or int(m.get("llama.expert_used_count", 0))

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: (n, heads, head_dim); rotates pairs (2i, 2i+1) of the first n_rot dims."""
        i = np.arange(self.n_rot // 2)
        theta = positions[:, None] * self.base ** (-2.0 * i / self.n_rot)  # (n, n_rot/2)
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        out = x.copy()
        x0, x1 = x[..., 0 : self.n_rot : 2], x[..., 1 : self.n_rot : 2]
        out[..., 0 : self.n_rot : 2] = x0 * cos - x1 * sin
        out[..., 1 : self.n_rot : 2] = x0 * sin + x1 * cos
        return out

    def _expert(self, p: str, h: np.ndarray, e: int | None) -> np.ndarray:
        def w(kind: str) -> np.ndarray:
            if e is None:
                return self.t[f"{p}ffn_{kind}.weight"]
            merged = self.t.get(f"{p}ffn_{kind}_exps.weight")
            return merged[e] if merged is not None else self.t[f"{p}ffn_{kind}.{e}.weight"]

        g, u = self.act(h) @ w("gate").T, self.act(h) @ w("up").T
        return self.act(g / (1.0 + np.exp(-g)) * u) @ w("down").T

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits (n_tokens x n_vocab) of a whole sequence from position 0."""
        n, hd = len(tokens), self.head_dim
        x = self.t["token_embd.weight"][tokens]
        pos = np.arange(n, dtype=np.float64)
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        # Per token, the smallest gap over layers between the last chosen and the first unchosen
        # router logit: where it is tiny, rounding anywhere may flip the choice of experts.
        self.router_margin = np.full(n, np.inf)
        for layer in range(self.n_layer):
            p = f"blk.{layer}."
            h = self._norm(x, self.t[p + "attn_norm.weight"])
            h = self.act(h)
            q = self._rope((h @ self.t[p + "attn_q.weight"].T).reshape(n, self.n_head, hd), pos)
            k = self._rope((h @ self.t[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, hd), pos)
            v = (h @ self.t[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, hd)
            if self.kv_round is not None:
                k, v = self.kv_round[0](k), self.kv_round[1](v)
            group = self.n_head // self.n_head_kv
            out = np.empty((n, self.n_head, hd))
            for head in range(self.n_head):
                s = q[:, head] @ k[:, head // group].T / np.sqrt(hd) + causal
                s = np.exp(s - s.max(axis=1, keepdims=True))
                out[:, head] = (s / s.sum(axis=1, keepdims=True)) @ v[:, head // group]
            x = x + self.act(out.reshape(n, -1)) @ self.t[p + "attn_output.weight"].T
            h = self._norm(x, self.t[p + "ffn_norm.weight"])
            if not self.n_expert:
                x = x + self._expert(p, h, None)
                continue
            router = h @ self.t[p + "ffn_gate_inp.weight"].T
            if self.n_used < self.n_expert:
                ranked = -np.sort(-router, axis=1)
                gap = ranked[:, self.n_used - 1] - ranked[:, self.n_used]
                self.router_margin = np.minimum(self.router_margin, gap)
            ffn = np.zeros_like(h)
            for t in range(n):
                top = np.argsort(-router[t], kind="stable")[: self.n_used]
                w = np.exp(router[t, top] - router[t, top].max())
                w /= w.sum()
                for e, we in zip(top, w):
                    ffn[t] += we * self._expert(p, h[t : t + 1], int(e))[0]
            x = x + ffn
        out_w = self.t.get("output.weight", self.t["token_embd.weight"])
        return self.act(self._norm(x, self.t["output_norm.weight"])) @ out_w.T
