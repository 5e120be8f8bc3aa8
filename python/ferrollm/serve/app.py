"""The OpenAI-compatible HTTP API (Starlette): requests are validated into jobs for the
batching engine, and its events become OpenAI's JSON or server-sent events. Every failure
reaches the client as OpenAI's error JSON with a 4xx/5xx status, never as a crash."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ferrollm.demo import demo_model_path
from ferrollm.generate.grammar import GrammarError, LlamaGrammar
from ferrollm.generate.logprobs import TokenLogprob, chat_shape, completion_shape
from ferrollm.generate.sampler import SamplingParams
from ferrollm.generate.tools import CallStream, LazyToolGrammar, ToolCalling, ToolError
from ferrollm.llama import Llama
from ferrollm.serve.engine import Draining, Engine, Event, Job, QueueFull
from ferrollm.serve.metrics import CONTENT_TYPE, Metrics
from ferrollm.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    Sampling,
    TokenizeRequest,
)
from ferrollm.session import open_engine
from ferrollm.text.chat import ChatTemplateError


@dataclass
class ServerConfig:
    model_path: str | None = None  # None: the embedded demo model
    n_slots: int = 4
    n_ctx: int = 0  # all slots together (llama-server's -c); 0: each slot min(4096, trained)
    n_threads: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    api_key: str | None = None
    chat_format: str | None = None
    overrides: dict[str, Any] | None = None
    max_queue: int = 64
    timeout: float = 600.0  # seconds per request
    step_tokens: int = 256  # tokens per forward pass: decoding slots plus prompt chunks
    model_alias: str | None = None
    drain_timeout: float = 60.0
    max_body_bytes: int = 8 * 2**20  # a larger request body is refused (413) before it is read whole
    load_before_start: bool = False  # True: startup waits for the model (Ray starts a replica so)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class State:
    """What the app holds: filled by the loader thread, read by the handlers."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.llama: Llama | None = None  # tokenizer and chat template (vocab only)
        self.load_error: str | None = None
        self.mailbox: Mailbox | None = None  # of the loop serving the requests
        self.model_name = config.model_alias or os.path.basename(config.model_path or demo_model_path())
        self.created = int(time.time())

    def load(self) -> None:
        c = self.config
        path = c.model_path or demo_model_path()
        try:
            llama = Llama(path, vocab_only=True, chat_format=c.chat_format, verbose=False)
            n_ctx_train = int(
                llama.metadata.get(f"{llama.metadata.get('general.architecture')}.context_length", 0)
            )
            per_slot = c.n_ctx // c.n_slots if c.n_ctx else min(4096, n_ctx_train or 4096)
            if per_slot < 1:
                raise ValueError(f"a context of {c.n_ctx} leaves no positions for each of {c.n_slots} slots")
            model = open_engine(path, n_ctx=per_slot, n_seq=c.n_slots, n_threads=c.n_threads,
                                n_batch=max(c.step_tokens, c.n_slots), type_k=c.type_k, type_v=c.type_v,
                                kv_overrides=c.overrides)  # fmt: skip
            self.llama = llama
            self.engine = Engine(model, llama.tokenizer_, max_queue=c.max_queue, step_tokens=c.step_tokens,
                                 metrics=self.metrics)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            self.load_error = f"{type(e).__name__}: {e}"

    def ready_engine(self) -> Engine:
        if self.load_error:
            raise ApiError(503, f"the model failed to load: {self.load_error}", "server_error")
        if self.engine is None:
            raise ApiError(503, "the model is loading", "server_error", headers={"Retry-After": "1"})
        return self.engine


def _validation_error(e: ValidationError) -> ApiError:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    kind = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    return ApiError(400, f"{param}: {kind}" if param else kind, param=param)


# JSON nested deeper than this is refused (400): no request needs it, and Python's parser
# and validators recurse.
MAX_DEPTH = 64


async def _body(request: Request, schema: type[BaseModel]) -> Any:
    """The request body validated by ``schema``: refused with 413 past the size limit (as soon as
    the declared or the received length passes it), parsed and validated off the event loop."""
    limit = request.app.state.ferrollm.config.max_body_bytes
    # Connection: close, so that the rest of the body is dropped with the connection rather
    # than read through the event loop.
    too_large = ApiError(413, f"the request body is over this server's limit of {limit} bytes (--max-body-bytes)",
                         headers={"connection": "close"})  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return await run_in_threadpool(_parse_body, b"".join(chunks), schema)


def _parse_body(raw: bytes, schema: type[BaseModel]) -> Any:
    try:
        data = json.loads(raw)
        if _depth_over(data, MAX_DEPTH):
            raise RecursionError
    except RecursionError:
        raise ApiError(400, f"the request body nests JSON deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None


def _depth_over(data: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` deep (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


def endpoint(auth: bool = True):
    """Wraps a handler: API key, in-flight metric, and every exception as OpenAI's error JSON."""

    def wrap(handler: Callable[[Request, State], Awaitable[Response]]):
        async def run(request: Request) -> Response:
            state: State = request.app.state.ferrollm
            state.metrics.requests_in_flight.inc()
            try:
                key = state.config.api_key
                if auth and key and request.headers.get("authorization", "") != f"Bearer {key}":
                    raise ApiError(
                        401, "invalid or missing API key", "authentication_error", code="invalid_api_key"
                    )
                response = await handler(request, state)
            except ApiError as e:
                response = e.response()
            except Exception as e:  # noqa: BLE001 - a bug must not take the server down
                response = ApiError(
                    500, f"internal error: {type(e).__name__}: {e}", "server_error"
                ).response()
            finally:
                state.metrics.requests_in_flight.dec()
            state.metrics.http_responses.labels(str(response.status_code)).inc()
            return response

        return run

    return wrap


# -- generation ---------------------------------------------------------------------------------


class Mailbox:
    """Events from the engine thread to one event loop, delivered in batches: one wake-up of
    the loop per engine step rather than one per generated token and stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Any]] = []

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        with self._lock:
            self._items.append((queue, item))
            if len(self._items) > 1:
                return  # a delivery is already scheduled
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


def _mailbox(state: State) -> Mailbox:
    loop = asyncio.get_running_loop()
    if state.mailbox is None or state.mailbox.loop is not loop:
        state.mailbox = Mailbox(loop)
    return state.mailbox


class Generation:
    """The jobs of one request (n choices x prompts) and the queue their events arrive on."""

    def __init__(self, state: State, prompts: list[list[int]], req: Sampling, max_tokens: int, stops: list[str],
                 top_logprobs: int | None, grammar: LlamaGrammar | LazyToolGrammar | None = None):  # fmt: skip
        self.engine = state.ready_engine()
        self.mailbox = _mailbox(state)
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        params = SamplingParams(
            temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
            repeat_penalty=req.repeat_penalty, frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()},
        )  # fmt: skip
        n_vocab = self.engine.tokenizer.n_vocab
        for token in params.logit_bias:
            if not 0 <= token < n_vocab:
                raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary of {n_vocab}",
                               param="logit_bias")  # fmt: skip
        deadline = time.monotonic() + state.config.timeout
        self.prompts = prompts
        self.jobs = []
        for p, prompt in enumerate(prompts):
            for j in range(req.n):
                index = p * req.n + j
                seed = None if req.seed is None else req.seed + j
                self.jobs.append(Job(prompt, params, max_tokens, stops, self._emitter(index), seed=seed,
                                     top_logprobs=top_logprobs, deadline=deadline, grammar=grammar))  # fmt: skip
        try:
            self.engine.submit(self.jobs)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": "2"}) from None  # fmt: skip
        except Draining as e:
            raise ApiError(503, str(e), "server_error") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt", code="context_length_exceeded") from None
        self.open = len(self.jobs)

    def _emitter(self, index: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            self.mailbox.post(self.queue, (index, event))

        return emit

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    async def events(self, request: Request | None = None) -> AsyncIterator[tuple[int, Event]]:
        """Events until every job has ended; with ``request``, watches for a disconnect."""
        while self.open:
            if request is None:  # streams: Starlette cancels this task when the client leaves
                index, event = await self.queue.get()
            else:
                try:
                    index, event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.cancel()
                        return
                    continue
            if event.kind != "piece":
                self.open -= 1
            yield index, event


def _error_from_event(event: Event) -> ApiError:
    if event.finish == "timeout":
        return ApiError(504, event.text, "timeout_error", code="timeout")
    return ApiError(500, event.text, "server_error")


@functools.lru_cache(maxsize=8)
def _max_token_bytes(tokenizer) -> int:
    """An upper bound on the bytes of text one token stands for (its piece's UTF-8 length)."""
    return max((len(t.encode("utf-8")) for t in tokenizer.tokens), default=1) or 1


def _prompt_ids(llama: Llama, prompt: str | list[int], n_ctx: int, special: bool = False) -> list[int]:
    if isinstance(prompt, str):
        # Too long for a slot however it tokenizes: refused before the tokenizer (which holds
        # the GIL) spends seconds on megabytes.
        n_bytes, most = len(prompt.encode("utf-8", "surrogatepass")), _max_token_bytes(llama.tokenizer_)
        if n_bytes > n_ctx * most:
            raise ApiError(400, f"prompt: {n_bytes} bytes of text cannot fit the context of a slot ({n_ctx} "
                           f"tokens of at most {most} bytes each)", param="prompt")  # fmt: skip
    ids = llama.prompt_tokens(prompt, special=special)
    bad = [t for t in ids if not 0 <= t < llama.n_vocab()]
    if bad:
        raise ApiError(
            400, f"prompt: token id {bad[0]} is outside the vocabulary of {llama.n_vocab()}", param="prompt"
        )
    return ids


def _usage(prompts: list[list[int]], completion: int) -> dict[str, int]:
    n_prompt = sum(len(p) for p in prompts)
    return {"prompt_tokens": n_prompt, "completion_tokens": completion, "total_tokens": n_prompt + completion}


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Shape:
    """How one endpoint spells choices, chunks and log-probabilities; a chat request with tools
    spells its answers as ``calling`` does (calls or text)."""

    def __init__(self, kind: str, meta: dict[str, Any], echo: list[str] | None = None,
                 calling: ToolCalling | None = None):  # fmt: skip
        self.kind, self.meta, self.echo, self.calling = kind, meta, echo, calling

    def logprobs(self, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        return chat_shape(entries) if self.kind == "chat" else completion_shape(entries, offset)

    def chunk(self, index: int, text: str | None, finish: str | None, logprobs: dict | None,
              first: bool = False) -> dict[str, Any]:  # fmt: skip
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            return self.delta_chunk(index, delta, finish, logprobs)
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {**self.meta, "object": "text_completion", "choices": [choice]}

    def delta_chunk(self, index: int, delta: dict, finish: str | None, logprobs: dict | None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**self.meta, "object": "chat.completion.chunk", "choices": [choice]}

    def choice(self, index: int, text: str, finish: str | None, logprobs: dict | None) -> dict[str, Any]:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.calling is not None:
                message, finish = self.calling.message(text, finish)
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def usage_chunk(self, usage: dict) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self.meta, "object": obj, "choices": [], "usage": usage}

    def result(self, choices: list[dict], usage: dict) -> dict[str, Any]:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self.meta, "object": obj, "choices": choices, "usage": usage}


async def _answer(request: Request, gen: Generation, shape: Shape, req: Sampling, logprobs: bool) -> Response:
    n_choices = len(gen.jobs)
    echo = shape.echo or [""] * len(gen.prompts)
    if req.stream:
        return StreamingResponse(_stream(request, gen, shape, req, logprobs, echo), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    texts = [echo[i // req.n] for i in range(n_choices)]
    entries: list[list[TokenLogprob]] = [[] for _ in range(n_choices)]
    finish: list[str | None] = [None] * n_choices
    completion = 0
    try:
        async for index, event in gen.events(request):
            if event.kind == "error":
                gen.cancel()
                raise _error_from_event(event)
            texts[index] += event.text
            entries[index] += event.logprobs or []
            if event.kind == "done":
                finish[index] = event.finish
                completion += event.completion_tokens
    finally:
        gen.cancel()  # a no-op for ended jobs; frees the slots of a failed or abandoned request
    if gen.open:
        return Response(status_code=499)  # the client went away: nobody reads this
    choices = [
        shape.choice(i, texts[i], finish[i],
                     shape.logprobs(entries[i], len(echo[i // req.n])) if logprobs else None)
        for i in range(n_choices)
    ]  # fmt: skip
    return JSONResponse(shape.result(choices, _usage(gen.prompts, completion)))


async def _stream(request: Request, gen: Generation, shape: Shape, req: Sampling, logprobs: bool,
                  echo: list[str]) -> AsyncIterator[bytes]:  # fmt: skip
    sent = [0] * len(gen.jobs)  # characters sent per choice, for completion text offsets
    calls = [CallStream(shape.calling) for _ in gen.jobs] if shape.calling is not None else None
    completion = 0
    try:
        for i in range(len(gen.jobs)):
            text = echo[i // req.n]
            if calls is not None:
                yield _sse(shape.delta_chunk(i, calls[i].opening(), None, None))
            elif shape.kind == "chat" or text:
                yield _sse(shape.chunk(i, text or None, None, None, first=True))
                sent[i] = len(text)
        async for index, event in gen.events():
            if event.kind == "error":
                yield _sse(_error_from_event(event).body())
                break
            finish = event.finish if event.kind == "done" else None
            completion += event.completion_tokens
            if calls is not None:
                for delta, end, entries in calls[index].push(event.text, event.logprobs or [], finish):
                    lp = shape.logprobs(entries, 0) if logprobs and entries else None
                    yield _sse(shape.delta_chunk(index, delta, end, lp))
                continue
            lp = shape.logprobs(event.logprobs, sent[index]) if logprobs and event.logprobs else None
            sent[index] += len(event.text)
            if event.text or lp or finish:
                yield _sse(shape.chunk(index, event.text, finish, lp))
        else:
            if req.stream_options and req.stream_options.include_usage:
                yield _sse(shape.usage_chunk(_usage(gen.prompts, completion)))
        yield b"data: [DONE]\n\n"
    finally:
        gen.cancel()  # the client disconnected, or the stream ended: free the slots now


@endpoint()
async def completions(request: Request, state: State) -> Response:
    req: CompletionRequest = await _body(request, CompletionRequest)
    if req.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    n_ctx = state.ready_engine().n_ctx
    llama = state.llama

    def tokenized() -> tuple[list[list[int]], list[str] | None]:
        prompts = [_prompt_ids(llama, p, n_ctx) for p in req.prompts()]
        echo = [llama.detokenize(p).decode("utf-8", "replace") for p in prompts] if req.echo else None
        return prompts, echo

    # Off the event loop: a long prompt must not hold up the other requests (or /health).
    prompts, echo = await run_in_threadpool(tokenized)
    if not prompts:
        raise ApiError(400, "prompt: no prompt given", param="prompt")
    gen = Generation(state, prompts, req, req.max_tokens if req.max_tokens is not None else 0, req.stops(),
                     req.logprobs)  # fmt: skip
    meta = {"id": f"cmpl-{uuid.uuid4()}", "created": int(time.time()), "model": state.model_name}
    return await _answer(request, gen, Shape("completion", meta, echo), req, req.logprobs is not None)


@endpoint()
async def chat_completions(request: Request, state: State) -> Response:
    req: ChatRequest = await _body(request, ChatRequest)
    n_ctx = state.ready_engine().n_ctx
    llama = state.llama
    response_format = req.response_format.as_dict() if req.response_format else None

    def prepared():
        # Off the event loop (template rendering, grammar, tokenization): see completions.
        try:
            chat, grammar, calling = llama.prepare_chat([m.as_dict() for m in req.messages], **req.tool_request(),
                                                        response_format=response_format)  # fmt: skip
        except ToolError as e:
            raise ApiError(400, str(e), param=e.param) from None
        except GrammarError as e:
            raise ApiError(400, f"response_format: {e}", param="response_format") from None
        except ChatTemplateError as e:
            raise ApiError(400, f"messages: {e}", param="messages") from None
        return chat, grammar, calling, _prompt_ids(llama, chat.text, n_ctx, special=True)

    chat, grammar, calling, prompt = await run_in_threadpool(prepared)
    top = (req.top_logprobs or 0) if req.logprobs else None
    gen = Generation(state, [prompt], req, req.limit(), req.stops() + chat.stop, top, grammar)
    meta = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": state.model_name}
    return await _answer(request, gen, Shape("chat", meta, calling=calling), req, req.logprobs)


@endpoint()
async def models(request: Request, state: State) -> Response:
    model = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "ferrollm"}
    return JSONResponse({"object": "list", "data": [model]})


@endpoint(auth=False)
async def health(request: Request, state: State) -> Response:
    if state.load_error:
        return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
    if state.engine is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok", **state.engine.info()})


@endpoint(auth=False)
async def metrics(request: Request, state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


@endpoint()
async def tokenize(request: Request, state: State) -> Response:
    req: TokenizeRequest = await _body(request, TokenizeRequest)
    state.ready_engine()
    tok = state.llama.tokenizer_
    ids = tok.encode(req.content, add_bos=req.add_special and tok.add_bos, special=True)
    if req.with_pieces:
        pieces = [{"id": t, "piece": tok.token_bytes(t).decode("utf-8", "replace")} for t in ids]
        return JSONResponse({"tokens": pieces})
    return JSONResponse({"tokens": ids})


@endpoint()
async def detokenize(request: Request, state: State) -> Response:
    req: DetokenizeRequest = await _body(request, DetokenizeRequest)
    state.ready_engine()
    n_vocab = state.llama.n_vocab()
    bad = [t for t in req.tokens if not 0 <= t < n_vocab]
    if bad:
        raise ApiError(400, f"tokens: id {bad[0]} is outside the vocabulary of {n_vocab}", param="tokens")
    return JSONResponse({"content": state.llama.detokenize(req.tokens).decode("utf-8", "replace")})


def create_app(config: ServerConfig | None = None, **kwargs: Any) -> Starlette:
    """The ASGI app. The model loads in the background (``/health`` answers 503 until it is
    ready); on shutdown the engine finishes the accepted requests, then closes the model."""
    config = config or ServerConfig(**kwargs)
    if config.n_slots < 1:
        raise ValueError("n_slots must be at least 1")
    state = State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.load_before_start:
            await asyncio.to_thread(state.load)
            if state.load_error:
                raise RuntimeError(f"the model failed to load: {state.load_error}")
        else:
            threading.Thread(target=state.load, name="ferrollm-load", daemon=True).start()
        yield
        if state.engine is not None:
            await asyncio.to_thread(state.engine.drain, config.drain_timeout)
            state.engine.stop()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return ApiError(status, f"{request.method} {request.url.path}: not found" if status == 404
                        else f"{request.method} is not allowed on {request.url.path}").response()  # fmt: skip

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.ferrollm = state
    return app
