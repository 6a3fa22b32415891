"""Tensor codecs for flat parameter vectors. No pickle: a payload is raw bytes of a known layout.

* ``f32``: raw little-endian float32, decoded with ``torch.frombuffer`` over the received bytes
  (no copy; the tensor is read-only by contract -- mixing only reads received vectors).
* ``f16`` / ``bf16``: half-precision casts, 2 bytes per value.
* ``q8``: 8-bit affine quantisation, value = low + q * scale with one (low, scale) pair of
  float32 per vector in an 8-byte header, 1 byte per value (max error scale / 2).
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
import torch

CODECS = ("f32", "f16", "bf16", "q8")
_BYTES_PER_VALUE = {"f32": 4, "f16": 2, "bf16": 2, "q8": 1}
_Q8_HEADER = struct.Struct("<ff")


class CodecError(ValueError):
    """A payload that cannot be a flat vector of the expected length."""


def _check_codec(codec: str) -> None:
    if codec not in _BYTES_PER_VALUE:
        raise CodecError(f"unknown codec {codec!r}; valid: {', '.join(CODECS)}")


def encoded_size(length: int, codec: str = "f32") -> int:
    """Bytes on the wire for a vector of ``length`` values."""
    _check_codec(codec)
    return _BYTES_PER_VALUE[codec] * length + (_Q8_HEADER.size if codec == "q8" else 0)


def _frombuffer(payload: bytes | bytearray | memoryview, dtype: torch.dtype) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only bytes: fine, received vectors are never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(payload, dtype=dtype)


def encode(vector: torch.Tensor, codec: str = "f32") -> bytes | memoryview:
    """Bytes of a 1-D tensor in ``codec`` (see the module docstring for the layouts).

    For ``f32`` on a little-endian CPU this is a zero-copy memoryview of the tensor itself, valid
    until the tensor changes: msgpack copies it once into the message body, and nothing else does.
    """
    _check_codec(codec)
    if vector.dim() != 1:
        raise CodecError(f"expected a flat 1-D vector, got shape {tuple(vector.shape)}")
    vector = vector.detach().to("cpu")
    if codec == "f32":
        array = vector.to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
        return array.data.cast("B")
    if codec == "f16":
        return vector.to(torch.float16).numpy().astype("<f2", copy=False).tobytes()
    if codec == "bf16":
        return vector.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2", copy=False) \
            .tobytes()
    low, high = (float(vector.min()), float(vector.max())) if len(vector) else (0.0, 0.0)
    scale = (high - low) / 255.0 or 1.0
    quantised = torch.round((vector.to(torch.float64) - low) / scale).clamp_(0, 255)
    return _Q8_HEADER.pack(low, scale) + quantised.to(torch.uint8).numpy().tobytes()


def decode(payload: bytes | bytearray | memoryview, length: int, codec: str = "f32"
           ) -> torch.Tensor:
    """A float32 vector of ``length`` values from ``payload``; raises CodecError on a size
    mismatch. Does not check finiteness (the message layer does)."""
    if len(payload) != encoded_size(length, codec):
        raise CodecError(f"{codec} payload of {len(payload)} bytes cannot hold {length} values "
                         f"(expected {encoded_size(length, codec)})")
    if codec == "f32":
        if np.little_endian:
            return _frombuffer(payload, torch.float32)
        return torch.from_numpy(np.frombuffer(payload, dtype="<f4").astype(np.float32))
    if codec == "f16":
        return torch.from_numpy(np.frombuffer(payload, dtype="<f2").astype(np.float32))
    if codec == "bf16":
        raw = np.frombuffer(payload, dtype="<i2").astype(np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16).to(torch.float32)
    low, scale = _Q8_HEADER.unpack_from(payload)
    q = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8, offset=_Q8_HEADER.size)
                         .astype(np.float32))
    return q.mul_(scale).add_(low)
