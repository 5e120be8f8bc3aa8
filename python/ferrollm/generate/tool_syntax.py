"""How a model writes its tool calls: one ``CallSyntax`` per convention, in a table
(``SYNTAXES``), chosen from the chat template that teaches it (``detect``).

* ``hermes`` (Hermes 2 Pro/3, Qwen 2.5/3 and the default): ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>``, one block per call.
* ``mistral`` (Mistral v0.3, Nemo): ``[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]``,
  every call in one array; ``[TOOL_CALLS]`` is a control token in v0.3 vocabularies, and the
  template refuses earlier calls whose id is not 9 letters or digits.
* ``mistral_args`` (Mistral Small 3.2, Devstral, Magistral, Ministral 3): ``[TOOL_CALLS]`` + the
  function's name + ``[ARGS]`` + the arguments object, the marker repeated before each call;
  both markers are control tokens in their vocabularies. Small 3.2's template writes earlier
  calls with ``[CALL_ID]`` + id before ``[ARGS]`` and refuses ids that are not 9 characters; the
  grammar leaves the id out (as llama.cpp's Ministral 3 grammar does), the parser takes one.
* ``llama3`` (Llama 3.1, 3.2, 3.3): a bare ``{"name": ..., "parameters": {...}}``, optionally after
  ``<|python_tag|>`` (a control token); one call per answer (the templates refuse more).

Recognition follows llama.cpp's common/chat.cpp (the strings a template holds); a template that
matches none (or does not render tools at all) gets ``hermes``. Formats with other bodies
(Qwen3-Coder's ``<function=...>`` XML, functionary) are not recognised and fall back to
``hermes`` too.

A syntax's marker (and ``mistral_args``'s ``[ARGS]``) may be a control token: decoded answers
(``special=False``) do not show it, so each syntax also names the openings its calls have
without it (for ``mistral_args``, the function's name, then ``{`` or ``[ARGS]``), and its
grammar accepts the marker as the token (``<[id]>`` in llguidance's Lark) or as text.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ferrollm.generate.grammar import JSON_OPTIONS
from ferrollm.text.tokenizer import CONTROL, Tokenizer

Call = tuple[str, Any, str | None]  # (name, arguments, the model's own id or None)

_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class CallSyntax:
    name: str
    # (a) recognition: every string of ``signs`` and none of ``not_signs`` in the template source
    signs: tuple[str, ...]
    not_signs: tuple[str, ...]
    # (b) the answer is a call once its text (after blank space) starts with one of these; the
    # first is the marker (the rest: how calls open when the marker is a control token)
    openings: tuple[str, ...]
    # (c) the Lark grammar of an answer made of calls, given ``marker`` (the marker rule's
    # body), the JSON schema of one call object and whether several calls are allowed
    lark: Callable[[str, dict, bool], str]
    arguments_key: str  # "arguments" or "parameters": the key of one call object
    id_pattern: str | None  # the call ids a model writes in the syntax (and its template takes)
    parallel: bool  # whether one answer may hold several calls
    # (d) the calls in an answer's text
    parse: Callable[[str], list[Call]]
    # (e) one earlier call written back, as the syntax spells it
    write: Callable[[str, Any, str], str]
    new_id: Callable[[], str]  # the id of a parsed call without one
    # further strings the grammar spells as a control token or text: (Lark rule name, text)
    tokens: tuple[tuple[str, str], ...] = ()
    # without its control-token marker a call opens with the function's name (then "{" or a token)
    name_opens: bool = False

    @property
    def marker(self) -> str:
        return self.openings[0]

    def keeps_id(self, call_id: Any) -> bool:
        """Whether a model's own call id is kept (Mistral's templates refuse any other shape)."""
        return (
            bool(self.id_pattern)
            and isinstance(call_id, str)
            and re.fullmatch(self.id_pattern, call_id) is not None
        )

    def matches(self, source: str) -> bool:
        return all(s in source for s in self.signs) and not any(s in source for s in self.not_signs)

    def opening(self, text: str, names: tuple[str, ...] = ()) -> str:
        """What the start of an answer is: "call" (it opens with one of the openings after blank
        space, or with one of the functions ``names`` where calls open with it), "text", or
        "open" (it may still become either)."""
        text = text.lstrip()
        after = ("{", *(t for _, t in self.tokens)) if self.name_opens else ()  # "get_time[ARGS]"
        openings = self.openings + tuple(n + a for n in names for a in after)
        if any(text.startswith(o) for o in openings):
            return "call"
        return "open" if any(o.startswith(text) for o in openings) else "text"

    def marker_rule(self, tokenizer: Tokenizer | None) -> str:
        """The marker in Lark: its control token where the vocabulary has one, else its text."""
        return _token_rule(self.marker, tokenizer)

    def grammar_text(self, tokenizer: Tokenizer | None, one_call: dict, parallel: bool) -> str:
        """The whole Lark grammar of an answer made of calls (``lark`` and the ``tokens`` rules)."""
        rules = "".join(f"{rule}: {_token_rule(text, tokenizer)}\n" for rule, text in self.tokens)
        return self.lark(self.marker_rule(tokenizer), one_call, parallel) + rules

    def call_schema(self, name: str, parameters: dict) -> dict:
        """One call of function ``name`` whose arguments follow ``parameters``."""
        ids = {"id": {"type": "string", "pattern": self.id_pattern}} if self.id_pattern else {}
        return {
            "type": "object",
            "properties": {"name": {"const": name}, self.arguments_key: parameters, **ids},
            "required": ["name", self.arguments_key],
            "additionalProperties": False,
        }

    def example(self) -> str:
        """How a call looks, for the built-in instructions."""
        text = self.write("NAME", "ARGUMENTS", "abcdefghi")
        text = text.replace('"NAME"', "NAME").replace("NAME", "<function name>")  # quoted or bare
        return text.replace('"ARGUMENTS"', "<arguments as a JSON object>")


def _token_rule(text: str, tokenizer: Tokenizer | None) -> str:
    """``text`` in Lark: its control token where the vocabulary has one, or the text."""
    literal = json.dumps(text)
    if tokenizer is not None:
        ids = tokenizer.encode(text, add_bos=False, special=True)
        if len(ids) == 1 and tokenizer.token_types[ids[0]] == CONTROL:
            return f"<[{ids[0]}]> | {literal}"
    return literal


def _json(schema: dict) -> str:
    """A Lark %json rule body, laid out as ferrollm.generate.grammar lays out JSON."""
    return f"%json {json.dumps({**schema, 'x-guidance': JSON_OPTIONS})}"


def _openai_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _json_values(text: str) -> list[Any]:
    """The JSON values at the start of ``text``, one after another (blank space and ``;``
    between them), up to the first that does not parse."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;":
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return values
        values.append(value)


def _strip_marker(text: str, marker: str) -> str:
    text = text.lstrip()
    return text.removeprefix(marker)


def _object_calls(values: list[Any], key: str) -> list[Call]:
    return [
        (v["name"], v.get(key, v.get("arguments", v.get("parameters", {}))), v.get("id"))
        for v in values
        if isinstance(v, dict) and isinstance(v.get("name"), str)
    ]


# -- Hermes / Qwen --------------------------------------------------------------------------------

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_HERMES_RE = re.compile(re.escape(_HERMES_OPEN) + r"(.*?)" + re.escape(_HERMES_CLOSE), re.DOTALL)


def _hermes_lark(marker: str, one_call: dict, parallel: bool) -> str:
    more = " (WS? call)*" if parallel else ""
    return (
        f"start: WS? call{more}\n"  # Qwen's templates put a newline on either side of the object
        f'call: marker "\\n"? args "\\n"? {json.dumps(_HERMES_CLOSE)}\n'
        f"marker: {marker}\n"
        f"args: {_json(one_call)}\n"
        "WS: /[ \\t\\r\\n]+/\n"
    )


def _hermes_parse(text: str) -> list[Call]:
    calls = []
    for match in _HERMES_RE.finditer(text):
        calls += _object_calls(_json_values(match.group(1))[:1], "arguments")
    return calls


HERMES = CallSyntax(
    name="hermes",
    signs=(_HERMES_OPEN,),
    not_signs=(),
    openings=(_HERMES_OPEN,),
    lark=_hermes_lark,
    arguments_key="arguments",
    id_pattern=None,
    parallel=True,
    parse=_hermes_parse,
    write=lambda name, arguments, _id: (
        f"{_HERMES_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{_HERMES_CLOSE}"
    ),
    new_id=_openai_id,
)

# -- Mistral v0.3 / Nemo --------------------------------------------------------------------------

_MISTRAL_MARKER = "[TOOL_CALLS]"


def _mistral_lark(marker: str, one_call: dict, parallel: bool) -> str:
    calls = {"type": "array", "items": one_call, "minItems": 1, **({} if parallel else {"maxItems": 1})}
    return f"start: WS? marker calls\nmarker: {marker}\ncalls: {_json(calls)}\nWS: /[ \\t\\r\\n]+/\n"


def _mistral_parse(text: str) -> list[Call]:
    values = _json_values(_strip_marker(text, _MISTRAL_MARKER))[:1]
    return _object_calls(values[0] if values and isinstance(values[0], list) else [], "arguments")


def _mistral_id() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


MISTRAL = CallSyntax(
    name="mistral",
    signs=(_MISTRAL_MARKER,),
    not_signs=("[ARGS]", "[CALL_ID]"),  # Mistral Small 3.2, Devstral, Ministral 3: name[ARGS]{...}
    openings=(_MISTRAL_MARKER, '[{"name"'),
    lark=_mistral_lark,
    arguments_key="arguments",
    id_pattern="^[a-zA-Z0-9]{9}$",  # Nemo writes one
    parallel=True,
    parse=_mistral_parse,
    write=lambda name, arguments, id_: (
        f"{_MISTRAL_MARKER}{json.dumps([{'name': name, 'arguments': arguments, 'id': id_}])}"
    ),
    new_id=_mistral_id,
)

# -- Mistral Small 3.2 / Devstral / Magistral / Ministral 3 ---------------------------------------

_ARGS, _CALL_ID = "[ARGS]", "[CALL_ID]"
# one call: the marker, the name, Small 3.2's [CALL_ID] + id, [ARGS], then the arguments object;
# every marker optional, as a control token is not in the decoded text
_ARGS_CALL_RE = re.compile(
    r"\s*(?:" + re.escape(_MISTRAL_MARKER) + r")?([A-Za-z0-9_.\-]+)"
    r"(?:" + re.escape(_CALL_ID) + r"([A-Za-z0-9]+))?(?:" + re.escape(_ARGS) + r")?(?=\{)"
)


def _args_lark(marker: str, one_call: dict, parallel: bool) -> str:
    """One alternative per function: its name as a literal, [ARGS], its arguments' schema."""
    calls = one_call["anyOf"]
    functions = "".join(
        f"fn{i}: {json.dumps(c['properties']['name']['const'])} args_marker fn{i}_args\n"
        f"fn{i}_args: {_json(c['properties']['arguments'])}\n"
        for i, c in enumerate(calls)
    )
    choice = " | ".join(f"fn{i}" for i in range(len(calls)))
    return (
        f"start: WS? call{'+' if parallel else ''}\n"  # the templates write calls back to back
        f"call: marker ({choice})\n"
        f"marker: {marker}\n{functions}"
        "WS: /[ \\t\\r\\n]+/\n"
    )


def _args_parse(text: str) -> list[Call]:
    decoder, calls, i = json.JSONDecoder(), [], 0
    while match := _ARGS_CALL_RE.match(text, i):
        try:
            arguments, i = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            break
        calls.append((match.group(1), arguments, match.group(2)))
    return calls


MISTRAL_ARGS = CallSyntax(
    name="mistral_args",
    signs=(_MISTRAL_MARKER, _ARGS),
    not_signs=(),
    openings=(_MISTRAL_MARKER,),
    lark=_args_lark,
    arguments_key="arguments",
    id_pattern="^[a-zA-Z0-9]{9}$",  # Small 3.2's template takes back no other
    parallel=True,
    parse=_args_parse,
    write=lambda name, arguments, _id: f"{_MISTRAL_MARKER}{name}{_ARGS}{json.dumps(arguments)}",
    new_id=_mistral_id,
    tokens=(("args_marker", _ARGS),),
    name_opens=True,
)

# -- Llama 3.1 / 3.2 / 3.3 ------------------------------------------------------------------------

_PYTHON_TAG = "<|python_tag|>"


def _llama3_lark(marker: str, one_call: dict, parallel: bool) -> str:
    return f"start: WS? marker? call\nmarker: {marker}\ncall: {_json(one_call)}\nWS: /[ \\t\\r\\n]+/\n"


LLAMA3 = CallSyntax(
    name="llama3",
    signs=("<|start_header_id|>ipython<|end_header_id|>",),
    not_signs=("<function=",),  # functionary v3.1 shares Llama 3's header
    openings=(_PYTHON_TAG, '{"name"'),
    lark=_llama3_lark,
    arguments_key="parameters",
    id_pattern=None,
    parallel=False,
    parse=lambda text: _object_calls(_json_values(_strip_marker(text, _PYTHON_TAG)), "parameters"),
    write=lambda name, arguments, _id: json.dumps({"name": name, "parameters": arguments}),
    new_id=_openai_id,
)

# first match wins
SYNTAXES: dict[str, CallSyntax] = {s.name: s for s in (MISTRAL_ARGS, MISTRAL, LLAMA3, HERMES)}
DEFAULT = HERMES


def detect(template_source: str | None) -> CallSyntax:
    """The syntax a chat template teaches, ``DEFAULT`` when it shows none we know."""
    if template_source:
        for syntax in SYNTAXES.values():
            if syntax.matches(template_source):
                return syntax
    return DEFAULT


def arguments_of(call: Mapping[str, Any]) -> Any:
    """An OpenAI tool call's arguments as a value (they come as a JSON string)."""
    arguments = call.get("function", {}).get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments
