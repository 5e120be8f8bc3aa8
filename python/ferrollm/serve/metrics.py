"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own so that
several apps in one process (tests) do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.prompt_tokens = Counter("ferrollm_prompt_tokens", "Prompt tokens evaluated", registry=r)
        self.prompt_tokens_cached = Counter(
            "ferrollm_prompt_tokens_cached", "Prompt tokens reused from a slot's cache", registry=r
        )
        self.generation_tokens = Counter("ferrollm_generation_tokens", "Tokens generated", registry=r)
        self.tokens_per_second = Gauge(
            "ferrollm_tokens_per_second",
            "Tokens generated per second over the last step, all slots",
            registry=r,
        )
        self.queue_depth = Gauge("ferrollm_queue_depth", "Requests waiting for a slot", registry=r)
        self.requests_in_flight = Gauge(
            "ferrollm_requests_in_flight", "HTTP requests being answered", registry=r
        )
        self.kv_cache_usage = Gauge(
            "ferrollm_kv_cache_usage_ratio", "Share of KV cache positions in use", registry=r
        )
        self.requests_finished = Counter(
            "ferrollm_requests", "Generations ended, by how", ["reason"], registry=r
        )
        self.http_responses = Counter(
            "ferrollm_http_responses", "HTTP responses by status", ["status"], registry=r
        )
        self.time_to_first_token = Histogram(
            "ferrollm_time_to_first_token_seconds",
            "From queued to the first generated token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
