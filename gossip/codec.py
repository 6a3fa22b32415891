"""Tensor codec for flat parameter vectors: float32 as raw little-endian bytes.

No pickle: a payload is a dtype tag plus the raw buffer, decoded with ``torch.frombuffer``, which
shares memory with the received bytes instead of copying them.
"""

from __future__ import annotations

import numpy as np
import torch

FLOAT32 = "f32"


class CodecError(ValueError):
    """A payload that cannot be a flat vector of the expected length and dtype."""


def encode_float32(vector: torch.Tensor) -> bytes:
    """Raw little-endian float32 bytes of a 1-D contiguous tensor."""
    if vector.dim() != 1:
        raise CodecError(f"expected a flat 1-D vector, got shape {tuple(vector.shape)}")
    array = vector.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return array.astype("<f4", copy=False).tobytes()


def decode_float32(payload: bytes | bytearray | memoryview, length: int) -> torch.Tensor:
    """Inverse of :func:`encode_float32`; checks the length. Read-only buffers are copied by
    ``bytearray`` once at the caller's choice; a ``bytearray`` is decoded without a copy."""
    if len(payload) != 4 * length:
        raise CodecError(f"payload of {len(payload)} bytes is not {length} float32 values")
    buffer = payload if isinstance(payload, bytearray) else bytearray(payload)
    array = np.frombuffer(buffer, dtype="<f4").astype(np.float32, copy=False)
    return torch.from_numpy(array)


def encoded_size(length: int, codec: str = FLOAT32) -> int:
    """Bytes on the wire for a vector of ``length`` values (used for communication accounting)."""
    if codec != FLOAT32:
        raise CodecError(f"unknown codec {codec!r}; valid: {FLOAT32}")
    return 4 * length
