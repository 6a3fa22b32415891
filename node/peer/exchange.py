"""The exchange: sending a peer's messages to its neighbours and collecting theirs within an
adaptive deadline (docs/algorithms.md §0.7).

Every send runs in the background, bounded by its timeout; ``close`` cancels what is pending.
A collection waits until every expected, non-suspect neighbour's message of a slot arrived or
the slot's deadline passed; then the missing ones become suspect. Deadlines adapt: ``factor`` x
the smoothed time complete collections took, within [floor, ceiling]; only the first
rendezvous waits ``startup_timeout_s``, so peers started seconds apart meet without a fixed
sleep."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from gossip import Message, Transport
from gossip.auth import Identity
from gossip.messages import encode_parts
from node.peer.admission import refusal_reason
from node.peer.inbox import Inbox, SlotKey
from node.peer.neighbourhood import Neighbourhood
from node.peer.observe import JsonLog, LogEvent

logger = logging.getLogger(__name__)

# a wait longer than WAIT_REPORT_FIRST_S is reported (whom the peer waits for and why they are
# not heard), and again each time WAIT_REPORT_S more has passed: a peer whose neighbour is not
# running says so instead of staying silent for the whole start-up timeout
WAIT_REPORT_FIRST_S = 5.0
WAIT_REPORT_S = 10.0


class AdaptiveDeadline:
    """How long to wait for a step's messages: ``factor`` x an exponential moving average of
    the time complete steps took, clamped to [floor, ceiling]; the ceiling before any
    observation."""

    def __init__(self, *, floor: float, ceiling: float, factor: float, smoothing: float = 0.3):
        self.floor, self.ceiling, self.factor, self.smoothing = floor, ceiling, factor, smoothing
        self.average: float | None = None

    def current(self) -> float:
        if self.average is None:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.factor * self.average))

    def observe(self, seconds: float) -> None:
        self.average = seconds if self.average is None else \
            (1 - self.smoothing) * self.average + self.smoothing * seconds

    def start_low(self) -> None:
        """A peer entering a running network (a joiner) starts at the floor and adapts from
        there, instead of the ceiling that a peer starting with its neighbours uses (with
        rounds of 0.15 s, a 10 s first wait put each joiner ~60 rounds behind:
        scripts/study_membership.py --work-s 0.05)."""
        if self.average is None:
            self.observe(self.floor / self.factor)


class Arrivals:
    """Wakes whoever waits for the next message, claim, edge or stop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def next(self, left: float) -> bool:
        """Wait up to ``left`` seconds for the next arrival; False on timeout."""
        self._event.clear()
        try:
            await asyncio.wait_for(self._event.wait(), left)
        except asyncio.TimeoutError:
            return False
        return True


class Exchange:
    """One peer's sends and collections (see the module docstring).

    ``on_refused(peer, status)`` is told of every 4xx answer after it was counted (the peer
    drops a neighbour that refuses it with 403 under open membership)."""

    def __init__(self, *, peer_id: int, transport: Transport, identity: Identity,
                 vector_size: int, inbox: Inbox, neighbourhood: Neighbourhood,
                 deadline: AdaptiveDeadline, arrivals: Arrivals, log: JsonLog,
                 clock: Callable[[], float], startup_timeout_s: float,
                 on_refused: Callable[[int, int], None] | None = None):
        self.peer_id, self.transport, self.identity = peer_id, transport, identity
        self.vector_size, self.inbox, self.neighbourhood = vector_size, inbox, neighbourhood
        self.deadline, self.arrivals, self.log, self.clock = deadline, arrivals, log, clock
        self.startup_timeout_s = startup_timeout_s
        self.on_refused = on_refused
        self.first_wait = True  # until the first complete rendezvous
        self.traffic = {"bytes_in": 0, "bytes_out": 0, "messages_in": 0, "messages_out": 0}
        # "neighbour:status" -> how many of this peer's messages were refused that way
        self.refused_by: dict[str, int] = defaultdict(int)
        self.wait_times: list[float] = []
        self.sends: set[asyncio.Task] = set()

    # -- sending ------------------------------------------------------------------------

    def seal(self, message: Message) -> bytes:
        """The signed envelope of ``message``."""
        return self.identity.seal(encode_parts(message, self.vector_size))

    def in_background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine (a send) without waiting for it; ``close`` cancels it if pending."""
        task = asyncio.create_task(coroutine)
        self.sends.add(task)
        task.add_done_callback(self.sends.discard)

    def send_all(self, message: Message, to: set[int]) -> bytes:
        """Send one message to each of ``to`` (in id order); returns its body."""
        body = self.seal(message)
        for peer in sorted(to):
            self.in_background(self.send(peer, body))
        return body

    def send_tracked(self, peer: int, message: Message, holds: set[int],
                     origins: list[int]) -> None:
        """Send one merge message; once it is accepted, ``peer`` holds ``origins``."""
        body = self.seal(message)

        async def send() -> None:
            if await self.send(peer, body) == 200:
                holds.update(origins)

        self.in_background(send())

    async def send(self, peer: int, body: bytes, *, timeout: float | None = None
                   ) -> int | None:
        """Deliver one body; the receiver's status, or None when it was not reached. Until
        the first rendezvous a neighbour may still be starting: connections are retried for
        up to ``startup_timeout_s``."""
        if timeout is None:
            timeout = self.startup_timeout_s if self.first_wait else self.deadline.ceiling
        status = await self.transport.send(peer, body, timeout, retry=self.first_wait)
        if status is None:
            logger.debug("peer %s: message to %s not delivered (unreachable or no answer)",
                         self.peer_id, peer)
            return None
        self.traffic["bytes_out"] += len(body)
        self.traffic["messages_out"] += 1
        if 400 <= status < 500:
            self.count_refusal(peer, status)
            if self.on_refused is not None:
                self.on_refused(peer, status)
        return status

    def count_refusal(self, peer: int, status: int) -> None:
        """Count a 4xx answer; log the first of each (neighbour, status). The reason comes from
        the status alone: the neighbour's answer text is never echoed."""
        key = f"{peer}:{status}"
        self.refused_by[key] += 1
        if self.refused_by[key] > 1:
            return
        theirs = self.transport.peer_lengths.get(peer)
        if status == 422 and theirs is not None and theirs != self.vector_size:
            self.log.write(LogEvent.REFUSED_BY, neighbour=peer, status=status,
                           reason=f"model size mismatch: this peer's model has "
                                  f"{self.vector_size} parameters, the neighbour's {theirs}",
                           own_model_length=self.vector_size, neighbour_model_length=theirs)
        else:
            self.log.write(LogEvent.REFUSED_BY, neighbour=peer, status=status,
                           reason=refusal_reason(status))

    def received(self, size: int) -> None:
        """Count one accepted data message of ``size`` bytes."""
        self.traffic["bytes_in"] += size
        self.traffic["messages_in"] += 1

    # -- collecting ---------------------------------------------------------------------

    async def collect(self, key: SlotKey, expected: set[int], timeout: float | None = None,
                      *, give_up: Callable[[], bool], spare_if_heard: bool = False,
                      later_answers: int = 0) -> dict[int, Message]:
        """Wait until every expected, non-suspect neighbour's message for ``key`` arrived, the
        deadline passed (then the missing ones become suspect) or ``give_up()``.

        ``spare_if_heard`` (the merge): a missing neighbour that sent anything valid within
        the wait is alive -- still training its last rounds -- and is waited for again
        instead of being suspected (tests/test_netns.py found a peer that reached the merge
        first ending alone while its neighbours, alive, merged it into theirs).
        ``later_answers`` (the merge): a neighbour whose message of a step up to that many
        later is already here has moved past this step and will not send it; it is not
        waited for (the merge then moves to that step)."""
        if timeout is None:
            timeout = self.startup_timeout_s if self.first_wait else self.deadline.current()
        nb = self.neighbourhood
        start = self.clock()
        next_report = start + WAIT_REPORT_FIRST_S
        while True:
            waiting = (expected - nb.suspect) - self.inbox.senders(key)
            if later_answers and waiting:
                waiting -= self.inbox.answered_later(key, within=later_answers)
            # below a microsecond counts as expired: with a simulated clock, start + timeout -
            # now can round to a tiny positive number that no timer can wait out
            left = start + timeout - self.clock()
            if left < 1e-6:
                left = 0.0
            if not waiting or left <= 0 or give_up():
                break
            now = self.clock()
            if now >= next_report:
                self._report_waiting(key, waiting, waited=now - start, timeout=timeout)
                next_report = now + WAIT_REPORT_S
            await self.arrivals.next(min(left, max(next_report - now, 1e-6)))
        elapsed = self.clock() - start
        self.wait_times.append(elapsed)
        if waiting and left <= 0:
            self._suspect_missing(key, waiting, elapsed=elapsed, timeout=timeout,
                                  spare_if_heard=spare_if_heard)
        elif not waiting and expected - nb.suspect:
            self.deadline.observe(elapsed)
            self.first_wait = False
        return self.inbox.take(key)

    def _report_waiting(self, key: SlotKey, waiting: set[int], *, waited: float,
                        timeout: float) -> None:
        """Log whom this peer still waits for and why each is not heard: the transport's
        reason for the last failed send to it, else that nothing came from it yet."""
        reasons = {str(j): self.transport.why_unreachable(j) or "sent nothing yet"
                   for j in sorted(waiting)}
        self.log.write(LogEvent.UNREACHABLE, round=key.round, step=key.step,
                       neighbours=sorted(waiting), reasons=reasons, waited_s=round(waited, 1),
                       timeout_s=round(timeout, 1))

    def _suspect_missing(self, key: SlotKey, missing: set[int], *, elapsed: float,
                         timeout: float, spare_if_heard: bool) -> None:
        nb, now = self.neighbourhood, self.clock()
        if spare_if_heard:
            missing = {j for j in missing if not nb.heard_within(j, timeout, now=now)}
        for peer in sorted(missing):
            nb.suspect_of(peer)
            self.log.write(LogEvent.SUSPECT, neighbour=peer, round=key.round, step=key.step,
                           waited_s=round(elapsed, 3))

    # -- ending -------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Let the last messages go out, but never wait past ``timeout``."""
        if self.sends:
            await asyncio.wait(set(self.sends), timeout=timeout)

    async def close(self) -> None:
        """Cancel what is still being sent."""
        for task in list(self.sends):
            task.cancel()
        for result in await asyncio.gather(*self.sends, return_exceptions=True):
            if isinstance(result, Exception):
                logger.debug("peer %s: a send ended with %s", self.peer_id,
                             type(result).__name__)
