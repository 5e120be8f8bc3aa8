"""Tool calls in the syntax a chat template teaches (ferrollm.generate.tool_syntax), with the real
templates that ship with llama.cpp (skipped when the llama-cpp-python sdist is absent):
Mistral Nemo's ``[TOOL_CALLS][...]``, Mistral Small 3.2 / Devstral / Ministral 3's
``[TOOL_CALLS]name[ARGS]{...}``, Llama 3.x's bare ``{"name", "parameters"}`` and
Hermes/Qwen's ``<tool_call>``. For each: the syntax detected from the template, a hand-written
native answer parsed into OpenAI's tool_calls, the grammar accepting it and refusing arguments
that break the schema, and a forced generation on the embedded model (its GGUF copied with the
template, and for Mistral with ``[TOOL_CALLS]`` as control token 5, as in v0.3 vocabularies, and
``[ARGS]`` as control token 6 for the newer syntax)
whose answer is in that syntax, parses, validates, and streams the same."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from ferrollm import Llama, LogitsProcessorList, demo_model_path, gguf
from ferrollm.generate.tool_syntax import DEFAULT, HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, detect
from ferrollm.generate.tools import ToolCalling
from ferrollm.text.tokenizer import CONTROL, Tokenizer
from support.sdist import needs_sdist, source
from support.tool_cases import MESSAGES, NAMED, TOOLS, WEATHER

PARIS = {"city": "Paris", "unit": "celsius"}
KELVIN = {"city": "Paris", "unit": "kelvin"}  # not in the schema's enum
MISTRAL_TOKEN = 5  # [TOOL_CALLS] in Mistral v0.3's vocabulary
ARGS_TOKEN = 6  # [ARGS], a control token in Tekken vocabularies too
# Hermes 2 Pro's template reads every function's description and every parameter's type
TYPED = {
    **WEATHER,
    "properties": {**WEATHER["properties"], "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
}
DESCRIBED = [
    {"type": "function", "function": {**TOOLS[0]["function"], "parameters": TYPED}},
    {"type": "function", "function": {**TOOLS[1]["function"], "description": "The time"}},
]


def _native(syntax_name: str, arguments: dict, marker: bool = True) -> str:
    """A call of get_weather as a model of that family writes it."""
    if syntax_name == "mistral":
        body = json.dumps([{"name": "get_weather", "arguments": arguments, "id": "a1B2c3D4e"}])
        return ("[TOOL_CALLS]" if marker else "") + body
    if syntax_name == "mistral_args":  # both markers are control tokens: not in the decoded text
        return f"[TOOL_CALLS]get_weather[ARGS]{json.dumps(arguments)}" if marker else \
            f"get_weather{json.dumps(arguments)}"  # fmt: skip
    if syntax_name == "llama3":
        return ("<|python_tag|>" if marker else "") + json.dumps(
            {"name": "get_weather", "parameters": arguments}
        )
    return f"<tool_call>\n{json.dumps({'name': 'get_weather', 'arguments': arguments})}\n</tool_call>"


# template: the syntax it teaches (the last four are not ours to recognise: Hermes, the default)
TEMPLATES = {
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3",
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": "mistral_args",  # name[CALL_ID]id[ARGS]{...} back
    "unsloth-mistral-Devstral-Small-2507.jinja": "mistral_args",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral_args",
    "meetkai-functionary-medium-v3.1.jinja": "hermes",  # Llama 3's header, <function=...> calls
    "google-gemma-2-2b-it.jinja": "hermes",  # no tools at all
}
GENERATED = [name for name, syntax in TEMPLATES.items() if syntax != "hermes"][:2] + [
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
]
SMALL_32 = "Mistral-Small-3.2-24B-Instruct-2506.jinja"


@needs_sdist
@pytest.mark.parametrize("name", TEMPLATES)
def test_the_syntax_is_recognised_from_the_template(name):
    assert detect(source(name)).name == TEMPLATES[name]


def test_no_template_means_hermes():
    assert detect(None) is DEFAULT is HERMES and detect("{{ messages }}") is HERMES


def _weather_calls(calls: list[dict]) -> list[dict]:
    out = []
    for call in calls:
        assert call["type"] == "function" and call["function"]["name"] == "get_weather"
        assert isinstance(call["function"]["arguments"], str)
        out.append(json.loads(call["function"]["arguments"]))
    return out


@needs_sdist
@pytest.mark.parametrize("name", TEMPLATES)
def test_a_native_answer_parses_into_tool_calls(name):
    calling = ToolCalling.from_request(TOOLS, "auto").using(detect(source(name)))
    for marker in (True, False):  # a control-token marker is not in the decoded text
        answer = "  " + _native(TEMPLATES[name], PARIS, marker)
        if not marker and calling.syntax is HERMES:
            continue
        calls = calling.parse(answer)
        assert _weather_calls(calls) == [PARIS]
        message, finish = calling.message(answer, "stop")
        assert finish == "tool_calls" and message["content"] is None and message["tool_calls"][0]["function"]
    assert calling.parse("The weather in Paris is fine.") == []


def test_call_ids_fit_the_syntax():
    mistral = ToolCalling.from_request(TOOLS, "auto").using(MISTRAL)
    kept, *_ = mistral.parse(_native("mistral", PARIS))
    assert kept["id"] == "a1B2c3D4e"  # the model's own: the template checks it on the next turn
    made, *_ = mistral.parse('[TOOL_CALLS][{"name": "get_time", "arguments": {}}]')
    assert len(made["id"]) == 9 and made["id"].isalnum()
    for syntax in (HERMES, LLAMA3):
        call, *_ = ToolCalling.from_request(TOOLS, "auto").using(syntax).parse(_native(syntax.name, PARIS))
        assert call["id"].startswith("call_")


def test_parallel_calls_in_one_mistral_array():
    calling = ToolCalling.from_request(TOOLS, "required").using(MISTRAL)
    answer = '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": ' \
        + json.dumps(PARIS) + "}]"  # fmt: skip
    assert [c["function"]["name"] for c in calling.parse(answer)] == ["get_time", "get_weather"]
    assert calling.parallel and not ToolCalling.from_request(TOOLS, "required").using(LLAMA3).parallel


@pytest.mark.parametrize("marker", [True, False], ids=["text-markers", "control-tokens"])
def test_mistral_args_calls_parse_one_after_another(marker):
    """``[TOOL_CALLS]name[ARGS]{...}`` per call, back to back (with the markers as control
    tokens the decoded text is ``name{...}name{...}``); Small 3.2's ``[CALL_ID]`` id is kept."""
    calling = ToolCalling.from_request(TOOLS, "required").using(MISTRAL_ARGS)
    one = " " + _native("mistral_args", PARIS, marker) + "\n"
    assert _weather_calls(calling.parse(one)) == [PARIS]
    first = "[TOOL_CALLS]get_time[ARGS]{}" if marker else "get_time{}"
    two = first + _native("mistral_args", PARIS, marker)
    calls = calling.parse(two)
    assert [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[1]["function"]["arguments"]) == PARIS
    assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)  # the template takes them back
    with_id, *_ = calling.parse("[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]" + json.dumps(PARIS))
    assert with_id["id"] == "a1B2c3D4e" and json.loads(with_id["function"]["arguments"]) == PARIS
    assert calling.parse("get_weather is a function") == [] and calling.parse("Hi {}") == []
    for start in ("get_weather{", "get_weather[ARGS]", "[TOOL_CALLS]"):
        assert MISTRAL_ARGS.opening(start, ("get_weather",)) == "call"
    assert MISTRAL_ARGS.opening("get_weat", ("get_weather",)) == "open"
    assert MISTRAL_ARGS.opening("get_weather{") == "text"  # a call opens with a function's name only
    assert MISTRAL.opening("get_weather{", ("get_weather",)) == "text"


# -- grammars ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_metadata() -> dict:
    return dict(gguf.open(demo_model_path()).metadata)


def _mistral_vocabulary(metadata: dict, args: bool = False) -> dict:
    """The demo model's metadata with token 5 the control token ``[TOOL_CALLS]`` (Mistral v0.3)
    and, with ``args``, token 6 the control token ``[ARGS]`` (Small 3.2, Devstral, Ministral 3)."""
    tokens, types = list(metadata["tokenizer.ggml.tokens"]), list(metadata["tokenizer.ggml.token_type"])
    tokens[MISTRAL_TOKEN], types[MISTRAL_TOKEN] = "[TOOL_CALLS]", CONTROL
    if args:
        tokens[ARGS_TOKEN], types[ARGS_TOKEN] = "[ARGS]", CONTROL
    return {**metadata, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}


def _accepts(grammar, tokenizer: Tokenizer, tokens: list[int]) -> bool:
    constraint = grammar.constraint(tokenizer)
    return constraint.accept_all(tokens) and constraint.is_accepting()


@pytest.mark.parametrize("syntax", [MISTRAL, MISTRAL_ARGS, LLAMA3, HERMES], ids=lambda s: s.name)
@pytest.mark.parametrize("vocabulary", ["demo", "mistral"])
def test_the_grammar_holds_native_calls_to_the_schema(demo_metadata, syntax, vocabulary):
    args = syntax is MISTRAL_ARGS
    metadata = demo_metadata if vocabulary == "demo" else _mistral_vocabulary(demo_metadata, args)
    tokenizer = Tokenizer(metadata)
    encode = lambda s: tokenizer.encode_text(s, space_prefix=False)
    grammar = ToolCalling.from_request(TOOLS, NAMED).using(syntax).grammar(tokenizer)
    assert _accepts(grammar, tokenizer, encode(_native(syntax.name, PARIS)))
    assert not _accepts(grammar, tokenizer, encode(_native(syntax.name, KELVIN)))
    assert not _accepts(grammar, tokenizer, encode("The weather in Paris is fine."))
    if syntax is MISTRAL and vocabulary == "mistral":  # the control token, as the model writes it
        assert f"<[{MISTRAL_TOKEN}]>" in grammar.spec
        body = encode(_native("mistral", PARIS, marker=False))
        assert _accepts(grammar, tokenizer, [MISTRAL_TOKEN, *body])
        assert not _accepts(grammar, tokenizer, [MISTRAL_TOKEN, *encode(_native("mistral", KELVIN, False))])
        lazy = ToolCalling.from_request(TOOLS, "auto").using(MISTRAL).grammar(tokenizer).constraint(tokenizer)
        assert lazy.take(MISTRAL_TOKEN) and lazy.state == "call"  # switched on by the token alone
        assert not lazy.allows(encode("Sunny")[0])
    if syntax is MISTRAL_ARGS:  # several calls back to back when parallel; the name must be a function's
        many = ToolCalling.from_request(TOOLS, "required").using(syntax).grammar(tokenizer)
        two = "[TOOL_CALLS]get_time[ARGS]{}" + _native(syntax.name, PARIS)
        assert _accepts(many, tokenizer, encode(two)) and not _accepts(grammar, tokenizer, encode(two))
        assert not _accepts(many, tokenizer, encode("[TOOL_CALLS]get_date[ARGS]{}"))
        assert not _accepts(many, tokenizer, encode(f"[TOOL_CALLS]get_weather{json.dumps(PARIS)}"))
        if vocabulary == "mistral":  # both markers as the model writes them: control tokens 5 and 6
            assert f"<[{MISTRAL_TOKEN}]>" in grammar.spec and f"<[{ARGS_TOKEN}]>" in grammar.spec
            call = lambda a: [MISTRAL_TOKEN, *encode("get_weather"), ARGS_TOKEN, *encode(json.dumps(a))]
            assert _accepts(grammar, tokenizer, call(PARIS))
            assert not _accepts(grammar, tokenizer, call(KELVIN))
            both = [MISTRAL_TOKEN, *encode("get_time"), ARGS_TOKEN, *encode("{}"), *call(PARIS)]
            assert _accepts(many, tokenizer, both)


# -- generation on the embedded model, with the template in a copy of its GGUF -----------------------


def _copy_with_template(path: str, template: str, mistral_vocabulary: bool, args: bool = False) -> str:
    keys = {"tokenizer.chat_template": ("str", template)}
    if mistral_vocabulary:
        src = gguf.open(demo_model_path())
        tokens = _mistral_vocabulary(src.metadata, args)
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            keys[key] = (src.metadata_types[key], tokens[key])
    gguf.copy_with_metadata(demo_model_path(), path, keys)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    made: dict[str, Llama] = {}

    def get(name: str) -> Llama:
        if name not in made:
            path = str(tmp_path_factory.mktemp("templates") / "model.gguf")
            syntax = TEMPLATES[name]
            _copy_with_template(path, source(name), syntax.startswith("mistral"), syntax == "mistral_args")
            made[name] = Llama(path, n_ctx=512, seed=3, verbose=False)
        return made[name]

    return get


def _check(calls: list[dict]) -> list[dict]:
    arguments = _weather_calls(calls)
    for a in arguments:
        jsonschema.validate(a, WEATHER)
    return arguments


@needs_sdist
@pytest.mark.parametrize("name", GENERATED)
def test_a_forced_call_is_written_in_the_template_syntax(models, name):
    llm = models(name)
    chat, grammar, calling = llm.prepare_chat(MESSAGES, tools=DESCRIBED, tool_choice=NAMED)
    assert calling.syntax.name == TEMPLATES[name] and "You can call" not in chat.text
    prompt = llm.prompt_tokens(chat.text, special=True)
    raw = llm.create_completion(prompt, grammar=grammar, max_tokens=150, temperature=0)["choices"][0]["text"]
    answer = llm.tokenizer_.decode(llm.input_ids[len(prompt) :], special=True)
    if calling.syntax is MISTRAL:  # the marker as control token 5 (not in the text) or spelled out
        assert answer.lstrip().startswith('[TOOL_CALLS][{"name": "get_weather"')
        assert ("[TOOL_CALLS]" in raw) != (MISTRAL_TOKEN in llm.input_ids[len(prompt) :])
    elif calling.syntax is MISTRAL_ARGS:  # each marker as its control token or spelled out
        assert answer.lstrip().startswith("[TOOL_CALLS]get_weather[ARGS]{")
        assert ("[ARGS]" in raw) != (ARGS_TOKEN in llm.input_ids[len(prompt) :])
    elif calling.syntax is LLAMA3:
        assert raw.lstrip().startswith(('{"name": "get_weather", "parameters": ', "<|python_tag|>"))
    else:
        assert raw.lstrip().startswith("<tool_call>") and raw.rstrip().endswith("</tool_call>")
    assert answer.lstrip().startswith(calling.syntax.openings)
    want = _check(calling.parse(raw))
    assert len(want) == 1

    whole = llm.create_chat_completion(
        MESSAGES, tools=DESCRIBED, tool_choice=NAMED, max_tokens=150, temperature=0
    )
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert _check(whole["choices"][0]["message"]["tool_calls"]) == want
    chunks = list(llm.create_chat_completion(MESSAGES, tools=DESCRIBED, tool_choice=NAMED, max_tokens=150,
                                             temperature=0, stream=True))  # fmt: skip
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [d["index"] for d in deltas] == [0] and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert _check([{k: v for k, v in d.items() if k != "index"} for d in deltas]) == want


def _first_token(token: int) -> LogitsProcessorList:
    """A processor that makes the answer start with ``token``."""
    start: list[int] = []

    def force(input_ids, scores):
        if not start:
            start.append(len(input_ids))
        if len(input_ids) == start[0]:
            out = np.full_like(scores, -np.inf)
            out[token] = 0.0
            return out
        return scores

    return LogitsProcessorList([force])


def _mistral_auto_calls(llm, messages: list[dict]) -> list[dict]:
    """The calls of an auto answer opened with the control token [TOOL_CALLS], after checking
    that the whole and the streamed answer give the same calls (never content) and that their
    ids are the 9 characters Mistral's templates take back."""
    results = []
    for stream in (False, True):
        out = llm.create_chat_completion(messages, tools=DESCRIBED, max_tokens=150, temperature=0, stream=stream,
                                         logits_processor=_first_token(MISTRAL_TOKEN))  # fmt: skip
        if stream:
            chunks = list(out)
            assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
            calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
            calls = [{k: v for k, v in d.items() if k != "index"} for d in calls]
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            calls, finish = out["choices"][0]["message"]["tool_calls"], out["choices"][0]["finish_reason"]
        assert calls and finish == "tool_calls"
        results.append([(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls])
        assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
    assert results[0] == results[1]
    return calls


@needs_sdist
def test_auto_switches_on_at_mistral_control_token_and_the_id_round_trips(models):
    """Under auto, a Mistral model that emits the control token [TOOL_CALLS] is held to calls
    from there, the answer (whose text lacks the marker) is a call, streamed and not, and its
    id is one the template takes back on the next turn."""
    llm = models("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    calls = _mistral_auto_calls(llm, MESSAGES)
    turn = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "21 C"}]  # fmt: skip
    chat, _, _ = llm.prepare_chat(turn, tools=DESCRIBED)
    assert f'"id": "{calls[0]["id"]}"' in chat.text and "[TOOL_RESULTS]" in chat.text


@needs_sdist
def test_the_server_answers_in_the_template_syntax(models, tmp_path):
    """`ferrollm serve` on a Mistral Nemo model: a named call and, under auto, the call the
    model opens with the control token (a logit bias makes it), calls of the functions Llama's
    answer calls, with ids the template takes back on the next turn."""
    from support.server import Server

    name = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
    path = _copy_with_template(str(tmp_path / "nemo.gguf"), source(name), mistral_vocabulary=True)
    llm = models(name)
    server = Server("-m", path)
    try:
        for extra in ({"tool_choice": NAMED}, {"logit_bias": {str(MISTRAL_TOKEN): 100}}):
            body = {"model": "nemo", "messages": MESSAGES, "tools": DESCRIBED, "max_tokens": 150,
                    "temperature": 0, **extra}  # fmt: skip
            r = server.post("/v1/chat/completions", body)
            assert r.status_code == 200, r.text
            got = r.json()["choices"][0]
            want = llm.create_chat_completion(
                MESSAGES, tools=DESCRIBED, max_tokens=150, temperature=0,
                **{**extra, "logit_bias": {MISTRAL_TOKEN: 100.0}} if "logit_bias" in extra else extra,
            )["choices"][0]  # fmt: skip
            assert got["finish_reason"] == want["finish_reason"] == "tool_calls"
            calls = got["message"]["tool_calls"]
            # The same calls as Llama's: the same prompt (the tools as sent, key order kept) and the
            # same products (a forced run's head on its last row only, in both).
            assert [c["function"] for c in calls] == [c["function"] for c in want["message"]["tool_calls"]]
            for call in calls:
                if call["function"]["name"] == "get_weather":
                    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
            assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
            turn = [
                *MESSAGES,
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": calls[0]["id"], "content": "21 C"},
            ]
            r = server.post("/v1/chat/completions", {**body, "messages": turn, "max_tokens": 4})
            assert r.status_code == 200, r.text
    finally:
        server.stop()


@needs_sdist
def test_auto_mistral_args_call_streams_like_whole_and_its_id_goes_back(models):
    """Mistral Small 3.2 under auto, the answer opened with the control token [TOOL_CALLS]: the
    call (whose decoded text is ``get_weather{...}``, no markers) comes out whole and streamed
    alike, never as content, and its id is one the template writes back after ``[CALL_ID]``."""
    llm = models(SMALL_32)
    messages = [{"role": "system", "content": "Use the tools."}, *MESSAGES]  # not its long default
    calls = _mistral_auto_calls(llm, messages)
    turn = [*messages, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "21 C"}]  # fmt: skip
    chat, _, _ = llm.prepare_chat(turn, tools=DESCRIBED)
    assert f"[CALL_ID]{calls[0]['id']}[ARGS]" in chat.text and f"[TOOL_RESULTS]{calls[0]['id']}" in chat.text
