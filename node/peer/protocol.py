"""The networked peer: one asyncio process that trains, gossips, checkpoints and merges.

The round protocol (the simulator's, with a transport and a wall clock instead of a loop):

1. ``K`` local steps of the shared ``Learner`` off the event loop (``Runtime.blocking``), so the
   peer keeps serving gossip and status while it trains;
2. ``Q`` gossip steps: send the model to every neighbour, collect theirs until all live ones
   arrived or the step's deadline passed (node/peer/exchange.py), then mix with
   ``Learner.mixed`` over the vectors that arrived (Metropolis weights; a missing neighbour's
   weight goes back to the peer's own);
3. an atomic checkpoint and one JSON log line.

After the last round, the final global merge (node/peer/merge.py) floods every model through
the live component and takes the exact average.

``Peer`` keeps the run and the round loop and delegates the rest, one job per module:
receive.py (a handler per message kind behind admission.py, the ordered checks of every
received body; refusals counted and logged in one place), inbox.py (slots, window, replay
guard), neighbourhood.py (live, suspect and dropped neighbours, the catch-up vote), exchange.py
(send, collect, the adaptive deadline), merge.py (the flood merge's state), membership.py (open
membership), observe.py (log, metrics, file names), console.py (what a terminal shows),
routes.py (HTTP GET routes), wiring.py (from a config to data, transport and keys), runtime.py
(clock and where blocking work runs: real or simulated), phase.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from gossip import Message, Transport, encode
from gossip.messages import within
from node.config import PeerConfig, learner_for
from node.learning import Dataset
from node.peer.admission import Admission, Refusals, refusal_reason
from node.peer.checkpoint import (
    check_fits,
    load_checkpoint,
    private_folder,
    save_checkpoint,
    write_private,
)
from node.peer.exchange import AdaptiveDeadline, Arrivals, Exchange
from node.peer.inbox import Inbox, SlotKey
from node.peer.limits import RateLimits
from node.peer.membership import Membership
from node.peer.merge import MERGE_STEPS_AHEAD, FloodMerge
from node.peer.neighbourhood import Neighbourhood
from node.peer.observe import (
    FINAL_SUMMARY,
    JsonLog,
    LogEvent,
    PeerMetrics,
    private_megabytes,
    rss_megabytes,
)
from node.peer.phase import Phase
from node.peer.receive import Receiver
from node.peer.routes import peer_routes
from node.peer.runtime import Runtime
from node.peer.wiring import http_transport, identity_and_trust, load_peer_data, peer_split

logger = logging.getLogger(__name__)

# the longest run a joiner adopts from its donor (a donor is an admitted insider, but a run of
# 2**62 rounds is nobody's network)
MAX_ADOPTED_ROUNDS = 10**6


class Peer:
    """Build from a PeerConfig; ``await run()`` trains, merges and returns the final summary.

    ``runtime``: ``Runtime.real()`` (the default) or the simulator's
    ``Runtime.simulated_clock(work_s=...)``; ``transport``: HTTP from the config by default."""

    def __init__(self, config: PeerConfig, *, transport: Transport | None = None,
                 data: Dataset | None = None, log: JsonLog | None = None,
                 runtime: Runtime | None = None,
                 model_factory: Callable[..., Any] | None = None):
        self.config = cfg = config
        self.id = cfg.id
        self.runtime = runtime or Runtime.real(
            name=f"peer{cfg.id}",
            vouched=transport is not None and transport.vouches_for_senders)
        self.algorithm = cfg.algorithm.resolve()
        data = data or load_peer_data(cfg)
        self.log = log or JsonLog(cfg.id, cfg.peer.log_file)
        self._load_learner(data, model_factory)
        self.identity, self.trust = identity_and_trust(cfg, self.runtime, self.log)
        self.transport = transport or http_transport(cfg)
        self.transport.set_peers(cfg.neighbours)
        self.transport.model_length = self.learner.vector_size
        self._build_parts()
        self.phase = Phase.STARTING
        self.position = (0, 0)  # the (round, step) being collected; earlier messages are stale
        self.completed_rounds = 0
        self.last_accuracy: float | None = None  # on the shared test set
        self.last_val_accuracy: float | None = None  # on this peer's own validation data
        self.last_loss: float | None = None
        self.resumed = False
        self.already_finished = False  # run() found the work done by an earlier run
        self._stop = False
        self._maintenance: asyncio.Task[None] | None = None
        self._step_body: tuple[tuple[int, int], bytes] | None = None  # this step's model
        self._started: float | None = None
        self.first_mix_s: float | None = None  # start -> first model mixed with a neighbour's
        self.steps_gossiped = 0  # gossip steps of the run that expected a neighbour
        self.steps_mixed = 0  # ... in which at least one neighbour's model was mixed in
        self._resume()
        if cfg.membership.enabled and not cfg.neighbours:
            self.exchange.first_wait = False  # nobody starts with this peer: no start-up waits

    def _load_learner(self, data: Dataset, model_factory: Callable[..., Any] | None) -> None:
        cfg = self.config
        shard, validation = peer_split(cfg, data)
        self.learner = learner_for(cfg, cfg.id, data=data, shard=shard,
                                   attack=cfg.attack.attack(), device=cfg.run.device,
                                   factory=model_factory)
        device = cfg.run.device
        self.x_test, self.y_test = data.x_test.to(device), data.y_test.to(device)
        self.x_val: torch.Tensor | None = None
        self.y_val: torch.Tensor | None = None
        if validation is not None:
            self.x_val, self.y_val = validation[0].to(device), validation[1].to(device)
        self.data_source = cfg.data.source

    def _build_parts(self) -> None:
        cfg, g = self.config, self.config.gossip
        self.neighbourhood = Neighbourhood(set(cfg.neighbours))
        self.inbox = Inbox(per_sender=g.inbox_per_sender)
        self.arrivals = Arrivals()
        self.deadline = AdaptiveDeadline(floor=g.deadline_floor_s, ceiling=g.deadline_ceiling_s,
                                         factor=g.deadline_factor)
        self.exchange = Exchange(
            peer_id=self.id, transport=self.transport, identity=self.identity,
            vector_size=self.learner.vector_size, inbox=self.inbox,
            neighbourhood=self.neighbourhood, deadline=self.deadline, arrivals=self.arrivals,
            log=self.log, clock=self.runtime.now, startup_timeout_s=g.startup_timeout_s,
            on_refused=self._refused_by)
        self.limits = RateLimits(self.neighbourhood.members, neighbour_rate=g.max_messages_per_s)
        self.refusals = Refusals(self.log)
        self.membership = Membership(self, cfg.membership, seed=cfg.run.seed)
        self.admission = Admission(
            trust=self.trust, limits=self.limits, clock=self.runtime.now,
            is_known=lambda j: j in self.neighbourhood or j in self.membership.pending,
            open_to_strangers=cfg.membership.enabled, gossip=g,
            vector_size=self.learner.vector_size, peer_id=self.id)
        self.receiver = Receiver(
            self, admission=self.admission, refusals=self.refusals,
            neighbourhood=self.neighbourhood, inbox=self.inbox, exchange=self.exchange,
            membership=self.membership, learner=self.learner, log=self.log,
            clock=self.runtime.now)
        # one registry per peer (never the process-wide default: the simulator runs many peers)
        self.metrics = CollectorRegistry(auto_describe=False)
        self.metrics.register(PeerMetrics(self.id, self.status))

    # -- what others read (membership's PeerSide, tests, the simulator) ------------------------

    @property
    def neighbours(self) -> set[int]:
        return self.neighbourhood.members

    @property
    def suspect(self) -> set[int]:
        return self.neighbourhood.suspect

    @property
    def rejected(self) -> dict[int, int]:
        return self.refusals.counts

    @property
    def traffic(self) -> dict[str, int]:
        return self.exchange.traffic

    @property
    def wait_times(self) -> list[float]:
        return self.exchange.wait_times

    @property
    def state(self) -> Phase:
        """The phase, as /status and final.json name it."""
        return self.phase

    @property
    def stopping(self) -> bool:
        return self._stop

    def wake(self) -> None:
        """Whoever waits for an arrival looks again (a message, a claim, an edge, a stop)."""
        self.arrivals.notify()

    def in_background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.exchange.in_background(coroutine)

    def seal(self, message: Message) -> bytes:
        return self.exchange.seal(message)

    def state_message(self) -> Message:
        """This peer's model and round for a joiner, and in ``step`` the network's run length
        ([run] rounds), which a joiner adopts (docs/algorithms.md §9.2): a joiner started
        without --rounds once took the default of 100 while its network ran 300, went straight
        to a merge of another run length, and was waited for by everyone. The model is a
        snapshot, since the peer may be training in its worker thread meanwhile, and a vector
        that changes between the envelope's hash and its copy fails the joiner's signature
        check (a joiner of tests/test_launch.py got 401 'bad signature' from its donor)."""
        return Message("state", self.id, self.completed_rounds, self.config.run.rounds,
                       len(self.neighbourhood),
                       [(self.id, self.learner.vector().detach().clone())], "f32")

    # -- state -------------------------------------------------------------------------------

    def _resume(self) -> None:
        state = load_checkpoint(self.config.peer.state_dir)
        if state is None:
            return
        check_fits(state, state_dir=self.config.peer.state_dir, size=self.learner.model.size,
                   model=repr(self.config.model.name))
        self.learner.load_state_dict(state["learner"])
        self.resumed = True
        self.completed_rounds = int(state["round"])
        self.position = (self.completed_rounds, 0)
        self.traffic.update(state.get("traffic", {}))
        # the whole run's mixing counts: a peer restarted after its neighbours finished mixes
        # with nobody in its new life, yet it took part before (scripts/soak.py found such
        # peers exiting as never mixed)
        mixing = state.get("mixing", {})
        self.steps_gossiped = int(mixing.get("gossip_steps", 0))
        self.steps_mixed = int(mixing.get("mixed_steps", 0))
        self.membership.known_urls = list(state.get("known", []))
        # A resumed peer rejoins a running network: its neighbours are up or down, not starting,
        # so its first waits are bounded by the deadline ceiling, not the startup timeout (a
        # peer returning among dead neighbours would otherwise stall startup_timeout_s).
        self.exchange.first_wait = False
        self.log.write(LogEvent.RESUMED, round=self.completed_rounds)

    def _checkpoint(self) -> None:
        save_checkpoint(self.config.peer.state_dir, {
            "round": self.completed_rounds, "learner": self.learner.state_dict(),
            "traffic": dict(self.traffic),
            "mixing": {"gossip_steps": self.steps_gossiped, "mixed_steps": self.steps_mixed},
            **({"known": self.membership.known()} if self.membership.cfg.enabled else {})})

    def request_stop(self) -> None:
        """Stop after the current step (SIGINT/SIGTERM)."""
        self._stop = True
        self.wake()

    # -- receiving (node/peer/receive.py) ------------------------------------------------------

    async def handle(self, body: bytes | None) -> tuple[int, str]:
        """One received body: the transport's handler (node/peer/receive.py)."""
        return await self.receiver.handle(body)

    @property
    def rounds(self) -> int:
        """The run's length ([run] rounds; a joiner adopts its network's)."""
        return self.config.run.rounds

    @property
    def gossip_steps(self) -> int:
        return self.algorithm.gossip_steps

    # -- neighbours (open membership changes them; node/peer/membership.py) -------------------

    def add_neighbour(self, j: int) -> None:
        """Count ``j`` as a neighbour from now on, and waited for like any other. If a gossip
        step is in progress, ``j`` gets this step's model now (it was sent to the others before
        the edge existed), so two peers in the same step exchange at once instead of each
        waiting a deadline for a message sent before the edge (tests/test_membership.py: new
        neighbours that were not waited for let a joiner run ahead of the network alone)."""
        self.neighbourhood.add(j, now=self.runtime.now())
        self.limits.add(j)
        if self._step_body is not None:
            self.in_background(self.exchange.send(j, self._step_body[1]))
        self.wake()

    def drop_neighbour(self, j: int, *, reason: str) -> None:
        """Stop counting ``j`` (it left, unlinked, or stayed suspect): not waited for, not in the
        weights, its buffered messages dropped."""
        if not self.neighbourhood.drop(j):
            return
        self.limits.drop(j)
        self.inbox.drop_sender(j)
        if j not in self.membership.view:
            self.transport.forget(j)
        self.log.write(LogEvent.NEIGHBOUR_DROPPED, neighbour=j, reason=reason,
                       degree=len(self.neighbourhood))
        self.wake()

    def adopt_state(self, message: Message) -> None:
        """A joiner takes its donor's model, round and run length (state transfer): it starts
        where the network is instead of from scratch, and ends when the network does (a donor
        of an older version sends run length 0: the joiner keeps its own)."""
        rounds = self.config.run.rounds
        if 0 < message.step <= MAX_ADOPTED_ROUNDS and message.step != rounds:
            self.config.run.rounds = message.step
            self.log.write(LogEvent.RUN_LENGTH_ADOPTED, donor=message.sender, was=rounds,
                           rounds=message.step)
        self.learner.model.load_vector(message.vector().to(self.learner.params.device))
        self.completed_rounds = min(message.round, self.config.run.rounds)
        self.position = (self.completed_rounds, 0)
        self.exchange.first_wait = False
        self.deadline.start_low()
        self.log.write(LogEvent.STATE_RECEIVED, donor=message.sender,
                       round=self.completed_rounds)

    def _refused_by(self, peer: int, status: int) -> None:
        """A neighbour refused a message with ``status`` (already counted by the exchange)."""
        if status == 403 and self.membership.cfg.enabled and peer in self.neighbourhood and \
                not self.phase.finishing:
            # it does not count this edge (it dropped us, or its agreement expired)
            self.drop_neighbour(peer, reason="refused")

    # -- the round -----------------------------------------------------------------------------

    async def gossip_step(self, round_index: int, step: int) -> int:
        """One exchange and one mixing; returns how many neighbours were heard."""
        nb = self.neighbourhood
        self.position = (round_index, step)
        body = self.exchange.send_all(
            Message("model", self.id, round_index, step, len(nb),
                    [(self.id, self.learner.outgoing())], self.config.gossip.codec),
            nb.members)
        self._step_body = (round_index, step), body
        try:
            got = await self.exchange.collect(
                SlotKey("model", round_index, step), nb.members,
                give_up=lambda: self._stop or nb.lagging(round_index))
        finally:
            self._step_body = None
        got = {j: m for j, m in got.items() if j in nb}
        self.steps_gossiped += bool(nb.members)
        self.steps_mixed += bool(got)
        if got and self.first_mix_s is None and self._started is not None:
            self.first_mix_s = round(self.runtime.now() - self._started, 3)
            self.log.write(LogEvent.FIRST_MIX, after_s=self.first_mix_s, round=round_index)
        # in sender order, whatever the arrival order: the same seed gives the same sums
        received = {j: got[j].vector() for j in sorted(got)}
        mixed = self.learner.mixed(received, len(nb), {j: m.degree for j, m in got.items()},
                                   round_index)
        if within(mixed):
            self.learner.model.load_vector(mixed)
        else:  # cannot happen with bounded inputs and convex rules; never keep it if it does
            self.log.write(LogEvent.MIX_NOT_FINITE, round=round_index, step=step,
                           note="mixed model not finite: kept this peer's own model")
        return len(got)

    def share_histories(self) -> None:
        """SybilWall's probabilistic gossip (docs/algorithms.md §4.5): one stored history to each
        live neighbour, without waiting; a late record is simply used in a later round."""
        for j in sorted(self.neighbourhood.live()):
            picked = self.learner.history_for(j)
            if picked is not None:
                origin, record = picked
                self.exchange.send_all(Message(
                    "history", self.id, record.round, record.distance, len(self.neighbourhood),
                    [(origin, record.vector)], self.config.gossip.codec), {j})

    async def _round(self, t: int) -> None:
        cfg = self.config
        began = self.runtime.now()
        self.phase, self.position = Phase.TRAINING, (t, 0)
        self.inbox.forget_before(t)
        bytes_before = dict(self.traffic)
        self.last_loss = await self.runtime.blocking(self.learner.local_update, t)
        heard_per_step = []
        for q in range(self.algorithm.gossip_steps):
            self.phase = Phase.GOSSIP
            heard_per_step.append(await self.gossip_step(t, q))
            if self._stop:
                return  # the checkpoint of the last whole round stays the one to resume from
        self.share_histories()
        if (t + 1) % cfg.run.eval_every == 0 or t + 1 == cfg.run.rounds:
            await self._evaluate()
        self.completed_rounds = t + 1
        await self.runtime.blocking(self._checkpoint)
        self.log.write(
            LogEvent.ROUND, round=t + 1, loss=self.last_loss, accuracy=self.last_accuracy,
            val_accuracy=self.last_val_accuracy,
            bytes_in=self.traffic["bytes_in"] - bytes_before["bytes_in"],
            bytes_out=self.traffic["bytes_out"] - bytes_before["bytes_out"],
            neighbours_heard_per_step=heard_per_step, suspect=sorted(self.suspect),
            deadline_s=round(self.deadline.current(), 3),
            round_s=round(self.runtime.now() - began, 4), rss_mb=round(rss_megabytes(), 1))

    async def _wait_if_ahead(self, round_index: int) -> None:
        """Open membership: before a round, wait (up to the deadline ceiling) while most of the
        neighbourhood is two or more rounds behind. Peers that arrive at different rounds
        otherwise drift apart for good: the fast ones suspect the slow ones, stop waiting for
        them and run ahead mixing with one neighbour or none (scripts/study_membership.py at a
        short time scale: peers finished their last round while most of their neighbours were
        ten rounds behind). The slow ones meanwhile catch up by vote (``lagging``)."""
        nb, ceiling = self.neighbourhood, self.config.gossip.deadline_ceiling_s

        def ahead() -> bool:
            return nb.ahead(round_index, recent=ceiling, now=self.runtime.now())

        if not self.membership.cfg.enabled or not ahead():
            return
        self.log.write(LogEvent.WAITING_FOR_NEIGHBOURS, round=round_index,
                       behind=nb.behind(round_index))
        deadline = self.runtime.now() + ceiling
        while ahead() and not self._stop:
            left = deadline - self.runtime.now()
            if left <= 1e-6 or not await self.arrivals.next(left):
                break

    # -- the run -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving (POST /gossip, GET /status, /metrics, /healthz)."""
        await self.transport.start(self.handle, peer_routes(self.status, self.metrics))
        self._started = self.runtime.now()
        if not self.runtime.vouched:
            self.log.write(LogEvent.LISTENING, url=self.transport.url)
        self.log.write(LogEvent.DATA, samples=self.learner.num_samples, **self.scored_on)

    async def run(self) -> dict[str, Any]:
        """Train the remaining rounds, merge, write the summary, close; returns the summary."""
        cfg = self.config
        try:
            previous = self._previous_summary()
            if previous is not None:
                return self._already_done(previous)
            if cfg.membership.enabled:
                await self._join_network()
            await self._train()
            merged = None
            if not self._stop and cfg.algorithm.final_merge:
                merged = await self.final_merge()
            if self._stop:
                await self.membership.leave()
            return self._write_summary(merged)
        finally:
            await self.close()

    async def _train(self) -> None:
        """The rounds from the checkpoint's to the last, catching up with a neighbourhood
        that is rounds ahead (it finished rounds without this peer: it was down)."""
        rounds, nb = self.config.run.rounds, self.neighbourhood
        t = self.completed_rounds
        while t < rounds and not self._stop:
            self.membership.on_round(t)
            if nb.lagging(t):
                ahead = min(nb.catch_up_to(t), rounds)
                self.log.write(LogEvent.CATCH_UP, from_round=t, to_round=ahead)
                t = ahead
                if t >= rounds:  # the skipped rounds are over for this peer too
                    self.completed_rounds = t
                    await self.runtime.blocking(self._checkpoint)
                    return
            await self._wait_if_ahead(t)
            await self._round(t)
            t += 1

    async def _join_network(self) -> None:
        """Open membership: start the view's upkeep, and join through the bootstrap peers (and,
        after a restart, through the peers this one knew). JoinError when nobody admits it."""
        self._maintenance = asyncio.create_task(self.membership.maintain())
        urls = list(dict.fromkeys(self.config.membership.bootstrap +
                                  self.membership.known_urls))
        if urls:
            await self.membership.join(urls)

    def _previous_summary(self) -> dict[str, Any] | None:
        """The final summary of an earlier run that finished every configured round and its
        merge (checkpoint at ``rounds``, final.json with state done), else None."""
        if not self.resumed or self.completed_rounds < self.config.run.rounds:
            return None
        path = Path(self.config.peer.state_dir) / FINAL_SUMMARY
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.debug("peer %s: no usable %s (%s): finishing the run", self.id, path,
                         type(exc).__name__)
            return None
        return previous if isinstance(previous, dict) and previous.get("state") == Phase.DONE \
            else None

    def already_finished_note(self) -> str:
        """The sentence a restarted peer that has nothing left to do prints."""
        folder = self.config.peer.state_dir
        return (f"peer {self.id} already finished its {self.completed_rounds} rounds (state in "
                f"{folder}); to start afresh use a new --state-dir or delete {folder}; to train "
                f"longer raise rounds")

    def _already_done(self, previous: dict[str, Any]) -> dict[str, Any]:
        """Nothing to train: say so and keep the earlier final.json as it is."""
        self.already_finished = True
        self.phase = Phase.DONE
        self.last_accuracy = previous.get("accuracy")
        self.last_loss = previous.get("loss")
        self.log.write(LogEvent.ALREADY_FINISHED, rounds=self.completed_rounds,
                       state_dir=self.config.peer.state_dir, note=self.already_finished_note())
        return previous

    @property
    def scored_on(self) -> dict[str, str | None]:
        """What each accuracy is measured on (the log, /status and final.json carry this)."""
        return {"accuracy": f"shared test set ({len(self.y_test)} samples)"
                if len(self.y_test) else None,
                "val_accuracy": f"this peer's validation data ({len(self.y_val)} samples)"
                if self.y_val is not None else None,
                "data": self.data_source}

    async def _accuracies(self) -> tuple[float | None, float | None]:
        """(accuracy on the shared test set, on this peer's validation data), None where the
        peer has no such data."""
        test = await self.runtime.blocking(self.learner.accuracy, self.x_test, self.y_test) \
            if len(self.y_test) else None
        val = await self.runtime.blocking(self.learner.accuracy, self.x_val, self.y_val) \
            if self.y_val is not None else None
        return test, val

    async def _evaluate(self) -> None:
        self.last_accuracy, self.last_val_accuracy = await self._accuracies()

    async def final_merge(self) -> dict[str, Any]:
        """Flood all models through the live component, then take their exact average
        (node/peer/merge.py; docs/algorithms.md §5.4). Merge steps wait up to the deadline
        ceiling, since peers reach the merge at different times."""
        self.phase = Phase.MERGING
        merge_round, ceiling = self.config.run.rounds, self.config.gossip.deadline_ceiling_s
        nb = self.neighbourhood
        own = self.learner.vector().detach().cpu().clone()
        merge = FloodMerge(own_id=self.id, own=own, merge_round=merge_round,
                           proof=self.identity.sign_origin(merge_round, encode(own, "f32")),
                           neighbours=nb.members)
        # every neighbour gets a fresh chance: one that was restarting in the last rounds
        # rejoins the merge if it comes back within the deadline ceiling
        if nb.suspect:
            self.log.write(LogEvent.MERGE_WAITS_FOR, neighbours=sorted(nb.suspect))
            nb.suspect.clear()
        step = merge.catch_up(0, self.inbox)
        while not self._stop:
            self.position = (merge_round, step)
            waits = merge.waiting(nb.members, nb.suspect)
            final = merge.is_final(step, waits)
            for j, message, origins in merge.messages(step, neighbours=nb.members, waits=waits,
                                                      final=final):
                self.exchange.send_tracked(j, message, merge.held_by(j), origins)
            if final:
                break
            live = merge.live(nb.members, nb.suspect)
            got = await self.exchange.collect(
                SlotKey("merge", merge_round, step), live, timeout=ceiling,
                give_up=lambda: self._stop, spare_if_heard=True,
                later_answers=MERGE_STEPS_AHEAD)
            late = self.inbox.take_merge_before(step)
            merge.absorb(list(got.values()) + late, expected=live, answered=set(got),
                         dead=(live - set(got)) & nb.suspect)
            step = merge.catch_up(step + 1, self.inbox)
        await self.exchange.drain(ceiling)
        return await self._finish_merge(merge, step)

    async def _finish_merge(self, merge: FloodMerge, step: int) -> dict[str, Any]:
        component = merge.component
        if len(component) == 1:
            self.log.write(LogEvent.MERGE_ISOLATED, note="no live neighbour: keeping own model")
        self.learner.model.load_vector(merge.average().to(self.learner.params.device))
        if self.learner.model.buffer_mode == "recalibrate":
            await self.runtime.blocking(self.learner.model.recalibrate, self.learner.trainer.x)
        test, val = await self._accuracies()
        accuracy = test if test is not None else val
        self.log.write(LogEvent.MERGED, component=component, flood_steps=step,
                       accuracy=accuracy, val_accuracy=val)
        return {"component": component, "flood_steps": step, "accuracy": accuracy}

    def snapshot(self) -> dict[str, Any]:
        """What /status and final.json both say: the peer, its figures, its traffic and
        refusals, its neighbourhood (the round fields are status()'s)."""
        return {
            "id": self.id, "state": self.phase.value, "rounds": self.config.run.rounds,
            "last_accuracy": self.last_accuracy, "last_val_accuracy": self.last_val_accuracy,
            "scored_on": self.scored_on, "last_loss": self.last_loss, **self.traffic,
            "rejected": self.refusals.as_dict(), "refused_by": dict(self.exchange.refused_by),
            "neighbours": sorted(self.neighbourhood.members),
            "live_neighbours": sorted(self.neighbourhood.live()),
            "suspect": sorted(self.neighbourhood.suspect),
            "deadline_s": self.deadline.current(), "first_mix_s": self.first_mix_s,
            **({"membership": self.membership.status()} if self.membership.cfg.enabled else {}),
        }

    def _write_summary(self, merged: dict[str, Any] | None) -> dict[str, Any]:
        self.phase = Phase.DONE if not self._stop else Phase.STOPPED
        s = self.snapshot()
        summary = {
            "id": self.id, "rounds_completed": self.completed_rounds,
            "accuracy": s.pop("last_accuracy"), "val_accuracy": s.pop("last_val_accuracy"),
            "scored_on": s.pop("scored_on"), "loss": s.pop("last_loss"),
            "merged_accuracy": merged["accuracy"] if merged else None,
            "component": merged["component"] if merged else None,
            "max_wait_s": max(self.wait_times, default=0.0),
            "rejected": s.pop("rejected"), "refused_by": s.pop("refused_by"),
            **self.traffic, "rss_mb": round(rss_megabytes(), 1),
            **(private_megabytes() or dict.fromkeys(("pss_mb", "uss_mb"))), "state": s["state"],
            "first_mix_s": self.first_mix_s, "neighbours": s["neighbours"],
            "gossip_steps": self.steps_gossiped, "mixed_steps": self.steps_mixed,
            "never_mixed": self._never_mixed(merged),
            **({"membership": s["membership"]} if "membership" in s else {}),
        }
        if summary["never_mixed"]:
            summary["isolation"] = self.isolation_note()
            self.log.write(LogEvent.NEVER_MIXED, gossip_steps=self.steps_gossiped,
                           note=summary["isolation"])
        folder = private_folder(self.config.peer.state_dir)
        write_private(folder / FINAL_SUMMARY, json.dumps(summary, indent=1).encode())
        self.log.write(LogEvent.DONE, **{k: v for k, v in summary.items() if k != "component"})
        return summary

    def _never_mixed(self, merged: dict[str, Any] | None) -> bool:
        """This peer gossiped with neighbours expected, yet mixed no neighbour's model in any
        step and merged with nobody: it trained alone while it meant to take part (two peers
        whose models differ in size refuse each other's every message, 422)."""
        return self.phase == Phase.DONE and self.steps_gossiped > 0 and \
            self.steps_mixed == 0 and (merged is None or len(merged["component"]) <= 1)

    def isolation_note(self) -> str:
        """Why no neighbour's model was mixed in, from what this peer counted: its messages
        refused by neighbours, theirs refused here, sends that were not delivered."""
        parts = []
        for key, count in sorted(self.exchange.refused_by.items()):
            peer, status = (int(x) for x in key.split(":"))
            reason = refusal_reason(status)
            theirs = self.transport.peer_lengths.get(peer)
            if status == 422 and theirs is not None and theirs != self.learner.vector_size:
                reason = (f"model size mismatch: {self.learner.vector_size} parameters here, "
                          f"{theirs} there")
            parts.append(f"neighbour {peer} refused its messages {count} times ({status} "
                         f"{reason})")
        for status, count in sorted(self.refusals.counts.items()):
            parts.append(f"it refused {count} messages ({status} {refusal_reason(status)})")
        for j in sorted(self.neighbourhood.members):
            why = self.transport.why_unreachable(j)
            if why:
                parts.append(f"neighbour {j}: {why}")
        return "; ".join(parts) or "no neighbour's model arrived within its deadlines"

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self.exchange.close()
        await self.transport.close()
        self.runtime.close()
        self.log.close()

    # -- endpoints ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What GET /status serves: ``snapshot()`` and the round fields, which cannot
        contradict each other:

        - ``state``: starting, training, gossip (a round in progress), merging, done, stopped.
        - ``rounds_completed``: rounds that are over for this peer (trained, gossiped and
          checkpointed, or skipped by catching up with neighbours that were ahead). A round
          counts once the next one begins, or the merge does.
        - ``current_round``: the 0-based index of the round in progress while ``state`` is
          starting, training or gossip, and then always equal to ``rounds_completed``; None
          once ``state`` is merging, done or stopped (no round is in progress).
        - ``gossip_step``: the gossip step being collected in the current round (0 while
          training); while merging, the flood step.
        """
        if self.phase.in_round:
            current = completed = self.position[0]
        else:
            current, completed = None, self.completed_rounds
        return {**self.snapshot(), "current_round": current, "gossip_step": self.position[1],
                "rounds_completed": completed}
