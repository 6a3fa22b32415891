"""Peer identities on the wire: Ed25519 keys, authority certificates, signed envelopes.

Every message body is an *envelope* around the msgpack payload of gossip.messages::

    magic      4 bytes   b"DCNT"
    version    1 byte    1
    sender     8 bytes   the sender's peer id, unsigned big-endian
    cred_len   2 bytes   length of the credential: 0, 32 (a bare Ed25519 public key) or
                         CERTIFICATE_SIZE (a certificate issued by a network authority)
    credential cred_len bytes
    signature  64 bytes  Ed25519 over  b"decent-gossip-v1" | sender | sha256(credential)
                                        | sha256(payload)
    payload    the rest

The header has a fixed layout, so a receiver finds the sender, resolves its key and checks the
signature *before* the payload is parsed at all (a forged or unknown sender costs one hash of the
body and nothing proportional to its structure). The signature covers a SHA-256 digest of the
payload rather than the payload itself: Ed25519 hashes its message twice when signing (SHA-512,
~0.7 GB/s) while OpenSSL's SHA-256 runs at ~2 GB/s with the CPU's SHA extensions, so a 40 MB
model is hashed once on each side (measured in scripts/bench_wire.py).

A certificate is a fixed 125-byte record, signed by an authority's Ed25519 key::

    b"DCRT" | version 1 | peer id u64 | public key 32 | not_after i64 (unix s) |
    authority id 8 (first bytes of sha256(authority public key)) | signature 64

so that a new peer can be admitted without editing every peer's trust store: a trust store that
holds the authority's public key accepts any peer with a valid certificate (docs/design.md,
"Trust"). A compact record of our own instead of X.509: it is parsed by length and offsets
only (no ASN.1 parser on hostile input), and it names exactly what the protocol needs.

The same signatures protect the final merge: each origin's model travels with that origin's own
signature over ``b"decent-merge-v1" | origin | round | sha256(vector bytes)``, forwarded
unchanged, so a relay can neither invent a member nor alter one (``sign_origin``,
``TrustStore.verify_origin``).

``TrustStore`` decides whose key a sender id has: listed peer keys first, then a certificate from
a listed authority; in *open* mode (studies of open networks, never the default) a key seen for
the first time is pinned to that id (trust on first use), so an id cannot change hands. The
simulator models identities without keys (mode ``"modelled"``): its in-memory network knows who sent
what, which is what a signature proves (gossip.transport.InMemoryHub).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"DCNT"
ENVELOPE_VERSION = 1
_HEAD = struct.Struct(">4sBQH")  # magic, version, sender, credential length
SIGNATURE_SIZE = 64
KEY_SIZE = 32
CERT_MAGIC = b"DCRT"
_CERT_BODY = struct.Struct(">4sBQ32sq8s")  # magic, version, peer, key, not_after, authority id
CERTIFICATE_SIZE = _CERT_BODY.size + SIGNATURE_SIZE
_GOSSIP_DOMAIN = b"decent-gossip-v1"
_MERGE_DOMAIN = b"decent-merge-v1"
_CERT_DOMAIN = b"decent-cert-v1"
_DESCRIPTOR_DOMAIN = b"decent-descriptor-v1"
MAX_PINNED = 65536  # open mode: ids pinned to their first key, bounded
# trust modes: "signed" (keys or an authority required), "open" (trust on first use),
# "modelled" (the simulator's in-memory network vouches for senders; no keys)
MODES = ("signed", "open", "modelled")


class AuthError(ValueError):
    """A message whose sender cannot be trusted; ``status`` is the HTTP status to answer
    (401: no valid signature or credential, 403: a valid key that is not this id's)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# -- keys ----------------------------------------------------------------------------------


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> bytes:
    """8 bytes naming a public key (a certificate names its authority this way)."""
    return hashlib.sha256(public).digest()[:8]


def encode_key(public: bytes) -> str:
    """A public key as text (base64) for trust stores and configs."""
    return base64.b64encode(public).decode()


def decode_key(text: str, *, what: str = "public key") -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes of an Ed25519 key, got {len(raw)}")
    return raw


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only (0600), its folder 0700 if new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_key(path: str | Path) -> Ed25519PrivateKey:
    """A new Ed25519 key saved to ``path`` (PEM, PKCS#8, mode 0600); refuses to overwrite."""
    key = Ed25519PrivateKey.generate()
    _write_private(Path(path), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key


def load_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``; ValueError with the path when it is not one, or
    when other users may read it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from None
    if path.stat().st_mode & 0o077:
        raise ValueError(f"key file {path} is readable by other users; chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_key(path: str | Path) -> tuple[Ed25519PrivateKey, bool]:
    """(the key in ``path``, whether it was just created)."""
    if Path(path).exists():
        return load_key(path), False
    return create_key(path), True


# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """An authority's statement: peer ``peer`` holds ``public_key`` until ``not_after``."""

    peer: int
    public_key: bytes
    not_after: int
    authority: bytes  # key_id of the authority's public key
    signature: bytes

    def body(self) -> bytes:
        return _CERT_BODY.pack(CERT_MAGIC, 1, self.peer, self.public_key, self.not_after,
                               self.authority)

    def to_bytes(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def from_bytes(cls, raw: bytes) -> Certificate:
        if len(raw) != CERTIFICATE_SIZE:
            raise ValueError(f"a certificate has {CERTIFICATE_SIZE} bytes, got {len(raw)}")
        magic, version, peer, key, not_after, authority = _CERT_BODY.unpack_from(raw)
        if magic != CERT_MAGIC or version != 1:
            raise ValueError("not a decent certificate (version 1)")
        return cls(peer, key, not_after, authority, bytes(raw[_CERT_BODY.size:]))


def issue_certificate(authority: Ed25519PrivateKey, *, peer: int, public_key: bytes,
                      valid_s: float) -> Certificate:
    """A certificate for ``peer``'s ``public_key``, valid ``valid_s`` seconds from now."""
    if peer < 0:
        raise ValueError(f"peer must be a peer id >= 0, got {peer}")
    if valid_s <= 0:
        raise ValueError(f"valid_s must be > 0, got {valid_s}")
    unsigned = Certificate(peer, bytes(public_key), int(time.time() + valid_s),
                           key_id(public_bytes(authority.public_key())), b"")
    return Certificate(unsigned.peer, unsigned.public_key, unsigned.not_after,
                       unsigned.authority, authority.sign(_CERT_DOMAIN + unsigned.body()))


# -- envelopes -----------------------------------------------------------------------------


Buffers = bytes | memoryview | Sequence[bytes | memoryview]


def _digest(data: Buffers) -> bytes:
    """SHA-256 of a buffer, or of the concatenation of a list of buffers (hashed in place)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).digest()
    h = hashlib.sha256()
    for part in data:
        h.update(part)
    return h.digest()


def _gossip_statement(sender: int, credential: bytes, payload: Buffers) -> bytes:
    return _GOSSIP_DOMAIN + struct.pack(">Q", sender) + _digest(credential) + _digest(payload)


def _merge_statement(origin: int, round_index: int, vector: bytes | memoryview) -> bytes:
    return _MERGE_DOMAIN + struct.pack(">QQ", origin, round_index) + _digest(vector)


def _descriptor_statement(peer: int, url: str, issued: int) -> bytes:
    return _DESCRIPTOR_DOMAIN + struct.pack(">QQ", peer, issued) + _digest(url.encode())


@dataclass
class Identity:
    """What a peer signs with: its id, its key (None: modelled, no signatures) and the
    credential it presents (its certificate, else its bare public key)."""

    peer: int
    key: Ed25519PrivateKey | None = None
    certificate: Certificate | None = None

    def __post_init__(self):
        if self.certificate is not None and self.key is not None:
            if self.certificate.peer != self.peer:
                raise ValueError(f"the certificate is for peer {self.certificate.peer}, not "
                                 f"this peer {self.peer}")
            if self.certificate.public_key != public_bytes(self.key.public_key()):
                raise ValueError(f"the certificate of peer {self.peer} is for another key "
                                 "than this peer's key file")

    @property
    def credential(self) -> bytes:
        if self.key is None:
            return b""
        if self.certificate is not None:
            return self.certificate.to_bytes()
        return public_bytes(self.key.public_key())

    def seal(self, payload: Buffers) -> bytes:
        """The envelope of ``payload`` (the module docstring gives the layout): one buffer, or
        the list of buffers gossip.messages.encode_parts gives, which are hashed in place and
        copied once, into the body."""
        credential = self.credential
        signature = bytes(SIGNATURE_SIZE) if self.key is None else \
            self.key.sign(_gossip_statement(self.peer, credential, payload))
        parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else payload
        return b"".join([_HEAD.pack(MAGIC, ENVELOPE_VERSION, self.peer, len(credential)),
                         credential, signature, *parts])

    def sign_origin(self, round_index: int, vector: bytes | memoryview) -> tuple[bytes, bytes]:
        """(signature, credential) that let any peer verify this peer's merge model."""
        if self.key is None:
            return b"", b""
        return self.key.sign(_merge_statement(self.peer, round_index, vector)), self.credential

    def sign_descriptor(self, url: str, issued: int) -> tuple[bytes, bytes]:
        """(signature, credential) over this peer's membership descriptor: where it listens
        and when it said so (gossip.membership), so that nobody else can invent or redirect a
        view entry for it."""
        if self.key is None:
            return b"", b""
        return self.key.sign(_descriptor_statement(self.peer, url, issued)), self.credential


def envelope_sender(body: bytes | memoryview) -> int | None:
    """The sender id an envelope claims (unverified), or None if it is not an envelope."""
    if len(body) < _HEAD.size:
        return None
    magic, version, sender, _ = _HEAD.unpack_from(body)
    return sender if magic == MAGIC and version == ENVELOPE_VERSION else None


@dataclass
class Opened:
    """A verified envelope: who sent it and the payload bytes (a view into the body)."""

    sender: int
    payload: memoryview


@dataclass
class TrustStore:
    """Whose key each peer id has: ``peers`` (id -> raw public key), ``authorities`` (key id ->
    public key), and in open mode the ids pinned to their first key. ``mode`` is one of MODES.
    ``clock`` gives unix seconds for certificate expiry (tests move it)."""

    mode: str = "signed"
    peers: dict[int, bytes] = field(default_factory=dict)
    authorities: dict[bytes, Ed25519PublicKey] = field(default_factory=dict)
    pinned: dict[int, bytes] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def empty(self) -> bool:
        return not self.peers and not self.authorities

    def add_authority(self, public: bytes) -> None:
        self.authorities[key_id(public)] = Ed25519PublicKey.from_public_bytes(public)

    def key_for(self, sender: int, credential: bytes | memoryview) -> Ed25519PublicKey:
        """The key that must have signed a message from ``sender`` presenting ``credential``;
        AuthError when there is none this store accepts."""
        credential = bytes(credential)
        listed = self.peers.get(sender)
        if listed is not None:
            presented = credential if len(credential) == KEY_SIZE else \
                _certified_key(credential)
            if presented is not None and presented != listed:
                raise AuthError(403, "the key presented is not the one listed for this id")
            return Ed25519PublicKey.from_public_bytes(listed)
        if len(credential) == CERTIFICATE_SIZE and self.authorities:
            return Ed25519PublicKey.from_public_bytes(self._check_certificate(sender,
                                                                              credential))
        if self.mode == "open" and len(credential) in (KEY_SIZE, CERTIFICATE_SIZE):
            key = credential if len(credential) == KEY_SIZE else _certified_key(credential)
            if key is None:
                raise AuthError(401, "malformed certificate")
            pinned = self.pinned.get(sender)
            if pinned is None:
                if len(self.pinned) >= MAX_PINNED:
                    raise AuthError(401, "too many identities pinned")
                self.pinned[sender] = pinned = key
            if pinned != key:
                raise AuthError(403, "this id is pinned to another key")
            return Ed25519PublicKey.from_public_bytes(pinned)
        raise AuthError(401, "unknown sender: no key listed and no valid certificate")

    def _check_certificate(self, sender: int, raw: bytes) -> bytes:
        try:
            cert = Certificate.from_bytes(raw)
        except ValueError:
            raise AuthError(401, "malformed certificate") from None
        authority = self.authorities.get(cert.authority)
        if authority is None:
            raise AuthError(401, "certificate from an authority this peer does not trust")
        try:
            authority.verify(cert.signature, _CERT_DOMAIN + cert.body())
        except InvalidSignature:
            raise AuthError(401, "certificate signature invalid") from None
        if cert.peer != sender:
            raise AuthError(403, "certificate issued to another peer id")
        if cert.not_after < self.clock():
            raise AuthError(401, "certificate expired")
        return cert.public_key

    def open(self, body: bytes | memoryview) -> Opened:
        """Verify an envelope; AuthError (401/403) or MessageError-like ValueError on a bad one.
        In modelled mode the network vouched for the sender and nothing is checked here."""
        view = memoryview(body)
        if len(view) < _HEAD.size + SIGNATURE_SIZE:
            raise AuthError(400, "not an envelope: too short")
        magic, version, sender, cred_len = _HEAD.unpack_from(view)
        if magic != MAGIC or version != ENVELOPE_VERSION:
            raise AuthError(400, f"not an envelope of version {ENVELOPE_VERSION}")
        if cred_len not in (0, KEY_SIZE, CERTIFICATE_SIZE):
            raise AuthError(400, "credential of an impossible length")
        start = _HEAD.size + cred_len
        if len(view) < start + SIGNATURE_SIZE:
            raise AuthError(400, "not an envelope: truncated")
        credential = view[_HEAD.size:start]
        signature = view[start:start + SIGNATURE_SIZE]
        payload = view[start + SIGNATURE_SIZE:]
        if self.mode == "modelled":
            return Opened(sender, payload)
        if cred_len == 0:
            raise AuthError(401, "unsigned message")
        key = self.key_for(sender, credential)
        try:
            key.verify(bytes(signature), _gossip_statement(sender, bytes(credential), payload))
        except InvalidSignature:
            raise AuthError(401, "bad signature") from None
        return Opened(sender, payload)

    def verify_origin(self, origin: int, round_index: int, vector: bytes | memoryview,
                      signature: bytes, credential: bytes) -> None:
        """AuthError unless ``signature`` is ``origin``'s own over its merge model of
        ``round_index``; a relay cannot invent or alter a member this way."""
        self._verify_own(origin, credential, signature,
                         _merge_statement(origin, round_index, vector), "a merge model")

    def verify_descriptor(self, peer: int, url: str, issued: int, signature: bytes,
                          credential: bytes) -> None:
        """AuthError unless ``signature`` is ``peer``'s own over (url, issued) and this store
        accepts ``peer``'s credential (listed key, authority certificate, or open-mode pin)."""
        self._verify_own(peer, credential, signature, _descriptor_statement(peer, url, issued),
                         "a view entry")

    def _verify_own(self, peer: int, credential: bytes, signature: bytes, statement: bytes,
                    what: str) -> None:
        """``peer``'s own signature over ``statement``, relayed by someone else (merge models,
        view entries); nothing is checked in modelled mode."""
        if self.mode == "modelled":
            return
        if len(signature) != SIGNATURE_SIZE:
            raise AuthError(401, f"{what} without its peer's signature")
        try:
            self.key_for(peer, credential).verify(bytes(signature), statement)
        except InvalidSignature:
            raise AuthError(401, f"bad signature on {what}") from None


def _certified_key(raw: bytes) -> bytes | None:
    try:
        return Certificate.from_bytes(raw).public_key if len(raw) == CERTIFICATE_SIZE else None
    except ValueError:
        return None

