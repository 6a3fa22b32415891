"""The wire: message schema, tensor codecs and transports (HTTP and in-memory)."""

from gossip.codec import CODECS, CodecError, decode, encode, encoded_size
from gossip.messages import KINDS, VERSION, Message, MessageError, decode_message, encode_message
from gossip.transport import (
    HttpTransport,
    InMemoryHub,
    InMemoryTransport,
    ListenError,
    Transport,
)

__all__ = [
    "CODECS", "KINDS", "VERSION", "CodecError", "HttpTransport", "InMemoryHub",
    "InMemoryTransport", "ListenError", "Message", "MessageError", "Transport", "decode",
    "decode_message", "encode", "encode_message", "encoded_size",
]
