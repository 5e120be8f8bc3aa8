"""Quantization quality: perplexity and KL-divergence, with llama.cpp's definitions.

Perplexity (llama.cpp's ``llama-perplexity``): the text is tokenized once (BOS first), cut into
non-overlapping chunks of ``n_ctx`` tokens, the first token of each chunk is replaced by BOS,
each chunk is evaluated from an empty cache, and only the second half of each chunk is scored
(positions n_ctx/2 .. n_ctx-2 predicting the next token), so every scored token has at least
n_ctx/2 tokens of context. The ± is the standard error of the mean log-likelihood carried
through exp().

KL-divergence (llama.cpp's ``--kl-divergence-base`` / ``--kl-divergence``): the base model's
log-probabilities at every scored position are saved once (float16, with the tokens, so a
later run can check that it scores the same text), then a quantized model is compared with
them: mean KLD(base || quantized), its percentiles, top-1 agreement and the change in the
probability of the right token.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from ferrollm import _core, gguf
from ferrollm.text.tokenizer import Tokenizer

LOGITS_MAGIC = b"FLLMLOGP"  # + u32 header length + JSON header + int32 tokens + float16 rows


@dataclass
class PerplexityResult:
    ppl: float
    ppl_err: float
    nll: float  # mean negative log-likelihood (nats per token)
    n_tokens_scored: int
    n_chunks: int
    n_ctx: int
    chunk_ppl: list[float]  # running estimate after each chunk, as llama.cpp prints

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KLDResult:
    ppl_base: float
    ppl: float
    ppl_err: float
    ln_ppl_ratio: float
    kld_mean: float
    kld_err: float
    kld_median: float
    kld_p99: float
    kld_max: float
    top1_agreement: float  # fraction of positions where both models' argmax is the same
    top1_err: float
    rms_delta_p: float  # RMS change of the probability of the right token
    n_tokens_scored: int

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_err(values: np.ndarray) -> tuple[float, float]:
    n = values.size
    mean = float(values.mean())
    err = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, err


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-probabilities (the normalizer summed in float64): float64 throughout
    doubled the time of a perplexity run for no visible change in its figures."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x).sum(axis=-1, keepdims=True, dtype=np.float64))
    return x - lse.astype(np.float32)


def chunk_tokens(tokens: list[int], n_ctx: int, bos_id: int | None, n_chunks: int | None) -> list[list[int]]:
    """Non-overlapping chunks of n_ctx tokens; the first of each becomes BOS (llama.cpp)."""
    if n_ctx < 4:
        raise ValueError(f"context {n_ctx} is too small to score (at least 4 tokens)")
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens: at least one chunk of {n_ctx} is needed (-c)")
    count = available if not n_chunks or n_chunks < 0 else min(n_chunks, available)
    chunks = []
    for c in range(count):
        chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        chunks.append(chunk)
    return chunks


class Scorer:
    """Evaluates chunks of a text with one model and yields the log-probabilities of the scored
    half of each chunk together with the tokens they predict."""

    def __init__(self, model_path: str | os.PathLike, n_ctx: int, n_threads: int | None = None,
                 n_batch: int = 512):  # fmt: skip
        self.model_path = os.fspath(model_path)
        self.model = _core.Model(self.model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch)
        with gguf.open(self.model_path) as f:
            self.tokenizer = Tokenizer(f.metadata)
        self.n_ctx = n_ctx

    def chunks(self, text: str, n_chunks: int | None = None) -> list[list[int]]:
        bos = self.tokenizer.bos_id if self.tokenizer.add_bos else None
        tokens = self.tokenizer.encode(text)
        return chunk_tokens(tokens, self.n_ctx, bos, n_chunks)

    def score(self, chunks: list[list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        first = self.n_ctx // 2
        for chunk in chunks:
            self.model.truncate(0)
            logits = np.asarray(self.model.eval(chunk, logits_from=first))  # rows first..n_ctx-1
            yield log_softmax(logits[:-1]), np.asarray(chunk[first + 1 :])


def perplexity(
    model_path: str | os.PathLike,
    text: str,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    n_threads: int | None = None,
    n_batch: int = 512,
    save_logprobs: str | os.PathLike | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``text`` under the model; with ``save_logprobs`` the base log-probabilities
    for a later ``kl_divergence`` are written too."""
    scorer = Scorer(model_path, n_ctx, n_threads, n_batch)
    return score_perplexity(scorer, scorer.chunks(text, n_chunks), save_logprobs, progress)


def score_perplexity(
    scorer: Scorer,
    chunks: list[list[int]],
    save_logprobs: str | os.PathLike | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """``perplexity`` over chunks already cut, with a scorer the caller may have set up (the
    importance-matrix collection turns on activation statistics first)."""
    nlls, running = [], []
    nll_sum, count = 0.0, 0
    writer = _LogprobWriter(save_logprobs, scorer, chunks) if save_logprobs else None
    try:
        for i, (logp, targets) in enumerate(scorer.score(chunks)):
            nlls.append(-logp[np.arange(targets.size), targets].astype(np.float64))
            if writer:
                writer.write(logp)
            nll_sum, count = nll_sum + float(nlls[-1].sum()), count + targets.size
            running.append(math.exp(nll_sum / count))
            if progress:
                progress(i + 1, len(chunks), running[-1])
    finally:
        if writer:
            writer.close()
    nll, nll_err = _mean_err(np.concatenate(nlls))
    ppl = math.exp(nll)
    return PerplexityResult(ppl, ppl * nll_err, nll, count, len(chunks), scorer.n_ctx, running)


class _LogprobWriter:
    def __init__(self, path, scorer: Scorer, chunks: list[list[int]]):
        header = {
            "n_ctx": scorer.n_ctx,
            "n_vocab": scorer.model.n_vocab,
            "n_chunks": len(chunks),
            "model": os.path.basename(scorer.model_path),
        }
        blob = json.dumps(header).encode()
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.file.write(LOGITS_MAGIC + len(blob).to_bytes(4, "little") + blob)
        self.file.write(np.asarray(chunks, dtype=np.int32).tobytes())

    def write(self, logp: np.ndarray) -> None:
        self.file.write(logp.astype(np.float16).tobytes())

    def close(self) -> None:
        self.file.close()


def read_logprobs(path: str | os.PathLike) -> tuple[dict, np.ndarray, np.ndarray]:
    """(header, chunks as int32 [n_chunks, n_ctx], log-probs as float16 memmap
    [n_chunks, n_ctx - 1 - n_ctx/2, n_vocab]) of a file written by ``perplexity(save_logprobs=)``."""
    with open(path, "rb") as f:
        head = f.read(len(LOGITS_MAGIC) + 4)
        if len(head) < len(LOGITS_MAGIC) + 4 or head[: len(LOGITS_MAGIC)] != LOGITS_MAGIC:
            raise ValueError(f"{os.fspath(path)}: not a ferrollm log-probabilities file")
        size = int.from_bytes(head[len(LOGITS_MAGIC) :], "little")
        header = json.loads(f.read(size))
    offset = len(LOGITS_MAGIC) + 4 + size
    n_chunks, n_ctx, n_vocab = header["n_chunks"], header["n_ctx"], header["n_vocab"]
    rows = n_ctx - 1 - n_ctx // 2
    expected = offset + 4 * n_chunks * n_ctx + 2 * n_chunks * rows * n_vocab
    if os.path.getsize(path) != expected:
        raise ValueError(
            f"{os.fspath(path)}: truncated or corrupt ({os.path.getsize(path)} bytes, expected {expected})"
        )
    chunks = np.fromfile(path, dtype=np.int32, count=n_chunks * n_ctx, offset=offset).reshape(n_chunks, n_ctx)
    logp = np.memmap(path, dtype=np.float16, mode="r", offset=offset + 4 * chunks.size,
                     shape=(n_chunks, rows, n_vocab))  # fmt: skip
    return header, chunks, logp


def kl_divergence(
    model_path: str | os.PathLike,
    base_logprobs: str | os.PathLike,
    n_threads: int | None = None,
    n_batch: int = 512,
    progress: Callable[[int, int, float], None] | None = None,
) -> KLDResult:
    """Compare a (quantized) model with base log-probabilities saved by ``perplexity``, on the
    same chunks of the same text."""
    header, chunks, base = read_logprobs(base_logprobs)
    scorer = Scorer(model_path, header["n_ctx"], n_threads, n_batch)
    if scorer.model.n_vocab != header["n_vocab"]:
        raise ValueError(f"vocabulary sizes differ: model {scorer.model.n_vocab}, base {header['n_vocab']}")
    klds, nll_q, nll_b, top1, dp = [], [], [], [], []
    kld_sum, count = 0.0, 0
    for i, (logp, targets) in enumerate(scorer.score(chunks.tolist())):
        lb = base[i].astype(np.float32)
        pb = np.exp(lb)
        klds.append((pb * (lb - logp)).sum(axis=1, dtype=np.float64))
        idx = np.arange(targets.size)
        nll_q.append(-logp[idx, targets].astype(np.float64))
        nll_b.append(-lb[idx, targets].astype(np.float64))
        top1.append(lb.argmax(axis=1) == logp.argmax(axis=1))
        dp.append(np.exp(logp[idx, targets].astype(np.float64)) - pb[idx, targets])
        kld_sum, count = kld_sum + float(klds[-1].sum()), count + targets.size
        if progress:
            progress(i + 1, len(chunks), kld_sum / count)
    kld = np.concatenate(klds)
    nq, nb = np.concatenate(nll_q), np.concatenate(nll_b)
    agree = np.concatenate(top1).astype(np.float64)
    kld_mean, kld_err = _mean_err(kld)
    nll, nll_err = _mean_err(nq)
    agree_mean, agree_err = _mean_err(agree)
    return KLDResult(
        ppl_base=math.exp(float(nb.mean())),
        ppl=math.exp(nll),
        ppl_err=math.exp(nll) * nll_err,
        ln_ppl_ratio=float(nq.mean() - nb.mean()),
        kld_mean=kld_mean,
        kld_err=kld_err,
        kld_median=float(np.median(kld)),
        kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()),
        top1_agreement=agree_mean,
        top1_err=agree_err,
        rms_delta_p=float(np.sqrt(np.mean(np.square(np.concatenate(dp))))),
        n_tokens_scored=int(kld.size),
    )
