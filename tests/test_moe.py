"""``ferrollm moe`` on tiny numpy-written checkpoints: the frankenMoE's tensors against their
sources, router rows against the formulas written out here in numpy (tokens from the
`tokenizers` library, hidden states from ``Model.hidden_states``), GGUF inputs, the output run
by ferrollm, the errors and the no-partial-output rule."""

from __future__ import annotations

import os
import subprocess
import sys

import ferrollm
import numpy as np
import pytest
from ferrollm._core import Model
from ferrollm.checkpoints.checkpoint import GGUFCheckpoint
from ferrollm.moe import MoEConfigError, MoEError, moe
from support.hf_models import write_model
from tokenizers import Tokenizer as HFTokenizer

PROMPTS = {"b": (["the cat sat", "hello there"], ["in the end"]), "c": (["in the beginning", "the rain"], [])}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-models")
    ws = {name: write_model(str(root / name), seed=20 + i, tokenizer="bpe") for i, name in enumerate("abc")}
    ws["d"] = write_model(str(root / "d"), seed=23, tokenizer="bpe", ff=96)
    ws["e"] = write_model(str(root / "e"), seed=24, tokenizer="bpe", ff=96)
    write_model(str(root / "wide"), seed=9, tokenizer="bpe", hidden=128)
    write_model(str(root / "mix"), arch="mixtral", seed=5, tokenizer="bpe")
    ferrollm.convert(str(root / "a"), str(root / "a.gguf"), "f32")
    ferrollm.convert(str(root / "b"), str(root / "b.gguf"), "f32")
    return root, ws


def moe_yaml(mode: str, experts=("b", "c"), base: str = "a", extra: str = "") -> str:
    lines = [f"base_model: ROOT/{base}", f"gate_mode: {mode}", "dtype: float32", "experts:"]
    for name in experts:
        pos, neg = PROMPTS.get(name.split(".")[0], (["a prompt for " + name], []))
        lines += [f"  - source_model: ROOT/{name}", f"    positive_prompts: {pos!r}"]
        if neg:
            lines.append(f"    negative_prompts: {neg!r}")
    return "\n".join(lines) + "\n" + extra


def run(root, tmp_path, text: str, out: str = "out.gguf", **kw):
    cfg = tmp_path / "moe.yml"
    cfg.write_text(text.replace("ROOT", str(root)))
    dst = tmp_path / out
    types = moe(str(cfg), str(dst), **kw)
    return dst, types


def tensors_of(path) -> dict[str, np.ndarray]:
    ck = GGUFCheckpoint(path)
    return {n: ck.get(n) for n in ck.names()}


def tokens(root, prompt: str) -> list[int]:
    """mergekit's tokenization with the HF tokenizer itself: BOS text + prompt, nothing added."""
    tok = HFTokenizer.from_file(str(root / "a" / "tokenizer.json"))
    return tok.encode("<s>" + prompt, add_special_tokens=False).ids


def unit(v):
    return v / max(np.linalg.norm(v), 1e-8)


def check_sources(out, w, experts, base="a"):
    """Non-router tensors: the base's, except each layer's MLP, which is the experts'."""
    for name, value in out.items():
        if ".block_sparse_moe.gate." in name:
            continue
        if ".experts." in name:
            layer, e, proj = name.split(".")[2], int(name.split(".")[5]), name.split(".")[6]
            part = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}[proj]
            dense = w[experts[e]][f"model.layers.{layer}.mlp.{part}.weight"]
            np.testing.assert_array_equal(value, dense, err_msg=name)
        else:
            np.testing.assert_array_equal(value, w[base][name], err_msg=name)
    assert not any(".mlp." in n for n in out)


def test_cheap_embed_rows_and_tensors(models, tmp_path):
    root, w = models
    dst, types = run(root, tmp_path, moe_yaml("cheap_embed"))
    out = tensors_of(dst)
    check_sources(out, w, ["b", "c"])
    assert all(t == "F32" for t in types.values())
    embed = w["a"]["model.embed_tokens.weight"].astype(np.float64)
    for e, name in enumerate("bc"):
        pos, neg = PROMPTS[name]
        row = unit(sum(embed[tokens(root, p)].sum(0) for p in pos))
        if neg:
            row = unit(row - unit(sum(embed[tokens(root, p)].sum(0) for p in neg)))
        for layer in range(2):
            got = out[f"model.layers.{layer}.block_sparse_moe.gate.weight"][e]
            np.testing.assert_allclose(got, row, rtol=1e-5, atol=1e-6)
    md = ferrollm.gguf.open(str(dst)).metadata
    counts = md["llama.expert_count"], md["llama.expert_used_count"], md["llama.feed_forward_length"]
    assert counts == (2, 2, 128)
    assert md["general.size_label"].startswith("2x")


def test_hidden_rows_are_the_base_models_last_token_states(models, tmp_path):
    root, w = models
    dst, _ = run(root, tmp_path, moe_yaml("hidden"))
    out = tensors_of(dst)
    check_sources(out, w, ["b", "c"])
    base = Model(str(root / "a.gguf"), n_ctx=64)

    def mean_state(prompts):
        states = []
        for p in prompts:
            base.truncate(0)
            last = base.hidden_states(tokens(root, p))[:2, -1, :]  # entering layers 0 and 1
            states.append(last.astype(np.float64))
        return np.mean(states, axis=0)

    for e, name in enumerate("bc"):
        pos, neg = PROMPTS[name]
        v = mean_state(pos) - (mean_state(neg) if neg else 0)
        for layer in range(2):
            got = out[f"model.layers.{layer}.block_sparse_moe.gate.weight"][e]
            np.testing.assert_allclose(got, unit(v[layer]), rtol=1e-5, atol=1e-6)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # the temporary base GGUF is gone


def test_gguf_inputs_give_the_same_model(models, tmp_path):
    root, _w = models
    text = moe_yaml("hidden", experts=("b.gguf", "c"), base="a.gguf")  # a and b converted to F32 GGUF
    from_gguf = tensors_of(run(root, tmp_path, text, "g.gguf")[0])
    from_hf = tensors_of(run(root, tmp_path, moe_yaml("hidden"), "h.gguf")[0])
    assert list(from_gguf) == list(from_hf)
    md = ferrollm.gguf.open(str(tmp_path / "g.gguf")).metadata
    assert (md["llama.expert_count"], md["llama.feed_forward_length"], md["llama.block_count"]) == (2, 128, 2)
    for n in from_hf:
        np.testing.assert_allclose(from_gguf[n], from_hf[n], rtol=1e-5, atol=1e-6, err_msg=n)


def test_random_is_seeded_and_scales_apply(models, tmp_path):
    root, w = models
    extra = "random_seed: 7\nexperts_per_token: 1\n"
    text = moe_yaml("random", experts=("b", "c", "a"), extra=extra).replace(
        "ROOT/c\n", "ROOT/c\n    residual_scale: 0.5\n"
    )
    one = tensors_of(run(root, tmp_path, text, "r1.gguf")[0])
    two = tensors_of(run(root, tmp_path, text, "r2.gguf")[0])
    other = tensors_of(run(root, tmp_path, text.replace("random_seed: 7", "random_seed: 8"), "r3.gguf")[0])
    router = "model.layers.1.block_sparse_moe.gate.weight"
    np.testing.assert_array_equal(one[router], two[router])
    assert one[router].shape == (3, 64) and not np.allclose(one[router], other[router])
    assert abs(one[router].std() - 1) < 0.15  # standard normal rows
    down = "model.layers.0.block_sparse_moe.experts.1.w2.weight"
    np.testing.assert_allclose(one[down], 0.5 * w["c"]["model.layers.0.mlp.down_proj.weight"], rtol=1e-6)
    md = ferrollm.gguf.open(str(tmp_path / "r1.gguf")).metadata
    assert (md["llama.expert_count"], md["llama.expert_used_count"]) == (3, 1)


def test_experts_with_their_own_ffn_width(models, tmp_path):
    root, w = models
    with pytest.warns(UserWarning, match=r"layer\(s\) 0, 1 are nearly dependent"):  # near-identical prompts
        dst, _ = run(root, tmp_path, moe_yaml("cheap_embed", experts=("d", "e")))
    check_sources(tensors_of(dst), w, ["d", "e"])
    assert ferrollm.gguf.open(str(dst)).metadata["llama.feed_forward_length"] == 96


def test_output_runs_quantized(models, tmp_path):
    root, _ = models
    dst, types = run(root, tmp_path, moe_yaml("hidden"), outtype="q8_0")
    assert types["blk.0.ffn_gate_exps.weight"] == "Q8_0" and types["blk.0.ffn_gate_inp.weight"] == "F32"
    llm = ferrollm.Llama(str(dst), n_ctx=64, verbose=False)
    text = llm("the cat", max_tokens=8, temperature=0)["choices"][0]["text"]
    assert llm.n_tokens > len(llm.tokenize(b"the cat"))  # it generated
    assert isinstance(text, str)
    assert np.isfinite(llm.scores[: llm.n_tokens]).all()


def test_progress_and_cli(models, tmp_path):
    root, _ = models
    seen = []
    run(root, tmp_path, moe_yaml("hidden"), progress=lambda d, t, n: seen.append((d, t, n)))
    assert ("router prompts" in {n for _, _, n in seen}) and seen[-1][0] == seen[-1][1]
    cfg = tmp_path / "c.yml"
    cfg.write_text(moe_yaml("cheap_embed").replace("ROOT", str(root)))
    r = subprocess.run([sys.executable, "-m", "ferrollm", "moe", str(cfg), str(tmp_path / "o.gguf"), "--outtype", "q8_0"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "Q8_0" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ferrollm", "moe", str(cfg), str(tmp_path / "o.gguf"), "--outtype", "q9_9"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 1 and "unknown output type 'q9_9'" in r.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        (moe_yaml("hiden"), "unknown gate_mode 'hiden'"),
        (moe_yaml("hidden", extra="merge_method: linear\n"), "unknown configuration key(s): merge_method"),
        (moe_yaml("hidden").replace("negative_prompts", "negativ_prompts"), "unknown key(s) negativ_prompts"),
        (
            moe_yaml("hidden").replace(
                "positive_prompts: ['the cat sat', 'hello there']", "positive_prompts: []"
            ),
            "experts[0] (ROOT/b) has no positive_prompts",
        ),
        (moe_yaml("cheap_embed", experts=("b", "c")).replace("the rain", "x"), None),  # fine: prompts differ
        (
            (
                "base_model: ROOT/a\ngate_mode: random\nexperts:\n  - source_model: ROOT/b\n  - source_model: ROOT/c\n"
                "experts_per_token: 3\n"
            ),
            "experts_per_token = 3 must be between 1 and the number of experts (2)",
        ),
        (moe_yaml("hidden", experts=("b", "wide")), "has 2 layers of width 128; the base has 2 of width 64"),
        (moe_yaml("hidden", experts=("b", "mix")), "is a MixtralForCausalLM (a mixture of experts)"),
        (moe_yaml("hidden", base="mix"), "base_model: ROOT/mix is a MixtralForCausalLM"),
        (moe_yaml("hidden", experts=("b", "d")), "MLP shapes"),
        (moe_yaml("hidden", experts=("b", "nowhere")), "experts[1]: model 'ROOT/nowhere' not found"),
        (
            (
                "base_model: ROOT/a\nexperts:\n  - {source_model: ROOT/b, positive_prompts: [x]}\n"
                "  - {source_model: ROOT/c, positive_prompts: [x]}\n"
            ),
            "every expert has the same positive and negative prompts",
        ),
        (moe_yaml("hidden", extra="shared_experts: [{source_model: ROOT/a}]\n"), "no shared experts"),
        (
            moe_yaml("hidden", extra="dtype: float8\n").replace("dtype: float32\n", ""),
            "unknown dtype 'float8'",
        ),
    ],
)
def test_errors_name_the_problem(models, tmp_path, text, message):
    root, _ = models
    if message is None:
        run(root, tmp_path, text)
        return
    with pytest.raises((MoEConfigError, MoEError)) as e:
        run(root, tmp_path, text)
    assert message.replace("ROOT", str(root)) in str(e.value)
    assert os.listdir(tmp_path) == ["moe.yml"]


def test_failure_leaves_no_partial_file_and_keeps_the_old_one(models, tmp_path, monkeypatch):
    root, _ = models
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"previous")
    from ferrollm.moe.plan import MoEPlan

    real, calls = MoEPlan.get, []

    def failing(self, name):
        calls.append(name)
        if len(calls) > 5:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the run
        return real(self, name)

    monkeypatch.setattr(MoEPlan, "get", failing)
    with pytest.raises(KeyboardInterrupt):
        run(root, tmp_path, moe_yaml("hidden"))
    assert dst.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["moe.yml", "out.gguf"]
