"""``python -m node --config peer.toml``: run one peer. Every flag comes from the schema
(``node.config.PeerConfig``) and overrides the file's value."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from node.config import PEER_LOG, PeerConfig
from node.peer.console import ConsoleProgress
from node.peer.observe import FINAL_SUMMARY, JsonLog
from node.peer.phase import Phase
from node.schema import (
    ConfigError,
    SettingsParser,
    add_settings,
    config_from_command_line,
    read_config_file,
)

# Flags that are not settings, and the settings they fill in (a test walks these).
NON_SETTINGS = ("--config",)
ALIASES = {"--peers": ("neighbours",), "--data-shard": ("data.shard", "data.num_shards"),
           "--join": ("membership.bootstrap",)}


def _peers(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, url = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected ID=URL, got {item[:40]!r}")
        out[key.strip()] = url.strip()
    return out


def _urls(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"expected http:// or https:// URLs, got "
                                             f"{url[:40]!r}")
    if not urls:
        raise argparse.ArgumentTypeError("expected at least one URL")
    return urls


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 3/8, got {text[:40]!r}")
    return int(index), int(count)


def build_parser() -> tuple[SettingsParser, dict[str, tuple[str, str]]]:
    p = SettingsParser(
        "python -m node",
        "Run one decentralized-learning peer: an aiohttp server and client that trains on its "
        "data shard, gossips with its neighbours, checkpoints every round (resuming after a "
        "crash) and ends with a global merge. Endpoints: POST /gossip (signed messages only), GET "
        "/status, /metrics (loopback or a token), /healthz. Keys, the network authority and "
        "trust stores: python -m node keys --help; a starter project: python -m node init DIR.",
        "Every TOML key is documented in docs/peer-config.md; the file has the sections of\n"
        "the groups above. A peer with no neighbours trains alone.")
    p.add_argument("--config", metavar="FILE", help="peer TOML file")
    p.add_argument("--peers", type=_peers, metavar="ID=URL,...",
                   help="[neighbours], e.g. 1=http://127.0.0.1:8001,2=http://127.0.0.1:8002")
    p.add_argument("--data-shard", type=_shard, metavar="I/N",
                   help="[data] shard I of num_shards N, e.g. 3/8")
    p.add_argument("--join", type=_urls, metavar="URL,...",
                   help="[membership] bootstrap: join a running network through these peers "
                   "(open membership; e.g. http://127.0.0.1:8000): the peer is admitted, picks "
                   "its neighbours from their view and starts from a neighbour's model")
    return p, add_settings(p, PeerConfig)


def resolve(argv: Sequence[str] | None) -> PeerConfig:
    """The peer's config: defaults < --config file < flags."""
    parser, dests = build_parser()
    args = vars(parser.parse_args(argv))
    path, peers, shard = args.pop("config", None), args.pop("peers", None), \
        args.pop("data_shard", None)
    join = args.pop("join", None)
    extra: dict = {}
    if peers is not None:
        extra["neighbours"] = peers
    if join is not None:
        extra["membership"] = {"bootstrap": join}
    if shard is not None:
        extra["data"] = {"shard": shard[0], "num_shards": shard[1]}
    try:
        table = read_config_file(path) if path else {}
    except ConfigError as exc:
        parser.error(str(exc))
    config = config_from_command_line(PeerConfig, parser, dests=dests, args=args,
                                      table=table, source=path or "", extra=extra)
    if config.run.device == "cuda" and not torch.cuda.is_available():
        parser.error("[run] device: 'cuda' asked for but torch sees no CUDA device")
    return config


# the exit status of a peer that trained alone although it has neighbours (3 and 4 are a join
# refused and a join nobody answered, 2 a bad config)
NEVER_MIXED_EXIT = 5


def console_log(config: PeerConfig) -> tuple[JsonLog, ConsoleProgress | None]:
    """The peer's JSON log and, for a person, its console. Without [peer] log_file the log
    goes to STATE_DIR/log.jsonl and the terminal gets readable progress; with one, progress is
    shown only when standard error is a terminal (the launcher's peers write files)."""
    path = config.peer.log_file or str(Path(config.peer.state_dir) / PEER_LOG)
    console = None
    if not config.peer.log_file or sys.stderr.isatty():
        console = ConsoleProgress(peer_id=config.id, rounds=config.run.rounds,
                                  neighbours=dict(config.neighbours), log_path=path)
    return JsonLog(config.id, path, echo=console), console


async def serve(config: PeerConfig, *, data: Any = None) -> int:
    from node.peer.protocol import Peer

    log, console = console_log(config)
    try:
        return await _serve(Peer(config, data=data, log=log), config)
    finally:
        if console is not None:
            console.close()


async def _serve(peer: Any, config: PeerConfig) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, peer.request_stop)
    try:
        await peer.start()
    except BaseException:  # e.g. the port is taken: release what the peer holds
        await peer.close()
        raise
    from node.peer.membership import JoinError

    try:
        summary = await peer.run()
    except JoinError as exc:
        print(f"python -m node: error: peer {config.peer.id}: {exc}", file=sys.stderr)
        return exc.code
    if peer.already_finished:
        print(f"python -m node: {peer.already_finished_note()}", file=sys.stderr)
        return 0
    if summary.get("never_mixed"):
        print(f"python -m node: error: peer {summary['id']} never mixed with a neighbour in "
              f"{summary['gossip_steps']} gossip steps and merged with nobody: "
              f"{summary['isolation']}; {result_line(summary, config)}", file=sys.stderr)
        return NEVER_MIXED_EXIT
    print(f"python -m node: {result_line(summary, config)}", file=sys.stderr)
    return 0 if summary["state"] in (Phase.DONE, Phase.STOPPED) else 1


def result_line(summary: dict, config: PeerConfig) -> str:
    """One line saying how the run ended and where its record is."""
    def figure(name: str) -> str:
        value = summary.get(name)
        return f"{name} {value:.4f}" if isinstance(value, float) else f"{name} -"

    return (f"peer {summary['id']} {summary['state']} after {summary['rounds_completed']} "
            f"rounds: {figure('accuracy')} (shared test set), {figure('val_accuracy')} (own "
            f"validation data), {figure('merged_accuracy')} (after the merge); "
            f"{Path(config.peer.state_dir) / FINAL_SUMMARY}")


def main(argv: Sequence[str] | None = None, *,
         data_for: Callable[[PeerConfig], Any] | None = None) -> int:
    """``python -m node ARGV``. ``data_for``: the data set already loaded for a config, or None
    (node.zygote hands a forked peer the data its parent loaded once for every peer)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "init":  # python -m node init DIR: a starter project
        from node.peer import init

        return init.main(argv[1:])
    if argv and argv[0] == "keys":  # python -m node keys ...: identities and trust stores
        from node.peer import keys

        return keys.main(argv[1:])
    from gossip import ListenError, raise_fd_limit

    config = resolve(argv)
    torch.set_num_threads(config.run.threads)
    os.umask(0o077)  # the state folder holds a private key, checkpoints and logs: owner only
    raise_fd_limit()  # the soft descriptor limit up to the hard one (connections are capped)
    try:
        data = data_for(config) if data_for is not None else None
        return asyncio.run(serve(config, data=data))
    # ValueError: e.g. a data split that cannot be made, a checkpoint for another model;
    # ListenError: the address is taken or not this machine's
    except (ValueError, ListenError) as exc:
        print(f"python -m node: error: {exc}", file=sys.stderr)
        return 2
