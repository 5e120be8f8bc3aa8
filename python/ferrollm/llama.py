"""``ferrollm.Llama``: the llama-cpp-python API over ferrollm's engine.

A script written for llama-cpp-python runs after swapping the import::

    from ferrollm import Llama
    llm = Llama(model_path="model.gguf", n_ctx=4096)
    llm("Q: Name the planets. A:", max_tokens=32, stop=["Q:"])
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])

Results have llama-cpp-python's (OpenAI-style) dict shapes; ``stream=True`` yields chunks.
The forward pass, KV cache and expert dispatch run in Rust (one call per decoded token, GIL
released); this layer tokenizes, samples, stops and streams.
"""

from __future__ import annotations

import functools
import numbers
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from typing_extensions import Self

from ferrollm import _core, gguf, llama_cache
from ferrollm.checkpoints import hub
from ferrollm.generate import embedding as embeddings
from ferrollm.generate import saved_state, speculative, tool_syntax
from ferrollm.generate.decoding import LogitsProcessorList, StoppingCriteriaList, TokenChooser
from ferrollm.generate.embedding import LLAMA_POOLING_TYPE_UNSPECIFIED
from ferrollm.generate.grammar import LlamaGrammar, response_format_grammar
from ferrollm.generate.logprobs import (
    TokenLogprob,
    chat_shape,
    completion_shape,
    prompt_logprobs,
    token_logprob,
)
from ferrollm.generate.sampler import Sampler, SamplingParams
from ferrollm.generate.saved_state import LlamaState
from ferrollm.generate.tools import LazyToolGrammar, ToolCalling
from ferrollm.llama_cache import BaseLlamaCache
from ferrollm.llama_speculative import LlamaDraftModel
from ferrollm.session import Session, context_error, open_engine
from ferrollm.text.chat import ChatPrompt, ChatTemplateError, chat_formatter, render
from ferrollm.text.textstream import Completion
from ferrollm.text.tokenizer import Tokenizer

LLAMA_DEFAULT_SEED = 0xFFFFFFFF

# llama-cpp-python constructor arguments that have no meaning on a CPU-only, mmap-only engine;
# accepted so that scripts run unchanged.
IGNORED_PARAMS = {
    "n_gpu_layers", "split_mode", "main_gpu", "tensor_split", "rpc_servers", "use_mmap",
    "use_mlock", "n_ubatch", "n_threads_batch", "rope_scaling_type", "yarn_ext_factor",
    "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "offload_kqv",
    "flash_attn", "last_n_tokens_size", "lora_base", "lora_scale", "lora_path", "numa", "chat_handler",
    "tokenizer", "spm_infill", "no_perf", "op_offload", "swa_full", "mul_mat_q",
}  # fmt: skip


class Piece(NamedTuple):
    """A piece of generated text; the last of a generation carries ``finish``."""

    text: str
    finish: str | None
    n_out: int  # completion tokens so far
    logprobs: list[TokenLogprob]  # of the tokens generated since the previous piece


class PreparedChat(NamedTuple):
    """What a chat request decodes from: the prompt, the grammar the answer must follow
    (None: free) and the request's tool calling (None without tools)."""

    chat: ChatPrompt
    grammar: LlamaGrammar | LazyToolGrammar | None
    calling: ToolCalling | None


class Llama:
    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = 512,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = LLAMA_DEFAULT_SEED,
        kv_overrides: Mapping[str, bool | int | float | str] | None = None,
        type_k: int | str | None = None,
        type_v: int | str | None = None,
        chat_format: str | None = None,
        logits_all: bool = False,
        vocab_only: bool = False,
        verbose: bool = True,
        progress: bool = False,
        check_tensors: bool = False,
        embedding: bool = False,
        pooling_type: int = LLAMA_POOLING_TYPE_UNSPECIFIED,
        draft_model: LlamaDraftModel | None = None,
        **kwargs: Any,
    ):
        unknown = set(kwargs) - IGNORED_PARAMS
        if unknown:
            raise TypeError(f"Llama() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch)):
            if not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if n_threads == -1:  # llama.cpp's "default"
            n_threads = None
        if n_threads is not None and (not isinstance(n_threads, numbers.Integral) or n_threads < 1):
            raise ValueError(
                f"n_threads must be 1 or more (None or -1: one per physical core), got {n_threads!r}"
            )
        t0 = time.perf_counter()
        self.model_path = os.fspath(model_path)
        self.verbose = verbose
        self._file = gguf.open(self.model_path)
        self.metadata: dict[str, Any] = self._file.metadata
        self.tokenizer_ = Tokenizer(self.metadata)
        self._formatter = chat_formatter(chat_format, self.tokenizer_.chat_template)
        self.chat_format = chat_format
        self._session: Session | None = None
        self._closed = False
        self.n_batch = max(1, n_batch)
        self.embedding = embedding
        self._pooling_request = pooling_type
        if embedding:
            self.pooling_type()  # a bad request fails here, not at the first embed
        self.cache: BaseLlamaCache | None = None
        self._logits_all = logits_all  # kept here for a vocab_only Llama, which has no session
        if not vocab_only:
            engine = open_engine(self.model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                                 type_k=type_k, type_v=type_v, kv_overrides=kv_overrides,
                                 check_tensors=check_tensors)  # fmt: skip
            self._session = Session(engine, self.n_vocab(), n_batch=self.n_batch, logits_all=logits_all)
            if progress:
                self._prefetch_with_progress()
        # llama-cpp-python's attribute: the threads the engine runs (resolved from None / -1).
        self.n_threads = self._session.engine.n_threads if self._session is not None else n_threads
        # The sampler's random state when a call gives no seed (saved states carry it).
        self.rng = np.random.default_rng(None if seed == LLAMA_DEFAULT_SEED else seed)
        self.load_seconds = time.perf_counter() - t0
        self.last_timings: dict[str, float] = {}
        self.draft_model = speculative.attach(draft_model, self)
        if verbose and self._session is not None:
            model = self._session.engine
            c = model.config()
            experts = f", {c['n_expert_used']} of {c['n_expert']} experts" if c["n_expert"] else ""
            print(
                f"ferrollm: {os.path.basename(self.model_path)}: {c['n_layer']} layers, "
                f"embedding {c['n_embd']}{experts}; context {self.n_ctx()}, KV cache "
                f"{c['type_k']}/{c['type_v']} {model.kv_cache_bytes / 2**20:.1f} MiB; "
                f"{model.n_threads} threads, {_core.isa_active()} kernels; loaded in "
                f"{self.load_seconds:.2f} s",
                file=sys.stderr,
            )
        if verbose and kwargs.get("n_gpu_layers"):
            print("ferrollm: n_gpu_layers ignored: ferrollm runs on the CPU", file=sys.stderr)

    def _prefetch_with_progress(self) -> None:
        """Reads the weights once so that the first tokens do not wait on page faults,
        drawing a bar on stderr (llama.cpp's loading dots)."""
        model = self.session.engine
        n = model.n_tensors()
        total = sum(t.nbytes for t in self._file.tensors)
        live = sys.stderr.isatty()  # a log file gets the finished bar only
        done, shown = 0, -1
        for i in range(n):
            done += model.prefetch(i) or 0
            percent = int(100 * min(done / total, 1.0)) if total else 100
            if live and percent != shown:
                shown = percent
                print(
                    f"\rloading [{'#' * (percent * 40 // 100):<40}] {percent:3d}%",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        print(f"\rloading [{'#' * 40}] 100% ({done / 2**20:.0f} MiB)", file=sys.stderr)

    # -- llama-cpp-python's small accessors ---------------------------------------------------

    @property
    def session(self) -> Session:
        """The engine's sequence: its cache, the tokens it holds and the logits kept."""
        if self._closed:
            raise RuntimeError("this Llama is closed")
        if self._session is None:
            raise RuntimeError("this Llama was opened with vocab_only=True: it can only tokenize")
        return self._session

    @functools.cached_property
    def fingerprint(self) -> str:
        """What a saved state must have been saved by to load here (model and settings)."""
        return saved_state.model_fingerprint(self.model_path, self._file, self.session.engine.config())

    def n_ctx(self) -> int:
        return self._session.n_ctx if self._session else 0

    def n_vocab(self) -> int:
        return self.tokenizer_.n_vocab

    def n_embd(self) -> int:
        return self.session.engine.config()["n_embd"]

    def token_bos(self) -> int:
        return self.tokenizer_.bos_id

    def token_eos(self) -> int:
        return self.tokenizer_.eos_id

    @property
    def input_ids(self) -> list[int]:
        """The tokens the cache holds."""
        return self._session.tokens if self._session else []

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def logits_all(self) -> bool:
        return self._session.logits_all if self._session else self._logits_all

    @property
    def scores(self) -> np.ndarray:
        """Logits so far: one row per evaluated token with ``logits_all``, else the last row."""
        return self.session.scores if self._session else np.zeros((0, self.n_vocab()), dtype=np.float32)

    @property
    def eval_logits(self) -> list[list[float]]:
        return [list(map(float, row)) for row in self.scores]

    def last_logits(self) -> np.ndarray:
        return self.session.last_logits()

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        if isinstance(text, bytes):
            # Bytes that are not UTF-8 stay (as lone surrogates): byte tokens where the
            # vocabulary has them, as llama.cpp.
            text = text.decode("utf-8", errors="surrogateescape")
        return self.tokenizer_.encode(text, add_bos=add_bos and self.tokenizer_.add_bos, special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        return self.tokenizer_.detokenize(tokens, special=special)

    def reset(self) -> None:
        if self._session is not None:
            self._session.reset()

    def eval(self, tokens: Sequence[int]) -> None:
        """Runs ``tokens`` after the cached ones and keeps their logits."""
        tokens = [int(t) for t in tokens]
        if tokens:
            session = self.session
            session.check(tokens, self.tokenizer_.out_of_vocabulary)  # none runs if one is bad
            session.eval(tokens)

    def _sampler(self, params: SamplingParams, seed: int | None) -> Sampler:
        sampler = Sampler(params)
        sampler.rng = np.random.default_rng(seed) if seed is not None else self.rng
        return sampler

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
        seed: int | None = None,
        reset: bool = True,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        grammar: LlamaGrammar | None = None,
        *,
        logits_per_token: bool = True,
        **_: Any,
    ) -> Iterator[int]:
        """Yields sampled tokens until the context is full or a stopping criterion says so; the
        caller stops it otherwise. With ``logits_per_token=False`` (nobody reads the logits of
        each token: no log-probabilities), a run of tokens the grammar forces keeps the logits
        of its last one only, and the output head runs once for the run."""
        params = SamplingParams(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            logit_bias={int(k): float(v) for k, v in (logit_bias or {}).items()},
        )  # fmt: skip
        constraint = grammar.constraint(self.tokenizer_) if grammar is not None else None
        choose = TokenChooser(self._sampler(params, seed), logits_processor, constraint, stopping_criteria)
        self.session.prefill(list(tokens))
        # The speculative loop takes a plain chooser (always a token): a stopping criterion
        # decodes one token at a time.
        if self.draft_model is not None and stopping_criteria is None:
            yield from speculative.generate(self, choose, self.draft_model)
            return
        choose.fast_forward = True
        while True:
            token = choose(self.last_logits(), self.input_ids)
            if token is None:
                return
            forced = choose.forced_tail  # tokens the grammar forces after it: one batch
            yield token
            if self.n_tokens >= self.n_ctx():
                return
            if not forced:
                self.eval([token])
                continue
            forced = forced[: self.n_ctx() - self.n_tokens - 1]
            rows = self.session.evaluate([token, *forced], every_row=logits_per_token or self.logits_all)
            yield from self.session.replay(forced, rows)

    # -- completions ---------------------------------------------------------------------------

    def _completion_stream(
        self,
        prompt_tokens: list[int],
        max_tokens: int | None,
        stop: Sequence[str],
        params: dict[str, Any],
        logprobs: int | None = None,
    ) -> Iterator[Piece]:
        """Yields pieces of text; the last carries the finish reason. Text that could be the
        start of a stop string is held back. With ``logprobs`` (how many alternatives), each
        piece carries the log-probabilities of the tokens generated since the previous one."""
        self.session  # noqa: B018 - a closed or vocab_only Llama fails here
        if len(prompt_tokens) >= self.n_ctx():
            raise context_error(len(prompt_tokens), self.n_ctx())
        budget = self.n_ctx() - len(prompt_tokens)
        if max_tokens is not None and max_tokens > 0:
            budget = min(budget, max_tokens)
        out = Completion(self.tokenizer_.stream_decoder(), stop, self.token_eos(), budget)
        entries: list[TokenLogprob] = []
        finish, rest = None, ""
        t0 = time.perf_counter()
        t_first = None
        llama_cache.restore_longest_prefix(self, prompt_tokens)
        gen = self.generate(prompt_tokens, **params, logits_per_token=logprobs is not None)
        try:
            for token in gen:
                if t_first is None:
                    t_first = time.perf_counter()
                if logprobs is not None and token != self.token_eos():
                    entries.append(token_logprob(self.tokenizer_, self.last_logits(), token, logprobs))
                piece, finish = out.take([token])
                if finish:
                    rest = piece
                    break
                if piece:
                    yield Piece(piece, None, out.n_out, entries)
                    entries = []
            else:  # the generator ended by itself: a stopping criterion (or a full context)
                finish = "stop"
                rest = out.end(finish)
        finally:
            gen.close()
        llama_cache.save(self)
        n_out = out.n_out
        t_end = time.perf_counter()
        t_first = t_first or t_end
        self.last_timings = {
            "prompt_tokens": len(prompt_tokens),
            "prompt_seconds": t_first - t0,
            "completion_tokens": n_out,
            "completion_seconds": t_end - t_first,
        }
        yield Piece(rest, finish, n_out, entries)
        if self.verbose:  # after the last piece, so the figures follow the text
            self._print_timings()

    def _print_timings(self) -> None:
        t = self.last_timings
        p_rate = t["prompt_tokens"] / t["prompt_seconds"] if t["prompt_seconds"] else 0.0
        e_rate = t["completion_tokens"] / t["completion_seconds"] if t["completion_seconds"] else 0.0
        print(
            f"ferrollm: prompt {t['prompt_tokens']} tokens in {t['prompt_seconds']:.2f} s ({p_rate:.1f} tok/s), "
            f"generated {t['completion_tokens']} tokens in {t['completion_seconds']:.2f} s ({e_rate:.1f} tok/s)",
            file=sys.stderr,
        )

    def prompt_tokens(self, prompt: str | Sequence[int], special: bool = False) -> list[int]:
        if isinstance(prompt, (list, tuple)):
            return [int(t) for t in prompt]
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str or a list of token ids, not {type(prompt).__name__}")
        tokens = self.tokenizer_.encode(prompt, add_bos=False, special=special)
        if self.tokenizer_.add_bos and (not tokens or tokens[0] != self.token_bos()):
            tokens.insert(0, self.token_bos())
        return tokens

    def _prompt_rows(self, tokens: list[int]) -> np.ndarray:
        """The logits after every prompt token (echo with logprobs): the prompt is run again
        whole, and stays cached for the generation that follows."""
        return self.session.prompt_rows(tokens)

    def create_completion(
        self,
        prompt: str | Sequence[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | Sequence[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        grammar: LlamaGrammar | None = None,
        **_: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """llama-cpp-python's completion. ``logprobs=N``: each token's log-probability and the N
        most likely alternatives (with ``echo``, the prompt's too); ``grammar``: a LlamaGrammar
        the text must follow; ``logits_processor`` / ``stopping_criteria``: llama-cpp-python's
        hooks, called with (input_ids, logits)."""
        if suffix:
            raise NotImplementedError("suffix (fill-in-the-middle) is not supported")
        if logprobs is not None and logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {logprobs}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        tokens = self.prompt_tokens(prompt)
        params = {
            "top_k": top_k, "top_p": top_p, "min_p": min_p, "temp": temperature, "repeat_penalty": repeat_penalty,
            "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty, "logit_bias": logit_bias,
            "seed": seed, "logits_processor": logits_processor, "stopping_criteria": stopping_criteria,
            "grammar": grammar,
        }  # fmt: skip
        prefix = prompt if isinstance(prompt, str) else self.detokenize(tokens).decode("utf-8", "replace")
        echoed: list[TokenLogprob] = []
        if echo and logprobs is not None:
            echoed = prompt_logprobs(self.tokenizer_, self._prompt_rows(tokens), tokens, logprobs)
        pieces = self._completion_stream(tokens, max_tokens, stops, params, logprobs)
        meta = {
            "id": f"cmpl-{uuid.uuid4()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_path,
        }
        # llama-cpp-python's text offsets count from the start of the prompt text.
        offset = 0 if echo else len(prefix)
        if stream:
            return self._stream_chunks(
                meta, pieces, prefix if echo else "", echoed, logprobs is not None, offset
            )
        text, finish, usage, entries = self._collect(pieces, len(tokens))
        choice = {
            "text": (prefix if echo else "") + text,
            "index": 0,
            "logprobs": completion_shape(echoed + entries, offset) if logprobs is not None else None,
            "finish_reason": finish,
        }
        return {**meta, "choices": [choice], "usage": usage}

    @staticmethod
    def _collect(pieces: Iterator[Piece], n_prompt: int) -> tuple[str, str | None, dict, list[TokenLogprob]]:
        """Joins a non-streamed result: (text, finish_reason, usage, log-probabilities)."""
        text, finish, n_out, entries = "", None, 0, []
        for piece in pieces:
            text += piece.text
            finish, n_out = piece.finish, piece.n_out
            entries += piece.logprobs
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        return text, finish, usage, entries

    @staticmethod
    def _stream_chunks(
        meta: dict,
        pieces: Iterator[Piece],
        echo: str,
        echoed: list[TokenLogprob],
        logprobs: bool,
        offset: int,
    ) -> Iterator[dict[str, Any]]:
        def chunk(text: str, entries: list[TokenLogprob], finish: str | None) -> dict[str, Any]:
            nonlocal offset
            shaped = completion_shape(entries, offset) if logprobs and entries else None
            offset += sum(len(e.text) for e in entries)
            return {
                **meta,
                "choices": [{"text": text, "index": 0, "logprobs": shaped, "finish_reason": finish}],
            }

        if echo:
            yield chunk(echo, echoed, None)
        for piece in pieces:
            if piece.text or piece.finish or (logprobs and piece.logprobs):
                yield chunk(piece.text, piece.logprobs, piece.finish)

    __call__ = create_completion

    def chat_prompt(self, messages: Sequence[dict], tools: list | None = None) -> ChatPrompt:
        bos = self.tokenizer_.tokens[self.token_bos()] if self.token_bos() >= 0 else ""
        eos = self.tokenizer_.tokens[self.token_eos()] if self.token_eos() >= 0 else ""
        return render(self._formatter, messages, bos, eos, tools=tools)

    def prepare_chat(
        self,
        messages: Sequence[dict],
        tools: Sequence[dict] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        functions: Sequence[dict] | None = None,
        function_call: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        response_format: Mapping[str, Any] | None = None,
        grammar: LlamaGrammar | None = None,
    ) -> PreparedChat:
        """The prompt and grammar of a chat request (create_chat_completion and the server's
        /v1/chat/completions). With tools, the template gets them and the answer's calls take the
        syntax it teaches (ferrollm.generate.tool_syntax); when it ignores them, the built-in instructions
        (ferrollm.generate.tools) describe them instead. Raises ToolError,
        GrammarError (response_format) or ChatTemplateError."""
        calling = ToolCalling.from_request(tools, tool_choice, functions, function_call, parallel_tool_calls)
        if calling is None:
            grammar = response_format_grammar(response_format) or grammar
            return PreparedChat(self.chat_prompt(messages), grammar, None)
        chat = self.chat_prompt(messages, tools=calling.tools)
        try:
            ignores_tools = chat.text == self.chat_prompt(messages).text
        except ChatTemplateError:  # a tool-use template that needs tools (Hermes 2 Pro's) shows them
            ignores_tools = False
        if ignores_tools:  # ours
            chat = self.chat_prompt(calling.instructed(messages))
        else:  # calls in the syntax the template teaches
            calling = calling.using(tool_syntax.detect(getattr(self._formatter, "source", None)))
        return PreparedChat(chat, calling.grammar(self.tokenizer_), calling)

    def create_chat_completion(
        self,
        messages: Sequence[dict],
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        stream: bool = False,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        logit_bias: Mapping[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: LlamaGrammar | None = None,
        tools: Sequence[dict] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        functions: Sequence[dict] | None = None,
        function_call: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        **_: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """llama-cpp-python's chat completion, with OpenAI's ``logprobs``/``top_logprobs``,
        ``response_format`` (``json_object``, ``json_schema``) and ``tools``/``tool_choice``
        (see ferrollm.generate.tools for how calls are prompted and constrained)."""
        tool_args = (tools, tool_choice, functions, function_call, parallel_tool_calls)
        chat, grammar, calling = self.prepare_chat(messages, *tool_args, response_format, grammar)
        stops = ([stop] if isinstance(stop, str) else list(stop or [])) + chat.stop
        tokens = self.prompt_tokens(chat.text, special=True)
        params = {
            "top_k": top_k, "top_p": top_p, "min_p": min_p, "temp": temperature, "repeat_penalty": repeat_penalty,
            "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty, "logit_bias": logit_bias,
            "seed": seed, "logits_processor": logits_processor, "stopping_criteria": stopping_criteria,
            "grammar": grammar,
        }  # fmt: skip
        n_top = (top_logprobs or 0) if logprobs else None
        pieces = self._completion_stream(tokens, max_tokens, stops, params, n_top)
        meta = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": self.model_path}
        if stream:
            if calling is not None:
                return calling.chunks(meta, pieces, n_top is not None)
            return self._chat_chunks(meta, pieces, n_top is not None)
        text, finish, usage, entries = self._collect(pieces, len(tokens))
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calling is not None:
            message, finish = calling.message(text, finish)
        shaped = chat_shape(entries) if n_top is not None else None
        choice = {"index": 0, "message": message, "logprobs": shaped, "finish_reason": finish}
        return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}

    @staticmethod
    def _chat_chunks(meta: dict, pieces: Iterator[Piece], logprobs: bool) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict, finish: str | None, entries: list[TokenLogprob] = ()) -> dict[str, Any]:
            shaped = chat_shape(entries) if logprobs and entries else None
            return {
                **meta,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": shaped, "finish_reason": finish}],
            }

        yield chunk({"role": "assistant"}, None)
        for piece in pieces:
            if piece.text or piece.logprobs:
                yield chunk({"content": piece.text}, None, piece.logprobs)
            if piece.finish:
                yield chunk({}, piece.finish)

    # -- embeddings, saved state, prompt cache, Hugging Face (ferrollm.generate.embedding, llama_state,
    # llama_cache, hub)

    def pooling_type(self) -> int:
        """llama.cpp's pooling type id: 0 none, 1 mean, 2 cls, 3 last."""
        return embeddings.pooling_type(self._pooling_request, self.metadata)

    def embed(
        self,
        input: str | list[str],
        normalize: bool = False,
        truncate: bool = True,
        return_count: bool = False,
    ) -> Any:
        """Embeddings of a text (or of each text in a list): one vector, or one per token with
        pooling type 0 (none); with ``return_count``, (embeddings, total tokens)."""
        return embeddings.embed(self, input, normalize, truncate, return_count)

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict[str, Any]:
        return embeddings.create_embedding(self, input, model)

    def save_state(self) -> LlamaState:
        return saved_state.save(self)

    def load_state(self, state: LlamaState) -> None:
        saved_state.load(self, state)

    def set_cache(self, cache: BaseLlamaCache | None) -> None:
        self.cache = cache

    longest_token_prefix = staticmethod(llama_cache.longest_token_prefix)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str | None,
        additional_files: list[str] | None = None,
        local_dir: str | os.PathLike | None = None,
        local_dir_use_symlinks: bool | str = "auto",
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> Llama:
        """A GGUF from a Hugging Face repository (``filename`` may be a glob), the local copy
        first; needs huggingface_hub."""
        path = hub.resolve(
            repo_id, filename, additional_files, local_dir, cache_dir, kwargs.pop("revision", None)
        )
        return cls(model_path=path, **kwargs)

    def close(self) -> None:
        """Releases the weights' map, the KV cache and the threads; later calls are errors."""
        if self._session is not None:
            self._session.engine.close()
        self._session = None
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
