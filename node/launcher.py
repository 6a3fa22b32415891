"""Launch N real peer processes on 127.0.0.1 from a topology, watch them, inject churn, report.

Every peer is ``python -m node --config RUN/peerI.toml`` with its own port, data shard, state
folder and JSON-lines log. The launcher only reads the peers' logs and final summaries (no
control channel: the peers find each other by themselves), and it stops every process it started
when it ends, fails or is interrupted.

Join mode (``[launch] join``) starts an open-membership network the way one grows in practice:
a few bootstrap peers linked to each other, then the others one by one with ``--join`` and
nothing else, so what is measured is the membership protocol (admission, view, agreed edges,
state transfer), not a topology the launcher wired in advance.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from node.config import (
    LaunchConfig,
    PeerConfig,
)
from node.learning.seeding import derive_seed
from node.peer.keys import provision
from node.schema import dump_toml
from node.text import format_table
from node.zygote import Zygote, fork_available


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_configs(configs: list[PeerConfig], folder: Path, *, portable: bool = False
                  ) -> list[Path]:
    """``folder/peerI.toml`` for each config, after giving every peer an identity: a network
    authority and trust store in ``folder``, a key and a certificate per peer (node.peer.keys);
    so launched peers are authenticated by default. ``portable``: keys and certificates go
    next to the configs (peerI.key, peerI.cert) and the configs name them relative to
    ``folder``, for configs copied to other machines."""
    folder.mkdir(parents=True, exist_ok=True)
    if portable:
        configs = provision(configs, folder, relative_to=folder,
                            key_path=lambda c: folder / f"peer{c.peer.id}.key",
                            cert_path=lambda c: folder / f"peer{c.peer.id}.cert")
    else:
        configs = provision(configs, folder)
    paths = []
    for config in configs:
        path = folder / f"peer{config.peer.id}.toml"
        path.write_text(dump_toml(config))
        paths.append(path)
    return paths


def read_hosts(path: str | Path, count: int) -> list[tuple[str, int]]:
    """``HOST`` or ``HOST:PORT`` per line; fewer lines than peers are reused round-robin, with
    ports counting up from 8000 (or the line's port) per host."""
    lines = [ln.split("#")[0].strip() for ln in Path(path).read_text().splitlines()]
    hosts = [ln for ln in lines if ln]
    if not hosts:
        raise ValueError(f"--hosts: {path} lists no hosts")
    next_port: dict[str, int] = {}
    addresses = []
    for i in range(count):
        host, _, port = hosts[i % len(hosts)].partition(":")
        base = int(port) if port else 8000
        addresses.append((host, next_port.get(host, base)))
        next_port[host] = next_port.get(host, base) + 1
    return addresses


def emit_configs(s: LaunchConfig, folder: str | Path, hosts_file: str | Path) -> list[Path]:
    """Per-peer configs for a deployment across machines; starts nothing. Each peer listens on
    the address the hosts file gives it (where its neighbours will reach it), and its state
    folder and log are relative to where it runs. In join mode the joiners' configs name the
    bootstrap peers ([membership] bootstrap), as there is no launcher to pass --join."""
    addresses = read_hosts(hosts_file, s.graph.nodes)
    configs = experiment_configs(s, addresses, Path("state"), bootstrap_in_config=True)
    return write_configs(configs, Path(folder), portable=True)


def check_join_mode(s: LaunchConfig) -> None:
    """ValueError, in one sentence, for join-mode settings that cannot run."""
    c = s.launch
    if not c.join:
        if c.kill_bootstrap_at_round is not None:
            raise ValueError("--kill-bootstrap-at-round needs --join (only join mode has "
                             "bootstrap peers)")
        return
    if c.bootstrap >= s.graph.nodes:
        raise ValueError(f"--bootstrap {c.bootstrap} must be < --nodes {s.graph.nodes} (join "
                         "mode needs at least one peer that joins)")
    if c.kill_bootstrap_at_round is not None and c.kill_bootstrap_at_round >= s.run.rounds:
        raise ValueError(f"--kill-bootstrap-at-round {c.kill_bootstrap_at_round} must be < "
                         f"--rounds {s.run.rounds} (the run would be over)")
    if s.graph.file is not None:
        raise ValueError("--graph does not combine with --join (the joiners pick their "
                         "neighbours from the view)")


def bootstrap_urls(s: LaunchConfig, addresses: list[tuple[str, int]]) -> list[str]:
    return [f"http://{host}:{port}" for host, port in addresses[:s.launch.bootstrap]]


def experiment_configs(s: LaunchConfig, addresses: list[tuple[str, int]], run_dir: Path, *,
                       bootstrap_in_config: bool = False) -> list[PeerConfig]:
    """The peers' configs: from [graph] topology, or in join mode the bootstrap peers linked to
    each other and the joiners with no neighbours, every peer with open membership (a joiner
    accepts later joiners too). ``bootstrap_in_config``: the joiners' configs name the
    bootstrap URLs (for emitted configs; the launcher passes --join instead, which shows each
    process's role on its command line)."""
    check_join_mode(s)
    if not s.launch.join:
        return s.peer_configs(addresses, run_dir)
    # only the shared sections, shards and addresses of peer_configs are wanted: a complete
    # graph builds for any size (the topology asked for might not, and does not apply)
    flat = s.model_copy(update={"graph": s.graph.model_copy(update={
        "topology": "complete", "file": None, "max_degree": None})})
    urls = bootstrap_urls(s, addresses)
    configs = []
    for config in flat.peer_configs(addresses, run_dir):
        table = config.explicit()
        i = config.peer.id
        boot = i < s.launch.bootstrap
        table["neighbours"] = {str(j): url for j, url in enumerate(urls) if j != i} if boot \
            else {}
        table["membership"] = {**table.get("membership", {}), "dynamic": True,
                               **({"bootstrap": urls} if bootstrap_in_config and not boot
                                  else {})}
        configs.append(PeerConfig.from_table(table))
    return configs


@dataclass
class PeerProcess:
    config_path: Path
    log_path: Path
    state_dir: Path
    proc: subprocess.Popen | None = None
    log_offset: int = 0
    rounds: dict[int, float | None] = field(default_factory=dict)  # round -> accuracy
    killed_at: float | None = None
    restarts: int = 0
    serving: bool = False  # the process logged that it listens
    role: str = "static"  # static (from the topology); join mode: bootstrap or joiner
    join_urls: list[str] = field(default_factory=list)  # a joiner's --join
    spawned_at: float | None = None  # wall clock (time.time) of the first start
    start_at: float | None = None  # join mode: when (monotonic) a joiner is due to start
    joined: dict[str, Any] | None = None  # its "joined" log event
    first_mix_t: float | None = None  # wall clock of its "first_mix" log event
    left: bool = False  # it logged "left" (told its neighbours it stops)
    dropped: int = 0  # neighbours it dropped (suspect, unlinked or left)
    join_failed: str | None = None
    stopped_on_purpose: bool = False  # killed by the launcher and not to be restarted
    zygote: Zygote | None = None  # forks the peer (start_method fork); None: a new interpreter

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        join = ["--join", ",".join(self.join_urls)] if self.join_urls else []
        argv = ["--config", str(self.config_path), *join]
        if self.spawned_at is None:
            self.spawned_at = time.time()
        if self.zygote is not None:
            self.proc = self.zygote.spawn(argv, stderr_path=self.state_dir / "stderr.txt")
            return
        stderr = open(self.state_dir / "stderr.txt", "a")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "node", *argv],
                                     stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_log(self) -> None:
        """Consume new complete lines of the peer's JSON log."""
        if not self.log_path.exists():
            return
        with self.log_path.open() as fh:
            fh.seek(self.log_offset)
            chunk = fh.read()
        end = chunk.rfind("\n") + 1
        self.log_offset += len(chunk[:end].encode())
        for line in chunk[:end].splitlines():
            event = json.loads(line)
            kind = event["event"]
            if kind == "round":
                self.rounds[event["round"]] = event["accuracy"]
            elif kind in ("listening", "resumed"):
                self.serving = True
            elif kind == "joined":
                self.joined = {k: event.get(k) for k in ("round", "donor", "after_s")}
            elif kind == "first_mix" and self.first_mix_t is None:
                self.first_mix_t = event["t"]
            elif kind == "left":
                self.left = True
            elif kind in ("neighbour_dropped", "neighbour_left"):
                self.dropped += 1
            elif kind == "join_failed":
                self.join_failed = event.get("reason")

    @property
    def completed(self) -> int:
        return max(self.rounds, default=0)


def stop_all(peers: list[PeerProcess], grace: float = 5.0) -> None:
    """SIGTERM every running peer, then SIGKILL what is left after ``grace`` seconds."""
    for p in peers:
        if p.running:
            p.proc.terminate()
    deadline = time.monotonic() + grace
    for p in peers:
        if p.proc is not None:
            try:
                p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


def progress_text(peers: list[PeerProcess], total: int) -> str:
    """The live line: how many processes serve yet, then rounds done by the slowest and the
    fastest peer, and the mean accuracy of the peers' latest rounds; in join mode also how many
    joiners joined, how many peers left (said so, or were killed), and joins that failed.
    The slowest counts only peers that started and were not stopped on purpose (a joiner not
    started yet has done no round, and is not behind)."""
    serving = sum(p.serving and p.running for p in peers)
    joiners = [p for p in peers if p.role == "joiner"]
    join = ""
    if joiners:
        gone = sum(p.left or p.stopped_on_purpose for p in peers)
        failed = sum(p.join_failed is not None for p in joiners)
        join = (f"  joined {sum(p.joined is not None for p in joiners)}/{len(joiners)}"
                f"  left {gone}" + (f"  join failed {failed}" if failed else ""))
    if not any(p.rounds for p in peers):
        return f"starting: {serving}/{len(peers)} peers serving, no round done yet{join}"
    done = [p.completed for p in peers if p.proc is not None and not p.stopped_on_purpose] or \
        [p.completed for p in peers]
    latest = [p.rounds[p.completed] for p in peers if p.completed and
              p.rounds[p.completed] is not None and not p.stopped_on_purpose]
    acc = f"{np.mean(latest):.3f}" if latest else "-"
    span = f"{min(done)}" if min(done) == max(done) else \
        f"{min(done)} (slowest) to {max(done)} (fastest)"
    return (f"rounds done {span} of {total}  mean acc {acc}  "
            f"peers serving {serving}/{len(peers)}{join}")


class ProgressLine:
    """One live line on a terminal; elsewhere (CI logs) a new line only when it changes."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.last = stream, ""

    def show(self, text: str, elapsed: float) -> None:
        if self.stream.isatty():
            print(f"\r[{elapsed:6.1f}s] {text}   ", end="", file=self.stream, flush=True)
        elif text != self.last:
            print(f"[{elapsed:6.1f}s] {text}", file=self.stream, flush=True)
        self.last = text


def clear_previous_run(run_dir: Path) -> None:
    """Remove an earlier launch in ``run_dir`` (its peers would otherwise resume from their
    checkpoints); refuse a non-empty folder that is not a launcher run."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not (run_dir / "peer0.toml").exists():
        raise ValueError(f"--out {run_dir} is not empty and holds no earlier launch; pick a "
                         "new folder")
    for path in list(run_dir.glob("peer*")) + [run_dir / "summary.json",
                                                run_dir / "accuracy.png"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    print(f"cleared the earlier run in {run_dir}", file=sys.stderr)


def choose_victims(s: LaunchConfig) -> list[int]:
    """The peers the churn kills (sorted), drawn with the run seed."""
    nodes, fraction = s.graph.nodes, s.launch.kill_fraction
    if fraction <= 0:
        return []
    rng = np.random.default_rng(derive_seed(s.run.seed, "churn"))
    return sorted(rng.choice(nodes, size=int(round(fraction * nodes)), replace=False).tolist())


def start_peers_by(s: LaunchConfig, configs: list[PeerConfig]) -> Zygote | None:
    """The zygote that forks the peers ([launch] start_method fork, or auto on Linux), having
    loaded their data once; None when each peer is a new interpreter (exec)."""
    method = s.launch.start_method
    # A forked peer that runs torch on several threads deadlocks if the parent ever started
    # torch's OpenMP pool (its threads are not copied, their locks are: found in review). The
    # launcher's own process never computes before forking, but launch() called from a
    # program that did cannot tell; one-thread peers never touch the pool, so only they fork.
    threaded = s.run.threads > 1
    if method == "auto":
        method = "fork" if fork_available() and not threaded else "exec"
    if method == "exec":
        return None
    if not fork_available():
        raise ValueError("--start-method fork needs Linux (os.fork and PR_SET_PDEATHSIG); use "
                         "--start-method exec")
    if threaded:
        raise ValueError(f"--start-method fork needs --threads 1 (got {s.run.threads}): a "
                         "forked peer running torch on several threads can deadlock; use "
                         "--start-method exec")
    return Zygote(configs)


def launch(s: LaunchConfig) -> dict[str, Any]:
    """Run the whole experiment; returns (and writes) the summary. Ctrl-C (or SIGTERM) stops
    every peer and still writes the summary, the table's data and the plot of what was done,
    marked ``interrupted``."""
    check_join_mode(s)
    run_dir = Path(s.out).resolve()  # the peers' configs name their folders absolutely
    clear_previous_run(run_dir)
    addresses = [("127.0.0.1", port) for port in free_ports(s.graph.nodes)]
    configs = experiment_configs(s, addresses, run_dir)
    paths = write_configs(configs, run_dir)
    zygote = start_peers_by(s, configs)
    peers = [PeerProcess(path, Path(c.peer.log_file), Path(c.peer.state_dir), zygote=zygote)
             for path, c in zip(paths, configs)]
    churn = s.launch
    bootstrap = peers[:churn.bootstrap] if churn.join else []
    if churn.join:
        urls = bootstrap_urls(s, addresses)
        for i, p in enumerate(peers):
            p.role = "bootstrap" if i < churn.bootstrap else "joiner"
            p.join_urls = [] if i < churn.bootstrap else urls
    victims = choose_victims(s)
    churn_done = not victims
    kill_bootstrap_done = churn.kill_bootstrap_at_round is None
    joiners_scheduled = False
    quiet = s.run.quiet
    progress = ProgressLine()
    started = time.monotonic()
    interrupted = False
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with zygote.held() if zygote else contextlib.nullcontext():
            for p in bootstrap or peers:  # forked peers start together (Zygote.held)
                p.start()
        while any(p.running or p.start_at is not None for p in peers) or any(
                p.killed_at is not None and churn.restart_after is not None for p in peers) \
                or (churn.join and not joiners_scheduled):
            if time.monotonic() - started > churn.timeout:
                raise TimeoutError(f"run exceeded --timeout {churn.timeout}s")
            for p in peers:
                p.read_log()
            now = time.monotonic()
            if churn.join and not joiners_scheduled:
                if any(not p.running for p in bootstrap):
                    raise ChildProcessError("a bootstrap peer exited before it served; see "
                                       f"{bootstrap[0].state_dir.parent}/peerI/stderr.txt")
                if all(p.serving for p in bootstrap):  # joiners start once they can be joined
                    for k, p in enumerate(peers[churn.bootstrap:]):
                        p.start_at = now + k * churn.join_spacing_s
                    joiners_scheduled = True
            for p in peers:
                if p.start_at is not None and now >= p.start_at:
                    p.start_at = None
                    p.start()
            if not kill_bootstrap_done and \
                    min(p.completed for p in bootstrap) >= churn.kill_bootstrap_at_round:
                for p in bootstrap:
                    if p.running:
                        p.proc.kill()
                        p.proc.wait()
                    p.stopped_on_purpose, p.serving, p.killed_at = True, False, None
                kill_bootstrap_done = True
                if not quiet:
                    print(f"\nkilled the bootstrap peers {list(range(churn.bootstrap))} "
                          f"(SIGKILL) after round {churn.kill_bootstrap_at_round}",
                          file=sys.stderr)
            if not churn_done and min(p.completed for p in peers) >= churn.kill_at_round:
                for i in victims:
                    if peers[i].running:
                        peers[i].proc.kill()
                        peers[i].proc.wait()
                    peers[i].killed_at = time.monotonic()
                    peers[i].serving = False
                churn_done = True
                if not quiet:
                    print(f"\nkilled peers {victims} (SIGKILL) at round {churn.kill_at_round}",
                          file=sys.stderr)
            for p in peers:
                if p.killed_at is not None and churn.restart_after is not None and \
                        not p.stopped_on_purpose and \
                        time.monotonic() - p.killed_at >= churn.restart_after:
                    p.killed_at, p.restarts = None, p.restarts + 1
                    p.start()
            if not quiet:
                progress.show(progress_text(peers, s.run.rounds), time.monotonic() - started)
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop_all(peers)
        signal.signal(signal.SIGTERM, previous)
    for p in peers:
        p.read_log()
    if not quiet:
        print(file=sys.stderr)
    return summarise(s, peers, run_dir=run_dir, wall=time.monotonic() - started, victims=victims,
                     interrupted=interrupted)


def summarise(s: LaunchConfig, peers: list[PeerProcess], *, run_dir: Path, wall: float,
              victims: list[int], interrupted: bool = False) -> dict[str, Any]:
    finals = {}
    for i, p in enumerate(peers):
        path = p.state_dir / "final.json"
        finals[i] = json.loads(path.read_text()) if path.exists() else None
    seed = s.run.seed
    adversaries = s.adversaries()
    honest = {i: f for i, f in finals.items() if i not in adversaries}
    merged = [f["merged_accuracy"] for f in honest.values() if f and f["merged_accuracy"]
              is not None]
    accs = [f["accuracy"] for f in honest.values() if f and f["accuracy"] is not None]
    summary = {
        "seed": seed, "config": s.to_dict(), "wall_s": round(wall, 2), "killed": victims,
        "interrupted": interrupted, "adversaries": adversaries,
        "mean_acc": float(np.mean(accs)) if accs else None,
        "merged_acc": float(np.mean(merged)) if merged else None,
        "peers": {str(i): {
            "accuracy": f["accuracy"] if f else None,
            "merged_accuracy": f["merged_accuracy"] if f else None,
            "rounds_completed": f["rounds_completed"] if f else peers[i].completed,
            "bytes_in": f["bytes_in"] if f else None, "bytes_out": f["bytes_out"] if f else None,
            "rss_mb": f["rss_mb"] if f else None, "pss_mb": f.get("pss_mb") if f else None,
            "uss_mb": f.get("uss_mb") if f else None, "restarts": peers[i].restarts,
            "finished": f is not None, "component": f.get("component") if f else None,
            **(peer_join_record(peers[i], f) if s.launch.join else {}),
        } for i, f in finals.items()},
        "components": components(finals),
        "rounds_by_peer": {str(i): {str(r): a for r, a in sorted(p.rounds.items())}
                           for i, p in enumerate(peers)},
    }
    if s.launch.join:
        summary["join"] = join_record(s, peers, finals)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_launch(summary, run_dir / "accuracy.png")
    return summary


def components(finals: dict[int, dict[str, Any] | None]) -> list[list[int]]:
    """The distinct merge components the peers ended in (final.json "component"), largest
    first: one entry means the peers that finished agree they were one network."""
    found = {tuple(f["component"]) for f in finals.values() if f and f.get("component")}
    return [list(c) for c in sorted(found, key=lambda c: (-len(c), c))]


def peer_join_record(p: PeerProcess, final: dict[str, Any] | None) -> dict[str, Any]:
    """A peer's join-mode figures: its role, its join (round, donor, seconds after its start)
    and its first mix, from its log; its membership counters from final.json; whether it left
    (said so, or was killed by the launcher)."""
    latency = None
    if p.first_mix_t is not None and p.spawned_at is not None:
        latency = round(p.first_mix_t - p.spawned_at, 3)
    return {"role": p.role, "joined": p.joined, "join_failed": p.join_failed,
            "spawned_at": p.spawned_at, "start_to_first_mix_s": latency,
            "first_mix_s": final.get("first_mix_s") if final else None,
            "neighbours": final.get("neighbours") if final else None,
            "left": p.left, "killed": p.stopped_on_purpose,
            "membership": final.get("membership") if final else None}


def join_record(s: LaunchConfig, peers: list[PeerProcess],
                finals: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """The run's join-mode figures: joins, leaves, failed joins, and whether the peers still
    alive at the end were one component."""
    joiners = [i for i, p in enumerate(peers) if p.role == "joiner"]
    alive = sorted(i for i, f in finals.items() if f is not None)
    found = components(finals)
    return {
        "bootstrap": list(range(s.launch.bootstrap)), "joiners": len(joiners),
        "joined": sum(peers[i].joined is not None for i in joiners),
        "join_failed": [i for i in joiners if peers[i].join_failed is not None],
        "left": [i for i, p in enumerate(peers) if p.left or p.stopped_on_purpose],
        "killed_bootstrap_at_round": s.launch.kill_bootstrap_at_round
        if any(p.stopped_on_purpose for p in peers) else None,
        "finished": alive, "one_component": len(found) == 1 and found[0] == alive,
        "membership_bytes_out": sum(((f or {}).get("membership") or {}).get(
            "membership_bytes_out", 0) for f in finals.values()),
    }


def _component_labels(summary: dict[str, Any]) -> dict[tuple[int, ...], str]:
    return {tuple(c): chr(ord("A") + k) if k < 26 else str(k)
            for k, c in enumerate(summary.get("components", []))}


def summary_table(summary: dict[str, Any]) -> str:
    join = summary.get("join")
    labels = _component_labels(summary)
    rows = []
    for i, p in summary["peers"].items():
        row = [int(i), p["rounds_completed"], p["accuracy"] if p["accuracy"] is not None else "-",
               p["merged_accuracy"] if p["merged_accuracy"] is not None else "-",
               f"{(p['bytes_out'] or 0) / 1e6:.2f}", f"{(p['bytes_in'] or 0) / 1e6:.2f}",
               p["restarts"]]
        if join:
            joined = p["joined"]
            state = "killed" if p["killed"] else "left" if p["left"] else \
                "join failed" if p["join_failed"] else ""
            component = p.get("component")
            row += [p["role"], "-" if joined is None else joined["round"],
                    "-" if p["start_to_first_mix_s"] is None else p["start_to_first_mix_s"],
                    f"{((p['membership'] or {}).get('membership_bytes_out', 0)) / 1e3:.1f}",
                    labels.get(tuple(component), "-") if component else "-", state]
        rows.append(row)
    head = ["peer", "rounds", "accuracy", "merged acc", "MB out", "MB in", "restarts"]
    if join:
        head += ["role", "joined at", "first mix s", "member kB out", "component", "end"]
    table = format_table(head, rows)
    mean = summary["mean_acc"]
    merged = summary["merged_acc"]
    note = "\nINTERRUPTED: the figures are those of the rounds done before Ctrl-C" \
        if summary.get("interrupted") else ""
    text = (table + f"\n\nmean peer accuracy {mean if mean is None else round(mean, 4)}, "
            f"merged accuracy {merged if merged is None else round(merged, 4)}, "
            f"wall time {summary['wall_s']} s{note}")
    if join:
        parts = ", ".join(f"{labels[tuple(c)]} = {len(c)} peers" for c in summary["components"])
        failed = f", join failed: {join['join_failed']}" if join["join_failed"] else ""
        verdict = "one component of every peer alive" if join["one_component"] else \
            "NOT one component of the peers alive"
        text += (f"\njoin mode: {join['joined']}/{join['joiners']} joiners joined through "
                 f"bootstrap peers {join['bootstrap']}{failed}; left or killed: "
                 f"{join['left'] or 'none'}; components at the end: {parts or 'none'} "
                 f"({verdict})")
    return text


def plot_launch(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_round: dict[int, list[float]] = {}
    for rounds in summary["rounds_by_peer"].values():
        for r, acc in rounds.items():
            if acc is not None:
                by_round.setdefault(int(r), []).append(acc)
    if not by_round:
        return
    xs = sorted(by_round)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.fill_between(xs, [min(by_round[x]) for x in xs], [max(by_round[x]) for x in xs],
                    alpha=0.25, label="peers min-max")
    ax.plot(xs, [np.mean(by_round[x]) for x in xs], label="mean peer accuracy")
    if summary["merged_acc"] is not None:
        ax.axhline(summary["merged_acc"], color="tab:red", linestyle="--",
                   label="after the final merge")
    c = summary["config"]
    note = " (interrupted)" if summary.get("interrupted") else ""
    graph = f"join mode ({c['launch']['bootstrap']} bootstrap)" if c["launch"]["join"] \
        else c["graph"]["topology"]
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1),
           title=f"{c['graph']['nodes']} peer processes, {c['algorithm']['name']} on "
                 f"{graph}{note}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
