"""What several test files share: waiting on conditions with a deadline, finding the peer
processes a test started, building peer configs, and running peers on an in-memory network."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

POLL_INTERVAL_S = 0.05


@functools.cache
def digits_data():
    """The digits data set, loaded once per test session (see conftest.py's fixture)."""
    from node.learning import load_digits

    return load_digits()


def peer_config(i: int, n: int, tmp_path: Path, rounds: int, **settings):
    """Peer i of n with a Dirichlet(0.5) shard of digits and its state under ``tmp_path``;
    ``settings`` are flat schema names (``algorithm="dfedavg"``, ``deadline_floor_s=1``)."""
    from node.config import PeerConfig

    base = {"id": i, "rounds": rounds, "seed": 0, "state_dir": str(tmp_path / f"peer{i}"),
            "partition": "dirichlet", "alpha": 0.5, "shard": i, "num_shards": n}
    return PeerConfig.of(**{**base, **settings})


def trusted(configs, tmp_path: Path):
    """``configs`` with what the launcher gives its peers: a key and an authority certificate
    each, and a trust store listing the authority (under ``tmp_path/trust``)."""
    from node.peer.keys import provision

    return provision(configs, tmp_path / "trust")


async def run_memory_network(graph, configs, data=None, *, run: bool = True):
    """Peers with ``configs`` on an in-memory hub, wired along ``graph``; started, and (with
    ``run``) run to the end. Returns the peers."""
    from gossip import InMemoryHub
    from node.peer import JsonLog, Peer

    hub = InMemoryHub()
    peers = []
    for i, config in enumerate(configs):
        config.neighbours = {j: "http://in-memory" for j in graph.neighbors(i)}
        peers.append(Peer(config, transport=hub.transport(i), data=data or digits_data(),
                          log=JsonLog(i, stream=io.StringIO())))
    for p in peers:
        await p.start()
    if run:
        await asyncio.gather(*(p.run() for p in peers))
    return peers


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def peer_processes(text: str) -> list[int]:
    """PIDs of peer processes (python -m node) whose command line contains ``text`` (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and "-m node" in cmdline:
                found.append(int(entry.name))
    return found


@contextmanager
def no_peer_left_behind(text: str):
    """Kill every peer process mentioning ``text`` when the block ends (also when it fails), and
    fail the test if there was any."""
    try:
        yield
    finally:
        leftovers = peer_processes(text)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"peer processes left behind: {leftovers}"


@contextmanager
def running(command: list[str], **popen):
    """A started process, killed when the block ends if it is still running (also on failure)."""
    proc = subprocess.Popen(command, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
