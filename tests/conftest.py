"""Shared fixtures: torch on one thread, and the digits data loaded once per session; how the suite
shares the machine between pytest-xdist workers.

One thread because the suite runs on 2 cores, where torch's default of one thread per core makes
small models slower: measured on this machine, the two Sybil simulation tests of
tests/test_attacks.py take 17.6 s with torch's default and 3.6 s with one thread. Under xdist
every worker imports this file, so every worker runs torch on one thread (tests/test_suite.py),
and a session-scoped fixture is built once per worker.

The README's command runs the suite on one xdist worker per CPU (``-n auto``), handing out one
test at a time (``--dist loadgroup``), slow tests first so that the longest do not start last.
Tests are independent (each its own tmp_path, ports the system picks, peer processes found by
their folder), except those marked ``serial``: real peer processes whose checks depend on timing
(kills and restarts, faults held for seconds) or that change the host (network namespaces). A
serial test runs with no other test at the same time: it takes the machine lock exclusively,
every other test takes it shared, and a serial test waiting for it holds new tests back (writers
first), so the other workers finish their current test and wait. ``-m "not slow"`` is the quick
subset for work in progress."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from tests.helpers import MachineLock, digits_data

torch.set_num_threads(1)

# -n auto: at most this many workers. The longest tests (a soak, network faults) take half a
# minute each whatever the number of workers, and each worker holds torch and its data.
MAX_AUTO_WORKERS = 8


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: the suite also runs without it
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per CPU this process may run on (logical CPUs, as
    os.sched_getaffinity counts them: xdist's own default counts physical cores where psutil is
    installed, one on many 2-vCPU machines), at most MAX_AUTO_WORKERS;
    PYTEST_XDIST_AUTO_NUM_WORKERS overrides it, as in xdist."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, MAX_AUTO_WORKERS))


# A test not marked slow should take less than this (setup to teardown); the summary at the end
# of a run names those that took longer, to be marked (a note, not a failure: timings vary).
QUICK_LIMIT_S = 2.0
unmarked_durations: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    if "slow" not in report.keywords:
        unmarked_durations[report.nodeid] = unmarked_durations.get(report.nodeid, 0.0) + \
            report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    over = sorted(((s, n) for n, s in unmarked_durations.items() if s > QUICK_LIMIT_S),
                  reverse=True)
    if over:
        terminalreporter.write_sep("-", f"not marked slow, over {QUICK_LIMIT_S:.0f} s "
                                   "(@pytest.mark.slow keeps them out of -m 'not slow')")
        for seconds, nodeid in over:
            terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")


def pytest_collection_modifyitems(config, items) -> None:
    """Serial tests first (they run while nothing else has started), then the other slow tests,
    then the rest; each kind in its own order (a stable sort)."""
    items.sort(key=lambda item: (item.get_closest_marker("serial") is None,
                                 item.get_closest_marker("slow") is None))


@pytest.fixture(scope="session")
def machine_lock(tmp_path_factory) -> Iterator[MachineLock | None]:
    """The run's machine lock under xdist (in the folder above the workers' own temporary
    folders, which they share), None in a run without workers."""
    if not MachineLock.available or "PYTEST_XDIST_WORKER" not in os.environ:
        yield None
        return
    lock = MachineLock(tmp_path_factory.getbasetemp().parent)
    yield lock
    lock.close()


@pytest.fixture(autouse=True)
def share_the_machine(request, machine_lock) -> Iterator[None]:
    """Every test holds the machine lock while it runs (its fixtures' setup and teardown
    included): shared, or exclusively if it is marked ``serial``."""
    if machine_lock is None:
        yield
        return
    serial = request.node.get_closest_marker("serial") is not None
    with machine_lock.exclusive() if serial else machine_lock.shared():
        yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with the project's fixed split, loaded once per session."""
    return digits_data()
