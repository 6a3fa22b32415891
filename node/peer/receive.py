"""What a peer does with each body it receives: admission (node/peer/admission.py), then the
handler of the message's kind -- one handler per kind, as py-ipv8 registers them -- which
counts the message, takes the sender's round claim, checks the window and the replay guard
(node/peer/inbox.py) and buffers it, gives it to SybilWall or to a waiting joiner. Every
refusal ends in ``Refusals`` (counted, and logged unless a flood could send it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gossip import Message
from node.peer.admission import Admission, Refusals, Refused
from node.peer.inbox import Inbox, window_refusal
from node.peer.neighbourhood import Neighbourhood
from node.peer.observe import JsonLog, LogEvent

if TYPE_CHECKING:
    from node.learning import Learner
    from node.peer.exchange import Exchange
    from node.peer.membership import Membership

Handler = Callable[[Message, int], tuple[int, str]]


class ReceivingPeer(Protocol):
    """What the receiver reads of its peer: where the round loop is, and how long the run is
    (both change while the peer runs)."""

    position: tuple[int, int]

    @property
    def rounds(self) -> int: ...

    @property
    def gossip_steps(self) -> int: ...

    def wake(self) -> None: ...


class Receiver:
    """The receiving side of one peer (see the module docstring)."""

    def __init__(self, peer: ReceivingPeer, *, admission: Admission, refusals: Refusals,
                 neighbourhood: Neighbourhood, inbox: Inbox, exchange: Exchange,
                 membership: Membership, learner: Learner, log: JsonLog,
                 clock: Callable[[], float]):
        self.peer, self.admission, self.refusals = peer, admission, refusals
        self.neighbourhood, self.inbox, self.exchange = neighbourhood, inbox, exchange
        self.membership, self.learner, self.log, self.clock = membership, learner, log, clock
        self.handlers: dict[str, Handler] = {
            "model": self.on_model, "merge": self.on_merge, "history": self.on_history,
            "state": self.on_state}

    async def handle(self, body: bytes | None) -> tuple[int, str]:
        """Admit one message and hand it to the handler of its kind; the answer's status and
        this peer's reason, which never quotes what was received."""
        try:
            envelope = self.admission.open(body)
            if envelope.is_control:
                control = self.admission.control(envelope)
                self.membership.traffic["bytes_in"] += envelope.size
                return self._answer(*self.membership.handle(envelope.sender, control))
            message = self.admission.data(envelope)
            return self._answer(*self.handlers[message.kind](message, envelope.size))
        except Refused as refused:
            return self.refusals.record(refused.status, refused.reason)

    def _answer(self, status: int, reason: str) -> tuple[int, str]:
        if status >= 400:
            return self.refusals.record(status, reason)
        return status, reason

    def on_state(self, message: Message, size: int) -> tuple[int, str]:
        """A donor's model for this joiner (node/peer/membership.py)."""
        return self.membership.accept_state(message.sender, message)

    def on_model(self, message: Message, size: int) -> tuple[int, str]:
        """A neighbour's model (or merge message) for a slot: buffered until collected."""
        self._accept(message, size)
        sender = message.sender
        if self.inbox.full_for(sender):
            raise Refused(429, "inbox full for this sender")
        if self.neighbourhood.cleared(sender):
            self.log.write(LogEvent.NEIGHBOUR_BACK, neighbour=sender)
        self.inbox.put(message)
        self.peer.wake()
        return 200, "ok"

    def on_merge(self, message: Message, size: int) -> tuple[int, str]:
        """A flood step of the final merge: every model in it carries its origin's signature."""
        self._check_neighbour(message.sender)
        self.admission.verify_origins(message)
        return self.on_model(message, size)

    def on_history(self, message: Message, size: int) -> tuple[int, str]:
        """SybilWall's gossip: ``step`` carries the record's distance."""
        self._accept(message, size)
        origin, vector = message.vectors[0]
        self.learner.accept_history(message.sender, origin, message.round, message.step, vector)
        return 200, "ok"

    def _check_neighbour(self, sender: int) -> None:
        if sender not in self.neighbourhood and not self.membership.confirm(sender):
            raise Refused(403, "not a neighbour any more")

    def _accept(self, message: Message, size: int) -> None:
        """What every data message from a neighbour counts for -- traffic, a sign of life, its
        round claim -- and then the window and the replay guard (409)."""
        sender, nb = message.sender, self.neighbourhood
        self._check_neighbour(sender)
        self.exchange.received(size)
        nb.heard(sender, now=self.clock())
        if message.kind != "history" and nb.claim(sender, message.round):
            self.peer.wake()  # a peer waiting for its neighbourhood to catch up looks again
        refusal = self.window_refusal(message)
        if refusal is not None:
            if message.kind == "model" and (message.round, message.step) == \
                    self.previous_step() and nb.cleared(sender):
                # one step behind: the neighbour is alive and in step with us but for the wait
                # we skipped; waiting for it again resynchronises the two (tests/test_netns.py
                # found suspected neighbours on healthy links staying suspect for a whole run)
                self.log.write(LogEvent.NEIGHBOUR_BACK, neighbour=sender)
            # a neighbour that is behind stays suspect: waiting for it again would cost every
            # round a deadline until it catches up (found by scripts/study_churn.py)
            raise Refused(409, refusal)
        self.inbox.remember(message)

    def window_refusal(self, message: Message) -> str | None:
        """Why ``message`` is not accepted now (replayed, stale, too far ahead), else None."""
        if self.inbox.replayed(message):
            return "replay: this (kind, round, step) was already received from this sender"
        position = self.peer.position
        base = position[0]
        if message.kind == "model":
            # the round this peer is about to catch up to counts as its own: a peer that was
            # down keeps its neighbours' messages of the round it jumps to
            base = max(base, self.neighbourhood.catch_up_to(base))
            if self.membership.joining:  # its round is the donor's, about to be adopted: keep
                # what new neighbours send now (inbox_per_sender bounds it), which a joiner
                # would otherwise refuse and then wait a deadline for (scripts/launch.py --join)
                base = max(base, max(self.neighbourhood.claimed.values(), default=0))
        return window_refusal(message, position=position, base_round=base,
                              gossip_steps=self.peer.gossip_steps, rounds=self.peer.rounds)

    def previous_step(self) -> tuple[int, int]:
        """The (round, step) collected just before the current one."""
        position_round, position_step = self.peer.position
        if position_step > 0:
            return position_round, position_step - 1
        return position_round - 1, self.peer.gossip_steps - 1
