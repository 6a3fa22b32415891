"""Waiting on conditions with a deadline, and finding the peer processes a test started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

POLL_INTERVAL_S = 0.05


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
