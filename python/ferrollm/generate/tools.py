"""Tool calls in chat completions: OpenAI's ``tools`` and ``tool_choice`` (and the legacy
``functions`` / ``function_call``), answered in OpenAI's shape (``message.tool_calls``,
``finish_reason: "tool_calls"``, streamed ``delta.tool_calls``).

The prompt: the tools go to the file's Jinja chat template (its ``tools`` variable). When the
template does not show them (it ignores tools, or the chat format is a built-in one), a system
message describes them instead, and earlier calls and tool results in the conversation are
written out as text (the built-in format)::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

The answer: calls are written in the syntax the prompt taught (ferrollm.generate.tool_syntax, a table):
the template's own where it renders the tools and is one we recognise (Mistral's
``[TOOL_CALLS][{...}]`` and newer ``[TOOL_CALLS]name[ARGS]{...}``, Llama 3's bare
``{"name": ..., "parameters": {...}}``), else the Hermes/Qwen form above. The syntax's grammar
holds an answer to calls whose arguments follow the function's JSON schema, and its parser
turns the text into ``tool_calls``:

* ``tool_choice="auto"`` (the default with tools): the model chooses. Decoding is free until its
  text starts (after blank space) with the syntax's opening (``<tool_call>``, ``[TOOL_CALLS]``,
  ``<|python_tag|>``...; a control token counts by its text); from there the grammar holds it
  to calls.
* ``"required"``: one or more calls, from the first token.
* ``{"type": "function", "function": {"name": NAME}}``: exactly one call of NAME.
* ``"none"``: no tools; a plain answer.

``parallel_tool_calls=False`` allows one call per answer (Llama 3's syntax always does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import llguidance
import numpy as np

from ferrollm.generate.grammar import Constraint, GrammarError, LlamaGrammar, closed_objects
from ferrollm.generate.tool_syntax import DEFAULT, HERMES, CallSyntax, arguments_of
from ferrollm.text.tokenizer import Tokenizer

OPEN, CLOSE = "<tool_call>", "</tool_call>"  # the built-in (Hermes) format


class ToolError(ValueError):
    """A malformed tool list or a tool_choice naming no given function; ``param`` names the
    request field at fault (for the server's HTTP 400)."""

    def __init__(self, message: str, param: str = "tools"):
        super().__init__(message)
        self.param = param


def _function(tool: Any, i: int) -> dict:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise ToolError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}, not {tool!r}")
    fn = tool.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ToolError(f"tools[{i}].function needs a 'name'")
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(params, Mapping):
        raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
    if params.get("type", "object") != "object":
        # A call's arguments are a JSON object (OpenAI's arguments field): "0" is not one.
        raise ToolError(
            f"tools[{i}].function.parameters must describe an object (type 'object'), not "
            f"type {params.get('type')!r}: a call's arguments are a JSON object"
        )
    return {**fn, "parameters": dict(params)}


class ToolCalling:
    """One request's tools and choice."""

    def __init__(
        self, functions: list[dict], forced: str | None, parallel: bool, syntax: CallSyntax = DEFAULT
    ):
        self.functions = functions
        self.forced = forced  # None: auto; "*": required; else the function's name
        self.asked_parallel = parallel
        self.parallel = parallel and forced in (None, "*") and syntax.parallel
        self.syntax = syntax

    def using(self, syntax: CallSyntax) -> ToolCalling:
        """The same request with calls written in ``syntax``."""
        return ToolCalling(self.functions, self.forced, self.asked_parallel, syntax)

    @classmethod
    def from_request(
        cls,
        tools: Sequence[dict] | None,
        tool_choice: str | Mapping[str, Any] | None,
        functions: Sequence[dict] | None = None,
        function_call: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
    ) -> ToolCalling | None:
        """None when there is nothing to call (no tools, or ``tool_choice="none"``)."""
        tools_param, choice_param = "tools", "tool_choice"
        if functions is not None and tools is None:  # the legacy spelling
            if not isinstance(functions, (list, tuple)):
                raise ToolError(f"functions must be a list, not {type(functions).__name__}", "functions")
            tools, tools_param = [{"type": "function", "function": f} for f in functions], "functions"
        if function_call is not None and tool_choice is None:
            choice_param = "function_call"
            tool_choice = (
                function_call
                if isinstance(function_call, str)
                else {"type": "function", "function": dict(function_call)}
            )
        if tools is not None and not isinstance(tools, (list, tuple)):
            raise ToolError(f"tools must be a list, not {type(tools).__name__}")
        try:
            fns = [_function(t, i) for i, t in enumerate(tools or [])]
        except ToolError as e:
            raise ToolError(str(e), tools_param) from None
        names = [f["name"] for f in fns]
        if len(set(names)) != len(names):
            raise ToolError(f"tools name the same function twice: {names}", tools_param)
        choice = "auto" if tool_choice is None else tool_choice
        if choice == "none":
            return None
        if not fns:
            if choice == "auto":
                return None
            raise ToolError(f"tool_choice {choice!r} needs tools", choice_param)
        if choice == "auto":
            return cls(fns, None, parallel_tool_calls)
        if choice == "required":
            return cls(fns, "*", parallel_tool_calls)
        if isinstance(choice, Mapping):
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, Mapping) else None
            if name is None:
                raise ToolError(f"tool_choice must name a function: {{'type': 'function', 'function': "
                                f"{{'name': ...}}}}, not {choice!r}", choice_param)  # fmt: skip
            if name not in names:
                raise ToolError(f"{choice_param} names the function {name!r}, which is not among the "
                                f"{tools_param} ({', '.join(names)})", choice_param)  # fmt: skip
            return cls(fns, name, parallel_tool_calls)
        raise ToolError(
            f"tool_choice must be 'auto', 'none', 'required' or a function, not {choice!r}", choice_param
        )

    @property
    def tools(self) -> list[dict]:
        """The tools as OpenAI writes them (for a chat template)."""
        return [{"type": "function", "function": f} for f in self.functions]

    # -- the prompt ----------------------------------------------------------------------------

    def instructions(self) -> str:
        listed = json.dumps(
            [{k: f[k] for k in ("name", "description", "parameters") if k in f} for f in self.functions]
        )
        must = {None: "", "*": "You must call at least one function. "}.get(
            self.forced, f"You must call the function {self.forced}. "
        )
        return (
            f"You can call these functions:\n{listed}\n{must}To call a function, reply with "
            f"{self.syntax.example()} (one block per call); otherwise reply with text."
        )

    def instructed(self, messages: Sequence[dict]) -> list[dict]:
        """``messages`` for a prompt without the template's own tool support: the tools
        described in the system message, earlier calls and results written as text."""
        out: list[dict] = []
        for m in messages:
            role = m.get("role")
            if role == "assistant" and m.get("tool_calls"):
                calls = "".join(
                    self.syntax.write(c.get("function", {}).get("name"), arguments_of(c), c.get("id", ""))
                    for c in m["tool_calls"]
                )
                out.append({"role": "assistant", "content": (m.get("content") or "") + calls})
            elif role == "tool":
                out.append(
                    {"role": "user", "content": f"<tool_response>{m.get('content') or ''}</tool_response>"}
                )
            else:
                out.append(dict(m))
        system = next((i for i, m in enumerate(out) if m.get("role") == "system"), None)
        if system is None:
            return [{"role": "system", "content": self.instructions()}, *out]
        content = out[system].get("content") or ""
        out[system] = {**out[system], "content": f"{content}\n\n{self.instructions()}".lstrip()}
        return out

    # -- the grammar ---------------------------------------------------------------------------

    def call_grammar(self, tokenizer: Tokenizer | None = None) -> LlamaGrammar:
        """Calls only, in the syntax's form: once or, when parallel, repeatedly; each is
        {"name", arguments} of one of the functions. With ``tokenizer``, a marker that is one of
        its control tokens is accepted as that token (and as text)."""
        chosen = [f for f in self.functions if self.forced in (None, "*", f["name"])]
        calls = [self.syntax.call_schema(f["name"], closed_objects(f["parameters"])) for f in chosen]
        lark = self.syntax.grammar_text(tokenizer, {"anyOf": calls}, self.parallel)
        try:
            return LlamaGrammar(llguidance.LLMatcher.grammar_from_lark(lark), lark, "tool call grammar")
        except GrammarError as e:
            raise ToolError(f"the tools' parameter schemas do not compile: {e}") from None

    def grammar(self, tokenizer: Tokenizer | None = None) -> LlamaGrammar | LazyToolGrammar:
        """Forced choices: the call grammar from the first token; auto: switched on when the
        model starts a call. Each ``.constraint()`` of it (one per generation) keeps its own
        state, so one grammar serves several choices at once."""
        calls = self.call_grammar(tokenizer)
        return calls if self.forced is not None else LazyToolGrammar(calls, self.syntax)

    # -- the answer ----------------------------------------------------------------------------

    def parse(self, text: str) -> list[dict]:
        """The complete calls in ``text`` (of functions among the tools), as OpenAI's
        ``tool_calls``; a call keeps the model's own id where the syntax has one."""
        names = {f["name"] for f in self.functions}
        return [
            {
                "id": call_id if self.syntax.keeps_id(call_id) else self.syntax.new_id(),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
            for name, arguments, call_id in self.syntax.parse(text)
            if name in names
        ]

    def message(self, text: str, finish: str | None) -> tuple[dict, str | None]:
        """(message, finish_reason) of a whole answer."""
        calls = self.parse(text)
        if not calls:
            return {"role": "assistant", "content": text}, finish
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        if len(calls) == 1:  # llama-cpp-python also fills the legacy field
            message["function_call"] = dict(calls[0]["function"])
        return message, "tool_calls"

    def chunks(self, meta: dict, pieces: Iterator[Any], logprobs: bool) -> Iterator[dict]:
        """The streamed answer of ``pieces`` (ferrollm.llama.Piece) as OpenAI's chunks."""
        from ferrollm.generate.logprobs import chat_shape

        def chunk(delta: dict, finish: str | None, entries: list = ()) -> dict:
            shaped = chat_shape(entries) if logprobs and entries else None
            choice = {"index": 0, "delta": delta, "logprobs": shaped, "finish_reason": finish}
            return {**meta, "object": "chat.completion.chunk", "choices": [choice]}

        stream = CallStream(self)
        yield chunk(stream.opening(), None)
        for piece in pieces:
            for delta, finish, entries in stream.push(piece.text, piece.logprobs, piece.finish):
                yield chunk(delta, finish, entries)


class CallStream:
    """One streamed answer as OpenAI's chat deltas, fed text as it is generated: text goes out
    as ``content`` once the model has chosen text, each call as one ``tool_calls`` delta (with
    its ``index``) when its closing tag arrives. Used by ``ToolCalling.chunks`` and the server."""

    def __init__(self, calling: ToolCalling):
        self.calling = calling
        self.text = ""  # all of the answer so far
        self.sent_calls = 0
        self.held, self.held_entries = "", []  # text that may still become a call
        self.is_text = False
        self._names = tuple(f["name"] for f in calling.functions)  # a call may open with one

    @staticmethod
    def opening() -> dict:
        return {"role": "assistant", "content": None}

    def push(self, text: str, entries: list, finish: str | None) -> list[tuple[dict, str | None, list]]:
        """The (delta, finish_reason, log-probability entries) to send for the next piece of
        text; ``finish`` set on the last one."""
        out: list[tuple[dict, str | None, list]] = []
        self.text += text
        if (
            not self.is_text
            and self.calling.forced is None
            and self.calling.syntax.opening(self.text, self._names) == "text"
        ):
            self.is_text = True
        if self.is_text:
            if self.held + text or entries:
                out.append(({"content": self.held + text}, None, self.held_entries + list(entries)))
            self.held, self.held_entries = "", []
        else:
            self.held += text
            self.held_entries += entries
            calls = self.calling.parse(self.text)
            for i in range(self.sent_calls, len(calls)):
                out.append(({"tool_calls": [{"index": i, **calls[i]}]}, None, []))
            self.sent_calls = len(calls)
        if finish:
            if not self.is_text and not self.sent_calls and self.held:  # never became a call: text
                out.append(({"content": self.held}, None, self.held_entries))
            out.append(({}, "tool_calls" if self.sent_calls else finish, []))
        return out


class LazyToolGrammar:
    """For ``tool_choice="auto"``: no constraint while the text may still become a call; the
    call grammar from the moment the text (after blank space) starts with one of the syntax's
    openings (``<tool_call>`` for Hermes)."""

    def __init__(self, calls: LlamaGrammar, syntax: CallSyntax = HERMES):
        self.calls = calls
        self.syntax = syntax

    def constraint(self, tokenizer: Tokenizer) -> LazyConstraint:
        return LazyConstraint(self.calls, tokenizer, self.syntax)


class LazyConstraint:
    """One generation's state under a LazyToolGrammar."""

    def __init__(self, calls: LlamaGrammar, tokenizer: Tokenizer, syntax: CallSyntax = HERMES):
        self._calls = calls
        self._tokenizer = tokenizer
        self._syntax = syntax
        self._tokens: list[int] = []
        self._inner: Constraint | None = None
        self.state = "open"  # "open" (undecided), "text" or "call"

    def allows(self, token: int) -> bool:
        return self._inner.allows(token) if self._inner is not None else True

    def take(self, token: int) -> bool:
        if self._inner is not None:
            return self._inner.take(token)
        self.accept(token)
        return True

    def forced(self, limit: int | None = None) -> list[int]:
        return self._inner.forced(limit) if self._inner is not None else []

    def mask(self, logits: np.ndarray) -> np.ndarray:
        return self._inner.mask(logits) if self._inner is not None else logits

    def accept(self, token: int) -> None:
        if self._inner is not None:
            self._inner.accept(token)
            return
        if self.state == "text":
            return
        self._tokens.append(token)
        # special=True: a marker that is a control token ([TOOL_CALLS]) shows as its text
        self.state = self._syntax.opening(self._tokenizer.decode(self._tokens, special=True))
        if self.state == "call":
            inner = self._calls.constraint(self._tokenizer)
            if inner.accept_all(self._tokens):
                self._inner = inner
            else:  # e.g. "<tool_call>" followed by something the grammar refuses: text after all
                self.state = "text"
