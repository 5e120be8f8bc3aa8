"""EXL2 (ExLlamaV2) on the CPU: layers packed by ``exl2_models`` bit for bit as ExLlamaV2 packs
them dequantize to the weights that define them; tiny Llama and Mixtral EXL2 directories
convert to GGUFs identical to those of their dequantized float models, and run; bad
directories are refused naming the tensor, leaving no output."""

from __future__ import annotations

import json
import os

import ferrollm
import numpy as np
import pytest
from ferrollm.checkpoints.exl2 import EXL2Checkpoint, EXL2Error, dequantize
from ferrollm.checkpoints.exl2.linear import unpack_columns
from support.exl2_models import pack_layer, save_safetensors, write_exl2_model


def _weights(rng, out_f, in_f):
    return (rng.standard_normal((out_f, in_f)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_each_width_alone(bits):
    rng = np.random.default_rng(bits)
    w = _weights(rng, 64, 256)
    t, expected = pack_layer(w, rng, [bits], [1.0], 32)
    got = dequantize("l", t, 64)
    np.testing.assert_array_equal(got, expected)
    # a sane quantization: the error halves with each bit (down to the 4-bit scales' granularity)
    assert np.sqrt(np.mean((got - w) ** 2) / np.mean(w**2)) < max(2.5 * 2.0**-bits, 0.02)


@pytest.mark.parametrize("out_f, in_f, bits, props, group_size", [
    (96, 512, [8, 6, 5, 4, 3, 2], [0.125, 0.125, 0.25, 0.25, 0.125, 0.125], 32),  # every width in one layer
    (64, 1024, [8, 4, 3], [0.05, 0.1, 0.85], {8: 32, 4: 128, 3: 128}),  # an ExLlamaV2 preset
    (100, 200, [5, 3], [0.5, 0.5], 64),  # padded columns; a last group of 8 rows in 1 word
    (40, 168, [6, 2], [0.5, 0.5], 64),  # 6-bit groups straddling words; partial last group
])  # fmt: skip
def test_group_mixes_with_activation_order(out_f, in_f, bits, props, group_size):
    rng = np.random.default_rng(in_f)
    t, expected = pack_layer(_weights(rng, out_f, in_f), rng, bits, props, group_size)
    assert sorted(set(t["q_groups"][0::2].tolist()), reverse=True) == bits
    got = dequantize("l", t, out_f)
    assert got.shape == (out_f, in_f) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(got.astype(np.float16).astype(np.float32), got)  # float16 values


def test_unpack_is_the_bitstream_of_each_column():
    rng = np.random.default_rng(7)
    for bits in (2, 3, 4, 5, 6, 8):
        rows = 96
        q = rng.integers(0, 2**bits, (rows, 5))
        stream = [sum(int(q[r, c]) << (r * bits) for r in range(rows)) for c in range(5)]
        words = np.array([[(s >> (32 * k)) & 0xFFFFFFFF for s in stream] for k in range(rows * bits // 32)],
                         np.uint32)  # fmt: skip
        np.testing.assert_array_equal(unpack_columns(words, bits, rows), q)


def test_subnormal_scales_round_as_exllamav2():
    """q_scale_max / 256 is often a float16 subnormal: ExLlamaV2 keeps that rounding."""
    rng = np.random.default_rng(3)
    w = _weights(rng, 32, 64) * 0.01  # tiny weights: tiny scales
    t, expected = pack_layer(w, rng, [4], [1.0], 32)
    assert (t["q_scale_max"].astype(np.float32) / 256 < 2**-14).all()
    np.testing.assert_array_equal(dequantize("l", t, 32), expected)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("exl2")
    out = {}
    for arch, shape in (("llama", {}), ("mixtral", {"vocab": 300})):
        exl2, flt = str(root / f"{arch}-exl2"), str(root / f"{arch}-float")
        out[arch] = (exl2, flt, write_exl2_model(exl2, flt, arch=arch, seed=5, **shape))
    return out


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_checkpoint_reads_the_dequantized_model(models, arch):
    exl2, _, weights = models[arch]
    ck = EXL2Checkpoint(exl2)
    assert sorted(ck.names()) == sorted(weights)
    for name, v in weights.items():
        assert ck.shape(name) == v.shape
        np.testing.assert_array_equal(ck.get(name), v)
    ck.close()


@pytest.mark.parametrize("arch, outtype", [("llama", "auto"), ("llama", "q8_0"), ("mixtral", "auto"),
                                           ("mixtral", "Q4_K_M")])  # fmt: skip
def test_convert_equals_the_float_model(models, arch, outtype, tmp_path):
    exl2, flt, _ = models[arch]
    types = ferrollm.convert(exl2, str(tmp_path / "e.gguf"), outtype)
    assert types == ferrollm.convert(flt, str(tmp_path / "f.gguf"), outtype)
    a, b = ferrollm.gguf.open(tmp_path / "e.gguf"), ferrollm.gguf.open(tmp_path / "f.gguf")
    assert sorted((t.name, t.shape, t.type) for t in a.tensors) == sorted(
        (t.name, t.shape, t.type) for t in b.tensors
    )
    for t in a.tensors:
        np.testing.assert_array_equal(a.tensor_bytes(t.name), b.tensor_bytes(t.name), err_msg=t.name)
    if outtype == "auto":
        assert {t.type for t in a.tensors} == {"F16", "F32"}
    md_a = {k: v for k, v in a.metadata.items() if k != "general.name"}
    assert md_a == {k: v for k, v in b.metadata.items() if k != "general.name"}
    la = ferrollm.Llama(str(tmp_path / "e.gguf"), n_ctx=32, logits_all=True, verbose=False)
    lb = ferrollm.Llama(str(tmp_path / "f.gguf"), n_ctx=32, logits_all=True, verbose=False)
    la.eval([1, 5, 9, 200])
    lb.eval([1, 5, 9, 200])
    assert la.scores.shape[0] == 4 and np.all(np.isfinite(la.scores)) and np.ptp(la.scores[3]) > 0
    np.testing.assert_array_equal(la.scores, lb.scores)


def test_head_kept_at_16_bits(tmp_path):
    weights = write_exl2_model(str(tmp_path / "m"), arch="mistral", seed=8, shards=1, head=False)
    ck = EXL2Checkpoint(tmp_path / "m")
    assert "lm_head.weight" in ck and ck.stored_dtype("lm_head.weight") == "F16"
    np.testing.assert_array_equal(ck.get("lm_head.weight"), weights["lm_head.weight"])


def test_cli_convert(models, tmp_path):
    from ferrollm.cli import main

    exl2, _, weights = models["llama"]
    assert main(["convert", exl2, str(tmp_path / "c.gguf"), "--outtype", "f32", "-q"]) == 0
    f = ferrollm.gguf.open(tmp_path / "c.gguf")
    np.testing.assert_array_equal(f.dequantize("blk.1.ffn_down.weight").reshape(64, 128),
                                  weights["model.layers.1.mlp.down_proj.weight"])  # fmt: skip


# Bad input: the error names the tensor, and no output file is left.


def _tamper(src: str, dst: str, fn) -> None:
    """Copy EXL2 directory ``src`` to ``dst`` with its tensors changed by ``fn(dict)``."""
    from ferrollm.checkpoints.safetensors_io import SafetensorsFile

    os.makedirs(dst)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if not name.endswith(".safetensors"):
            with open(path, "rb") as a, open(os.path.join(dst, name), "wb") as b:
                b.write(a.read())
            continue
        f = SafetensorsFile(path)
        tensors = {n: f.raw(n) for n in f.names()}
        f.close()
        fn(tensors)
        save_safetensors(os.path.join(dst, name), tensors)


L = "model.layers.1.self_attn.k_proj"


def _drop(name):
    return lambda t: t.pop(name, None)


def _set(name, fn):
    def apply(t):
        if name in t:
            t[name] = fn(t[name])

    return apply


@pytest.mark.parametrize("change, message", [
    (_drop(f"{L}.q_scale"), f"missing tensor {L}.q_scale"),
    (_drop(f"{L}.q_invperm"), f"missing tensor {L}.q_invperm"),
    (_set(f"{L}.q_invperm", lambda p: np.where(p == 0, 1, p).astype(p.dtype)), f"{L}.q_invperm: not a permutation"),
    (_set(f"{L}.q_invperm", lambda p: p[:-1]), f"{L}.q_invperm has 63 entries"),
    (_set(f"{L}.q_weight", lambda w: w[:-1]), f"{L}.q_groups: inconsistent with q_weight"),
    (_set(f"{L}.q_groups", lambda g: np.array([g[0], 0, g[0], 1], g.dtype)), f"{L}.q_groups: inconsistent"),
    (_set(f"{L}.q_groups", lambda g: np.array([7, *g[1:]], g.dtype)), f"{L}.q_groups: bit width 7"),
    (_set(f"{L}.q_scale", lambda s: s[:, :-1]), f"{L}.q_scale: int32 of shape"),
    (_set(f"{L}.q_scale_max", lambda s: s[:1]), f"{L}.q_scale_max: 1 values for 2 groups"),
    (_drop("model.layers.0.mlp.up_proj.q_weight"), "missing tensor model.layers.0.mlp.up_proj.q_weight"),
    (lambda t: t.update({f"{L}.bias": np.zeros(32, np.float16)}), f"{L}.bias: linear layers with a bias"),
    (lambda t: t.update({f"{L}.q_perm": t[f"{L}.q_invperm"]}) if f"{L}.q_invperm" in t else None,
     f"{L}.q_perm: not the inverse of {L}.q_invperm"),
])  # fmt: skip
def test_bad_directory_is_refused_naming_the_tensor(models, tmp_path, change, message):
    exl2, _, _ = models["llama"]
    bad = str(tmp_path / "bad")
    _tamper(exl2, bad, change)
    out = tmp_path / "out.gguf"
    with pytest.raises(EXL2Error, match=message.replace(".", r"\.").replace("(", r"\(")):
        ferrollm.convert(bad, str(out), "q8_0")
    assert os.listdir(tmp_path) == ["bad"]


def test_older_files_q_perm_and_a_config_without_its_mark(models, tmp_path):
    """Some files also store q_perm (argsort of q_invperm); a config that lost its
    quantization_config is still read as EXL2 from its tensors."""
    exl2, _, weights = models["llama"]
    d = str(tmp_path / "old")

    def add_perm(t):
        for n in [n for n in t if n.endswith(".q_invperm")]:
            t[n.replace("q_invperm", "q_perm")] = np.argsort(t[n]).astype(np.int16)

    _tamper(exl2, d, add_perm)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    del cfg["quantization_config"]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    types = ferrollm.convert(d, str(tmp_path / "o.gguf"), "f32")
    assert len(types) == len(weights)
    f = ferrollm.gguf.open(tmp_path / "o.gguf")
    np.testing.assert_array_equal(f.dequantize("blk.0.ffn_up.weight").reshape(128, 64),
                                  weights["model.layers.0.mlp.up_proj.weight"])  # fmt: skip


def test_other_quantization_methods_are_refused(models, tmp_path):
    exl2, _, _ = models["llama"]
    bad = str(tmp_path / "gptq")
    _tamper(exl2, bad, lambda t: None)
    with open(os.path.join(bad, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="quantization method 'gptq' is not supported"):
        ferrollm.convert(bad, str(tmp_path / "o.gguf"))
    assert not (tmp_path / "o.gguf").exists()


# --target-bpw: the allocation (ferrollm.quant.allocate) measured against the lossless conversion

FAST = {"types": ("Q2_K", "IQ3_S", "Q4_K", "Q6_K", "Q8_0", "IQ4_NL", "Q4_0"), "anchors": 2, "n_tokens": 256}


def _calibration(n_words: int = 1500) -> str:
    rng = np.random.default_rng(0)
    return " ".join(
        rng.choice(["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", ".", "\n"], n_words)
    )


def test_target_bpw_allocates_by_measurement(models, tmp_path):
    exl2, _, _ = models["llama"]
    out, m = tmp_path / "t.gguf", tmp_path / "m.json"
    types = ferrollm.convert(
        exl2, str(out), target_bpw=5.0, calibration=_calibration(), measurement=str(m), **FAST
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.gguf"]  # the lossless file is gone
    f = ferrollm.gguf.open(out)
    matrices = [t for t in f.tensors if len(t.shape) > 1]
    weights = sum(int(np.prod(t.shape)) for t in matrices)
    assert 8 * sum(f.tensor_bytes(t.name).nbytes for t in matrices) / weights <= 5.0
    assert {types[t.name] for t in matrices} <= set(FAST["types"])
    llm = ferrollm.Llama(str(out), n_ctx=32, verbose=False)
    llm.eval([1, 5, 9])
    assert np.all(np.isfinite(llm.scores[-1]))
    # the measurement is reused: no calibration needed the second time
    again = ferrollm.convert(exl2, str(tmp_path / "u.gguf"), target_bpw=5.0, measurement=str(m), **FAST)
    assert again == types


def test_target_bpw_out_of_reach_writes_nothing(models, tmp_path):
    exl2, _, _ = models["llama"]
    with pytest.raises(ValueError, match="bpw"):
        ferrollm.convert(exl2, str(tmp_path / "t.gguf"), target_bpw=0.5, calibration=_calibration(), **FAST)
    with pytest.raises(ValueError, match="not both"):
        ferrollm.convert(exl2, str(tmp_path / "t.gguf"), "q8_0", target_bpw=4.0)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_outtype_with_target(models, tmp_path, capsys):
    from ferrollm.cli import main

    exl2, _, _ = models["llama"]
    assert main(["convert", exl2, str(tmp_path / "c.gguf"), "--outtype", "q8_0", "--target-bpw", "4"]) != 0
    assert "--target-bpw, not both" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.peer
@pytest.mark.parametrize("arch, outtype", [("llama", "auto"), ("llama", "Q4_K_M"), ("mixtral", "q8_0")])
def test_llama_cpp_runs_the_converted_file(models, arch, outtype, tmp_path):
    """llama.cpp (llama-cpp-python) loads the GGUF of an EXL2 model and computes ferrollm's logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    exl2, _, _ = models[arch]
    path = str(tmp_path / "e.gguf")
    ferrollm.convert(exl2, path, outtype)
    tokens = [1, *np.random.default_rng(1).integers(3, 300, 40).tolist()]
    ours = ferrollm.Llama(path, n_ctx=64, logits_all=True, verbose=False)
    ours.eval(tokens)
    peer = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False)
    peer.eval(tokens)
    a, b = np.array(ours.scores[: len(tokens)], np.float64), np.array(peer.scores[: len(tokens)], np.float64)
    peer.close()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
