"""The GGUF tokenizer against SentencePiece itself, on Mistral/Mixtral's real 32000-piece
tokenizer (shipped in the mistral-common wheel), written into GGUF metadata the way llama.cpp's
converter does; round trips and streaming for both tokenizer kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
from ferrollm.text.tokenizer import (
    BYTE,
    CONTROL,
    NORMAL,
    Tokenizer,
    TokenizerError,
    _byte_level_alphabet,
    sentencepiece_metadata,
)
from hypothesis import given, settings
from hypothesis import strategies as st

sentencepiece = pytest.importorskip("sentencepiece")
mistral_common = pytest.importorskip("mistral_common")

MISTRAL_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


@pytest.fixture(scope="module")
def mistral():
    return Tokenizer(sentencepiece_metadata(str(MISTRAL_MODEL)))


@pytest.fixture(scope="module")
def spm():
    return sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_MODEL))


FRAGMENTS = ["  ", " ", "\n", "\n\n", "\t", "🦙", "👩‍💻", "é", "ß", "中文", "日本語", "1234", "3.14159", "def f(x):",
             "    return x", "{}", "<s>", "</s>", "[INST]", "\u200b", "ﬁ", "Ω", "a", "The", "über", "--", "!!!"]  # fmt: skip
texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=12).map("".join),
)


def test_vocabulary_is_the_real_one(mistral):
    assert mistral.n_vocab == 32000
    assert (mistral.bos_id, mistral.eos_id) == (1, 2)
    assert mistral.token_types[3] == BYTE and mistral.token_types[1] == CONTROL


@pytest.mark.parametrize(
    "text",
    ["Hello world", " leading space", "trailing  ", "a  b   c", "\n\nnew\nlines\n", "emoji 🤖🦙 ok", "数字 1234567",
     "def f(x):\n    return x**2", "", " ", "ü", "<s> [INST] not special", "\t tab", "a\u200bb"],
)  # fmt: skip
def test_known_strings_match_sentencepiece(mistral, spm, text):
    assert mistral.encode(text, add_bos=False) == spm.encode(text)


@settings(max_examples=400, deadline=None)
@given(texts)
def test_ids_match_sentencepiece(mistral, spm, text):
    assert mistral.encode(text, add_bos=False) == spm.encode(text)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_detokenize_round_trips(mistral, text):
    tokens = mistral.encode(text)  # with BOS, whose leading space the detokenizer removes
    assert tokens[0] == mistral.bos_id
    assert mistral.detokenize(tokens) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(texts)
def test_streaming_never_emits_broken_utf8(mistral, text):
    tokens = mistral.encode(text, add_bos=False)
    stream = mistral.stream_decoder()
    pieces = [stream.push(t) for t in tokens] + [stream.flush()]
    assert "".join(pieces) == mistral.detokenize(tokens).decode("utf-8")
    assert all("\ufffd" not in p for p in pieces)  # a split character is held, not replaced


def test_special_tokens_only_when_asked(mistral, spm):
    assert mistral.encode("<s>hi</s>", add_bos=False) == spm.encode("<s>hi</s>")
    assert mistral.encode("<s>hi</s>", add_bos=False, special=True) == [1, *spm.encode("hi"), 2]
    assert mistral.detokenize([1, 2]) == b"" and mistral.detokenize([1, 2], special=True) == b"<s></s>"


def _bpe_metadata() -> dict:
    """A byte-level BPE vocabulary: every byte, a few merges and one control token."""
    alphabet = list(_byte_level_alphabet().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ in"]
    tokens = alphabet + ["Ġt", "he", "Ġthe", "in", "Ġin", "<|endoftext|>"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [NORMAL] * (len(tokens) - 1) + [CONTROL],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 1,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.ggml.add_bos_token": False,
    }


def test_byte_level_bpe_merges_and_specials():
    tok = Tokenizer(_bpe_metadata())
    ids = tok.encode("the the in")
    assert [tok.tokens[i] for i in ids] == ["t", "he", "Ġthe", "Ġin"]
    assert tok.encode("x<|endoftext|>", special=True)[-1] == tok.eos_id
    assert tok.encode("<|endoftext|>") != [tok.eos_id]


@settings(max_examples=200, deadline=None)
@given(texts)
def test_byte_level_bpe_round_trips(text):
    tok = Tokenizer(_bpe_metadata())
    assert tok.detokenize(tok.encode(text)) == text.encode("utf-8")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]}, "supported"),
        ({"tokenizer.ggml.model": "llama"}, "no tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.scores": []}, "scores"),
        ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.bos_token_id": 5},
         "outside the vocabulary"),
    ],
)  # fmt: skip
def test_bad_metadata(metadata, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer(metadata)
