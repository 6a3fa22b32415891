"""The wire: how flat parameter vectors become bytes and back."""

from gossip.codec import FLOAT32, CodecError, decode_float32, encode_float32, encoded_size

__all__ = ["FLOAT32", "CodecError", "decode_float32", "encode_float32", "encoded_size"]
