"""The in-process reference engine: n ``Learner`` objects on a graph, synchronous rounds.

Each round (adapt-then-combine, spec 0.6): every alive peer runs its local update, then the
network performs Q gossip steps. A gossip step is a real exchange: every alive peer sends its
current vector to each alive neighbour (counted in ``messages`` and ``bytes_sent``), and every peer
mixes what it received with ``Learner.gossip_step`` -- the function the networked peer calls.
Reporting goes through observers; the engine itself prints nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import networkx as nx
import numpy as np
import torch

from gossip import encoded_size
from mixing import component_average, consensus_distance
from node import (
    Learner,
    TrainConfig,
    accuracy,
    derive_seed,
    load_dataset,
    make_learner,
    partition,
    resolve_algorithm,
)
from sim.config import SimConfig
from topology import Topology, alive_components, load_graph, require_connected


class Observer(Protocol):
    def on_start(self, sim: Simulation) -> None: ...
    def on_round(self, row: dict[str, Any]) -> None: ...
    def on_end(self, summary: dict[str, Any]) -> None: ...


@dataclass
class Traffic:
    messages: int = 0
    bytes_sent: int = 0


def build_topology(config: SimConfig) -> Topology:
    """The graph from ``config.graph`` (a file) or the named builder, checked to be connected."""
    if config.graph:
        graph = load_graph(config.graph)
        if graph.number_of_nodes() != config.nodes:
            raise ValueError(
                f"--graph: {config.graph} has {graph.number_of_nodes()} nodes but --nodes is "
                f"{config.nodes}")
        topology = Topology.from_graph(graph, name=str(config.graph))
    else:
        topology = Topology(
            config.topology, config.nodes, seed=derive_seed(config.seed, "topology"),
            degree=config.degree, probability=config.probability, attach=config.attach,
            radius=config.radius)
    if not topology.time_varying:
        require_connected(topology.graph_at(0), f"topology {topology.name}")
    return topology


@dataclass
class Simulation:
    """Build with :meth:`from_config`, then :meth:`run`."""

    config: SimConfig
    topology: Topology
    learners: list[Learner]
    x_test: torch.Tensor
    y_test: torch.Tensor
    observers: list[Observer] = field(default_factory=list)
    alive: set[int] = field(default_factory=set)
    traffic: Traffic = field(default_factory=Traffic)

    @classmethod
    def from_config(cls, config: SimConfig, observers: Iterable[Observer] = ()) -> Simulation:
        algorithm = resolve_algorithm(config.algorithm, config.local_steps, config.rho,
                                      config.gossip_steps)
        topology = build_topology(config)
        data = load_dataset(config.dataset, config.nodes, config.seed,
                            config.synthetic_alpha, config.synthetic_beta, config.test_fraction)
        parts = partition(data, config.nodes, config.partition, config.seed, config.alpha,
                          config.classes_per_node)
        train = TrainConfig(lr=config.lr, lr_decay=config.lr_decay, momentum=config.momentum,
                            weight_decay=config.weight_decay, batch_size=config.batch_size)
        learners = [make_learner(i, data, idx, config.model, train, algorithm, config.seed,
                                 hidden=config.hidden) for i, idx in enumerate(parts)]
        return cls(config, topology, learners, data.x_test, data.y_test, list(observers),
                   alive=set(range(config.nodes)))

    @property
    def algorithm(self):
        return self.learners[0].algorithm

    @property
    def model_size(self) -> int:
        return self.learners[0].model.size

    def local_updates(self, round_index: int) -> dict[int, float]:
        return {i: self.learners[i].local_update(round_index) for i in sorted(self.alive)}

    def gossip_step(self, graph: nx.Graph) -> None:
        """One synchronous exchange: every alive peer sends its vector to each alive neighbour,
        then all mix at once (nobody sees a neighbour's already-mixed vector)."""
        message_bytes = encoded_size(self.model_size)
        mixed = {}
        for i in sorted(self.alive):
            neighbours = list(graph.neighbors(i))
            received = {j: self.learners[j].params for j in neighbours if j in self.alive}
            degrees = {j: graph.degree[j] for j in neighbours}
            self.traffic.messages += len(received)
            self.traffic.bytes_sent += len(received) * message_bytes
            mixed[i] = self.learners[i].mixed(received, graph.degree[i], degrees)
        for i, params in mixed.items():
            self.learners[i].model.load(params)

    def merged_models(self, graph: nx.Graph) -> tuple[list[list[int]], dict[int, torch.Tensor]]:
        """Exact average over each connected component of alive peers (spec 5.1)."""
        components = alive_components(graph, self.alive)
        vectors = {i: self.learners[i].params for i in self.alive}
        return components, component_average(vectors, components)

    def merged_accuracy(self, graph: nx.Graph) -> float:
        """Accuracy of the per-component merged models, weighted by component size."""
        components, merged = self.merged_models(graph)
        model = self.learners[0].model
        total = 0.0
        for component in components:
            total += len(component) * accuracy(model, self.x_test, self.y_test,
                                               merged[component[0]])
        return total / max(1, sum(len(c) for c in components))

    def evaluate(self, round_index: int, graph: nx.Graph, losses: dict[int, float]
                 ) -> dict[str, Any]:
        alive = sorted(self.alive)
        accs = [self.learners[i].accuracy(self.x_test, self.y_test) for i in alive]
        return {
            "round": round_index,
            "mean_acc": float(np.mean(accs)),
            "min_acc": float(np.min(accs)),
            "max_acc": float(np.max(accs)),
            "consensus_distance": consensus_distance([self.learners[i].params for i in alive]),
            "merged_acc": self.merged_accuracy(graph),
            "train_loss": float(np.mean([losses[i] for i in alive])),
            "alive": len(alive),
            "messages": self.traffic.messages,
            "bytes_sent": self.traffic.bytes_sent,
        }

    def final_merge(self, graph: nx.Graph) -> list[list[int]]:
        """Replace every alive model by its component's exact average (the single global merge)."""
        components, merged = self.merged_models(graph)
        for i, vector in merged.items():
            self.learners[i].model.load(vector)
        for component in components:  # a convergecast and a broadcast over a spanning tree
            self.traffic.messages += 2 * (len(component) - 1)
            self.traffic.bytes_sent += 2 * (len(component) - 1) * encoded_size(self.model_size)
        return components

    def run(self) -> dict[str, Any]:
        cfg = self.config
        for obs in self.observers:
            obs.on_start(self)
        start = time.perf_counter()
        rows: list[dict[str, Any]] = []
        graph = self.topology.graph_at(0)
        for t in range(cfg.rounds):
            graph = self.topology.graph_at(t)
            losses = self.local_updates(t)
            for _ in range(self.algorithm.gossip_steps):
                self.gossip_step(graph)
            if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
                row = self.evaluate(t + 1, graph, losses)
                row["wall_s"] = round(time.perf_counter() - start, 4)
                rows.append(row)
                for obs in self.observers:
                    obs.on_round(row)
        summary = self._summary(rows, graph, time.perf_counter() - start)
        for obs in self.observers:
            obs.on_end(summary)
        return summary

    def _summary(self, rows: Sequence[dict[str, Any]], graph: nx.Graph, wall: float
                 ) -> dict[str, Any]:
        last = rows[-1]
        before = {i: self.learners[i].accuracy(self.x_test, self.y_test) for i in self.alive}
        summary: dict[str, Any] = {
            "seed": self.config.seed,
            "config": self.config.to_dict(),
            "algorithm": vars(self.algorithm),
            "rounds": self.config.rounds,
            "mean_acc": last["mean_acc"],
            "min_acc": last["min_acc"],
            "max_acc": last["max_acc"],
            "consensus_distance": last["consensus_distance"],
            "merged_acc": last["merged_acc"],
            "bytes_sent": self.traffic.bytes_sent,
            "messages": self.traffic.messages,
            "model_parameters": self.model_size,
            "wall_s": round(wall, 3),
            "seconds_per_round": round(wall / max(1, self.config.rounds), 5),
            "node_accuracy": {str(i): before[i] for i in sorted(before)},
            "node_samples": {str(i): self.learners[i].num_samples for i in sorted(self.alive)},
        }
        if self.config.final_merge:
            components = self.final_merge(graph)
            summary["components"] = len(components)
            summary["node_accuracy_after_merge"] = {
                str(i): self.learners[i].accuracy(self.x_test, self.y_test)
                for i in sorted(self.alive)}
        return summary
