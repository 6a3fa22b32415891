"""Open membership on the wire: signed descriptors, the control messages, and the Cyclon view.

A **descriptor** says where a peer listens and when it said so: ``(peer, url, issued,
credential, signature)``, signed by the peer it describes (``Identity.sign_descriptor``), so a
view entry can be neither invented nor redirected by whoever relays it; the receiver checks it
against its own trust store (``TrustStore.verify_descriptor``: a listed key, a certificate of
the network authority, or in open mode the id's pinned key). ``issued`` (milliseconds on the peer's
clock) replaces Cyclon's age counter, which a relay could reset: a descriptor's age is
``now - issued``, only its owner can make it younger, and one older than ``forget_after_s`` is
dropped -- that is how a crashed peer is forgotten (docs/algorithms.md §9.2).

**Control messages** are small msgpack *arrays* (data messages of gossip.messages are maps, so
the first byte tells them apart): ``[1, kind, sender, round, [descriptor, ...]]`` with each
descriptor ``[peer, url, issued, credential, signature]``. They are at most
``MAX_CONTROL_BYTES`` and parsed with msgpack's container and string limits set to the schema's,
so no body makes the parser allocate more than a few hundred small objects. Kinds:

========================  =====================================================================
``join``                  a newcomer introduces itself (its descriptor) to a bootstrap peer
``view``                  the answer to a join: a sample of the bootstrap peer's view
``shuffle``/``reply``     Cyclon's exchange (l entries each way, the sender's own one fresh)
``link`` / ``unlink``     ask for / end a gossip edge (the answer's HTTP status is the decision)
``linked``                the asker counts the edge now (so the other end counts it too)
``leave``                 the sender stops (SIGINT/SIGTERM): drop it now, not after a deadline
``state_request``         a joiner asks a new neighbour for its model and round (answer: 200 and
                          a ``state`` data message, or 429 when the donor serves enough joiners)
========================  =====================================================================

``PeerView`` is the bounded partial view (Cyclon: Voulgaris et al., 2005): the oldest entry is
the next shuffle partner, received entries fill free slots and then replace the entries that
were sent, and no peer holds more than ``size`` entries. Pure data structure: no I/O, seeded.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

import msgpack

from gossip.auth import CERTIFICATE_SIZE, KEY_SIZE, SIGNATURE_SIZE
from gossip.messages import MAX_INT, MessageError

CONTROL_VERSION = 1
CONTROL_KINDS = ("join", "view", "shuffle", "reply", "link", "linked", "unlink", "leave",
                 "state_request")
MAX_DESCRIPTORS = 64  # per message; a view is at most this large
MAX_URL = 200
MAX_CONTROL_BYTES = 64 * 1024
_ARRAY_HEADS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


@dataclass(frozen=True)
class Descriptor:
    """Where ``peer`` listens (``url``) as of ``issued`` (its clock, milliseconds), signed by it."""

    peer: int
    url: str
    issued: int
    credential: bytes = b""
    signature: bytes = b""

    def packed(self) -> list:
        return [self.peer, self.url, self.issued, self.credential, self.signature]


@dataclass(frozen=True)
class Control:
    """A decoded control message."""

    kind: str
    sender: int
    round: int
    descriptors: tuple[Descriptor, ...] = ()


def is_control(payload: bytes | memoryview) -> bool:
    """True when the payload is a control message (a msgpack array), not a data message."""
    return len(payload) > 0 and payload[0] in _ARRAY_HEADS


def encode_control(message: Control) -> bytes:
    if len(message.descriptors) > MAX_DESCRIPTORS:
        raise ValueError(f"at most {MAX_DESCRIPTORS} descriptors per message")
    return msgpack.packb([CONTROL_VERSION, message.kind, message.sender, message.round,
                          [d.packed() for d in message.descriptors]], use_bin_type=True)


def _require(condition: bool, reason: str, status: int = 400) -> None:
    if not condition:
        raise MessageError(status, reason)


def _int(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT


def decode_control(payload: bytes | memoryview) -> Control:
    """Parse and check a control payload; MessageError (with the status to answer) on anything
    wrong. Reasons never quote what was received."""
    _require(len(payload) <= MAX_CONTROL_BYTES,
             f"control message over {MAX_CONTROL_BYTES} bytes", 413)
    try:
        raw = msgpack.unpackb(bytes(payload), max_array_len=MAX_DESCRIPTORS, max_map_len=0,
                              max_str_len=MAX_URL, max_bin_len=CERTIFICATE_SIZE,
                              max_ext_len=0, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MessageError(400, f"not a control message: {type(exc).__name__}") from exc
    _require(isinstance(raw, list) and len(raw) == 5, "a control message is [v, kind, sender, "
             "round, descriptors]")
    version, kind, sender, round_index, entries = raw
    _require(version == CONTROL_VERSION, f"unsupported control version; this peer speaks "
             f"{CONTROL_VERSION}")
    _require(kind in CONTROL_KINDS, f"unknown control kind; valid: {', '.join(CONTROL_KINDS)}")
    _require(_int(sender) and _int(round_index), "sender and round must be ints in [0, 2**62]")
    _require(isinstance(entries, list), "descriptors must be a list")
    descriptors, seen = [], set()
    for entry in entries:
        _require(isinstance(entry, list) and len(entry) == 5, "a descriptor is [peer, url, "
                 "issued, credential, signature]")
        peer, url, issued, credential, signature = entry
        _require(_int(peer) and _int(issued), "a descriptor's peer and issued must be ints")
        _require(isinstance(url, str) and url.startswith(("http://", "https://", "mem://")),
                 "a descriptor's url must be http://, https:// (or mem:// in simulation)")
        _require(isinstance(credential, bytes) and len(credential) in
                 (0, KEY_SIZE, CERTIFICATE_SIZE), "a descriptor's credential has an impossible "
                 "length")
        _require(isinstance(signature, bytes) and len(signature) in (0, SIGNATURE_SIZE),
                 "a descriptor's signature has an impossible length")
        _require(peer not in seen, "a peer appears twice among the descriptors")
        seen.add(peer)
        descriptors.append(Descriptor(peer, url, issued, credential, signature))
    return Control(kind, sender, round_index, tuple(descriptors))


class PeerView:
    """A bounded partial view of the network (Cyclon), keyed by peer id; ``owner`` is never in
    it. ``rng`` is seeded by the caller, so the same seed gives the same shuffles."""

    def __init__(self, owner: int, size: int, rng: random.Random):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.owner, self.size, self.rng = owner, size, rng
        self.entries: dict[int, Descriptor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, peer: int) -> bool:
        return peer in self.entries

    def add(self, descriptor: Descriptor, *, replaceable: Collection[int] = frozenset()) -> bool:
        """Keep ``descriptor`` if it is new or fresher than the one held; when the view is
        full, it replaces one of ``replaceable`` (Cyclon: the entries just sent away), else the
        oldest entry if that one is older. True when it was kept."""
        if descriptor.peer == self.owner:
            return False
        held = self.entries.get(descriptor.peer)
        if held is not None:
            if descriptor.issued > held.issued:
                self.entries[descriptor.peer] = descriptor
                return True
            return False
        if len(self.entries) >= self.size:
            candidates = sorted(p for p in replaceable if p in self.entries)
            if candidates:
                del self.entries[self.rng.choice(candidates)]
            else:
                oldest = self.oldest()
                if oldest is None or self.entries[oldest].issued >= descriptor.issued:
                    return False
                del self.entries[oldest]
        self.entries[descriptor.peer] = descriptor
        return True

    def remove(self, peer: int) -> None:
        self.entries.pop(peer, None)

    def oldest(self, exclude: Collection[int] = frozenset()) -> int | None:
        """The entry issued longest ago (Cyclon's shuffle partner); ties by id."""
        candidates = [(d.issued, p) for p, d in self.entries.items() if p not in exclude]
        return min(candidates)[1] if candidates else None

    def sample(self, k: int, exclude: Collection[int] = frozenset()) -> list[Descriptor]:
        """Up to ``k`` entries drawn without replacement (in id order before the draw, so the
        draw depends on the seed only)."""
        pool = [self.entries[p] for p in sorted(self.entries) if p not in exclude]
        return self.rng.sample(pool, min(k, len(pool)))

    def expire(self, now: float, max_age: float) -> list[int]:
        """Forget entries issued more than ``max_age`` before ``now`` (in the units of
        ``issued``); their ids."""
        gone = [p for p, d in self.entries.items() if d.issued < now - max_age]
        for p in gone:
            del self.entries[p]
        return sorted(gone)
