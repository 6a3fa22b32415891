"""The in-process reference engine: n ``Learner`` objects on a graph, synchronous rounds.

Each round (adapt-then-combine, docs/algorithms.md §0.6): every alive peer runs its local update,
then the network performs Q gossip steps. A gossip step is a real exchange: every alive peer sends
its current vector to each alive neighbour (counted in ``messages`` and ``bytes_sent``), and every
peer mixes what it received with ``Learner.mixed`` -- the function the networked peer calls, with
the peer's own mixing rule. After the round, rules that gossip histories (SybilWall) send one record
per edge. Reporting goes through observers; the engine itself prints nothing.

Adversaries (``--attack``) are learners too. ``--adversaries K`` makes K graph nodes adversarial;
``--sybils S --phi PHI`` adds S Sybil identities to the honest graph by the spread rule, all owned
by one adversary learner that sends the same model from every identity (docs/algorithms.md §4.6).
``owner`` maps each graph node to the learner that speaks for it. Accuracy, consensus and the merge
are measured over honest peers only; ``attack_success`` is the mean over honest peers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import networkx as nx
import numpy as np
import torch

from gossip import encoded_size
from mixing import component_average, consensus_distance
from node.config import SimConfig, learner_for
from node.learning import (
    Attack,
    Dataset,
    Learner,
    accuracy,
    derive_seed,
    partition,
)
from sim.scenario import EVENT_KINDS, Event, Timeline, refuse_events
from topology import (
    Topology,
    alive_components,
    attach_sybils,
)


class Observer(Protocol):
    def on_start(self, sim: Simulation) -> None: ...
    def on_round(self, row: dict[str, Any]) -> None: ...
    def on_end(self, summary: dict[str, Any]) -> None: ...


@dataclass
class Traffic:
    messages: int = 0
    bytes_sent: int = 0


def choose_data_holders(count: int, fraction: float, seed: int) -> list[int]:
    """The peers that hold data (sorted): all, or ``round(fraction * count)`` (at least one)
    drawn with the seed; the others only relay (docs/algorithms.md §6.2)."""
    if fraction >= 1.0:
        return list(range(count))
    size = max(1, round(fraction * count))
    rng = np.random.default_rng(derive_seed(seed, "data-holders"))
    return sorted(int(v) for v in rng.choice(count, size=size, replace=False))


def place_attack(config: SimConfig, topology: Topology) -> tuple[Topology, dict[int, int],
                                                                  list[int]]:
    """Where the adversaries sit: (topology, owner of each graph node, adversary learners)."""
    nodes, attack, seed = config.graph.nodes, config.attack, config.run.seed
    owner = {i: i for i in range(nodes)}
    if attack.kind is None:
        return topology, owner, []
    if attack.phi is not None:
        if topology.time_varying:
            raise ValueError("[attack] phi: Sybils need a static graph, not a time-varying "
                             "topology")
        graph, identities = attach_sybils(topology.graph_at(0), attack.phi, attack.sybils,
                                          seed=derive_seed(seed, "sybils"))
        owner.update({v: nodes for v in identities})
        return Topology.from_graph(graph, name=f"{topology.name}+sybils"), owner, [nodes]
    return topology, owner, config.adversaries()


SimulationT = TypeVar("SimulationT", bound="Simulation")


@dataclass
class Simulation:
    """Build with :meth:`from_config`, then :meth:`run`."""

    engine_name = "reference"  # what --engine calls it (events some engines refuse name it)
    config: SimConfig
    topology: Topology
    learners: list[Learner]
    x_test: torch.Tensor
    y_test: torch.Tensor
    observers: list[Observer] = field(default_factory=list)
    alive: set[int] = field(default_factory=set)
    traffic: Traffic = field(default_factory=Traffic)
    owner: dict[int, int] = field(default_factory=dict)
    attack: Attack | None = None
    timeline: Timeline | None = None
    data_holders: set[int] = field(default_factory=set)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    dataset: Dataset | None = None
    _round_graph: nx.Graph | None = None  # the previous round's graph, for the pictures

    @classmethod
    def from_config(cls: type[SimulationT], config: SimConfig,
                    observers: Iterable[Observer] = (), events: Sequence[Event] = (), *,
                    data: Dataset | None = None,
                    model_factory: Callable[..., Any] | None = None) -> SimulationT:
        """The engine for ``config``; ``data`` and ``model_factory`` (Python objects) replace
        what [data] and [model] name, for the Python API (node.api)."""
        refuse_events(events, cls.engine_name)
        seed = config.run.seed
        topology, owner, adversaries = place_attack(config, config.graph.build(seed))
        attack = config.attack.attack()
        count = max(owner.values()) + 1
        holders = choose_data_holders(count, config.graph.data_fraction, seed)
        data = data or config.data.load(num_nodes=len(holders), seed=seed,
                                        import_path=config.run.import_path)
        shards = partition(data, config.data, num_nodes=len(holders), seed=seed)
        parts = [torch.zeros(0, dtype=torch.int64)] * count
        for holder, shard in zip(holders, shards, strict=True):
            parts[holder] = torch.as_tensor(shard, dtype=torch.int64)
        learners = cls._make_learners(config, parts, data=data, factory=model_factory,
                                      attack=attack, adversaries=adversaries)
        timeline = Timeline(list(events), derive_seed(seed, "events")) if events else None
        device = config.run.device
        return cls(config, topology, learners, data.x_test.to(device), data.y_test.to(device),
                   list(observers),
                   alive=set(owner), owner=owner, attack=attack, timeline=timeline,
                   data_holders=set(holders), dataset=data)

    @classmethod
    def _make_learners(cls, config: SimConfig, parts: Sequence[torch.Tensor], *, data: Dataset,
                       factory: Callable[..., Any] | None, attack: Attack | None,
                       adversaries: Sequence[int]) -> list[Learner]:
        """One learner per graph node, on ``[run] device`` (the distributed batched engine,
        sim/distributed.py, builds only its own rank's)."""
        return [learner_for(config, i, data=data, shard=idx, factory=factory,
                            attack=attack if i in adversaries else None,
                            device=config.run.device)
                for i, idx in enumerate(parts)]

    @property
    def algorithm(self):
        return self.learners[0].algorithm

    @property
    def model_size(self) -> int:
        """Length of what a peer sends: parameters (and averaged buffers)."""
        return self.learners[0].vector_size

    @property
    def honest(self) -> list[int]:
        """Alive graph nodes whose learner is honest (their ids are their learners' ids)."""
        return [v for v in sorted(self.alive) if self.learners[self.owner[v]].attack is None]

    def _active(self) -> dict[int, list[int]]:
        """Learner -> its alive identities (one each, except a Sybil adversary's many)."""
        active: dict[int, list[int]] = {}
        for v in sorted(self.alive):
            active.setdefault(self.owner[v], []).append(v)
        return active

    def local_updates(self, round_index: int) -> dict[int, float]:
        """Every active learner's local update; a Sybil attack whose identities differ
        (``Attack.per_identity``) runs its own (``Attack.local_update``)."""
        losses = {}
        for k, identities in self._active().items():
            learner = self.learners[k]
            if learner.attack is not None and learner.attack.per_identity:
                losses[k] = learner.attack.local_update(learner, identities, round_index)
            else:
                losses[k] = learner.local_update(round_index)
        return losses

    def _sent(self, k: int, identities: list[int], round_index: int) -> dict[int, torch.Tensor]:
        """What each identity of learner ``k`` sends: its outgoing vector from all of them, or,
        for a Sybil attack whose identities differ, ``Attack.identity_vectors``."""
        learner = self.learners[k]
        if learner.attack is not None and learner.attack.per_identity:
            return learner.attack.identity_vectors(learner, identities, round_index)
        return dict.fromkeys(identities, learner.outgoing())

    def gossip_step(self, graph: nx.Graph, round_index: int = 0) -> None:
        """One synchronous exchange: every alive identity sends its learner's outgoing vector to
        each alive neighbour, then all mix at once (nobody sees an already-mixed vector).

        A learner with several identities (a Sybil adversary) hears every neighbour of each and
        weighs them uniformly (it averages plainly, docs/algorithms.md §4.6)."""
        message_bytes = encoded_size(self.model_size)
        active = self._active()
        sent = {k: self._sent(k, identities, round_index) for k, identities in active.items()}
        mixed = {}
        for k, identities in active.items():
            received, degrees = {}, {}
            for v in identities:
                for j in graph.neighbors(v):
                    if j in self.alive and self.owner[j] != k:
                        received[j], degrees[j] = sent[self.owner[j]][j], graph.degree[j]
            own_degree = graph.degree[identities[0]]
            if len(identities) > 1:
                own_degree = len(received)
                degrees = dict.fromkeys(received, own_degree)
            self.traffic.messages += len(received)
            self.traffic.bytes_sent += len(received) * message_bytes
            mixed[k] = self.learners[k].mixed(received, own_degree, degrees, round_index)
        for k, params in mixed.items():
            self.learners[k].model.load_vector(params)

    def share_histories(self, graph: nx.Graph) -> None:
        """SybilWall's probabilistic gossip (docs/algorithms.md §4.5): each alive node may send each
        alive neighbour one stored history; all records are picked before any is delivered."""
        outgoing = []
        for v in sorted(self.alive):
            learner = self.learners[self.owner[v]]
            for j in sorted(graph.neighbors(v)):
                if j in self.alive and (picked := learner.history_for(j)) is not None:
                    outgoing.append((v, j, picked))
        message_bytes = encoded_size(self.model_size)
        for v, j, (origin, record) in outgoing:
            self.traffic.messages += 1
            self.traffic.bytes_sent += message_bytes
            self.learners[self.owner[j]].accept_history(v, origin, record.round,
                                                        record.distance, record.vector)

    def merged_models(self, graph: nx.Graph) -> tuple[list[list[int]], dict[int, torch.Tensor]]:
        """Exact average over each connected component of alive honest peers (docs/algorithms.md
        §5.1)."""
        components = alive_components(graph.subgraph(self.honest), self.honest)
        vectors = {i: self.learners[i].vector() for i in self.honest}
        return components, component_average(vectors, components)

    def component_accuracies(self, graph: nx.Graph) -> tuple[list[list[int]], list[float]]:
        """The components of alive honest peers and the accuracy of each one's merged model."""
        components, merged = self.merged_models(graph)
        model = self.learners[0].model
        return components, [accuracy(model, self.x_test, self.y_test, vector=merged[c[0]])
                            for c in components]

    def merged_accuracy(self, graph: nx.Graph,
                        components: tuple[list[list[int]], list[float]] | None = None) -> float:
        """Accuracy of the per-component merged models, weighted by component size
        (``components``: what :meth:`component_accuracies` already returned)."""
        groups, accs = components or self.component_accuracies(graph)
        total = sum(len(c) * a for c, a in zip(groups, accs, strict=True))
        return total / max(1, sum(len(c) for c in groups))

    def attack_success(self) -> float:
        """Mean attack success rate over honest peers (``node.learning.attacks.Attack.success``)."""
        assert self.attack is not None
        return float(np.mean([self.attack.success(self.learners[i].model, self.x_test,
                                                  self.y_test) for i in self.honest]))

    def component_metrics(self, components: tuple[list[list[int]], list[float]],
                          accs: dict[int, float]) -> dict[str, Any]:
        """Connectivity after disruptions (docs/algorithms.md §6.2), from
        :meth:`component_accuracies` and the peers' accuracies: components of the alive honest peers
        on this round's graph, accuracy inside and outside the largest, of each component's merged
        model, and of isolated peers (no live neighbour)."""
        groups, merged_accs = components
        largest = groups[0] if groups else []
        outside = [i for c in groups[1:] for i in c]
        isolated = [c[0] for c in groups if len(c) == 1]

        def mean_of(ids):
            return float(np.mean([accs[i] for i in ids])) if ids else None

        return {
            "components": len(groups),
            "largest_component": len(largest),
            "acc_largest": mean_of(largest),
            "acc_outside": mean_of(outside),
            "isolated": len(isolated),
            "acc_isolated": mean_of(isolated),
            "merged_acc_components": [round(a, 4) for a in merged_accs],
        }

    def peer_accuracies(self, peers: Sequence[int]) -> dict[int, float]:
        """Test accuracy of each of ``peers`` (the batched engine evaluates them together)."""
        return {i: self.learners[i].accuracy(self.x_test, self.y_test) for i in peers}

    def consensus(self, peers: Sequence[int]) -> float:
        """Consensus distance of ``peers``' parameters (docs/algorithms.md §0.1)."""
        return consensus_distance([self.learners[i].params for i in peers])

    def evaluate(self, round_index: int, graph: nx.Graph, losses: dict[int, float]
                 ) -> dict[str, Any]:
        alive = self.honest
        accs = self.peer_accuracies(alive)
        values = list(accs.values())
        trained = [losses[i] for i in alive if i in losses and not np.isnan(losses[i])]
        components = self.component_accuracies(graph)
        row = {
            "round": round_index,
            "mean_acc": float(np.mean(values)),
            "min_acc": float(np.min(values)),
            "max_acc": float(np.max(values)),
            "consensus_distance": self.consensus(alive),
            "merged_acc": self.merged_accuracy(graph, components),
            "train_loss": float(np.mean(trained)) if trained else None,
            "alive": len(alive),
            "messages": self.traffic.messages,
            "bytes_sent": self.traffic.bytes_sent,
        }
        if self.timeline is not None:
            row.update(self.component_metrics(components, accs))
        if self.attack is not None:
            row["attack_success"] = self.attack_success()
        return row

    def final_merge(self, graph: nx.Graph) -> list[list[int]]:
        """Replace every alive model by its component's exact average (the single global merge)."""
        components, merged = self.merged_models(graph)
        for i, vector in merged.items():
            self.learners[i].model.load_vector(vector)
            if self.learners[i].model.buffer_mode == "recalibrate":
                self.learners[i].model.recalibrate(self.learners[i].trainer.x)
        for component in components:  # a convergecast and a broadcast over a spanning tree
            self.traffic.messages += 2 * (len(component) - 1)
            self.traffic.bytes_sent += 2 * (len(component) - 1) * encoded_size(self.model_size)
        return components

    def run(self) -> dict[str, Any]:
        cfg = self.config.run
        for obs in self.observers:
            obs.on_start(self)
        start = time.perf_counter()
        rows: list[dict[str, Any]] = []
        graph = self.topology.graph_at(0)
        for t in range(cfg.rounds):
            graph = self.topology.graph_at(t)
            if self.timeline is not None:
                graph = self.apply_events(t, graph)
            if not self.honest:
                raise ValueError(f"round {t}: no peer is alive; the scenario removed every peer")
            losses = self.local_updates(t)
            for _ in range(self.algorithm.gossip_steps):
                self.gossip_step(graph, t)
            self.share_histories(graph)
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

    # -- scenario events (sim.scenario) --------------------------------------------------------

    def take_down(self, peers: Iterable[int]) -> None:
        """Crashed peers send and receive nothing; their models stay as they were."""
        self.alive -= set(peers)

    def bring_back(self, peers: Iterable[int], base: nx.Graph, fresh: bool = False) -> None:
        """Rejoin with the model kept, or (``fresh``) with a new one caught up from the
        lowest-id live neighbour (its parameters copied, local momentum reset)."""
        for v in sorted(set(peers) - self.alive):
            if fresh:
                learner = self.learners[v]
                donors = sorted(j for j in base.neighbors(v) if j in self.alive)
                if donors:
                    learner.model.load_vector(self.learners[donors[0]].vector())
                learner.trainer.momentum_buffer.zero_()
            self.alive.add(v)

    def apply_events(self, t: int, base: nx.Graph) -> nx.Graph:
        """Apply what the timeline says for round ``t``; return this round's graph. Disruptive
        rounds are recorded in ``snapshots`` (graph and alive set before and after) for the
        pictures drawn after the run."""
        tl = self.timeline
        if tl is None:  # no scenario: the round's graph is the topology's
            return base
        before_alive = set(self.alive)
        before_graph = self._round_graph if self._round_graph is not None else \
            tl.graph_at(base, 0)
        labels = self._run_event_handlers(t, base, before_graph)
        self._apply_lifetimes_and_traces(t, base)
        graph = self._round_graph = tl.graph_at(base, t)
        if labels:
            self.snapshots.append({"round": t, "events": labels, "before": before_graph,
                                   "alive_before": before_alive, "after": graph,
                                   "alive_after": set(self.alive)})
        return graph

    def _run_event_handlers(self, t: int, base: nx.Graph, before_graph: nx.Graph) -> list[str]:
        """Start the events of round ``t`` and end those that last until it; their labels."""
        assert self.timeline is not None
        labels = []
        for index, e in enumerate(self.timeline.events):
            kind = EVENT_KINDS[e.kind]
            if e.round == t:
                if kind.start is not None:
                    kind.start(self, index, e, base, before_graph)
                labels.append(e.label)
            if e.until == t and kind.end is not None:
                labels.append(kind.end(self, index, e, base))
        return labels

    def _apply_lifetimes_and_traces(self, t: int, base: nx.Graph) -> None:
        """Peers whose lifetime is worked out go down; availability traces say who is up."""
        tl = self.timeline
        assert tl is not None
        for v, lifetime in tl.lifetimes.items():
            if v in self.alive and tl.worked[v] >= lifetime:
                self.take_down([v])
        for v in self.alive:
            if v in tl.worked:
                tl.worked[v] += 1
        for v, intervals in tl.traces.items():
            online = any(a <= t < b for a, b in intervals)
            if online:
                self.bring_back([v], base)
            else:
                self.take_down([v])

    def _summary(self, rows: Sequence[dict[str, Any]], graph: nx.Graph, wall: float
                 ) -> dict[str, Any]:
        last = rows[-1]
        before = self.peer_accuracies(self.honest)
        summary: dict[str, Any] = {
            "seed": self.config.run.seed,
            "config": self.config.to_dict(),
            "algorithm": vars(self.algorithm),
            "rounds": self.config.run.rounds,
            "mean_acc": last["mean_acc"],
            "min_acc": last["min_acc"],
            "max_acc": last["max_acc"],
            "consensus_distance": last["consensus_distance"],
            "merged_acc": last["merged_acc"],
            "bytes_sent": self.traffic.bytes_sent,
            "messages": self.traffic.messages,
            "model_parameters": self.model_size,
            "wall_s": round(wall, 3),
            "seconds_per_round": round(wall / max(1, self.config.run.rounds), 5),
            "node_accuracy": {str(i): before[i] for i in sorted(before)},
            "node_samples": {str(i): self.learners[i].num_samples for i in self.honest},
        }
        if self.timeline is not None:
            summary["events"] = [vars(e) for e in self.timeline.events]
            summary["data_holders"] = sorted(self.data_holders)
            summary.update({k: last[k] for k in ("components", "largest_component",
                                                   "acc_largest", "acc_outside", "isolated",
                                                   "acc_isolated")})
        if self.attack is not None:
            adversaries = sorted(set(self.owner) - set(self.honest))
            summary.update(attack_success=last["attack_success"], adversaries=adversaries)
        if self.config.algorithm.final_merge:
            components = self.final_merge(graph)
            summary["components"] = len(components)
            after = self.peer_accuracies(self.honest)
            summary["node_accuracy_after_merge"] = {str(i): after[i] for i in self.honest}
        return summary
