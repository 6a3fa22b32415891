"""What the launcher does to its peers while they run, as policies of node.supervisor's loop:
the join schedule (join mode), the bootstrap kill (--kill-bootstrap-at-round) and the churn
(--kill-fraction, --kill-at-round, --restart-after)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from node.config import LaunchConfig
from node.learning.seeding import derive_seed
from node.supervisor import STDERR_FILE, PeerProcess, Policy, Supervisor


class JoinSchedule(Policy):
    """Join mode: the bootstrap peers start first; once every one of them serves, the joiners
    start ``spacing_s`` apart. A bootstrap peer that exits before that ends the run
    (ChildProcessError: the network has nobody to join through)."""

    def __init__(self, bootstrap: Sequence[PeerProcess], joiners: Sequence[PeerProcess],
                 spacing_s: float):
        self.bootstrap, self.joiners, self.spacing_s = list(bootstrap), list(joiners), spacing_s
        self.due: dict[PeerProcess, float] | None = None  # joiner -> start time, once known

    def holds_back(self, peer: PeerProcess) -> bool:
        return peer in self.joiners

    def pending(self, supervisor: Supervisor) -> bool:
        return self.due is None or bool(self.due)

    def on_tick(self, supervisor: Supervisor, now: float) -> None:
        if self.due is None:
            self.schedule(now)
        due = self.due or {}
        for p, at in list(due.items()):
            if now >= at:
                del due[p]
                p.start()

    def schedule(self, now: float) -> None:
        """The joiners' start times, once every bootstrap peer serves (it can be joined)."""
        if any(not p.running for p in self.bootstrap):
            raise ChildProcessError("a bootstrap peer exited before it served; see "
                                    f"{self.bootstrap[0].state_dir.parent}/peerI/{STDERR_FILE}")
        if all(p.serving for p in self.bootstrap):
            self.due = {p: now + k * self.spacing_s for k, p in enumerate(self.joiners)}


class BootstrapKill(Policy):
    """SIGKILL the bootstrap peers for good once each completed ``at_round`` rounds (the
    others go on without them)."""

    def __init__(self, bootstrap: Sequence[PeerProcess], at_round: int):
        self.bootstrap, self.at_round = list(bootstrap), at_round
        self.done = False

    def on_tick(self, supervisor: Supervisor, now: float) -> None:
        if self.done or min(p.completed for p in self.bootstrap) < self.at_round:
            return
        for p in self.bootstrap:
            p.kill()
            p.stopped_on_purpose = True
        self.done = True
        supervisor.say(f"killed the bootstrap peers {[supervisor.index(p) for p in self.bootstrap]}"
                       f" (SIGKILL) after round {self.at_round}")


class Churn(Policy):
    """SIGKILL the peers ``victims`` (indices) once every peer completed ``at_round`` rounds;
    restart each ``restart_after`` seconds later (None: never). A victim another policy stopped
    on purpose meanwhile is not restarted."""

    def __init__(self, victims: Sequence[int], at_round: int, restart_after: float | None):
        self.victims, self.at_round, self.restart_after = list(victims), at_round, restart_after
        self.done = not self.victims
        self.down_since: dict[int, float] = {}  # victim -> when it was killed (monotonic)

    def pending(self, supervisor: Supervisor) -> bool:
        return self.restart_after is not None and any(
            not supervisor.peers[i].stopped_on_purpose for i in self.down_since)

    def on_tick(self, supervisor: Supervisor, now: float) -> None:
        # restarts first: a peer killed in this tick restarts in a later one, after the
        # supervisor has reported its end
        if self.restart_after is not None:
            self.restart_due(supervisor, now)
        if not self.done and min(p.completed for p in supervisor.peers) >= self.at_round:
            self.kill(supervisor, now)

    def kill(self, supervisor: Supervisor, now: float) -> None:
        for i in self.victims:
            supervisor.peers[i].kill()
            self.down_since[i] = now
        self.done = True
        supervisor.say(f"killed peers {self.victims} (SIGKILL) at round {self.at_round}")

    def restart_due(self, supervisor: Supervisor, now: float) -> None:
        if self.restart_after is None:
            return
        for i, since in list(self.down_since.items()):
            p = supervisor.peers[i]
            if p.stopped_on_purpose:
                del self.down_since[i]
            elif now - since >= self.restart_after:
                del self.down_since[i]
                p.restarts += 1
                p.start()


def choose_victims(s: LaunchConfig) -> list[int]:
    """The peers the churn kills (sorted), drawn with the run seed."""
    nodes, fraction = s.graph.nodes, s.launch.kill_fraction
    if fraction <= 0:
        return []
    rng = np.random.default_rng(derive_seed(s.run.seed, "churn"))
    return sorted(rng.choice(nodes, size=int(round(fraction * nodes)), replace=False).tolist())


def launch_policies(s: LaunchConfig, peers: Sequence[PeerProcess], victims: Sequence[int]
                    ) -> list[Policy]:
    """The policies [launch] asks for, in the order they act in a tick: the join schedule and
    the bootstrap kill (join mode), then the churn of ``victims``."""
    c = s.launch
    policies: list[Policy] = []
    if c.join:
        bootstrap, joiners = peers[:c.bootstrap], peers[c.bootstrap:]
        policies.append(JoinSchedule(bootstrap, joiners, c.join_spacing_s))
        if c.kill_bootstrap_at_round is not None:
            policies.append(BootstrapKill(bootstrap, c.kill_bootstrap_at_round))
    if victims:
        policies.append(Churn(victims, c.kill_at_round, c.restart_after))
    return policies
