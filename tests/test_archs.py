"""Every architecture the engine runs, on synthetic files of each (ARCH_TENSORS in
ferrollm/synthetic_model.py), against the float64 numpy reference (tests/reference_model.py):
biases, fused tensors, Q/K norms, Gemma's norms, scale, GeGLU and soft caps, sliding windows
(longer sequences than the window), rope styles and scalings, quantized weights and caches.

These need no torch; tests/test_oracle_archs.py (marked oracle) checks the same architectures
against transformers and llama.cpp on checkpoints converted by llama.cpp's own converter.
"""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import UnsupportedTypeError, _core
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from support.model_helpers import ROUTER_MARGIN, cosines
from support.reference_model import ReferenceModel

N_TOKENS = 40
TOKENS = [int(t) for t in np.random.default_rng(3).integers(3, 320, N_TOKENS)]
WINDOW = 12  # shorter than the sequence, so sliding layers see only part of it

BASE = {"n_embd": 256, "n_ff": 256, "n_head": 4, "n_head_kv": 2, "n_layer": 2}
# name: (spec, extra metadata as {suffix after "{arch}.": value})
CASES = {
    "llama": ({}, {}),
    "llama-swa": ({}, {"attention.sliding_window": WINDOW}),
    "llama-linear": ({}, {"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}),
    "llama-yarn": ({}, {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                        "rope.scaling.original_context_length": 32}),
    "qwen2": ({"arch": "qwen2"}, {}),
    "qwen3": ({"arch": "qwen3", "head_dim": 128}, {}),
    "qwen3moe": ({"arch": "qwen3moe", "head_dim": 128, "n_expert": 4, "n_expert_used": 2}, {}),
    "qwen3moe-unnormed": ({"arch": "qwen3moe", "n_expert": 4, "n_expert_used": 2},
                          {"expert_weights_norm": False}),
    "phi3": ({"arch": "phi3"}, {}),
    "gemma2": ({"arch": "gemma2", "n_layer": 3, "tied_embeddings": True},
               {"attention.sliding_window": WINDOW, "attn_logit_softcapping": 5.0,
                "final_logit_softcapping": 3.0}),
    "gemma3": ({"arch": "gemma3", "n_layer": 6, "tied_embeddings": True, "rope_freq_base": 1e6},
               {"attention.sliding_window": WINDOW,
                "rope.scaling.type": "linear", "rope.scaling.factor": 8.0}),
}  # fmt: skip


def arch_file(tmp_path_factory, case: str, weight_type: str = "F32") -> str:
    """The synthetic file of ``case``, written once per session."""
    path = tmp_path_factory.getbasetemp() / f"arch_{case}_{weight_type}.gguf"
    if not path.exists():
        spec, extra = CASES[case]
        arch = spec.get("arch", "llama")
        metadata = {f"{arch}.{k}": v for k, v in extra.items()}
        write_model(path, ModelSpec(**{**BASE, **spec}, weight_type=weight_type, extra_metadata=metadata))
    return str(path)


def _logits(path: str, **kw) -> np.ndarray:
    return _core.Model(path, n_ctx=64, **kw).eval(TOKENS, logits_all=True)


def _reference(path: str) -> tuple[np.ndarray, np.ndarray]:
    ref = ReferenceModel(path)
    logits = ref.logits(TOKENS)
    return logits, ref.router_margin > ROUTER_MARGIN


@pytest.mark.parametrize("case", list(CASES))
def test_architecture_matches_reference(tmp_path_factory, case):
    path = arch_file(tmp_path_factory, case)
    want, keep = _reference(path)
    got = _logits(path)
    assert keep.mean() >= 0.75
    assert cosines(got, want)[keep].min() >= 0.9999


@pytest.mark.parametrize("case", ["qwen2", "qwen3moe", "phi3", "gemma2", "gemma3"])
@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_K", "IQ4_XS"])
def test_architecture_quantized(tmp_path_factory, case, weight_type):
    path = arch_file(tmp_path_factory, case, weight_type)
    want, keep = _reference(path)
    assert cosines(_logits(path), want)[keep].min() >= 0.999


@pytest.mark.parametrize("case", ["qwen3", "gemma2", "phi3"])
@pytest.mark.parametrize("kv", ["Q8_0", "Q4_0"])
def test_architecture_quantized_cache(tmp_path_factory, case, kv):
    path = arch_file(tmp_path_factory, case)
    want, keep = _reference(path)
    got = _logits(path, type_k=kv, type_v=kv)
    assert cosines(got, want)[keep].min() >= (0.999 if kv == "Q8_0" else 0.94)


def test_sliding_window_decodes_like_a_batch(tmp_path_factory):
    """Token-by-token decoding past the window sees the same keys as one batch."""
    path = arch_file(tmp_path_factory, "gemma2")
    batch = _logits(path)
    model = _core.Model(path, n_ctx=64)
    steps = np.concatenate([model.eval([t]) for t in TOKENS])
    assert cosines(steps, batch).min() >= 0.99999


def test_context_past_training_needs_rope_scaling(tmp_path_factory):
    plain = arch_file(tmp_path_factory, "llama")  # trained on 256 positions
    with pytest.raises(ValueError, match="exceeds the model's trained context of 256.*rope scaling"):
        _core.Model(plain, n_ctx=512)
    stretched = arch_file(tmp_path_factory, "llama-yarn")  # 32 positions x 4, capped by 256
    assert _core.Model(stretched, n_ctx=256).n_ctx == 256
    linear = arch_file(tmp_path_factory, "llama-linear")  # 256 x 4
    assert _core.Model(linear, n_ctx=1024).config()["n_ctx_max"] == 1024
    with pytest.raises(ValueError, match="exceeds the 1024 its rope scaling allows"):
        _core.Model(linear, n_ctx=1025)


def test_unsupported_architecture_names_the_supported_ones(tmp_path_factory):
    from ferrollm.gguf import GGUFWriter

    path = str(tmp_path_factory.mktemp("arch") / "falcon.gguf")
    w = GGUFWriter(path)
    w.add("general.architecture", "falcon")
    w.write()
    with pytest.raises(UnsupportedTypeError) as e:
        _core.Model(path)
    msg = str(e.value)
    assert msg.startswith("unsupported model architecture 'falcon' (supported: llama, qwen2, qwen3, ")
    assert "gemma3" in msg and "phi3" in msg


def test_config_reports_the_architecture(tmp_path_factory):
    c = _core.Model(arch_file(tmp_path_factory, "gemma3"), n_ctx=64).config()
    assert c["arch"] == "gemma3"
    assert c["swa_window"] == WINDOW
    assert c["swa_layers"] == [True] * 5 + [False]
