"""Tokenizers built from a GGUF file's vocabulary (``tokenizer.ggml.*`` metadata).

Two models, as in llama.cpp:

* ``llama``: SentencePiece BPE (Llama, Mistral, Mixtral) with per-piece scores and byte
  fallback. Run by the ``tokenizers`` library as a BPE whose merges are derived from the scores
  (a pair merges into a piece in the order of that piece's score, which is SentencePiece's rule).
* ``gpt2``: byte-level BPE with the file's merges and the pre-tokenizer named by
  ``tokenizer.ggml.pre``.

The GGUF is the only source of the vocabulary. Ids match SentencePiece's own for the real
Mistral tokenizer (tests/test_tokenizer.py). Control tokens (``<s>``) in text are plain text
unless ``special=True``, as in llama.cpp.
"""

from __future__ import annotations

import codecs
import re
import warnings
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

from tokenizers import Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

SPIECE_SPACE = "\u2581"

# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes of byte-level BPE vocabularies, by tokenizer.ggml.pre (llama.cpp's names).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_PRE_SPLITS = {
    "default": GPT2_SPLIT,
    "gpt-2": GPT2_SPLIT,
    "llama-bpe": LLAMA3_SPLIT,
    "llama3": LLAMA3_SPLIT,
}


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class TokenizerError(ValueError):
    """The GGUF's tokenizer metadata is missing, inconsistent or of an unknown kind."""


class Tokenizer:
    def __init__(self, metadata: Mapping[str, Any]):
        def key(name: str, default: Any = None) -> Any:
            return metadata.get(f"tokenizer.ggml.{name}", default)

        self.model = key("model")
        if self.model not in ("llama", "gpt2"):
            raise TokenizerError(
                f"tokenizer.ggml.model is {self.model!r}; supported: 'llama' (SentencePiece), 'gpt2' (BPE)"
            )
        self.tokens: list[str] = list(key("tokens") or [])
        if not self.tokens:
            raise TokenizerError("the file has no tokenizer.ggml.tokens")
        n = len(self.tokens)
        self.scores: list[float] = list(key("scores", [0.0] * n))
        self.token_types: list[int] = list(key("token_type", [NORMAL] * n))
        if len(self.scores) != n or len(self.token_types) != n:
            raise TokenizerError(
                f"{n} tokens but {len(self.scores)} scores and {len(self.token_types)} token types"
            )
        self.bos_id: int = key("bos_token_id", 1 if self.model == "llama" else -1)
        self.eos_id: int = key("eos_token_id", 2 if self.model == "llama" else -1)
        for what, tid in (("bos", self.bos_id), ("eos", self.eos_id)):
            if not -1 <= tid < n:
                raise TokenizerError(f"{what}_token_id {tid} is outside the vocabulary of {n}")
        self.add_bos: bool = bool(key("add_bos_token", self.model == "llama"))
        self.add_eos: bool = bool(key("add_eos_token", False))
        self.add_space_prefix: bool = bool(key("add_space_prefix", self.model == "llama"))
        self.pre: str = key("pre", "default")
        self._merges = list(key("merges") or [])
        self.chat_template: str | None = metadata.get("tokenizer.chat_template")
        self._backend = self._build_spm() if self.model == "llama" else self._build_bpe()
        # Control and user-defined pieces; the first id wins for a duplicated piece.
        self._special_ids: dict[str, int] = {}
        for i, (t, ty) in enumerate(zip(self.tokens, self.token_types)):
            if ty in (CONTROL, USER_DEFINED) and t:
                self._special_ids.setdefault(t, i)
        # Longest first, so that "<|im_start|>" wins over a shorter prefix.
        pattern = "|".join(re.escape(t) for t in sorted(self._special_ids, key=len, reverse=True))
        self._special_re = re.compile(f"({pattern})") if pattern else None

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    # -- building the backends --------------------------------------------------------------

    def _vocab(self) -> dict[str, int]:
        vocab: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            vocab.setdefault(t, i)  # duplicated pieces: the first id wins, as in SentencePiece
        return vocab

    def _build_spm(self) -> HFTokenizer:
        vocab = self._vocab()
        mergeable = {i for i, ty in enumerate(self.token_types) if ty in (NORMAL, USER_DEFINED)}
        merges = []
        for piece, pid in vocab.items():
            if pid not in mergeable or len(piece) < 2:
                continue
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in vocab and right in vocab:
                    merges.append((-self.scores[pid], pid, cut, left, right))
        merges.sort()
        unk = next((t for t, ty in zip(self.tokens, self.token_types) if ty == UNKNOWN), None)
        model = BPE(
            vocab=vocab,
            merges=[(m[3], m[4]) for m in merges],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=any(ty == BYTE for ty in self.token_types),
        )
        tok = HFTokenizer(model)
        tok.normalizer = normalizers.Replace(" ", SPIECE_SPACE)
        return tok

    def _build_bpe(self) -> HFTokenizer:
        merges = []
        for m in self._merges:
            left, _, right = m.partition(" ")
            merges.append((left, right))
        tok = HFTokenizer(
            BPE(vocab=self._vocab(), merges=merges, ignore_merges=self.pre in ("llama-bpe", "llama3"))
        )
        split = BPE_PRE_SPLITS.get(self.pre)
        if split is None:
            warnings.warn(f"unknown BPE pre-tokenizer {self.pre!r}; using GPT-2's", stacklevel=3)
            split = GPT2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        return tok

    # -- encoding ------------------------------------------------------------------------------

    def _encode_text(self, text: str, space_prefix: bool) -> list[int]:
        if self.model == "llama" and space_prefix and self.add_space_prefix:
            text = " " + text
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_bos`` defaults to the file's ``add_bos_token``.
        With ``special``, control tokens written in the text (``<s>``, ``[INST]``) become
        their ids; otherwise they are tokenized as plain text."""
        ids: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id < 0:
                raise TokenizerError("this vocabulary has no BOS token")
            ids.append(self.bos_id)
        parts = self._special_re.split(text) if special and self._special_re else [text]
        # As llama.cpp: text after a special token (or at the start) gets the space prefix.
        after_special = True
        for i, part in enumerate(parts):
            if i % 2:  # a matched special token
                ids.append(self._special_ids[part])
                after_special = True
            elif part:
                ids.extend(self._encode_text(part, after_special))
                after_special = False
        if self.add_eos and self.eos_id >= 0:
            ids.append(self.eos_id)
        return ids

    # -- decoding ------------------------------------------------------------------------------

    @cached_property
    def _piece_bytes(self) -> list[bytes]:
        """What each token contributes to the text (control tokens: nothing)."""
        out = []
        if self.model == "llama":
            for t, ty in zip(self.tokens, self.token_types):
                if ty == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                    out.append(bytes([int(t[3:5], 16)]))
                elif ty in (CONTROL, UNUSED):
                    out.append(b"")
                else:
                    out.append(t.replace(SPIECE_SPACE, " ").encode("utf-8"))
            return out
        decode = {c: b for b, c in _byte_level_alphabet().items()}
        for t, ty in zip(self.tokens, self.token_types):
            if ty in (CONTROL, UNUSED):
                out.append(b"")
            elif ty == USER_DEFINED:
                out.append(t.encode("utf-8"))
            else:
                out.append(bytes(decode[c] for c in t) if all(c in decode for c in t) else t.encode("utf-8"))
        return out

    def out_of_vocabulary(self, token: int) -> str:
        n = self.n_vocab
        return f"token id {token} is outside the vocabulary of {n} (valid ids: 0..{n - 1})"

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        if not 0 <= token < self.n_vocab:
            raise ValueError(self.out_of_vocabulary(token))
        if special and self.token_types[token] == CONTROL:
            return self.tokens[token].encode("utf-8")
        return self._piece_bytes[token]

    def detokenize(self, tokens: Iterable[int], special: bool = False) -> bytes:
        """The bytes of ``tokens``. As llama-cpp-python does, a leading space is removed when
        the first token is BOS (SentencePiece prefixes the text with one)."""
        tokens = list(tokens)
        out = b"".join(self.token_bytes(t, special) for t in tokens)
        if tokens and tokens[0] == self.bos_id and out[:1] == b" " and self.model == "llama":
            return out[1:]
        return out

    def decode(self, tokens: Iterable[int], special: bool = False) -> str:
        return self.detokenize(tokens, special).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, special)


class StreamDecoder:
    """Turns tokens into text as they come, never emitting a broken UTF-8 sequence: bytes of
    a character split over tokens are held until the character is complete."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tokenizer = tokenizer
        self._special = special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token, self._special))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def sentencepiece_metadata(model_file: str) -> dict[str, Any]:
    """``tokenizer.ggml.*`` metadata for a SentencePiece ``tokenizer.model``, written the way
    llama.cpp's converter writes it. Needs the ``sentencepiece`` package (not a runtime
    dependency of ferrollm)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_unused(i):
            types.append(UNUSED)
        elif sp.is_byte(i):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    if sp.pad_id() >= 0:
        md["tokenizer.ggml.padding_token_id"] = sp.pad_id()
    return md
