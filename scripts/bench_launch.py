"""Real peer processes vs the same workload in one process over the in-memory transport.

8 and 16 peers on a ring, 10 rounds; each round one local epoch over an IID shard of the digits
training split (80/20 stratified split), MLP 64-32-10, plain SGD lr 0.1, batch 32, shared initial
model, then one gossip step; then the final merge. Reports, side by side: wall time of the whole
run, median round time, RSS per peer, final mean and merged accuracy. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gossip import InMemoryHub
from node.config import LaunchConfig
from node.launcher import launch
from node.learning import load_digits
from node.peer import JsonLog, Peer, rss_megabytes
from node.text import format_table


def settings(n: int, rounds: int, out: str) -> LaunchConfig:
    shard = 1797 * 0.8 / n
    return LaunchConfig.of(
        nodes=n, topology="ring", algorithm="dfedavg", rounds=rounds,
        local_steps=math.ceil(shard / 32), partition="iid", test_fraction=0.2, hidden=32,
        lr=0.1, lr_decay=1.0, momentum=0.0, weight_decay=0.0, batch_size=32, quiet=True,
        out=out, seed=0)


def processes(s: LaunchConfig) -> dict:
    summary = launch(s)
    round_times = []
    for i in range(s.graph.nodes):
        for line in (Path(s.out) / f"peer{i}" / "log.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "round":
                round_times.append(event["round_s"])
    peers = summary["peers"].values()
    return {"wall_s": summary["wall_s"], "median_round_s": statistics.median(round_times),
            "rss_mb_per_peer": statistics.mean(p["rss_mb"] for p in peers),
            "mean_acc": summary["mean_acc"], "merged_acc": summary["merged_acc"]}


async def in_memory(s: LaunchConfig) -> dict:
    data = load_digits(s.data.test_fraction)
    hub = InMemoryHub()
    streams = [io.StringIO() for _ in range(s.graph.nodes)]
    configs = s.peer_configs([("127.0.0.1", 0)] * s.graph.nodes, Path(s.out))
    start = time.perf_counter()
    peers = [Peer(c, transport=hub.transport(c.peer.id), data=data,
                  log=JsonLog(c.peer.id, stream=st))
             for c, st in zip(configs, streams)]
    for p in peers:
        await p.start()
    summaries = await asyncio.gather(*(p.run() for p in peers))
    wall = time.perf_counter() - start
    round_times = [json.loads(line)["round_s"] for st in streams
                   for line in st.getvalue().splitlines() if '"event": "round"' in line]
    return {"wall_s": round(wall, 2), "median_round_s": statistics.median(round_times),
            "rss_mb_per_peer": rss_megabytes() / s.graph.nodes,
            "mean_acc": statistics.mean(x["accuracy"] for x in summaries),
            "merged_acc": statistics.mean(x["merged_accuracy"] for x in summaries)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            real = processes(settings(n, args.rounds, f"{tmp}/proc{n}"))
            print(f"{n} processes done", file=sys.stderr, flush=True)
            memory = asyncio.run(in_memory(settings(n, args.rounds, f"{tmp}/mem{n}")))
            print(f"{n} in one process done", file=sys.stderr, flush=True)
            results[str(n)] = {"processes": real, "one_process": memory}
            for label, r in (("processes (HTTP)", real), ("one process (memory)", memory)):
                rows.append([n, label, r["wall_s"], r["median_round_s"],
                             f"{r['rss_mb_per_peer']:.0f}", r["mean_acc"], r["merged_acc"]])
    print(format_table(["peers", "how", "wall s", "median round s", "RSS MB/peer", "mean acc",
                        "merged acc"], rows))
    print(json.dumps({n: {k: {m: round(v, 4) for m, v in r.items()} for k, r in res.items()}
                      for n, res in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
