"""What a peer tells the world about itself: the JSON-lines log (its event names as constants),
the file names it writes, the Prometheus collector of /metrics and the memory probes.

Every event name a peer writes is a constant of ``LogEvent``; the launcher, the soak, the
simulator's peers engine and the tests read the log through the same constants, so a renamed
event is renamed everywhere at once."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node.peer.checkpoint import private_folder

FINAL_SUMMARY = "final.json"  # the peer's summary, in its state folder, once it stopped

# statuses whose rejection counter /metrics shows from the start (at 0)
COMMON_REJECTIONS = (400, 401, 403, 409, 413, 422, 429)


class LogEvent:
    """The ``event`` field of every line of a peer's JSON log."""

    # the run
    LISTENING = "listening"
    DATA = "data"
    KEY_CREATED = "key_created"
    OPEN_MODE = "open_mode"
    RESUMED = "resumed"
    ALREADY_FINISHED = "already_finished"
    ROUND = "round"
    CATCH_UP = "catch_up"
    FIRST_MIX = "first_mix"
    MIX_NOT_FINITE = "mix_not_finite"
    PROGRESS = "progress"
    UNREACHABLE = "unreachable"
    NEVER_MIXED = "never_mixed"
    DONE = "done"
    # messages refused, by this peer or by its neighbours
    REJECTED = "rejected"
    REFUSED_BY = "refused_by"
    # the neighbourhood
    SUSPECT = "suspect"
    NEIGHBOUR_BACK = "neighbour_back"
    NEIGHBOUR_LEFT = "neighbour_left"
    NEIGHBOUR_DROPPED = "neighbour_dropped"
    WAITING_FOR_NEIGHBOURS = "waiting_for_neighbours"
    # the final merge
    MERGE_WAITS_FOR = "merge_waits_for"
    MERGE_ISOLATED = "merge_isolated"
    MERGED = "merged"
    # open membership
    ADMITTED = "admitted"
    JOINED = "joined"
    JOIN_FAILED = "join_failed"
    JOIN_NO_VIEW = "join_no_view"
    JOIN_SERVED = "join_served"
    LINKED = "linked"
    LEFT = "left"
    NO_STATE = "no_state"
    REINTRODUCED = "reintroduced"
    RUN_LENGTH_ADOPTED = "run_length_adopted"
    STATE_RECEIVED = "state_received"
    STATE_SENT = "state_sent"


class JsonLog:
    """One JSON object per line: to a file (appended; it and its folder are created at the first
    record, so a peer that stops on a bad setting leaves no empty log behind) or to a stream.

    ``echo``, when given, also sees every record (a terminal's readable progress line)."""

    def __init__(self, peer_id: int, path: str = "", stream: TextIO | None = sys.stdout, *,
                 echo: Callable[[dict[str, Any]], None] | None = None):
        self.peer_id = peer_id
        self.echo = echo
        self.path = path
        self._fh: TextIO | None = None if path else stream

    @property
    def stream(self) -> TextIO | None:
        """Where the records go (None for a file not yet written)."""
        return self._fh

    def _file(self) -> TextIO:
        private_folder(Path(self.path).parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), "peer": self.peer_id, "event": event, **fields}
        if self._fh is None and self.path:
            self._fh = self._file()
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        if self.echo is not None:
            self.echo(record)

    def close(self) -> None:
        if self.path and self._fh is not None:
            self._fh.close()
            self._fh = None


def read_log(path: str | os.PathLike, *events: str) -> list[dict[str, Any]]:
    """The records of a peer's JSON log file (only those of ``events`` when given; none when
    the file cannot be read); see ``parse_log``."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    return parse_log(text, *events)


def parse_log(text: str, *events: str) -> list[dict[str, Any]]:
    """The records of a peer's JSON log text (only those of ``events`` when given), in order;
    lines that are not JSON objects (a line cut by a kill) are skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (not events or record.get("event") in events):
            records.append(record)
    return records


def rss_megabytes() -> float:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def private_megabytes(pid: int | str = "self") -> dict[str, float] | None:
    """Proportional (PSS: shared pages divided among the processes sharing them) and unique
    (USS: pages no other process maps) memory of a process, from Linux's
    /proc/PID/smaps_rollup; None where that file does not exist. RSS counts every shared page in
    full, so for forked peers (node.zygote) only these two say what a peer costs."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[name.strip()] = int(parts[0])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"pss_mb": round(kb.get("Pss", 0) / 1024, 1), "uss_mb": round(uss / 1024, 1)}


class PeerMetrics(Collector):
    """A peer's /metrics, read from its status snapshot at each scrape: every series has HELP
    text and a ``peer`` label, and the rejection counter has a sample for each common status
    from the start (0 until a message is refused)."""

    def __init__(self, peer_id: int, snapshot: Callable[[], dict[str, Any]]):
        self.peer_id, self.snapshot = peer_id, snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.snapshot()
        label = [str(self.peer_id)]

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=["peer"])
            family.add_metric(label, value)
            return family

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, documentation, labels=["peer"])
            family.add_metric(label, value)
            return family

        current = s["current_round"]
        yield gauge("decent_round", "Round in progress (0-based; equals rounds_completed while "
                    "training); once merging or done, the number of rounds completed",
                    s["rounds_completed"] if current is None else current)
        yield gauge("decent_rounds_completed", "Rounds this peer has completed",
                    s["rounds_completed"])
        yield gauge("decent_live_neighbours", "Neighbours not suspected of being down",
                    len(s["live_neighbours"]))
        yield gauge("decent_neighbours", "Neighbours counted in the mixing weights (open "
                    "membership changes them)", len(s["neighbours"]))
        if "membership" in s:
            yield gauge("decent_view_size", "Entries of the open-membership view",
                        len(s["membership"]["view"]))
            yield gauge("decent_joiners_served_now", "Joiners being sent this peer's model",
                        s["membership"]["serving"])
        yield gauge("decent_last_accuracy", "Test accuracy at the last evaluation (NaN before)",
                    float("nan") if s["last_accuracy"] is None else s["last_accuracy"])
        yield counter("decent_bytes_in_total", "Bytes of accepted gossip messages received",
                      s["bytes_in"])
        yield counter("decent_bytes_out_total", "Bytes of gossip messages delivered to "
                      "neighbours", s["bytes_out"])
        rejected = CounterMetricFamily(
            "decent_messages_rejected_total", "Messages this peer refused, by HTTP status",
            labels=["peer", "status"])
        counts = {str(code): 0 for code in COMMON_REJECTIONS} | s["rejected"]
        for code in sorted(counts, key=int):
            rejected.add_metric(label + [code], counts[code])
        yield rejected
