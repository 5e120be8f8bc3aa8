"""`ferrollm serve --ray-address`: the OpenAI app as 2 Ray Serve replicas of the demo model on a
local Ray cluster the test starts (a head and a second node on this machine, one CPU each),
talked to with the official `openai` client: the same greedy answers as plain `ferrollm serve`,
8 clients x 20 requests without a failure, and a replica killed (SIGKILL) in the middle: the
requests sent after the kill succeed, none hangs, and both replicas serve again within 60 s.

Run with:  pip install '.[ray,test]' && python -m pytest -m ray
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest
from support import ray_cluster
from support.ray_cluster import replica_pids
from support.server import Server

pytestmark = pytest.mark.ray
pytest.importorskip("ray")

PROMPTS = ["import numpy as np\n", "class Stack:", "# Sort a list\n"]  # no router near-ties (test_serve)


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster.cluster() as started:
        yield started


@pytest.fixture(scope="module")
def replicas(cluster, tmp_path_factory):
    with ray_cluster.replicas(cluster.address, tmp_path_factory.mktemp("ray") / "serve.log") as url:
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def test_greedy_answers_equal_plain_serve(replicas):
    plain = Server("-np", "4")
    try:
        for prompt in PROMPTS:
            kw = {"model": "demo", "prompt": prompt, "max_tokens": 32, "temperature": 0}
            want = plain.client().completions.create(**kw).choices[0].text
            for _ in range(2):  # whichever replica answers
                assert _client(replicas).completions.create(**kw).choices[0].text == want
    finally:
        plain.stop()


def test_both_replicas_answer_and_chat_works(replicas):
    out = _client(replicas).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens > 0
    assert len(replica_pids()) == 2


def _load(url: str, n_clients: int, n_requests: int, results: list) -> list[threading.Thread]:
    client = _client(url)

    def run(k: int) -> None:
        for i in range(n_requests):
            t0 = time.monotonic()
            try:
                client.completions.create(
                    model="demo", prompt=f"def f{k}_{i}(n):", max_tokens=16, temperature=0
                )
                results.append((t0, time.monotonic(), None))
            except Exception as e:  # noqa: BLE001 - every failure is recorded and judged below
                results.append((t0, time.monotonic(), f"{type(e).__name__}: {e}"))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    return threads


def test_eight_clients_twenty_requests_each(replicas):
    results: list = []
    for t in _load(replicas, 8, 20, results):
        t.join(timeout=600)
    assert len(results) == 160
    assert [r[2] for r in results if r[2]] == []


def test_a_killed_replica_costs_no_later_request_and_comes_back(replicas):
    results: list = []
    threads = _load(replicas, 8, 20, results)
    time.sleep(1.0)
    victim = replica_pids()[0]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=600)
        assert not t.is_alive(), "a request hung"
    assert len(results) == 160
    after = [r for r in results if r[0] > killed + 0.5]
    failed = [(round(r[0] - killed, 2), r[2]) for r in after if r[2]]
    assert after and failed == [], f"requests sent after the kill failed (seconds after it, why): {failed}"
    # Requests in flight on the dead replica may fail, with an error status: never a hang.
    assert all(r[1] - r[0] < 120 for r in results)
    deadline = killed + 60
    while time.monotonic() < deadline and (len(replica_pids()) < 2 or victim in replica_pids()):
        time.sleep(0.5)
    assert len(replica_pids()) == 2 and victim not in replica_pids(), (victim, replica_pids())
    # Serving again: Ray's proxy can answer 404 for a moment while it re-reads the restarted
    # replica's routes, so this polls within the same 60 s.
    while True:
        try:
            out = _client(replicas).completions.create(model="demo", prompt="x", max_tokens=2)
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline, "the restarted replicas did not serve within 60 s"
            time.sleep(0.5)
    assert out.usage.completion_tokens


def test_a_conversation_stays_on_the_replica_that_holds_its_prefix(replicas):
    """Turns sent with the same conversation header go to one replica (after Ray's router has
    heard that the replica holds it); two conversations can land on different replicas."""
    url = f"{replicas}/v1/completions"
    seen: dict[str, list[str]] = {}
    for conversation in ("alpha", "beta", "gamma", "delta"):
        text = f"# {conversation}\n"
        for _ in range(6):
            r = httpx.post(url, json={"prompt": text, "max_tokens": 4, "temperature": 0}, timeout=120,
                           headers={"serve_multiplexed_model_id": conversation})  # fmt: skip
            assert r.status_code == 200, r.text
            seen.setdefault(conversation, []).append(r.headers["x-ferrollm-replica"])
            text += r.json()["choices"][0]["text"]
            time.sleep(0.3)  # the replica reports what it holds to Ray's router
    for conversation, pids in seen.items():
        assert len(set(pids[2:])) == 1, f"{conversation} moved between replicas: {pids}"


def test_the_replicas_metrics_reach_rays_prometheus_export(replicas, cluster):
    """ferrollm's counters, copied into Ray's metrics by each replica, appear in the nodes'
    Prometheus exports tagged with the replica."""
    _client(replicas).completions.create(model="demo", prompt="def f(n):", max_tokens=8, temperature=0)
    deadline = time.monotonic() + 90
    found: list[str] = []
    while time.monotonic() < deadline and not found:
        for port in cluster.metrics_ports:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            found += [line for line in text.splitlines() if line.startswith("ray_ferrollm_generation_tokens")]
        time.sleep(1)
    assert found, "no ray_ferrollm_generation_tokens sample in the nodes' Prometheus exports"
    assert any('replica="' in line for line in found)
