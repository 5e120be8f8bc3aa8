"""A Hugging Face tokenizer as GGUF ``tokenizer.*`` metadata, with llama.cpp's converter's rules.

- SentencePiece (``tokenizer.model``): the pieces, scores and types straight from the model's
  protobuf (types share llama.cpp's numbering: 1 normal, 2 unknown, 3 control, 4 user-defined,
  5 unused, 6 byte), padded with ``[PADi]`` up to the config's vocab_size; added tokens from
  tokenizer_config.json become control (special) or user-defined tokens.
- Byte-level BPE (``tokenizer.json``): vocabulary and merges; added tokens likewise.
- Special token ids, add_bos/add_eos and the chat template: tokenizer_config.json, then ids
  from config.json.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from ferrollm.checkpoints.checkpoint import read_json

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {"bos": "bos", "eos": "eos", "unk": "unknown", "sep": "seperator", "pad": "padding", "cls": "cls",
            "mask": "mask", "eot": "eot", "eom": "eom"}  # fmt: skip


class VocabError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise VocabError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        yield field, wire, value


def sentencepiece_pieces(path: str) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece of a SentencePiece ``tokenizer.model``."""
    with open(path, "rb") as f:
        data = f.read()
    pieces = []
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:  # ModelProto.pieces
            piece, score, kind = "", 0.0, NORMAL
            for f2, _, v2 in _fields(value):
                if f2 == 1:
                    piece = v2.decode("utf-8")
                elif f2 == 2:
                    (score,) = struct.unpack("<f", v2)
                elif f2 == 3:
                    kind = v2
            pieces.append((piece, score, kind))
    if not pieces:
        raise VocabError(f"{path}: no SentencePiece pieces found")
    return pieces


def _json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    return read_json(path)


def _looks_special(token: str) -> bool:
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>")) or (token.startswith("<unused") and token.endswith(">")))  # fmt: skip


def _sentencepiece(model_dir: str, vocab_size: int | None) -> dict[str, Any]:
    pieces = sentencepiece_pieces(os.path.join(model_dir, "tokenizer.model"))
    n = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores, types = [-10000.0] * n, [UNUSED] * n
    for i, (piece, score, kind) in enumerate(pieces[:n]):
        tokens[i], scores[i], types[i] = (
            piece,
            score,
            kind if kind in (UNKNOWN, CONTROL, UNUSED, BYTE) else NORMAL,
        )
    for key, i in (_json(os.path.join(model_dir, "added_tokens.json")) or {}).items():
        if i < n:
            tokens[i], scores[i], types[i] = key, -1000.0, USER_DEFINED
    tc = _json(os.path.join(model_dir, "tokenizer_config.json")) or {}
    for i, data in (tc.get("added_tokens_decoder") or {}).items():
        i, token = int(i), data["content"]
        if i >= n:
            continue
        if data.get("special") or _looks_special(token):
            types[i] = CONTROL
        else:
            token, types[i] = token.replace("\u2581", " "), USER_DEFINED
        scores[i], tokens[i] = -1000.0, token
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types}  # fmt: skip


def _bpe(model_dir: str, vocab_size: int | None, pre: str) -> dict[str, Any]:
    tj = _json(os.path.join(model_dir, "tokenizer.json"))
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise VocabError(
            f"{model_dir}/tokenizer.json: model type {model.get('type')!r}, only BPE is supported"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    n = vocab_size or (max(vocab.values()) + 1)
    if max(vocab.values()) >= n:
        raise VocabError(f"{model_dir}: token id {max(vocab.values())} is beyond vocab_size {n}")
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif tok in added:
            special = added[tok].get("special") or _looks_special(tok)
            tokens.append(tok if special else tok.replace("\u2581", " "))
            types.append(CONTROL if special else USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(NORMAL)
    merges = model.get("merges") or []
    if merges and isinstance(merges[0], list):  # the newer [left, right] form; spaces as U+0120
        merges = [
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
            for pair in merges
        ]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": list(merges)}  # fmt: skip


def _special(model_dir: str, n_vocab: int) -> dict[str, Any]:
    tj = _json(os.path.join(model_dir, "tokenizer.json")) or {}
    tc = _json(os.path.join(model_dir, "tokenizer_config.json"))
    cfg = _json(os.path.join(model_dir, "config.json")) or {}
    added = tj.get("added_tokens", [])
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    template = None
    for proc in (tj.get("post_processor") or {}).get("processors", [tj.get("post_processor") or {}]):
        if proc.get("type") == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
    if tc:
        jinja = os.path.join(model_dir, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        template = tc.get("chat_template", template)
        for typ in SPECIAL_TYPES:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in add:
                add[typ] = flag
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                tid = next((t.get("id") for t in added if t.get("content") == content), None)
                if isinstance(tid, int) and tid < n_vocab:
                    ids.setdefault(typ, tid)
    for typ in SPECIAL_TYPES:
        tid = cfg.get(f"{typ}_token_id")
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            ids.setdefault(typ, tid)
    out: dict[str, Any] = {f"tokenizer.ggml.{_ID_KEYS[t]}_token_id": i for t, i in ids.items()}
    out.update({f"tokenizer.ggml.add_{t}_token": v for t, v in add.items()})
    if template is not None:
        out["tokenizer.chat_template"] = template
    return out


def gguf_vocab(model_dir: str, vocab_size: int | None, bpe_pre: str = "default") -> dict[str, Any]:
    """Metadata (key -> value) for the tokenizer in ``model_dir``: tokenizer.model when present
    (as llama.cpp's converter prefers it), else a byte-level BPE tokenizer.json."""
    out: dict[str, Any] = {}
    tc = _json(os.path.join(model_dir, "tokenizer_config.json")) or {}
    if isinstance(tc.get("add_prefix_space"), bool):
        out["tokenizer.ggml.add_space_prefix"] = tc["add_prefix_space"]
    if os.path.isfile(os.path.join(model_dir, "tokenizer.model")):
        out.update(_sentencepiece(model_dir, vocab_size))
    elif os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        out.update(_bpe(model_dir, vocab_size, bpe_pre))
    else:
        raise VocabError(f"{model_dir}: no tokenizer.model or tokenizer.json")
    out.update(_special(model_dir, len(out["tokenizer.ggml.tokens"])))
    return out


# GGUF types of the keys above (the rest are inferred: str, bool, arrays of str).
TYPES = {"tokenizer.ggml.scores": "array[f32]", "tokenizer.ggml.token_type": "array[i32]",
         **{f"tokenizer.ggml.{k}_token_id": "u32" for k in _ID_KEYS.values()}}  # fmt: skip
