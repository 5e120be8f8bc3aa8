"""Server soak under hostile clients: `ferrollm serve` (the demo model, 4 slots) gets 8 clients
sending requests that mix valid chats and completions, streams abandoned after their first
chunks, and the hostile bodies of the reliability issue (bad JSON, deep nesting, an oversized
body, image parts, a tool whose arguments are not an object, wrong types); meanwhile /health is
probed every 100 ms.

    python benches/serve_soak.py                   # 8 clients x 50 requests
    python benches/serve_soak.py --requests 10     # quicker

Writes benches/results/serve_soak.json. Checks (exit status 1 if one fails): no 5xx, every
hostile request a 4xx, every valid one a 200, the server's RSS after the soak within 5% of its
RSS after a warm-up round, /health always under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

DEEP = '{"prompt": ' + "[" * 5000 + "1" + "]" * 5000 + "}"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
CHAT = {
    "messages": [{"role": "user", "content": "Write a haiku about rain."}],
    "max_tokens": 8,
    "temperature": 0,
}
# (name, path, body, expected status class): bodies as bytes/str are sent verbatim.
HOSTILE = [
    ("bad json", "/v1/chat/completions", b'{"messages": [', 4),
    ("deep nesting", "/v1/completions", DEEP, 4),
    ("oversized", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x" * (9 << 20)}]}), 4),
    ("image part", "/v1/chat/completions", {"messages": [{"role": "user", "content": [IMAGE]}]}, 4),
    ("tool not an object", "/v1/chat/completions",
     {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "integer"}}}],
      "tool_choice": "required"}, 4),
    ("wrong type", "/v1/completions", {"prompt": "x", "max_tokens": "many"}, 4),
    ("unknown field", "/v1/chat/completions", {**CHAT, "temprature": 0.5}, 4),
]  # fmt: skip
VALID = [
    ("chat", "/v1/chat/completions", CHAT, 2),
    ("completion", "/v1/completions", {"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0}, 2),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def send(url: str, path: str, body) -> int:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    r = httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=120)
    return r.status_code


def abandoned_stream(url: str) -> int:
    """A streamed chat whose client reads two events and goes away."""
    with httpx.stream("POST", url + "/v1/chat/completions", json={**CHAT, "max_tokens": 64, "stream": True},
                      timeout=120) as r:  # fmt: skip
        for i, _ in enumerate(r.iter_lines()):
            if i >= 2:
                break
        return r.status_code


def probe(url: str, stop, queue) -> None:
    """/health every 100 ms until ``stop``; the latencies (seconds) go to ``queue``."""
    latencies = []
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            t = time.monotonic()
            client.get(url + "/health")
            latencies.append(time.monotonic() - t)
            time.sleep(0.1)
    queue.put(latencies)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_soak.json"))
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "ferrollm", "serve", "--port", str(port), "-np", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for _, path, body, _ in VALID:  # warm-up: weights paged in, buffers grown
            send(url, path, body)
        rss_start = rss_mib(server.pid)

        # The probe runs in its own process with one kept-alive connection, so that what it
        # measures is the server, not this process's client threads or a TLS context per call.
        stop = multiprocessing.Event()
        queue: multiprocessing.Queue = multiprocessing.Queue()
        prober = multiprocessing.Process(target=probe, args=(url, stop, queue))

        results: list[tuple[str, int, int]] = []
        lock = threading.Lock()
        kinds = VALID + HOSTILE + [("abandoned stream", None, None, 2)]

        def client(c: int) -> None:
            for i in range(args.requests):
                name, path, body, want = kinds[(c * 7 + i) % len(kinds)]
                try:
                    status = abandoned_stream(url) if path is None else send(url, path, body)
                except httpx.HTTPError as e:
                    status = -1 if name != "oversized" else 413  # the server may close on a 413
                    if status < 0:
                        print(f"client {c}: {name}: {e!r}")
                with lock:
                    results.append((name, status, want))

        prober.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        stop.set()
        health = queue.get(timeout=60)
        prober.join()
        time.sleep(1.0)
        rss_end = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    by_kind: dict[str, dict[int, int]] = {}
    for name, status, _ in results:
        by_kind.setdefault(name, {}).setdefault(status, 0)
        by_kind[name][status] += 1
    wrong = [(n, s) for n, s, want in results if s // 100 != want]
    five = [(n, s) for n, s, _ in results if s >= 500 or s < 0]
    growth = (rss_end - rss_start) / rss_start
    report = {
        "bench": "serve_soak", "clients": args.clients, "requests": len(results), "seconds": round(seconds, 1),
        "statuses": by_kind, "wrong_status": len(wrong), "errors_5xx": len(five),
        "rss_start_mib": round(rss_start, 1), "rss_end_mib": round(rss_end, 1), "rss_growth": round(growth, 4),
        "health_probes": len(health), "health_max_ms": round(1e3 * max(health), 1),
        "health_median_ms": round(1e3 * statistics.median(health), 1),
    }  # fmt: skip
    ok = not wrong and not five and abs(growth) <= 0.05 and max(health) < 0.1
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
