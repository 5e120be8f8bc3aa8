"""Serving under concurrent load: ferrollm serve against llama.cpp's llama-server and
llama-cpp-python's server, the same model, threads and slots, in one run.

Each level starts the server with as many slots as clients; every client sends streamed chat
requests for 128 tokens (EOS biased away, so every answer has 128 tokens) one after another.
Recorded per level: aggregate generated tokens/s (all tokens over the level's wall time), p50
and p99 time to first token and time per output token, failed requests, and the server's peak
RSS. ``--soak N`` then runs 8 clients x N requests against ferrollm alone on the embedded model
and samples the server's RSS, which must stay flat.

    python benches/bench_serve.py                       # embedded model, ferrollm + peers found
    python benches/bench_serve.py --shape mistral-7b --qtype Q4_0 --requests 1
    python benches/bench_serve.py --soak 50

Peers: llama-server from $LLAMA_SERVER (built from the llama-cpp-python sdist's vendored
llama.cpp, without AMX on Sapphire Rapids: see docs/benchmarks.md) and `python -m llama_cpp.server` when
llama-cpp-python[server] is installed. Results: benches/results/serve.json (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import busy_jiffies, ensure_model, models_dir

TOPICS = ["a lighthouse", "the sea", "a robot", "mountains", "a library", "rain", "a train", "the moon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(
    engine: str, model: Path, slots: int, n_ctx_slot: int, threads: int, port: int
) -> list[str]:
    if engine == "ferrollm":
        return [sys.executable, "-m", "ferrollm", "serve", "-m", str(model), "--port", str(port), "-np", str(slots),
                "-c", str(slots * n_ctx_slot), "-t", str(threads)]  # fmt: skip
    if engine == "llama-server":
        return [os.environ.get("LLAMA_SERVER", "llama-server"), "-m", str(model), "--port", str(port),
                "-np", str(slots), "-c", str(slots * n_ctx_slot), "-t", str(threads), "-tb", str(threads),
                "-b", "512", "--no-warmup", "-ngl", "0"]  # fmt: skip
    # llama-cpp-python's server answers one request at a time, whatever the clients.
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
            "--n_ctx", str(n_ctx_slot), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--n_batch", "512"]  # fmt: skip


def peers() -> list[str]:
    found = []
    exe = os.environ.get("LLAMA_SERVER", "llama-server")
    if shutil.which(exe) or Path(exe).is_file():
        found.append("llama-server")
    try:
        import llama_cpp.server  # noqa: F401

        found.append("llama-cpp-python")
    except ImportError:
        pass
    return found


class Running:
    def __init__(self, engine: str, cmd: list[str], port: int):
        self.engine, self.url = engine, f"http://127.0.0.1:{port}"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        # A log file, not a pipe: a server that logs more than a pipe holds would block on it.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - open for the server's life, closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True, env=env)
        self.rss: list[int] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{engine} exited: {self.log_tail()}")
            try:
                # llama-cpp-python's server has no /health; it serves nothing before loading.
                path = "/v1/models" if engine == "llama-cpp-python" else "/health"
                r = httpx.get(f"{self.url}{path}", timeout=2)
                if r.status_code == 200:
                    break
                if "error" in r.text and "loading" not in r.text.lower():
                    self.proc.kill()
                    raise RuntimeError(f"{engine} failed to load: {r.text[:300]}")
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            self.proc.kill()
            raise RuntimeError(f"{engine} did not become healthy: {self.log_tail()}")
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-800:]

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample_rss(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.rss.append(self._status("VmRSS:"))
            except OSError:
                return

    def peak_rss(self) -> int:
        return self._status("VmHWM:")

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def chat(url: str, i: int, n_tokens: int, eos: int) -> dict:
    """One streamed chat request; times of its first and last generated pieces."""
    body = {"model": "m", "messages": [{"role": "user", "content": f"Tell me a story about {TOPICS[i % 8]}."}],
            "max_tokens": n_tokens, "temperature": 0.7, "seed": i, "stream": True,
            "logit_bias": {str(eos): -100}}  # fmt: skip
    t0 = time.perf_counter()
    times = []
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
            if r.status_code != 200:
                return {"ok": False, "why": f"HTTP {r.status_code}: {r.read()[:200]!r}"}
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return {"ok": False, "why": str(data["error"])[:200]}
                for choice in data.get("choices", []):
                    if (choice.get("delta") or {}).get("content"):
                        times.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"ok": False, "why": f"{type(e).__name__}: {e}"}
    if not times:
        return {"ok": False, "why": "no tokens"}
    n = len(times)
    return {"ok": True, "ttft": times[0] - t0, "tpot": (times[-1] - times[0]) / max(n - 1, 1), "pieces": n}


def load(url: str, clients: int, requests: int, n_tokens: int, eos: int) -> dict:
    def client(c: int) -> list[dict]:
        return [chat(url, c * 1000 + k, n_tokens, eos) for k in range(requests)]

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    pct = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else (xs[0] if xs else 0.0)
    ttft, tpot = [r["ttft"] for r in ok], [r["tpot"] for r in ok]
    return {
        "tok_s": len(ok) * n_tokens / wall,
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
        "requests": len(results), "failed": len(results) - len(ok), "wall_s": wall,
        "failures": sorted({r["why"] for r in results if not r["ok"]})[:3],
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default=None, help="a BENCHMARKS.md shape (default: the embedded model)")
    ap.add_argument("--qtype", default="Q4_0")
    ap.add_argument("--models", default=None, help="directory of benchmark models")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=3, help="requests per client per level")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-slot", type=int, default=1024)
    ap.add_argument(
        "--engines", default=None, help="comma-separated (default: ferrollm and every peer found)"
    )
    ap.add_argument("--soak", type=int, default=0, help="then 8 clients x N requests against ferrollm")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = ap.parse_args()

    from ferrollm import demo_model_path, gguf

    model = (
        ensure_model(models_dir(args.models), args.shape, args.qtype)
        if args.shape
        else Path(demo_model_path())
    )
    name = args.shape or "embedded-demo"
    qtype = args.qtype if args.shape else "Q8_0"
    metadata = gguf.open(model).metadata
    eos = int(metadata.get("tokenizer.ggml.eos_token_id", 2))
    n_ctx_slot = min(args.ctx_slot, int(metadata.get("llama.context_length", args.ctx_slot)))
    engines = args.engines.split(",") if args.engines else ["ferrollm", *peers()]
    levels = [int(c) for c in args.clients.split(",")]
    print(f"model {model.name}; engines {', '.join(engines)}; clients {levels}; {args.requests} requests of "
          f"{args.tokens} tokens per client; {args.threads} threads")  # fmt: skip
    records = []
    print(f"{'engine':<17} {'clients':>7} {'tok/s':>8} {'TTFT p50':>9} {'p99':>7} {'TPOT p50':>9} {'p99':>7} "
          f"{'failed':>6} {'RSS MiB':>8} {'load':>5}")  # fmt: skip
    for engine in engines:
        for c in levels:
            port = free_port()
            try:
                srv = Running(engine, server_command(engine, model, c, n_ctx_slot, args.threads, port), port)
            except RuntimeError as e:
                print(f"{engine:<17} {c:>7}  did not start: {e}")
                continue
            try:
                chat(srv.url, 0, 8, eos)  # warm-up
                busy0, t0 = busy_jiffies(), time.perf_counter()
                r = load(srv.url, c, args.requests, args.tokens, eos)
                cpu = (busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - t0)
                rss = srv.peak_rss()
            finally:
                srv.stop()
            rec = {"bench": "serve", "model": name, "qtype": qtype, "threads": args.threads, "engine": engine,
                   "clients": c, "slots": c, "n_gen": args.tokens, **r, "peak_rss_mib": rss / 2**20,
                   "cpu_cores_busy": cpu}  # fmt: skip
            records.append(rec)
            print(f"{engine:<17} {c:>7} {r['tok_s']:>8.2f} {r['ttft_p50_s']:>8.2f}s {r['ttft_p99_s']:>6.2f}s "
                  f"{r['tpot_p50_s'] * 1000:>7.1f}ms {r['tpot_p99_s'] * 1000:>5.0f}ms {r['failed']:>6} "
                  f"{rss / 2**20:>8.0f} {cpu:>5.2f}" + (f"  {r['failures']}" if r["failed"] else ""))  # fmt: skip
    for engine in engines:
        rows = {r["clients"]: r for r in records if r["engine"] == engine}
        if 1 in rows and 4 in rows:
            print(f"{engine}: 4 streams = {rows[4]['tok_s'] / rows[1]['tok_s']:.2f}x one stream")
    ours = {r["clients"]: r for r in records if r["engine"] == "ferrollm"}
    for peer in engines[1:]:
        theirs = {r["clients"]: r for r in records if r["engine"] == peer}
        ratios = [
            f"{c}: {ours[c]['tok_s'] / theirs[c]['tok_s']:.2f}x" for c in levels if c in ours and c in theirs
        ]
        print(f"ferrollm / {peer} aggregate tok/s: {', '.join(ratios)}")

    if args.soak:
        port = free_port()
        srv = Running("ferrollm", server_command("ferrollm", Path(demo_model_path()), 8, 512, args.threads, port),
                      port)  # fmt: skip
        try:
            r = load(srv.url, 8, args.soak, 128, 2)
            rss = srv.rss
        finally:
            srv.stop()
        quarter = max(len(rss) // 4, 1)
        early, late = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
        rec = {"bench": "serve_soak", "model": "embedded-demo", "qtype": "Q8_0", "engine": "ferrollm", "clients": 8,
               **r, "rss_first_quarter_mib": early / 2**20, "rss_last_quarter_mib": late / 2**20,
               "rss_max_mib": max(rss) / 2**20}  # fmt: skip
        records.append(rec)
        print(f"soak: {r['requests']} requests, {r['failed']} failed, {r['tok_s']:.1f} tok/s; RSS median first "
              f"quarter {early / 2**20:.0f} MiB, last quarter {late / 2**20:.0f} MiB, max {max(rss) / 2**20:.0f} MiB")  # fmt: skip

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(existing + records, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
