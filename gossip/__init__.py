"""The wire: message schema, tensor codecs, signed envelopes and identities, and transports
(HTTP and in-memory)."""

from gossip.auth import AuthError, Certificate, Identity, TrustStore
from gossip.codec import CODECS, CodecError, decode, encode, encoded_size
from gossip.messages import KINDS, VERSION, Message, MessageError, decode_message, encode_message
from gossip.transport import (
    HttpTransport,
    InMemoryHub,
    InMemoryTransport,
    ListenError,
    TLSConfigError,
    Transport,
    client_ssl_context,
    raise_fd_limit,
    server_ssl_context,
)

__all__ = [
    "CODECS", "KINDS", "VERSION", "AuthError", "Certificate", "CodecError", "HttpTransport",
    "Identity", "InMemoryHub", "InMemoryTransport", "ListenError", "Message", "MessageError",
    "TLSConfigError", "Transport", "TrustStore", "client_ssl_context", "decode",
    "decode_message", "encode", "encode_message", "encoded_size", "raise_fd_limit",
    "server_ssl_context",
]
