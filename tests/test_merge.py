"""``ferrollm merge`` on tiny numpy-written checkpoints: every method against its formula
(written out here independently), slices and gradients, GGUF and Hugging Face inputs and
outputs, the errors, the no-partial-output rule and the memory bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ferrollm
import numpy as np
import pytest
from ferrollm.checkpoints.checkpoint import GGUFCheckpoint, HFCheckpoint
from ferrollm.merge import MergeConfigError, MergeError, merge
from support.hf_models import write_model

LAYER_T = {0: 0.0, 1: 1.0}  # t of each layer in a 2-layer slice


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    ws = {name: write_model(str(root / name), seed=i, tokenizer="bpe") for i, name in enumerate("abcd")}
    write_model(str(root / "wide"), seed=9, tokenizer="bpe", hidden=128)
    write_model(str(root / "moe"), arch="mixtral", seed=5, tokenizer="bpe")
    return root, ws


def run(root, tmp_path, text: str, out: str = "out", **kw):
    cfg = tmp_path / "merge.yml"
    cfg.write_text(text.replace("ROOT", str(root)))
    dst = tmp_path / out
    merge(str(cfg), str(dst), **kw)
    return dst


def tensors_of(path) -> dict[str, np.ndarray]:
    ck = HFCheckpoint(path) if os.path.isdir(path) else GGUFCheckpoint(path)
    return {n: ck.get(n) for n in ck.names()}


def models_yaml(
    method: str, entries: list[tuple[str, dict]], base: str | None = "a", params: str = ""
) -> str:
    lines = [f"merge_method: {method}", "dtype: float32"]
    if base:
        lines.append(f"base_model: ROOT/{base}")
    lines.append("models:")
    for name, p in entries:
        lines.append(f"  - model: ROOT/{name}")
        if p:
            lines.append(f"    parameters: {json.dumps(p)}")
    return "\n".join(lines) + "\n" + params


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_linear(models, tmp_path):
    root, w = models
    out = tensors_of(
        run(root, tmp_path, models_yaml("linear", [("a", {"weight": 0.3}), ("b", {"weight": 0.9})], None))
    )
    for n, v in out.items():
        close(v, (0.3 * w["a"][n] + 0.9 * w["b"][n]) / 1.2)


def _slerp(t, a, b):
    """The textbook formula on whole tensors (the fallback to lerp when nearly parallel)."""
    ua, ub = a.ravel() / np.linalg.norm(a), b.ravel() / np.linalg.norm(b)
    omega = np.arccos(np.clip(ua @ ub, -1, 1))
    if abs(np.cos(omega)) > 0.9995:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


SLERP = """
slices:
  - sources:
      - model: ROOT/a
        layer_range: [0, 2]
      - model: ROOT/b
        layer_range: [0, 2]
merge_method: slerp
base_model: ROOT/a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"""


def test_slerp_filters_and_gradients(models, tmp_path):
    root, w = models
    out = tensors_of(run(root, tmp_path, SLERP))
    for n, v in out.items():
        layer = int(n.split(".")[2]) if n.startswith("model.layers.") else None
        if "self_attn" in n:
            t = LAYER_T[layer]  # gradient [0 .. 1] at its ends
        elif "mlp" in n:
            t = 1 - LAYER_T[layer]
        else:
            t = 0.5
        close(v, _slerp(t, w["a"][n], w["b"][n]))


def test_gradient_interpolates_between_entries_and_first_filter_wins():
    from ferrollm.merge.config import evaluate

    grad = [0, 0.5, 0.3, 0.7, 1]
    assert evaluate(grad, "x", 0.3) == pytest.approx(0.5 * 0.8 + 0.3 * 0.2)  # t * 4 = 1.2
    assert evaluate(grad, "x", 1.0) == 1
    conds = [{"filter": "self_attn", "value": 0.1}, {"filter": "q_proj", "value": 0.2}, {"value": 0.3}]
    assert evaluate(conds, "model.layers.0.self_attn.q_proj.weight", 0) == 0.1
    assert evaluate(conds, "model.layers.0.mlp.up_proj.weight", 0) == 0.3


def test_nearswap_chain_is_seed_formula_applied_in_turn(models, tmp_path):
    root, w = models
    t = 0.02
    out = tensors_of(run(root, tmp_path, models_yaml("nearswap", [("a", {}), ("b", {}), ("c", {})], "a",
                                                     f"parameters: {{t: {t}}}\n")))  # fmt: skip

    def seed_003(v0, v1):
        with np.errstate(divide="ignore", invalid="ignore"):
            lweight = t / np.absolute(v0 - v1)
        lweight = np.clip(np.nan_to_num(lweight, nan=1.0, posinf=1.0, neginf=1.0), 0.0, 1.0)
        return (1 - lweight) * v0 + lweight * v1

    for n, v in out.items():
        close(v, seed_003(seed_003(w["a"][n], w["b"][n]), w["c"][n]))
    n = "model.layers.0.mlp.up_proj.weight"
    assert 0 < np.mean(out[n] != w["a"][n]) < 1


def test_task_arithmetic(models, tmp_path):
    root, w = models
    out = tensors_of(run(root, tmp_path, models_yaml("task_arithmetic", [("b", {"weight": 0.5}), ("c", {"weight": 0.25})],
                                                     params="parameters: {lambda: 2.0}\n")))  # fmt: skip
    for n, v in out.items():
        a = w["a"][n]
        close(v, a + 2.0 * (0.5 * (w["b"][n] - a) + 0.25 * (w["c"][n] - a)))


def _ties(base, xs, weights, density):
    deltas = []
    for x, wt in zip(xs, weights):
        d = (x - base).ravel()
        k = max(1, int(density * d.size))
        keep = np.zeros(d.size, bool)
        keep[np.argsort(-np.abs(d), kind="stable")[:k]] = True
        deltas.append(np.where(keep, d, 0).reshape(base.shape) * wt)
    sign = np.where(sum(deltas) >= 0, 1.0, -1.0)
    agree = [np.sign(d) == sign for d in deltas]
    num = sum(np.where(m, d, 0) for d, m in zip(deltas, agree))
    den = sum(np.where(m, wt, 0) for wt, m in zip(weights, agree))
    return base + num / np.where(den == 0, 1, den)


def test_ties(models, tmp_path):
    root, w = models
    out = tensors_of(run(root, tmp_path, models_yaml("ties", [("b", {"weight": 1.0, "density": 0.5}),
                                                              ("c", {"weight": 0.5, "density": 0.5})])))  # fmt: skip
    for n, v in out.items():
        close(v, _ties(w["a"][n], [w["b"][n], w["c"][n]], [1.0, 0.5], 0.5))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_is_seeded_and_drops_a_density_fraction(models, tmp_path, method):
    root, w = models
    text = models_yaml(
        method, [("b", {"weight": 1.0, "density": 0.3})], params="parameters: {rescale: false}\n"
    )
    one = tensors_of(run(root, tmp_path, text, "one"))
    two = tensors_of(run(root, tmp_path, text, "two"))
    other = tensors_of(run(root, tmp_path, text + "random_seed: 7\n", "other"))
    n = "model.layers.0.mlp.gate_proj.weight"
    np.testing.assert_array_equal(one[n], two[n])
    assert not np.array_equal(one[n], other[n])
    a, b = w["a"][n], w["b"][n]
    kept = np.isclose(one[n], b, rtol=0, atol=1e-7)
    assert np.all(kept | np.isclose(one[n], a, rtol=0, atol=1e-7))
    assert abs(kept.mean() - 0.3) < 0.03


def test_dare_rescales_to_the_l1_norm(models, tmp_path):
    root, w = models
    out = tensors_of(
        run(root, tmp_path, models_yaml("dare_linear", [("b", {"weight": 1.0, "density": 0.5})]))
    )
    n = "model.layers.1.self_attn.o_proj.weight"
    d, kept = w["b"][n] - w["a"][n], out[n] - w["a"][n]
    assert np.isclose(np.abs(kept).sum(), np.abs(d).sum(), rtol=1e-4)


def test_model_stock(models, tmp_path):
    root, w = models
    out = tensors_of(run(root, tmp_path, models_yaml("model_stock", [("b", {}), ("c", {}), ("d", {})])))
    for n, v in out.items():
        base = w["a"][n].ravel()
        offs = [w[m][n].ravel() - base for m in "bcd"]
        cos = np.mean(
            [
                o1 @ o2 / (np.linalg.norm(o1) * np.linalg.norm(o2))
                for i, o1 in enumerate(offs)
                for o2 in offs[i + 1 :]
            ]
        )
        t = 3 * cos / (1 + 2 * cos)
        avg = sum(w[m][n] for m in "bcd") / 3
        close(v, t * avg + (1 - t) * w["a"][n])


FRANKEN = """
slices:
  - sources:
      - model: ROOT/a
        layer_range: [0, 2]
  - sources:
      - model: ROOT/b
        layer_range: [1, 2]
        parameters: {scale: 0.5}
merge_method: passthrough
dtype: float32
"""


def test_passthrough_frankenmerge_stacks_layers(models, tmp_path):
    root, w = models
    dst = run(root, tmp_path, FRANKEN)
    out = tensors_of(dst)
    assert json.loads((dst / "config.json").read_text())["num_hidden_layers"] == 3
    for part in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
        np.testing.assert_array_equal(out[f"model.layers.0.{part}"], w["a"][f"model.layers.0.{part}"])
        np.testing.assert_array_equal(out[f"model.layers.1.{part}"], w["a"][f"model.layers.1.{part}"])
        close(out[f"model.layers.2.{part}"], 0.5 * w["b"][f"model.layers.1.{part}"])
    np.testing.assert_array_equal(out["model.embed_tokens.weight"], w["a"]["model.embed_tokens.weight"])
    close(out["lm_head.weight"], 0.5 * w["b"]["lm_head.weight"])  # the last slice's


def test_gguf_output_is_the_converted_merge_and_runs(models, tmp_path):
    root, _w = models
    hf = tensors_of(run(root, tmp_path, SLERP, "hf"))
    gguf_path = run(root, tmp_path, SLERP, "m.gguf", outtype="f32")
    back = tensors_of(gguf_path)  # mapped back to Hugging Face names and Q/K layout
    assert set(back) == set(hf)
    for n in hf:
        np.testing.assert_array_equal(back[n], hf[n])
    f = ferrollm.gguf.open(gguf_path)
    assert f.metadata["llama.block_count"] == 2 and f.metadata["tokenizer.ggml.model"] == "gpt2"
    llm = ferrollm.Llama(str(gguf_path), n_ctx=32, verbose=False)
    llm.eval([1, 5, 9])
    assert np.all(np.isfinite(llm.scores[-1])) and llm.scores.shape[-1] == 320


def test_quantized_output_types(models, tmp_path):
    root, _ = models
    text = models_yaml("linear", [("wide", {"weight": 1.0})], None)
    types = run_types(root, tmp_path, text, "q8.gguf", "q8_0")
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    merge_types = run_types(root, tmp_path, text, "q4.gguf", "Q4_0")
    assert merge_types["blk.1.ffn_down.weight"] == "Q4_0"
    f = ferrollm.gguf.open(tmp_path / "q4.gguf")
    assert {t.name: t.type for t in f.tensors} == merge_types
    assert f.metadata["general.file_type"] == 2


def run_types(root, tmp_path, text, out, outtype):
    cfg = tmp_path / "m.yml"
    cfg.write_text(text.replace("ROOT", str(root)))
    return merge(str(cfg), str(tmp_path / out), outtype=outtype)


def test_gguf_inputs_give_the_same_merge(models, tmp_path):
    root, _ = models
    for name in "ab":
        ferrollm.convert(str(root / name), str(tmp_path / f"{name}.gguf"), outtype="f32")
    from_hf = tensors_of(run(root, tmp_path, SLERP, "hf"))
    text = SLERP.replace("ROOT/a", str(tmp_path / "a.gguf")).replace("ROOT/b", str(tmp_path / "b.gguf"))
    from_gguf = tensors_of(run(root, tmp_path, text, "hf2"))
    for n in from_hf:
        close(from_gguf[n], from_hf[n])


def test_quantized_gguf_inputs_are_dequantized(models, tmp_path):
    root, _w = models
    ferrollm.convert(str(root / "wide"), str(tmp_path / "w.gguf"), outtype="q8_0")
    text = models_yaml("passthrough", [(str(tmp_path / "w.gguf"), {})], None).replace("ROOT/", "")
    out = tensors_of(run(root, tmp_path, text))
    src = HFCheckpoint(root / "wide")
    n = "model.layers.0.self_attn.k_proj.weight"
    np.testing.assert_allclose(out[n], src.get(n), atol=2e-3)


def test_mixtral_merge_keeps_experts(models, tmp_path):
    root, _ = models
    text = models_yaml("linear", [("moe", {"weight": 1.0})], None)
    out = run(root, tmp_path, text, "moe.gguf", outtype="f32")
    f = ferrollm.gguf.open(out)
    assert f.tensor("blk.0.ffn_gate_exps.weight").shape == (64, 128, 4)
    assert f.metadata["llama.expert_count"] == 4


# Errors: each names the problem, and nothing is written.


@pytest.mark.parametrize(
    "text, message",
    [
        (models_yaml("frobnicate", [("a", {}), ("b", {})]), "unknown merge method 'frobnicate'"),
        (models_yaml("linear", [("a", {"weight": 1, "density": 0.5})], None), "has no parameter 'density'"),
        (
            models_yaml("slerp", [("a", {}), ("b", {})], params="parameters: {t: 1.5}\n"),
            "t = 1.5 is outside [0, 1]",
        ),
        (
            models_yaml(
                "slerp",
                [("a", {}), ("b", {})],
                params="parameters: {t: [{filter: self_atn, value: 0.5}, {value: 0.5}]}\n",
            ),
            "filter 'self_atn'",
        ),
        (
            models_yaml("slerp", [("a", {}), ("wide", {})], params="parameters: {t: 0.5}\n"),
            "different shapes",
        ),
        (
            models_yaml("linear", [("a", {"weight": 1}), ("moe", {"weight": 1})], None),
            "different architectures",
        ),
        (
            models_yaml("slerp", [("a", {}), ("b", {}), ("c", {})], params="parameters: {t: 0.5}\n"),
            "takes 2..2 models",
        ),
        (models_yaml("linear", [("a", {"weight": 1}), ("nonexistent", {"weight": 1})], None), "not found"),
        (models_yaml("linear", [("a", {})], None), "parameter 'weight' has no value"),
        ("merge_method: linear\nmodels: []\nsurprise: 1\n", "unknown configuration key"),
    ],
)
def test_errors_name_the_problem(models, tmp_path, text, message):
    root, _ = models
    with pytest.raises((MergeError, MergeConfigError)) as e:
        run(root, tmp_path, text)
    assert message in str(e.value)
    assert os.listdir(tmp_path) == ["merge.yml"]


def test_missing_tensor_is_named(models, tmp_path):
    root, w = models
    broken = dict(w["b"])
    del broken["model.layers.1.mlp.up_proj.weight"]
    write_model(str(tmp_path / "broken"), tokenizer="bpe", weights=broken)
    text = models_yaml("slerp", [("a", {}), ("broken", {})], params="parameters: {t: 0.5}\n").replace(
        "ROOT/broken", str(tmp_path / "broken")
    )
    with pytest.raises(MergeError, match=r"model.layers.1.mlp.up_proj.weight is missing from .*broken"):
        run(root, tmp_path, text)


def test_failure_leaves_no_partial_file_and_keeps_the_old_one(models, tmp_path, monkeypatch):
    root, _ = models
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"previous")
    from ferrollm.merge import methods

    calls = []

    def failing(base, others, p, mp, ctx):
        calls.append(ctx.tensor_name)
        if len(calls) > 5:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the run
        return others[0]

    monkeypatch.setitem(
        methods.METHODS, "passthrough", methods.MergeMethod(failing, needs_base=False, max_inputs=1)
    )
    with pytest.raises(KeyboardInterrupt):
        run(root, tmp_path, models_yaml("passthrough", [("a", {})], None), "out.gguf")
    assert dst.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["merge.yml", "out.gguf"]
    with pytest.raises(KeyboardInterrupt):
        run(root, tmp_path, models_yaml("passthrough", [("a", {})], None), "outdir")
    assert sorted(os.listdir(tmp_path)) == ["merge.yml", "out.gguf"]


def test_full_disk_is_reported_and_leaves_nothing(models, tmp_path, monkeypatch):
    import errno

    from ferrollm import atomic

    root, _ = models
    real = atomic.AtomicFile.write

    def write(self, data):
        if self.tell() > 4096:
            e = OSError(errno.ENOSPC, "No space left on device")
            raise atomic._disk_full(self.path, e)
        real(self, data)

    monkeypatch.setattr(atomic.AtomicFile, "write", write)
    with pytest.raises(OSError, match="disk full while writing .*out.gguf"):
        run(root, tmp_path, models_yaml("passthrough", [("a", {})], None), "out.gguf")
    assert os.listdir(tmp_path) == ["merge.yml"]


def test_cli_merge(models, tmp_path):
    root, w = models
    cfg = tmp_path / "m.yml"
    cfg.write_text(
        models_yaml("linear", [("a", {"weight": 1.0}), ("b", {"weight": 1.0})], None).replace(
            "ROOT", str(root)
        )
    )
    r = subprocess.run([sys.executable, "-m", "ferrollm", "merge", str(cfg), str(tmp_path / "o.gguf"), "--outtype", "f32"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    out = tensors_of(tmp_path / "o.gguf")
    n = "model.layers.1.self_attn.k_proj.weight"
    close(out[n], (w["a"][n] + w["b"][n]) / 2)
    r = subprocess.run([sys.executable, "-m", "ferrollm", "merge", str(cfg).replace("m.yml", "nope.yml"), "x.gguf"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 1 and "ferrollm: error" in r.stderr


PEAK_SCRIPT = """
import resource, sys
import ferrollm
from ferrollm.merge import merge
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
merge(sys.argv[1], sys.argv[2], outtype=sys.argv[3])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def test_peak_memory_is_about_one_tensor(tmp_path):
    """Two 8-layer models of 84 MB each (F32, largest tensor 2 MiB): a merge streams them, so
    the peak resident set grows by a few tensors, not by the models."""
    for i, name in enumerate("xy"):
        write_model(
            str(tmp_path / name), seed=i, tokenizer="bpe", layers=8, hidden=512, ff=1024, heads=8, kv_heads=8
        )
    cfg = tmp_path / "m.yml"
    cfg.write_text(
        models_yaml("slerp", [("x", {}), ("y", {})], "x", "parameters: {t: 0.3}\n").replace(
            "ROOT", str(tmp_path)
        )
    )
    for out, outtype in (("o.gguf", "q8_0"), ("o_hf", "bf16")):
        r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(cfg), str(tmp_path / out), outtype],
                           capture_output=True, text=True, env=dict(os.environ), check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        grew = int(r.stdout.split()[-1])
        model_bytes = 2 * 84 * 2**20
        assert grew < 40 * 2**20, (
            f"peak RSS grew by {grew / 2**20:.1f} MiB merging {model_bytes / 2**20:.0f} MiB"
        )
