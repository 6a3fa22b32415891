"""Send-and-decode time of one model over the peer's HTTP wire vs a raw TCP socket, on loopback.

For 1M and 10M float32 parameters, measured side by side in one run (same event loop, same
machine): (a) a raw asyncio TCP transfer of the same number of bytes, answered with one byte;
(b) the peer's path: encode_message (msgpack + f32 codec), HTTP POST through the pooled aiohttp
session, decode_message on the receiver (msgpack, zero-copy f32 view, finiteness check), answer.
Reports the medians and the throughput ratio raw/wire. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import torch

from gossip import HttpTransport, Message, decode_message, encode_message
from sim import format_table


async def raw_tcp_seconds(payload: bytes, repeats: int) -> float:
    size = len(payload)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                break
            writer.write(b"k")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        await reader.readexactly(1)
        times.append(time.perf_counter() - start)
    writer.close()
    server.close()
    await server.wait_closed()
    return statistics.median(times[1:])


async def wire_seconds(vector: torch.Tensor, repeats: int) -> dict[str, float]:
    length = vector.numel()
    limit = 8 * length + 2**20
    decode_times = []

    async def handler(body):
        start = time.perf_counter()
        message = decode_message(body, length, limit)
        decode_times.append(time.perf_counter() - start)
        return (200, "ok") if message.vectors else (400, "empty")

    receiver = HttpTransport("127.0.0.1", 0, limit)
    sender = HttpTransport("127.0.0.1", 0, limit)
    await receiver.start(handler)
    await sender.start(handler)
    sender.set_peers({1: receiver.url})
    totals, encodes = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        body = encode_message(Message("model", 0, 0, 0, 1, [(0, vector)]), length)
        encoded = time.perf_counter()
        status = await sender.send(1, body, timeout=60.0)
        totals.append(time.perf_counter() - start)
        encodes.append(encoded - start)
        assert status == 200, status
    await sender.close()
    await receiver.close()
    return {"total": statistics.median(totals[1:]), "encode": statistics.median(encodes[1:]),
            "decode": statistics.median(decode_times[1:]), "bytes": len(body)}


async def run(sizes: list[int], repeats: int) -> list[dict]:
    results = []
    for n in sizes:
        vector = torch.randn(n)
        raw = await raw_tcp_seconds(vector.numpy().tobytes(), repeats)
        wire = await wire_seconds(vector, repeats)
        results.append({"parameters": n, "raw_s": raw, "wire_s": wire["total"],
                        "encode_s": wire["encode"], "decode_s": wire["decode"],
                        "ratio": raw / wire["total"],
                        "wire_mb_per_s": wire["bytes"] / wire["total"] / 1e6})
        print(f"{n} parameters done", file=sys.stderr, flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    results = asyncio.run(run(args.sizes, args.repeats))
    print(format_table(
        ["parameters", "raw TCP s", "peer wire s", "encode s", "decode s", "MB/s", "raw/wire"],
        [[r["parameters"], r["raw_s"], r["wire_s"], r["encode_s"], r["decode_s"],
          f"{r['wire_mb_per_s']:.0f}", f"{r['ratio']:.2f}"] for r in results]))
    print(json.dumps({"throughput_ratio_vs_raw_tcp": {str(r["parameters"]): round(r["ratio"], 3)
                                                      for r in results},
                      "wire_seconds": {str(r["parameters"]): round(r["wire_s"], 4)
                                       for r in results}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
