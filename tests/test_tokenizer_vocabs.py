"""llama.cpp's tokenizer tests on ferrollm: every ``models/ggml-vocab-*.gguf`` that ships with
``.inp`` / ``.out`` files in the llama-cpp-python sdist (the expected ids come from each model's
Hugging Face tokenizer), read as llama.cpp's tests/test-tokenizer-0.cpp reads them and tokenized
as it calls the tokenizer: no BOS/EOS (``add_special = false``), control tokens as plain text
(``parse_special = false``).

Skipped when the sdist is absent (FERROLLM_LLAMA_CPP_DIR, default below). The table of cases
passed per file:  python tests/test_tokenizer_vocabs.py
The ``peer`` tests compare with llama-cpp-python on the same files:  python -m pytest -m peer
"""

from __future__ import annotations

import os
import re
import warnings
from functools import cache
from pathlib import Path

import pytest
from ferrollm import gguf
from ferrollm.text.pretokenize import PRE_TOKENIZERS, pre_tokenizer
from ferrollm.text.tokenizer import CONTROL, USER_DEFINED, Tokenizer

LLAMA_CPP_DIR = Path(
    os.environ.get("FERROLLM_LLAMA_CPP_DIR", "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp")
)
MODELS = LLAMA_CPP_DIR / "models"
SEPARATOR = "\n__ggml_vocab_test__\n"
VOCABS = sorted(p.name for p in MODELS.glob("ggml-vocab-*.gguf") if Path(f"{p}.inp").exists())
needs_sdist = pytest.mark.skipif(not VOCABS, reason=f"no llama.cpp vocab tests under {MODELS}")
# Models whose detokenizer gives the text back byte for byte (WordPiece lower-cases and drops
# accents and spaces).
LOSSLESS = ("llama", "gpt2", "gemma4")


def read_cases(vocab: Path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) in file order, split as test-tokenizer-0.cpp splits them."""
    raw = Path(f"{vocab}.inp").read_bytes().decode("utf-8")
    texts = raw.split(SEPARATOR)
    if texts and texts[-1] == "":  # the file ends with a separator: no case after it
        texts.pop()
    lines = Path(f"{vocab}.out").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(texts) != len(lines):
        raise ValueError(f"{vocab.name}: {len(texts)} inputs but {len(lines)} expected outputs")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@cache
def load(name: str) -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every test vocabulary names a known pre-tokenizer
        return Tokenizer(gguf.open(MODELS / name).metadata)


def score(name: str) -> tuple[int, int, list[str]]:
    """(cases passed, cases, a description of each failure)."""
    tok, cases = load(name), read_cases(MODELS / name)
    failures = []
    for text, expected in cases:
        got = tok.encode(text, add_bos=False)
        if got != expected:
            failures.append(f"{text[:60]!r}: expected {expected[:12]}, got {got[:12]}")
    return len(cases) - len(failures), len(cases), failures


@needs_sdist
@pytest.mark.parametrize("name", VOCABS)
def test_vocab_ids_match_llama_cpp_tests(name):
    passed, total, failures = score(name)
    assert not failures, f"{name}: {passed}/{total} cases pass; failing:\n" + "\n".join(failures)


@needs_sdist
@pytest.mark.parametrize("name", VOCABS)
def test_detokenize_round_trips(name):
    """As llama.cpp's token_to_piece: the text back, after the space SentencePiece puts in
    front (no BOS here, so nothing removes it)."""
    tok = load(name)
    if tok.model not in LOSSLESS:
        pytest.skip(f"{tok.model} tokenization is lossy")
    prefix = " " if tok.model == "llama" and tok.add_space_prefix else ""
    for text, expected in read_cases(MODELS / name):
        want = (prefix + text if text else "").encode("utf-8")
        assert tok.detokenize(expected) == want, text


@needs_sdist
def test_every_pre_tokenizer_llama_cpp_names_is_known():
    source = (LLAMA_CPP_DIR / "src" / "llama-vocab.cpp").read_text(encoding="utf-8")
    names = set(re.findall(r'tokenizer_pre == "([^"]+)"', source))
    assert len(names) > 50
    assert sorted(names - set(PRE_TOKENIZERS)) == []


def test_every_pre_tokenizer_compiles():
    for name, pre in PRE_TOKENIZERS.items():
        splitter = pre.hf_pre_tokenizer()
        assert splitter.pre_tokenize_str("Hello, y'all! 1234 中文\n\n  ok"), name


def test_unknown_or_missing_pre_tokenizer_warns():
    with pytest.warns(UserWarning, match=r"'no-such-pre'; using 'default' instead"):
        assert pre_tokenizer("no-such-pre") is PRE_TOKENIZERS["default"]
    with pytest.warns(UserWarning, match="no tokenizer.ggml.pre; using the 'default'"):
        assert pre_tokenizer(None) is PRE_TOKENIZERS["default"]


@pytest.mark.peer
@needs_sdist
@pytest.mark.parametrize("name", VOCABS)
def test_same_ids_and_text_as_llama_cpp_python(name):
    """llama-cpp-python on the same files: its ids for every case and its detokenizer on the
    expected ids (for WordPiece too, whose text is not the input)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    try:
        peer = llama_cpp.Llama(model_path=str(MODELS / name), vocab_only=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - the peer's loader raises plain ValueError
        pytest.skip(f"llama-cpp-python does not load {name}: {e}")
    tok = load(name)
    for text, expected in read_cases(MODELS / name):
        peer_ids = peer.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert tok.encode(text, add_bos=False) == peer_ids, text
        assert tok.detokenize(expected) == peer.detokenize(expected), text
    peer.close()


@pytest.mark.peer
@needs_sdist
@pytest.mark.parametrize("name", VOCABS)
def test_special_tokens_as_llama_cpp_python(name):
    """Control and user-defined tokens written in the text, with ``special`` (a chat prompt):
    the same ids, BOS as the file asks (llama-cpp-python adds it only then), and the same text
    back with the special tokens shown."""
    llama_cpp = pytest.importorskip("llama_cpp")
    peer = llama_cpp.Llama(model_path=str(MODELS / name), vocab_only=True, verbose=False)
    tok = load(name)
    specials = [t for t, ty in zip(tok.tokens, tok.token_types) if ty in (CONTROL, USER_DEFINED) and t][:6]
    texts = [f"x{s} \n hello{s}\n\nworld {s}" for s in specials] + ["".join(specials) + " hi"]
    for text in texts:
        for add_bos in (False, True):
            ids = tok.encode(text, add_bos=add_bos and tok.add_bos, special=True)
            assert ids == peer.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True), text
            assert tok.detokenize(ids, special=True) == peer.detokenize(ids, special=True), text
    peer.close()


if __name__ == "__main__":
    print(f"{'file':<32} passed / cases")
    for vocab in VOCABS:
        passed, total, _ = score(vocab)
        print(f"{vocab:<32} {passed:>6} / {total}")
