"""``ferrollm merge`` against mergekit itself: the same tiny models, the same YAML, every method;
tensors equal within float32 rounding (one bfloat16 step for bfloat16 outputs). Marked
``oracle``: python -m pytest -m oracle tests/test_oracle_merge.py"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ferrollm.checkpoints.checkpoint import HFCheckpoint
from ferrollm.merge import merge
from support.hf_models import write_model
from support.oracle import oracle_tool, run_oracle

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    oracle_tool("mergekit-yaml")
    root = tmp_path_factory.mktemp("oracle-merge")
    for i, name in enumerate("abcd"):
        write_model(str(root / name), seed=i, tokenizer="bpe")
    return root


def tensors(path) -> dict[str, np.ndarray]:
    ck = HFCheckpoint(path)
    return {n: ck.get(n) for n in ck.names()}


def both(root, tmp_path, text: str, name: str = "case", cwd=None):
    """(ours, mergekit's) tensors for one YAML."""
    cfg = tmp_path / f"{name}.yml"
    cfg.write_text(text.replace("ROOT", str(root)))
    merge(str(cfg), str(tmp_path / f"{name}-ours"))
    run_oracle(
        [oracle_tool("mergekit-yaml"), str(cfg), str(tmp_path / f"{name}-mergekit"), "--quiet"], cwd=cwd
    )
    return tensors(tmp_path / f"{name}-ours"), tensors(tmp_path / f"{name}-mergekit")


def assert_same(ours, theirs, rtol=2e-5, atol=2e-6):
    assert set(ours) == set(theirs)
    for n in ours:
        np.testing.assert_allclose(ours[n], theirs[n], rtol=rtol, atol=atol, err_msg=n)


def models_yaml(method, entries, base="a", params=""):
    lines = (
        [f"merge_method: {method}", "dtype: float32"]
        + ([f"base_model: ROOT/{base}"] if base else [])
        + ["models:"]
    )
    for name, p in entries:
        lines.append(f"  - model: ROOT/{name}")
        if p:
            lines.append(f"    parameters: {json.dumps(p)}")
    return "\n".join(lines) + "\n" + params


CASES = {
    "linear": models_yaml(
        "linear", [("a", {"weight": 0.3}), ("b", {"weight": 0.9}), ("c", {"weight": 0.2})], None
    ),
    "slerp": """
slices:
  - sources:
      - {model: ROOT/a, layer_range: [0, 2]}
      - {model: ROOT/b, layer_range: [0, 2]}
merge_method: slerp
base_model: ROOT/a
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
    - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
    - value: 0.5
dtype: float32
""",
    "nearswap": models_yaml("nearswap", [("a", {}), ("b", {})], params="parameters: {t: 0.02}\n"),
    "task_arithmetic": models_yaml(
        "task_arithmetic",
        [("b", {"weight": 0.5}), ("c", {"weight": 0.25})],
        params="parameters: {lambda: 1.5}\n",
    ),
    "ties": models_yaml(
        "ties", [("b", {"weight": 1.0, "density": 0.5}), ("c", {"weight": 0.5, "density": 0.7})]
    ),
    "ties_unnormalized": models_yaml(
        "ties",
        [("b", {"weight": 0.8, "density": 0.4}), ("c", {"weight": 0.5, "density": 0.6})],
        params="parameters: {normalize: false}\n",
    ),
    "dare_ties_dense": models_yaml(
        "dare_ties", [("b", {"weight": 1.0, "density": 1.0}), ("c", {"weight": 0.5})]
    ),
    "dare_linear_dense": models_yaml("dare_linear", [("b", {"weight": 0.6}), ("c", {"weight": 0.4})]),
    "model_stock": models_yaml("model_stock", [("b", {}), ("c", {}), ("d", {})]),
    "passthrough": """
slices:
  - sources: [{model: ROOT/a, layer_range: [0, 2]}]
  - sources: [{model: ROOT/b, layer_range: [1, 2], parameters: {scale: 0.5}}]
merge_method: passthrough
dtype: float32
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_matches_mergekit(root, tmp_path, case):
    ours, theirs = both(root, tmp_path, CASES[case], case)
    assert_same(ours, theirs)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_drops_like_mergekit(root, tmp_path, method):
    """Random masks cannot be equal across two RNGs: each keeps about the density, and where
    both keep an entry (no rescaling) the merged values agree."""
    text = models_yaml(
        method, [("b", {"weight": 1.0, "density": 0.4})], params="parameters: {rescale: false}\n"
    )
    ours, theirs = both(root, tmp_path, text, method)
    base = tensors(root / "a")
    for n in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"):
        kept_ours, kept_theirs = ours[n] != base[n], theirs[n] != base[n]
        assert abs(kept_ours.mean() - 0.4) < 0.03 and abs(kept_theirs.mean() - 0.4) < 0.03
        both_kept = kept_ours & kept_theirs
        np.testing.assert_allclose(ours[n][both_kept], theirs[n][both_kept], rtol=2e-5, atol=2e-6)


def test_nearswap_chain_is_mergekit_applied_in_turn(root, tmp_path):
    ours_cfg = tmp_path / "chain.yml"
    ours_cfg.write_text(models_yaml("nearswap", [("a", {}), ("b", {}), ("c", {})], params="parameters: {t: 0.02}\n")
                        .replace("ROOT", str(root)))  # fmt: skip
    merge(str(ours_cfg), str(tmp_path / "chain-ours"))
    step = str(root / "a")
    for i, other in enumerate("bc"):
        cfg = tmp_path / f"step{i}.yml"
        cfg.write_text(f"merge_method: nearswap\ndtype: float32\nbase_model: {step}\nmodels:\n  - model: {step}\n"
                       f"  - model: {root / other}\nparameters: {{t: 0.02}}\n")  # fmt: skip
        run_oracle([oracle_tool("mergekit-yaml"), str(cfg), str(tmp_path / f"step{i}"), "--quiet"])
        step = str(tmp_path / f"step{i}")
    assert_same(tensors(tmp_path / "chain-ours"), tensors(step))


PEARL = """slices:
  - sources:
      - model: mlabonne/OmniBeagle-7B
        layer_range: [0, 32]
      - model: WizardLM/WizardMath-7B-V1.1
        layer_range: [0, 32]
merge_method: slerp
base_model: mlabonne/OmniBeagle-7B
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


def test_seed_004_pearl_slerp_exactly_as_written(tmp_path):
    """The seed's Pearl-7B-slerp configuration, verbatim, on two 32-layer bfloat16 stand-ins
    stored under the model names it uses."""
    oracle_tool("mergekit-yaml")
    for i, name in enumerate(("mlabonne/OmniBeagle-7B", "WizardLM/WizardMath-7B-V1.1")):
        write_model(str(tmp_path / name), arch="mistral", seed=10 + i, dtype="BF16", tokenizer="bpe", layers=32,
                    hidden=32, ff=64, heads=4, kv_heads=2, vocab=300)  # fmt: skip
    (tmp_path / "pearl.yml").write_text(PEARL)
    merge(str(tmp_path / "pearl.yml"), str(tmp_path / "ours"))
    run_oracle(
        [oracle_tool("mergekit-yaml"), "pearl.yml", "theirs", "--quiet", "--no-write-model-card"],
        cwd=str(tmp_path),
    )  # the card would look the model names up online
    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "theirs")
    a, b = (tensors(tmp_path / name) for name in ("mlabonne/OmniBeagle-7B", "WizardLM/WizardMath-7B-V1.1"))
    assert (
        set(ours) == set(theirs) and HFCheckpoint(tmp_path / "ours").stored_dtype("lm_head.weight") == "BF16"
    )
    differ = 0
    for n in ours:
        # Both round a float32 result to bfloat16. Where the float32 results differ by their
        # rounding (relative to the inputs, so large where the two inputs cancel) next to a
        # halfway point, they round to neighbouring bfloat16 values.
        diff = np.abs(ours[n] - theirs[n])
        bound = np.maximum(np.abs(ours[n]), np.abs(theirs[n])) * 2.0**-7 + 1e-6 * (
            np.abs(a[n]) + np.abs(b[n])
        )
        assert np.all(diff <= bound), n
        differ += int(np.count_nonzero(diff))
    assert differ < 1e-3 * sum(v.size for v in ours.values())
