"""What several test files share: comparing results with golden files, waiting on conditions
with a deadline, finding the peer processes a test started, building peer configs, and running
peers on an in-memory network."""

from __future__ import annotations

import asyncio
import functools
import io
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:
    fcntl = None

POLL_INTERVAL_S = 0.05

# The long forms of the slow tests: DECENT_LONG_TESTS=1 makes tests/test_fuzz.py send 10,000
# messages instead of 2,500 and tests/test_netns.py run 120 rounds instead of 60
# (scripts/fuzz_peer.py and scripts/netns_faults.py run them so); the soak's long form is
# scripts/soak.py's own defaults.
LONG_TESTS = os.environ.get("DECENT_LONG_TESTS", "") not in ("", "0")

# relative tolerance on floats compared with a golden file: see compare_rows
GOLDEN_REL = 1e-6


def golden_differences(actual, expected, *, rel: float = GOLDEN_REL, where: str = "") -> list[str]:
    """Every difference between ``actual`` and ``expected`` (JSON-like values: dicts, lists,
    numbers, strings, None) under the golden contract, each naming where it is (``where``, then
    the key path below it: ``round 3, train_loss``, ``rounds_by_peer['0']['2']``) and both
    values: floats within ``rel`` relative (NaN equals NaN), everything else exactly, dicts with
    the same keys and lists of the same length."""
    return differences(actual, expected, rel, where, "")


def differences(actual, expected, rel: float, where: str, path: str) -> list[str]:
    at = ", ".join(part for part in (where, path) if part) or "the value"
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = []
        missing = [k for k in expected if k not in actual]
        extra = [k for k in actual if k not in expected]
        if missing:
            problems.append(f"{at}: missing key(s) {missing}")
        if extra:
            problems.append(f"{at}: unexpected key(s) {extra}")
        for key in expected:
            if key in actual:
                below = f"{path}[{key!r}]" if path or not isinstance(key, str) else key
                problems += differences(actual[key], expected[key], rel, where, below)
        return problems
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        if len(actual) != len(expected):
            return [f"{at}: {len(actual)} items, golden {len(expected)}: {actual!r} != "
                    f"{expected!r}"]
        problems = []
        for i, (a, e) in enumerate(zip(actual, expected)):
            problems += differences(a, e, rel, where, f"{path}[{i}]")
        return problems
    if isinstance(expected, float) or isinstance(actual, float):
        if is_number(actual) and is_number(expected):
            a, e = float(actual), float(expected)
            if (math.isnan(a) and math.isnan(e)) or math.isclose(a, e, rel_tol=rel):
                return []
            off = abs(a - e) / max(abs(a), abs(e)) if math.isfinite(a - e) else math.inf
            return [f"{at}: {actual!r} != golden {expected!r} (relative difference {off:.1e} > "
                    f"{rel:.0e})"]
    elif actual == expected and (type(actual) is type(expected) or
                                 (is_number(actual) and is_number(expected))):
        return []
    return [f"{at}: {actual!r} != golden {expected!r}"]


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_rows(rows: list[dict], golden: list[dict], *, rel: float = GOLDEN_REL,
                 what: str = "golden rows") -> None:
    """Fail, naming the round (a row's ``round``, else its index), the key and both values of
    every difference, unless ``rows`` match ``golden`` row by row under the golden contract:
    floats within ``rel`` relative, everything else exactly, the same keys in every row and the
    same number of rows.

    The golden contract. A run is bit-identical on one machine (same build of torch, same CPU),
    and tests that compare two runs of this checkout compare exactly. Across machines float32
    sums are not (the kernels torch picks for a CPU add in other orders), so a golden file
    written on one machine is compared with a relative tolerance of GOLDEN_REL (1e-6) on every
    float and exactly on everything else (counts, rounds, ids, strings, None). One part in 1e6
    is about 8 float32 units in the last place; the figures of the golden runs (losses,
    accuracies, consensus distances after a few rounds of training) were measured to differ by
    at most 4e-8 relative between two CPUs, while a change of the code moves them by far more
    (tests/test_golden_compare.py: 1e-7 on every float passes, 1e-4 on one fails). A test whose
    figure magnifies rounding (an ill-conditioned step on the way) scales GOLDEN_REL by a factor
    it states and justifies."""
    problems = []
    if len(rows) != len(golden):
        problems.append(f"{len(rows)} rows, golden {len(golden)} (rounds "
                        f"{[r.get('round') for r in rows]}, golden "
                        f"{[r.get('round') for r in golden]})")
    for i, (row, old) in enumerate(zip(rows, golden)):
        label = f"round {old['round']}" if "round" in old else f"row {i}"
        problems += differences(row, old, rel, label, "")
    if problems:
        raise AssertionError(f"{what}: {len(problems)} difference(s)\n  " +
                             "\n  ".join(problems))


def compare_golden(actual, expected, *, rel: float = GOLDEN_REL, what: str = "golden") -> None:
    """Fail, naming every difference (where and both values), unless ``actual`` matches
    ``expected`` under the golden contract (see compare_rows)."""
    problems = golden_differences(actual, expected, rel=rel)
    if problems:
        raise AssertionError(f"{what}: {len(problems)} difference(s)\n  " +
                             "\n  ".join(problems))


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


class MachineLock:
    """A readers-writer lock shared by the xdist workers of one run (flock on two files in
    ``folder``), writers first: a writer holds the gate while it waits for the lock, and a
    reader passes the gate before it takes the lock shared. (tests/conftest.py: every test holds
    it shared, a test marked ``serial`` exclusively.)"""

    available = fcntl is not None  # not on Windows: there serial tests run alongside the others

    def __init__(self, folder: Path):
        self.gate = open(folder / "machine.gate", "a")  # noqa: SIM115 - closed in close()
        self.lock = open(folder / "machine.lock", "a")  # noqa: SIM115

    @contextmanager
    def shared(self) -> Iterator[None]:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.lock, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)

    def close(self) -> None:
        self.gate.close()
        self.lock.close()
