"""The ``tokenizers`` pipelines behind :class:`ferrollm.text.tokenizer.Tokenizer`, one per
``tokenizer.ggml.model``, built from the GGUF's vocabulary alone.

* SentencePiece BPE (``llama``): merges derived from the scores (a pair merges into a piece in the
  order of that piece's score, SentencePiece's rule), byte fallback, spaces as U+2581.
* BPE (``gpt2``, ``gemma4``): the file's merges behind the pre-tokenizer of ``tokenizer.ggml.pre``
  (:mod:`ferrollm.pretokenize`); byte-level, or raw UTF-8 with ``<0xXX>`` byte fallback.
* WordPiece (``bert``): BERT's normalizer (lower case, accents stripped, Chinese characters
  apart) and pre-tokenizer; llama.cpp's GGUF marks a word's first piece with U+2581 where
  WordPiece marks the others with ``##``.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordPiece

from ferrollm.text.pretokenize import PreTokenizer

SPIECE_SPACE = "\u2581"

# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def first_ids(tokens: Sequence[str]) -> dict[str, int]:
    """Piece -> id; for a duplicated piece the first id wins, as in SentencePiece and llama.cpp."""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    return vocab


def spm_backend(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> HFTokenizer:
    vocab = first_ids(tokens)
    mergeable = {i for i, ty in enumerate(types) if ty in (NORMAL, USER_DEFINED)}
    merges = []
    for piece, pid in vocab.items():
        if pid not in mergeable or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[pid], pid, cut, left, right))
    merges.sort()
    unk = next((t for t, ty in zip(tokens, types) if ty == UNKNOWN), None)
    model = BPE(
        vocab=vocab,
        merges=[(m[3], m[4]) for m in merges],
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=any(ty == BYTE for ty in types),
    )
    tok = HFTokenizer(model)
    tok.normalizer = normalizers.Replace(" ", SPIECE_SPACE)
    return tok


def split_merge(merge: str) -> tuple[str, str]:
    """``"left right"`` at the first space after the first character (llama.cpp's rule: a
    SentencePiece-style merge may itself start with a space-like piece)."""
    cut = merge.find(" ", 1)
    if cut < 0:
        raise ValueError(f"tokenizer.ggml.merges entry {merge!r} has no space between its two pieces")
    return merge[:cut], merge[cut + 1 :]


def bpe_backend(
    tokens: Sequence[str], merges: Sequence[str], pre: PreTokenizer, byte_fallback: bool
) -> HFTokenizer:
    model = BPE(
        vocab=first_ids(tokens),
        merges=[split_merge(m) for m in merges],
        ignore_merges=pre.ignore_merges,
        byte_fallback=byte_fallback,
    )
    tok = HFTokenizer(model)
    tok.pre_tokenizer = pre.hf_pre_tokenizer()
    if pre.byte_level:
        tok.decoder = decoders.ByteLevel()
    return tok


def wpm_backend(
    tokens: Sequence[str], types: Sequence[int], unk_id: int, lowercase: bool, strip_accents: bool
) -> HFTokenizer:
    vocab: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty == NORMAL:
            t = t[1:] if t.startswith(SPIECE_SPACE) else "##" + t
        vocab.setdefault(t, i)
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else "[UNK]"
    tok = HFTokenizer(WordPiece(vocab=vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok
