"""``ferrollm serve``: an OpenAI-compatible HTTP server with continuous batching.

``create_app(...)`` returns the ASGI app (for any ASGI server); ``run(...)`` serves it with
uvicorn, which drains accepted requests on SIGTERM/SIGINT before exiting. ``ray_app(...)``
returns the same app as a Ray Serve application of several replicas (``ferrollm[ray]``).
"""

from __future__ import annotations

from ferrollm.serve.app import ServerConfig, create_app
from ferrollm.serve.replicas import ray_app

__all__ = ["ServerConfig", "create_app", "ray_app", "run"]


def run(config: ServerConfig, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    import uvicorn

    app = create_app(config)
    # uvicorn stops accepting on SIGTERM and waits for open responses; the app's shutdown then
    # waits for the engine's accepted jobs (drain_timeout bounds both).
    uvicorn.run(app, host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=int(config.drain_timeout) or None)  # fmt: skip
