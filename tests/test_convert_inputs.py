"""A converted file always loads: a checkpoint whose config disagrees with its tensors, whose
tensors are integers, or whose tokenizer the engine refuses is an error naming the problem,
and no file appears (``export.check_loads`` runs on the finished file before it is renamed
into place; integer tensors are refused before anything is written)."""

from __future__ import annotations

import json
import os

import ferrollm
import numpy as np
import pytest
from ferrollm.checkpoints import safetensors_io
from support.hf_models import write_model


def edit_json(path, change) -> None:
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: c.update(hidden_size=96), "would not load"),
        (lambda c: c.update(num_hidden_layers=3), "would not load"),
    ],
    ids=["hidden_size", "layers"],
)
def test_a_config_that_disagrees_with_the_tensors(tmp_path, change, says):
    ck = tmp_path / "ck"
    write_model(str(ck), seed=1, tokenizer="bpe")
    edit_json(ck / "config.json", change)
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match=says):
        ferrollm.convert(str(ck), str(out), "f32")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_a_wrongly_shaped_tensor(tmp_path):
    ck = tmp_path / "ck"
    w = write_model(str(ck), seed=2, tokenizer="bpe")
    w["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
    safetensors_io.save(str(ck / "model.safetensors"), w, "F32", {"format": "pt"})
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError):
        ferrollm.convert(str(ck), str(out), "f32")
    assert not out.exists()


def test_integer_tensors_are_refused_before_writing(tmp_path):
    ck = tmp_path / "ck"
    w = write_model(str(ck), seed=3, tokenizer="bpe")
    tensors = {n: v for n, v in w.items()}
    tensors["model.norm.weight"] = (tensors["model.norm.weight"] * 1000).astype(np.int32)
    path = str(ck / "model.safetensors")
    safetensors_io.save(
        path, {n: v for n, v in tensors.items() if v.dtype != np.int32}, "F32", {"format": "pt"}
    )
    ints = {n: v for n, v in tensors.items() if v.dtype == np.int32}
    safetensors_io.save(str(ck / "model-ints.safetensors"), ints, "I32", {"format": "pt"})
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="model.norm.weight is I32"):
        ferrollm.convert(str(ck), str(out), "f32")
    assert not out.exists()


def test_a_bpe_tokenizer_without_merges(tmp_path):
    ck = tmp_path / "ck"
    write_model(str(ck), seed=4, tokenizer="bpe")
    edit_json(ck / "tokenizer.json", lambda t: t["model"].update(merges=[]))
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="would not load"):
        ferrollm.convert(str(ck), str(out), "f32")
    assert not out.exists()


@pytest.mark.parametrize("key", ["hidden_size", "num_attention_heads"])
def test_a_config_without_a_key_names_file_and_key(tmp_path, key):
    ck = tmp_path / "ck"
    write_model(str(ck), seed=5, tokenizer="bpe")
    edit_json(ck / "config.json", lambda c: c.pop(key))
    with pytest.raises(ValueError, match=rf"config.json: {key} must be a positive whole number \(missing\)"):
        ferrollm.convert(str(ck), str(tmp_path / "out.gguf"), "f32")


def test_malformed_json_names_its_file(tmp_path):
    ck = tmp_path / "ck"
    write_model(str(ck), seed=6, tokenizer="bpe")
    (ck / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": }')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON \(Expecting value"):
        ferrollm.convert(str(ck), str(tmp_path / "out.gguf"), "f32")


@pytest.mark.parametrize("value, says", [('"heavy"', "is not a number"), ("abc", "is not a number"),
                                         (".nan", "is not a number")])  # fmt: skip
def test_merge_parameters_that_are_not_numbers(tmp_path, value, says):
    from ferrollm.merge import MergeError, merge

    for name in "ab":
        write_model(str(tmp_path / name), seed=7, tokenizer="bpe")
    a, b = tmp_path / "a", tmp_path / "b"
    lines = ["merge_method: slerp", f"base_model: {a}", "dtype: float32", "parameters:", f"  t: {value}",
             "slices:", "  - sources:", f"      - model: {a}", "        layer_range: [0, 2]",
             f"      - model: {b}", "        layer_range: [0, 2]"]  # fmt: skip
    (tmp_path / "m.yml").write_text("\n".join(lines) + "\n")
    with pytest.raises(MergeError, match=says):
        merge(str(tmp_path / "m.yml"), str(tmp_path / "out.gguf"))
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_an_exl2_scale_that_is_not_finite(tmp_path, bad):
    from ferrollm.checkpoints.safetensors_io import SafetensorsFile
    from support.exl2_models import save_safetensors, write_exl2_model

    ck = tmp_path / "exl2"
    write_exl2_model(str(ck), seed=9)
    shard = next(p for p in sorted(ck.iterdir()) if p.suffix == ".safetensors"
                 and any(n.endswith("q_scale_max") for n in SafetensorsFile(str(p)).names()))  # fmt: skip
    f = SafetensorsFile(str(shard))
    tensors = {n: f.raw(n) for n in f.names()}
    f.close()
    name = next(n for n in tensors if n.endswith("q_scale_max"))
    tensors[name] = np.full_like(tensors[name], bad, dtype=np.float16)
    save_safetensors(str(shard), tensors)
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="q_scale_max: a group's scale is (inf|nan)"):
        ferrollm.convert(str(ck), str(out), "f16")
    assert not out.exists()
