"""A local Ray cluster for the ray suite and benches/bench_ray.py: a head and a second node on
this machine (one CPU each unless told), and `ferrollm serve --ray-address` replicas on it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ServeReplica:ferrollm" in line]


@dataclass(frozen=True)
class Cluster:
    address: str  # the head's host:port
    metrics_ports: tuple[int, ...]  # each node's Prometheus export


@contextlib.contextmanager
def cluster(cpus_per_node: int = 1) -> Iterator[Cluster]:
    """Yields the head's address and export ports; stops every Ray process of this machine after."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_metrics_report_interval_ms": "1000"}
    port, metrics = free_port(), (free_port(), free_port())
    common = ["--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
            "--metrics-export-port", str(metrics[0]), *common]  # fmt: skip
    subprocess.run(head, check=True, env=env, capture_output=True, timeout=120)
    try:
        node = [
            RAY,
            "start",
            "--address",
            f"127.0.0.1:{port}",
            "--metrics-export-port",
            str(metrics[1]),
            *common,
        ]
        subprocess.run(node, check=True, env=env, capture_output=True, timeout=120)
        yield Cluster(f"127.0.0.1:{port}", metrics)
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)


@contextlib.contextmanager
def replicas(address: str, log: Path, n: int = 2, threads: int = 1, *args: str) -> Iterator[str]:
    """`ferrollm serve --ray-address` with `n` replicas; yields its URL once all answer."""
    port = free_port()
    cmd = [sys.executable, "-m", "ferrollm", "serve", "--ray-address", address, "--replicas", str(n),
           "-t", str(threads), "--port", str(port), *args]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"ferrollm serve --ray-address exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200 and len(replica_pids()) == n:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"the replicas did not become healthy:\n{log.read_text()}")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
