"""Launch N real peer processes on 127.0.0.1 from a topology, watch them, inject churn, report.

Every peer is ``python -m node --config RUN/peerI.toml`` with its own port, data shard, state
folder and JSON-lines log. The launcher only reads the peers' logs and final summaries (no
control channel: the peers find each other by themselves), and it stops every process it started
when it ends, fails or is interrupted.
"""

from __future__ import annotations

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
    AlgorithmSection,
    AttackSection,
    DataSection,
    GossipSection,
    ModelSection,
    PeerConfig,
    dump_peer_config,
)
from node.learning.attacks import choose_adversaries
from node.learning.seeding import derive_seed
from sim.config import SimConfig
from sim.engine import build_topology
from sim.report import format_table


@dataclass
class LaunchSettings(SimConfig):
    """The simulator's settings (same names, same meaning) plus what real processes need."""

    nodes: int = 8
    rounds: int = 20
    out: str = "runs/launch"
    codec: str = "f32"
    deadline_floor_s: float = 2.0
    deadline_ceiling_s: float = 10.0
    startup_timeout_s: float = 120.0
    kill_fraction: float = 0.0
    kill_at_round: int = 0
    restart_after: float | None = None
    timeout: float = 1800.0
    quiet: bool = False


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


def peer_configs(s: LaunchSettings, addresses: list[tuple[str, int]], run_dir: Path,
                 listen_host: str | None = None) -> list[PeerConfig]:
    """One config per peer: id, address, neighbours from the topology, shard, algorithm, mixing
    rule, and the attack of the peers chosen as adversaries (the simulator's choice)."""
    topo = build_topology(s)
    if topo.time_varying:
        raise ValueError(f"--topology {s.topology} changes every round; real peers need a "
                         "static graph")
    if s.phi is not None:
        raise ValueError("--sybils/--phi: Sybil identities exist in the simulator only (one "
                         "process would have to answer for many ids); use --adversaries K")
    graph = topo.graph_at(0)
    adversaries = choose_adversaries(s.nodes, s.adversaries, derive_seed(s.seed, "adversaries")) \
        if s.attack else []
    mixing = s.mixing_section()
    configs = []
    for i in range(s.nodes):
        host, port = addresses[i]
        folder = run_dir / f"peer{i}"
        configs.append(PeerConfig(
            id=i, listen=f"{listen_host or host}:{port}", seed=s.seed, rounds=s.rounds,
            eval_every=s.eval_every,
            state_dir=str(folder), log_file=str(folder / "log.jsonl"), threads=s.threads,
            neighbours={j: f"http://{addresses[j][0]}:{addresses[j][1]}"
                        for j in sorted(graph.neighbors(i))},
            data=DataSection(dataset=s.dataset, partition=s.partition, alpha=s.alpha, shard=i,
                             num_shards=s.nodes, test_fraction=s.test_fraction,
                             classes_per_node=s.classes_per_node,
                             synthetic_alpha=s.synthetic_alpha,
                             synthetic_beta=s.synthetic_beta),
            model=ModelSection(name=s.model, hidden=s.hidden),
            algorithm=AlgorithmSection(name=s.algorithm, local_steps=s.local_steps,
                                       gossip_steps=s.gossip_steps, rho=s.rho, lr=s.lr,
                                       lr_decay=s.lr_decay, momentum=s.momentum,
                                       dampening=s.dampening, weight_decay=s.weight_decay,
                                       batch_size=s.batch_size, final_merge=s.final_merge),
            gossip=GossipSection(codec=s.codec, deadline_floor_s=s.deadline_floor_s,
                                 deadline_ceiling_s=s.deadline_ceiling_s,
                                 startup_timeout_s=s.startup_timeout_s),
            mixing=mixing,
            attack=AttackSection(kind=s.attack, scale=s.attack_scale) if i in adversaries
            else AttackSection()))
    return configs


def write_configs(configs: list[PeerConfig], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in configs:
        path = folder / f"peer{config.id}.toml"
        path.write_text(dump_peer_config(config))
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


def emit_configs(s: LaunchSettings, folder: str | Path, hosts_file: str | Path) -> list[Path]:
    """Per-peer configs for a deployment across machines; starts nothing."""
    addresses = read_hosts(hosts_file, s.nodes)
    configs = peer_configs(s, addresses, Path("state"), listen_host="0.0.0.0")
    for c in configs:  # paths relative to where each peer runs
        c.state_dir, c.log_file = f"state/peer{c.id}", f"state/peer{c.id}/log.jsonl"
    return write_configs(configs, Path(folder))


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

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stderr = open(self.state_dir / "stderr.txt", "a")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--config", str(self.config_path)],
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
            if event["event"] == "round":
                self.rounds[event["round"]] = event["accuracy"]

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


def _progress_line(peers: list[PeerProcess], total: int) -> str:
    done = [p.completed for p in peers]
    latest = [p.rounds[p.completed] for p in peers if p.completed and
              p.rounds[p.completed] is not None]
    acc = f"{np.mean(latest):.3f}" if latest else "-"
    return (f"round {min(done)}-{max(done)}/{total}  mean acc {acc}  "
            f"live peers {sum(p.running for p in peers)}/{len(peers)}")


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


def launch(s: LaunchSettings) -> dict[str, Any]:
    """Run the whole experiment; returns (and writes) the summary."""
    run_dir = Path(s.out)
    clear_previous_run(run_dir)
    addresses = [("127.0.0.1", port) for port in free_ports(s.nodes)]
    configs = peer_configs(s, addresses, run_dir)
    paths = write_configs(configs, run_dir)
    peers = [PeerProcess(path, Path(c.log_file), Path(c.state_dir))
             for path, c in zip(paths, configs)]
    rng = np.random.default_rng(derive_seed(s.seed, "churn"))
    victims = sorted(rng.choice(s.nodes, size=int(round(s.kill_fraction * s.nodes)),
                                replace=False).tolist()) if s.kill_fraction > 0 else []
    churn_done = not victims
    progress = ProgressLine()
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        for p in peers:
            p.start()
        while any(p.running for p in peers) or any(
                p.killed_at is not None and s.restart_after is not None for p in peers):
            if time.monotonic() - started > s.timeout:
                raise TimeoutError(f"run exceeded --timeout {s.timeout}s")
            for p in peers:
                p.read_log()
            if not churn_done and min(p.completed for p in peers) >= s.kill_at_round:
                for i in victims:
                    peers[i].proc.kill()
                    peers[i].proc.wait()
                    peers[i].killed_at = time.monotonic()
                churn_done = True
                if not s.quiet:
                    print(f"\nkilled peers {victims} (SIGKILL) at round {s.kill_at_round}",
                          file=sys.stderr)
            for p in peers:
                if p.killed_at is not None and s.restart_after is not None and \
                        time.monotonic() - p.killed_at >= s.restart_after:
                    p.killed_at, p.restarts = None, p.restarts + 1
                    p.start()
            if not s.quiet:
                progress.show(_progress_line(peers, s.rounds), time.monotonic() - started)
            time.sleep(0.2)
        for p in peers:
            p.read_log()
    finally:
        stop_all(peers)
        signal.signal(signal.SIGTERM, previous)
    if not s.quiet:
        print(file=sys.stderr)
    return summarise(s, peers, run_dir, time.monotonic() - started, victims)


def summarise(s: LaunchSettings, peers: list[PeerProcess], run_dir: Path, wall: float,
              victims: list[int]) -> dict[str, Any]:
    finals = {}
    for i, p in enumerate(peers):
        path = p.state_dir / "final.json"
        finals[i] = json.loads(path.read_text()) if path.exists() else None
    adversaries = choose_adversaries(s.nodes, s.adversaries, derive_seed(s.seed, "adversaries")) \
        if s.attack else []
    honest = {i: f for i, f in finals.items() if i not in adversaries}
    merged = [f["merged_accuracy"] for f in honest.values() if f and f["merged_accuracy"]
              is not None]
    accs = [f["accuracy"] for f in honest.values() if f and f["accuracy"] is not None]
    summary = {
        "seed": s.seed, "settings": s.to_dict(), "wall_s": round(wall, 2), "killed": victims,
        "adversaries": adversaries,
        "mean_acc": float(np.mean(accs)) if accs else None,
        "merged_acc": float(np.mean(merged)) if merged else None,
        "peers": {str(i): {
            "accuracy": f["accuracy"] if f else None,
            "merged_accuracy": f["merged_accuracy"] if f else None,
            "rounds_completed": f["rounds_completed"] if f else peers[i].completed,
            "bytes_in": f["bytes_in"] if f else None, "bytes_out": f["bytes_out"] if f else None,
            "rss_mb": f["rss_mb"] if f else None, "restarts": peers[i].restarts,
            "finished": f is not None} for i, f in finals.items()},
        "rounds_by_peer": {str(i): {str(r): a for r, a in sorted(p.rounds.items())}
                           for i, p in enumerate(peers)},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_launch(summary, run_dir / "accuracy.png")
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    rows = [[int(i), p["rounds_completed"], p["accuracy"] if p["accuracy"] is not None else "-",
             p["merged_accuracy"] if p["merged_accuracy"] is not None else "-",
             f"{(p['bytes_out'] or 0) / 1e6:.2f}", f"{(p['bytes_in'] or 0) / 1e6:.2f}",
             p["restarts"]] for i, p in summary["peers"].items()]
    table = format_table(["peer", "rounds", "accuracy", "merged acc", "MB out", "MB in",
                          "restarts"], rows)
    mean = summary["mean_acc"]
    merged = summary["merged_acc"]
    return (table + f"\n\nmean peer accuracy {mean if mean is None else round(mean, 4)}, "
            f"merged accuracy {merged if merged is None else round(merged, 4)}, "
            f"wall time {summary['wall_s']} s")


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
    s = summary["settings"]
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1),
           title=f"{s['nodes']} peer processes, {s['algorithm']} on {s['topology']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
