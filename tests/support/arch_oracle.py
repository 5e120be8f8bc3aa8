"""The architecture oracle (issue 21): for each case a tiny random checkpoint written with
``transformers`` and its logits at every position (arch_checkpoint.py, run by the oracle
virtualenv), the checkpoint converted to an F32 GGUF by llama.cpp's convert_hf_to_gguf.py
(arch_convert.py), and quantized copies of that file. Everything is cached under
``$FERROLLM_ORACLE_CACHE`` (default ~/.cache/ferrollm-oracle/archs/<case>-<hash of the spec>/),
so a rerun only evaluates.

Sizes: hidden 256, head_dim 64, feed-forward 512 (expert FFN 128), so every row is a multiple of
256 and the K-quants apply; a 512-token vocabulary; 80 tokens, longer than the 16-token windows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .oracle import LLAMA_CPP, ORACLE_PY

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("FERROLLM_ORACLE_CACHE", os.path.expanduser("~/.cache/ferrollm-oracle/archs"))
N_TOKENS = 80
WINDOW = 16
BASE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256, "initializer_range": 0.1,
        "tie_word_embeddings": False}  # fmt: skip
UNSUPPORTED = "unsupported model architecture"


@dataclass(frozen=True)
class Case:
    name: str
    model_type: str  # transformers' model_type
    hf_class: str  # config.json "architectures"
    tokenizer: str  # "spm" (Mistral's tokenizer.model) or "bpe" (a byte-level tokenizer.json)
    config: dict = field(default_factory=dict)  # over BASE
    arch: str = ""  # general.architecture of the converted file
    n_tokens: int = N_TOKENS
    seed: int = 0
    # Metadata the converter leaves out and the harness adds to its file: {key: (type, value)}.
    extra_keys: dict = field(default_factory=dict)
    # Positions at which llama.cpp computes the same function as transformers (None: all).
    llama_cpp_positions: int | None = None
    # Why llama.cpp cannot compute this checkpoint's function at all (the comparison is skipped).
    llama_cpp_differs: str = ""
    # Features switched off in transformers (config overrides, same weights): each must move the
    # logits past the tolerance, or the comparison could not see an engine ignoring it.
    ablations: dict = field(default_factory=dict)

    def spec(self) -> dict:
        return {"model_type": self.model_type, "hf_class": self.hf_class, "tokenizer": self.tokenizer,
                "config": {**BASE, **self.config}, "n_tokens": self.n_tokens, "seed": self.seed,
                "extra_keys": self.extra_keys}  # fmt: skip

    def key(self) -> str:
        """The spec and the two scripts that turn it into files."""
        h = hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode())
        for script in ("arch_checkpoint.py", "arch_convert.py"):
            with open(os.path.join(HERE, script), "rb") as f:
                h.update(f.read())
        return h.hexdigest()[:12]


_ROPE = 10000.0


def _longrope(long_hi: float) -> dict:
    """Phi-3 longrope parameters: short factors 1..1.5, long factors 1..long_hi over the 32 frequencies."""
    factors = [[round(float(x), 4) for x in np.linspace(1.0, hi, 32)] for hi in (1.5, long_hi)]
    return {"rope_type": "longrope", "rope_theta": _ROPE, "short_factor": factors[0], "long_factor": factors[1],
            "original_max_position_embeddings": 64}  # fmt: skip


_PLAIN_ROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": _ROPE}}
_PHI3_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # its defaults lie past this vocab
_GEMMA3_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": _ROPE}}  # fmt: skip
_GEMMA3_LINEAR = {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}
_NO_WINDOW = {"sliding_window": 4096}

# fmt: off
CASES = [
    Case("llama", "llama", "LlamaForCausalLM", "spm", {"rope_theta": _ROPE}, "llama"),
    # convert_hf_to_gguf.py drops Mistral's sliding_window and llama.cpp's llama ignores the key, so the
    # harness writes llama.attention.sliding_window itself and compares llama.cpp inside the window only.
    Case("mistral-swa", "mistral", "MistralForCausalLM", "spm", {"sliding_window": WINDOW, "rope_theta": _ROPE},
         "llama", extra_keys={"llama.attention.sliding_window": ("u32", WINDOW)}, llama_cpp_positions=WINDOW,
         ablations={"no_window": {"sliding_window": None}}),
    Case("llama-rope-llama3", "llama", "LlamaForCausalLM", "spm",
         {"rope_parameters": {"rope_type": "llama3", "rope_theta": _ROPE, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, "llama",
         ablations={"plain_rope": _PLAIN_ROPE}),
    Case("llama-rope-yarn", "llama", "LlamaForCausalLM", "spm",
         {"rope_parameters": {"rope_type": "yarn", "rope_theta": _ROPE, "factor": 4.0,
                              "original_max_position_embeddings": 64}}, "llama",
         ablations={"plain_rope": _PLAIN_ROPE}),
    Case("llama-rope-linear", "llama", "LlamaForCausalLM", "spm",
         {"rope_parameters": {"rope_type": "linear", "rope_theta": _ROPE, "factor": 2.0}}, "llama",
         ablations={"plain_rope": _PLAIN_ROPE}),
    Case("mixtral", "mixtral", "MixtralForCausalLM", "spm",
         {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 256, "rope_theta": _ROPE}, "llama"),
    Case("qwen2", "qwen2", "Qwen2ForCausalLM", "bpe", {"rope_theta": _ROPE}, "qwen2"),
    Case("qwen3", "qwen3", "Qwen3ForCausalLM", "bpe",
         {"head_dim": 64, "tie_word_embeddings": True, "rope_theta": _ROPE}, "qwen3"),
    Case("qwen3moe-top4", "qwen3_moe", "Qwen3MoeForCausalLM", "bpe",
         {"head_dim": 64, "num_experts": 8, "num_experts_per_tok": 4, "moe_intermediate_size": 256,
          "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "rope_theta": _ROPE}, "qwen3moe",
         ablations={"unnormed": {"norm_topk_prob": False}}),
    # The converter writes nothing for norm_topk_prob and llama.cpp's qwen3moe always renormalises the
    # top-k weights: the harness writes qwen3moe.expert_weights_norm = false (the key llama.cpp defines).
    Case("qwen3moe-top2-unnormed", "qwen3_moe", "Qwen3MoeForCausalLM", "bpe",
         {"head_dim": 64, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 256,
          "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [], "rope_theta": _ROPE}, "qwen3moe",
         extra_keys={"qwen3moe.expert_weights_norm": ("bool", False)},
         llama_cpp_differs="llama.cpp's qwen3moe always renormalises the top-k expert weights",
         ablations={"normed": {"norm_topk_prob": True}}),
    # llama.cpp scales queries by 1/sqrt(head_dim) (hidden/heads for the 46-layer 27B only), so
    # query_pre_attn_scalar is head_dim; caps small enough to bite on these logits.
    Case("gemma2", "gemma2", "Gemma2ForCausalLM", "spm",
         {"num_hidden_layers": 4, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": WINDOW,
          "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0, "tie_word_embeddings": True,
          "rope_theta": _ROPE}, "gemma2",
         ablations={"no_attn_cap": {"attn_logit_softcapping": None}, "no_final_cap": {"final_logit_softcapping": None},
                    "no_window": _NO_WINDOW}),
    # llama.cpp's gemma3 has every sixth layer global (the file carries no pattern): 6 layers.
    Case("gemma3", "gemma3_text", "Gemma3ForCausalLM", "spm",
         {"num_hidden_layers": 6, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": WINDOW,
          "tie_word_embeddings": True, "rope_parameters": _GEMMA3_ROPE}, "gemma3",
         ablations={"no_window": _NO_WINDOW,
                    "one_rope_base": {"rope_parameters": {**_GEMMA3_ROPE,
                                                          "sliding_attention": _GEMMA3_ROPE["full_attention"]}}}),
    # Gemma 3 4B and up: linear rope scaling on the global layers only (llama.cpp: not on SWA layers).
    Case("gemma3-rope-linear", "gemma3_text", "Gemma3ForCausalLM", "spm",
         {"num_hidden_layers": 6, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": WINDOW,
          "tie_word_embeddings": True, "rope_parameters": {**_GEMMA3_ROPE, "full_attention": _GEMMA3_LINEAR}},
         "gemma3", ablations={"plain_rope": {"rope_parameters": _GEMMA3_ROPE}}),
    Case("phi3", "phi3", "Phi3ForCausalLM", "spm", {**_PHI3_TOKENS, "rope_theta": _ROPE}, "phi3"),
    # Longer than original_max_position_embeddings, so both transformers and llama.cpp use the long factors.
    Case("phi3-longrope", "phi3", "Phi3ForCausalLM", "spm",
         {**_PHI3_TOKENS, "original_max_position_embeddings": 64, "rope_parameters": _longrope(6.0)}, "phi3",
         ablations={"short_factors": {"rope_parameters": _longrope(1.5)}, "plain_rope": _PLAIN_ROPE}),
]
# fmt: on
BY_NAME = {c.name: c for c in CASES}


def spm_model() -> str | None:
    from .hf_models import mistral_tokenizer_model

    return mistral_tokenizer_model()


class OracleUnavailable(RuntimeError):
    """The oracle virtualenv, the converter or Mistral's tokenizer.model is missing."""


def _run(args: list[str], env: dict | None = None) -> None:
    r = subprocess.run(args, check=False, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})})  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


@dataclass
class Artifacts:
    case: Case
    dir: str

    @property
    def hf_dir(self) -> str:
        return os.path.join(self.dir, "hf")

    @property
    def f32(self) -> str:
        return os.path.join(self.dir, "model-f32.gguf")

    def tokens(self) -> list[int]:
        with open(os.path.join(self.hf_dir, "tokens.json")) as f:
            return json.load(f)

    def hf_logits(self) -> np.ndarray:
        return np.load(os.path.join(self.hf_dir, "logits.npy"))

    def ablation_logits(self, name: str) -> np.ndarray:
        """transformers' logits with the case's ablation ``name`` applied (cached)."""
        overrides = self.case.ablations[name]
        h = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode())
        with open(os.path.join(HERE, "arch_ablation.py"), "rb") as f:
            h.update(f.read())
        out = os.path.join(self.hf_dir, f"ablation-{name}-{h.hexdigest()[:12]}.npy")
        if not os.path.isfile(out):
            spec = out[: -len(".npy")] + ".json"
            with open(spec, "w") as f:
                json.dump(overrides, f)
            _run([ORACLE_PY, os.path.join(HERE, "arch_ablation.py"), self.hf_dir, spec, out + ".tmp.npy"])
            os.replace(out + ".tmp.npy", out)
        return np.load(out)

    def quantized(self, type_name: str) -> str:
        """The F32 file quantized by ``ferrollm quantize`` (cached)."""
        import ferrollm

        out = os.path.join(self.dir, f"model-{type_name.lower()}.gguf")
        if not os.path.isfile(out):
            tmp = out + ".tmp"
            ferrollm.quantize(self.f32, tmp, type_name)
            os.replace(tmp, out)
        return out


def artifacts(case: Case) -> Artifacts:
    """The case's checkpoint, transformers logits and F32 GGUF, built once and cached."""
    art = Artifacts(case, os.path.join(CACHE, f"{case.name}-{case.key()}"))
    if os.path.isfile(art.f32) and os.path.isfile(os.path.join(art.hf_dir, "logits.npy")):
        return art
    script = os.path.join(LLAMA_CPP, "convert_hf_to_gguf.py")
    if not (os.path.isfile(ORACLE_PY) and os.path.isfile(script)):
        raise OracleUnavailable(f"oracle python ({ORACLE_PY}) or {script} missing")
    spec = case.spec()
    if case.tokenizer == "spm":
        spec["spm_model"] = spm_model()
        if spec["spm_model"] is None:
            raise OracleUnavailable("mistral-common (its tokenizer.model) not installed")
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{case.name}-", dir=CACHE)
    try:
        with open(os.path.join(work, "spec.json"), "w") as f:
            json.dump(spec, f, indent=1)
        _run([ORACLE_PY, os.path.join(HERE, "arch_checkpoint.py"), os.path.join(work, "spec.json"),
              os.path.join(work, "hf")])  # fmt: skip
        _run([ORACLE_PY, os.path.join(HERE, "arch_convert.py"), LLAMA_CPP, os.path.join(work, "hf"),
              "--outfile", os.path.join(work, "model-f32.gguf"), "--outtype", "f32"])  # fmt: skip
        if case.extra_keys:
            add_keys(os.path.join(work, "model-f32.gguf"), case.extra_keys)
        shutil.rmtree(art.dir, ignore_errors=True)
        os.replace(work, art.dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return art


def add_keys(path: str, keys: dict) -> None:
    """Rewrite a GGUF file with metadata ``keys`` ({key: (type, value)}) added or replaced."""
    import ferrollm

    ferrollm.gguf.copy_with_metadata(path, path + ".tmp", keys)
    os.replace(path + ".tmp", path)


N_CTX = 128
CLEAR_MARGIN = 0.01  # logits units: llama.cpp's top-2 gap above which its top-1 must be ours


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (position) of a and b, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top1_agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[int, int]:
    """(positions where the top-1 tokens agree, positions where llama.cpp's margin is clear),
    counted over the clear positions."""
    top2 = np.sort(theirs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > CLEAR_MARGIN
    same = ours.argmax(1) == theirs.argmax(1)
    return int((same & clear).sum()), int(clear.sum())


def ferrollm_logits(path: str, tokens: list[int], **kw) -> tuple[np.ndarray | None, str | None]:
    """ferrollm's logits at every position, or (None, the load error) for an architecture the
    engine refuses as unsupported."""
    from ferrollm import _core

    try:
        model = _core.Model(path, n_ctx=N_CTX, **kw)
    except Exception as e:
        if UNSUPPORTED in str(e):
            return None, str(e)
        raise
    try:
        return np.array(model.eval(tokens, logits_all=True), np.float32), None
    finally:
        model.close()


def llama_cpp_logits(path: str, tokens: list[int], **kw) -> np.ndarray:
    """llama.cpp's logits at every position, through llama-cpp-python."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=N_CTX, logits_all=True, verbose=False, n_threads=2, seed=0, **kw)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], np.float32)
    finally:
        llm.close()


# Agreement floors of our engine with transformers (cosine of logits), per weight and KV type.
QUANT_VS_F32 = {"Q8_0": 0.98, "Q6_K": 0.95, "Q5_K_M": 0.9, "Q5_1": 0.9, "Q5_0": 0.9, "Q4_K_M": 0.7, "Q4_K_S": 0.7,
                "Q4_1": 0.7, "Q4_0": 0.7, "IQ4_XS": 0.7, "IQ4_NL": 0.7, "Q3_K_M": 0.5, "IQ3_S": 0.5, "Q2_K": 0.2}  # fmt: skip
KV_VS_F32 = {"q8_0": 0.999, "q4_0": 0.9}
KV_CODES = {"q8_0": 8, "q4_0": 2}  # ggml type ids, as llama-cpp-python takes them
