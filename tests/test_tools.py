"""Tool calls in create_chat_completion on the embedded model: OpenAI's response shape
(streamed and not), tool_choice auto / none / required / named, arguments that validate
against the function's schema, the built-in prompt format and a chat template's own, and
clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ferrollm import Llama, LogitsProcessorList, demo_model_path
from ferrollm.generate.tools import OPEN, ToolCalling, ToolError
from ferrollm.text.chat import JinjaTemplate
from support.tool_cases import MESSAGES, NAMED, TOOLS, check_call


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=512, seed=2, verbose=False)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_named_tool_choice_forces_one_valid_call(llm, temperature):
    out = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=120,
                                     temperature=temperature, seed=4)  # fmt: skip
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    assert len(message["tool_calls"]) == 1
    check_call(message["tool_calls"][0], "get_weather")
    assert message["function_call"] == message["tool_calls"][0]["function"]  # llama-cpp-python's legacy field


def test_required_gives_calls(llm):
    out = llm.create_chat_completion(
        MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
    )
    calls = out["choices"][0]["message"]["tool_calls"]
    assert calls and out["choices"][0]["finish_reason"] == "tool_calls"
    for call in calls:
        check_call(call)


def test_streamed_call(llm):
    chunks = list(llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=120,
                                             temperature=0, stream=True))  # fmt: skip
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert len(deltas) == 1 and deltas[0]["index"] == 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    whole = llm.create_chat_completion(
        MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=120, temperature=0
    )
    call = {k: v for k, v in deltas[0].items() if k != "index"}
    assert check_call(call) == json.loads(
        whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    )


def test_none_and_auto_answer_with_text(llm):
    for choice in ("none", "auto"):
        out = llm.create_chat_completion(
            MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=8, temperature=0
        )
        message = out["choices"][0]["message"]
        assert "tool_calls" not in message and isinstance(message["content"], str)
        assert out["choices"][0]["finish_reason"] in ("stop", "length")


def _forcing(llm: Llama, text: str) -> LogitsProcessorList:
    """A processor that makes the model start its answer with ``text``."""
    forced = llm.tokenizer_.encode_text(text, space_prefix=False)
    start: list[int] = []

    def force(input_ids, scores):
        if not start:
            start.append(len(input_ids))
        i = len(input_ids) - start[0]
        if i < len(forced):
            out = np.full_like(scores, -np.inf)
            out[forced[i]] = 0.0
            return out
        return scores

    return LogitsProcessorList([force])


def test_auto_switches_the_grammar_on_when_the_model_opens_a_call(llm):
    for stream in (False, True):
        out = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=80, temperature=0,
                                         logits_processor=_forcing(llm, " " + OPEN), stream=stream,
                                         parallel_tool_calls=False)  # fmt: skip
        if stream:
            chunks = list(out)
            calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
            assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            calls, finish = out["choices"][0]["message"]["tool_calls"], out["choices"][0]["finish_reason"]
        assert calls and finish == "tool_calls"
        for call in calls:
            check_call({k: v for k, v in call.items() if k != "index"})


def test_auto_text_that_starts_like_a_call_streams_as_text(llm):
    chunks = list(llm.create_chat_completion(MESSAGES, tools=TOOLS, max_tokens=6, temperature=0, stream=True,
                                             logits_processor=_forcing(llm, "<tool")))  # fmt: skip
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.startswith("<tool") and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_builtin_prompt_describes_the_tools(llm):
    calling = ToolCalling.from_request(TOOLS, "auto")
    messages = calling.instructed([
        {"role": "system", "content": "Be brief."},
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ])  # fmt: skip
    prompt = llm.chat_prompt(messages).text
    assert "get_weather" in prompt and "Weather now" in prompt and "Be brief." in prompt
    assert f'{OPEN}{{"name": "get_weather", "arguments": {{"city": "Paris", "unit": "celsius"}}}}' in prompt
    assert "<tool_response>21 C</tool_response>" in prompt


def test_a_template_that_renders_tools_gets_them(llm, monkeypatch):
    template = JinjaTemplate(
        "{% if tools %}[AVAILABLE]{{ tools | map(attribute='function.name') | join(',') }}[/AVAILABLE]{% endif %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
    )
    monkeypatch.setattr(llm, "_formatter", template)
    prompts = []
    original = llm.prompt_tokens

    def spy(text, special=False):
        prompts.append(text)
        return original(text, special)

    monkeypatch.setattr(llm, "prompt_tokens", spy)
    out = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=120, temperature=0)
    assert prompts[-1].startswith("[AVAILABLE]get_weather,get_time[/AVAILABLE][user]What is")
    assert "You can call" not in prompts[-1]
    check_call(out["choices"][0]["message"]["tool_calls"][0], "get_weather")


@pytest.mark.parametrize(
    "tools, tool_choice, message",
    [
        (TOOLS, {"type": "function", "function": {"name": "launch_rocket"}}, "launch_rocket"),
        (TOOLS, "sometimes", "tool_choice must be"),
        (None, "required", "needs tools"),
        ([{"type": "function", "function": {}}], "auto", "needs a 'name'"),
        (TOOLS + TOOLS[:1], "auto", "twice"),
    ],
)
def test_bad_tool_requests(llm, tools, tool_choice, message):
    with pytest.raises(ToolError, match=message) as info:
        llm.create_chat_completion(MESSAGES, tools=tools, tool_choice=tool_choice, max_tokens=4)
    assert isinstance(info.value, ValueError)


def test_legacy_functions(llm):
    out = llm.create_chat_completion(MESSAGES, functions=[TOOLS[0]["function"]], function_call={"name": "get_weather"},
                                     max_tokens=120, temperature=0)  # fmt: skip
    assert out["choices"][0]["message"]["function_call"]["name"] == "get_weather"


def test_constraints_of_one_auto_grammar_keep_their_own_state(llm):
    """The server gives each of n choices a constraint of the same grammar: one choosing a
    call must not switch the other's answer (text) to the call grammar, nor the reverse."""
    grammar = ToolCalling.from_request(TOOLS, "auto").grammar()
    call, text = grammar.constraint(llm.tokenizer_), grammar.constraint(llm.tokenizer_)
    encode = lambda s: llm.tokenizer_.encode_text(s, space_prefix=False)
    for token in encode(OPEN):
        assert call.take(token)
    for token in encode("Sunny, I think"):
        assert text.take(token)
    assert (call.state, text.state) == ("call", "text")
    assert grammar.constraint(llm.tokenizer_).state == "open" and call.state == "call"
    assert not call.allows(encode("Sunny")[0]) and text.allows(encode("{")[0])
