"""The networked peer: one asyncio process that trains, gossips, checkpoints and merges.

The round protocol (the simulator's, with a transport and a wall clock instead of a loop):

1. ``K`` local steps of the shared ``Learner`` in a worker thread, so the event loop keeps
   serving gossip and status while the peer trains;
2. ``Q`` gossip steps: send the model to every neighbour, collect theirs until all live ones
   arrived or the step's deadline passed, then mix with ``Learner.gossip_step`` over the vectors
   that arrived (Metropolis weights; a missing neighbour's weight goes back to the peer's own);
3. an atomic checkpoint and one JSON log line.

Messages for later steps are buffered, stale ones answered 409 and dropped. A neighbour that
misses a deadline becomes *suspect* and is not waited for until it speaks again. Deadlines adapt
(factor x smoothed time for all neighbours to arrive, within a floor and a ceiling), so no wait is
unbounded. A peer that learns its neighbours are rounds ahead (it was down) jumps to their round.

After the last round, the final global merge floods every model through the live component
(each peer forwards what it learned in the previous flood step) until a step brings nothing new,
which proves the peer knows its whole component; every peer then takes the same float64 average
in the same order, so all members of a component end with bit-identical models (spec 5.4 asks for
this exactness; flooding costs at most two transfers of each model per edge).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import torch

from gossip import (
    HttpTransport,
    Message,
    MessageError,
    Transport,
    decode_message,
    encode_message,
)
from mixing import component_average
from node.config import PeerConfig
from node.learning.algorithms import resolve_algorithm
from node.learning.attacks import Attack
from node.learning.data import Dataset, load_dataset, partition
from node.learning.learner import make_learner
from node.learning.training import TrainConfig
from node.peer.checkpoint import load_checkpoint, save_checkpoint

FINAL_SUMMARY = "final.json"


def rss_megabytes() -> float:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class JsonLog:
    """One JSON object per line: to a file (appended) or to a stream."""

    def __init__(self, peer_id: int, path: str = "", stream: TextIO = sys.stdout):
        self.peer_id = peer_id
        self._fh = open(path, "a", buffering=1) if path else stream  # noqa: SIM115
        self._owned = bool(path)

    def write(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), "peer": self.peer_id, "event": event, **fields}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._owned:
            self._fh.close()


class AdaptiveDeadline:
    """How long to wait for a step's messages: ``factor`` x an exponential moving average of
    the time complete steps took, clamped to [floor, ceiling]; the ceiling before any
    observation."""

    def __init__(self, floor: float, ceiling: float, factor: float, smoothing: float = 0.3):
        self.floor, self.ceiling, self.factor, self.smoothing = floor, ceiling, factor, smoothing
        self.average: float | None = None

    def current(self) -> float:
        if self.average is None:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.factor * self.average))

    def observe(self, seconds: float) -> None:
        self.average = seconds if self.average is None else \
            (1 - self.smoothing) * self.average + self.smoothing * seconds


class Peer:
    """Build from a PeerConfig; ``await run()`` trains, merges and returns the final summary."""

    def __init__(self, config: PeerConfig, transport: Transport | None = None,
                 data: Dataset | None = None, log: JsonLog | None = None,
                 inline: bool = False, work_s: float = 0.0):
        self.config = cfg = config
        self.id = cfg.id
        self.algorithm = resolve_algorithm(cfg.algorithm.name, cfg.algorithm.local_steps,
                                           cfg.algorithm.rho, cfg.algorithm.gossip_steps)
        data = data or load_dataset(cfg.data.dataset, cfg.data.num_shards, cfg.seed,
                                    cfg.data.synthetic_alpha, cfg.data.synthetic_beta,
                                    cfg.data.test_fraction)
        shard = partition(data, cfg.data.num_shards, cfg.data.partition, cfg.seed,
                          cfg.data.alpha, cfg.data.classes_per_node)[cfg.data.shard]
        a = cfg.algorithm
        train = TrainConfig(lr=a.lr, lr_decay=a.lr_decay, momentum=a.momentum,
                            dampening=a.dampening, weight_decay=a.weight_decay,
                            batch_size=a.batch_size)
        attack = None if cfg.attack.kind == "none" else Attack(cfg.attack.kind, cfg.attack.scale)
        self.learner = make_learner(cfg.id, data, shard, cfg.model.name, train, self.algorithm,
                                    cfg.seed, cfg.device, cfg.model.hidden, cfg.mixing.name,
                                    cfg.mixing.options(), cfg.mixing.init, attack)
        self.x_test, self.y_test = data.x_test.to(cfg.device), data.y_test.to(cfg.device)
        host, port = cfg.host_port
        self.transport = transport or HttpTransport(host, port, cfg.gossip.max_message_bytes)
        self.transport.set_peers(cfg.neighbours)
        self.neighbours = set(cfg.neighbours)
        self.log = log or JsonLog(cfg.id, cfg.log_file)
        g = cfg.gossip
        self.deadline = AdaptiveDeadline(g.deadline_floor_s, g.deadline_ceiling_s,
                                         g.deadline_factor)
        self.inbox: dict[tuple[str, int, int], dict[int, Message]] = defaultdict(dict)
        self.position = (0, 0)  # the (round, step) being collected; earlier messages are stale
        self.suspect: set[int] = set()
        self.neighbour_round: dict[int, int] = {}
        self.completed_rounds = 0
        self.state = "starting"
        self.last_accuracy: float | None = None
        self.last_loss: float | None = None
        self.traffic = {"bytes_in": 0, "bytes_out": 0, "messages_in": 0, "messages_out": 0}
        self.rejected: dict[int, int] = defaultdict(int)
        self.wait_times: list[float] = []
        self._arrived = asyncio.Event()
        self._stop = False
        self._first_wait = True
        self._sends: set[asyncio.Task] = set()
        # ``inline``: train on the event loop's thread, then let ``work_s`` of (simulated) time
        # pass. The simulator's virtual clock needs it: work in a thread would take no simulated
        # time at all. A real peer trains in a worker thread.
        self.inline, self.work_s = inline, work_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"peer{cfg.id}")
        self._resume()

    # -- state -------------------------------------------------------------------------------

    def _resume(self) -> None:
        state = load_checkpoint(self.config.state_dir)
        if state is None:
            return
        self.learner.load_state_dict(state["learner"])
        self.completed_rounds = int(state["round"])
        self.position = (self.completed_rounds, 0)
        self.traffic.update(state.get("traffic", {}))
        # A resumed peer rejoins a running network: its neighbours are up or down, not starting,
        # so its first waits are bounded by the deadline ceiling, not the startup timeout (a
        # peer returning among dead neighbours would otherwise stall startup_timeout_s).
        self._first_wait = False
        self.log.write("resumed", round=self.completed_rounds)

    def _checkpoint(self) -> None:
        save_checkpoint(self.config.state_dir, {
            "round": self.completed_rounds, "learner": self.learner.state_dict(),
            "traffic": dict(self.traffic), "torch_rng": torch.get_rng_state()})

    def request_stop(self) -> None:
        """Stop after the current step (SIGINT/SIGTERM)."""
        self._stop = True
        self._arrived.set()

    # -- receiving ---------------------------------------------------------------------------

    def _reject(self, status: int, reason: str) -> tuple[int, str]:
        self.rejected[status] += 1
        self.log.write("rejected", status=status, reason=reason)
        return status, reason

    async def handle(self, body: bytes | None) -> tuple[int, str]:
        """Validate one message and buffer it for its (kind, round, step)."""
        if body is None:
            return self._reject(413, "body over the size limit "
                                     f"{self.config.gossip.max_message_bytes}")
        try:
            message = decode_message(body, self.learner.model.size,
                                     self.config.gossip.max_message_bytes)
        except MessageError as exc:
            return self._reject(exc.status, exc.reason)
        sender = message.sender
        if sender not in self.neighbours:
            return self._reject(403, f"sender {sender} is not a neighbour of {self.id}")
        self.traffic["bytes_in"] += len(body)
        self.traffic["messages_in"] += 1
        if message.kind == "history":  # SybilWall's gossip: step carries the record's distance
            origin, vector = message.vectors[0]
            self.learner.accept_history(sender, origin, message.round, message.step, vector)
            return 200, "ok"
        self.neighbour_round[sender] = max(self.neighbour_round.get(sender, 0), message.round)
        if message.kind == "model" and (message.round, message.step) < self.position:
            # a neighbour that is behind stays suspect: waiting for it again would cost every
            # round a deadline until it catches up (found by scripts/study_churn.py)
            return 409, f"stale: ({message.round}, {message.step}) < {self.position}"
        if sender in self.suspect:
            self.suspect.discard(sender)
            self.log.write("neighbour_back", neighbour=sender)
        self.inbox[(message.kind, message.round, message.step)][sender] = message
        self._arrived.set()
        return 200, "ok"

    # -- sending and collecting --------------------------------------------------------------

    def _in_background(self, coroutine) -> None:
        """Run a send without waiting for it; close() cancels what is still pending."""
        task = asyncio.create_task(coroutine)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _send_all(self, message: Message, to: set[int]) -> None:
        body = encode_message(message, self.learner.model.size)
        for peer in sorted(to):
            self._in_background(self._send(peer, body))

    def _send_tracked(self, peer: int, message: Message, holds: set[int],
                      origins: list[int]) -> None:
        """Send one merge message; once it is accepted, ``peer`` holds ``origins``."""
        body = encode_message(message, self.learner.model.size)

        async def send() -> None:
            if await self._send(peer, body) == 200:
                holds.update(origins)

        self._in_background(send())

    async def _send(self, peer: int, body: bytes) -> int | None:
        g = self.config.gossip  # until the first rendezvous, a neighbour may still be starting
        timeout = g.startup_timeout_s if self._first_wait else g.deadline_ceiling_s
        status = await self.transport.send(peer, body, timeout, retry=self._first_wait)
        if status is not None:
            self.traffic["bytes_out"] += len(body)
            self.traffic["messages_out"] += 1
        return status

    def _lagging(self, round_index: int) -> bool:
        """True when a neighbour is two or more rounds ahead: it finished round
        ``round_index + 1`` without this peer's messages, so it timed out on us (we were down).
        One round ahead is normal: that neighbour heard us and moved on first."""
        return max(self.neighbour_round.values(), default=-1) >= round_index + 2

    async def _collect(self, key: tuple[str, int, int], expected: set[int],
                       timeout: float | None = None) -> dict[int, Message]:
        """Wait until every expected, non-suspect neighbour's message for ``key`` arrived, or the
        deadline passed (then the missing ones become suspect)."""
        if timeout is None:
            timeout = self.config.gossip.startup_timeout_s if self._first_wait \
                else self.deadline.current()
        start = self._now()
        while True:
            waiting = (expected - self.suspect) - set(self.inbox.get(key, {}))
            # below a microsecond counts as expired: with a simulated clock, start + timeout - now
            # can round to a tiny positive number that no timer can wait out
            left = start + timeout - self._now()
            if left < 1e-6:
                left = 0.0
            if not waiting or left <= 0 or self._stop or \
                    (key[0] == "model" and self._lagging(key[1])):
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass
        elapsed = self._now() - start
        self.wait_times.append(elapsed)
        if waiting and left <= 0:
            for peer in sorted(waiting):
                self.suspect.add(peer)
                self.log.write("suspect", neighbour=peer, round=key[1], step=key[2],
                               waited_s=round(elapsed, 3))
        elif not waiting and expected - self.suspect:
            self.deadline.observe(elapsed)
            self._first_wait = False
        return self.inbox.pop(key, {})

    async def gossip_step(self, round_index: int, step: int) -> int:
        """One exchange and one mixing; returns how many neighbours were heard."""
        self.position = (round_index, step)
        self._send_all(Message("model", self.id, round_index, step, len(self.neighbours),
                               [(self.id, self.learner.outgoing())], self.config.gossip.codec),
                       self.neighbours)
        got = await self._collect(("model", round_index, step), self.neighbours)
        received = {j: m.vector() for j, m in got.items()}
        self.learner.gossip_step(received, len(self.neighbours),
                                 {j: m.degree for j, m in got.items()}, round_index)
        return len(got)

    def share_histories(self) -> None:
        """SybilWall's probabilistic gossip (spec 4.5): one stored history to each live
        neighbour, without waiting; a late record is simply used in a later round."""
        for j in sorted(self.neighbours - self.suspect):
            picked = self.learner.history_for(j)
            if picked is not None:
                origin, record = picked
                self._send_all(Message("history", self.id, record.round, record.distance,
                                       len(self.neighbours), [(origin, record.vector)],
                                       self.config.gossip.codec), {j})

    # -- the run -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving (POST /gossip, GET /status, /metrics, /healthz)."""
        await self.transport.start(self.handle, {
            "/status": self._status_route, "/metrics": self._metrics_route,
            "/healthz": self._health_route})
        if isinstance(self.transport, HttpTransport):
            self.log.write("listening", url=self.transport.url)

    async def _in_thread(self, fn, *args):
        if self.inline:
            result = fn(*args)
            await asyncio.sleep(self.work_s)
            return result
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def _now() -> float:
        """The event loop's clock: time.monotonic() for a real peer, simulated time in sim."""
        return asyncio.get_running_loop().time()

    async def run(self) -> dict[str, Any]:
        """Train the remaining rounds, merge, write the summary, close; returns the summary."""
        cfg = self.config
        try:
            t = self.completed_rounds
            while t < cfg.rounds and not self._stop:
                if self._lagging(t):
                    ahead = max(self.neighbour_round.values())
                    self.log.write("catch_up", from_round=t, to_round=min(ahead, cfg.rounds))
                    t = min(ahead, cfg.rounds)
                    if t >= cfg.rounds:
                        break
                await self._round(t)
                t += 1
            merged = None
            if not self._stop and cfg.algorithm.final_merge:
                merged = await self.final_merge()
            return self._write_summary(merged)
        finally:
            await self.close()

    async def _round(self, t: int) -> None:
        cfg = self.config
        began = self._now()
        self.state, self.position = "training", (t, 0)
        bytes_before = dict(self.traffic)
        self.last_loss = await self._in_thread(self.learner.local_update, t)
        heard = []
        for q in range(self.algorithm.gossip_steps):
            self.state = "gossip"
            heard.append(await self.gossip_step(t, q))
            if self._stop:
                return  # the checkpoint of the last whole round stays the one to resume from
        self.share_histories()
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
            self.last_accuracy = await self._in_thread(self.learner.accuracy, self.x_test,
                                                       self.y_test)
        self.completed_rounds = t + 1
        await self._in_thread(self._checkpoint)
        self.log.write(
            "round", round=t + 1, loss=self.last_loss, accuracy=self.last_accuracy,
            bytes_in=self.traffic["bytes_in"] - bytes_before["bytes_in"],
            bytes_out=self.traffic["bytes_out"] - bytes_before["bytes_out"],
            heard=heard, suspect=sorted(self.suspect), deadline_s=round(self.deadline.current(), 3),
            round_s=round(self._now() - began, 4), rss_mb=round(rss_megabytes(), 1))

    async def final_merge(self) -> dict[str, Any]:
        """Flood all models through the live component, then take their exact average.

        Each flood step a peer sends every neighbour the models it has not yet seen that
        neighbour hold (not delivered to it, nor received from it), so a message lost to a
        neighbour that was restarting is simply sent again. A step in which every live neighbour
        answered and nothing new arrived proves the peer knows its whole component (the known
        set grows by one hop per step until it stops growing); the peer then sends a last
        ``final`` message and stops. A step with a timeout proves nothing, so flooding goes on;
        merge messages that arrive late are still used. Merge steps wait up to the deadline
        ceiling, since peers reach the merge at different times.
        """
        self.state = "merging"
        merge_round, ceiling = self.config.rounds, self.config.gossip.deadline_ceiling_s
        known = {self.id: self.learner.params.detach().cpu().clone()}
        holds: dict[int, set[int]] = {j: {j} for j in self.neighbours}  # what j is known to have
        new_last_step, complete = True, False
        finished: set[int] = set()
        step = 0
        while not self._stop:
            self.position = (merge_round, step)
            final = step > 0 and not new_last_step and complete
            for j in sorted(self.neighbours - finished):  # suspects too: they may be back
                origins = sorted(set(known) - holds[j])
                message = Message("merge", self.id, merge_round, step, len(self.neighbours),
                                  [(o, known[o]) for o in origins], "f32", final)
                self._send_tracked(j, message, holds[j], origins)
            if final:
                break
            live = self.neighbours - self.suspect - finished
            got = await self._collect(("merge", merge_round, step), live, timeout=ceiling)
            complete = live - self.suspect <= set(got)
            late = [k for k in self.inbox if k[0] == "merge" and k[2] < step]
            messages = list(got.values()) + [m for k in late for m in self.inbox.pop(k).values()]
            new_last_step = False
            for message in sorted(messages, key=lambda m: m.sender):
                if message.final:
                    finished.add(message.sender)
                for origin, vector in message.vectors:
                    holds[message.sender].add(origin)
                    if origin not in known:
                        known[origin] = vector
                        new_last_step = True
            step += 1
        if self._sends:  # let the last messages go out, but never wait past the ceiling
            await asyncio.wait(set(self._sends), timeout=ceiling)
        component = sorted(known)
        if len(component) == 1:
            self.log.write("merge_isolated", note="no live neighbour: keeping own model")
        merged = component_average(known, [component])[self.id]
        self.learner.model.load(merged.to(self.learner.params.device))
        accuracy = await self._in_thread(self.learner.accuracy, self.x_test, self.y_test)
        self.log.write("merged", component=component, flood_steps=step, accuracy=accuracy)
        return {"component": component, "flood_steps": step, "accuracy": accuracy}

    def _write_summary(self, merged: dict[str, Any] | None) -> dict[str, Any]:
        self.state = "done" if not self._stop else "stopped"
        summary = {
            "id": self.id, "rounds_completed": self.completed_rounds,
            "accuracy": self.last_accuracy, "loss": self.last_loss,
            "merged_accuracy": merged["accuracy"] if merged else None,
            "component": merged["component"] if merged else None,
            "max_wait_s": max(self.wait_times, default=0.0),
            "rejected": {str(k): v for k, v in self.rejected.items()},
            **self.traffic, "rss_mb": round(rss_megabytes(), 1), "state": self.state,
        }
        Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.config.state_dir) / FINAL_SUMMARY).write_text(json.dumps(summary, indent=1))
        self.log.write("done", **{k: v for k, v in summary.items() if k != "component"})
        return summary

    async def close(self) -> None:
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        await self.transport.close()
        self._executor.shutdown(wait=True)
        self.log.close()

    # -- endpoints ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state, "round": self.position[0],
            "gossip_step": self.position[1], "rounds_completed": self.completed_rounds,
            "rounds": self.config.rounds,
            "live_neighbours": sorted(self.neighbours - self.suspect),
            "suspect": sorted(self.suspect), "last_accuracy": self.last_accuracy,
            "last_loss": self.last_loss, **self.traffic,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "deadline_s": self.deadline.current(),
        }

    async def _status_route(self) -> tuple[str, str]:
        return "application/json", json.dumps(self.status())

    async def _health_route(self) -> tuple[str, str]:
        return "text/plain", "ok"

    async def _metrics_route(self) -> tuple[str, str]:
        s = self.status()
        accuracy = "NaN" if s["last_accuracy"] is None else s["last_accuracy"]
        lines = [
            "# TYPE decent_round gauge", f"decent_round {s['round']}",
            "# TYPE decent_rounds_completed gauge",
            f"decent_rounds_completed {s['rounds_completed']}",
            "# TYPE decent_live_neighbours gauge",
            f"decent_live_neighbours {len(s['live_neighbours'])}",
            "# TYPE decent_last_accuracy gauge",
            f"decent_last_accuracy {accuracy}",
            "# TYPE decent_bytes_in_total counter", f"decent_bytes_in_total {s['bytes_in']}",
            "# TYPE decent_bytes_out_total counter", f"decent_bytes_out_total {s['bytes_out']}",
            "# TYPE decent_messages_rejected_total counter",
        ]
        lines += [f'decent_messages_rejected_total{{status="{k}"}} {v}'
                  for k, v in sorted(self.rejected.items())]
        return "text/plain; version=0.0.4", "\n".join(lines) + "\n"
