"""Seconds per round of the reference simulator on the digits MLP, for several network sizes.

For each n it times, in one run and side by side: the local-update phase, one gossip step and the
evaluation of all peers, then a whole round; and the compute bound, i.e. the same number of
samples pushed forward and backward through one model in one batch. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from node import build_model, load_digits
from sim import SimConfig, Simulation, format_table


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def compute_bound(samples: int, steps: int, repeats: int) -> float:
    """Seconds for ``steps`` forward+backward passes of ``samples`` samples through one model."""
    data = load_digits()
    model = build_model("mlp", 64, 10, seed=0)
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data.y_train), (samples,), generator=generator)
    xb, yb = data.x_train[idx], data.y_train[idx]

    def once():
        for _ in range(steps):
            model.grad.zero_()
            F.cross_entropy(model.module(xb), yb).backward()

    once()
    return timed(once, repeats)


def bench(n: int, algorithm: str, repeats: int) -> dict:
    config = SimConfig(nodes=n, topology="random-regular", degree=4, algorithm=algorithm,
                       rounds=1, partition="iid", seed=0)
    sim = Simulation.from_config(config)
    graph = sim.topology.graph_at(0)
    sim.local_updates(0)  # warm-up
    local = timed(lambda: sim.local_updates(1), repeats)
    gossip = timed(lambda: sim.gossip_step(graph), repeats)
    evaluate = timed(lambda: sim.evaluate(1, graph, {i: 0.0 for i in sim.alive}), repeats)
    steps = sim.algorithm.local_steps
    samples = sum(min(16, learner.num_samples) for learner in sim.learners)
    bound = compute_bound(samples, steps, repeats)
    round_s = local + sim.algorithm.gossip_steps * gossip
    return {"n": n, "algorithm": algorithm, "local_s": local, "gossip_s": gossip,
            "eval_s": evaluate, "round_s": round_s, "compute_bound_s": bound,
            "ratio_to_bound": round_s / bound}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--algorithm", default="dfedavg")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for n in args.sizes:
        results.append(bench(n, args.algorithm, args.repeats))
        print(f"n={n} done", file=sys.stderr, flush=True)
    print(format_table(
        ["n", "local s", "gossip s", "eval s", "s/round", "bound s", "round/bound"],
        [[r["n"], r["local_s"], r["gossip_s"], r["eval_s"], r["round_s"], r["compute_bound_s"],
          f"{r['ratio_to_bound']:.1f}x"] for r in results]))
    print(json.dumps({"algorithm": args.algorithm, "threads": 1,
                      "seconds_per_round": {str(r["n"]): round(r["round_s"], 5) for r in results},
                      "ratio_to_compute_bound": {str(r["n"]): round(r["ratio_to_bound"], 2)
                                                 for r in results}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
