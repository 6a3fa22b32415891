"""One supervision loop for peer processes on this machine, with policies plugged into it.

:class:`Supervisor` starts the peers, reads their JSON logs as they grow, shows a live line,
and stops every process it started when the run ends: normally, past its time limit, on an
exception, on Ctrl-C or on SIGTERM. What a run does to its peers beyond that is a
:class:`Policy`: the launcher's churn, join schedule and bootstrap kill
(node/launch_policies.py), the soak's random kills and restarts (scripts/soak.py).

Each tick of the loop reads every peer's new log lines, then tells each policy, in order,
``on_exit(supervisor, peer, code)`` once for every process life that ended, then
``on_tick(supervisor, now)``. The loop goes on while a peer process runs (or ended, until the
policies were told) or a policy has something ``pending`` (a joiner still to start, a killed
peer to restart). A policy
``holds_back`` the peers it starts itself; ``on_stop`` runs when the loop ends, however it ends,
before the peers are stopped.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from node.peer.observe import FINAL_SUMMARY, LogEvent
from node.zygote import Zygote

STDERR_FILE = "stderr.txt"  # a peer's standard error, in its state folder
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long


def read_final(state_dir: Path) -> dict[str, Any] | None:
    """A peer's final summary (FINAL_SUMMARY in its state folder); None before it wrote one."""
    path = Path(state_dir) / FINAL_SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


@dataclass(eq=False)  # a peer is itself: policies keep peers in sets and as keys
class PeerProcess:
    """One peer process of a run (``python -m node --config CONFIG``), started and restarted
    by its supervisor, and what it said about itself in its log so far."""

    config_path: Path
    log_path: Path
    state_dir: Path
    proc: Any = None  # subprocess.Popen, or node.zygote.ForkedProcess
    log_offset: int = 0
    rounds: dict[int, float | None] = field(default_factory=dict)  # round -> accuracy
    restarts: int = 0
    serving: bool = False  # the process logged that it listens
    role: str = "static"  # static (from the topology); join mode: bootstrap or joiner
    join_urls: list[str] = field(default_factory=list)  # a joiner's --join
    spawned_at: float | None = None  # wall clock (time.time) of the first start
    joined: dict[str, Any] | None = None  # its "joined" log event
    first_mix_t: float | None = None  # wall clock of its "first_mix" log event
    left: bool = False  # it logged "left" (told its neighbours it stops)
    dropped: int = 0  # neighbours it dropped (suspect, unlinked or left)
    join_failed: str | None = None
    stopped_on_purpose: bool = False  # killed by a policy and not to be restarted
    zygote: Zygote | None = None  # forks the peer (start_method fork); None: a new interpreter
    exit_seen: bool = False  # the end of the current process life was reported

    def start(self) -> None:
        """Start (or restart) the process, its stderr appended to STATE_DIR/stderr.txt."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        join = ["--join", ",".join(self.join_urls)] if self.join_urls else []
        argv = ["--config", str(self.config_path), *join]
        if self.spawned_at is None:
            self.spawned_at = time.time()
        self.exit_seen = False
        if self.zygote is not None:
            self.proc = self.zygote.spawn(argv, stderr_path=self.state_dir / STDERR_FILE)
            return
        stderr = open(self.state_dir / STDERR_FILE, "a")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "node", *argv],
                                     stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def live(self) -> bool:
        """Started, and its end (if it ended) not reported yet."""
        return self.proc is not None and not self.exit_seen

    def exited(self) -> int | None:
        """The exit status of the process life that ended, once: None while it runs, before
        the first start, and after it was returned."""
        if self.proc is None or self.exit_seen:
            return None
        code = self.proc.poll()
        self.exit_seen = code is not None
        return code

    def kill(self) -> None:
        """SIGKILL the process if it runs, and reap it; it no longer serves."""
        if self.running:
            self.proc.kill()
            self.proc.wait()
        self.serving = False

    def read_log(self) -> list[str]:
        """Consume the new complete lines of the peer's JSON log; a note for each line that does
        not parse (a SIGKILL can cut one), which is skipped."""
        notes = []
        for line in self._new_lines():
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                self.record(event)
            else:
                notes.append(f"unparseable log line in {self.log_path} before byte "
                             f"{self.log_offset}")
        return notes

    def _new_lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as fh:
            fh.seek(self.log_offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self.log_offset += end
        return chunk[:end].decode(errors="replace").splitlines()

    def record(self, event: dict[str, Any]) -> None:
        """Take in one log event: rounds, serving, and the join-mode figures."""
        kind = event.get("event")
        if kind == LogEvent.ROUND:
            self.rounds[event["round"]] = event["accuracy"]
        elif kind in (LogEvent.LISTENING, LogEvent.RESUMED):
            self.serving = True
        elif kind == LogEvent.JOINED:
            self.joined = {k: event.get(k) for k in ("round", "donor", "after_s")}
        elif kind == LogEvent.FIRST_MIX and self.first_mix_t is None:
            self.first_mix_t = event["t"]
        elif kind == LogEvent.LEFT:
            self.left = True
        elif kind in (LogEvent.NEIGHBOUR_DROPPED, LogEvent.NEIGHBOUR_LEFT):
            self.dropped += 1
        elif kind == LogEvent.JOIN_FAILED:
            self.join_failed = event.get("reason")

    @property
    def completed(self) -> int:
        return max(self.rounds, default=0)

    def final(self) -> dict[str, Any] | None:
        """Its final summary, once it wrote one."""
        return read_final(self.state_dir)

    def stderr_tail(self, chars: int = 600) -> str:
        path = self.state_dir / STDERR_FILE
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def stop_all(peers: Sequence[PeerProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every running peer, then SIGKILL what is left after ``grace`` seconds."""
    for p in peers:
        if p.running:
            p.proc.terminate()
    deadline = time.monotonic() + grace
    for p in peers:
        if p.proc is None:
            continue
        try:
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


def progress_text(peers: Sequence[PeerProcess], total: int) -> str:
    """The live line: how many processes serve yet, then rounds done by the slowest and the
    fastest peer, and the mean accuracy of the peers' latest rounds; in join mode also how many
    joiners joined, how many peers left (said so, or were killed), and joins that failed.
    The slowest counts only peers that started and were not stopped on purpose (a joiner not
    started yet has done no round, and is not behind)."""
    serving = sum(p.serving and p.running for p in peers)
    join = join_text(peers)
    if not any(p.rounds for p in peers):
        return f"starting: {serving}/{len(peers)} peers serving, no round done yet{join}"
    done = [p.completed for p in peers if p.proc is not None and not p.stopped_on_purpose] or \
        [p.completed for p in peers]
    latest = [a for p in peers if p.completed and not p.stopped_on_purpose
              and (a := p.rounds[p.completed]) is not None]
    acc = f"{np.mean(latest):.3f}" if latest else "-"
    span = f"{min(done)}" if min(done) == max(done) else \
        f"{min(done)} (slowest) to {max(done)} (fastest)"
    return (f"rounds done {span} of {total}  mean acc {acc}  "
            f"peers serving {serving}/{len(peers)}{join}")


def join_text(peers: Sequence[PeerProcess]) -> str:
    """The live line's join-mode part ('' without joiners)."""
    joiners = [p for p in peers if p.role == "joiner"]
    if not joiners:
        return ""
    gone = sum(p.left or p.stopped_on_purpose for p in peers)
    failed = sum(p.join_failed is not None for p in joiners)
    return (f"  joined {sum(p.joined is not None for p in joiners)}/{len(joiners)}"
            f"  left {gone}" + (f"  join failed {failed}" if failed else ""))


class ProgressLine:
    """One live line on a terminal; elsewhere (CI logs) a new line only when it changes."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream, self.last = stream, ""

    def show(self, text: str, elapsed: float) -> None:
        if self.stream.isatty():
            print(f"\r[{elapsed:6.1f}s] {text}   ", end="", file=self.stream, flush=True)
        elif text != self.last:
            print(f"[{elapsed:6.1f}s] {text}", file=self.stream, flush=True)
        self.last = text


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does (so a run that is
    terminated still stops its peers and reports); the handler before comes back after."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Policy:
    """What a run does to its peers besides starting them and waiting for them (the module
    docstring says when each hook is called). Every hook is optional."""

    def holds_back(self, peer: PeerProcess) -> bool:
        """True for a peer this policy starts itself (not with the others at the beginning)."""
        return False

    def pending(self, supervisor: Supervisor) -> bool:
        """True while this policy still has something to do even if no peer runs."""
        return False

    def on_exit(self, supervisor: Supervisor, peer: PeerProcess, code: int) -> None:
        """``peer``'s process ended with status ``code`` (negative: the signal that ended it)."""

    def on_tick(self, supervisor: Supervisor, now: float) -> None:
        """Once per tick, after every log was read and every exit reported; ``now`` is
        time.monotonic()."""

    def on_stop(self, supervisor: Supervisor) -> None:
        """The loop ended (finished, timed out, interrupted or failed); the peers are stopped
        next."""


class Supervisor:
    """Runs ``peers`` with ``policies`` until they are done (see the module docstring).
    ``timeout``: seconds before it gives up (``timed_out``); ``rounds``: the run's length, for
    the live line; ``zygote``: forked peers start together, held until all are forked."""

    def __init__(self, peers: Sequence[PeerProcess], policies: Sequence[Policy] = (), *,
                 rounds: int, timeout: float, quiet: bool = False,
                 zygote: Zygote | None = None, poll_s: float = 0.2):
        self.peers, self.policies = list(peers), list(policies)
        self.rounds, self.timeout, self.quiet = rounds, timeout, quiet
        self.zygote, self.poll_s = zygote, poll_s
        self.started = time.monotonic()
        self.interrupted = False
        self.timed_out = False
        self.notes: list[str] = []  # log lines that did not parse
        self.progress = ProgressLine()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def index(self, peer: PeerProcess) -> int:
        return self.peers.index(peer)

    def say(self, text: str) -> None:
        """A line about what a policy did, unless quiet."""
        if not self.quiet:
            print(f"\n[{self.elapsed():6.1f}s] {text}", file=sys.stderr, flush=True)

    def run(self) -> Supervisor:
        """Start the peers no policy holds back, then tick until no peer runs and no policy has
        anything pending, the time limit passes, or Ctrl-C or SIGTERM come (``interrupted``).
        Other exceptions propagate, after every peer was stopped."""
        with sigterm_interrupts():
            try:
                self.start_together([p for p in self.peers if not self.held_back(p)])
                while self.busy():
                    if self.elapsed() > self.timeout:
                        self.timed_out = True
                        break
                    self.tick()
                    time.sleep(self.poll_s)
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                self.stop()
        self.read_logs()
        if not self.quiet:
            print(file=sys.stderr)
        return self

    def held_back(self, peer: PeerProcess) -> bool:
        return any(policy.holds_back(peer) for policy in self.policies)

    def start_together(self, peers: Sequence[PeerProcess]) -> None:
        """Start ``peers``; forked ones are released together once all are forked."""
        with self.zygote.held() if self.zygote else contextlib.nullcontext():
            for p in peers:
                p.start()

    def busy(self) -> bool:
        """A peer runs, or ended and the policies were not told yet, or a policy has work."""
        return any(p.live for p in self.peers) or \
            any(policy.pending(self) for policy in self.policies)

    def tick(self) -> None:
        self.read_logs()
        self.report_exits()
        now = time.monotonic()
        for policy in self.policies:
            policy.on_tick(self, now)
        if not self.quiet:
            self.progress.show(progress_text(self.peers, self.rounds), self.elapsed())

    def read_logs(self) -> None:
        for p in self.peers:
            self.notes += p.read_log()

    def report_exits(self) -> None:
        for p in self.peers:
            code = p.exited()
            if code is not None:
                for policy in self.policies:
                    policy.on_exit(self, p, code)

    def stop(self) -> None:
        """Tell the policies, then stop every peer process."""
        try:
            for policy in self.policies:
                policy.on_stop(self)
        finally:
            stop_all(self.peers)
