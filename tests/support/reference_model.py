"""An independent float64 forward pass of GGUF models, in numpy.

It reads the file with gguf-py (not ferrollm's reader), dequantizes with gguf-py's numpy
reference, and follows the published architectures: RMSNorm, RoPE (adjacent pairs for llama,
halves for the others; linear, YaRN and per-frequency factors), grouped-query attention
(sliding windows, soft caps), SwiGLU or GeGLU; Mixtral/Qwen3 MoE: softmax over the top-k
router logits; Qwen2 biases, Qwen3/Gemma 3 Q/K norms, Gemma's embedding scale and post-norms,
Phi-3's fused tensors. It shares no code with the engine: a test oracle, slow and simple (the
architectures themselves are checked against transformers in tests/test_oracle_archs.py).
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
        self.arch = a = str(self.meta["general.architecture"])
        m = {k[len(a) + 1 :]: v for k, v in self.meta.items() if k.startswith(a + ".")}
        self.n_layer = int(m["block_count"])
        self.n_head = int(m["attention.head_count"])
        self.n_head_kv = int(m.get("attention.head_count_kv", self.n_head))
        self.n_embd = int(m["embedding_length"])
        self.head_dim = int(m.get("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(m.get("rope.dimension_count", self.head_dim))
        self.eps = float(m.get("attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(m.get("rope.freq_base", 10000.0))
        self.n_expert = int(m.get("expert_count", 0))
        self.n_used = n_expert_used or int(m.get("expert_used_count", 0))
        self.expert_norm = bool(m.get("expert_weights_norm", True))
        self.neox = a != "llama"
        self.gemma = a.startswith("gemma")
        self.scale = float(m.get("attention.scale", self.head_dim**-0.5))
        self.attn_cap = float(m.get("attn_logit_softcapping", 0.0))
        self.final_cap = float(m.get("final_logit_softcapping", 0.0))
        # Sliding-window layers: Mistral's key for all layers; Gemma 2 every other layer
        # (window 4096 by default), Gemma 3 all but every sixth when the file gives a window.
        window = int(m.get("attention.sliding_window", 4096 if a == "gemma2" else 0))
        period = {"gemma2": 2, "gemma3": 6}.get(a)
        if a in ("qwen2", "qwen3", "qwen3moe", "phi3"):
            window = 0
        self.window = window
        self.sliding = [bool(window) and (period is None or layer % period < period - 1)
                        for layer in range(self.n_layer)]  # fmt: skip
        self.rope_global = self._rope_freqs(m, self.base, scaled=True)
        local_base = float(m.get("rope.freq_base_swa", 10000.0)) if a == "gemma3" else self.base
        self.rope_local = self._rope_freqs(m, local_base, scaled=a != "gemma3")

    def _rope_freqs(self, m: dict, base: float, scaled: bool) -> tuple[np.ndarray, float]:
        """(angle per position of each rotated pair, cos/sin scale)."""
        i = np.arange(self.n_rot // 2)
        extrap = base ** (-2.0 * i / self.n_rot)
        factors = self.t.get("rope_freqs.weight", self.t.get("rope_factors_short.weight"))
        if factors is not None:
            extrap = extrap / factors
        kind = m.get("rope.scaling.type", "none") if scaled else "none"
        factor = float(m.get("rope.scaling.factor", 1.0))
        mscale = float(m.get("rope.scaling.attn_factor", 1.0)) if scaled else 1.0
        if kind == "linear":
            return extrap / factor, mscale
        if kind == "yarn":
            orig = int(m.get("rope.scaling.original_context_length", m["context_length"]))

            def corr(rotations: float) -> float:
                return self.n_rot * np.log(orig / (rotations * 2 * np.pi)) / (2 * np.log(base))

            low, high = max(0.0, np.floor(corr(32.0))), min(self.n_rot - 1.0, np.ceil(corr(1.0)))
            ramp = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)
            theta = extrap / factor * (1 - ramp) + extrap * ramp
            return theta, mscale * (1.0 + 0.1 * np.log(factor))
        return extrap, mscale

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray, positions: np.ndarray, rope: tuple[np.ndarray, float]) -> np.ndarray:
        """x: (n, heads, head_dim); rotates pairs (2i, 2i+1) (llama) or (i, i + n_rot/2) of the
        first n_rot dims."""
        freqs, mscale = rope
        theta = positions[:, None] * freqs  # (n, n_rot/2)
        cos, sin = mscale * np.cos(theta)[:, None, :], mscale * np.sin(theta)[:, None, :]
        out, h = x.copy(), self.n_rot // 2
        a, b = (
            (slice(0, h), slice(h, self.n_rot))
            if self.neox
            else (slice(0, self.n_rot, 2), slice(1, self.n_rot, 2))
        )
        x0, x1 = x[..., a], x[..., b]
        out[..., a] = x0 * cos - x1 * sin
        out[..., b] = x0 * sin + x1 * cos
        return out

    def _expert(self, p: str, h: np.ndarray, e: int | None) -> np.ndarray:
        def w(kind: str) -> np.ndarray:
            if e is None:
                return self.t[f"{p}ffn_{kind}.weight"]
            merged = self.t.get(f"{p}ffn_{kind}_exps.weight")
            return merged[e] if merged is not None else self.t[f"{p}ffn_{kind}.{e}.weight"]

        if e is None and f"{p}ffn_gate.weight" not in self.t:  # Phi-3: gate rows, then up rows
            g, u = np.split(self.act(h) @ self.t[f"{p}ffn_up.weight"].T, 2, axis=-1)
        else:
            g, u = self.act(h) @ w("gate").T, self.act(h) @ w("up").T
        if self.gemma:
            act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        else:
            act = g / (1.0 + np.exp(-g))
        return self.act(act * u) @ w("down").T

    def _qkv(self, p: str, h: np.ndarray) -> tuple[np.ndarray, ...]:
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        if p + "attn_qkv.weight" in self.t:
            qkv = h @ self.t[p + "attn_qkv.weight"].T
            q, k, v = qkv[:, :q_dim], qkv[:, q_dim : q_dim + kv_dim], qkv[:, q_dim + kv_dim :]
        else:
            q, k, v = (h @ self.t[f"{p}attn_{x}.weight"].T for x in "qkv")
        if p + "attn_q.bias" in self.t:
            q, k, v = (y + self.t[f"{p}attn_{x}.bias"] for y, x in zip((q, k, v), "qkv"))
        return q, k, v

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits (n_tokens x n_vocab) of a whole sequence from position 0."""
        n, hd = len(tokens), self.head_dim
        x = self.t["token_embd.weight"][tokens]
        if self.gemma:
            x = x * np.sqrt(self.n_embd)
        pos = np.arange(n, dtype=np.float64)
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        local = causal + np.tril(np.full((n, n), -np.inf), k=-self.window) if self.window else causal
        # Per token, the smallest gap over layers between the last chosen and the first unchosen
        # router logit: where it is tiny, rounding anywhere may flip the choice of experts.
        self.router_margin = np.full(n, np.inf)
        for layer in range(self.n_layer):
            p = f"blk.{layer}."
            h = self._norm(x, self.t[p + "attn_norm.weight"])
            h = self.act(h)
            q, k, v = self._qkv(p, h)
            q, k, v = (
                q.reshape(n, self.n_head, hd),
                k.reshape(n, self.n_head_kv, hd),
                v.reshape(n, self.n_head_kv, hd),
            )
            if p + "attn_q_norm.weight" in self.t:
                q, k = (
                    self._norm(q, self.t[p + "attn_q_norm.weight"]),
                    self._norm(k, self.t[p + "attn_k_norm.weight"]),
                )
            rope = self.rope_local if self.sliding[layer] else self.rope_global
            q, k = self._rope(q, pos, rope), self._rope(k, pos, rope)
            mask = local if self.sliding[layer] else causal
            if self.kv_round is not None:
                k, v = self.kv_round[0](k), self.kv_round[1](v)
            group = self.n_head // self.n_head_kv
            out = np.empty((n, self.n_head, hd))
            for head in range(self.n_head):
                s = q[:, head] @ k[:, head // group].T * self.scale
                if self.attn_cap:
                    s = self.attn_cap * np.tanh(s / self.attn_cap)
                s = s + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                out[:, head] = (s / s.sum(axis=1, keepdims=True)) @ v[:, head // group]
            attn = self.act(out.reshape(n, -1)) @ self.t[p + "attn_output.weight"].T
            x = x + self._post_norm(p + "post_attention_norm.weight", attn)
            h = self._norm(x, self.t[p + "ffn_norm.weight"])
            if not self.n_expert:
                x = x + self._post_norm(p + "post_ffw_norm.weight", self._expert(p, h, None))
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
                w /= w.sum() if self.expert_norm else np.exp(router[t] - router[t].max()).sum()
                for e, we in zip(top, w):
                    ffn[t] += we * self._expert(p, h[t : t + 1], int(e))[0]
            x = x + ffn
        out_w = self.t.get("output.weight", self.t["token_embd.weight"])
        logits = self.act(self._norm(x, self.t["output_norm.weight"])) @ out_w.T
        return self.final_cap * np.tanh(logits / self.final_cap) if self.final_cap else logits

    def _post_norm(self, name: str, y: np.ndarray) -> np.ndarray:
        return self._norm(y, self.t[name]) if name in self.t else y
