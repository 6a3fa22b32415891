"""Admission: the ordered checks every received body passes before anything proportional to it
is allocated, and the one place where a refusal is counted and logged.

The order (docs/algorithms.md §0.7; the transport already bounded size and connections):

1. a body at all (None: over the size limit, 413);
2. a signed envelope of this protocol (400);
3. the claimed sender is a neighbour, a pending edge, or -- with open membership -- a stranger
   within the shared strangers' rate (403 / 429), before its signature costs anything;
4. its key (trust store or authority certificate) and signature (401 / 403);
5. the sender's own rate limit (429);
6. a data message only from a neighbour (403), then the schema parse with bounded containers
   (400 / 413 / 422), and payload sender = signer (403).

Control messages (membership) leave the pipeline after step 5. What a data message then means
is decided by the peer's handler for its kind (``Peer.handlers``: one handler per message
kind, as py-ipv8 registers them)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gossip import Message, MessageError, decode_message, encode
from gossip.auth import AuthError, TrustStore, envelope_sender
from gossip.membership import Control, decode_control, is_control
from node.peer.limits import RateLimits
from node.peer.observe import JsonLog, LogEvent

if TYPE_CHECKING:
    from node.config import GossipSection

# why a neighbour answered a message with a 4xx status (the peer's own reasons)
REFUSAL_REASONS = {400: "malformed", 401: "not authenticated", 403: "not a neighbour",
                   409: "stale", 413: "too large", 422: "bad vector", 429: "too many"}
# counted, not logged: a flood of them would flood the log (a peer that was down sends many
# stale messages before it catches up; a busy donor answers many 429)
QUIET_STATUSES = (409, 429)


def refusal_reason(status: int) -> str:
    """A short reason code for a 4xx answer, derived from the status alone."""
    return REFUSAL_REASONS.get(status, "refused")


class Refused(Exception):
    """A received message is refused with ``status``; ``reason`` is this peer's own text and
    never quotes what was received."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


@contextmanager
def refusing() -> Iterator[None]:
    """A rejection of the wire's parser (MessageError) or of the trust store (AuthError) as a
    refusal with the same status and reason (both are this project's own words)."""
    try:
        yield
    except (AuthError, MessageError) as exc:
        raise Refused(exc.status, exc.reason) from None


class Refusals:
    """Every message this peer refuses, counted by status; logged unless the status is one of
    ``QUIET_STATUSES``."""

    def __init__(self, log: JsonLog):
        self.log = log
        self.counts: dict[int, int] = defaultdict(int)

    def record(self, status: int, reason: str) -> tuple[int, str]:
        """Count (and maybe log) one refusal; returns the answer (status, reason)."""
        self.counts[status] += 1
        if status not in QUIET_STATUSES:
            self.log.write(LogEvent.REJECTED, status=status, reason=reason)
        return status, reason

    def as_dict(self) -> dict[str, int]:
        return {str(k): v for k, v in self.counts.items()}


@dataclass(frozen=True)
class Envelope:
    """A body whose signature verified: its signer, its payload and its size; ``known`` when
    the signer is a neighbour or a pending edge (else a stranger of open membership)."""

    sender: int
    payload: memoryview
    size: int
    known: bool

    @property
    def is_control(self) -> bool:
        return is_control(self.payload)


class Admission:
    """Steps 1-6 of the module docstring for one peer. ``is_known(j)``: j is a neighbour or a
    pending edge; ``open_to_strangers``: open membership (else only known senders may write).
    The size and value bounds are read from ``gossip`` ([gossip] max_message_bytes,
    max_abs_value) at each check."""

    def __init__(self, *, trust: TrustStore, limits: RateLimits, clock: Callable[[], float],
                 is_known: Callable[[int], bool], open_to_strangers: bool,
                 gossip: GossipSection, vector_size: int, peer_id: int):
        self.trust, self.limits, self.clock = trust, limits, clock
        self.is_known, self.open_to_strangers = is_known, open_to_strangers
        self.gossip, self.vector_size, self.peer_id = gossip, vector_size, peer_id

    def open(self, body: bytes | None) -> Envelope:
        """Steps 1-5: the envelope of a body from a sender that may write now; Refused
        otherwise."""
        if body is None:
            raise Refused(413, f"body over the size limit {self.gossip.max_message_bytes}")
        claimed = envelope_sender(body)
        if claimed is None:
            raise Refused(400, "not a signed envelope of this protocol")
        known = self.is_known(claimed)
        if not known:
            if not self.open_to_strangers:
                raise Refused(403, f"the claimed sender is not a neighbour of {self.peer_id}")
            if not self.limits.stranger_allowed(self.clock()):
                raise Refused(429, "rate limit")
        with refusing():
            opened = self.trust.open(body)
        if not self.limits.allowed(opened.sender, self.clock()):
            raise Refused(429, "rate limit")
        return Envelope(opened.sender, opened.payload, len(body), known)

    def control(self, envelope: Envelope) -> Control:
        """A membership message of ``envelope`` whose payload names its signer."""
        with refusing():
            control = decode_control(envelope.payload)
        if control.sender != envelope.sender:
            raise Refused(403, "the payload names another sender than its signer")
        return control

    def data(self, envelope: Envelope) -> Message:
        """Step 6: the data message of ``envelope``, from a neighbour, parsed within bounds."""
        if not envelope.known:
            raise Refused(403, f"data messages are accepted from neighbours of {self.peer_id} "
                          "only")
        with refusing():
            message = decode_message(envelope.payload, self.vector_size,
                                     self.gossip.max_message_bytes,
                                     max_abs=self.gossip.max_abs_value)
        if message.sender != envelope.sender:
            raise Refused(403, "the payload names another sender than its signer")
        return message

    def verify_origins(self, message: Message) -> None:
        """Every model of a merge message carries its origin's own signature (gossip.auth), so
        a relay cannot invent or alter a member."""
        for origin, vector in message.vectors:
            signature, credential = message.proofs[origin]
            with refusing():
                self.trust.verify_origin(origin, message.round, encode(vector, "f32"), signature,
                                         credential)
