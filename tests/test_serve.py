"""`ferrollm serve` on the embedded model, started by the tests on 127.0.0.1 and talked to
with the official `openai` client and raw HTTP: answers, continuous batching (concurrent
greedy streams equal the same requests run alone), and the faults a server meets."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time

import httpx
import openai
import pytest
from support.server import Server

EOS = "2"  # the demo model's EOS id: biased away, so a generation runs to max_tokens
NO_EOS = {EOS: -100}


@pytest.fixture(scope="module")
def server():
    s = Server("-np", "4")
    yield s
    s.stop()


PROMPTS = ["def fibonacci(n):", "import numpy as np\n", "class Stack:", "# Sort a list\n"]
# Batched matrix products round differently from single-token ones (logits differ by ~3e-6),
# which can flip a near-tie of the MoE router: "def fibonacci(n):" has one within 48 tokens.
# These prompts have none, so their greedy text must not depend on what runs beside them.
STABLE = ["import numpy as np\n", "class Stack:", "# Sort a list\n", "def parse(line):"]


def complete(client: openai.OpenAI, prompt: str, n: int = 24, **kw) -> str:
    r = client.completions.create(
        model="demo", prompt=prompt, max_tokens=n, temperature=0, logit_bias=NO_EOS, **kw
    )
    return r.choices[0].text


def stream_text(client: openai.OpenAI, prompt: str, n: int = 24) -> str:
    chunks = client.completions.create(
        model="demo", prompt=prompt, max_tokens=n, temperature=0, logit_bias=NO_EOS, stream=True
    )
    return "".join(c.choices[0].text for c in chunks if c.choices)


def test_chat_and_completion_with_the_openai_client(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["demo-moe-q8_0.gguf"]
    messages = [{"role": "user", "content": "Write a function that adds two numbers."}]
    r = client.chat.completions.create(model="demo", messages=messages, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 16
    chunks = list(client.chat.completions.create(
        model="demo", messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content  # byte for byte, leading whitespace too
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices
    # Completions: streamed and not, the same greedy text; usage counts the max_tokens.
    text = complete(client, PROMPTS[0])
    assert stream_text(client, PROMPTS[0]) == text and text
    r = client.completions.create(
        model="demo", prompt=PROMPTS[0], max_tokens=24, temperature=0, logit_bias=NO_EOS
    )
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"


def test_completion_equals_llama_api_and_echo_n_logprobs(server):
    from ferrollm import Llama, demo_model_path

    llm = Llama(demo_model_path(), n_ctx=512, verbose=False)
    want = llm.create_completion(PROMPTS[1], max_tokens=24, temperature=0, logit_bias={2: -100})
    client = server.client()
    assert complete(client, PROMPTS[1]) == want["choices"][0]["text"]
    r = client.completions.create(
        model="demo",
        prompt=PROMPTS[1],
        max_tokens=5,
        temperature=0,
        logit_bias=NO_EOS,
        echo=True,
        logprobs=3,
        n=2,
    )
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.text.startswith(PROMPTS[1]) and c.text == PROMPTS[1] + r.choices[0].text[len(PROMPTS[1]) :]
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
        assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) == 3 for t in lp.top_logprobs)
        # Greedy: each chosen token is the most likely one.
        assert all(abs(max(t.values()) - x) < 1e-6 for t, x in zip(lp.top_logprobs, lp.token_logprobs))
        assert lp.text_offset[0] == len(PROMPTS[1])
    chat = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in content)


def test_concurrent_streams_each_equal_the_request_alone(server):
    client = server.client()
    alone = [stream_text(client, p, 48) for p in STABLE]
    with concurrent.futures.ThreadPoolExecutor(len(STABLE) * 2) as pool:
        together = list(pool.map(lambda p: stream_text(client, p, 48), STABLE * 2))
    assert together == alone * 2
    assert (
        server.metric("ferrollm_prompt_tokens_cached_total") > 0
    )  # repeated prompts reused their slot's cache
    server.wait_idle()


def test_a_slow_reader_does_not_hold_up_the_others(server):
    body = {"model": "demo", "prompt": STABLE[2], "max_tokens": 64, "temperature": 0, "logit_bias": NO_EOS,
            "stream": True}  # fmt: skip
    client = server.client()
    want = [stream_text(client, p, 64) for p in STABLE]
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as slow:
        lines = slow.iter_lines()
        first = next(lines)  # it has started, then reads nothing while the others run
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            others = list(pool.map(lambda p: stream_text(client, p, 64), [STABLE[0], STABLE[1], STABLE[3]]))
        assert others == [want[0], want[1], want[3]]
        rest = [x for x in [first, *lines] if x]
    texts = [json.loads(x[6:])["choices"][0]["text"] for x in rest if x.startswith("data: {")]
    assert "".join(texts) == want[2] and rest[-1] == "data: [DONE]"


def test_a_client_that_disconnects_frees_its_slot(server):
    server.wait_idle()
    cancelled = server.metric('ferrollm_requests_total{reason="cancelled"}')
    body = {"model": "demo", "prompt": PROMPTS[0], "max_tokens": 480, "temperature": 0, "logit_bias": NO_EOS,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 3:
                break  # leave mid-stream
    server.wait_idle()
    assert server.metric('ferrollm_requests_total{reason="cancelled"}') == cancelled + 1
    assert complete(server.client(), PROMPTS[0]) == complete(server.client(), PROMPTS[0])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("{not json", None),
        ("[1, 2]", None),
        ({"model": "demo"}, "prompt"),
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "x", "temperature": 5}, "temperature"),
        ({"prompt": "x", "frobnicate": True}, "frobnicate"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"prompt": [1, 99999999]}, "prompt"),
        ({"prompt": "word " * 600}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_bad_completion_requests_are_400_with_openai_errors(server, body, param):
    r = server.post("/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param:
        assert err["param"] and err["param"].split(".")[0] == param, err


def test_hostile_bodies_are_refused_cleanly_and_health_stays_fast(server):
    # Over the size limit: 413 as soon as the length is known, before the body is read whole.
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (9 * 2**20)}]})
    t = time.monotonic()
    r = server.post("/v1/chat/completions", big)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"], r.text
    assert time.monotonic() - t < 5
    # Deep nesting: 400, not a RecursionError's 500.
    for depth in (100, 1000, 100_000):
        for open_, close in (("[", "]"), ('{"a":', "}")):
            body = '{"prompt": ' + open_ * depth + "1" + close * depth + "}"
            r = server.post("/v1/completions", body)
            assert r.status_code == 400 and "deeper than" in r.json()["error"]["message"], (depth, r.text)
    # An image part: a clear 400 that names it (not a schema error about strings).
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, image]}]})  # fmt: skip
    assert r.status_code == 400 and "'image_url' part needs a vision" in r.json()["error"]["message"], r.text
    # A tool whose parameters are not an object: 400.
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "integer"}}}
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [tool],
                                             "tool_choice": "required"})  # fmt: skip
    assert r.status_code == 400 and "must describe an object" in r.json()["error"]["message"], r.text
    # /health answers quickly while a large (allowed) prompt is tokenized.
    body = json.dumps({"prompt": "word " * 1_000_000, "max_tokens": 1})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.post, "/v1/completions", body)
        time.sleep(0.2)
        slowest = 0.0
        while not pending.done():
            t = time.monotonic()
            server.health()
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.05)
        r = pending.result()
        assert r.status_code == 400 and "cannot fit the context" in r.json()["error"]["message"], r.text
    assert slowest < 0.5, slowest


def test_bad_chat_requests_and_unknown_routes(server):
    for body in [{"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
                 {"messages": [{"role": "user", "content": 3}]},
                 {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
                 {"messages": [{"role": "user", "content": "x"}],
                  "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}}}]:  # fmt: skip
        r = server.post("/v1/chat/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"], r.text
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "x"}], n=99
        )
    assert httpx.get(f"{server.url}/v2/nothing").status_code == 404
    assert httpx.get(f"{server.url}/v1/completions").status_code == 405
    assert server.health()["status"] == "ok"


def test_response_format_json_schema_for_every_choice(server):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
              "n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["name", "n"]}  # fmt: skip
    r = server.client().chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "A record"}], max_tokens=60, temperature=0.9, seed=1, n=3,
        response_format={"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": True}},
    )  # fmt: skip
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        value = json.loads(choice.message.content)
        assert set(value) == {"name", "n"} and isinstance(value["name"], str) and 0 <= value["n"] <= 9
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 40,
                                             "response_format": {"type": "json_object"}})  # fmt: skip
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


def test_forced_json_tokens_are_taken_in_one_step_as_the_llama_api_takes_them(server):
    """Greedy under a schema: the server takes the grammar's forced tokens (keys, punctuation)
    into one run of the slot's next step, as Llama.generate does: the same text."""
    from ferrollm import Llama, demo_model_path

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
              "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3}},
              "required": ["name", "tags"]}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    messages = [{"role": "user", "content": "A thing"}]
    llm = Llama(demo_model_path(), n_ctx=512, verbose=False)
    want = llm.create_chat_completion(messages, max_tokens=80, temperature=0, response_format=fmt)
    before = server.metric("ferrollm_generation_tokens_total")
    r = server.client().chat.completions.create(model="demo", messages=messages, max_tokens=80, temperature=0,
                                                response_format=fmt)  # fmt: skip
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert set(json.loads(r.choices[0].message.content)) == {"name", "tags"}
    assert r.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert server.metric("ferrollm_generation_tokens_total") - before == r.usage.completion_tokens
    server.wait_idle()


def test_tokenize_detokenize_metrics(server):
    ids = server.post("/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert ids and server.post("/detokenize", {"tokens": ids}).json()["content"].strip() == "Hello world"
    assert server.post("/detokenize", {"tokens": [-1]}).status_code == 400
    text = httpx.get(f"{server.url}/metrics").text
    for name in ["ferrollm_prompt_tokens_total", "ferrollm_generation_tokens_total", "ferrollm_tokens_per_second",
                 "ferrollm_queue_depth", "ferrollm_kv_cache_usage_ratio", "ferrollm_requests_in_flight"]:  # fmt: skip
        assert name in text
    assert server.metric("ferrollm_generation_tokens_total") > 0


class InProcess(Server):
    """The app under uvicorn on a thread of the test, with a gate the test opens and closes
    in front of every engine step: what is queued or overdue is then decided by the test,
    not by how fast the machine is."""

    def __init__(self, **config):
        import threading

        import uvicorn
        from ferrollm.serve import ServerConfig, create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(ServerConfig(n_threads=1, **config))
        self.server = uvicorn.Server(uvicorn.Config(self.app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.app.state.ferrollm.engine is None and time.monotonic() < deadline:
            time.sleep(0.05)
        engine = self.app.state.ferrollm.engine
        self.gate = threading.Event()
        self.gate.set()
        step = engine._step

        def gated_step(runs):
            self.gate.wait()
            step(runs)

        engine._step = gated_step
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.gate.set()
        self.server.should_exit = True
        self.thread.join(30)


def test_api_key_queue_limit_and_time_limit():
    s = InProcess(n_slots=1, max_queue=1, api_key="sekret", timeout=1.0)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert httpx.get(f"{s.url}/health").status_code == 200  # health needs no key
        key = {"authorization": "Bearer sekret"}
        assert s.post("/v1/models", {}, headers=key).status_code == 405
        s.gate.clear()  # nothing runs: the first request holds the slot, the second waits
        body = {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "logit_bias": NO_EOS}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(s.post, "/v1/completions", body, headers=key)
            while s.app.state.ferrollm.engine.busy < 1:
                time.sleep(0.01)
            second = pool.submit(s.post, "/v1/completions", body, headers=key)
            while s.metric("ferrollm_queue_depth") < 1:
                time.sleep(0.01)
            full = s.post("/v1/completions", body, headers=key)
            assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
            assert full.json()["error"]["type"] == "rate_limit_error"
            time.sleep(1.2)  # both pass their time limit while the engine is held
            s.gate.set()
            for r in (first.result(), second.result()):
                assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        s.wait_idle()
        r = s.post("/v1/completions", body, headers=key)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
    finally:
        s.stop()


def test_sigterm_drains_accepted_requests():
    s = Server("-np", "2")
    try:
        body = {
            "prompt": PROMPTS[3],
            "max_tokens": 200,
            "temperature": 0,
            "logit_bias": NO_EOS,
            "stream": True,
        }
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(lines)
            s.proc.send_signal(signal.SIGTERM)
            rest = [x for x in [first, *lines] if x]
        texts = [json.loads(x[6:])["choices"][0] for x in rest if x.startswith("data: {")]
        assert rest[-1] == "data: [DONE]" and texts[-1]["finish_reason"] == "length"
        assert s.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it once drained
        # Closed to new connections once drained.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{s.url}/health", timeout=2)
    finally:
        s.stop()


def test_shutdown_finishes_a_stream_the_engine_has_not_even_started():
    s = InProcess(n_slots=1)
    try:
        s.gate.clear()
        body = {
            "prompt": PROMPTS[3],
            "max_tokens": 100,
            "temperature": 0,
            "logit_bias": NO_EOS,
            "stream": True,
        }
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            while s.app.state.ferrollm.engine.busy < 1:
                time.sleep(0.01)
            s.server.should_exit = True  # what uvicorn's SIGTERM handler does
            time.sleep(0.3)
            with pytest.raises(httpx.HTTPError):  # closed to new connections
                httpx.get(f"{s.url}/health", timeout=2)
            s.gate.set()
            rest = [x for x in lines if x]
        chunks = [json.loads(x[6:])["choices"][0] for x in rest if x.startswith("data: {")]
        assert rest[-1] == "data: [DONE]" and chunks[-1]["finish_reason"] == "length"
        s.thread.join(30)
        assert not s.thread.is_alive() and s.app.state.ferrollm.engine.model.closed
    finally:
        s.stop()


def test_health_is_503_until_the_model_is_loaded():
    from ferrollm.serve import ServerConfig, create_app
    from ferrollm.serve.app import State
    from starlette.testclient import TestClient

    loaded = []
    original = State.load

    def slow_load(self):
        time.sleep(0.5)
        original(self)
        loaded.append(True)

    State.load = slow_load
    try:
        with TestClient(create_app(ServerConfig(n_slots=1))) as client:
            assert client.get("/health").status_code == 503
            assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 503
            deadline = time.monotonic() + 30
            while not loaded and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/health").status_code == 200
            r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    finally:
        State.load = original


def test_drain_waits_for_running_jobs_and_stop_ends_the_rest():
    from ferrollm import Llama, _core, demo_model_path
    from ferrollm.generate.sampler import SamplingParams
    from ferrollm.serve.engine import Draining, Engine, Job

    llm = Llama(demo_model_path(), vocab_only=True, verbose=False)
    engine = Engine(_core.Model(demo_model_path(), n_ctx=512, n_seq=1, n_threads=1), llm.tokenizer_)
    events = []
    job = Job(llm.tokenize(b"def f(x):"), SamplingParams(temperature=0, logit_bias={2: -100}), 200, [],
              events.append)  # fmt: skip
    engine.submit([job])
    start = time.monotonic()
    assert engine.drain(timeout=60) and events[-1].kind == "done" and events[-1].completion_tokens == 200
    assert time.monotonic() - start < 30  # woken by the last job's end, not by the timeout
    with pytest.raises(Draining):
        engine.submit([job])
    engine.stop()
    assert engine.model.closed
