"""The OpenAI server as Ray Serve replicas, for throughput beyond one machine.

Each replica builds the same ASGI app as ``ferrollm serve`` (``create_app``) in its own process
on some node of the cluster, loads the model there (memory-mapped from a path every node can
read) and keeps its own continuous batching; Ray's HTTP proxy spreads the requests over the
replicas, restarts a replica whose process dies and sends new requests to the live ones
meanwhile. Ray is an optional dependency (``pip install 'ferrollm[ray]'``), imported only here.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

from ferrollm.cluster import connect
from ferrollm.serve.app import ServerConfig, create_app
from ferrollm.serve.metrics import Metrics


def _portable(config: ServerConfig) -> ServerConfig:
    """The config as replicas on other nodes read it: an absolute model path, and the model
    loaded before a replica counts as started (Ray sends requests only to started replicas)."""
    path = os.path.abspath(config.model_path) if config.model_path else None
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file (every node must read the same path)")
    return dataclasses.replace(config, model_path=path, load_before_start=True)


# The header that pins a conversation to a replica (Ray Serve's multiplexing header, read by its
# proxy): a client sends the same value with every turn of one conversation.
CONVERSATION_HEADER = "serve_multiplexed_model_id"


class ConversationAffinity:
    """ASGI middleware on each replica: a request carrying ``CONVERSATION_HEADER`` registers its
    value with Ray Serve's multiplexing, so that Ray's router sends the conversation's next
    turns to this replica, whose slots still hold its prefix in the KV cache. Ray's router sees
    a proxied request's headers, not its body, so the conversation is named by the client, not
    found from the prompt. The replica's process id goes back in ``x-ferrollm-replica``."""

    def __init__(self, app: Any, max_conversations: int):
        from ray import serve

        self.app = app

        @serve.multiplexed(max_num_models_per_replica=max_conversations)
        async def hold(conversation: str) -> str:
            return conversation  # nothing to load: the id only marks where its prefix is cached

        self.hold = hold
        self.replica = str(os.getpid()).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from ray import serve

        conversation = serve.get_multiplexed_model_id()
        if conversation:
            await self.hold(conversation)

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-ferrollm-replica", self.replica)],
                }
            await send(message)

        await self.app(scope, receive, tagged)


class RayMetricsExport:
    """Copies the replica's Prometheus metrics (``GET /metrics``, ferrollm's own registry) into
    Ray's metrics every ``period`` seconds, so that they reach Ray's Prometheus export on every
    node (names prefixed ``ray_``, tagged with the replica) next to Ray Serve's own."""

    def __init__(self, metrics: Metrics, period: float = 5.0):
        from ray.util.metrics import Gauge

        self.metrics, self.period, self.gauges = metrics, period, {}
        self.replica = str(os.getpid())
        self.gauge = lambda name, doc, keys: Gauge(name, doc, tag_keys=("replica", *keys))
        threading.Thread(target=self._run, name="ferrollm-ray-metrics", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.copy()
            time.sleep(self.period)

    def copy(self) -> None:
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                keys = tuple(sorted(sample.labels))
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    gauge = self.gauges[sample.name] = self.gauge(sample.name, family.documentation, keys)
                gauge.set(sample.value, tags={"replica": self.replica, **sample.labels})


def ray_app(config: ServerConfig | None = None, *, replicas: int = 2, threads: int = 1, **kwargs: Any):
    """The Ray Serve application of ``replicas`` copies of the OpenAI app, each reserving
    ``threads`` CPUs of its node and running that many engine threads. ``config`` (or the
    keyword arguments of :class:`ServerConfig`) as for ``create_app``."""
    from ray import serve

    if replicas < 1 or threads < 1:
        raise ValueError(f"replicas and threads must be at least 1, got {replicas} and {threads}")
    config = _portable(dataclasses.replace(config or ServerConfig(**kwargs), n_threads=threads))

    def build() -> Any:  # run on each replica, in its own process
        app = create_app(config)
        RayMetricsExport(app.state.ferrollm.metrics)
        return ConversationAffinity(app, max_conversations=4 * config.n_slots)

    @serve.deployment(
        name="ferrollm",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": threads},
        # A request waits for a slot in the replica's own queue (its engine batches them).
        max_ongoing_requests=config.n_slots + config.max_queue,
        health_check_period_s=5,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=config.drain_timeout,
    )
    @serve.ingress(build)
    class Replica:
        pass

    return Replica.bind()


def run(config: ServerConfig, address: str, replicas: int, threads: int, host: str, port: int) -> None:
    """``ferrollm serve --ray-address``: deploys the replicas behind Ray's proxy on host:port and
    waits until interrupted, then removes them."""
    from ray import serve

    connect(address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(ray_app(config, replicas=replicas, threads=threads), name="ferrollm", route_prefix="/")
    print(
        f"ferrollm: {replicas} replicas serving on http://{host}:{port} (Ray cluster {address})", flush=True
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete("ferrollm")
