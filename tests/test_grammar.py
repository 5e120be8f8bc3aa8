"""Constrained decoding through llguidance on the embedded model: GBNF grammars, regular
expressions, JSON schemas and response_format, clear errors for what the engine cannot
compile, and a property test: for random JSON schemas every generated answer parses and
validates."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
from ferrollm import GrammarError, Llama, LlamaGrammar, StoppingCriteriaList, demo_model_path
from ferrollm.generate.grammar import closed_objects
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=512, seed=7, verbose=False)


def test_gbnf_grammar_holds_the_answer(llm):
    grammar = LlamaGrammar.from_string('root ::= answer "."\nanswer ::= "yes" | "no" | "maybe"')
    for temperature in (0.0, 1.0):
        out = llm("Is this Python? ", max_tokens=10, temperature=temperature, grammar=grammar, seed=3)
        assert out["choices"][0]["text"] in ("yes.", "no.", "maybe.")
        assert out["choices"][0]["finish_reason"] == "stop"


def test_regex_grammar(llm):
    grammar = LlamaGrammar.from_regex(r"[0-9]{3}-[0-9]{4}")
    text = llm("# phone: ", max_tokens=20, temperature=0.7, seed=1, grammar=grammar)["choices"][0]["text"]
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", text)


def test_streamed_grammar_output_equals_the_whole(llm):
    grammar = LlamaGrammar.from_regex(r"(foo|bar)(, (foo|bar)){2}")
    whole = llm("x = ", max_tokens=20, temperature=0, grammar=grammar)["choices"][0]["text"]
    parts = "".join(c["choices"][0]["text"] for c in llm("x = ", max_tokens=20, temperature=0, grammar=grammar,
                                                          stream=True))  # fmt: skip
    assert parts == whole and re.fullmatch(r"(foo|bar)(, (foo|bar)){2}", whole)


def test_greedy_under_a_grammar_is_the_unconstrained_greedy_when_it_fits(llm):
    free = llm("def fibonacci(n):", max_tokens=8, temperature=0)["choices"][0]["text"]
    grammar = LlamaGrammar.from_regex(re.escape(free) + r"[\s\S]*")
    assert (
        llm("def fibonacci(n):", max_tokens=8, temperature=0, grammar=grammar)["choices"][0]["text"] == free
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LlamaGrammar.from_string("root ::= missing"), "missing"),
        (lambda: LlamaGrammar.from_string('root ::= "open'), "GBNF"),
        (lambda: LlamaGrammar.from_json_schema('{"type": "nonsense"}'), "nonsense"),
        (lambda: LlamaGrammar.from_json_schema("{not json"), "not valid JSON"),
        (lambda: LlamaGrammar.from_json_schema({"type": "string", "pattern": "[a-"}), "unclosed"),
        (lambda: LlamaGrammar.from_regex("(unclosed"), "regular expression"),
    ],
)
def test_bad_grammars_raise_clear_errors(make, message):
    with pytest.raises(GrammarError, match=re.escape(message)) as info:
        make()
    assert isinstance(info.value, ValueError)


def test_bad_response_format(llm):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(GrammarError, match="response_format type"):
        llm.create_chat_completion(messages, response_format={"type": "xml"})
    with pytest.raises(GrammarError, match="type must be a string"):
        llm.create_chat_completion(messages, response_format={"type": "json_object", "schema": {"type": 3}})


def test_json_object_mode(llm):
    out = llm.create_chat_completion(
        [{"role": "user", "content": "Give me a JSON object"}], response_format={"type": "json_object"},
        max_tokens=100, temperature=0.8, seed=5,
    )  # fmt: skip
    assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        {"type": "json_object", "schema": PERSON},  # llama-cpp-python's spelling
    ],
)
def test_json_schema_response_formats(llm, response_format):
    out = llm.create_chat_completion(
        [{"role": "user", "content": "Describe a person"}], response_format=response_format, max_tokens=100,
        temperature=0,
    )  # fmt: skip
    value = json.loads(out["choices"][0]["message"]["content"])
    jsonschema.validate(value, PERSON)
    assert set(value) == {"name", "age", "tags"}  # no invented keys


def _batches(monkeypatch):
    """The token counts of the batches the decoding loop evaluates beside single tokens."""
    from ferrollm.session import Session

    sizes = []
    evaluate = Session.evaluate

    def counting(session, tokens, **kw):
        sizes.append(len(tokens))
        return evaluate(session, tokens, **kw)

    monkeypatch.setattr(Session, "evaluate", counting)
    return sizes


def test_forced_tokens_go_to_the_engine_as_one_batch(llm, monkeypatch):
    """The keys and punctuation a schema forces are llguidance's fast-forward tokens: taken
    without sampling and evaluated together, one forward pass for the run."""
    sizes = _batches(monkeypatch)
    out = llm("person = ", max_tokens=100, temperature=0, grammar=LlamaGrammar.from_json_schema(PERSON))
    value = json.loads(out["choices"][0]["text"])
    jsonschema.validate(value, PERSON)
    assert sizes and max(sizes) >= 4  # ', "age": ' at least: the token before the run, then 3 forced
    assert sum(sizes) - len(sizes) < out["usage"]["completion_tokens"]


def test_log_probabilities_of_forced_tokens_come_from_their_own_rows(llm, monkeypatch):
    """Each token of a forced batch reports the logits it follows, as teacher forcing gives them
    (an off-by-one row would put whole nats between them)."""
    sizes = _batches(monkeypatch)
    prompt = "person = "
    out = llm(
        prompt, max_tokens=100, temperature=0, logprobs=1, grammar=LlamaGrammar.from_json_schema(PERSON)
    )
    assert max(sizes) >= 4
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    reported = np.array(choice["logprobs"]["token_logprobs"])
    prompt_tokens = llm.tokenize(prompt.encode())
    generated = llm.input_ids[len(prompt_tokens) :]  # the tokens as generated, not re-tokenized
    assert llm.detokenize(generated).decode() == choice["text"] and len(reported) == len(generated)
    teacher = Llama(demo_model_path(), n_ctx=512, logits_all=True, verbose=False)
    teacher.eval(prompt_tokens + generated)
    rows = teacher.scores[len(prompt_tokens) - 1 : -1]
    logp = rows - np.logaddexp.reduce(rows, axis=1, keepdims=True)
    expected = logp[np.arange(len(generated)), generated]
    gap = np.abs(reported - expected)
    assert np.median(gap) < 0.02 and gap.max() < 0.3, gap


def test_stopping_criteria_see_every_token_under_a_grammar(llm):
    seen = []

    def criterion(ids, logits):
        seen.append(len(ids))
        return False

    out = llm("person = ", max_tokens=60, temperature=0, grammar=LlamaGrammar.from_json_schema(PERSON),
              stopping_criteria=StoppingCriteriaList([criterion]))  # fmt: skip
    assert seen == list(range(seen[0], seen[0] + len(seen)))
    assert len(seen) == out["usage"]["completion_tokens"] + (out["choices"][0]["finish_reason"] == "stop")


def test_closed_objects_leaves_explicit_choices_alone():
    schema = {"type": "object", "properties": {"a": {"type": "object"}}, "$defs": {"x": {"properties": {}}}}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["x"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # a copy
    assert closed_objects({"type": "object", "additionalProperties": True})["additionalProperties"] is True


# -- property: random schemas, valid answers ---------------------------------------------------------

_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@st.composite
def _value_schemas(draw, depth: int = 0):
    kinds = ["string", "integer", "boolean", "enum", "array"] + (["object"] if depth < 1 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "string":
        return {"type": "string", "maxLength": draw(st.integers(1, 16))}
    if kind == "integer":
        low = draw(st.integers(-1000, 1000))
        return {"type": "integer", "minimum": low, "maximum": low + draw(st.integers(0, 5000))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": draw(st.lists(_NAMES, min_size=1, max_size=4, unique=True))}
    if kind == "array":
        items = draw(st.sampled_from([{"type": "boolean"}, {"type": "integer", "minimum": 0, "maximum": 99},
                                      {"type": "string", "maxLength": 6}]))  # fmt: skip
        return {"type": "array", "items": items, "maxItems": draw(st.integers(0, 4))}
    return draw(_object_schemas(depth + 1))


@st.composite
def _object_schemas(draw, depth: int = 0):
    names = draw(st.lists(_NAMES, min_size=1, max_size=4, unique=True))
    properties = {name: draw(_value_schemas(depth)) for name in names}
    required = [n for n in names if draw(st.booleans())]
    return {"type": "object", "properties": properties, "required": required}


@settings(max_examples=10)
@given(schema=_object_schemas(), temperature=st.sampled_from([0.0, 0.9]), seed=st.integers(0, 1000))
def test_every_answer_under_a_random_schema_validates(llm, schema, temperature, seed):
    out = llm.create_chat_completion(
        [{"role": "user", "content": "Fill in the record"}],
        response_format={"type": "json_schema", "json_schema": {"name": "record", "schema": schema}},
        max_tokens=300, temperature=temperature, seed=seed,
    )  # fmt: skip
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)
