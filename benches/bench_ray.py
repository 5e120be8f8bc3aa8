"""Ray Serve replicas against one `ferrollm serve`: the same requests, aggregate tokens/s.

One `ferrollm serve -t 2` (one engine, 2 threads) against 2 Ray Serve replicas of 1 thread each
on a local 2-node cluster (`ferrollm serve --ray-address`). On one 2-core machine the
replicas cannot gain (the same cores, two copies of the engine's work per step): the figure is
the overhead of Ray's proxy and of splitting the batch, reported per request. On N machines
the replicas' throughput adds up.

    python -m benches.bench_ray [--clients 8] [--requests 4] [--tokens 64]

Needs ferrollm[ray]. Results: benches/results/ray.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benches.bench_serve import load
from tests.support import ray_cluster

ROOT = Path(__file__).resolve().parent.parent
EOS = 2  # the demo model's


def plain(clients: int, requests: int, tokens: int, log: Path) -> dict:
    port = ray_cluster.free_port()
    cmd = [sys.executable, "-m", "ferrollm", "serve", "--port", str(port), "-t", "2", "-np", str(clients)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        load(url, 2, 1, tokens, EOS)  # warm-up
        return load(url, clients, requests, tokens, EOS)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def on_ray(clients: int, requests: int, tokens: int, log: Path) -> dict:
    slots = str(max(1, clients // 2))
    with (
        ray_cluster.cluster() as cluster,
        ray_cluster.replicas(cluster.address, log, 2, 1, "-np", slots) as url,
    ):
        load(url, 2, 1, tokens, EOS)  # warm-up
        return load(url, clients, requests, tokens, EOS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "ray.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = plain(args.clients, args.requests, args.tokens, Path(tmp) / "plain.log")
        two = on_ray(args.clients, args.requests, args.tokens, Path(tmp) / "ray.log")
    n = args.clients * args.requests
    overhead = (two["wall_s"] - one["wall_s"]) / n
    print(f"{n} requests of {args.tokens} tokens, {args.clients} clients, embedded model")
    for name, r in (("ferrollm serve -t 2", one), ("2 Ray replicas x 1 thread", two)):
        print(f"  {name:<28} {r['tok_s']:7.1f} tok/s  ttft p50 {r['ttft_p50_s'] * 1e3:6.0f} ms  "
              f"tpot p50 {r['tpot_p50_s'] * 1e3:5.1f} ms  failed {r['failed']}")  # fmt: skip
    print(f"  ratio {two['tok_s'] / one['tok_s']:.2f}x; overhead {overhead * 1e3:+.0f} ms per request")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = {"bench": "ray_serve", "clients": args.clients, "requests": n, "tokens": args.tokens,
              "plain": one, "ray": two, "overhead_s_per_request": overhead}  # fmt: skip
    Path(args.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
