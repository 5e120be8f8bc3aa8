"""Allocation by measurement (ferrollm.quant.allocate, ``ferrollm quantize --target-bpw``) on a small
synthetic model: sizes are exact and within the target, a larger target never measures worse,
measurements are reused, and bad targets fail with clear messages before anything is written."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from ferrollm import _core, collect_imatrix, gguf, quantize
from ferrollm.cli import main
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from ferrollm.quant.allocate import (
    Target,
    budget,
    layout,
    parse_size,
    plan_allocation,
    quantize_to_target,
    solve,
)
from ferrollm.quant.allocate.layout import Layout, Slot
from ferrollm.quant.allocate.measure import calibrate
from ferrollm.quant.allocate.probe import KLDProbe
from ferrollm.quant.writer import output_metadata

# Rows of 256 (K and IQ types) and of 384 (ffn_down: only the 32-element types fit).
SPEC = {
    "n_vocab": 320,
    "n_embd": 256,
    "n_layer": 2,
    "n_head": 4,
    "n_head_kv": 2,
    "n_ff": 384,
    "n_ctx_train": 256,
    "seed": 3,
}
TYPES = ("IQ2_XXS", "Q2_K", "IQ3_S", "Q4_K", "Q6_K", "Q8_0", "IQ4_NL", "Q4_0", "Q5_0")
FAST = {"types": TYPES, "anchors": 2, "n_tokens": 256}  # 1 chunk of the trained context


def _text(n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = [
        "def",
        "return",
        "self",
        "import",
        "class",
        "for",
        "in",
        "if",
        "else",
        "(x)",
        "0",
        "1",
        ":",
        "\n",
    ]
    return " ".join(rng.choice(words, n_words))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("alloc")
    src = d / "f32.gguf"
    write_model(src, ModelSpec(**SPEC))
    calib = _text(3000, 1)
    im, _ = collect_imatrix(src, calib, n_ctx=64)
    im.save(d / "imatrix.gguf")
    return {"dir": d, "src": str(src), "imatrix": str(d / "imatrix.gguf"), "calibration": calib}


@pytest.fixture(scope="module")
def measured(model):
    path = model["dir"] / "m.json"
    r = plan_allocation(model["src"], Target(bpw=4.0), model["imatrix"], model["calibration"], path, **FAST)
    assert r.measured
    return r, path


def test_every_matrix_is_allocated_with_candidates_that_fit_its_rows(measured):
    r, _ = measured
    slots = {s.name: s for s in r.layout.slots}
    assert "blk.0.attn_norm.weight" not in slots and "token_embd.weight" in slots
    assert slots["blk.0.attn_q.weight"].options == ("IQ2_XXS", "Q2_K", "IQ3_S", "IQ4_NL", "Q4_0", "Q4_K",
                                                    "Q5_0", "Q6_K", "Q8_0")  # fmt: skip
    assert slots["blk.0.ffn_down.weight"].options == ("IQ4_NL", "Q4_0", "Q5_0", "Q8_0")


@pytest.mark.parametrize("bpw", [2.9, 3.6, 4.7, 6.0])
def test_written_file_is_the_predicted_size_and_within_the_target(model, measured, tmp_path, bpw):
    out = tmp_path / "out.gguf"
    r = quantize_to_target(model["src"], out, Target(bpw=bpw), imatrix=model["imatrix"],
                           measurement=measured[1], **FAST)  # fmt: skip
    assert not r.measured
    assert r.allocation.bpw <= bpw
    with gguf.open(out) as f:
        mats = [t for t in f.tensors if t.name in r.allocation.types]
        assert {t.name: t.type for t in mats} == r.allocation.types
        assert 8 * sum(t.nbytes for t in mats) / sum(t.n_elements for t in mats) == pytest.approx(
            r.allocation.bpw
        )
    assert out.stat().st_size == r.allocation.file_bytes
    _core.Model(str(out), n_ctx=64).eval([1, 2, 3])  # the engine loads and runs it


def test_target_size_is_met_exactly_or_under(model, measured, tmp_path):
    lo = layout_of(model).file_bytes(layout_of(model).extreme(False))
    for size in (lo, lo + 12345, lo + 150_000):
        out = tmp_path / f"{size}.gguf"
        r = quantize_to_target(model["src"], out, Target(file_bytes=size), imatrix=model["imatrix"],
                               measurement=measured[1], **FAST)  # fmt: skip
        assert out.stat().st_size == r.allocation.file_bytes <= size


def layout_of(model):
    with gguf.open(model["src"]) as f:
        from ferrollm.quant.imatrix import Imatrix

        im = Imatrix.load(model["imatrix"])
        return layout(f, output_metadata(f, 0, im), TYPES, True)


def test_a_larger_target_never_measures_worse(model, measured):
    r, _ = measured
    lay, losses = r.layout, r.measurement.losses()
    lo, hi = lay.bpw(lay.extreme(False)), lay.bpw(lay.extreme(True))
    previous = np.inf
    for bpw in np.linspace(lo, hi, 200):
        a = solve(lay, losses, budget(Target(bpw=float(bpw)), lay, model["src"]))
        assert a.loss <= previous and a.bpw <= bpw + 1e-12
        previous = a.loss
    assert previous == pytest.approx(sum(losses[s.name][s.options[-1]] for s in lay.slots))


def test_solver_finds_the_best_choice():
    rng = np.random.default_rng(0)
    slots = tuple(
        Slot(f"t{i}", (rows, 256), ("Q2_K", "Q3_K", "Q4_K", "Q6_K")) for i, rows in enumerate((4, 8, 3, 16))
    )
    lay = Layout(slots, 1000, 32)
    losses = {s.name: dict(zip(s.options, np.sort(rng.random(4))[::-1])) for s in slots}
    for capacity in range(lay.file_bytes(lay.extreme(False)), lay.file_bytes(lay.extreme(True)) + 1, 97):
        from ferrollm.quant.allocate.budget import Budget

        got = solve(lay, losses, Budget("file", capacity))
        best = min(sum(losses[s.name][t] for s, t in zip(slots, combo))
                   for combo in itertools.product(*(s.options for s in slots))
                   if lay.file_bytes({s.name: t for s, t in zip(slots, combo)}) <= capacity)  # fmt: skip
        assert got.file_bytes <= capacity and got.loss == pytest.approx(best)


def test_measurement_is_reused_and_redone_when_its_inputs_change(model, measured, tmp_path):
    r, path = measured
    stored = json.loads(path.read_text())
    assert stored["format"] == "ferrollm-measurement/1" and stored["key"]["types"] == list(TYPES)
    entry = stored["tensors"]["blk.1.attn_q.weight"]["types"]
    assert set(entry) == set(r.layout.slots[1].options) and sum("kld" in v for v in entry.values()) == 2
    again = plan_allocation(model["src"], Target(bpw=3.5), model["imatrix"], None, path, **FAST)
    assert not again.measured and again.measurement.tensors == r.measurement.tensors
    copy = tmp_path / "m.json"
    copy.write_text(path.read_text())
    other = dict(FAST, n_tokens=128, n_ctx=128)
    redo = plan_allocation(
        model["src"], Target(bpw=3.5), model["imatrix"], model["calibration"], copy, **other
    )
    assert redo.measured and json.loads(copy.read_text())["key"]["n_tokens"] == 128
    with pytest.raises(ValueError, match="calibration text"):
        plan_allocation(model["src"], Target(bpw=3.5), model["imatrix"], None, path, **other)


def test_measured_kld_is_zero_for_the_base_and_grows_with_the_error(model, measured):
    r, _ = measured
    for name, e in r.measurement.tensors.items():
        losses = [e["types"][t]["loss"] for t in sorted(e["types"], key=lambda t: e["types"][t]["error"])]
        assert all(a <= b * (1 + 1e-9) for a, b in zip(losses, losses[1:])), name
    from ferrollm.text.tokenizer import Tokenizer

    with gguf.open(model["src"]) as f:
        tokens = Tokenizer(f.metadata).encode(model["calibration"])[:128]
    probe = KLDProbe(model["src"], [tokens[:64], tokens[64:]], 64)
    assert probe.kld(model["src"]) == pytest.approx(0.0, abs=1e-9)


def test_calibrate_passes_through_the_anchors():
    errors = {"A": 8.0, "B": 4.0, "C": 2.0, "D": 1.0, "E": 0.0}
    losses = calibrate(errors, {"A": 0.4, "C": 0.1})
    assert losses["A"] == 0.4 and losses["C"] == 0.1 and losses["E"] == 0.0
    assert losses["B"] == pytest.approx(0.2) and losses["D"] == pytest.approx(0.05)


def test_bad_targets_fail_before_writing(model, measured, tmp_path):
    out = tmp_path / "never.gguf"
    kw = dict(imatrix=model["imatrix"], measurement=measured[1], **FAST)
    with pytest.raises(ValueError, match=r"below the smallest allocation: the candidate types reach"):
        quantize_to_target(model["src"], out, Target(bpw=1.0), **kw)
    with pytest.raises(ValueError, match=r"above the largest"):
        quantize_to_target(model["src"], out, Target(bpw=9.0), **kw)
    with pytest.raises(ValueError, match=r"above the largest file"):
        quantize_to_target(model["src"], out, Target(file_bytes=10**9), **kw)
    with pytest.raises(ValueError, match=r"no allocation fits in 64\.00 MiB: .* more than the budget"):
        quantize_to_target(model["src"], out, Target(ram_bytes=64 << 20, n_ctx=256), **kw)
    assert list(tmp_path.iterdir()) == []


def test_fit_ram_leaves_room_for_the_kv_cache_and_buffers(model, measured, tmp_path):
    from ferrollm.gguf import plan

    p = plan.plan(model["src"], n_ctx=256)
    besides = p.kv_bytes + p.compute_bytes + p.overhead_bytes
    lay = measured[0].layout
    lo, hi = lay.file_bytes(lay.extreme(False)), lay.file_bytes(lay.extreme(True))
    out = tmp_path / "ram.gguf"
    ram = besides + (lo + hi) // 2
    kw = dict(imatrix=model["imatrix"], measurement=measured[1], **FAST)
    r = quantize_to_target(model["src"], out, Target(ram_bytes=ram, n_ctx=256), **kw)
    assert plan.plan(out, n_ctx=256).total_bytes <= ram and r.allocation.file_bytes > lo
    with pytest.raises(ValueError, match=r"in all, 0\.00 MiB more than the budget"):
        quantize_to_target(
            model["src"], tmp_path / "no.gguf", Target(ram_bytes=besides + lo - 1, n_ctx=256), **kw
        )
    assert not (tmp_path / "no.gguf").exists()


def test_parse_size():
    assert parse_size("16GiB") == parse_size("16G") == 16 << 30
    assert parse_size("1.5MB") == 1_500_000 and parse_size("123") == 123
    with pytest.raises(ValueError, match="not a size"):
        parse_size("16 parsecs")


def test_python_api_and_cli(model, measured, tmp_path, capsys):
    out = tmp_path / "api.gguf"
    types = quantize(
        model["src"], out, target_bpw=4.2, imatrix=model["imatrix"], measurement=measured[1], **FAST
    )
    assert out.stat().st_size and set(types) >= set(measured[0].allocation.types)
    cli_out = tmp_path / "cli.gguf"
    args = ["quantize", model["src"], str(cli_out), "--target-bpw", "4.2", "--imatrix", model["imatrix"],
            "--measurement", str(measured[1]), "--types", ",".join(TYPES), "--anchors", "2", "--measure-tokens",
            "256", "-q"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in printed and "predicted mean KLD" in printed and "reused" in printed
    assert cli_out.read_bytes() == out.read_bytes()
    assert main(["quantize", model["src"], str(tmp_path / "x.gguf"), "--target-bpw", "0.5"]) == 1
    assert main(["quantize", model["src"], str(tmp_path / "x.gguf"), "Q4_K_M", "--target-bpw", "4"]) == 1
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_proxy_error_from_a_sample_of_rows(model, measured):
    r, _ = measured
    kw = dict(FAST, error_rows=64)
    sampled = plan_allocation(
        model["src"], Target(bpw=4.0), model["imatrix"], model["calibration"], None, **kw
    )
    assert sampled.measured and sampled.measurement.key["error_rows"] == 64
    for name, e in sampled.measurement.tensors.items():
        full = r.measurement.tensors[name]["types"]
        for t, v in e["types"].items():
            assert v.get("kld") == full[t].get("kld")  # anchors are measured on the whole tensor
            assert v["error"] == pytest.approx(full[t]["error"], rel=0.35), (name, t)


def test_cli_reads_the_calibration_file(model, tmp_path, monkeypatch):
    """--calibration names a file: the measurement gets its text, not the path's characters."""
    from ferrollm.quant import allocate

    text_file = tmp_path / "calib.txt"
    text_file.write_text(model["calibration"], encoding="utf-8")
    seen = {}

    def fake(src, dst, target, calibration=None, **kw):
        seen["text"] = allocate._read_calibration(calibration)
        raise ValueError("stop here")

    monkeypatch.setattr(allocate, "quantize_to_target", fake)
    args = [
        "quantize",
        model["src"],
        str(tmp_path / "x.gguf"),
        "--target-bpw",
        "4",
        "--calibration",
        str(text_file),
    ]
    assert main(args) == 1
    assert seen["text"] == model["calibration"]
