"""Tokenizers built from a GGUF file's vocabulary (``tokenizer.ggml.*`` metadata), as llama.cpp
runs them.

Models (``tokenizer.ggml.model``):

* ``llama``: SentencePiece BPE (Llama, Mistral, Mixtral, Phi-3) with per-piece scores and byte
  fallback;
* ``gpt2``: byte-level BPE with the file's merges behind the pre-tokenizer named by
  ``tokenizer.ggml.pre`` (:mod:`ferrollm.pretokenize`: every name llama.cpp knows);
* ``gemma4``: SentencePiece-style BPE (spaces as U+2581, raw UTF-8, byte fallback);
* ``bert``: WordPiece.

The GGUF is the only source of the vocabulary; the pipelines run in the ``tokenizers`` library
(:mod:`ferrollm.tokenizer_backends`). Ids match llama.cpp's test vocabularies
(tests/test_tokenizer_vocabs.py) and SentencePiece's own for Mistral (tests/test_tokenizer.py).
As in llama.cpp, user-defined tokens are always matched whole; control tokens (``<s>``) in text
are plain text unless ``special=True``.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

from ferrollm.text.pretokenize import pre_tokenizer
from ferrollm.text.tokenizer_backends import (
    BYTE,
    CONTROL,
    NORMAL,
    SPIECE_SPACE,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    bpe_backend,
    first_ids,
    spm_backend,
    wpm_backend,
)

__all__ = ["BYTE", "CONTROL", "NORMAL", "UNKNOWN", "UNUSED", "USER_DEFINED", "StreamDecoder", "Tokenizer",
           "TokenizerError", "sentencepiece_metadata"]  # fmt: skip

MODELS = {
    "llama": "SentencePiece",
    "gpt2": "byte-level BPE",
    "gemma4": "SentencePiece-style BPE",
    "bert": "WordPiece",
}
# Defaults when the file does not say: (bos, eos, add_bos), llama.cpp's except for byte-level
# BPE, where its 11 (Falcon's) is left out: a file without ids has no BOS/EOS.
_DEFAULTS = {
    "llama": (1, 2, True),
    "gpt2": (-1, -1, False),
    "gemma4": (-1, -1, True),
    "bert": (101, -1, True),
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


def _alternation(pieces: Iterable[str]) -> re.Pattern | None:
    # Longest first, so that "<|im_start|>" wins over a shorter prefix.
    pattern = "|".join(re.escape(t) for t in sorted(pieces, key=len, reverse=True))
    return re.compile(f"({pattern})") if pattern else None


# Bytes that were not UTF-8, as "surrogateescape" decoding leaves them (U+DC80..U+DCFF).
_RAW_BYTES = re.compile("[\udc80-\udcff]")
# llama.cpp's UTF-8 sequence length by a byte's high nibble (continuation bytes count as 1).
_UTF8_LEN = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)


def _byte_of(token: str, token_type: int) -> int | None:
    """The byte a ``<0xXX>`` byte-fallback token stands for (None for any other token)."""
    if token_type == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        return int(token[3:5], 16)
    return None


class TokenizerError(ValueError):
    """The GGUF's tokenizer metadata is missing, inconsistent or of an unknown kind."""


class Tokenizer:
    def __init__(self, metadata: Mapping[str, Any]):
        def key(name: str, default: Any = None) -> Any:
            return metadata.get(f"tokenizer.ggml.{name}", default)

        self.model = key("model")
        if self.model not in MODELS:
            supported = ", ".join(f"{k!r} ({v})" for k, v in MODELS.items())
            raise TokenizerError(f"tokenizer.ggml.model is {self.model!r}; supported: {supported}")
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
        bos, eos, add_bos = _DEFAULTS[self.model]
        bos, eos = (i if i < n else -1 for i in (bos, eos))
        self.pre: str = key("pre", "default")
        self._pre = None
        if self.model == "gpt2":
            self._pre = pre_tokenizer(key("pre"))
            add_bos = self._pre.add_bos
        elif self.model == "gemma4":
            self._pre = pre_tokenizer("gemma4")
        self.bos_id: int = key("bos_token_id", bos)
        self.eos_id: int = key("eos_token_id", eos)
        self.sep_id: int = key("seperator_token_id", 102 if self.model == "bert" and n > 102 else -1)
        self.unk_id: int = key("unknown_token_id", 100 if self.model == "bert" and n > 100 else -1)
        for what, tid in (("bos", self.bos_id), ("eos", self.eos_id), ("seperator", self.sep_id)):
            if not -1 <= tid < n:
                raise TokenizerError(f"{what}_token_id {tid} is outside the vocabulary of {n}")
        # llama.cpp turns a Gemma 4 file's add_bos_token = false back on.
        self.add_bos: bool = bool(key("add_bos_token", add_bos)) or self.model == "gemma4"
        self.add_eos: bool = bool(key("add_eos_token", False))
        self.add_space_prefix: bool = bool(key("add_space_prefix", self.model == "llama"))
        self._merges = list(key("merges") or [])
        if self.model in ("gpt2", "gemma4") and not self._merges:
            raise TokenizerError(f"tokenizer.ggml.model {self.model!r} needs tokenizer.ggml.merges")
        self.chat_template: str | None = metadata.get("tokenizer.chat_template")
        self._backend = self._build(key)
        # Pieces matched whole before the model runs: user-defined ones always, control and
        # unknown ones when asked (llama.cpp's tokenizer_st_partition).
        self._special_ids: dict[str, int] = {}
        for i, (t, ty) in enumerate(zip(self.tokens, self.token_types)):
            if ty in (CONTROL, USER_DEFINED, UNKNOWN) and t:
                self._special_ids.setdefault(t, i)
        user = [t for t, i in self._special_ids.items() if self.token_types[i] == USER_DEFINED]
        self._user_re = _alternation(user)
        self._special_re = _alternation(self._special_ids)
        self._rstrip = self._rstrip_ids(str(metadata.get("general.name", "")).lower())

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def _build(self, key):
        if self.model == "llama":
            return spm_backend(self.tokens, self.scores, self.token_types)
        if self.model == "bert":
            lowercase = bool(key("normalizer.lowercase", True))
            strip_accents = bool(key("normalizer.strip_accents", lowercase))
            return wpm_backend(self.tokens, self.token_types, self.unk_id, lowercase, strip_accents)
        byte_fallback = not self._pre.byte_level and any(ty == BYTE for ty in self.token_types)
        return bpe_backend(self.tokens, self._merges, self._pre, byte_fallback)

    def _rstrip_ids(self, model_name: str) -> frozenset[int]:
        """Tokens that swallow the whitespace after them: llama.cpp sets this by model name for
        Phi-3's chat tokens (``<|user|>\\n`` is read as ``<|user|>``)."""
        if "phi-3" not in model_name and "phi3" not in model_name:
            return frozenset()
        keep = {"<unk>", "<s>", "<|endoftext|>"}
        return frozenset(i for t, i in self._special_ids.items() if t not in keep)

    # -- encoding ------------------------------------------------------------------------------

    @cached_property
    def _newline_runs(self) -> dict[str, int]:
        return {t: i for t, i in first_ids(self.tokens).items() if t and set(t) == {"\n"}}

    def encode_text(self, text: str, space_prefix: bool) -> list[int]:
        """Plain text (no special tokens, no BOS) to ids; ``space_prefix`` as SentencePiece adds it."""
        if self.model == "llama" and space_prefix and self.add_space_prefix:
            text = " " + text
        if self._pre is not None and self._pre.escape_spaces:
            text = text.replace(" ", SPIECE_SPACE)
        if self.model == "gemma4":
            # As llama.cpp (its Gemma 4 fix): a run of newlines that is a piece is that piece,
            # whatever the merges would make of it.
            ids: list[int] = []
            for run in re.split("(\n+)", text):
                if run in self._newline_runs:
                    ids.append(self._newline_runs[run])
                elif run:
                    ids.extend(self._backend.encode(run, add_special_tokens=False).ids)
            return ids
        return self._backend.encode(text, add_special_tokens=False).ids

    def _encode_part(self, text: str, space_prefix: bool) -> list[int]:
        """``encode_text``, where ``text`` may hold bytes that were not UTF-8 (as lone
        surrogates, ``bytes.decode(..., "surrogateescape")``). With a byte-fallback vocabulary
        they become ``<0xXX>`` tokens exactly as llama.cpp makes them: its SentencePiece
        tokenizer cuts the (space-escaped) bytes into symbols by each lead byte's UTF-8 length,
        so an invalid lead byte takes the next bytes with it, and a symbol that is not a
        character is spelled in byte tokens; no merge crosses it. Elsewhere they are dropped."""
        if not _RAW_BYTES.search(text):
            return self.encode_text(text, space_prefix)
        if not self._byte_ids:
            return self.encode_text(_RAW_BYTES.sub("", text), space_prefix)
        data = text.encode("utf-8", "surrogateescape")
        if space_prefix and self.add_space_prefix:
            data = b" " + data
        # Spaces as SentencePiece's U+2581 before the cut, as llama.cpp escapes them.
        data = data.replace(b" ", SPIECE_SPACE.encode("utf-8"))
        ids: list[int] = []
        run = bytearray()  # characters waiting to be encoded together
        i = 0
        while i < len(data):
            symbol = data[i : i + _UTF8_LEN[data[i] >> 4]]
            i += len(symbol)
            try:
                valid = len(symbol.decode("utf-8")) == 1
            except UnicodeDecodeError:
                valid = False
            if valid:
                run += symbol
                continue
            if run:
                ids.extend(self.encode_text(run.decode("utf-8"), False))
                run.clear()
            ids.extend(self._byte_ids[b] for b in symbol if b in self._byte_ids)
        if run:
            ids.extend(self.encode_text(run.decode("utf-8"), False))
        return ids

    @cached_property
    def _byte_ids(self) -> dict[int, int]:
        """The ``<0xXX>`` byte tokens of a byte-fallback vocabulary, by byte (empty elsewhere)."""
        if self.model != "llama":  # SentencePiece vocabularies (the byte-level ones have no such gap)
            return {}
        return {
            b: i
            for i, (t, ty) in enumerate(zip(self.tokens, self.token_types))
            if (b := _byte_of(t, ty)) is not None
        }

    def _fragments(self, text: str, special: bool) -> list[str | int]:
        """``text`` cut around the pieces matched whole: strings and token ids in order."""
        pattern = self._special_re if special else self._user_re
        if pattern is None:
            return [text] if text else []
        out: list[str | int] = []
        strip_next = False
        for i, part in enumerate(pattern.split(text)):
            if i % 2:
                tid = self._special_ids[part]
                out.append(tid)
                strip_next = tid in self._rstrip
            else:
                if strip_next:
                    part = part.lstrip(" \t\n\v\f\r")
                if part:
                    out.append(part)
        return out

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_bos`` defaults to the file's ``add_bos_token`` (for
        WordPiece it adds the classifier and separator tokens around the text). With
        ``special``, control tokens written in the text (``<s>``, ``[INST]``) become their ids;
        otherwise they are tokenized as plain text."""
        ids: list[int] = []
        add_special = self.add_bos if add_bos is None else add_bos
        if add_special:
            if self.bos_id < 0:
                raise TokenizerError("this vocabulary has no BOS token")
            ids.append(self.bos_id)
        # As llama.cpp: text after a matched token (or at the start) gets the space prefix.
        after_special = True
        for part in self._fragments(text, special):
            if isinstance(part, int):
                ids.append(part)
                after_special = True
            else:
                ids.extend(self._encode_part(part, after_special))
                after_special = False
        if self.model == "bert" and add_special and self.sep_id >= 0:
            ids.append(self.sep_id)
        elif self.add_eos and self.eos_id >= 0:
            ids.append(self.eos_id)
        return ids

    # -- decoding ------------------------------------------------------------------------------

    @cached_property
    def _piece_bytes(self) -> list[bytes]:
        """What each token contributes to the text, as llama.cpp's ``token_to_piece`` without
        ``special``: control, unknown and unused tokens nothing, user-defined ones their text."""
        byte_level = self.model == "gpt2" and self._pre.byte_level
        decode = {c: b for b, c in _byte_level_alphabet().items()}
        out = []
        for t, ty in zip(self.tokens, self.token_types):
            if ty == USER_DEFINED:
                out.append(t.encode("utf-8"))
            elif (b := _byte_of(t, ty)) is not None:
                out.append(bytes([b]))
            elif ty not in (NORMAL, BYTE):
                out.append(b"")
            elif byte_level and all(c in decode for c in t):
                out.append(bytes(decode[c] for c in t))
            elif byte_level:
                out.append(t.encode("utf-8"))
            else:
                out.append(t.replace(SPIECE_SPACE, " ").encode("utf-8"))
        return out

    def out_of_vocabulary(self, token: int) -> str:
        n = self.n_vocab
        return f"token id {token} is outside the vocabulary of {n} (valid ids: 0..{n - 1})"

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        if not 0 <= token < self.n_vocab:
            raise ValueError(self.out_of_vocabulary(token))
        if special and self.token_types[token] in (CONTROL, UNKNOWN):
            return self.tokens[token].encode("utf-8")
        return self._piece_bytes[token]

    def detokenize(self, tokens: Iterable[int], special: bool = False) -> bytes:
        """The bytes of ``tokens``. As llama-cpp-python does, a leading space is removed when
        the first token is BOS (SentencePiece prefixes the text with one)."""
        tokens = list(tokens)
        out = b"".join(self.token_bytes(t, special) for t in tokens)
        if tokens and tokens[0] == self.bos_id and out[:1] == b" ":
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
