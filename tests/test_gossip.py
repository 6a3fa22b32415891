import ctypes
import struct

import msgpack
import pytest
import torch

from gossip import (
    CODECS,
    HttpTransport,
    InMemoryHub,
    Message,
    MessageError,
    decode,
    decode_message,
    encode,
    encode_message,
    encoded_size,
)


@pytest.mark.parametrize("codec, tolerance", [("f32", 0.0), ("f16", 1e-3), ("bf16", 1e-2),
                                              ("q8", 0.03)])
def test_codecs_round_trip_within_their_precision(codec, tolerance):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    payload = encode(x, codec)
    assert len(payload) == encoded_size(5000, codec)
    back = decode(payload, 5000, codec)
    assert back.dtype == torch.float32 and back.shape == x.shape
    scale = float(x.abs().max())
    assert float((back - x).abs().max()) <= tolerance * scale


def test_f32_is_raw_little_endian_and_neither_side_copies():
    x = torch.tensor([1.0, -2.5, 3.25])
    view = encode(x, "f32")
    assert bytes(view) == struct.pack("<3f", 1.0, -2.5, 3.25)
    x[0] = 7.0  # the encoded form is a view of the tensor, not a copy
    assert bytes(view)[:4] == struct.pack("<f", 7.0)
    payload = bytes(view)
    back = decode(payload, 3, "f32")
    assert back.tolist() == [7.0, -2.5, 3.25]
    assert back.data_ptr() == ctypes.cast(payload, ctypes.c_void_p).value  # a view, no copy


def model_message(**overrides):
    fields = {"kind": "model", "sender": 1, "round": 3, "step": 0, "degree": 2,
              "vectors": [(1, torch.ones(10))]}
    fields.update(overrides)
    return Message(**fields)


def test_messages_round_trip():
    for codec in CODECS:
        msg = model_message(codec=codec)
        back = decode_message(encode_message(msg, 10), 10, 10**6)
        assert (back.kind, back.sender, back.round, back.step, back.degree, back.codec) == \
            ("model", 1, 3, 0, 2, codec)
        assert torch.allclose(back.vector(), torch.ones(10), atol=0.01)


def raw_message(**changes):
    raw = msgpack.unpackb(encode_message(model_message(), 10), raw=False)
    raw.update(changes)
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize("body, status, reason", [
    (b"\xc1\xff garbage", 400, "not msgpack"),
    (msgpack.packb([1, 2, 3]), 400, "not msgpack of the schema"),
    (raw_message(v=2), 400, "unsupported version"),
    (raw_message() + b"\xdd", 400, "trailing bytes"),  # an object that never completes
    (raw_message() + b"\x00", 400, "trailing bytes"),
    (raw_message(round=2**63), 400, "round must be an int"),
    (raw_message(vectors=[[2, encode(torch.ones(10))]]), 400, "its sender's model"),
    (msgpack.packb({"v": [{}] * 1000}), 400, "keys missing"),
    (raw_message(kind=[{}] * 1000), 400, "not msgpack of the schema"),  # no container built
    (raw_message(kind="poison"), 400, "unknown kind"),
    (raw_message(sender="one"), 400, r"sender must be an int in \[0, 2\*\*62\]"),
    (raw_message(extra=1), 400, "missing or unexpected"),
    (raw_message(codec="pickle"), 400, "unknown codec"),
    (raw_message(length=11), 422, "model size mismatch: the sender.s model has 11"),
    (raw_message(vectors=[[1, b"\0" * 12]]), 422, "cannot hold 10 values"),
    (raw_message(vectors=[[1, encode(torch.full((10,), float("nan")))]]), 422, "non-finite"),
    (raw_message(vectors=[[1, encode(torch.full((10,), float("inf")))]]), 422, "non-finite"),
    (raw_message(vectors=[]), 400, "exactly one vector"),
    (b"\0" * 2000, 413, "over the limit"),
])
def test_bad_messages_are_rejected_with_the_right_status(body, status, reason):
    with pytest.raises(MessageError, match=reason) as info:
        decode_message(body, 10, max_bytes=1500)
    assert info.value.status == status


async def test_in_memory_transport_delivers_to_the_handler_and_reports_absent_peers():
    hub = InMemoryHub()
    got = []

    async def handler(body):
        got.append(body)
        return 200, "ok"

    a, b = hub.transport(0), hub.transport(1)
    await a.start(handler)
    await b.start(handler)
    assert await a.send(1, b"hello", timeout=1.0) == 200
    assert got == [b"hello"]
    await b.close()
    assert await a.send(1, b"again", timeout=1.0) is None


@pytest.mark.parametrize("field", ["kind", "codec", "v", "poison-key"])
def test_refusal_reasons_never_quote_what_was_received(field):
    marker = "Z" * 50
    changes = {"poison-key": marker} if field == "poison-key" else {field: marker}
    with pytest.raises(MessageError) as info:
        decode_message(raw_message(**changes), 10, 4096)
    assert info.value.status == 400 and "ZZZZ" not in info.value.reason


async def test_oversized_and_compressed_bodies_are_refused_before_they_are_read():
    import asyncio
    import gzip

    seen = []

    async def handler(body):
        seen.append(body)
        return (413, "too large") if body is None else (200, "ok")

    transport = HttpTransport("127.0.0.1", 0, 1024)
    await transport.start(handler)
    try:
        # a Content-Length of 2 GB with only a few bytes behind it: answered at once, not read
        reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
        writer.write(b"POST /gossip HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\nab")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
        writer.close()
        assert b" 413 " in status_line and seen == [None]
        # a small gzip body that would expand past the limit: refused without decompressing
        bomb = gzip.compress(b"\0" * (1 << 20))
        reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
        writer.write(b"POST /gossip HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                     + f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
        writer.close()
        assert b" 415 " in status_line and seen == [None]
    finally:
        await transport.close()
