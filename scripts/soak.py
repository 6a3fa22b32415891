"""Soak test of real peer processes: random SIGKILLs and restarts, some aimed at checkpoint writes.

Starts N peers as scripts/launch.py does (node.launcher: the same per-peer configs, identities
and trust store; node.supervisor's loop, processes and clean-up), each peer its own interpreter,
with the soak's random kills as the loop's policy (RandomKills). Once every peer has completed
--kill-from-round rounds, it SIGKILLs random peers at random times (exponential gaps of mean
--kill-interval s, up to --max-down peers down at once) and restarts each after a random delay
in --restart-delay. Every --checkpoint-every-th kill is aimed at a checkpoint write: the soak
watches the peer's state folder (inotify; polling where there is none) and kills the peer the
moment it opens STATE_DIR/.checkpoint.pt.tmp, i.e. while torch.save and the fsync run; a kill that
leaves that file behind landed before the rename. Killing stops after --max-kills kills or
--kill-for s, and once the fastest peer has --quiet-rounds rounds left or, at the rate it goes,
less than --quiet-s seconds, so that every restarted peer is back for the final merge.

Checks (the exit status is 1 when one fails, 130 on Ctrl-C):

  resumed      every restarted peer logged "resumed" from its checkpoint at a round >= the last
               round it had logged before the kill minus --max-rounds-lost (the round counter
               never went back), the round of the checkpoint read right after the kill
  checkpoints  every checkpoint loads with node.peer.checkpoint.load_checkpoint, read at every
               kill (once the process is dead) and at the end
  waits        no peer waited for a step's messages past the deadline ceiling (+ --wait-slack),
               the start-up rendezvous excluded. Measured from final.json "max_wait_s", which is
               the longest wait of the peer's last process life in Exchange.collect (gossip steps
               and merge flood steps) and includes that life's first rendezvous when the life
               started afresh (a resumed peer's first wait is already bounded by the ceiling).
               For a peer never restarted whose figure is above the ceiling, the soak uses its
               longest timed-out wait after the first rendezvous instead ("suspect" events'
               waited_s): a wait that ends before its deadline is shorter than that deadline, and
               every deadline after a completed first rendezvous is at most the ceiling
  merge        every peer wrote final.json with state "done", and every "component" list is the
               same list, of every peer (one merge group)
  processes    no peer process of the run is left (the soak's own children, and /proc)
  bounded      the soak finished within --timeout

Peers that serve run at nice --renice (10), so that a restarting peer's process start (a few
CPU-seconds of imports) is not starved by the others' training where there are fewer cores than
peers; without it a restart takes 15-20 s on a loaded 2-core machine and the restarted peers come
back after the others have finished.

Then the same network runs undisturbed (node.launcher.launch, same seed and settings; skip it
with --no-baseline) and the merged accuracies are compared. Which peers die and the delays are
drawn from --seed; when each kill lands depends on the peers' timing. Prints a table, writes a
JSON summary (--out), ends with one JSON line of headline figures.

Examples:
  python scripts/soak.py                                   # 16 peers, random-regular, 40 rounds
  python scripts/soak.py --nodes 6 --topology ring --rounds 12 --max-kills 3 --no-baseline
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from node.config import LaunchConfig
from node.launch_report import SUMMARY_FILE, RunFolder
from node.launcher import clear_previous_run, launch, prepare_peers
from node.learning.seeding import derive_seed
from node.peer.checkpoint import CHECKPOINT, load_checkpoint
from node.peer.observe import FINAL_SUMMARY, LogEvent
from node.supervisor import PeerProcess, Policy, Supervisor
from node.text import format_table

TMP_CHECKPOINT = f".{CHECKPOINT}.tmp"  # what save_checkpoint writes before the rename
IN_OPEN, IN_CREATE = 0x20, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
POLL_S = 0.05


# -- killing at a checkpoint write -------------------------------------------------------------


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


class CheckpointAim(threading.Thread):
    """SIGKILL process ``pid`` the moment it opens ``folder/.checkpoint.pt.tmp`` (inotify, armed
    before the thread starts; where inotify is missing, a 1 ms poll for a new version of the
    file), or when ``patience`` seconds pass first. ``fired_on_write`` says which happened."""

    def __init__(self, pid: int, folder: Path, patience: float):
        super().__init__(daemon=True, name=f"aim-{pid}")
        self.pid, self.folder, self.patience = pid, Path(folder), patience
        self.fired_on_write = False
        self.killed_at: float | None = None
        self.cancelled = threading.Event()
        self.before = _stat_key(self.folder / TMP_CHECKPOINT)
        self.fd = self._watch()

    def _watch(self) -> int | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, str(self.folder).encode(), IN_OPEN | IN_CREATE) < 0:
                os.close(fd)
                return None
            return fd
        except (OSError, AttributeError):
            return None

    def _opened(self, timeout: float) -> bool:
        if self.fd is None:
            time.sleep(min(timeout, 0.001))
            return _stat_key(self.folder / TMP_CHECKPOINT) not in (None, self.before)
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        offset = 0
        while offset + _EVENT.size <= len(buf):
            _, _, _, length = _EVENT.unpack_from(buf, offset)
            name = buf[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            if name == TMP_CHECKPOINT.encode():
                return True
            offset += _EVENT.size + length
        return False

    def run(self) -> None:
        deadline = time.monotonic() + self.patience
        try:
            while not self.cancelled.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._opened(min(left, 0.1)):
                    self.fired_on_write = True
                    break
            if not self.cancelled.is_set():
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.killed_at = time.monotonic()
        finally:
            if self.fd is not None:
                os.close(self.fd)


# -- bookkeeping ---------------------------------------------------------------------------


@dataclass
class Kill:
    peer: int
    number: int  # 0-based, over the whole soak
    aimed: bool  # aimed at a checkpoint write
    at_s: float = 0.0  # since the soak started
    fired_on_write: bool = False  # aimed kill: the peer was seen opening the temporary file
    mid_write: bool = False  # a new temporary checkpoint file was left behind: killed mid-write
    last_logged_round: int = 0  # the highest round the peer had logged before it died
    checkpoint_round: int | None = None  # the round of the checkpoint read right after the kill
    checkpoint_error: str | None = None
    restart_delay_s: float = 0.0
    restart_log_offset: int | None = None  # size of the log when the new process started
    restarted_at_s: float | None = None
    back_at_s: float | None = None  # when the new process logged that it listens
    resumed_round: int | None = None
    first_round_after: int | None = None
    catch_up: list[int] | None = None  # [from_round, to_round] of the new life's first catch-up
    rounds_lost: int | None = None
    start_failures: int = 0  # restarts that exited at once (e.g. the port was taken meanwhile)
    killed_at_s: float | None = None  # when the signal was sent (aimed kills wait for a write)
    killed_mono: float | None = None
    back_mono: float | None = None  # when the restarted process logged "resumed"
    tmp_before: tuple[int, int] | None = None  # the temporary file's (inode, mtime) before


@dataclass
class SoakPeer:
    index: int
    process: PeerProcess
    kills: list[Kill] = field(default_factory=list)
    aim: CheckpointAim | None = None
    pending: Kill | None = None  # killed (or aimed at), the process not reaped yet
    restart_at: float | None = None
    crashed: str | None = None  # the process ended on its own without finishing

    @property
    def down(self) -> bool:
        """Killed, waiting to restart, or restarted but not serving yet."""
        return self.pending is not None or self.restart_at is not None or \
            not self.process.running or not self.process.serving


def read_events(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every complete line of a peer's JSON log with its byte offset (a restart's log begins at
    the offset recorded when it started); a line that does not parse (torn by a kill mid-write)
    is returned as {"event": "unparseable"}."""
    if not path.exists():
        return []
    events, offset = [], 0
    for raw in path.read_bytes().splitlines(keepends=True):
        if raw.endswith(b"\n"):
            try:
                events.append((offset, json.loads(raw)))
            except ValueError:
                events.append((offset, {"event": "unparseable"}))
        offset += len(raw)
    return events


def peer_processes(text: str) -> list[int]:
    """PIDs of live ``python -m node`` processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and "-m node" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def renice(pid: int, niceness: int) -> None:
    """Set every thread of ``pid`` to ``niceness`` (Linux nice values are per thread; threads
    created later inherit their creator's)."""
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) != niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:
            pass


# -- the soak: random kills and restarts, a policy of node.supervisor's loop --------------------


def settings(args: argparse.Namespace, out: Path) -> LaunchConfig:
    """The experiment both runs share (node.config.LaunchConfig, as scripts/launch.py takes)."""
    flat: dict[str, Any] = {
        "nodes": args.nodes, "topology": args.topology, "rounds": args.rounds,
        "seed": args.seed, "model": args.model, "algorithm": args.algorithm,
        "deadline_floor_s": args.deadline_floor_s,
        "deadline_ceiling_s": args.deadline_ceiling_s,
        "startup_timeout_s": args.startup_timeout_s, "quiet": True, "out": str(out),
        "timeout": args.timeout}
    if args.degree is not None:
        flat["degree"] = args.degree
    if args.local_steps is not None:
        flat["local_steps"] = args.local_steps
    for item in args.setting:
        key, _, value = item.partition("=")
        try:
            flat[key.strip()] = json.loads(value)
        except ValueError:
            flat[key.strip()] = value
    return LaunchConfig.of(**flat)


def run_soak(s: LaunchConfig, args: argparse.Namespace, run_dir: Path) -> RandomKills:
    """The soak: the network's peers (node.launcher's configs and identities; each a new
    interpreter, or forked with --start-method fork) run by node.supervisor's loop with the
    random kills plugged in; returns the policy, which holds what happened."""
    clear_previous_run(run_dir)
    peers, configs, zygote = prepare_peers(s, run_dir, fork=args.start_method == "fork")
    soak = RandomKills(s, args, peers, run_dir=run_dir,
                       graph_neighbours={c.peer.id: set(c.neighbours) for c in configs})
    supervisor = Supervisor(peers, [soak], rounds=s.run.rounds, timeout=args.timeout,
                            quiet=args.quiet, poll_s=POLL_S, zygote=zygote).run()
    soak.finish(supervisor)
    return soak


class RandomKills(Policy):
    """SIGKILL random peers at random times, some at a checkpoint write, and restart them (the
    module docstring says how they are drawn and when killing stops); record every kill."""

    def __init__(self, s: LaunchConfig, args: argparse.Namespace, peers: list[PeerProcess], *,
                 run_dir: Path, graph_neighbours: dict[int, set[int]]):
        self.s, self.args, self.run_dir = s, args, run_dir
        self.rng = np.random.default_rng(derive_seed(s.run.seed, "soak"))
        self.peers = [SoakPeer(i, p) for i, p in enumerate(peers)]
        self.of_process = {p.process: p for p in self.peers}
        self.graph_neighbours = graph_neighbours
        self.kills: list[Kill] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.killing_stopped: str | None = None
        self.pace: list[tuple[float, int]] = []  # (time, the fastest peer's round) as it moves
        self.next_kill: float | None = None
        self.reniced_at = 0.0
        self.timed_out = False
        self.interrupted = False

    def now(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(f"\n[{self.now():6.1f}s] {text}", file=sys.stderr, flush=True)

    @property
    def processes(self) -> list[PeerProcess]:
        return [p.process for p in self.peers]

    # -- the policy's hooks

    def pending(self, supervisor: Supervisor) -> bool:
        """A kill not reaped yet, or a restart due."""
        return any(p.pending is not None or p.restart_at is not None for p in self.peers)

    def on_exit(self, supervisor: Supervisor, peer: PeerProcess, code: int) -> None:
        p = self.of_process[peer]
        if p.pending is not None:
            self._after_kill(p)
        else:
            self._ended_by_itself(p, code)

    def on_tick(self, supervisor: Supervisor, now: float) -> None:
        self._note_back(now)
        self._restart_due()
        self._renice_serving(now)
        self._kill_when_due()

    def on_stop(self, supervisor: Supervisor) -> None:
        for p in self.peers:
            if p.aim is not None:
                p.aim.cancelled.set()

    def finish(self, supervisor: Supervisor) -> None:
        """Take in how the loop ended and its notes."""
        self.timed_out, self.interrupted = supervisor.timed_out, supervisor.interrupted
        if self.timed_out:
            self.notes.append(f"the soak ran past --timeout {self.args.timeout} s")
        self.notes += supervisor.notes

    # -- pace and downtime

    def downtime(self) -> float:
        """The longest time a killed peer took to serve again (kill to "resumed" logged), so
        far; peers still down count with the time they have been down."""
        now = time.monotonic()
        spans = [(k.back_mono or now) - k.killed_mono for k in self.kills
                 if k.killed_mono is not None]
        return max(spans, default=0.0)

    def seconds_per_round(self) -> float | None:
        """The fastest peer's pace over its last (up to) 10 rounds; None before 3 rounds."""
        recent = self.pace[-11:]
        if len(recent) < 3:
            return None
        (t0, r0), (t1, r1) = recent[0], recent[-1]
        return (t1 - t0) / (r1 - r0) if r1 > r0 else None

    def _note_back(self, now: float) -> None:
        """When each restarted peer serves again."""
        for p in self.peers:
            last = p.kills[-1] if p.kills else None
            if last is not None and last.restarted_at_s is not None and \
                    last.back_mono is None and p.process.serving:
                last.back_mono = now

    def _renice_serving(self, now: float) -> None:
        """Every second, the peers that serve to --renice (module docstring)."""
        if not self.args.renice or now - self.reniced_at <= 1.0:
            return
        self.reniced_at = now
        for p in self.peers:
            if p.process.running and p.process.serving and p.pending is None:
                renice(p.process.proc.pid, self.args.renice)

    # -- killing

    def _kill_when_due(self) -> None:
        """Kill events at exponential gaps of mean --kill-interval, while killing is allowed."""
        if not self._may_kill():
            return
        if self.next_kill is None:
            self.next_kill = self.now() + self.rng.exponential(self.args.kill_interval)
        elif self.now() >= self.next_kill:
            self._kill_some()
            self.next_kill = self.now() + self.rng.exponential(self.args.kill_interval)

    def _may_kill(self) -> bool:
        if self.killing_stopped:
            return False
        done = [p.process.completed for p in self.peers]
        if not self.kills and min(done) < self.args.kill_from_round:
            return False
        fastest = max(done)
        if not self.pace or self.pace[-1][1] != fastest:
            self.pace.append((self.now(), fastest))
        reason = self._why_stop_killing(fastest)
        if reason:
            self.killing_stopped = reason
            self.say(f"no more kills: {reason}")
            return False
        return True

    def _why_stop_killing(self, fastest: int) -> str | None:
        """Why killing stops now (None: it goes on); the module docstring lists the reasons."""
        a, rounds = self.args, self.s.run.rounds
        if len(self.kills) >= a.max_kills:
            return f"{a.max_kills} kills done (--max-kills)"
        if self.kills and self.now() - self.kills[0].at_s > a.kill_for:
            return f"--kill-for {a.kill_for} s passed"
        if rounds - fastest <= a.quiet_rounds:
            return f"the fastest peer has {rounds - fastest} rounds left (--quiet-rounds)"
        pace = self.seconds_per_round()
        if pace is None:
            return None
        margin = max(a.quiet_s, a.quiet_factor * self.downtime())
        left = (rounds - fastest) * pace
        if left >= margin:
            return None
        return (f"the fastest peer has about {left:.1f} s left at its pace, less than "
                f"{margin:.1f} s (--quiet-s {a.quiet_s}, or --quiet-factor {a.quiet_factor} x "
                f"the longest downtime so far, {self.downtime():.1f} s)")

    def _victims(self) -> list[SoakPeer]:
        """Peers to kill now, drawn: serving ones with a checkpoint and rounds to go, at most
        --max-down down at once, none adjacent to a peer down with --no-adjacent."""
        a, rounds = self.args, self.s.run.rounds
        room = a.max_down - sum(p.down for p in self.peers)
        eligible = [p for p in self.peers if not p.down and p.process.serving
                    and (p.process.state_dir / CHECKPOINT).exists()
                    and p.process.completed < rounds - a.quiet_rounds]
        room = min(room, len(eligible), a.max_kills - len(self.kills))
        if room <= 0:
            return []
        count = int(self.rng.integers(1, room + 1))
        order = self.rng.permutation(len(eligible)).tolist()
        victims: list[SoakPeer] = []
        down = {p.index for p in self.peers if p.down}
        for k in order:
            if len(victims) == count:
                break
            if a.no_adjacent and self.graph_neighbours[eligible[k].index] & (
                    down | {v.index for v in victims}):
                continue
            victims.append(eligible[k])
        return sorted(victims, key=lambda v: v.index)

    def _kill_some(self) -> None:
        down = sum(p.down for p in self.peers)
        victims = self._victims()
        if not victims:
            return
        for p in victims:
            self._kill(p)
        first, last = len(self.kills) - len(victims) + 1, len(self.kills)
        numbers = f"#{first}" if first == last else f"#{first}-#{last}"
        aimed = sum(k.aimed for k in self.kills[first - 1:])
        self.say(f"kill {numbers}: peers {[v.index for v in victims]}"
                 f"{f' ({aimed} aimed at its next checkpoint write)' if aimed else ''}; "
                 f"{down + len(victims)} down")

    def _kill(self, p: SoakPeer) -> None:
        """SIGKILL ``p`` now, or (every --checkpoint-every-th kill) at its next checkpoint
        write; the process is reaped in on_exit."""
        a = self.args
        number = len(self.kills)
        kill = Kill(p.index, number, aimed=number % a.checkpoint_every == 0,
                    at_s=round(self.now(), 3))
        kill.restart_delay_s = round(float(self.rng.uniform(*a.restart_delay)), 3)
        self.kills.append(kill)
        p.kills.append(kill)
        p.pending = kill
        if kill.aimed:
            p.aim = CheckpointAim(p.process.proc.pid, p.process.state_dir,
                                  patience=a.aim_patience)
            p.aim.start()
        else:
            kill.tmp_before = _stat_key(p.process.state_dir / TMP_CHECKPOINT)
            kill.killed_at_s, kill.killed_mono = kill.at_s, time.monotonic()
            p.process.proc.kill()

    # -- exits and restarts

    def _ended_by_itself(self, p: SoakPeer, code: int) -> None:
        """A process that was not killed ended: finished, a restart that found its port taken
        (retried, up to 3 times), or a crash."""
        if code == 0 and p.process.final() is not None:
            return  # finished
        last = p.kills[-1] if p.kills else None
        tail = p.process.stderr_tail()
        if last is not None and last.start_failures < 3 and "address already in use" in tail:
            last.start_failures += 1
            p.restart_at = time.monotonic() + 1.0
            self.notes.append(f"peer {p.index}: restart failed (port taken), retried")
            return
        p.crashed = f"exit status {code}: {tail[-300:]}"
        self.notes.append(f"peer {p.index} ended without finishing: {p.crashed}")
        self.say(f"peer {p.index} ended on its own without finishing (status {code})")

    def _after_kill(self, p: SoakPeer) -> None:
        """Record what the kill left: whether it landed mid-write, the last round logged, the
        checkpoint's round (or why it does not load); schedule the restart."""
        kill = p.pending
        assert kill is not None
        tmp = _stat_key(p.process.state_dir / TMP_CHECKPOINT)
        if p.aim is not None:  # (a process that died by itself meanwhile is not shot at)
            self._end_aim(p, kill)
        if kill.killed_mono is None:
            kill.killed_mono = time.monotonic()
        kill.mid_write = tmp is not None and tmp != kill.tmp_before
        self.notes += p.process.read_log()
        kill.last_logged_round = max((e["round"] for _, e in read_events(p.process.log_path)
                                      if e["event"] == LogEvent.ROUND), default=0)
        kill.checkpoint_round, kill.checkpoint_error = read_checkpoint_round(
            p.process.state_dir)
        p.process.serving = False
        p.pending = None
        p.restart_at = time.monotonic() + kill.restart_delay_s
        if kill.aimed:
            left = " (mid-write: temporary file left)" if kill.mid_write else ""
            self.say(f"peer {p.index} killed {'at' if kill.fired_on_write else 'without'} a "
                     f"checkpoint write{left}, checkpoint round {kill.checkpoint_round}, last "
                     f"logged round {kill.last_logged_round}")

    def _end_aim(self, p: SoakPeer, kill: Kill) -> None:
        aim = p.aim
        aim.cancelled.set()
        aim.join()
        kill.fired_on_write, kill.tmp_before = aim.fired_on_write, aim.before
        if aim.killed_at is None:
            self.notes.append(f"peer {p.index} died by itself while a kill was aimed at it "
                              f"(status {p.process.proc.returncode})")
        else:
            kill.killed_at_s = round(aim.killed_at - self.started, 3)
            kill.killed_mono = aim.killed_at
        p.aim = None

    def _restart_due(self) -> None:
        for p in self.peers:
            if p.restart_at is not None and time.monotonic() >= p.restart_at:
                kill = p.kills[-1]
                if kill.restart_log_offset is None:
                    kill.restart_log_offset = p.process.log_path.stat().st_size \
                        if p.process.log_path.exists() else 0
                    kill.restarted_at_s = round(self.now(), 3)
                    p.process.restarts += 1
                p.restart_at = None
                p.process.start()


def read_checkpoint_round(state_dir: Path) -> tuple[int | None, str | None]:
    """The round of the peer's checkpoint, or why it cannot be read (None, reason)."""
    try:
        state = load_checkpoint(state_dir)
        return (None, "no checkpoint") if state is None else (int(state["round"]), None)
    except Exception as exc:  # an unreadable checkpoint is what the checks look for
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


# -- the checks ----------------------------------------------------------------------------


def analyse_restarts(soak: RandomKills) -> None:
    """Fill in what each restart's new process logged: resumed round, catch-up, rounds lost."""
    for p in soak.peers:
        events = read_events(p.process.log_path)
        offsets = [k.restart_log_offset for k in p.kills]
        for i, kill in enumerate(p.kills):
            if kill.restart_log_offset is None:
                continue
            end = next((o for o in offsets[i + 1:] if o is not None), None)
            life = [e for off, e in events if off >= kill.restart_log_offset
                    and (end is None or off < end)]
            analyse_life(kill, life, soak.started_wall)


def first_event(life: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((e for e in life if e["event"] == kind), None)


def analyse_life(kill: Kill, life: list[dict[str, Any]], started_wall: float) -> None:
    """What the process life after ``kill`` logged: resumed round, catch-up, rounds lost."""
    resumed = first_event(life, LogEvent.RESUMED)
    kill.resumed_round = None if resumed is None else resumed["round"]
    rounds = [e["round"] for e in life if e["event"] == LogEvent.ROUND]
    kill.first_round_after = rounds[0] if rounds else None
    catch = first_event(life, LogEvent.CATCH_UP)
    kill.catch_up = None if catch is None else [catch["from_round"], catch["to_round"]]
    listening = first_event(life, LogEvent.LISTENING)
    if listening is not None:
        kill.back_at_s = round(listening["t"] - started_wall, 3)
    if kill.resumed_round is not None:
        kill.rounds_lost = max(0, kill.last_logged_round - kill.resumed_round)


def peer_waits(peer: PeerProcess, restart_offsets: list[int], ceiling: float
               ) -> dict[str, Any]:
    """One peer's waits (the module docstring says what is measured): its final summary's
    max_wait_s, the timed-out waits of every process life after the first rendezvous, and the
    figure the check uses."""
    final = peer.final()
    recorded = final.get("max_wait_s") if final else None
    first_life_end = min(restart_offsets, default=None)
    timed_out, startup_timed_out = [], False
    for off, e in read_events(peer.log_path):
        if e["event"] != LogEvent.SUSPECT:
            continue
        if (first_life_end is None or off < first_life_end) and e.get("round") == 0 and \
                e.get("step") == 0:
            startup_timed_out = True  # the start-up rendezvous: excluded
        else:
            timed_out.append(float(e.get("waited_s", 0.0)))
    includes_startup = not restart_offsets  # the last life is the first one
    if recorded is None:
        used, how = None, f"no {FINAL_SUMMARY}"
    elif includes_startup and recorded > ceiling:
        used = max(timed_out, default=0.0)
        how = "longest timed-out wait after the first rendezvous (max_wait_s includes it)"
    else:
        used = max([recorded, *timed_out])
        how = f"{FINAL_SUMMARY} max_wait_s" + (" and the earlier lives' timed-out waits"
                                                if timed_out else "")
    return {"max_wait_s": recorded, "includes_startup": includes_startup,
            "startup_rendezvous_timed_out": startup_timed_out,
            "longest_timed_out_wait_s": max(timed_out, default=None),
            "wait_checked_s": used, "measured_as": how, "survivor": includes_startup}


def round_times(peers: list[PeerProcess]) -> list[float]:
    return [e["round_s"] for p in peers
            for _, e in read_events(p.log_path) if e["event"] == LogEvent.ROUND]


def finals(peers: list[PeerProcess]) -> dict[int, dict[str, Any] | None]:
    return {i: p.final() for i, p in enumerate(peers)}


def check(soak: RandomKills, s: LaunchConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """[(name, passed, detail)] and the figures they rest on."""
    a, nodes, ceiling = soak.args, s.graph.nodes, s.gossip.deadline_ceiling_s
    analyse_restarts(soak)
    restarts = [k for k in soak.kills if k.restart_log_offset is not None]
    checks = []

    bad = [k for k in restarts if k.resumed_round is None
           or k.resumed_round < k.last_logged_round - a.max_rounds_lost
           or (k.checkpoint_round is not None and k.resumed_round != k.checkpoint_round)
           or (k.first_round_after is not None and k.first_round_after <= k.resumed_round)]
    unrestarted = [k for k in soak.kills if k.restart_log_offset is None]
    checks.append({"name": "resumed", "passed": not bad and not unrestarted and bool(restarts)
                   or (not soak.kills),
                   "detail": (f"{len(restarts) - len(bad)}/{len(restarts)} restarts resumed from "
                              f"their checkpoint without the round going back"
                              + "".join(f"; peer {k.peer} kill #{k.number + 1}: last logged "
                                        f"round {k.last_logged_round}, checkpoint "
                                        f"{k.checkpoint_round}, resumed {k.resumed_round}, next "
                                        f"round logged {k.first_round_after}" for k in bad)
                              + (f"; {len(unrestarted)} killed peers never restarted"
                                 if unrestarted else ""))})

    aimed = [k for k in soak.kills if k.aimed]
    exercised = len(soak.kills) >= a.min_kills and (not aimed or any(k.mid_write for k in aimed))
    checks.append({"name": "exercised", "passed": exercised,
                   "detail": f"{len(soak.kills)} kills (--min-kills {a.min_kills}), "
                             f"{len(aimed)} aimed at a checkpoint write, "
                             f"{sum(k.fired_on_write for k in aimed)} fired as the peer opened "
                             f"{TMP_CHECKPOINT}, {sum(k.mid_write for k in soak.kills)} left it "
                             f"behind (killed mid-write)"})

    final_reads: dict[int, int | str | None] = {}
    for p in soak.peers:
        at, error = read_checkpoint_round(p.process.state_dir)
        final_reads[p.index] = at if error is None else error
    at_kills = [k for k in soak.kills if k.checkpoint_error]
    at_end = {i: r for i, r in final_reads.items() if not isinstance(r, int)}
    failures = len(at_kills) + len(at_end)
    checks.append({"name": "checkpoints", "passed": failures == 0,
                   "detail": f"{len(soak.kills) + nodes - failures}/{len(soak.kills) + nodes} "
                             f"checkpoint reads succeeded ({len(soak.kills)} at kills, {nodes} "
                             f"at the end)"
                             + "".join(f"; peer {k.peer} at kill #{k.number + 1}: "
                                       f"{k.checkpoint_error}" for k in at_kills)
                             + "".join(f"; peer {i} at the end: {r}" for i, r in at_end.items())})

    waits = {p.index: peer_waits(p.process, [k.restart_log_offset for k in p.kills
                                             if k.restart_log_offset is not None], ceiling)
             for p in soak.peers}
    limit = ceiling + a.wait_slack
    over = {i: w for i, w in waits.items()
            if w["wait_checked_s"] is None or w["wait_checked_s"] > limit
            or (w["includes_startup"] and w["startup_rendezvous_timed_out"]
                and (w["max_wait_s"] or 0) > limit)}
    survivors = [w["wait_checked_s"] for w in waits.values() if w["survivor"]
                 and w["wait_checked_s"] is not None]
    restarted = [w["wait_checked_s"] for w in waits.values() if not w["survivor"]
                 and w["wait_checked_s"] is not None]
    checks.append({"name": "waits", "passed": not over,
                   "detail": f"longest wait after the start-up rendezvous: peers never killed "
                             f"{fmt(max(survivors, default=None), 3)} s, killed peers (every "
                             f"life) {fmt(max(restarted, default=None), 3)} s; ceiling "
                             f"{ceiling} s + slack {a.wait_slack} s"
                             + "".join(f"; peer {i}: {w['wait_checked_s']} s ({w['measured_as']}"
                                       + (", its first rendezvous timed out, so later waits "
                                          "used startup_timeout_s" if w[
                                              "startup_rendezvous_timed_out"] else "") + ")"
                                       for i, w in over.items())})

    ends = finals(soak.processes)
    components = {i: tuple(f["component"]) if f and f.get("component") is not None else None
                  for i, f in ends.items()}
    groups: dict[Any, list[int]] = {}
    for i, c in components.items():
        groups.setdefault(c, []).append(i)
    not_done = [i for i, f in ends.items() if not f or f.get("state") != "done"]
    one = len(groups) == 1 and next(iter(groups)) == tuple(range(nodes)) and not not_done
    checks.append({"name": "merge", "passed": one,
                   "detail": (f"one merge group of all {nodes} peers" if one else
                              "merge groups: " + "; ".join(
                                  f"peers {members} ended with component "
                                  f"{list(c) if c is not None else None}"
                                  for c, members in groups.items())
                              + (f"; no {FINAL_SUMMARY} with state done: peers {not_done}"
                                 if not_done else ""))})

    if not one:
        checks[-1]["detail"] += merge_diagnosis(soak.processes, s.run.rounds, components)

    children = [p.index for p in soak.peers if p.process.running]
    others = peer_processes(str(soak.run_dir))
    checks.append({"name": "processes", "passed": not children and not others,
                   "detail": "no peer process left" if not children and not others else
                   f"still running: peers {children}, pids {others}"})
    crashed = [p.index for p in soak.peers if p.crashed]
    checks.append({"name": "bounded", "passed": not soak.timed_out and not crashed,
                   "detail": f"finished in {soak.now():.1f} s (--timeout {a.timeout} s)"
                   if not soak.timed_out else f"ran past --timeout {a.timeout} s"
                   + (f"; peers {crashed} ended without finishing" if crashed else "")})

    lost = [k.rounds_lost for k in restarts if k.rounds_lost is not None]
    skipped = [k.catch_up[1] - k.catch_up[0] for k in restarts if k.catch_up]
    rounds = round_times(soak.processes)
    merged = [f["merged_accuracy"] for f in ends.values() if f and f.get("merged_accuracy")
              is not None]
    figures = {
        "kills": len(soak.kills), "kills_aimed": sum(k.aimed for k in soak.kills),
        "kills_at_checkpoint_write": sum(k.fired_on_write for k in soak.kills),
        "kills_mid_write": sum(k.mid_write for k in soak.kills),
        "restarts": len(restarts),
        "restart_start_failures": sum(k.start_failures for k in soak.kills),
        "rounds_lost_mean": statistics.mean(lost) if lost else None,
        "rounds_lost_max": max(lost, default=None),
        "catch_up_rounds_mean": statistics.mean(skipped) if skipped else None,
        "catch_ups": len(skipped),
        "longest_round_s": max(rounds, default=None),
        "median_round_s": statistics.median(rounds) if rounds else None,
        "max_wait_survivors_s": max(survivors, default=None),
        "max_wait_restarted_s": max(restarted, default=None),
        "merged_acc": statistics.mean(merged) if merged else None,
        "merge_groups": len(groups),
        "checkpoint_failures": failures,
        "final_checkpoint_rounds": final_reads,
        "rounds_completed": {i: f["rounds_completed"] if f else None for i, f in ends.items()},
        "waits": waits, "wall_s": round(soak.now(), 2),
        "killing_stopped": soak.killing_stopped,
    }
    return checks, figures


def merge_diagnosis(peers: list[PeerProcess], rounds: int,
                    components: dict[int, tuple[int, ...] | None]) -> str:
    """Why the merge split, from the logs: where every peer was when the first one finished
    training, and which memberships are one-sided."""
    logs = {i: [e for _, e in read_events(p.log_path) if e["event"] == LogEvent.ROUND]
            for i, p in enumerate(peers)}
    ends = [e["t"] for i in logs for e in logs[i] if e["round"] == rounds]
    text = ""
    if ends:
        first = min(ends)
        at = {i: max((e["round"] for e in logs[i] if e["t"] <= first), default=0)
              for i in logs}
        text += f"; when the first peer finished round {rounds}, the peers were at rounds {at}"
    one_sided = sorted({(i, j) for i, c in components.items() if c for j in c
                        if j != i and components.get(j) is not None and i not in components[j]})
    if one_sided:
        text += ("; one-sided memberships (peer i merged j's model but j's component lacks i): "
                 + ", ".join(f"{i}->{j}" for i, j in one_sided[:20])
                 + (" ..." if len(one_sided) > 20 else ""))
    return text


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(f: dict[str, Any], base: dict[str, Any] | None, nodes: int) -> str:
    b = base or {}
    rows = [
        ["peers", nodes, nodes if base else "-"],
        ["kills (SIGKILL)", f["kills"], 0 if base else "-"],
        ["  aimed at a checkpoint write", f["kills_aimed"], "-"],
        ["  at the write (tmp opened)", f["kills_at_checkpoint_write"], "-"],
        ["  mid-write (tmp left)", f["kills_mid_write"], "-"],
        ["restarts", f["restarts"], 0 if base else "-"],
        ["rounds lost / restart mean", fmt(f["rounds_lost_mean"], 2), "-"],
        ["rounds lost / restart max", fmt(f["rounds_lost_max"]), "-"],
        ["catch-ups (rounds skipped, mean)",
         f"{f['catch_ups']} ({fmt(f['catch_up_rounds_mean'], 1)})", "-"],
        ["median round s", fmt(f["median_round_s"], 3), fmt(b.get("median_round_s"), 3)],
        ["longest round s", fmt(f["longest_round_s"], 3), fmt(b.get("longest_round_s"), 3)],
        ["longest wait s, never killed", fmt(f["max_wait_survivors_s"], 3),
         fmt(b.get("max_wait_s"), 3)],
        ["longest wait s, killed peers", fmt(f["max_wait_restarted_s"], 3), "-"],
        ["merge groups", f["merge_groups"], b.get("merge_groups", "-")],
        ["merged accuracy", fmt(f["merged_acc"]), fmt(b.get("merged_acc"))],
        ["wall s", fmt(f["wall_s"], 1), fmt(b.get("wall_s"), 1)],
    ]
    return format_table(["", "soak", "undisturbed"], rows)


def baseline(s: LaunchConfig, folder: Path, timeout: float) -> dict[str, Any]:
    """The same network, undisturbed (node.launcher.launch)."""
    summary = launch(s.updated(out=str(folder), timeout=max(30.0, timeout)))
    peers = RunFolder(folder).processes(s.graph.nodes)
    ends = finals(peers)
    rounds = round_times(peers)
    waits = [peer_waits(p, [], s.gossip.deadline_ceiling_s) for p in peers]
    components = {tuple(f["component"]) if f and f.get("component") else None
                  for f in ends.values()}
    return {"merged_acc": summary["merged_acc"], "mean_acc": summary["mean_acc"],
            "wall_s": summary["wall_s"], "interrupted": summary["interrupted"],
            "longest_round_s": max(rounds, default=None),
            "median_round_s": statistics.median(rounds) if rounds else None,
            "max_wait_s": max((w["wait_checked_s"] for w in waits if w["wait_checked_s"]
                               is not None), default=None),
            "max_wait_s_with_startup": max((f["max_wait_s"] for f in ends.values() if f),
                                           default=None),
            "merge_groups": len(components),
            "left": peer_processes(str(folder))}


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/soak.py", description=__doc__,
                                formatter_class=Formatter)
    g = p.add_argument_group("the network (node.config.LaunchConfig settings)")
    g.add_argument("--nodes", type=int, default=16, help="peer processes")
    g.add_argument("--topology", default="random-regular",
                   help="graph builder (a static one: ring, random-regular, ...)")
    g.add_argument("--degree", type=int, default=None,
                   help="degree of random-regular; None: the schema's (4)")
    g.add_argument("--rounds", type=int, default=40, help="training rounds")
    g.add_argument("--seed", type=int, default=0,
                   help="run seed: data, models, graph, and the soak's victims and delays")
    g.add_argument("--model", default="mlp", help="model (the data set is digits)")
    g.add_argument("--algorithm", default="dfedavg", help="dsgd, dfedavg, ...")
    g.add_argument("--local-steps", type=int, default=200,
                   help="local steps per round (makes a round last long enough for kills to "
                        "land in it; a digits MLP round is otherwise ~0.15 s)")
    g.add_argument("--deadline-floor-s", type=float, default=0.5,
                   help="shortest wait for a gossip step's messages")
    g.add_argument("--deadline-ceiling-s", type=float, default=3.0,
                   help="longest wait for a gossip or merge step's messages (what the waits "
                        "check holds the peers to)")
    g.add_argument("--startup-timeout-s", type=float, default=60.0,
                   help="how long the first rendezvous waits for peers still starting")
    g.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="any other flat setting of scripts/launch.py, e.g. lr=0.1 (repeatable)")
    k = p.add_argument_group("the kills")
    k.add_argument("--kill-from-round", type=int, default=2,
                   help="first kill once every peer completed this many rounds")
    k.add_argument("--kill-interval", type=float, default=2.0,
                   help="mean seconds between kill events (exponential)")
    k.add_argument("--max-down", type=int, default=None,
                   help="most peers down at once; None: half of them")
    k.add_argument("--max-kills", type=int, default=30, help="kills in all, at most")
    k.add_argument("--kill-for", type=float, default=120.0,
                   help="seconds after the first kill during which peers are killed")
    k.add_argument("--checkpoint-every", type=int, default=3,
                   help="kills number 1, 1+N, 1+2N, ... are aimed at a checkpoint write")
    k.add_argument("--aim-patience", type=float, default=10.0,
                   help="an aimed kill that sees no checkpoint write within this many seconds "
                        "kills anyway")
    k.add_argument("--restart-delay", type=float, nargs=2, default=[0.5, 3.0],
                   metavar=("MIN", "MAX"), help="a killed peer restarts after U(MIN, MAX) s")
    k.add_argument("--start-method", choices=("exec", "fork"), default="exec",
                   help="how peers start and restart: exec, a new interpreter each time (2-3 s, "
                        "as a real restart); fork, from the soak process, which loaded torch "
                        "and the data once (a restart then costs only --restart-delay)")
    k.add_argument("--no-adjacent", action="store_true",
                   help="never kill a neighbour of a peer that is down (so that every restarted "
                        "peer finds its neighbourhood ahead and can catch up)")
    k.add_argument("--quiet-factor", type=float, default=2.0,
                   help="no kill once the fastest peer, at its pace so far, has less than this "
                        "many times the longest downtime seen (kill to resumed) left")
    k.add_argument("--quiet-rounds", type=int, default=8,
                   help="no kill once the fastest peer has this many rounds left")
    k.add_argument("--quiet-s", type=float, default=15.0,
                   help="no kill once the fastest peer, at its pace so far, has less than this "
                        "many seconds left (a restart takes a few seconds of process start)")
    k.add_argument("--renice", type=int, default=10,
                   help="peers that serve run at this nice value, so that a restarting peer's "
                        "process start (~3 CPU-s of imports) is not starved by the others' "
                        "training on a machine with fewer cores than peers; 0: leave them be")
    c = p.add_argument_group("the checks and the run")
    c.add_argument("--min-kills", type=int, default=1,
                   help="fail unless at least this many kills happened (and, when some were "
                        "aimed, one of them landed mid-write)")
    c.add_argument("--max-rounds-lost", type=int, default=1,
                   help="a restart may resume at most this many rounds before the last round "
                        "it logged")
    c.add_argument("--wait-slack", type=float, default=0.5,
                   help="seconds a wait may overrun the deadline ceiling (event-loop latency on "
                        "a loaded machine)")
    c.add_argument("--no-baseline", action="store_true",
                   help="skip the undisturbed run")
    c.add_argument("--timeout", type=float, default=900.0,
                   help="seconds for the soak and the undisturbed run together; every process "
                        "is stopped when it passes")
    c.add_argument("--run-dir", default="runs/soak",
                   help="folder of both runs (soak/ and undisturbed/); an earlier soak there is "
                        "cleared")
    c.add_argument("--out", default=None,
                   help="JSON summary (default: RUN_DIR/summary.json)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_down is None:
        args.max_down = max(1, args.nodes // 2)
    if args.checkpoint_every < 1:
        parser.error("--checkpoint-every must be >= 1")
    if not 0 <= args.restart_delay[0] <= args.restart_delay[1]:
        parser.error("--restart-delay needs 0 <= MIN <= MAX")
    run_dir = Path(args.run_dir).resolve()
    out = Path(args.out) if args.out else run_dir / SUMMARY_FILE
    try:
        s = settings(args, run_dir / "soak")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        soak = run_soak(s, args, run_dir / "soak")
    except (ValueError, OSError) as exc:
        print(f"soak.py: error: {exc}", file=sys.stderr)
        return 2
    checks, figures = check(soak, s)
    base = None
    if not args.no_baseline and not soak.interrupted:
        base = undisturbed(s, args, run_dir / "undisturbed", seconds=args.timeout - soak.now(),
                           checks=checks)
    interrupted = soak.interrupted or bool(base and base["interrupted"])
    passed = all(c["passed"] for c in checks) and not interrupted
    summary = {"settings": s.to_dict(), "args": vars(args), "passed": passed,
               "interrupted": soak.interrupted, "checks": checks, "figures": figures,
               "undisturbed": base, "notes": soak.notes,
               "kills": [{k: v for k, v in kill.__dict__.items()
                          if not k.endswith("_mono") and k != "tmp_before"}
                         for kill in soak.kills]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))
    report(summary, s, out=out, run_dir=run_dir)
    if interrupted:
        return 130
    return 0 if passed else 1


def undisturbed(s: LaunchConfig, args: argparse.Namespace, folder: Path, *, seconds: float,
                checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline run, in the ``seconds`` the soak left; adds a failed check to ``checks`` if
    it left processes."""
    if not args.quiet:
        print("undisturbed run, same seed and settings ...", file=sys.stderr, flush=True)
    base = baseline(s, folder, seconds)
    if base["left"]:
        checks.append({"name": "processes (undisturbed)", "passed": False,
                       "detail": f"pids left: {base['left']}"})
    return base


def report(summary: dict[str, Any], s: LaunchConfig, *, out: Path, run_dir: Path) -> None:
    """The table, the checks, the notes, and the headline JSON line last."""
    figures, base = summary["figures"], summary["undisturbed"]
    print(table(figures, base, s.graph.nodes))
    print()
    for c in summary["checks"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']:<12} {c['detail']}")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"\nsummary: {out}")
    print(json.dumps({
        "peers": s.graph.nodes, "kills": figures["kills"],
        "kills_mid_checkpoint_write": figures["kills_mid_write"],
        "restarts": figures["restarts"], "rounds_lost_mean": figures["rounds_lost_mean"],
        "rounds_lost_max": figures["rounds_lost_max"],
        "longest_round_s": figures["longest_round_s"],
        "max_wait_survivors_s": figures["max_wait_survivors_s"],
        "checkpoint_failures": figures["checkpoint_failures"],
        "merge_groups": figures["merge_groups"],
        "merged_acc": figures["merged_acc"],
        "merged_acc_undisturbed": base["merged_acc"] if base else None,
        "processes_left": len(peer_processes(str(run_dir))),
        "passed": summary["passed"], "wall_s": figures["wall_s"]}))

if __name__ == "__main__":
    sys.exit(main())
