"""The versioned msgpack message schema, with explicit validation (no pickle anywhere).

A message is a msgpack map with exactly these keys::

    v       int    schema version (1)
    kind    str    "model" (a gossip step), "merge" (a flood step of the final global merge),
                   "history" (SybilWall's gossip of one stored update history, docs/algorithms.md
                   §4.5) or "state" (a donor's model for a peer that joins, docs/algorithms.md
                   §9.2)
    sender  int    the sender's peer id
    round   int    training round (merge messages carry the number of rounds)
    step    int    gossip step within the round, flood step of the merge, or for "history"
                   the record's hop distance at the sender (>= 1)
    degree  int    the sender's degree, for Metropolis weights
    codec   str    tensor codec of every vector (gossip.codec.CODECS)
    length  int    values per vector (must equal the receiver's model size)
    vectors list   [[origin id, bytes], ...]: one entry (origin = sender) for "model", one
                   (origin = whose history) for "history"; for "merge" zero or more entries
                   [origin id, bytes, signature, credential]: the origin's own signature over
                   its model (gossip.auth), forwarded unchanged by every relay
    final   bool   merge only: the sender has the whole component and sends nothing more
    waiting list   merge only: ids whose model the sender still waits for (its own live
                   neighbours not yet in the merge, and what its neighbours reported); at most
                   MAX_IDS ints, else empty
    gone    list   merge only: ids a neighbour of theirs found dead (so nobody waits for them)

``vectors`` is the last key of the map. The payload travels inside a signed envelope
(gossip.auth), which is checked first. It is then read in place with every container accounted
for: the one map, the vectors list and its entries are read by their headers and bounded; every
other value must be a scalar (msgpack's limits are set to refuse any container there), so no
body, however crafted, makes the parser allocate more objects than the schema has fields (a
body of millions of empty maps is refused at its first byte). Byte strings are not copied: a
received vector is a view of the body (``encode_parts`` likewise hands the sender's tensors to
the envelope without a copy), which took the decode of a 10M-parameter model from 54 ms to
2 ms (scripts/bench_wire.py).

A bad message raises ``MessageError`` with the HTTP status to answer: 400 malformed, unknown
version or kind, wrong types; 413 over the size limit; 422 well-formed but unusable (length
mismatch, non-finite values, values beyond ``max_abs``: a finite 3.4e38 would overflow the
receiver's average to Inf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgpack
import torch

from gossip.codec import CODECS, CodecError, decode, encode

VERSION = 1
KINDS = ("model", "merge", "history", "state")
_INT_KEYS = ("v", "sender", "round", "step", "degree", "length")
_ID_LISTS = ("waiting", "gone")
_KEYS = frozenset(_INT_KEYS + _ID_LISTS + ("kind", "codec", "vectors", "final"))
MAX_IDS = 4096  # ids in a waiting or gone list (the largest component a merge agrees on)
# integers stay well inside msgpack's uint64, so counters derived from them (a flood step + 1)
# can always be sent back
MAX_INT = 2**62


class MessageError(ValueError):
    """A rejected message; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Message:
    kind: str
    sender: int
    round: int
    step: int
    degree: int
    vectors: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    codec: str = "f32"
    final: bool = False
    # merge only: origin -> (signature, credential) of that origin's model (gossip.auth)
    proofs: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    # merge only: whom the sender still waits for, and whom its side found dead
    waiting: tuple[int, ...] = ()
    gone: tuple[int, ...] = ()

    def vector(self) -> torch.Tensor:
        """The single model of a "model" message."""
        return self.vectors[0][1]


def encode_parts(message: Message, length: int) -> list[bytes | memoryview]:
    """The msgpack payload of ``message`` as a list of buffers whose concatenation is the
    message: the small fields packed by msgpack, each vector as a view of its codec's bytes
    (for f32 the tensor's own memory), so that the only copy of a model on the sender is the one
    that assembles the body (gossip.auth.Identity.seal). ``vectors`` is the last key."""
    for origin, vec in message.vectors:
        if vec.numel() != length:
            raise ValueError(f"vector of origin {origin} has {vec.numel()} values, not {length}")
    packer = msgpack.Packer(use_bin_type=True)
    head = {"v": VERSION, "kind": message.kind, "sender": message.sender,
            "round": message.round, "step": message.step, "degree": message.degree,
            "codec": message.codec, "length": length, "final": message.final}
    if len(message.waiting) > MAX_IDS or len(message.gone) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} ids in waiting and in gone")
    parts: list[bytes | memoryview] = [packer.pack_map_header(len(head) + 3)]
    for key, value in head.items():
        parts += [packer.pack(key), packer.pack(value)]
    for key in _ID_LISTS:
        ids = getattr(message, key)
        parts += [packer.pack(key), packer.pack_array_header(len(ids))]
        parts += [packer.pack(int(i)) for i in ids]
    parts += [packer.pack("vectors"), packer.pack_array_header(len(message.vectors))]
    for origin, vec in message.vectors:
        blobs = [encode(vec, message.codec)]
        if message.kind == "merge":
            blobs += list(message.proofs.get(origin, (b"", b"")))
        parts += [packer.pack_array_header(1 + len(blobs)), packer.pack(origin)]
        for blob in blobs:
            parts += [_bin_header(len(blob)), blob]
    return parts


def encode_message(message: Message, length: int) -> bytes:
    """msgpack bytes of ``message``; every vector must have ``length`` values."""
    return b"".join(encode_parts(message, length))


def _bin_header(size: int) -> bytes:
    """msgpack's bin8/bin16/bin32 header for ``size`` bytes."""
    if size < 2**8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 2**16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


_BIN_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_WINDOW = 128  # bytes handed to msgpack for one small value (strings are at most 64)


class _Reader:
    """A payload read in place: small values (headers, ints, short strings) by msgpack's
    Unpacker over a short window, byte strings as zero-copy slices of the payload."""

    def __init__(self, payload: bytes | memoryview):
        self.view = memoryview(payload).cast("B")
        self.pos = 0

    def _unpacker(self) -> msgpack.Unpacker:
        unpacker = msgpack.Unpacker(max_array_len=0, max_map_len=0, max_str_len=64,
                                    max_ext_len=0, max_bin_len=0, raw=False,
                                    strict_map_key=True, max_buffer_size=_WINDOW)
        unpacker.feed(self.view[self.pos:self.pos + _WINDOW])
        return unpacker

    def _read(self, how: str):
        unpacker = self._unpacker()
        value = getattr(unpacker, how)()
        self.pos += unpacker.tell()
        return value

    def map_header(self) -> int:
        return self._read("read_map_header")

    def array_header(self) -> int:
        return self._read("read_array_header")

    def value(self):
        """One scalar (a container here is refused by msgpack's limits of 0)."""
        return self._read("unpack")

    def blob(self) -> memoryview | None:
        """A byte string as a view of the payload, or None when the next value is not one."""
        width = _BIN_WIDTH.get(self.view[self.pos]) if self.pos < len(self.view) else None
        if width is None:
            return None
        start = self.pos + 1 + width
        size = int.from_bytes(self.view[self.pos + 1:start], "big")
        _require(start + size <= len(self.view), "a byte string runs past the end")
        self.pos = start + size
        return self.view[start:start + size]

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.view)


def _require(condition: bool, reason: str, status: int = 400) -> None:
    if not condition:
        raise MessageError(status, reason)


def within(vector: torch.Tensor, bound: float = math.inf) -> bool:
    """All values finite and within +-bound (two reductions, no mask as large as the vector)."""
    if vector.numel() == 0:
        return True
    smallest, largest = torch.aminmax(vector)
    low, high = float(smallest), float(largest)
    return math.isfinite(low) and math.isfinite(high) and -bound <= low and high <= bound


def _parse(payload: bytes | memoryview, max_vectors: int) -> dict:
    """The payload's map, read in place (see the module docstring): only the schema's
    containers are ever built, and the vectors are views of the payload (no copy)."""
    reader = _Reader(payload)
    expected = f"keys missing or unexpected (expected exactly: {', '.join(sorted(_KEYS))}; " \
        "vectors last)"
    size = reader.map_header()
    _require(size == len(_KEYS), expected)
    raw: dict = {}
    for index in range(size):
        key = reader.value()
        _require(isinstance(key, str) and key in _KEYS and key not in raw, expected)
        if key in _ID_LISTS:
            count = reader.array_header()
            _require(count <= MAX_IDS, f"more than {MAX_IDS} ids in {key}")
            raw[key] = [reader.value() for _ in range(count)]
            continue
        if key != "vectors":
            raw[key] = reader.value()
            continue
        _require(index == size - 1, expected)
        count = reader.array_header()
        _require(count <= max_vectors, "more vectors than the body could hold")
        entries = []
        for _ in range(count):
            width = reader.array_header()
            _require(width in (2, 4), "each vector must be [origin int, bytes] (merge: [origin, "
                     "bytes, signature, credential])")
            entry = [reader.value()] + [reader.blob() for _ in range(width - 1)]
            _require(all(part is not None for part in entry[1:]),
                     "each vector must be [origin int, bytes] (merge: [origin, bytes, signature, "
                     "credential])")
            entries.append(entry)
        raw[key] = entries
    _require(reader.at_end, "trailing bytes after the message")  # also an unfinished object
    return raw


def decode_message(body: bytes | memoryview, expected_length: int, max_bytes: int, *,
                   max_abs: float = float("inf")) -> Message:
    """Parse and validate the payload ``body``; raise MessageError (with its status) on
    anything wrong."""
    _require(len(body) <= max_bytes, f"body of {len(body)} bytes over the limit {max_bytes}", 413)
    try:
        raw = _parse(body, max_vectors=max(2, max_bytes // max(1, expected_length) + 2))
    except MessageError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MessageError(400, f"not msgpack of the schema: {type(exc).__name__}") from exc
    # reasons never quote what was received (it could be large, or crafted for a log reader)
    _require(raw.get("v") == VERSION, "unsupported version; this peer "
             f"speaks {VERSION}")
    _require(raw.get("kind") in KINDS, f"unknown kind; valid: {', '.join(KINDS)}")
    for key in _INT_KEYS:
        _require(type(raw[key]) is int and 0 <= raw[key] <= MAX_INT,
                 f"{key} must be an int in [0, 2**62]")
    _require(raw["codec"] in CODECS, f"unknown codec; valid: {', '.join(CODECS)}")
    _require(type(raw["final"]) is bool, "final must be a bool")
    _require(raw["length"] == expected_length,
             f"model size mismatch: the sender's model has {raw['length']} parameters, this "
             f"peer's {expected_length}", 422)
    vectors = raw["vectors"]
    _require(isinstance(vectors, list), "vectors must be a list")
    merge = raw["kind"] == "merge"
    if not merge:
        _require(len(vectors) == 1, f"a {raw['kind']} message carries exactly one vector")
    if raw["kind"] == "history":
        _require(raw["step"] >= 1, "a history message's step (hop distance) must be >= 1")
    if raw["kind"] in ("model", "state"):
        _require(vectors[0][0] == raw["sender"], f"a {raw['kind']} message carries its "
                 "sender's model")
    for key in _ID_LISTS:
        _require(all(type(i) is int and 0 <= i <= MAX_INT for i in raw[key]),
                 f"{key} must list ints in [0, 2**62]")
        _require(merge or not raw[key], f"only a merge message carries {key}")
    decoded, proofs, origins = [], {}, set()
    for entry in vectors:
        _require(len(entry) == (4 if merge else 2) and type(entry[0]) is int and entry[0] >= 0,
                 "each vector must be [origin int, bytes]" + (
                     " plus [signature bytes, credential bytes] in a merge" if merge else ""))
        _require(entry[0] not in origins, "an origin appears twice")
        origins.add(entry[0])
        try:
            vec = decode(entry[1], expected_length, raw["codec"])
        except CodecError as exc:
            raise MessageError(422, str(exc)) from exc
        _require(within(vec, max_abs), f"values non-finite or beyond +-{max_abs:g} in the "
                 f"vector of origin {entry[0]}", 422)
        decoded.append((entry[0], vec))
        if merge:
            proofs[entry[0]] = (entry[2], entry[3])
    return Message(raw["kind"], raw["sender"], raw["round"], raw["step"], raw["degree"], decoded,
                   raw["codec"], raw["final"], proofs, tuple(raw["waiting"]), tuple(raw["gone"]))
