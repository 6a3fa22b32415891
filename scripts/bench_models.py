"""Seconds and bytes per round of two models, run four ways.

Models:
  digits MLP   the built-in [model] name = "mlp" (64 -> 64 -> 10, 4.8k parameters) on digits;
  CIFAR CNN    a user model ([model] factory) for 3x32x32 inputs: two conv 3x3 + BatchNorm2d +
               ReLU + max-pool blocks (width 16, 32) and a linear head, with [model] buffers =
               "average", on random data from a user loader ([data] loader; 512 training and 128
               test images, random labels: the accuracy means nothing, only the cost does).
               Both are written to a temporary module (benchmods.py) named through
               [run] import_path, as a user's own files would be.

Ways:
  one peer          one node.peer.Peer in this process on an in-memory hub, no neighbours (so
                    nothing is sent): the cost of training and evaluating a round;
  4 peers launched  node.launcher.launch: 4 `python -m node` processes on a ring over HTTP;
  sim reference     python -m sim's reference engine, 4 peers on a ring in this process;
  sim batched       the batched engine (all peers in one tensor); it refuses models with
                    buffers, which the table reports with the reason.

Every run: dfedavg, K = 5 local steps of batch 32, one gossip step per round, f32 messages, the
final merge after the last round, seed 0. "s/round" is the median of the peers' round times
(`round_s` in their logs) for the peer ways and the simulator's seconds_per_round (all 4 peers)
for the engines; "bytes/round/peer" is what one peer sends in a round (the median of the logged
`bytes_out` per round for real peers, the simulator's bytes_sent / rounds / peers, which counts
the bare f32 vectors without the message header); "vector" is the length of one message's f32
vector in bytes (parameters plus averaged buffers).

Measured with the defaults (`python scripts/bench_models.py`, 5 rounds, 2 CPU cores, torch on one
thread per process, 22.9 s in all):

         model               how  s/round  bytes/round/peer  vector B  mean acc  wall s
    ----------  ----------------  -------  ----------------  --------  --------  ------
    digits MLP          one peer   0.0042                 0     19240    0.8756    1.10
    digits MLP  4 peers launched   0.0140             38650     19240    0.8794    7.85
    digits MLP     sim reference   0.0094             38480     19240    0.8794    0.08
    digits MLP       sim batched   0.0080             38480     19240    0.8794    0.08
     CIFAR CNN          one peer   0.1241                 0     22248    0.0859    0.71
     CIFAR CNN  4 peers launched   0.2634             44666     22248    0.0879    6.65
     CIFAR CNN     sim reference   0.5128             44496     22248    0.0879    2.92
     CIFAR CNN       sim batched  refused                 -     22248         -       -
    CIFAR CNN, sim batched: refused: --engine batched: the model has buffers (BatchNorm
    statistics), which its forward pass updates in place; torch.func cannot run that for all
    peers at once. Use --engine reference

(examples/README.md has the JSON line of that run and how to read the table.)

Ends with one JSON line of the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gossip import InMemoryHub
from node.config import PEER_LOG, LaunchConfig, PeerConfig, SimConfig
from node.launcher import launch
from node.peer import JsonLog, Peer
from node.text import format_table
from sim.engines import build_simulation

NODES = 4

MODULE = '''\
"""Written by scripts/bench_models.py: a CIFAR-shaped CNN with BatchNorm and random data."""

import torch
from torch import nn


def cnn(num_classes=10, width=16):
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, width), block(width, 2 * width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2 * width, num_classes))


def random_cifar(train=512, test=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    def part(n):
        return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return {"train": part(train), "test": part(test)}
'''

MODELS = {
    "digits MLP": {"model": {"name": "mlp", "hidden": 64}, "data": {"dataset": "digits"}},
    "CIFAR CNN": {"model": {"factory": "benchmods:cnn", "buffers": "average"},
                  "data": {"loader": "benchmods:random_cifar"}},
}


def table(model: str, folder: Path, rounds: int, **sections: dict) -> dict[str, Any]:
    """The shared sections of every run of ``model``, plus ``sections``."""
    base = {**MODELS[model],
            "run": {"import_path": [str(folder)], "rounds": rounds, "seed": 0},
            "algorithm": {"name": "dfedavg", "local_steps": 5, "batch_size": 32,
                          "lr": 0.05},
            "graph": {"nodes": NODES, "topology": "ring"}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def round_figures(log_lines: list[str]) -> tuple[list[float], list[int]]:
    """(round_s, bytes_out) of every `round` event in JSON-lines text."""
    times, sent = [], []
    for line in log_lines:
        event = json.loads(line)
        if event["event"] == "round":
            times.append(event["round_s"])
            sent.append(event["bytes_out"])
    return times, sent


def one_peer(model: str, folder: Path, rounds: int, tag: str) -> dict[str, Any]:
    t = table(model, folder, rounds, peer={"id": 0, "state_dir": str(folder / f"one-{tag}")})
    del t["graph"]
    config = PeerConfig.from_table(t)
    stream = io.StringIO()

    async def go() -> dict:
        peer = Peer(config, transport=InMemoryHub().transport(0),
                    log=JsonLog(0, stream=stream))
        await peer.start()
        summary = await peer.run()
        summary["vector"] = peer.learner.vector_size * 4
        return summary

    start = time.perf_counter()
    summary = asyncio.run(go())
    times, sent = round_figures(stream.getvalue().splitlines())
    return {"s_per_round": statistics.median(times), "bytes_per_round": statistics.median(sent),
            "vector_bytes": summary["vector"], "mean_acc": summary["accuracy"],
            "wall_s": time.perf_counter() - start}


def launched(model: str, folder: Path, rounds: int, tag: str) -> dict[str, Any]:
    out = folder / f"launch-{tag}"
    config = LaunchConfig.from_table(table(model, folder, rounds,
                                           launch={"out": str(out), "timeout": 300.0},
                                           run={"quiet": True}))
    summary = launch(config)
    unfinished = [i for i, p in summary["peers"].items() if not p["finished"]]
    if unfinished:
        stderr = (out / f"peer{unfinished[0]}" / "stderr.txt").read_text().strip()
        raise RuntimeError(f"launched peers {unfinished} did not finish: {stderr[-300:]}")
    times, sent = [], []
    for i in range(NODES):
        t, s = round_figures((out / f"peer{i}" / PEER_LOG).read_text().splitlines())
        times += t
        sent += s
    return {"s_per_round": statistics.median(times), "bytes_per_round": statistics.median(sent),
            "mean_acc": summary["mean_acc"], "wall_s": summary["wall_s"]}


def simulated(model: str, folder: Path, rounds: int, engine: str) -> dict[str, Any]:
    config = SimConfig.from_table(table(model, folder, rounds,
                                        sim={"engine": engine, "out": str(folder / "sim")},
                                        run={"quiet": True}))
    start = time.perf_counter()
    try:
        sim = build_simulation(config)
    except ValueError as exc:
        return {"refused": str(exc)}
    summary = sim.run()
    return {"s_per_round": summary["seconds_per_round"],
            "bytes_per_round": summary["bytes_sent"] / rounds / NODES,
            "vector_bytes": sim.model_size * 4, "mean_acc": summary["mean_acc"],
            "wall_s": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "benchmods.py").write_text(MODULE)
        for m, model in enumerate(args.models):
            runs = results[model] = {}
            runs["one peer"] = one_peer(model, folder, args.rounds, str(m))
            runs[f"{NODES} peers launched"] = launched(model, folder, args.rounds, str(m))
            for engine in ("reference", "batched"):
                runs[f"sim {engine}"] = simulated(model, folder, args.rounds, engine)
            print(f"{model} done", file=sys.stderr, flush=True)
    rows, reasons = [], []
    for model, runs in results.items():
        vector = runs["one peer"]["vector_bytes"]
        for how, r in runs.items():
            if "refused" in r:
                reasons.append(f"{model}, {how}: refused: {r['refused']}")
                rows.append([model, how, "refused", "-", vector, "-", "-"])
                continue
            rows.append([model, how, r["s_per_round"], int(r["bytes_per_round"]), vector,
                         r["mean_acc"] if r["mean_acc"] is not None else "-",
                         f"{r['wall_s']:.2f}"])
    print(format_table(["model", "how", "s/round", "bytes/round/peer", "vector B", "mean acc",
                        "wall s"], rows))
    for reason in reasons:
        print(reason)
    headline = {model: {how: ("refused" if "refused" in r else
                              {"s_per_round": round(r["s_per_round"], 4),
                               "bytes_per_round": int(r["bytes_per_round"])})
                        for how, r in runs.items()} for model, runs in results.items()}
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
