"""Where a conversation's next turn lands among Ray Serve replicas, with and without the
conversation header (`serve_multiplexed_model_id`): the share of turns sent to the replica that
served the previous turn, whose slots hold the conversation's prefix in their KV cache.

    python -m benches.bench_ray_affinity [--conversations 6] [--turns 8]

Needs ferrollm[ray]; starts a local 2-node cluster with 2 replicas of the embedded model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support import ray_cluster


def share_on_holder(url: str, conversations: int, turns: int, header: bool) -> tuple[int, int]:
    same = total = 0
    for c in range(conversations):
        text, previous = f"# conversation {c} {header}\n", None
        for _ in range(turns):
            headers = {"serve_multiplexed_model_id": f"c{c}"} if header else {}
            r = httpx.post(f"{url}/v1/completions", json={"prompt": text, "max_tokens": 8, "temperature": 0},
                           headers=headers, timeout=120)  # fmt: skip
            r.raise_for_status()
            replica = r.headers["x-ferrollm-replica"]
            text += r.json()["choices"][0]["text"]
            if previous is not None:
                same, total = same + (replica == previous), total + 1
            previous = replica
            time.sleep(0.3)  # a replica reports what it holds to Ray's router
    return same, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--turns", type=int, default=8)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as d,
        ray_cluster.cluster() as cluster,
        ray_cluster.replicas(cluster.address, Path(d) / "serve.log") as url,
    ):
        for header in (True, False):
            same, total = share_on_holder(url, args.conversations, args.turns, header)
            print(f"{'with' if header else 'without'} the conversation header: {same}/{total} next turns "
                  f"on the replica holding the prefix ({100 * same / total:.0f}%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
