"""Churn study: 100 real peers, 80% become unresponsive at round 50, half of those come back.

Runs the real peer (``node.peer.Peer``: round protocol, adaptive deadlines, suspicion, catch-up,
checkpoints) for every peer in one process over the in-memory transport (spec section 8.3's
"80% unresponsive" experiment; peers are on a random 4-regular graph, digits IID, softmax
regression, DFedAvg). When the slowest peer has completed round ``--fail-at``, 80% of the peers
(drawn with the seed) are cancelled mid-round; when the survivors reach ``--return-at``, half of
the victims restart from their checkpoints and catch up. Measures whether training keeps going
(rounds completed, accuracy per round) and whether any gossip wait exceeds the deadline ceiling.
Prints a table, draws a plot, writes the ``study_churn`` section of docs/results.md and ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gossip import InMemoryHub
from node import derive_seed, load_digits
from node.config import AlgorithmSection, DataSection, GossipSection, ModelSection, PeerConfig
from node.peer import JsonLog, Peer
from sim import format_table, write_results_section
from sim.study import markdown_table
from topology import build_graph

ROOT = Path(__file__).resolve().parents[1]
SLACK_S = 0.5  # event-loop latency allowed over the ceiling (100 peers share one loop)


async def until(condition, poll: float = 0.02) -> None:
    """Wait for ``condition()`` by polling (the peers run in this loop; no fixed sleeps)."""
    while not condition():
        await asyncio.sleep(poll)


def make_peer(config: PeerConfig, hub: InMemoryHub, data, log: io.StringIO) -> Peer:
    return Peer(config, transport=hub.transport(config.id), data=data,
                log=JsonLog(config.id, stream=log))


async def churn_run(args, seed: int, folder: Path, data) -> dict:
    graph = build_graph("random-regular", args.nodes, seed=derive_seed(seed, "topology"),
                        degree=4)
    hub = InMemoryHub()
    configs = [PeerConfig(
        id=i, rounds=args.rounds, seed=seed, state_dir=str(folder / f"s{seed}" / f"peer{i}"),
        neighbours={j: "memory" for j in graph.neighbors(i)},
        data=DataSection(partition="iid", shard=i, num_shards=args.nodes),
        model=ModelSection(name="logreg"),
        algorithm=AlgorithmSection(name="dfedavg", final_merge=False),
        gossip=GossipSection(deadline_floor_s=args.floor, deadline_ceiling_s=args.ceiling,
                             startup_timeout_s=args.startup_timeout)) for i in range(args.nodes)]
    logs = {i: io.StringIO() for i in range(args.nodes)}
    peers = {i: make_peer(configs[i], hub, data, logs[i]) for i in range(args.nodes)}
    for p in peers.values():
        await p.start()
    start = time.monotonic()
    tasks = {i: asyncio.create_task(p.run()) for i, p in peers.items()}
    await until(lambda: min(p.completed_rounds for p in peers.values()) >= args.fail_at)
    rng = np.random.default_rng(derive_seed(seed, "churn"))
    victims = sorted(int(v) for v in rng.choice(args.nodes, round(0.8 * args.nodes),
                                                replace=False))
    failed_at = time.monotonic() - start
    for v in victims:
        tasks[v].cancel()
    await asyncio.gather(*(tasks[v] for v in victims), return_exceptions=True)
    survivors = [i for i in peers if i not in victims]
    waits_before = {i: len(peers[i].wait_times) for i in survivors}
    await until(lambda: max(peers[i].completed_rounds for i in survivors) >= args.return_at
                or all(tasks[i].done() for i in survivors))
    returning = victims[: len(victims) // 2]
    returned_at = time.monotonic() - start
    for v in returning:
        peers[v] = make_peer(configs[v], hub, data, logs[v])
        await peers[v].start()
        tasks[v] = asyncio.create_task(peers[v].run())
    finished = await asyncio.gather(*(tasks[i] for i in survivors + returning),
                                    return_exceptions=True)
    wall = time.monotonic() - start
    waits_after = [w for i in survivors for w in peers[i].wait_times[waits_before[i]:]]
    rows = [json.loads(line) for log in logs.values() for line in log.getvalue().splitlines()]
    by_round: dict[int, list[float]] = {}
    for r in rows:
        if r["event"] == "round" and r.get("accuracy") is not None:
            by_round.setdefault(r["round"], []).append(r["accuracy"])
    return {
        "seed": seed, "victims": len(victims), "returning": len(returning),
        "failed_at_s": failed_at, "returned_at_s": returned_at, "wall_s": wall,
        "survivors_finished": sum(1 for i, f in zip(survivors + returning, finished,
                                                     strict=True)
                                  if i in survivors and isinstance(f, dict)
                                  and f["rounds_completed"] == args.rounds),
        "survivors": len(survivors),
        "returning_finished": sum(1 for i in returning
                                  if peers[i].completed_rounds == args.rounds),
        "resumed": sum(1 for r in rows if r["event"] == "resumed"),
        "catch_ups": sum(1 for r in rows if r["event"] == "catch_up"),
        "max_wait_after_failure_s": max(waits_after, default=0.0),
        "accuracy_by_round": {k: float(np.mean(v)) for k, v in sorted(by_round.items())},
        "peers_by_round": {k: len(v) for k, v in sorted(by_round.items())},
    }


def plot(runs: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, count_ax) = plt.subplots(1, 2, figsize=(12, 4.3))
    for run in runs:
        rounds = list(run["accuracy_by_round"])
        acc_ax.plot(rounds, list(run["accuracy_by_round"].values()), label=f"seed {run['seed']}")
        count_ax.plot(rounds, list(run["peers_by_round"].values()), label=f"seed {run['seed']}")
    for ax in (acc_ax, count_ax):
        ax.axvline(args.fail_at, color="tab:red", ls=":", label="80% unresponsive")
        ax.axvline(args.return_at, color="tab:green", ls=":", label="half of them return")
        ax.grid(alpha=0.3)
        ax.set_xlabel("round")
    acc_ax.set(ylabel="mean accuracy of the peers finishing the round", ylim=(0, 1))
    count_ax.set(ylabel="peers finishing the round")
    acc_ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--fail-at", type=int, default=50)
    p.add_argument("--return-at", type=int, default=70)
    p.add_argument("--floor", type=float, default=0.3, help="deadline floor (s)")
    p.add_argument("--ceiling", type=float, default=1.0, help="deadline ceiling (s)")
    p.add_argument("--startup-timeout", type=float, default=5.0,
                   help="first rendezvous (peers in one process start at once)")
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--results", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_digits()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            run = asyncio.run(churn_run(args, seed, Path(folder), data))
            runs.append(run)
            if not args.quiet:
                print(f"seed {seed}: {run['wall_s']:.1f} s, max wait after the failure "
                      f"{run['max_wait_after_failure_s']:.2f} s", file=sys.stderr, flush=True)
    header = ["seed", "survivors finished", "returning finished", "max wait after failure (s)",
              f"acc at round {args.fail_at}", "acc at the end", "wall (s)"]
    rows = [[r["seed"], f"{r['survivors_finished']}/{r['survivors']}",
             f"{r['returning_finished']}/{r['returning']}",
             f"{r['max_wait_after_failure_s']:.2f}",
             f"{r['accuracy_by_round'].get(args.fail_at, float('nan')):.3f}",
             f"{r['accuracy_by_round'][args.rounds]:.3f}", f"{r['wall_s']:.1f}"] for r in runs]
    print(format_table(header, rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_churn.png"
    plot(runs, args, figure)
    stalled = [r for r in runs if r["max_wait_after_failure_s"] > args.ceiling + SLACK_S]
    markdown = (
        "## Churn: 80% of the peers unresponsive at once (scripts/study_churn.py)\n\n"
        f"{args.nodes} real peers (`node.peer.Peer`, in one process over the in-memory "
        f"transport) on a random 4-regular graph, digits IID, softmax regression, DFedAvg, "
        f"{args.rounds} rounds, deadlines floor {args.floor} s / ceiling {args.ceiling} s. When "
        f"the slowest peer has completed round {args.fail_at}, 80% of the peers are cancelled "
        f"mid-round; when the survivors reach round {args.return_at}, half of them restart "
        f"from their checkpoints and catch up. Seeds 0..{args.seeds - 1}. 'Max wait': the "
        "longest any surviving peer waited for its neighbours in one gossip step after the "
        f"failure (the ceiling bounds it, plus {SLACK_S} s of event-loop latency for 100 peers "
        f"in one loop). {'No' if not stalled else len(stalled)} run"
        f"{'' if len(stalled) == 1 else 's'} stalled past the deadline.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        f"![accuracy and live peers per round]"
        f"({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_churn", markdown)
    print(json.dumps({"seeds": args.seeds, "nodes": args.nodes,
                      "max_wait_after_failure_s": round(max(r["max_wait_after_failure_s"]
                                                            for r in runs), 3),
                      "ceiling_s": args.ceiling, "stalled_runs": len(stalled),
                      "survivors_finished": [r["survivors_finished"] for r in runs],
                      "returning_finished": [r["returning_finished"] for r in runs],
                      "final_acc": [round(r["accuracy_by_round"][args.rounds], 4)
                                    for r in runs]}))
    return 0 if not stalled else 1


if __name__ == "__main__":
    sys.exit(main())
