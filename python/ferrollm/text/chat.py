"""Chat prompts: the GGUF's own Jinja template (``tokenizer.chat_template``, rendered in a
sandbox) or a built-in format for files without one.

Built-in formats (names as in llama-cpp-python's ``chat_format``):

* ``llama-2`` / ``mistral-instruct``: ``<s>[INST] user [/INST] answer</s>[INST] ...``
* ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>``
* ``cerebrum``: the Cerebrum 8x7B card's template; earlier AI turns are joined without EOS,
  as the card asks ("this token should be removed from the model answer").
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict

CEREBRUM_PREAMBLE = (
    "A chat between a user and a thinking artificial intelligence assistant. The assistant describes "
    "its thought process and gives helpful and detailed answers to the user's questions."
)


class ChatTemplateError(ValueError):
    """A chat template failed to render, or the messages do not fit the format."""


@dataclass
class ChatPrompt:
    text: str
    # Strings that end the assistant's turn (besides EOS).
    stop: list[str]


def _check(messages: Sequence[Message]) -> None:
    if not messages:
        raise ChatTemplateError("no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ChatTemplateError(f"message {i} needs a 'role' (got {m!r})")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise ChatTemplateError(f"message {i}: unknown role {m['role']!r}")
        parts = m.get("content")
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                # Dropping it would answer a prompt the user did not send.
                raise ChatTemplateError(
                    f"message {i}, content part {j}: a {kind or type(part).__name__!r} part needs a vision or "
                    "audio projector, which this model does not have (ferrollm runs text-only models): send "
                    "text parts only"
                )


def _content(m: Message) -> str:
    c = m.get("content") or ""
    if isinstance(c, list):  # OpenAI content parts: keep the text ones
        c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c)


def format_llama2(messages: Sequence[Message], bos: str, eos: str) -> ChatPrompt:
    system = "".join(_content(m) for m in messages if m["role"] == "system")
    out, first_user = [], True
    for m in messages:
        if m["role"] == "user":
            text = _content(m)
            if first_user and system:
                text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
            first_user = False
            out.append(f"{bos}[INST] {text} [/INST]")
        elif m["role"] == "assistant":
            out.append(f" {_content(m)}{eos}")
    return ChatPrompt("".join(out), [])


def format_mistral(messages: Sequence[Message], bos: str, eos: str) -> ChatPrompt:
    out = [bos]
    system = "".join(_content(m) + "\n\n" for m in messages if m["role"] == "system")
    for m in messages:
        if m["role"] == "user":
            out.append(f"[INST] {system}{_content(m)} [/INST]")
            system = ""
        elif m["role"] == "assistant":
            out.append(f"{_content(m)}{eos}")
    return ChatPrompt("".join(out), [])


def format_chatml(messages: Sequence[Message], bos: str, eos: str) -> ChatPrompt:
    text = "".join(f"<|im_start|>{m['role']}\n{_content(m)}<|im_end|>\n" for m in messages)
    return ChatPrompt(text + "<|im_start|>assistant\n", ["<|im_end|>"])


def format_cerebrum(messages: Sequence[Message], bos: str, eos: str) -> ChatPrompt:
    system = " ".join(_content(m).strip() for m in messages if m["role"] == "system") or CEREBRUM_PREAMBLE
    out = [bos + system]
    for m in messages:
        if m["role"] == "user":
            out.append(f"\nUser: {_content(m).strip()}")
        elif m["role"] == "assistant":
            answer = _content(m).strip()
            if eos and answer.endswith(eos):
                answer = answer[: -len(eos)].rstrip()
            out.append(f"\nAI: {answer}")
    out.append("\nAI:")
    return ChatPrompt("".join(out), ["\nUser:"])


BUILTIN_FORMATS: dict[str, Callable[[Sequence[Message], str, str], ChatPrompt]] = {
    "llama-2": format_llama2,
    "mistral-instruct": format_mistral,
    "chatml": format_chatml,
    # llama-cpp-python's name for chatml with tools; ferrollm.generate.tools handles tools for every format
    "chatml-function-calling": format_chatml,
    "cerebrum": format_cerebrum,
}


def _raise(message: str):
    raise ChatTemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
):
    # Transformers' (and llama-cpp-python's) tojson: plain json.dumps, keys in their order and
    # no HTML escaping (Jinja's own sorts keys and escapes <, > and &).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationTag(Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}`` (marks the assistant's tokens
    for training masks): renders its body."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class JinjaTemplate:
    """A ``tokenizer.chat_template`` string, compiled once in an immutable sandbox, rendered as
    llama-cpp-python's Jinja2ChatFormatter renders it (the environment of Transformers' chat
    templates: ``{% break %}``/``{% continue %}``, ``{% generation %}``, its ``tojson``; the
    variables ``raise_exception``, ``strftime_now``, and ``tools``/``functions`` None unless
    given)."""

    def __init__(self, source: str):
        self.source = source  # what ferrollm.generate.tool_syntax reads the template's call syntax from
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise ChatTemplateError(f"the file's chat template does not compile: {e}") from e

    def __call__(
        self,
        messages: Sequence[Message],
        bos: str,
        eos: str,
        tools: list | None = None,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> ChatPrompt:
        """``variables``: more names for the template (a template may want e.g. ``documents``
        or ``functions``), as Transformers' and llama-cpp-python's renderers take them."""
        context = {"tool_choice": None, "functions": None, "function_call": None, **variables}
        try:
            text = self._template.render(
                context,
                messages=list(messages),
                bos_token=bos,
                eos_token=eos,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
            )
        except ChatTemplateError:
            raise
        except Exception as e:  # a template may fail in any way; the user needs the cause
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e
        return ChatPrompt(text, [])


def chat_formatter(chat_format: str | None, file_template: str | None):
    """The formatter for ``chat_format`` (a built-in name), else the file's template, else
    ``llama-2`` (llama-cpp-python's fallback)."""
    if chat_format is not None:
        try:
            return BUILTIN_FORMATS[chat_format]
        except KeyError:
            raise ChatTemplateError(
                f"unknown chat_format {chat_format!r}; built in: {', '.join(BUILTIN_FORMATS)}"
            ) from None
    if file_template:
        return JinjaTemplate(file_template)
    return format_llama2


def render(
    formatter, messages: Sequence[Message], bos: str, eos: str, tools: list | None = None
) -> ChatPrompt:
    """The prompt; ``tools`` (OpenAI's tool list) reach a Jinja template only: the built-in
    formats have no place for them (ferrollm.generate.tools then describes them in a system message)."""
    _check(messages)
    if tools is not None and isinstance(formatter, JinjaTemplate):
        return formatter(messages, bos, eos, tools=tools)
    return formatter(messages, bos, eos)
