"""``python -m node --config peer.toml``: run one peer (flags override the file's common keys)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

import torch

from node.config import PeerConfigError, load_peer_config, parse_peer_config


def _peers(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, url = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected ID=URL, got {item!r}")
        out[key.strip()] = url.strip()
    return out


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 3/8, got {text!r}")
    return int(index), int(count)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m node",
        description="Run one decentralized-learning peer: an aiohttp server and client that "
                    "trains on its data shard, gossips with its neighbours, checkpoints every "
                    "round (resuming after a crash) and ends with a global merge. Endpoints: "
                    "POST /gossip, GET /status, /metrics, /healthz.",
        epilog="Every TOML key is documented in docs/peer-config.md. A peer with no "
               "neighbours trains alone.")
    p.add_argument("--config", metavar="FILE", help="peer TOML file")
    p.add_argument("--id", type=int, help="this peer's id")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on")
    p.add_argument("--peers", type=_peers, metavar="ID=URL,...",
                   help="neighbours, e.g. 1=http://127.0.0.1:8001,2=http://127.0.0.1:8002")
    p.add_argument("--data-shard", type=_shard, metavar="I/N",
                   help="use shard I of the data split into N shards")
    p.add_argument("--rounds", type=int, help="training rounds")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--state-dir", metavar="DIR", help="checkpoint and summary folder")
    p.add_argument("--seed", type=int, help="run seed (must match the other peers')")
    p.add_argument("--log-file", metavar="FILE", help="JSON-lines log (default: stdout)")
    return p


def resolve(argv: Sequence[str] | None) -> Any:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        raw = load_peer_config(args.config) if args.config else {}
        for key in ("id", "listen", "rounds", "device", "threads", "state_dir", "seed",
                    "log_file"):
            if getattr(args, key) is not None:
                raw[key] = getattr(args, key)
        if args.peers is not None:
            raw["neighbours"] = args.peers
        if args.data_shard is not None:
            raw.setdefault("data", {})
            raw["data"]["shard"], raw["data"]["num_shards"] = args.data_shard
        config = parse_peer_config(raw)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise PeerConfigError("device: 'cuda' asked for but torch sees no CUDA device")
    except PeerConfigError as exc:
        parser.error(str(exc))
    return config


async def serve(config) -> int:
    from node.peer.protocol import Peer

    peer = Peer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, peer.request_stop)
    await peer.start()
    summary = await peer.run()
    return 0 if summary["state"] in ("done", "stopped") else 1


def main(argv: Sequence[str] | None = None) -> int:
    config = resolve(argv)
    torch.set_num_threads(config.threads)
    try:
        return asyncio.run(serve(config))
    except ValueError as exc:  # e.g. a data split that cannot be made
        print(f"python -m node: error: {exc}", file=sys.stderr)
        return 2
