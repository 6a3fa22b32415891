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
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossip import InMemoryHub
from mixing import consensus_distance
from node.config import SimConfig
from node.peer import JsonLog, Peer
from sim.clock import run_simulated
from sim.engine import Observer, Simulation
from sim.scenario import Event

POLL_S = 0.001  # simulated seconds between the controller's looks at the peers


def peer_refusal(config: SimConfig) -> str | None:
    if config.graph.data_fraction < 1.0:
        return "[graph] data_fraction: a real peer always holds a data shard"
    if config.attack.phi is not None:
        return "[attack] phi: Sybil identities exist in the reference engine only"
    if config.data.dataset == "digits" and config.graph.nodes > 1347:
        return "more peers than digits training images"
    return None


class PeerSimulation(Simulation):
    """Build with :meth:`from_config`; :meth:`run` returns the same summary as the others."""

    work_s: float = 0.05

    @classmethod
    def from_config(cls, config: SimConfig, observers: Iterable[Observer] = (),
                    events: Sequence[Event] = (), **sources) -> PeerSimulation:
        reason = peer_refusal(config)
        if reason:
            raise ValueError(f"--engine peers: {reason}")
        sim = super().from_config(config, observers, events, **sources)
        sim._model_factory = sources.get("model_factory")
        if sim.topology.time_varying:
            raise ValueError("--engine peers: real peers need a static graph")
        sim._folder = Path(tempfile.mkdtemp(prefix="peers-"))
        nodes = config.graph.nodes
        sim._configs = config.peer_configs([("127.0.0.1", 1)] * nodes, sim._folder)
        sim._logs = {i: io.StringIO() for i in range(nodes)}
        sim.peers: dict[int, Peer] = {}
        sim.tasks: dict[int, asyncio.Task] = {}
        return sim

    # -- peers ---------------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        peer = Peer(self._configs[i], transport=self.hub.transport(i), data=self.dataset,
                    model_factory=self._model_factory,
                    log=JsonLog(i, stream=self._logs[i]), inline=True, work_s=self.work_s)
        self.peers[i] = peer
        self.learners[i] = peer.learner

    async def _launch_peer(self, i: int) -> None:
        self._spawn(i)
        await self.peers[i].start()
        self.tasks[i] = asyncio.create_task(self.peers[i].run())

    def take_down(self, peers: Iterable[int]) -> None:
        for v in sorted(set(peers) & self.alive):
            self.tasks[v].cancel()
        super().take_down(peers)

    def bring_back(self, peers: Iterable[int], base: nx.Graph, fresh: bool = False) -> None:
        back = sorted(set(peers) - self.alive)
        for v in back:
            if fresh:
                shutil.rmtree(self._configs[v].peer.state_dir, ignore_errors=True)
            self._pending.append(v)
        self.alive |= set(back)

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
        cfg, nodes = self.config.run, self.config.graph.nodes
        self.hub = InMemoryHub()
        self._pending: list[int] = []
        start = time.perf_counter()
        for obs in self.observers:
            obs.on_start(self)
        for i in range(nodes):
            self._spawn(i)
        for i in range(nodes):
            await self.peers[i].start()
        self.tasks = {i: asyncio.create_task(p.run()) for i, p in self.peers.items()}
        base = self.topology.graph_at(0)
        graph = base
        snapshots: dict[int, tuple[nx.Graph, float]] = {}
        for t in range(cfg.rounds):
            await self._until_round_done(t)
            if t > 0:
                snapshots[t] = (graph, self._snapshot_row(t, graph))
            if self.timeline is not None:
                graph = self.apply_events(t, base)
                self.hub.down_links = {frozenset(e) for e in base.edges} - \
                    {frozenset(e) for e in graph.edges}
                for v in self._pending:
                    await self._launch_peer(v)
                self._pending.clear()
        await self._until_round_done(cfg.rounds)
        snapshots[cfg.rounds] = (graph, self._snapshot_row(cfg.rounds, graph))
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        rows = self._rows(snapshots, start)
        for row in rows:
            for obs in self.observers:
                obs.on_round(row)
        summary = self._summary(rows, graph, time.perf_counter() - start)
        summary["simulated_s"] = round(asyncio.get_running_loop().time(), 3)
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
        if self.timeline is not None:
            extra.update(self.component_metrics(components, self.peer_accuracies(self.honest)))
        return extra

    def _rows(self, snapshots: dict, start: float) -> list[dict[str, Any]]:
        by_round: dict[int, list[dict]] = {}
        for log in self._logs.values():
            for line in log.getvalue().splitlines():
                record = json.loads(line)
                if record["event"] == "round":
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
