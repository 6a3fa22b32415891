"""Seconds per round of the batched and the reference engine, against the compute bound.

For each n (default 64, 256, 1024, 4096) on a random 4-regular graph with DFedAvg (K=5, Q=1)
and an MLP, it times in one run, side by side: a round of the batched engine (local steps for all
peers + gossip), a round of the reference engine (up to ``--reference-max`` peers), and the
compute bound: the same number of samples pushed forward and backward through one model in one
batch, K times. The sizes use LEAF synthetic data (every peer holds data at every n; digits has
only 1,347 training images). Then the headline run: 1024 peers, 100 rounds of the digits MLP
with the batched engine, end to end. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from node.learning import build_model
from sim import SimConfig, Simulation, format_table
from sim.batched import BatchedSimulation


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def compute_bound(sim: Simulation, repeats: int) -> float:
    """Seconds for K forward+backward passes of all the round's minibatch samples through one
    model in one batch."""
    learners = sim.learners
    samples = sum(min(lr.trainer.config.batch_size, lr.num_samples) for lr in learners)
    x = torch.cat([lr.trainer.x for lr in learners])
    y = torch.cat([lr.trainer.y for lr in learners])
    idx = torch.randint(0, len(y), (samples,), generator=torch.Generator().manual_seed(0))
    xb, yb = x[idx], y[idx]
    data_in, classes = x.shape[1], int(y.max()) + 1
    model = build_model("mlp", in_features=data_in, num_classes=max(classes, 10), seed=0)
    steps = sim.algorithm.local_steps

    def once():
        for _ in range(steps):
            model.grad.zero_()
            F.cross_entropy(model.module(xb), yb).backward()

    return timed(once, repeats)


def round_seconds(sim: Simulation, repeats: int) -> float:
    graph = sim.topology.graph_at(0)

    def one_round():
        sim.local_updates(1)
        for _ in range(sim.algorithm.gossip_steps):
            sim.gossip_step(graph)

    return timed(one_round, repeats)


def config_for(n: int, engine: str, dataset: str, rounds: int = 1) -> SimConfig:
    return SimConfig.of(nodes=n, topology="random-regular", degree=4, algorithm="dfedavg",
                     rounds=rounds, dataset=dataset, partition="iid", seed=0, engine=engine,
                     eval_every=rounds, final_merge=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--reference-max", type=int, default=1024,
                   help="largest n timed with the reference engine")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--headline-nodes", type=int, default=1024)
    p.add_argument("--headline-rounds", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for n in args.sizes:
        batched = BatchedSimulation.from_config(config_for(n, "batched", args.dataset))
        row = {"n": n, "batched_s": round_seconds(batched, args.repeats),
               "bound_s": compute_bound(batched, args.repeats), "reference_s": None}
        del batched
        if n <= args.reference_max:
            reference = Simulation.from_config(config_for(n, "reference", args.dataset))
            row["reference_s"] = round_seconds(reference, 1)
            del reference
        results.append(row)
        print(f"n={n} done", file=sys.stderr, flush=True)
    print(format_table(
        ["n", "batched s/round", "reference s/round", "bound s", "batched/bound",
         "reference/batched"],
        [[r["n"], r["batched_s"], r["reference_s"] or "-", r["bound_s"],
          f"{r['batched_s'] / r['bound_s']:.1f}x",
          f"{r['reference_s'] / r['batched_s']:.0f}x" if r["reference_s"] else "-"]
         for r in results]))
    start = time.perf_counter()
    headline = BatchedSimulation.from_config(
        config_for(args.headline_nodes, "batched", "digits", args.headline_rounds)).run()
    wall = time.perf_counter() - start
    print(f"\n{args.headline_nodes} peers x {args.headline_rounds} rounds, digits MLP, batched "
          f"engine: {wall:.1f} s end to end (build included), mean accuracy "
          f"{headline['mean_acc']:.4f}")
    print(json.dumps({
        "threads": args.threads, "dataset": args.dataset,
        "batched_s_per_round": {str(r["n"]): round(r["batched_s"], 4) for r in results},
        "reference_s_per_round": {str(r["n"]): round(r["reference_s"], 4) for r in results
                                  if r["reference_s"]},
        "batched_to_bound": {str(r["n"]): round(r["batched_s"] / r["bound_s"], 2)
                             for r in results},
        "headline_wall_s": round(wall, 1), "headline_nodes": args.headline_nodes,
        "headline_rounds": args.headline_rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
