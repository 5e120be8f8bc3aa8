"""The real chat templates that ship with llama.cpp (``models/templates/*.jinja`` in the
llama-cpp-python sdist) rendered by ferrollm, and (marker ``peer``) compared with
llama-cpp-python's Jinja2ChatFormatter on the same conversations: system + user, a multi-turn
exchange, a lone user turn and a request with tools, each with and without the generation
prompt. Skipped when the sdist is absent (FERROLLM_LLAMA_CPP_DIR).

The table (template: equal / differs / peer fails):  python tests/test_chat_templates.py
"""

from __future__ import annotations

from functools import cache

import pytest
from ferrollm.text.chat import ChatTemplateError, JinjaTemplate
from support.sdist import TEMPLATES, needs_sdist, source

BOS, EOS = "<s>", "</s>"

# Contents with what escaping would change: markup, quotes, non-ASCII.
SYSTEM = {"role": "system", "content": 'You are terse. Use <b> & "quotes".'}
USER = {"role": "user", "content": "Hello, what's 2+2? — ünïcode 🦙"}
ANSWER = {"role": "assistant", "content": "4."}
USER2 = {"role": "user", "content": "And 3+3?"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now> & later",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City"}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATIONS = {
    "system+user": ([SYSTEM, USER], None),
    "multi-turn": ([SYSTEM, USER, ANSWER, USER2], None),
    "user": ([USER], None),
    "tools": ([USER], TOOLS),
}
# Variables a template needs beyond llama-cpp-python's (passed to both renderers).
EXTRA = {"fireworks-ai-llama-3-firefunction-v2.jinja": {"functions": "[]", "datetime": "2024-07-26"}}


@cache
def template(name: str) -> JinjaTemplate:
    return JinjaTemplate(source(name))


def ours(name: str, conversation: str, add_generation_prompt: bool) -> str:
    messages, tools = CONVERSATIONS[conversation]
    return template(name)(
        messages, BOS, EOS, tools=tools, add_generation_prompt=add_generation_prompt, **EXTRA.get(name, {})
    ).text


def theirs(name: str, conversation: str, add_generation_prompt: bool) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages, tools = CONVERSATIONS[conversation]
    formatter = Jinja2ChatFormatter(
        source(name), eos_token=EOS, bos_token=BOS, add_generation_prompt=add_generation_prompt
    )
    return formatter(messages=messages, tools=tools, **EXTRA.get(name, {})).prompt


def compare(name: str, conversation: str, add_generation_prompt: bool) -> tuple[str, str]:
    """("equal" | "refused" | "differs" | "peer fails", detail)."""
    try:
        want = theirs(name, conversation, add_generation_prompt)
    except ValueError as e:  # the template's raise_exception: a conversation it refuses
        try:
            ours(name, conversation, add_generation_prompt)
        except ChatTemplateError as mine:
            return ("refused", str(e)) if str(e) in str(mine) else ("differs", f"{e} / {mine}")
        return "differs", f"llama-cpp-python refuses ({e}), ferrollm renders"
    except Exception as e:  # noqa: BLE001 - any failure of the peer's renderer is reported
        return "peer fails", f"{type(e).__name__}: {e}"
    try:
        got = ours(name, conversation, add_generation_prompt)
    except ChatTemplateError as e:
        return "differs", f"ferrollm fails: {e}"
    return ("equal", "") if got == want else ("differs", f"{got[:200]!r} != {want[:200]!r}")


@needs_sdist
@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_renders(name):
    """Each template renders some of the conversations; where it refuses one, the refusal is
    a ChatTemplateError (the tool-use templates need tools; Gemma 2 has no system role)."""
    rendered = 0
    for conversation in CONVERSATIONS:
        try:
            text = ours(name, conversation, add_generation_prompt=True)
        except ChatTemplateError:
            continue
        assert "3+3" in text or "2+2" in text
        rendered += 1
    assert rendered, f"{name} renders none of {list(CONVERSATIONS)}"


@pytest.mark.peer
@needs_sdist
@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_same_text_as_llama_cpp_python(name, conversation, add_generation_prompt):
    pytest.importorskip("llama_cpp")
    status, detail = compare(name, conversation, add_generation_prompt)
    if status == "peer fails":
        with pytest.raises(ChatTemplateError):  # ferrollm fails too, with its own error type
            ours(name, conversation, add_generation_prompt)
        pytest.xfail(f"llama-cpp-python's formatter fails on this template: {detail}")
    assert status in ("equal", "refused"), detail


if __name__ == "__main__":
    print(f"{'template':<56} " + "  ".join(f"{c:<12}" for c in CONVERSATIONS))
    for name in TEMPLATES:
        cells = []
        for conversation in CONVERSATIONS:
            results = {compare(name, conversation, g)[0] for g in (True, False)}
            cells.append("/".join(sorted(results)))
        print(f"{name:<56} " + "  ".join(f"{c:<12}" for c in cells))
