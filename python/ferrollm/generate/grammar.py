"""Constrained decoding: GBNF grammars, JSON schemas and regular expressions, compiled and run by
llguidance (the engine llama.cpp itself uses), with llama-cpp-python's ``LlamaGrammar`` API::

    grammar = LlamaGrammar.from_string('root ::= "yes" | "no"')
    llm("Answer: ", grammar=grammar)
    LlamaGrammar.from_json_schema('{"type": "object", ...}')
    LlamaGrammar.from_regex(r"\\d{3}-\\d{4}")

A grammar is checked when it is made: one that does not parse, or a schema the engine cannot
compile, raises ``GrammarError`` (a ``ValueError``) with the engine's message.

While decoding, a ``Constraint`` follows one generation. The model's vocabulary is given to
llguidance once per tokenizer (``lltokenizer``, cached); the token mask is computed only when the
token the sampler drew is refused and the grammar leaves a choice (``TokenChooser`` in
decoding.py); where it forces the next bytes, their tokens are taken without the model.

JSON schemas are compiled with single spaces after ``:`` and ``,`` and no other whitespace
(the layout of Python's ``json.dumps``), so that a model cannot wander into endless blank
space; a schema's own ``x-guidance`` options override this. An object schema that does not say
whether other properties are allowed allows none (as llama.cpp's converter and OpenAI's strict
mode do): otherwise a model may go on inventing keys until it runs out of tokens.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import llguidance
import numpy as np

from ferrollm.text.tokenizer import CONTROL, Tokenizer

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT = {"type": "object"}


class GrammarError(ValueError):
    """A grammar, schema or regular expression the constraint engine cannot use."""


class LlamaGrammar:
    """A compiled grammar (llguidance's grammar specification), checked on creation."""

    def __init__(self, spec: str, source: str, kind: str):
        self._spec = spec
        self._grammar = source  # llama-cpp-python keeps the text under this name
        self.kind = kind
        error = llguidance.LLMatcher.validate_grammar(spec)
        if error:
            raise GrammarError(f"{kind}: {error.strip()}")

    @property
    def spec(self) -> str:
        return self._spec

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> LlamaGrammar:
        """A GBNF grammar (llama.cpp's format; Lark syntax is also accepted)."""
        try:
            spec = llguidance.grammar_from("gbnf", grammar)
        except ValueError as e:
            raise GrammarError(f"GBNF grammar: {e}") from None
        return cls(spec, grammar, "GBNF grammar")

    @classmethod
    def from_file(cls, file: str | Path, verbose: bool = True) -> LlamaGrammar:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as e:
            raise GrammarError(f"cannot read grammar file {file}: {e}") from e
        return cls.from_string(text, verbose)

    @classmethod
    def from_json_schema(cls, json_schema: str | Mapping[str, Any], verbose: bool = True) -> LlamaGrammar:
        """A JSON schema (text, as llama-cpp-python takes it, or a dict)."""
        if isinstance(json_schema, str):
            try:
                schema = json.loads(json_schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"JSON schema is not valid JSON: {e}") from None
        else:
            schema = json_schema
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"a JSON schema is an object or a boolean, not {type(schema).__name__}")
        try:
            spec = llguidance.LLMatcher.grammar_from_json_schema(
                closed_objects(schema), defaults=JSON_OPTIONS
            )
        except (ValueError, TypeError) as e:
            raise GrammarError(f"JSON schema: {e}") from None
        return cls(spec, json.dumps(schema), "JSON schema")

    @classmethod
    def from_regex(cls, pattern: str) -> LlamaGrammar:
        """Text matching a regular expression (Rust ``regex`` syntax), anchored at both ends."""
        return cls(llguidance.LLMatcher.grammar_from_regex(pattern), pattern, "regular expression")

    @classmethod
    def json_object(cls) -> LlamaGrammar:
        """Any JSON object (``response_format={"type": "json_object"}``)."""
        return cls.from_json_schema(ANY_JSON_OBJECT)

    def constraint(self, tokenizer: Tokenizer) -> Constraint:
        return Constraint(self, tokenizer)

    def __repr__(self) -> str:
        return f"LlamaGrammar({self.kind}: {self._grammar[:60]!r})"


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` in which objects without ``additionalProperties`` (or
    ``patternProperties``) allow no properties besides theirs."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(s) for name, s in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def response_format_grammar(response_format: Mapping[str, Any] | None) -> LlamaGrammar | None:
    """The grammar of a chat ``response_format``: ``{"type": "text"}`` (none),
    ``{"type": "json_object"}`` (any object; llama-cpp-python's optional ``"schema"`` narrows it)
    or OpenAI's ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping) or "type" not in response_format:
        raise GrammarError(f"response_format must be an object with a 'type', not {response_format!r}")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return LlamaGrammar.from_json_schema(schema) if schema is not None else LlamaGrammar.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise GrammarError("response_format json_schema needs a 'json_schema' object with a 'schema'")
        schema = spec.get("schema")
        return LlamaGrammar.from_json_schema(schema if schema is not None else ANY_JSON_OBJECT)
    raise GrammarError(f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'")


# -- the vocabulary, as llguidance sees it ----------------------------------------------------------


class _Vocabulary:
    """What ``llguidance.TokenizerWrapper`` reads: each token's bytes (control tokens marked
    with a leading 0xFF, as llguidance's llama.cpp adapter does, so that no text matches them)
    and a tokenizer of plain text (no BOS, no SentencePiece space prefix). It refers to the
    Tokenizer weakly: the Tokenizer keeps the llguidance view that keeps this object."""

    def __init__(self, tokenizer: Tokenizer):
        owner = weakref.ref(tokenizer)
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id if tokenizer.bos_id >= 0 else None
        self.special_token_ids = [i for i, ty in enumerate(tokenizer.token_types) if ty == CONTROL]
        self.tokens = [
            b"\xff" + tokenizer.tokens[i].encode("utf-8") if ty == CONTROL else tokenizer.token_bytes(i)
            for i, ty in enumerate(tokenizer.token_types)
        ]

        # llguidance tokenizes the bytes a grammar forces (JSON keys, punctuation): the same few
        # strings again and again, each a call into Python.
        @functools.lru_cache(maxsize=4096)
        def encode(text: str) -> tuple[int, ...]:
            return tuple(owner().encode_text(text, space_prefix=False))

        self._encode = encode

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._encode(text))


def lltokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of ``tokenizer``, built once per tokenizer (about 0.1 s for 32000
    tokens) and kept on it."""
    ll = tokenizer.__dict__.get("_lltokenizer")
    if ll is None:
        ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)))
        tokenizer.__dict__["_lltokenizer"] = ll
    return ll


class Constraint:
    """One generation under a grammar: which tokens may come next, and the tokens taken."""

    def __init__(self, grammar: LlamaGrammar, tokenizer: Tokenizer):
        self.grammar = grammar
        self._matcher = llguidance.LLMatcher(lltokenizer(tokenizer), grammar.spec, log_level=0)
        self._eos = tokenizer.eos_id
        self._check(f"the {grammar.kind} does not compile")

    def _check(self, what: str) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"{what}: {self._matcher.get_error()}")

    def allows(self, token: int) -> bool:
        if token == self._eos:  # the matcher's check does not count EOS
            return self._matcher.is_accepting()
        return self._matcher.validate_tokens([token]) == 1

    def take(self, token: int) -> bool:
        """Takes ``token`` if the grammar allows it (one parser step for check and take)."""
        if token == self._eos:
            if not self._matcher.is_accepting():
                return False
            self.accept(token)
            return True
        return self._matcher.try_consume_tokens([token]) == 1

    def forced(self, limit: int | None = None) -> list[int]:
        """The tokens the grammar forces next (llguidance's fast-forward tokens: the forced
        bytes, tokenized), at most ``limit``, taken; empty when the model has a choice."""
        ff = self._matcher.compute_ff_tokens()[:limit]
        return ff[: self._matcher.try_consume_tokens(ff)] if ff else []

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with every token the grammar refuses at -inf (a new array)."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, count=len(logits), bitorder="little").view(bool)
        self._check("the grammar failed")
        return np.where(allowed, logits, -np.inf)

    def accept(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._check(f"token {token} does not fit the {self.grammar.kind}")

    def accept_all(self, tokens: list[int]) -> bool:
        """Takes tokens already generated (a tool call detected after its opening text);
        False if they do not fit the grammar."""
        return self._matcher.try_consume_tokens(tokens) == len(tokens) and not self._matcher.is_error()

    def is_accepting(self) -> bool:
        return self._matcher.is_accepting()

    def is_stopped(self) -> bool:
        """Nothing but EOS may follow."""
        return self._matcher.is_stopped()
