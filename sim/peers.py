"""The peer engine: every simulated peer is a real ``node.peer.Peer`` on a simulated clock.

The simulator swaps the transport and the clock, not the maths or the protocol: peers talk over
``gossip.InMemoryHub`` and run on ``sim.clock.VirtualClockLoop``, where each piece of local work
takes ``work_s`` simulated seconds and a wait for a late neighbour takes exactly its deadline.
Deadlines, suspicion, weight re-normalisation over the neighbours heard, catch-up after a crash
and checkpoint resume are therefore the real peer's, and a run costs only its computation.

Events come from the same scenario timeline as the other engines. They fire when every live
peer has completed the previous round (peers run freely, so a fast peer may already be training
the next one, as real peers would): a crash cancels the peer's task mid-step, a rejoin starts a
new ``Peer`` on the same state folder (it resumes from its checkpoint; for ``state = "fresh"``
from the initial model, since a real peer does not copy a neighbour's model; either way it then
catches up with its neighbours' round), failed links and partitions become
links the hub refuses. Per-round figures come from the peers' own logs (each peer's accuracy
after its round); ``merged_acc`` and the component metrics use the models as they are when the
round completes everywhere.

**Open membership** (``[membership] dynamic = true``, docs/algorithms.md §9.2): the peers named
by ``arrive`` events are not started at round 0; the others (the initial peers) start linked by
the [graph] topology's edges among them (with a ring through them in id order added when those
edges leave them disconnected: a membership protocol cannot heal a network that starts split).
They are the bootstrap peers: an arriving peer is started with ``[membership] bootstrap =
["mem://B", ...]`` naming them (no neighbour table), and then does
what a real joiner does (join, view, link, state transfer). A ``depart`` is the peer's
``request_stop()`` (it tells its neighbours); a ``crash`` cancels its task; a ``rejoin`` starts it
again with no neighbour table: with its model kept it rejoins through the peers its checkpoint
knew (the Peer's own ``known`` URLs), fresh through the bootstrap peers. The graph every metric
uses is then the *current* overlay: the agreed (both ends count it) edges between alive peers'
``neighbours``, and the rows carry view sizes, degrees, the spectral gap and join latencies
(:meth:`PeerSimulation.membership_metrics`). Link failures and partitions act on a static graph's
edges and are refused here.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossip import InMemoryHub
from mixing import consensus_distance
from node.config import PeerConfig, SimConfig
from node.learning import Dataset
from node.peer import JsonLog, LogEvent, Peer, Runtime
from node.peer.checkpoint import load_checkpoint
from node.peer.observe import parse_log
from sim.clock import run_simulated
from sim.engine import Observer, Simulation
from sim.scenario import Event
from topology import metropolis_hastings_matrix, spectral_gap

POLL_S = 0.001  # simulated seconds between the controller's looks at the peers

# a round's figures taken when it is done everywhere: the graph then, and the row's extra keys
Snapshot = tuple[nx.Graph, dict[str, Any]]


STATIC_EDGE_KINDS = ("link-failure", "partition")  # they cut edges of the static [graph]


def initial_graph(base: nx.Graph, initial: Sequence[int]) -> nx.Graph:
    """The edges the initial peers of an open network start with: ``base``'s among them, plus a
    ring through them in id order when those leave them disconnected."""
    graph = nx.Graph(base.subgraph(initial))
    if len(initial) > 1 and not nx.is_connected(graph):
        ring = sorted(initial)
        graph.add_edges_from(zip(ring, ring[1:] + ring[:1], strict=True))
        graph.remove_edges_from(nx.selfloop_edges(graph))
    return graph


def overlay_metrics(graph: nx.Graph) -> dict[str, Any]:
    """Shape of an overlay: components, degrees (histogram: index = degree), and the spectral
    gap of the Metropolis matrix of its largest component (0 for a single peer)."""
    components = sorted(nx.connected_components(graph), key=lambda c: (-len(c), min(c)))
    degrees = [d for _, d in graph.degree]
    largest = nx.convert_node_labels_to_integers(graph.subgraph(components[0])) \
        if components else nx.Graph()
    gap = spectral_gap(metropolis_hastings_matrix(largest)) if len(largest) > 1 else 0.0
    return {"overlay_components": len(components),
            "overlay_largest": len(components[0]) if components else 0,
            "spectral_gap": round(float(gap), 6),
            "degree_mean": float(np.mean(degrees)) if degrees else 0.0,
            "degree_min": min(degrees, default=0), "degree_max": max(degrees, default=0),
            "degree_hist": np.bincount(degrees).tolist() if degrees else []}


class PeerSimulation(Simulation):
    """Build with :meth:`from_config`; :meth:`run` returns the same summary as the others.

    What ``--engine peers`` cannot run (a relay without data, Sybil identities) is refused by
    sim.engines.build_simulation before anything is built; ``from_config`` refuses only what
    this class finds itself (a time-varying graph, events the network does not allow)."""

    engine_name = "peers"
    work_s: float = 0.05

    # set by from_config (Simulation, a dataclass, holds what the engines share)
    _model_factory: Callable[..., Any] | None
    _folder: Path  # the peers' state folders (removed after the run)
    _configs: list[PeerConfig]
    _logs: dict[int, io.StringIO]  # each peer's JSON log
    peers: dict[int, Peer]  # the current Peer object of each id
    tasks: dict[int, asyncio.Task]  # each peer's run()
    lives: dict[int, list[Peer]]  # every Peer object of each id (rejoins add one)
    dynamic: bool  # [membership] dynamic: an open network
    arrivals: dict[int, int]  # peer -> the round it arrives at
    departed: dict[int, int]  # peer -> the round it left (its latest departure)
    initial: list[int]  # the peers started at round 0
    bootstrap: list[int]  # an open network's bootstrap peers (the initial ones)
    # set by the run
    hub: InMemoryHub
    _pending: list[int]  # peers to (re)start once the round's events are applied
    _round: int
    _arrived: list[int]  # arrivals started so far

    @classmethod
    def from_config(cls, config: SimConfig, observers: Iterable[Observer] = (),
                    events: Sequence[Event] = (), *, data: Dataset | None = None,
                    model_factory: Callable[..., Any] | None = None) -> PeerSimulation:
        sim = super().from_config(config, observers, events, data=data,
                                  model_factory=model_factory)
        if sim.topology.time_varying:
            raise ValueError("--engine peers: real peers need a static graph")
        sim._model_factory = model_factory
        sim._folder = Path(tempfile.mkdtemp(prefix="peers-"))
        nodes = config.graph.nodes
        sim._configs = config.peer_configs([("127.0.0.1", 1)] * nodes, sim._folder)
        sim._logs = {i: io.StringIO() for i in range(nodes)}
        sim.peers, sim.tasks, sim.lives = {}, {}, {}
        sim.dynamic = config.membership.enabled
        sim.arrivals, sim.departed = {}, {}
        sim.initial = list(range(nodes))
        if sim.dynamic:
            sim._open_network(config, list(events))
        elif any(e.kind == "arrive" for e in events):
            raise ValueError("--engine peers: event kind 'arrive' needs [membership] dynamic = "
                             "true (a peer of a static graph cannot join a running network)")
        return sim

    def _open_network(self, config: SimConfig, events: list[Event]) -> None:
        """Open membership: who starts, with which edges, and whom arrivals join through."""
        for e in events:
            if e.kind in STATIC_EDGE_KINDS:
                raise ValueError(f"--engine peers: event kind {e.kind!r} cuts edges of the "
                                 "static [graph]; with [membership] dynamic the overlay changes "
                                 "(use crash, depart or rejoin)")
        nodes = config.graph.nodes
        if self.timeline is not None:
            self.arrivals = self.timeline.arrivals(nodes)
        self.initial = [i for i in range(nodes) if i not in self.arrivals]
        if not self.initial:
            raise ValueError("--engine peers: every peer arrives later; nobody starts the "
                             "network (the peers no arrive event names are its bootstrap "
                             "peers)")
        self.bootstrap = list(self.initial)
        self.alive = set(self.initial)
        start = initial_graph(self.topology.graph_at(0), self.initial)
        for i, c in enumerate(self._configs):
            c.membership.dynamic = True
            c.membership.bootstrap = [] if i in self.alive else self._bootstrap_urls(i)
            # the in-memory transport addresses peers by id; the table's URLs are not used
            c.neighbours = {j: "http://127.0.0.1:1" for j in sorted(start.neighbors(i))} \
                if i in self.alive else {}

    def _bootstrap_urls(self, i: int) -> list[str]:
        return [f"mem://{b}" for b in self.bootstrap if b != i]

    # -- peers ---------------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        peer = Peer(self._configs[i], transport=self.hub.transport(i), data=self.dataset,
                    model_factory=self._model_factory,
                    log=JsonLog(i, stream=self._logs[i]),
                    runtime=Runtime.simulated_clock(work_s=self.work_s))
        self.peers[i] = peer
        self.lives.setdefault(i, []).append(peer)
        self.learners[i] = peer.learner

    async def _launch_peer(self, i: int) -> None:
        previous = self.tasks.get(i)
        if previous is not None and previous.done() and not previous.cancelled():
            previous.exception()  # a life that ended in an error (a failed join): seen, replaced
        self._spawn(i)
        await self.peers[i].start()
        self.tasks[i] = asyncio.create_task(self.peers[i].run())

    def take_down(self, peers: Iterable[int]) -> None:
        for v in sorted(set(peers) & self.alive):
            self.tasks[v].cancel()
        super().take_down(peers)

    def depart(self, peers: Iterable[int]) -> None:
        """A graceful leave: the peer finishes its step, tells its neighbours, and stops."""
        for v in sorted(set(peers) & self.alive):
            self.peers[v].request_stop()
            self.departed[v] = self._round
        self.alive -= set(peers)

    def bring_back(self, peers: Iterable[int], base: nx.Graph, fresh: bool = False) -> None:
        back = sorted(set(peers) - self.alive)
        for v in back:
            if fresh:
                shutil.rmtree(self._configs[v].peer.state_dir, ignore_errors=True)
            if self.dynamic:
                self._rejoin_config(v, fresh)
            self._pending.append(v)
        self.alive |= set(back)

    def _rejoin_config(self, v: int, fresh: bool) -> None:
        """A restarted peer of an open network has no neighbour table (its old neighbours may
        have moved on): with its checkpoint it rejoins through the peers it knew, without one
        (fresh, or it never checkpointed) through the bootstrap peers."""
        state = None if fresh else load_checkpoint(self._configs[v].peer.state_dir)
        knows = bool(state and state.get("known"))
        self._configs[v].neighbours = {}
        self._configs[v].membership.bootstrap = [] if knows else self._bootstrap_urls(v)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            return run_simulated(self._run())
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    async def _until_round_done(self, t: int) -> None:
        def done() -> bool:
            return all(self.peers[i].completed_rounds >= t or self.tasks[i].done()
                       for i in self.alive)

        while not done():
            await asyncio.sleep(POLL_S)

    async def _run(self) -> dict[str, Any]:
        self.hub = InMemoryHub()
        self._pending, self._round, self._arrived = [], 0, []
        start = time.perf_counter()
        for obs in self.observers:
            obs.on_start(self)
        await self._start_initial_peers()
        base = self.topology.graph_at(0)
        graph = self._current_graph(base)
        arriving = self._arrivals_by_round()
        snapshots: dict[int, Snapshot] = {}
        rounds = self.config.run.rounds
        for t in range(rounds):
            self._round = t
            await self._until_round_done(t)
            if t > 0:
                graph = self._current_graph(graph)
                snapshots[t] = (graph, self._snapshot_row(t, graph))
            if self.timeline is not None:
                graph = self._apply_round_events(t, base, graph)
                await self._start_newcomers(arriving.get(t, []))
        await self._until_round_done(rounds)
        graph = self._current_graph(graph)
        snapshots[rounds] = (graph, self._snapshot_row(rounds, graph))
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        return self._report(snapshots, graph, start)

    async def _start_initial_peers(self) -> None:
        """Build every initial peer, then start each (it listens), then run them all."""
        for i in self.initial:
            self._spawn(i)
        for i in self.initial:
            await self.peers[i].start()
        self.tasks = {i: asyncio.create_task(p.run()) for i, p in self.peers.items()}

    def _arrivals_by_round(self) -> dict[int, list[int]]:
        """Round -> the peers that arrive at it (in id order)."""
        arriving: dict[int, list[int]] = {}
        for v, r in sorted(self.arrivals.items()):
            arriving.setdefault(r, []).append(v)
        return arriving

    def _current_graph(self, graph: nx.Graph) -> nx.Graph:
        """The graph the metrics use now: an open network's overlay as the peers hold it, else
        ``graph`` (the static graph with this round's events applied)."""
        return self.overlay() if self.dynamic else graph

    def _apply_round_events(self, t: int, base: nx.Graph, graph: nx.Graph) -> nx.Graph:
        """Round ``t``'s events; returns the round's graph. On a static graph the edges that
        the events cut become links the hub refuses; an open network's overlay is the peers'
        own, and the events only select on it (degree, betweenness)."""
        if self.dynamic:
            self._round_graph = graph
            self.apply_events(t, base)
            return graph
        graph = self.apply_events(t, base)
        self.hub.down_links = {frozenset(e) for e in base.edges} - \
            {frozenset(e) for e in graph.edges}
        return graph

    async def _start_newcomers(self, arriving: Sequence[int]) -> None:
        """Start the peers the round's events brought back, then those arriving now."""
        for v in arriving:
            self.alive.add(v)
            self._arrived.append(v)
            self._pending.append(v)
        for v in self._pending:
            await self._launch_peer(v)
        self._pending.clear()

    def _report(self, snapshots: dict[int, Snapshot], graph: nx.Graph, start: float
                ) -> dict[str, Any]:
        """The rows (each told to the observers) and the summary (told at the end)."""
        rows = self._rows(snapshots, start)
        for row in rows:
            for obs in self.observers:
                obs.on_round(row)
        summary = self._summary(rows, graph, time.perf_counter() - start)
        summary["simulated_s"] = round(asyncio.get_running_loop().time(), 3)
        if self.dynamic:
            summary.update(self._membership_summary())
        for obs in self.observers:
            obs.on_end(summary)
        return summary

    def _snapshot_row(self, t: int, graph: nx.Graph) -> dict[str, Any]:
        """Merged and component figures from the models as they are when round t is done
        everywhere (a fast peer may be into the next round)."""
        components = self.component_accuracies(graph)
        extra = {"merged_acc": self.merged_accuracy(graph, components),
                 "consensus_distance": consensus_distance(
                     [self.learners[i].params for i in self.honest]),
                 "simulated_s": round(asyncio.get_running_loop().time(), 4)}
        if self.timeline is not None or self.dynamic:
            extra.update(self.component_metrics(components, self.peer_accuracies(self.honest)))
        if self.dynamic:
            extra.update(self.membership_metrics(graph))
        return extra

    # -- open membership -----------------------------------------------------------------------

    def overlay(self) -> nx.Graph:
        """The current neighbour graph of the alive peers: an edge where both ends count it
        (an edge one end still holds as pending carries no model yet)."""
        graph = nx.Graph()
        graph.add_nodes_from(sorted(self.alive))
        for i in sorted(self.alive):
            graph.add_edges_from((i, j) for j in sorted(self.peers[i].neighbours)
                                 if j in self.alive and i in self.peers[j].neighbours)
        return graph

    def membership_metrics(self, graph: nx.Graph) -> dict[str, Any]:
        """View sizes, the overlay's shape (:func:`overlay_metrics`), one-sided edges (a peer
        counting an alive peer that does not count it, or a peer that is gone), and join
        latencies: simulated seconds from an arrival's start to its first mixed model
        (``Peer.first_mix_s``), over the arrivals so far."""
        alive = sorted(self.alive)
        views = [len(self.peers[i].membership.view) for i in alive]
        one_sided = sum(1 for i in alive for j in self.peers[i].neighbours
                        if j not in self.alive or i not in self.peers[j].neighbours)
        latencies = [s for v in self._arrived if (s := self.lives[v][0].first_mix_s) is not None]
        return {"view_mean": float(np.mean(views)) if views else 0.0,
                "view_max": max(views, default=0), **overlay_metrics(graph),
                "one_sided_edges": one_sided, "arrived": len(self._arrived),
                "joined": len(latencies),
                "join_latency_mean_s": round(float(np.mean(latencies)), 4) if latencies else None,
                "join_latency_max_s": max(latencies, default=None)}

    def _membership_summary(self) -> dict[str, Any]:
        """Per arrival: its round, how it joined (round, donor, neighbours), its first mixed model
        and its first accuracy (after its first round, from its log); per restart (rejoin) the
        same for that life."""
        arrivals = {str(v): {"round": self.arrivals[v],
                             "joined": self.lives[v][0].membership.joined,
                             "first_mix_s": self.lives[v][0].first_mix_s,
                             "first_accuracy": self._first_accuracy(v)}
                    for v in sorted(self._arrived)}
        rejoins = {str(v): [{"joined": p.membership.joined, "first_mix_s": p.first_mix_s}
                            for p in lives[1:]]
                   for v, lives in sorted(self.lives.items()) if len(lives) > 1}
        return {"arrivals": arrivals, "rejoins": rejoins,
                "departed": {str(v): r for v, r in sorted(self.departed.items())},
                "bootstrap": self.bootstrap, "initial": self.initial}

    def _first_accuracy(self, i: int) -> float | None:
        """Peer ``i``'s accuracy after its first evaluated round (from its log), or None."""
        return next((r["accuracy"] for r in self._round_records(i) if r["accuracy"] is not None),
                    None)

    def log_records(self, i: int) -> list[dict[str, Any]]:
        """Every record of peer ``i``'s JSON log (every life), for studies and tests."""
        return parse_log(self._logs[i].getvalue())

    def _round_records(self, i: int) -> list[dict[str, Any]]:
        """Peer ``i``'s ``round`` log records (one per round it completed, every life)."""
        return parse_log(self._logs[i].getvalue(), LogEvent.ROUND)

    def _rows(self, snapshots: dict[int, Snapshot], start: float) -> list[dict[str, Any]]:
        by_round: dict[int, list[dict[str, Any]]] = {}
        for i in self._logs:
            for record in self._round_records(i):
                by_round.setdefault(record["round"], []).append(record)
        rows, messages, sent = [], 0, 0
        for r in sorted(by_round):
            records = by_round[r]
            sent += sum(rec["bytes_out"] for rec in records)
            messages += sum(sum(rec["neighbours_heard_per_step"]) for rec in records)
            accs = [rec["accuracy"] for rec in records if rec["accuracy"] is not None]
            if r not in snapshots or not accs or (r % self.config.run.eval_every and
                                                  r != self.config.run.rounds):
                continue
            losses = [rec["loss"] for rec in records if rec["loss"] is not None]
            row = {"round": r, "mean_acc": float(np.mean(accs)), "min_acc": float(np.min(accs)),
                   "max_acc": float(np.max(accs)),
                   "train_loss": float(np.mean(losses)) if losses else None,
                   "alive": len(records), "messages": messages, "bytes_sent": sent,
                   "suspects": sum(len(rec["suspect"]) for rec in records),
                   "max_round_s": max(rec["round_s"] for rec in records),
                   "wall_s": round(time.perf_counter() - start, 4)}
            row.update(snapshots[r][1])
            rows.append(row)
        self.traffic.messages, self.traffic.bytes_sent = messages, sent
        return rows
