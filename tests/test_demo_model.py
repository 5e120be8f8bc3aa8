"""The embedded demo model: shipped in the package, a real GGUF with Mistral's tokenizer, and
the same network that was trained (tools/train_demo_model.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from ferrollm import Llama, demo_model_path, gguf
from ferrollm.cli import main
from ferrollm.quant.writer import quantize_file
from support.model_helpers import cosines

TOOLS = Path(__file__).parent.parent / "tools" / "demo_model"


def test_shipped_file_is_small_and_mixtral_shaped():
    path = demo_model_path()
    assert os.path.getsize(path) < 25 * 2**20
    with gguf.open(path) as f:
        md = f.metadata
        assert md["general.architecture"] == "llama"
        assert md["llama.expert_count"] == 4 and md["llama.expert_used_count"] == 2
        assert md["llama.attention.head_count_kv"] < md["llama.attention.head_count"]  # GQA
        assert md["tokenizer.ggml.model"] == "llama" and len(md["tokenizer.ggml.tokens"]) == 32000
        names = {t.name for t in f.tensors}
        assert "blk.0.ffn_gate_exps.weight" in names and "output.weight" not in names  # tied head


def test_tokenizer_is_mistrals():
    mistral_common = pytest.importorskip("mistral_common")
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1")
    )
    llm = Llama(demo_model_path(), verbose=False)
    text = (Path(__file__).parent / "data" / "heldout.txt").read_text(encoding="utf-8")[:3000]
    assert llm.tokenize(text.encode(), add_bos=False) == sp.encode(text)


def test_engine_reproduces_the_training_network():
    """Logits of the training code's float32 network (saved by the trainer) against the engine
    on the shipped Q8_0 file: only the 8-bit rounding separates them."""
    check = np.load(TOOLS / "check.npz")
    llm = Llama(demo_model_path(), n_ctx=128, logits_all=True, verbose=False)
    llm.eval(check["tokens"].tolist())
    ours = np.asarray(llm.scores[: len(check["tokens"])])[-len(check["logits"]) :]
    assert cosines(ours, check["logits"]).min() > 0.9995
    assert (ours.argmax(1) == check["logits"].argmax(1)).all()


def test_training_card_records_the_run():
    card = json.loads((TOOLS / "card.json").read_text())
    for key in ("seed", "steps", "tokens_seen", "final_train_loss", "heldout_loss", "shape", "corpus"):
        assert key in card
    assert card["corpus"]["train"]["tokens"] > 1_000_000


def test_greedy_completion_writes_python():
    llm = Llama(demo_model_path(), verbose=False)
    text = llm("def fibonacci(n):", max_tokens=48, temperature=0)["choices"][0]["text"]
    assert text.startswith("\n    ") and "return" in text, text  # an indented body that returns
    again = llm("def fibonacci(n):", max_tokens=48, temperature=0)["choices"][0]["text"]
    assert again == text


def test_cli_runs_the_embedded_model_without_m(capsys):
    assert main(["run", "-p", "class Stack:", "-n", "16", "--temp", "0", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("class Stack:") and len(out.out) > len("class Stack:") + 10
    assert "demo-moe-q8_0.gguf" in out.err and "generated 16 tokens" in out.err


def test_cli_perplexity_and_kl_divergence(tmp_path, capsys):
    text = Path(__file__).parent / "data" / "heldout.txt"
    base = tmp_path / "base.logp"
    assert (
        main(["perplexity", "-f", str(text), "-c", "128", "--chunks", "2", "--kl-divergence-base", str(base)])
        == 0
    )
    assert "Final estimate: PPL = " in capsys.readouterr().out
    quantize_file(demo_model_path(), tmp_path / "q4.gguf", "Q4_0")
    args = ["perplexity", "-m", str(tmp_path / "q4.gguf"), "-f", str(text), "--kl-divergence-base", str(base)]
    assert main([*args, "--kl-divergence"]) == 0
    out = capsys.readouterr().out
    assert "Mean KLD" in out and "Same top p" in out and "99.0% KLD" in out
    assert main([*args[:-2], "--kl-divergence"]) == 1
    assert "needs --kl-divergence-base" in capsys.readouterr().err
