"""Tool calls through `ferrollm serve`'s /v1/chat/completions, with the official `openai`
client and raw HTTP on the embedded model: tool_choice named / required / auto / none,
streamed and not, a tool-result round trip, n=2, and OpenAI-style 400s. Answers have the
shape Llama.create_chat_completion gives for the same request, from the same prompt."""

from __future__ import annotations

import json

import httpx
import pytest
from ferrollm import Llama, demo_model_path
from support.server import Server
from support.tool_cases import MESSAGES, NAMED, TOOLS, check_call

ROUND_TRIP = [
    *MESSAGES,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C and sunny"},
]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    s = Server("-np", "2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=512, verbose=False)


def _check_choice(choice: dict) -> None:
    """A valid answer either way: calls (content null) or text."""
    message = choice["message"]
    assert message["role"] == "assistant"
    if message.get("tool_calls"):
        assert message["content"] is None and choice["finish_reason"] == "tool_calls"
        for call in message["tool_calls"]:
            check_call(call)
    else:
        assert isinstance(message["content"], str) and choice["finish_reason"] in ("stop", "length")


def _same_shape(got: dict, want: dict) -> None:
    """The server's answer and Llama.create_chat_completion's for one request: the same fields,
    the same kind of answer, the same prompt."""
    g, w = got["choices"][0], want["choices"][0]
    assert set(g) == set(w) and set(g["message"]) == set(w["message"])
    assert g["finish_reason"] == w["finish_reason"]
    assert (g["message"]["content"] is None) == (w["message"]["content"] is None)
    assert got["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]


def _chat(server: Server, **body) -> dict:
    r = server.post("/v1/chat/completions", {"model": "demo", **body})
    assert r.status_code == 200, r.text
    return r.json()


def _streamed_calls(chunks) -> tuple[dict[int, dict[int, dict]], dict[int, str]]:
    """Per choice: the calls (by index, fragments joined as OpenAI's clients do) and the finish."""
    calls: dict[int, dict[int, dict]] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(choice.index, {}).setdefault(
                    d.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                call["id"] += d.id or ""
                call["function"]["name"] += d.function.name or ""
                call["function"]["arguments"] += d.function.arguments or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return calls, finish


def _raw_stream(server: Server, body: dict) -> list[dict]:
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as r:
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(x[6:]) for x in lines[:-1]]


def _outline(chunk: dict) -> tuple:
    """A chunk's fields, without the values that differ between runs."""
    choice = chunk["choices"][0]
    calls = [sorted(c) for c in choice["delta"].get("tool_calls") or []]
    return (
        sorted(chunk),
        chunk["object"],
        sorted(choice),
        sorted(choice["delta"]),
        calls,
        choice["finish_reason"],
    )


def test_named_function_streamed_and_not(server, llm):
    request = {
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": NAMED,
        "max_tokens": 120,
        "temperature": 0,
    }
    got = _chat(server, **request)
    choice = got["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert len(choice["message"]["tool_calls"]) == 1
    arguments = check_call(choice["message"]["tool_calls"][0], "get_weather")
    _same_shape(got, llm.create_chat_completion(**request))

    client = server.client()
    r = client.chat.completions.create(model="demo", **request)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls[0].id.startswith(
        "call_"
    )
    chunks = list(client.chat.completions.create(model="demo", stream=True, **request))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not any(c.choices[0].delta.content for c in chunks)
    calls, finish = _streamed_calls(chunks)
    assert finish == {0: "tool_calls"} and list(calls[0]) == [0]
    assert check_call(calls[0][0], "get_weather") == arguments
    # The same chunks, field for field, as Llama.create_chat_completion's stream.
    want = list(llm.create_chat_completion(stream=True, **request))
    assert [_outline(c) for c in _raw_stream(server, request)] == [_outline(c) for c in want]


def test_required_gives_valid_calls(server, llm):
    request = {
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 80,
        "temperature": 0,
    }
    got = _chat(server, **request)
    assert got["choices"][0]["message"]["tool_calls"]
    _check_choice(got["choices"][0])
    _same_shape(got, llm.create_chat_completion(**request))


def test_auto_answers_in_a_valid_shape(server, llm):
    request = {"messages": MESSAGES, "tools": TOOLS, "max_tokens": 24, "temperature": 0}
    got = _chat(server, **request)
    _check_choice(got["choices"][0])
    _same_shape(got, llm.create_chat_completion(**request))
    chunks = list(server.client().chat.completions.create(model="demo", stream=True, **request))
    calls, finish = _streamed_calls(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    if calls:
        assert finish == {0: "tool_calls"} and not text
    else:
        assert finish[0] in ("stop", "length") and text == got["choices"][0]["message"]["content"]


def test_none_answers_with_text(server, llm):
    request = {"messages": MESSAGES, "tools": TOOLS, "tool_choice": "none", "max_tokens": 8, "temperature": 0}
    got = _chat(server, **request)
    message = got["choices"][0]["message"]
    assert set(message) == {"role", "content"} and isinstance(message["content"], str)
    # No tools in the prompt: the same prompt as without them.
    plain = _chat(server, messages=MESSAGES, max_tokens=1)
    assert got["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    _same_shape(got, llm.create_chat_completion(**request))


def test_tool_result_round_trip(server, llm):
    request = {"messages": ROUND_TRIP, "tools": TOOLS, "max_tokens": 16, "temperature": 0}
    got = _chat(server, **request)
    _check_choice(got["choices"][0])
    # The earlier call and its result are in the prompt, as Llama renders them.
    want = llm.create_chat_completion(**request)
    assert got["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]
    without = _chat(server, messages=MESSAGES, tools=TOOLS, max_tokens=1)
    assert got["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 10
    r = server.client().chat.completions.create(model="demo", messages=ROUND_TRIP, tools=TOOLS, max_tokens=4)
    assert r.choices[0].message.role == "assistant"


def test_n2_each_choice_gets_its_own_constraint(server):
    base = {"messages": MESSAGES, "tools": TOOLS, "max_tokens": 80, "temperature": 0.9, "seed": 3, "n": 2}
    got = _chat(server, tool_choice=NAMED, **base)
    assert [c["index"] for c in got["choices"]] == [0, 1]
    for choice in got["choices"]:
        assert choice["finish_reason"] == "tool_calls"
        check_call(choice["message"]["tool_calls"][0], "get_weather")
    # auto: one lazy grammar, two generations deciding on their own.
    for choice in _chat(server, **base)["choices"]:
        _check_choice(choice)
    chunks = list(
        server.client().chat.completions.create(
            model="demo", stream=True, tool_choice=NAMED, stream_options={"include_usage": True}, **base
        )
    )
    calls, finish = _streamed_calls(chunks)
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    for i in (0, 1):
        check_call(calls[i][0], "get_weather")
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens > 2 * 10


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": TOOLS + TOOLS[:1]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]}, "tools"),
        ({"functions": [TOOLS[0]["function"]], "function_call": {"name": "launch"}}, "function_call"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages"),
    ],
)
def test_bad_tool_requests_are_400(server, body, param):
    r = server.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"].split(".")[0] == param, err


def test_legacy_functions(server):
    got = _chat(server, messages=MESSAGES, functions=[TOOLS[0]["function"]], function_call={"name": "get_weather"},
                max_tokens=120, temperature=0)  # fmt: skip
    message = got["choices"][0]["message"]
    assert message["function_call"]["name"] == "get_weather"
    check_call(message["tool_calls"][0], "get_weather")


def test_an_answer_sent_back_as_it_came_continues_the_conversation(server):
    """Our one-call answer carries the legacy function_call beside tool_calls (as
    llama-cpp-python's does); sent back unchanged, with its result as a legacy "function"
    message, the conversation goes on."""
    got = _chat(server, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=120, temperature=0)
    answer = got["choices"][0]["message"]
    assert answer["function_call"] and answer["tool_calls"]
    result = {"role": "tool", "tool_call_id": answer["tool_calls"][0]["id"], "content": '{"temp": 21}'}
    legacy = {"role": "function", "name": "get_weather", "content": '{"temp": 21}'}
    for follow in (result, legacy):
        r = server.post("/v1/chat/completions", {"messages": [*MESSAGES, answer, follow], "tools": TOOLS,
                                                 "max_tokens": 4})  # fmt: skip
        assert r.status_code == 200, r.text
    only_legacy = {"role": "assistant", "content": None, "function_call": answer["function_call"]}
    r = server.post("/v1/chat/completions", {"messages": [*MESSAGES, only_legacy, legacy], "max_tokens": 4})
    assert r.status_code == 200, r.text
    bad = {"role": "user", "content": "x", "function_call": answer["function_call"]}
    assert server.post("/v1/chat/completions", {"messages": [bad], "max_tokens": 4}).status_code == 400
