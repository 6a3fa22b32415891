"""Seconds per round of the batched and the reference engine, against the compute bound; one
process against torchrun ranks; and, where a GPU is lent, the batched engine on it.

1. For each n (default 64, 256, 1024, 4096) on a random 4-regular graph with DFedAvg (K=5, Q=1)
   and an MLP, it times in one run, side by side: a round of the batched engine (local steps for
   all peers + gossip), the same round as the batched engine did it before the profiling issue
   (``BeforeProfiling``: a Python sampler call per peer and step, 2-D advanced indexing, an
   assembled (n, D) gradient matrix, COO W X), a round of the reference engine (up to
   ``--reference-max`` peers), and the compute bound: the same number of samples pushed forward
   and backward through one model in one batch, K times. The sizes use LEAF synthetic data
   (every peer holds data at every n; digits has only 1,347 training images). The three are
   called in turn and each figure is the fastest of ``--repeats`` (a shared machine only ever
   adds time).
2. The batched engine at ``--dist-nodes`` peers: one process with one thread, one process with
   ``--dist-ranks`` threads, and ``torchrun --nproc-per-node --dist-ranks`` gloo ranks of one
   thread each on this machine (each a ``--worker`` process of this script): the fastest of
   ``--dist-rounds`` rounds, how many halo rows a rank receives per gossip step, and the wall time
   with start-up and build.
3. Where CUDA is available: seconds per round of the batched engine on the GPU for a digits-shaped
   MLP (8x8 inputs, 10 classes) and a CIFAR-shaped CNN (3x32x32 inputs), n = 1024 ... 65,536
   peers, then doubling n until the GPU runs out of memory (the largest n that fits). The data are
   random tensors of those shapes (no downloads), 16 samples per peer. Without CUDA the section
   says so and its figures are null, with the reason.
4. The headline run: 1024 peers, 100 rounds of the digits MLP with the batched engine.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from node.learning import Dataset, build_model
from node.learning.training import sgd_step
from sim import SimConfig, Simulation, format_table
from sim.batched import BatchedSimulation

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls after a warm-up: the machine may be shared, and other
    processes only ever add time."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """The fastest call of each of ``fns``, called in turn ``repeats`` times after a warm-up, so
    that load from other processes falls on all of them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


class BeforeProfiling(BatchedSimulation):
    """The batched round as it was before the profiling issue, kept here to measure the change
    side by side (same arithmetic; see docs/results.md): each peer's ``BatchSampler.next`` called
    from Python, minibatches gathered by 2-D advanced indexing, the gradient assembled into an
    (n, D) matrix before one ``sgd_step`` on all rows, and W X as a COO product with the links
    counted over the graph's edges every gossip step."""

    def _old_minibatches(self, peers: list[int]):
        picks = [self.learners[i].trainer.sampler.next() for i in peers]
        offsets = torch.tensor(np.cumsum([0] + [len(lr.trainer.y) for lr in self.learners]
                                         )[:-1])[peers]
        index = torch.stack(picks) + offsets[:, None]
        return self._x_all[index], self._y_all[index]

    def _old_gradients(self, rows, xb, yb):
        rows = rows.detach().requires_grad_(True)
        params = {s.name: rows[:, s.start:s.stop].view(len(rows), *s.shape)
                  for s in self._layout}
        per_sample = F.cross_entropy(self._forward(params, xb).flatten(0, 1), yb.flatten(),
                                     reduction="none").view_as(yb)
        losses = per_sample.mean(dim=1)
        grads = torch.autograd.grad(losses.sum(), list(params.values()))
        grad = torch.empty_like(rows)
        for s, g in zip(self._layout, grads, strict=True):
            grad[:, s.start:s.stop] = g.reshape(len(rows), -1)
        return grad, losses.detach()

    def local_updates(self, round_index: int) -> dict[int, float]:
        peers = sorted(self.alive)
        cfg = self.learners[0].trainer.config
        total = torch.zeros(len(peers), dtype=torch.float64)
        for _ in range(cfg.local_steps):
            xb, yb = self._old_minibatches(peers)
            grad, loss = self._old_gradients(self.X, xb, yb)
            total += loss.to(torch.float64)
            with torch.no_grad():
                sgd_step(self.X, grad, self.M, lr=cfg.lr_at(round_index),
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         dampening=cfg.dampening)
        return dict(zip(peers, (total / cfg.local_steps).tolist(), strict=True))

    def gossip_step(self, graph, round_index: int = 0) -> None:
        n = len(self.learners)
        if getattr(self, "_old_w", (None,))[0] is not graph:  # cached per graph, as it was
            rows, cols, vals, _ = self._weights(graph)
            self._old_w = (graph, torch.sparse_coo_tensor(
                np.stack([rows, cols]), vals, (n, n), dtype=self.X.dtype,
                check_invariants=True).coalesce())
        W = self._old_w[1]
        links = sum(1 for a, b in graph.edges if a in self.alive and b in self.alive)
        self.traffic.messages += 2 * links
        self.X.copy_(torch.sparse.mm(W, self.X))


def compute_bound(sim: Simulation) -> Callable[[], None]:
    """K forward+backward passes of all the round's minibatch samples through one model in one
    batch."""
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

    return once


def one_round(sim: Simulation) -> Callable[[], None]:
    """A round's local steps and gossip (no evaluation)."""
    graph = sim.topology.graph_at(0)

    def once():
        sim.local_updates(1)
        for _ in range(sim.algorithm.gossip_steps):
            sim.gossip_step(graph)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return once


def config_for(n: int, engine: str, dataset: str, rounds: int = 1, **extra) -> SimConfig:
    return SimConfig.of(nodes=n, topology="random-regular", degree=4, algorithm="dfedavg",
                        rounds=rounds, dataset=dataset, partition="iid", seed=0, engine=engine,
                        eval_every=rounds, final_merge=False, **extra)


def engine_table(args) -> list[dict]:
    """Section 1: batched (now and before the profiling issue), reference, compute bound."""
    results = []
    for n in args.sizes:
        batched = BatchedSimulation.from_config(config_for(n, "batched", args.dataset))
        before = BeforeProfiling.from_config(config_for(n, "batched", args.dataset))
        times = interleaved({"batched_s": one_round(batched), "before_s": one_round(before),
                             "bound_s": compute_bound(batched)}, args.repeats)
        row = {"n": n, **times, "reference_s": None}
        del batched, before
        if n <= args.reference_max:
            reference = Simulation.from_config(config_for(n, "reference", args.dataset))
            row["reference_s"] = timed(one_round(reference), 1)
            del reference
        results.append(row)
        print(f"n={n} done", file=sys.stderr, flush=True)
    print(format_table(
        ["n", "batched s/round", "before s/round", "reference s/round", "bound s",
         "batched/bound", "before/bound", "reference/batched"],
        [[r["n"], r["batched_s"], r["before_s"], r["reference_s"] or "-", r["bound_s"],
          f"{r['batched_s'] / r['bound_s']:.1f}x", f"{r['before_s'] / r['bound_s']:.1f}x",
          f"{r['reference_s'] / r['batched_s']:.0f}x" if r["reference_s"] else "-"]
         for r in results]))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_config(args) -> SimConfig:
    return config_for(args.dist_nodes, "batched", args.dataset, args.dist_rounds)


def worker(args) -> int:
    """``--worker``: this process's part of section 2, started alone or by torchrun. It builds
    the batched engine (distributed when WORLD_SIZE > 1), times ``--dist-rounds`` rounds of
    local steps and gossip (no evaluation: on LEAF synthetic one evaluation of every peer costs
    more than the rounds), and rank 0 prints one JSON line."""
    from sim import distributed
    from sim.engines import build_simulation

    torch.set_num_threads(args.threads)
    ranks = distributed.env_world_size()
    if ranks > 1:
        distributed.start("cpu")
    try:
        start = time.perf_counter()
        sim = build_simulation(dist_config(args))
        build = time.perf_counter() - start
        graph, steps = sim.topology.graph_at(0), sim.algorithm.gossip_steps
        sim.local_updates(0)  # warm-up
        best = float("inf")
        for t in range(args.dist_rounds):
            if ranks > 1:
                torch.distributed.barrier()
            start = time.perf_counter()
            sim.local_updates(t)
            for _ in range(steps):
                sim.gossip_step(graph)
            if ranks > 1:
                torch.distributed.barrier()
            best = min(best, time.perf_counter() - start)
        halo = sum(sim.gossip_plan(graph).recv.values())
        consensus = sim.consensus(sorted(sim.alive))
        if distributed.rank() == 0:
            print(json.dumps({"s_per_round": round(best, 4), "build_s": round(build, 2),
                              "halo_rows": halo, "rows_per_rank": len(sim.X),
                              "consensus_distance": consensus}))
    finally:
        distributed.stop()
    return 0


def worker_run(launcher: list[str], args, threads: int) -> dict:
    """Run ``--worker`` under ``launcher``; its JSON line plus the wall time."""
    flags = ["--worker", "--dist-nodes", str(args.dist_nodes), "--dist-rounds",
             str(args.dist_rounds), "--dataset", args.dataset, "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run([*launcher, str(Path(__file__).resolve()), *flags], cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, check=True, timeout=1800,
                          capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    return {**json.loads(line), "wall_s": round(time.perf_counter() - start, 2)}


def distributed_table(args) -> dict:
    """Section 2: one process (1 and R threads) against R gloo ranks of one thread each."""
    ranks = args.dist_ranks
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    runs = {"one_process_1_thread": worker_run([sys.executable], args, 1),
            f"one_process_{ranks}_threads": worker_run([sys.executable], args, ranks),
            f"{ranks}_gloo_ranks": worker_run(torchrun, args, 1)}
    print(f"\nbatched engine, {args.dist_nodes} peers, {args.dataset}, DFedAvg K=5 Q=1, fastest "
          f"of {args.dist_rounds} rounds (no evaluation), on {os.cpu_count()} cores:")
    print(format_table(["run", "s/round", "rows per rank", "halo rows received",
                        "build s", "wall s", "consensus after"],
                       [[k, v["s_per_round"], v["rows_per_rank"], v["halo_rows"], v["build_s"],
                         v["wall_s"], f"{v['consensus_distance']:.6g}"]
                        for k, v in runs.items()]))
    return {"nodes": args.dist_nodes, "rounds": args.dist_rounds, "ranks": ranks, "runs": runs}


class CifarCNN(nn.Module):
    """A CIFAR-shaped CNN without BatchNorm (the batched engine refuses buffers): two 3x3
    convolutions with pooling and a linear head, about 26k parameters."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 3, 32, 32)).flatten(1))


def shaped_data(n: int, shape: tuple[int, ...], per_peer: int = 16) -> Dataset:
    """Random samples of ``shape`` with random labels: n * per_peer to train, 512 to test."""
    g = torch.Generator().manual_seed(0)
    total = n * per_peer
    return Dataset(f"random{shape}", torch.randn(total, *shape, generator=g),
                   torch.randint(0, 10, (total,), generator=g),
                   torch.randn(512, *shape, generator=g),
                   torch.randint(0, 10, (512,), generator=g), 10)


def gpu_seconds(n: int, model: str, repeats: int) -> dict:
    """Build the batched engine on the GPU at n peers and time a round."""
    shape = (64,) if model == "mlp" else (3, 32, 32)
    config = SimConfig.of(nodes=n, topology="random-regular", degree=4, algorithm="dfedavg",
                          rounds=1, partition="iid", seed=0, engine="batched", device="cuda",
                          final_merge=False, model="mlp")
    start = time.perf_counter()
    sim = BatchedSimulation.from_config(
        config, data=shaped_data(n, shape), model_factory=CifarCNN if model == "cnn" else None)
    build = time.perf_counter() - start
    seconds = timed(one_round(sim), repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del sim
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"n": n, "s_per_round": round(seconds, 4), "build_s": round(build, 1),
            "peak_gib": round(peak, 2)}


def gpu_table(args) -> dict:
    """Section 3 (only with CUDA): seconds per round on the GPU and the largest n that fits."""
    if not torch.cuda.is_available():
        reason = "no CUDA GPU on this machine (torch.cuda.is_available() is False)"
        print(f"\nGPU section skipped: {reason}")
        return {"available": False, "reason": reason, "mlp": None, "cnn": None,
                "largest_n": None}
    out = {"available": True, "reason": None, "device": torch.cuda.get_device_name(),
           "largest_n": {}}
    for model in ("mlp", "cnn"):
        rows, n, fits, began = [], args.gpu_sizes[0], None, time.perf_counter()
        out.setdefault("stopped", {})[model] = f"--gpu-max-nodes {args.gpu_max_nodes}"
        while n <= args.gpu_max_nodes:
            try:
                rows.append(gpu_seconds(n, model, args.repeats))
                fits = n
            except torch.cuda.OutOfMemoryError:
                out["stopped"][model] = f"out of GPU memory at n = {n}"
                break
            finally:
                torch.cuda.empty_cache()
            print(f"gpu {model} n={n}: {rows[-1]}", file=sys.stderr, flush=True)
            if time.perf_counter() - began > args.gpu_budget_s:
                out["stopped"][model] = f"--gpu-budget-s {args.gpu_budget_s} spent after n = {n}"
                break
            bigger = [s for s in args.gpu_sizes if s > n]
            n = bigger[0] if bigger else 2 * n
        out[model], out["largest_n"][model] = rows, fits
        print(f"\nGPU ({out['device']}), {model}: seconds per round; the largest n tried that "
              f"fits: {fits} (stopped: {out['stopped'][model]})")
        print(format_table(["n", "s/round", "build s", "peak GiB"],
                           [[r["n"], r["s_per_round"], r["build_s"], r["peak_gib"]]
                            for r in rows]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--reference-max", type=int, default=1024,
                   help="largest n timed with the reference engine")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dist-nodes", type=int, default=1024)
    p.add_argument("--dist-rounds", type=int, default=10)
    p.add_argument("--dist-ranks", type=int, default=2)
    p.add_argument("--gpu-sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--gpu-max-nodes", type=int, default=262144,
                   help="stop doubling n on the GPU here even if it still fits")
    p.add_argument("--gpu-budget-s", type=float, default=240,
                   help="per model, stop growing n once this many seconds are spent (building "
                        "n learners is Python work: about 2 ms each)")
    p.add_argument("--headline-nodes", type=int, default=1024)
    p.add_argument("--headline-rounds", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sections", nargs="+", default=["engines", "dist", "gpu", "headline"],
                   choices=["engines", "dist", "gpu", "headline"],
                   help="which parts to run (e.g. --sections gpu on a lent GPU)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    results = engine_table(args) if "engines" in args.sections else []
    distributed = distributed_table(args) if "dist" in args.sections else None
    gpu = gpu_table(args) if "gpu" in args.sections else None
    wall = None
    if "headline" in args.sections:
        start = time.perf_counter()
        headline = BatchedSimulation.from_config(
            config_for(args.headline_nodes, "batched", "digits", args.headline_rounds)).run()
        wall = round(time.perf_counter() - start, 1)
        print(f"\n{args.headline_nodes} peers x {args.headline_rounds} rounds, digits MLP, "
              f"batched engine: {wall:.1f} s end to end (build included), mean accuracy "
              f"{headline['mean_acc']:.4f}")
    print(json.dumps({
        "threads": args.threads, "dataset": args.dataset,
        "batched_s_per_round": {str(r["n"]): round(r["batched_s"], 4) for r in results},
        "before_s_per_round": {str(r["n"]): round(r["before_s"], 4) for r in results},
        "reference_s_per_round": {str(r["n"]): round(r["reference_s"], 4) for r in results
                                  if r["reference_s"]},
        "batched_to_bound": {str(r["n"]): round(r["batched_s"] / r["bound_s"], 2)
                             for r in results},
        "before_to_bound": {str(r["n"]): round(r["before_s"] / r["bound_s"], 2)
                            for r in results},
        "distributed": distributed, "gpu": gpu,
        "headline_wall_s": wall, "headline_nodes": args.headline_nodes,
        "headline_rounds": args.headline_rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
