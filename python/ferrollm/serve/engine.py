"""The batching engine behind the server: a KV cache of ``n_slots`` sequences and one thread
that, at every step, runs the next token of every decoding sequence and a chunk of every
prompt being read in ONE forward pass (``Model.eval_batch``, GIL released), then samples,
detokenizes and hands each job its text. New jobs join between steps (continuous batching);
a prompt longer than the step's budget is read over several steps so that the streams already
decoding keep going. A slot keeps the tokens it cached: a job sharing a prefix with them
reuses that part.

Jobs talk to the outside only through ``emit`` (called on the engine thread) and their
``cancel`` flag, so the HTTP layer stays a thin adapter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferrollm import _core
from ferrollm.generate.decoding import TokenChooser
from ferrollm.generate.grammar import GrammarError, LlamaGrammar
from ferrollm.generate.logprobs import TokenLogprob, token_logprob
from ferrollm.generate.sampler import Sampler, SamplingParams
from ferrollm.generate.tools import LazyToolGrammar
from ferrollm.serve.metrics import Metrics
from ferrollm.session import Session, common_prefix
from ferrollm.text.textstream import Completion
from ferrollm.text.tokenizer import Tokenizer


class QueueFull(Exception):
    """More jobs wait than the queue holds (HTTP 429)."""


class Draining(Exception):
    """The engine is shutting down and takes no new jobs (HTTP 503)."""


@dataclass
class Event:
    """What a job emits: ``piece`` (text, with ``tokens`` and optional ``logprobs``), then one
    ``done`` (``finish`` is "stop" or "length") or one ``error`` (``text`` says why)."""

    kind: str
    text: str = ""
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stops: list[str]
    emit: Callable[[Event], None]
    seed: int | None = None
    top_logprobs: int | None = None  # None: no log-probabilities; else how many alternatives
    grammar: LlamaGrammar | LazyToolGrammar | None = None  # response_format or tools; one constraint per job
    deadline: float | None = None  # time.monotonic() after which the job ends with an error
    cancelled: bool = False
    # Engine-side state.
    sampler: Sampler = field(init=False)
    choose: TokenChooser = field(init=False)  # the sampler, under the grammar if any
    out: Completion | None = None  # EOS, stop strings and the token budget
    pending: list[int] = field(default_factory=list)  # tokens still to evaluate
    budget: int = 0
    t_queued: float = field(default_factory=time.monotonic)
    t_first: float | None = None

    @property
    def n_out(self) -> int:
        """Completion tokens so far."""
        return self.out.n_out if self.out is not None else 0

    def cancel(self) -> None:
        """Ends the job at the next step, freeing its slot (the client went away)."""
        self.cancelled = True


@dataclass
class Slot:
    session: Session  # one sequence of the engine: exactly what its cache holds
    job: Job | None = None
    last_used: float = 0.0

    @property
    def seq(self) -> int:
        return self.session.seq

    @property
    def tokens(self) -> list[int]:
        return self.session.tokens


class Engine:
    def __init__(
        self,
        model: _core.Model,
        tokenizer: Tokenizer,
        *,
        max_queue: int = 64,
        step_tokens: int = 256,
        metrics: Metrics | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = model.n_ctx  # per slot
        self.max_queue = max_queue
        self.step_tokens = max(step_tokens, model.n_seq)
        self.metrics = metrics or Metrics()
        self.slots = [Slot(Session(model, tokenizer.n_vocab, seq=seq)) for seq in range(model.n_seq)]
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._draining = False
        self._stopped = False
        self._eos = tokenizer.eos_id
        self._thread = threading.Thread(target=self._run, name="ferrollm-engine", daemon=True)
        self._thread.start()

    # -- the outside ---------------------------------------------------------------------------

    def submit(self, jobs: list[Job]) -> None:
        """Queues jobs (all or none) or raises QueueFull / Draining / ValueError."""
        for job in jobs:
            if len(job.prompt) >= self.n_ctx:
                raise ValueError(
                    f"the prompt has {len(job.prompt)} tokens; the context of a slot holds {self.n_ctx}"
                )
            if not job.prompt:
                raise ValueError("the prompt is empty")
            job.budget = self.n_ctx - len(job.prompt)
            if job.max_tokens > 0:
                job.budget = min(job.budget, job.max_tokens)
        with self._cv:
            if self._draining:
                raise Draining("the server is shutting down")
            if len(self._waiting) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (at most {self.max_queue})")
            self._waiting.extend(jobs)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify()

    @property
    def busy(self) -> int:
        """Jobs waiting or running."""
        with self._cv:
            return len(self._waiting) + sum(s.job is not None for s in self.slots)

    def drain(self, timeout: float | None = None) -> bool:
        """Takes no new jobs and waits until the accepted ones have ended; True if they did."""
        with self._cv:
            self._draining = True
            self._cv.notify()
            return self._cv.wait_for(
                lambda: not self._waiting and all(s.job is None for s in self.slots), timeout
            )

    def stop(self) -> None:
        """Ends the thread (after ``drain`` for a graceful stop) and closes the model."""
        with self._cv:
            self._draining = self._stopped = True
            self._cv.notify_all()
        self._thread.join()
        self.model.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.notify_all()  # drain() waits for the last job to end
                self._cv.wait_for(lambda: self._stopped or self._waiting or any(s.job for s in self.slots))
                if self._stopped:
                    for job in [*self._waiting, *(s.job for s in self.slots if s.job)]:
                        job.emit(Event("error", "the server stopped before the request ended"))
                    return
                self._reap()
                self._admit()
                self.metrics.queue_depth.set(len(self._waiting))
            runs = self._runs()
            if runs:
                self._step(runs)

    def _finish(self, slot: Slot, event: Event) -> None:
        job = slot.job
        assert job is not None
        event.prompt_tokens, event.completion_tokens = len(job.prompt), job.n_out
        slot.job = None
        slot.last_used = time.monotonic()
        job.emit(event)
        self.metrics.requests_finished.labels(event.finish or event.kind).inc()

    def _reap(self) -> None:
        """Ends cancelled and overdue jobs, waiting or running."""
        now = time.monotonic()
        overdue = [j for j in self._waiting if j.deadline is not None and now > j.deadline]
        for job in overdue:
            job.emit(Event("error", "the request exceeded its time limit while queued", finish="timeout"))
        self._waiting = deque(j for j in self._waiting if not j.cancelled and j not in overdue)
        for slot in self.slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled:
                slot.job = None
                self.metrics.requests_finished.labels("cancelled").inc()
            elif job.deadline is not None and now > job.deadline:
                self._finish(slot, Event("error", "the request exceeded its time limit", finish="timeout"))

    def _admit(self) -> None:
        """Gives waiting jobs free slots, each the one whose cache shares the longest prefix
        with its prompt (then the least recently used)."""
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            # The last prompt token is always evaluated: its logits give the first token.
            slot = max(free, key=lambda s: (common_prefix(s.tokens, job.prompt[:-1]), -s.last_used))
            # Fewer (0) where a sliding-window cache no longer holds the prefix.
            keep = slot.session.truncate(common_prefix(slot.tokens, job.prompt[:-1]))
            job.pending = job.prompt[keep:]
            job.sampler = Sampler(job.params, job.seed)
            try:
                constraint = job.grammar.constraint(self.tokenizer) if job.grammar is not None else None
            except GrammarError as e:  # checked when the request came; a matcher may still fail
                job.emit(Event("error", str(e)))
                continue
            job.choose = TokenChooser(job.sampler, constraint=constraint)
            # Tokens the grammar forces go in the slot's next run together (one step for the
            # lot); not with log-probabilities, which would need each of their rows.
            job.choose.fast_forward = job.top_logprobs is None
            job.choose.max_forced = self.step_tokens - 1
            job.out = Completion(
                self.tokenizer.stream_decoder(), job.stops, self.tokenizer.eos_id, job.budget
            )
            slot.job = job
            self.metrics.prompt_tokens_cached.inc(keep)

    def _runs(self) -> list[tuple[Slot, list[int]]]:
        """This step's (slot, tokens): every decoding job's next token first, then prompt
        chunks within the step's token budget."""
        with self._cv:
            active = [s for s in self.slots if s.job is not None]
        decoding = [(s, list(s.job.pending)) for s in active if s.job.t_first is not None]
        budget = self.step_tokens - sum(len(tokens) for _, tokens in decoding)
        runs = list(decoding)
        for slot in sorted((s for s in active if s.job.t_first is None), key=lambda s: s.job.t_queued):
            if budget <= 0:
                break
            chunk = slot.job.pending[:budget]
            runs.append((slot, chunk))
            budget -= len(chunk)
        return runs

    def _step(self, runs: list[tuple[Slot, list[int]]]) -> None:
        t0 = time.monotonic()
        try:
            logits = self.model.eval_batch([(slot.seq, tokens) for slot, tokens in runs])
        except Exception as e:  # noqa: BLE001 - a bad step ends its jobs, not the server
            with self._cv:
                for slot, _ in runs:
                    if slot.job is not None:
                        self._finish(slot, Event("error", f"evaluation failed: {e}"))
            return
        dt = time.monotonic() - t0
        n_decoded = 0
        with self._cv:
            for (slot, tokens), row in zip(runs, logits):
                job = slot.job
                slot.session.ran(tokens)
                if job is None:  # cancelled during the step: the cache holds the tokens anyway
                    continue
                prefill = job.t_first is None
                del job.pending[: len(tokens)]
                if prefill:
                    self.metrics.prompt_tokens.inc(len(tokens))
                    if job.pending:
                        continue  # more of the prompt next step
                    job.t_first = time.monotonic()
                    self.metrics.time_to_first_token.observe(job.t_first - job.t_queued)
                else:
                    n_decoded += len(tokens)
                self._sample(slot, job, row)
        if n_decoded:
            self.metrics.generation_tokens.inc(n_decoded)
            self.metrics.tokens_per_second.set(n_decoded / dt if dt > 0 else 0.0)
        used = sum(len(s.tokens) for s in self.slots)
        self.metrics.kv_cache_usage.set(used / (self.n_ctx * len(self.slots)))

    def _sample(self, slot: Slot, job: Job, logits: np.ndarray) -> None:
        token = job.choose(logits, slot.tokens)
        logprobs = None
        if job.top_logprobs is not None and token != self._eos:
            logprobs = [token_logprob(self.tokenizer, logits, token, job.top_logprobs)]
        taken = [token, *job.choose.forced_tail]  # the grammar's forced tokens follow it
        text, finish = job.out.take(taken)
        if finish:
            self._finish(slot, Event("done", text, finish=finish, logprobs=logprobs))
        else:
            if text or logprobs:
                job.emit(Event("piece", text, logprobs=logprobs))
            job.pending = taken

    def info(self) -> dict[str, Any]:
        return {"slots": len(self.slots), "n_ctx_slot": self.n_ctx, "busy": self.busy}
