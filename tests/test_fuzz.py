"""Fuzzing a live peer's POST /gossip with hypothesis (issue: trust and survival).

Peer 0 runs as a real process (``python -m node --config peer0.toml``: provisioned key, authority
certificate and trust store) and waits at its first rendezvous for its only neighbour, peer 1,
which has not started yet. Meanwhile hypothesis generates more than 2,500 messages (10,000 in the
long form: DECENT_LONG_TESTS=1, or scripts/fuzz_peer.py), each posted to peer 0's /gossip over
one keep-alive connection:

* payloads sealed with peer 1's real identity (its key file and certificate), so that they pass
  authentication and reach the msgpack parser and the protocol checks: random bytes; truncations,
  bit flips, insertions, deletions and trailing bytes of well-formed payloads; every key with a
  value of a wrong type; keys missing, extra, renamed or twice; map sizes that lie; headers
  announcing 2**31 items (map32, array32, bin32, str32, ext32) at the top, as the vectors, as an
  entry, as a vector or a key; unknown kinds and codecs; vectors whose byte size or ``length``
  does not match the model; NaN, Inf, 3.4e38 and just-beyond-max_abs values in every codec;
  negative ints, far-future rounds and steps, merge messages of another run length; payloads
  naming another sender; merge members with forged, missing or misplaced origin signatures;
  small container bombs; replays of accepted messages;
* envelopes that must not authenticate, around valid and fuzzed payloads alike: unsigned, a bad
  signature, a tampered payload, a bare key, an outsider's key, a rogue authority's certificate,
  an expired certificate, a tampered certificate, another peer's certificate, a stolen
  certificate, non-neighbour sender ids, corrupted headers (magic, version, credential length),
  truncated envelopes, raw garbage;
* at the HTTP level, compressed bodies (415) and bodies over the size limit (413).

An oracle written here from the schema of gossip/messages.py and the window rules of
node/peer/protocol.py (it calls neither) gives the status each message must get: 400 or 422 for
a payload the schema refuses, 403 for one naming another sender than its signer, 401 or 403 for
a merge member without its origin's signature, 409 for a well-formed message outside the window
or a replay, 200 only for a valid one. Valid model and merge messages would end the rendezvous or
feed the final merge, so they are not sent; valid history records (the average rule ignores
them) are, and must get 200, then 409 when replayed.

It proves: every fuzzed message is answered, with a status the oracle allows (so never a 5xx and
never a 2xx for an invalid message), over connections the server never drops without answering
again; the process keeps running and /healthz answers throughout; the peer's own rejection
counters agree with the answers received; and afterwards, once peer 1 starts, both peers finish
all their rounds and the final merge over {0, 1}, and no peer process is left behind. Two small
tests add what the live peer cannot be sent without spoiling that run: the default
per-neighbour rate limit answers 429, and a valid merge message at flood step 2**64 - 1 must not
crash the merge.

The peer's state moves as messages are accepted, so hypothesis is used as the generator only: the
first wrong answer is recorded with the message's description and hex and ends the sending, and
the test fails on it afterwards (no shrinking, no replay against a peer that moved on).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import math
import random
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gossip.auth import Identity, create_key, load_key, public_bytes
from node.config import PeerConfig
from node.peer.keys import provision, read_certificate
from node.schema import dump_toml
from tests.helpers import LONG_TESTS, digits_data, no_peer_left_behind, running, wait_for

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
MAX_BYTES = 65536  # [gossip] max_message_bytes of the fuzzed peer
MAX_ABS = 1e8  # the default [gossip] max_abs_value
PER_EXAMPLE = 25  # messages drawn per hypothesis example
# fuzzed messages that must be sent, and the examples drawn: the suite's default run sends a
# quarter of the long form's (DECENT_LONG_TESTS=1, scripts/fuzz_peer.py); every family of
# mutations and envelopes is drawn in both (hypothesis, derandomized)
if LONG_TESTS:
    TARGET = 10_000
    EXAMPLES = {"payloads": 290, "envelopes": 100, "raw": 60}  # 450 x 25 = 11,250 drawn
else:
    TARGET = 2_500
    EXAMPLES = {"payloads": 80, "envelopes": 25, "raw": 15}  # 120 x 25 = 3,000 drawn

# the wire formats, written out here rather than imported (the oracle must not share the code
# it checks): gossip/auth.py and gossip/messages.py describe them
GOSSIP_DOMAIN, MERGE_DOMAIN = b"decent-gossip-v1", b"decent-merge-v1"
CERT_DOMAIN = b"decent-cert-v1"
HEAD = struct.Struct(">4sBQH")  # magic, version, sender, credential length
CERT_BODY = struct.Struct(">4sBQ32sq8s")
CERT_SIZE = CERT_BODY.size + 64
FIELDS = ("v", "kind", "sender", "round", "step", "degree", "codec", "length", "final", "waiting",
          "gone", "vectors")
ID_FIELDS = ("waiting", "gone")  # merge agreement lists: ints, at most MAX_IDS, merge only
MAX_IDS = 4096
MAX_CONTROL = 64 * 1024  # control messages (msgpack arrays) of open membership
INT_FIELDS = ("v", "sender", "round", "step", "degree", "length")
KINDS = ("model", "merge", "history")
WIDTH = {"f32": 4, "f16": 2, "bf16": 2, "q8": 1}
CODECS = tuple(WIDTH)

# values that vectors are filled with: ordinary ones, the max_abs bound and just beyond it,
# half precision's largest, float32's largest, the smallest subnormal, infinities and NaN
ORDINARY = [0.0, 0.5, -1.25]
SPECIAL = [1e-45, 65504.0, 65520.0, 1e8, -1e8, 1.0000001e8, -1.0000001e8, 3.4e38, -3.4e38,
           math.inf, -math.inf, math.nan]
ROUNDS_POOL = [0, 0, 1, 1, 2, 3, ROUNDS, ROUNDS + 1, 2**31, 2**32, 2**63, 2**64 - 1]
STEPS_POOL = [0, 0, 1, 2, 4, 5, 2**32, 2**64 - 1]
INTS = [-1, -2, -(2**31), -(2**63), 0, 1, 2, ROUNDS - 1, ROUNDS, ROUNDS + 1, 2**31, 2**32,
        2**63 - 1, 2**63, 2**64 - 1]
# the first bytes of objects that need more: array32, str5, bin8, uint64, str8, map16, fixext4
PARTIAL = [b"\xdd", b"\xa5ab", b"\xc4\x10abc", b"\xcf\x00", b"\xd9\x05", b"\xde\x00", b"\xd6\x05"]
HUGE = [2**31, 2**32 - 1, 2**16, 110, 1000]  # announced item counts (110: over max_vectors)


@dataclass(frozen=True)
class Raw:
    """Bytes spliced into a payload as they are (headers that lie, invalid type bytes)."""

    data: bytes


class Pairs(list):
    """A msgpack map as the list of its (key, value) pairs in order, duplicates kept."""


EXT = object()  # what the oracle's unpacker makes of any msgpack ext value

WRONG = [None, True, False, 0, 1, -1, -(2**63), 2**64 - 1, 1.0, 1.5, math.nan, math.inf, "",
         "model", "merge", "history", "f32", "x" * 65, "\u00e9", b"", b"\x01" * 8, [], [1],
         [[1, b""]], {}, {"v": 1}, Raw(b"\xc1"), Raw(b"\xd4\x05\x00"), Raw(b"\xc7\x00\x05"),
         Raw(b"\xd7\xff" + bytes(8)), Raw(b"\xa3\xff\xfe\xfd")]


# -- msgpack by hand -----------------------------------------------------------------------------


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 2**16 else b"\xdd" + n.to_bytes(4, "big")


def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + n.to_bytes(2, "big") if n < 2**16 else b"\xdf" + n.to_bytes(4, "big")


def pack(value) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, list):
        return array_header(len(value)) + b"".join(pack(v) for v in value)
    return msgpack.packb(value, use_bin_type=True)


def pack_map(pairs: list, declared: int | None = None) -> bytes:
    count = len(pairs) if declared is None else declared
    return map_header(count) + b"".join(pack(k) + pack(v) for k, v in pairs)


# -- envelopes and certificates ------------------------------------------------------------------


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def seal(key: Ed25519PrivateKey | None, sender: int, credential: bytes, payload: bytes, *,
         magic: bytes = b"DCNT", version: int = 1, cred_len: int | None = None) -> bytes:
    """An envelope as gossip/auth.py lays it out, every header field settable."""
    statement = GOSSIP_DOMAIN + struct.pack(">Q", sender) + sha(credential) + sha(payload)
    signature = key.sign(statement) if key is not None else bytes(64)
    return HEAD.pack(magic, version, sender, len(credential) if cred_len is None else cred_len) \
        + credential + signature + payload


def certificate(authority: Ed25519PrivateKey, peer: int, public: bytes, not_after: int) -> bytes:
    body = CERT_BODY.pack(b"DCRT", 1, peer, public, not_after,
                          sha(public_bytes(authority.public_key()))[:8])
    return body + authority.sign(CERT_DOMAIN + body)


def merge_signature(key: Ed25519PrivateKey, origin: int, round_index: int,
                    values: np.ndarray) -> bytes:
    return key.sign(MERGE_DOMAIN + struct.pack(">QQ", origin, round_index)
                    + sha(values.astype("<f4").tobytes()))


# -- the oracle ----------------------------------------------------------------------------------


@dataclass
class World:
    """What the generators and the oracle know: the model length, the keys and certificates,
    and which (kind, round, step) of peer 1 the fuzzed peer has accepted."""

    length: int
    key1: Ed25519PrivateKey
    cert1: bytes
    key0: Ed25519PrivateKey
    cert0: bytes
    outsider: Ed25519PrivateKey
    rogue_cert1: bytes  # peer 1 with the outsider's key, from an authority nobody trusts
    expired_cert1: bytes  # peer 1's real key, from the real authority, expired
    seen: set = field(default_factory=set)

    def __repr__(self) -> str:  # hypothesis prints the strategies' arguments
        return f"World(length={self.length})"

    @property
    def max_vectors(self) -> int:
        return max(2, MAX_BYTES // max(1, self.length) + 2)

    def origin_ok(self, origin, round_index: int, values: np.ndarray, signature, credential):
        known = {1: (self.key1, self.cert1), 0: (self.key0, self.cert0)}.get(origin)
        if known is None or credential != known[1]:
            return False
        statement = MERGE_DOMAIN + struct.pack(">QQ", origin, round_index) \
            + sha(values.astype("<f4").tobytes())
        try:
            known[0].public_key().verify(signature, statement)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


def decoded(data: bytes, codec: str, length: int) -> np.ndarray | None:
    """The float32 values a vector's bytes carry, or None when their size is wrong."""
    if len(data) != WIDTH[codec] * length + (8 if codec == "q8" else 0):
        return None
    with np.errstate(all="ignore"):
        if codec == "f32":
            return np.frombuffer(data, "<f4").astype(np.float32)
        if codec == "f16":
            return np.frombuffer(data, "<f2").astype(np.float32)
        if codec == "bf16":
            return (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
        low, scale = struct.unpack_from("<ff", data)
        q = np.frombuffer(data, np.uint8, offset=8).astype(np.float32)
        return q * np.float32(scale) + np.float32(low)


def bounded(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all()) and (
        values.size == 0 or (float(values.min()) >= -MAX_ABS and float(values.max()) <= MAX_ABS))


# what each verdict of the oracle allows as an answer
ALLOWED = {"malformed": {400, 422}, "other sender": {403}, "bad origin": {401, 403},
           "outside window": {409}, "valid": {200},
           # a msgpack array is a membership control message; this peer's graph is static, so
           # a well-formed one is refused (403), except a neighbour's leave (200)
           "control": {400, 403}, "control leave": {200, 400, 403}, "control too large": {413}}


def judge(payload: bytes, w: World) -> tuple[str, tuple | None]:
    """(verdict, (kind, round, step)) of a payload sealed by peer 1, for a peer at (0, 0)."""
    try:
        top = msgpack.unpackb(payload, raw=False, strict_map_key=False, object_pairs_hook=Pairs,
                              ext_hook=lambda code, data: EXT)
    except Exception:
        if payload[:1] and (0x90 <= payload[0] <= 0x9F or payload[0] in (0xDC, 0xDD)):
            return ("control too large" if len(payload) > MAX_CONTROL else "control"), None
        return "malformed", None
    if isinstance(top, list) and not isinstance(top, Pairs):  # an array, not a map
        if len(payload) > MAX_CONTROL:
            return "control too large", None
        leave = len(top) == 5 and top[1] == "leave"
        return ("control leave" if leave else "control"), None
    if not isinstance(top, Pairs) or len(top) != len(FIELDS):
        return "malformed", None
    keys = [k for k, _ in top]
    if any(type(k) is not str for k in keys) or sorted(keys) != sorted(FIELDS) \
            or keys[-1] != "vectors":  # the schema puts the vectors last
        return "malformed", None
    m = dict(top)
    if type(m["v"]) is not int or m["v"] != 1 or type(m["kind"]) is not str \
            or m["kind"] not in KINDS:
        return "malformed", None
    if any(type(m[k]) is not int or not 0 <= m[k] <= 2**62 for k in INT_FIELDS):
        return "malformed", None
    if type(m["codec"]) is not str or m["codec"] not in WIDTH or type(m["final"]) is not bool:
        return "malformed", None
    kind, vectors, merge = m["kind"], m["vectors"], m["kind"] == "merge"
    for key in ID_FIELDS:
        ids = m[key]
        if type(ids) is not list or len(ids) > MAX_IDS or \
                any(type(i) is not int or not 0 <= i <= 2**62 for i in ids) or (ids and not merge):
            return "malformed", None
    if m["length"] != w.length or type(vectors) is not list or len(vectors) > w.max_vectors:
        return "malformed", None
    if (not merge and len(vectors) != 1) or (kind == "history" and m["step"] < 1):
        return "malformed", None
    if kind == "model" and (type(vectors[0]) is not list or not vectors[0]
                            or vectors[0][0] != m["sender"]):
        return "malformed", None  # a model message carries its sender's own model
    members, origins = [], set()
    for entry in vectors:
        if type(entry) is not list or len(entry) != (4 if merge else 2) \
                or type(entry[0]) is not int or entry[0] < 0 \
                or any(type(part) is not bytes for part in entry[1:]) or entry[0] in origins:
            return "malformed", None
        origins.add(entry[0])
        values = decoded(entry[1], m["codec"], w.length)
        if values is None or not bounded(values):
            return "malformed", None
        members.append((entry, values))
    if m["sender"] != 1:
        return "other sender", None
    if merge and not all(w.origin_ok(e[0], m["round"], v, e[2], e[3]) for e, v in members):
        return "bad origin", None
    key = (kind, m["round"], m["step"])
    if kind == "history":  # one neighbour gossips records of several origins of a round
        key += (vectors[0][0],)
    if key in w.seen:
        return "outside window", key
    inside = {"model": m["round"] <= 1 and m["step"] == 0,  # dsgd: one gossip step per round
              "history": m["round"] <= 1,
              "merge": m["round"] == ROUNDS}[kind]  # any flood step (peers align on entry)
    return ("valid" if inside else "outside window"), key


# -- generators ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One message to post: what it is, its body and headers, and either the statuses it may
    get or the payload the oracle judges (sealed correctly by peer 1)."""

    label: str
    body: bytes
    headers: dict = field(default_factory=dict)
    allowed: frozenset | None = None
    payload: bytes | None = None

    def __repr__(self) -> str:  # hypothesis prints drawn cases; keep it short
        return f"Case({self.label!r}, {len(self.body)} bytes)"


def vector_bytes(codec: str, n: int, fill: float, special: float | None, at: int,
                 rng: random.Random) -> bytes:
    if codec == "q8":  # header (low, scale), then one byte per value
        scale = 0.01 if special is None else special
        return struct.pack("<ff", fill, scale) + rng.randbytes(n)
    with np.errstate(all="ignore"):
        values = np.full(n, fill, dtype=np.float32)
        if special is not None and n:
            values[at % n] = special
        if codec == "f32":
            return values.astype("<f4").tobytes()
        if codec == "f16":
            return values.astype("<f2").tobytes()
        return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


@st.composite
def vectors(draw, length: int, codec: str, rng: random.Random) -> tuple[bytes, str]:
    build = codec if codec in WIDTH else "f32"
    size = draw(st.sampled_from(["exact"] * 6 + ["short", "long", "empty", "double", "other"]))
    if size == "other":  # the right length in another codec's byte size
        build = draw(st.sampled_from([c for c in CODECS if c != build]))
    n = {"exact": length, "other": length, "short": length - 1, "long": length + 1, "empty": 0,
         "double": 2 * length}[size]
    fill = draw(st.sampled_from(ORDINARY * 4 + SPECIAL))
    special = draw(st.sampled_from([None] * 8 + ORDINARY + SPECIAL))
    at = draw(st.sampled_from([0, -1, length // 2]))
    data = vector_bytes(build, max(n, 0), fill, special, at, rng)
    return data, f"{build}[{size}] fill={fill:g} special={special} at={at}"


@st.composite
def well_formed(draw, w: World, rng: random.Random) -> tuple[list, str]:
    """The pairs of a message that is valid or nearly so (before any mutation)."""
    kind = draw(st.sampled_from(["model", "model", "history", "merge"]))
    codec = draw(st.sampled_from(CODECS))
    if kind == "merge":
        round_index = draw(st.sampled_from([ROUNDS, ROUNDS, 0, ROUNDS - 1, ROUNDS + 1,
                                            2**64 - 1]))
    else:
        round_index = draw(st.sampled_from(ROUNDS_POOL))
    step = draw(st.sampled_from(STEPS_POOL))
    data, vdesc = draw(vectors(w.length, codec, rng))
    if kind == "merge":
        entries, proofs = [], []
        for origin in [1, 0][:draw(st.sampled_from([0, 1, 1, 2]))]:
            proof = draw(st.sampled_from(["signed", "signed", "garbage", "empty", "bare key",
                                          "wrong round", "other cert", "no credential"]))
            proofs.append(proof)
            values = decoded(data, codec, w.length)
            if values is None:
                values = np.zeros(w.length, np.float32)
            signature = merge_signature(w.key1, origin, round_index, values)
            credential = w.cert1
            if proof == "garbage":
                signature = rng.randbytes(64)
            elif proof == "empty":
                signature = credential = b""
            elif proof == "bare key":
                credential = public_bytes(w.key1.public_key())
            elif proof == "wrong round":
                signature = merge_signature(w.key1, origin, (round_index + 1) % 2**64, values)
            elif proof == "other cert":
                credential = w.cert0
            elif proof == "no credential":
                credential = b""
            entries.append([origin, data, signature, credential])
        vdesc += f" members={proofs}"
    else:
        entries = [[1 if kind == "model" else draw(st.sampled_from([1, 0, 7])), data]]
    pairs = [("v", 1), ("kind", kind), ("sender", 1), ("round", round_index), ("step", step),
             ("degree", draw(st.sampled_from([1, 1, 0, 2**64 - 1]))), ("codec", codec),
             ("length", w.length), ("final", draw(st.booleans())),
             ("waiting", draw(st.sampled_from([[], [], [], [0], [2, 3], [-1], [2**63], ["x"],
                                               None, list(range(MAX_IDS + 1))]))),
             ("gone", draw(st.sampled_from([[], [], [], [7], [1.5], {}]))),
             ("vectors", entries)]
    if draw(st.booleans()):
        rng.shuffle(pairs)
    return pairs, f"{kind} r={round_index} s={step} {codec} {vdesc}"


MUTATIONS = ["wrong type", "int value", "kind", "codec", "drop", "extra", "duplicate", "rename",
             "declared size", "huge header", "vectors", "sender", "length"]


@st.composite
def mutate(draw, pairs: list, w: World, rng: random.Random) -> tuple[list, int | None, str]:
    """One schema mutation of ``pairs`` (a copy); returns (pairs, declared map size, what)."""
    pairs = [list(p) for p in pairs]
    index = {k: i for i, (k, _) in enumerate(pairs)}
    what = draw(st.sampled_from(MUTATIONS))
    declared = None

    def put(key, value):
        if key in index:
            pairs[index[key]][1] = value
        else:
            pairs.append([key, value])

    if what == "wrong type":
        key, value = draw(st.sampled_from(FIELDS)), draw(st.sampled_from(WRONG))
        put(key, value)
        what += f" {key}={value!r:.40}"
    elif what == "int value":
        key, value = draw(st.sampled_from(INT_FIELDS)), draw(st.sampled_from(INTS))
        put(key, value)
        what += f" {key}={value}"
    elif what == "length":
        value = draw(st.sampled_from([w.length - 1, w.length + 1, 0, 2 * w.length, 2**32]))
        put("length", value)
        what += f"={value}"
    elif what == "sender":
        value = draw(st.sampled_from([0, 2, 7, 2**32, 2**64 - 1]))
        put("sender", value)
        what += f"={value}"
    elif what == "kind":
        value = draw(st.sampled_from(["Model", "MODEL", "gossip", "", "model\x00", " model",
                                      "histories", b"model", None, 1]))
        put("kind", value)
        what += f"={value!r}"
    elif what == "codec":
        value = draw(st.sampled_from(["F32", "f64", "float32", "int8", "q4", "", "f32 ",
                                      "bf16\x00", b"f32", None, 4]))
        put("codec", value)
        what += f"={value!r}"
    elif what == "drop":
        gone = rng.sample(range(len(pairs)), draw(st.integers(1, 3)))
        what += f" {[pairs[i][0] for i in gone]}"
        pairs = [p for i, p in enumerate(pairs) if i not in gone]
    elif what == "extra":
        key = draw(st.sampled_from(["extra", "V", "", "vectors ", "Kind", 1, -1, b"v", 1.5,
                                    None, True, Raw(b"\xc1")]))
        pairs.append([key, draw(st.sampled_from([0, "x", b"", None]))])
        if draw(st.booleans()):  # keep the count at ten
            pairs.pop(rng.randrange(len(pairs) - 1))
        what += f" {key!r}"
    elif what == "duplicate":
        copy = list(pairs[rng.randrange(len(pairs))])
        if draw(st.booleans()):
            copy[1] = draw(st.sampled_from([0, 1, "model", "f32", False]))
        pairs.insert(rng.randrange(len(pairs) + 1), copy)
        if draw(st.booleans()):
            pairs.pop(rng.randrange(len(pairs)))
        what += f" {copy[0]!r}"
    elif what == "rename":
        named = [j for j, (k, _) in enumerate(pairs) if isinstance(k, str) and k] or [None]
        i = rng.choice(named)
        if i is None:
            return pairs, declared, what + " (nothing to rename)"
        old = pairs[i][0]
        pairs[i][0] = draw(st.sampled_from([old.upper(), old + " ", old.encode(), old[:-1],
                                            "\u00e9" + old]))
        what += f" {old!r}->{pairs[i][0]!r}"
    elif what == "declared size":
        declared = draw(st.sampled_from([0, 1, 9, 11, 15, 16, 2**16 - 1, 2**31, 2**32 - 1]))
        what += f"={declared}"
    elif what == "huge header":
        count = draw(st.sampled_from(HUGE))
        where = draw(st.sampled_from(["vectors", "entry", "vector", "kind", "codec", "key",
                                      "ext", "map"]))
        n4 = count.to_bytes(4, "big")
        if where == "vectors":
            put("vectors", Raw(b"\xdd" + n4))
        elif where == "entry":
            put("vectors", Raw(array_header(1) + b"\xdd" + n4 + pack(1)))
        elif where == "vector":
            put("vectors", [[1, Raw(b"\xc6" + n4 + bytes(16))]])
        elif where in ("kind", "codec"):
            put(where, Raw(b"\xdb" + n4 + b"model"))
        elif where == "key":
            pairs.insert(rng.randrange(len(pairs) + 1), [Raw(b"\xdb" + n4 + b"v"), 1])
        elif where == "ext":
            put(draw(st.sampled_from(FIELDS)), Raw(b"\xc9" + n4 + b"\x05"))
        else:
            put(draw(st.sampled_from(FIELDS)), Raw(b"\xdf" + n4))
        what += f" {where} announcing {count}"
    else:  # the vectors' structure
        current = pairs[index["vectors"]][1] if "vectors" in index else None
        entry = list(current[0]) if isinstance(current, list) and current and isinstance(
            current[0], list) and len(current[0]) >= 2 and isinstance(current[0][1], bytes) \
            else [1, b""]
        shape = draw(st.sampled_from(["none", "two", "same origin twice", "width 1", "width 3",
                                      "width 5", "origin", "vector as str", "vector as list",
                                      "as map", "scalar", "bomb of arrays", "bomb of maps",
                                      "too many members"]))
        value = {
            "none": [], "two": [entry, [2] + entry[1:]], "same origin twice": [entry, entry],
            "width 1": [entry[:1]], "width 3": [entry[:2] + [b""]],
            "width 5": [entry[:2] + [b"", b"", b""]],
            "vector as str": [[entry[0], bytes(entry[1][:40]).decode("latin-1")
                               if isinstance(entry[1], bytes) else "x"]],
            "vector as list": [[entry[0], [0.0] * 3]], "as map": {"1": b""},
            "scalar": draw(st.sampled_from([None, 1, b"", "vectors"])),
            "bomb of arrays": [[]] * 2000, "bomb of maps": [{}] * 2000,
            "too many members": [[i, b"", b"", b""] for i in range(w.max_vectors + 1)],
        }.get(shape)
        if shape == "origin":
            value = [[draw(st.sampled_from([-1, "1", None, 1.0, b"\x01", 2**64 - 1, True]))]
                     + entry[1:]]
        put("vectors", value)
        what += f" {shape}"
    return pairs, declared, what


@st.composite
def byte_mutation(draw, payload: bytes, rng: random.Random) -> tuple[bytes, str]:
    how = draw(st.sampled_from(["none"] * 6 + ["truncate", "bit flips", "trailing", "insert",
                                               "delete", "prefix"]))
    if how == "none" or not payload:
        return payload, ""
    if how == "truncate":
        cut = draw(st.integers(0, len(payload) - 1))
        return payload[:cut], f" | truncated at {cut}"
    if how == "bit flips":
        data = bytearray(payload)
        flips = draw(st.sampled_from([1, 1, 2, 8]))
        for _ in range(flips):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), f" | {flips} bit flips"
    source = draw(st.sampled_from(["uniform", "hypothesis", "partial object"]))
    if source == "uniform":
        extra = rng.randbytes(draw(st.integers(1, 8)))
    elif source == "hypothesis":
        extra = draw(st.binary(min_size=1, max_size=8))
    else:  # the start of an object that the bytes do not complete
        extra = draw(st.sampled_from(PARTIAL))
    at = rng.randrange(len(payload) + 1)
    if how == "trailing":
        return payload + extra, f" | trailing {extra.hex()}"
    if how == "prefix":
        return extra + payload, f" | prefix {extra.hex()}"
    if how == "insert":
        return payload[:at] + extra + payload[at:], f" | inserted {extra.hex()} at {at}"
    gone = draw(st.integers(1, 16))
    return payload[:at] + payload[at + gone:], f" | deleted {gone} at {at}"


@st.composite
def payloads(draw, w: World) -> tuple[bytes, str]:
    """A payload for peer 1 to seal: mostly mutated well-formed messages, some raw."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    family = draw(st.sampled_from(["schema"] * 8 + ["random", "huge top", "not a map"]))
    if family == "random":
        data = rng.randbytes(draw(st.sampled_from([0, 1, 2, 8, 64, 500, 3000])))
        return data, f"random {len(data)} bytes"
    if family == "huge top":
        header = draw(st.sampled_from([b"\xdf", b"\xdd", b"\xc6", b"\xdb", b"\xc9"]))
        count = draw(st.sampled_from(HUGE))
        data = header + count.to_bytes(4, "big") + draw(st.binary(max_size=16))
        return data, f"top-level header {header.hex()} announcing {count}"
    if family == "not a map":
        value = draw(st.sampled_from([None, 1, "model", b"x", [1, 2], [], {}, [[]] * 2000,
                                      [{}] * 2000, {"v": [{}] * 2000}]))
        return pack(value), f"top-level {type(value).__name__}"
    pairs, what = draw(well_formed(w, rng))
    declared = None
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        pairs, declared_now, change = draw(mutate(pairs, w, rng))
        declared = declared_now if declared_now is not None else declared
        what += f" | {change}"
    data, change = draw(byte_mutation(pack_map(pairs, declared), rng))
    return data, what + change


def fuzzed_payload_case(w: World, payload: bytes, what: str) -> Case:
    return Case(f"sealed by peer 1: {what}", seal(w.key1, 1, w.cert1, payload), payload=payload)


ENVELOPES = ["unsigned", "zero credential, random signature", "bad signature", "tampered payload",
             "bare key", "outsider's bare key", "rogue authority", "expired certificate",
             "tampered certificate", "another peer's certificate", "stolen certificate",
             "non-neighbour sender", "magic", "version", "credential length", "truncated",
             "compressed", "identity encoding", "oversized"]


@st.composite
def envelope_cases(draw, w: World) -> Case:
    """A payload (valid, or fuzzed) in an envelope, or over HTTP, that must be refused."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    source = draw(st.sampled_from(["valid model 0/0", "valid history", "fuzzed"]))
    if source == "valid model 0/0":
        payload, what = w_valid_model(w, 0), source
    elif source == "valid history":
        payload, what = w_valid_history(w, draw(st.integers(2, 2**16))), source
    else:
        payload, what = draw(payloads(w))
    how = draw(st.sampled_from(ENVELOPES))
    key1, cert1, pub1 = w.key1, w.cert1, public_bytes(w.key1.public_key())
    sealed = seal(key1, 1, cert1, payload)
    head = HEAD.size + CERT_SIZE
    allowed = {401}
    headers = {}
    if how == "unsigned":
        body = seal(None, 1, b"", payload)
    elif how == "zero credential, random signature":
        body = HEAD.pack(b"DCNT", 1, 1, 0) + rng.randbytes(64) + payload
    elif how == "bad signature":
        data = bytearray(sealed)
        data[head + rng.randrange(64)] ^= 1 << rng.randrange(8)
        body = bytes(data)
    elif how == "tampered payload":
        if payload and draw(st.booleans()):
            data = bytearray(sealed)
            data[head + 64 + rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
            body = bytes(data)
        else:
            body = sealed + draw(st.binary(min_size=1, max_size=4))
    elif how == "bare key":
        body = seal(key1, 1, pub1, payload)  # the store lists no bare keys
    elif how == "outsider's bare key":
        body = seal(w.outsider, 1, public_bytes(w.outsider.public_key()), payload)
    elif how == "rogue authority":
        body = seal(w.outsider, 1, w.rogue_cert1, payload)
    elif how == "expired certificate":
        body = seal(key1, 1, w.expired_cert1, payload)
    elif how == "tampered certificate":
        cert = bytearray(cert1)
        cert[rng.randrange(len(cert))] ^= 1 << rng.randrange(8)
        body = seal(key1, 1, bytes(cert), payload)
    elif how == "another peer's certificate":  # peer 0's own key and certificate, as peer 1
        body, allowed = seal(w.key0, 1, w.cert0, payload), {403}
    elif how == "stolen certificate":  # peer 1's certificate, the outsider's signature
        body = seal(w.outsider, 1, cert1, payload)
    elif how == "non-neighbour sender":
        sender = draw(st.sampled_from([0, 2, 3, 2**32, 2**63, 2**64 - 1]))
        body, allowed = seal(key1, sender, cert1, payload), {403}
        how += f" {sender}"
    elif how == "magic":
        magic = draw(st.binary(min_size=4, max_size=4).filter(lambda m: m != b"DCNT"))
        body, allowed = seal(key1, 1, cert1, payload, magic=magic), {400}
    elif how == "version":
        version = draw(st.integers(0, 255).filter(lambda v: v != 1))
        body, allowed = seal(key1, 1, cert1, payload, version=version), {400}
        how += f" {version}"
    elif how == "credential length":
        cred_len = draw(st.sampled_from([0, 1, 31, 32, 33, 124, 126, 200, 65535]))
        body, allowed = seal(key1, 1, cert1, payload, cred_len=cred_len), {400, 401}
        how += f" {cred_len}"
    elif how == "truncated":
        body, allowed = sealed[:draw(st.integers(0, head + 63))], {400}
        how += f" at {len(body)}"
    elif how == "compressed":
        body, allowed = sealed, {415}
        headers = {"Content-Encoding": draw(st.sampled_from(["gzip", "deflate", "br", "GZIP",
                                                             "x-custom", "gzip, identity"]))}
    elif how == "identity encoding":  # allowed: the payload decides
        return Case(f"identity encoding: {what}", sealed, {"Content-Encoding": "identity"},
                    payload=payload)
    else:  # oversized: over max_message_bytes once sealed
        body = seal(key1, 1, cert1, payload + rng.randbytes(MAX_BYTES + 1 - len(payload)))
        allowed = {413}
    return Case(f"{how}: {what}", body, headers, frozenset(allowed))


def w_valid_model(w: World, round_index: int, value: float = 0.0) -> bytes:
    vec = np.full(w.length, value, np.float32).tobytes()
    return pack_map([("v", 1), ("kind", "model"), ("sender", 1), ("round", round_index),
                     ("step", 0), ("degree", 1), ("codec", "f32"), ("length", w.length),
                     ("final", False), ("waiting", []), ("gone", []),
                     ("vectors", [[1, vec]])])


def w_valid_history(w: World, step: int, round_index: int = 0) -> bytes:
    vec = np.full(w.length, 0.25, np.float32).tobytes()
    return pack_map([("v", 1), ("kind", "history"), ("sender", 1), ("round", round_index),
                     ("step", step), ("degree", 1), ("codec", "f32"), ("length", w.length),
                     ("final", False), ("waiting", []), ("gone", []),
                     ("vectors", [[7, vec]])])


@st.composite
def raw_cases(draw, w: World, probes: list[bytes]) -> Case:
    """Bodies that are not envelopes at all, replays, and fresh valid history records."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    what = draw(st.sampled_from(["random", "random", "empty", "envelope-like", "prefix garbage",
                                 "replay", "replay", "history", "history", "short binary"]))
    if what == "random":
        body = rng.randbytes(draw(st.sampled_from([1, 14, 15, 78, 79, 203, 204, 1000, 5000])))
        allowed = None
    elif what == "empty":
        body, allowed = b"", {400}
    elif what == "short binary":
        body, allowed = draw(st.binary(max_size=64)), None
    elif what == "envelope-like":  # the right magic and version, then garbage
        body, allowed = b"DCNT\x01" + rng.randbytes(draw(st.sampled_from([0, 9, 10, 300]))), None
    elif what == "prefix garbage":
        body = draw(st.binary(min_size=1, max_size=8)) + seal(w.key1, 1, w.cert1,
                                                              w_valid_model(w, 0))
        allowed = None
    elif what == "replay":  # a probe accepted before the fuzzing began, bit for bit
        body, allowed = draw(st.sampled_from(probes)), {409}
    else:  # a valid history record: 200 the first time, 409 after (the oracle tracks which)
        payload = w_valid_history(w, draw(st.sampled_from([1, 2, 3, 2**20, 2**64 - 1])),
                                  draw(st.sampled_from([0, 1, 2])))
        return Case("history record", seal(w.key1, 1, w.cert1, payload), payload=payload)
    if allowed is None:  # anything but an authenticated message: some 4xx, never 409
        allowed = {400, 401, 403, 413}
    return Case(what, body, {}, frozenset(allowed))


# -- the client ----------------------------------------------------------------------------------


class Client:
    """Blocking HTTP/1.1 with keep-alive; reconnects once when the server closed the connection,
    and fails when it does not answer on a fresh one either."""

    def __init__(self, port: int):
        self.port, self.conn, self.reconnects = port, None, 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes, http.client.HTTPMessage]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException) as exc:
                self.close()
                if attempt:
                    raise AssertionError(f"{method} {path}: the peer closed a fresh connection "
                                         f"without answering ({exc!r})") from exc
                self.reconnects += 1
                continue
            if response.will_close:
                self.close()
            return response.status, data, response.headers
        raise AssertionError("unreachable")


# -- the test ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    phases=(Phase.generate,), report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck))


@dataclass
class Run:
    """The fuzzing's bookkeeping: answers by status, what was sent, the first wrong answer."""

    client: Client
    proc: subprocess.Popen
    w: World
    statuses: Counter = field(default_factory=Counter)
    sent: Counter = field(default_factory=Counter)
    labels: list[str] = field(default_factory=list)  # of the messages sent
    skipped_valid: int = 0
    failure: str | None = None

    def post(self, body: bytes, headers: dict | None = None) -> tuple[int, str]:
        status, data, _ = self.client.request("POST", "/gossip", body,
                                              {"Content-Type": "application/octet-stream",
                                               **(headers or {})})
        self.statuses[status] += 1
        return status, data.decode(errors="replace")

    def deliver(self, family: str, cases: list[Case]) -> None:
        if self.failure is not None:
            return
        try:
            for case in cases:
                verdict, key = "fixed", None
                allowed = case.allowed
                if case.payload is not None:
                    verdict, key = judge(case.payload, self.w)
                    if verdict == "valid" and key[0] != "history":
                        self.skipped_valid += 1  # would end the rendezvous or feed the merge
                        continue
                    allowed = ALLOWED[verdict]
                if len(case.body) > MAX_BYTES:
                    allowed = {413}
                status, reason = self.post(case.body, case.headers)
                self.sent[family] += 1
                self.labels.append(case.label)
                if status not in allowed:
                    self.failure = (
                        f"{family}: {case.label}\n  answered {status} ({reason[:200]!r}); "
                        f"expected {sorted(allowed)} (oracle: {verdict})\n  body "
                        f"({len(case.body)} bytes): {case.body[:600].hex()}"
                        + ("" if case.payload is None else
                           f"\n  payload ({len(case.payload)} bytes): "
                           f"{case.payload[:600].hex()}"))
                    return
                if status == 200:
                    self.w.seen.add(key)
            if self.proc.poll() is not None:
                self.failure = f"{family}: the peer exited with {self.proc.returncode}"
                return
            status, data, _ = self.client.request("GET", "/healthz")
            if (status, data) != (200, b"ok"):
                self.failure = f"{family}: /healthz answered {status} {data[:100]!r}"
        except Exception as exc:  # a hang (timeout), a dead peer, a refused connection
            self.failure = f"{family}: {type(exc).__name__}: {exc}"


def peer_configs(tmp_path: Path, ports: list[int]) -> list[PeerConfig]:
    configs = [PeerConfig.of(id=i, listen=f"127.0.0.1:{ports[i]}", rounds=ROUNDS, seed=0,
                             hidden=8, state_dir=str(tmp_path / f"peer{i}"),
                             log_file=str(tmp_path / f"peer{i}" / "log.jsonl"),
                             startup_timeout_s=300, max_messages_per_s=1e6,
                             max_message_bytes=MAX_BYTES) for i in range(2)]
    for i, c in enumerate(configs):
        c.neighbours = {1 - i: f"http://127.0.0.1:{ports[1 - i]}"}
    return provision(configs, tmp_path / "trust")


@pytest.mark.slow
def test_fuzzed_gossip_is_refused_and_the_peer_still_finishes_with_its_neighbour(tmp_path):
    began = time.monotonic()
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    configs = peer_configs(tmp_path, ports)
    paths = []
    for i, config in enumerate(configs):
        paths.append(tmp_path / f"peer{i}.toml")
        paths[i].write_text(dump_toml(config))
    key1, key0 = load_key(configs[1].trust.key_file), load_key(configs[0].trust.key_file)
    cert1 = read_certificate(configs[1].trust.certificate)
    cert0 = read_certificate(configs[0].trust.certificate)
    authority = load_key(tmp_path / "trust" / "authority.key")
    outsider = create_key(tmp_path / "outsider.key")
    rogue = create_key(tmp_path / "rogue.key")
    logs = [open(tmp_path / f"peer{i}.stderr", "wb") for i in range(2)]  # noqa: SIM115

    def command(i: int) -> list[str]:
        return [sys.executable, "-m", "node", "--config", str(paths[i])]

    try:
        with no_peer_left_behind(str(tmp_path)), \
                running(command(0), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[0]) as proc:
            log = Path(configs[0].peer.log_file)
            wait_for(lambda: proc.poll() is not None or (
                log.exists() and "listening" in log.read_text()), 120, "peer 0 listens")
            assert proc.poll() is None, (tmp_path / "peer0.stderr").read_text()[-3000:]
            client = Client(ports[0])
            # the model's length, as the peer announces it on a 422
            probe = pack_map([("v", 1), ("kind", "model"), ("sender", 1), ("round", 0),
                              ("step", 0), ("degree", 1), ("codec", "f32"), ("length", 1),
                              ("final", False), ("waiting", []), ("gone", []),
                              ("vectors", [[1, bytes(4)]])])
            status, _, headers = client.request("POST", "/gossip",
                                                Identity(1, key1, cert1).seal(probe))
            assert status == 422 and headers.get("X-Model-Length", "").isdigit()
            w = World(int(headers["X-Model-Length"]), key1, cert1.to_bytes(), key0,
                      cert0.to_bytes(), outsider,
                      certificate(rogue, 1, public_bytes(outsider.public_key()), 2**40),
                      certificate(authority, 1, public_bytes(key1.public_key()),
                                  int(time.time()) - 60))
            run = Run(client, proc, w, statuses=Counter({422: 1}))
            assert seal(key1, 1, w.cert1, probe) == Identity(1, key1, cert1).seal(probe)
            # valid messages first: a history record and the model of round 1 (round 0's would
            # end the rendezvous), accepted; then their replays are refused
            history, model = (seal(key1, 1, w.cert1, w_valid_history(w, 1)),
                              seal(key1, 1, w.cert1, w_valid_model(w, 1)))
            assert [run.post(b)[0] for b in (history, model, history, model)] == \
                [200, 200, 409, 409]
            w.seen.update({("history", 0, 1, 7), ("model", 1, 0)})
            fuzz_began = time.monotonic()

            @fuzz_settings(EXAMPLES["payloads"])
            @given(st.lists(payloads(w), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
            def fuzz_payloads(drawn):
                run.deliver("payloads", [fuzzed_payload_case(w, p, what) for p, what in drawn])

            @fuzz_settings(EXAMPLES["envelopes"])
            @given(st.lists(envelope_cases(w), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
            def fuzz_envelopes(cases):
                run.deliver("envelopes", cases)

            @fuzz_settings(EXAMPLES["raw"])
            @given(st.lists(raw_cases(w, [history, model]), min_size=PER_EXAMPLE,
                            max_size=PER_EXAMPLE))
            def fuzz_raw(cases):
                run.deliver("raw", cases)

            fuzz_payloads()
            fuzz_envelopes()
            fuzz_raw()
            fuzzing_s = time.monotonic() - fuzz_began
            total = sum(run.sent.values())
            if run.failure is not None:
                pytest.fail(f"{run.failure}\n(message {total} sent; answers so far "
                            f"{dict(sorted(run.statuses.items()))})", pytrace=False)
            assert total >= TARGET, f"only {total} fuzzed messages sent ({dict(run.sent)})"
            # every schema mutation and every kind of bad envelope was sent (the short run too)
            never = [m for m in MUTATIONS if not any(f"| {m}" in x for x in run.labels)]
            never += [e for e in ENVELOPES if not any(x.startswith(e) for x in run.labels)]
            assert not never, f"never sent: {never}"
            assert proc.poll() is None and client.request("GET", "/healthz")[:2] == (200, b"ok")
            status, data, _ = client.request("GET", "/status")
            state = json.loads(data)
            # still at its first rendezvous: nothing fuzzed moved it
            assert (state["state"], state["current_round"], state["gossip_step"]) == \
                ("gossip", 0, 0), state
            # every answer the peer gave from its handler is in its own counters (415 comes
            # from the transport, before the handler)
            counted = {int(k): v for k, v in state["rejected"].items() if v}
            answered = {k: v for k, v in run.statuses.items() if k not in (200, 415)}
            assert counted == answered, (counted, answered)
            client.close()
            with running(command(1), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=logs[1]) as proc1:
                codes = [proc.wait(timeout=180), proc1.wait(timeout=60)]
            assert codes == [0, 0], [(tmp_path / f"peer{i}.stderr").read_text()[-3000:]
                                     for i in range(2)]
        finals = [json.loads((Path(c.peer.state_dir) / "final.json").read_text())
                  for c in configs]
        for final in finals:
            assert final["rounds_completed"] == ROUNDS and final["state"] == "done", final
            assert final["component"] == [0, 1], final  # the merge covered both peers
    finally:
        for fh in logs:
            fh.close()
    print(f"fuzzed {total} messages ({dict(run.sent)}) in {fuzzing_s:.1f} s, "
          f"{run.skipped_valid} valid model/merge messages drawn and not sent, "
          f"{len(w.seen) - 2} history records accepted, {client.reconnects} reconnects; "
          f"answers {dict(sorted(run.statuses.items()))}; whole test "
          f"{time.monotonic() - began:.1f} s")


def test_the_default_rate_limit_answers_429(tmp_path):
    """With the default max_messages_per_s (200, bursts of 400), a neighbour that floods is
    answered 429 once its bucket is empty, before its messages are parsed."""
    from node.peer import JsonLog, Peer

    configs = [PeerConfig.of(id=i, rounds=ROUNDS, seed=0, hidden=8,
                             state_dir=str(tmp_path / f"peer{i}")) for i in range(2)]
    for i, c in enumerate(configs):
        c.neighbours = {1 - i: f"http://127.0.0.1:{9 + i}"}
    configs = provision(configs, tmp_path / "trust")
    assert configs[0].gossip.max_messages_per_s == 200
    peer = Peer(configs[0], data=digits_data(), log=JsonLog(0, stream=io.StringIO()))
    neighbour = Identity(1, load_key(configs[1].trust.key_file),
                         read_certificate(configs[1].trust.certificate))
    size = peer.learner.vector_size
    far = pack_map([("v", 1), ("kind", "model"), ("sender", 1), ("round", 7), ("step", 0),
                    ("degree", 1), ("codec", "f32"), ("length", size),
                    ("final", False), ("waiting", []), ("gone", []),
                    ("vectors", [[1, bytes(4 * size)]])])
    body = neighbour.seal(far)

    async def flood() -> tuple[list[int], float]:
        began = asyncio.get_running_loop().time()
        statuses = [(await peer.handle(body))[0] for _ in range(1000)]
        elapsed = asyncio.get_running_loop().time() - began
        await peer.close()
        return statuses, elapsed

    statuses, elapsed = asyncio.run(flood())
    assert set(statuses) == {409, 429}
    passed = statuses.count(409)
    assert 400 <= passed <= 400 + 200 * elapsed + 1, (passed, elapsed)
    assert statuses[:400] == [409] * 400 and statuses.count(429) == 1000 - passed


def test_one_merge_message_at_the_last_flood_step_does_not_crash_the_merge(tmp_path):
    """A case the fuzzing cannot send to its live peer without spoiling the run that follows: a
    merge message of the run's length is accepted at any flood step, and a merging peer moves
    to the highest step it finds buffered, at most MERGE_STEPS_AHEAD (2**20) at a time. A
    message at step 2**64 - 1 (the largest msgpack uint) is malformed (steps are <= 2**62); one
    at 2**62, the largest a message can carry, is kept, and must neither carry the peer to a
    step its own messages cannot carry (unclamped, its next step would not fit a message) nor
    keep the two peers from finishing."""
    from gossip import InMemoryHub, Message, encode_message
    from node.peer import JsonLog, Peer
    from tests.helpers import peer_config

    hub = InMemoryHub()
    peers = []
    for i in range(2):
        config = peer_config(i, 2, tmp_path, 2, hidden=8, deadline_floor_s=0.2,
                             deadline_ceiling_s=1.0)
        config.neighbours = {1 - i: "http://in-memory"}
        peers.append(Peer(config, transport=hub.transport(i), data=digits_data(),
                          log=JsonLog(i, stream=io.StringIO())))

    async def scenario() -> list:
        for p in peers:
            await p.start()
        size = peers[0].learner.vector_size
        answers = []
        for step in (2**64 - 1, 2**62):
            message = Message("merge", 1, 2, step, 1, [], "f32", False)
            answers.append(await peers[0].handle(
                peers[1].identity.seal(encode_message(message, size))))
        done = await asyncio.wait_for(
            asyncio.gather(*(p.run() for p in peers), return_exceptions=True), 120)
        return [answers, *done]

    answer, *results = asyncio.run(scenario())
    assert [a[0] for a in answer] == [400, 200], answer
    crashed = [f"peer {i}: {r!r}" for i, r in enumerate(results) if isinstance(r, Exception)]
    assert not crashed, f"the merge crashed after {answer}: {crashed}"
    for summary in results:
        assert summary["rounds_completed"] == 2 and summary["state"] == "done", summary
