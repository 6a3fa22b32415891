"""What a launch leaves behind and says: the run folder's file names, summary.json, the table
and the accuracy plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.config import PEER_LOG, LaunchConfig
from node.peer.observe import FINAL_SUMMARY
from node.supervisor import STDERR_FILE, PeerProcess
from node.text import format_table

SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy.png"


@dataclass(frozen=True)
class RunFolder:
    """The files of a launched run under ``path``: peerI.toml, the peer's folder peerI/ (its
    log, stderr, checkpoint and final summary, as LaunchConfig.peer_configs lays it out),
    summary.json and accuracy.png."""

    path: Path

    def config(self, i: int) -> Path:
        return self.path / f"peer{i}.toml"

    def peer(self, i: int) -> Path:
        return self.path / f"peer{i}"

    def log(self, i: int) -> Path:
        return self.peer(i) / PEER_LOG

    def final(self, i: int) -> Path:
        return self.peer(i) / FINAL_SUMMARY

    def stderr(self, i: int) -> Path:
        return self.peer(i) / STDERR_FILE

    def processes(self, count: int) -> list[PeerProcess]:
        """The first ``count`` peers of the run in this folder, by their files (not started):
        to read the logs and final summaries of a run that is over."""
        return [PeerProcess(self.config(i), self.log(i), self.peer(i)) for i in range(count)]

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def plot(self) -> Path:
        return self.path / PLOT_FILE


def summarise(s: LaunchConfig, peers: Sequence[PeerProcess], *, run_dir: Path, wall: float,
              victims: list[int], interrupted: bool = False) -> dict[str, Any]:
    """summary.json's figures from the peers' final summaries and logs; written, with the
    plot, to ``run_dir``."""
    finals = {i: p.final() for i, p in enumerate(peers)}
    adversaries = s.adversaries()
    honest = [f for i, f in finals.items() if f and i not in adversaries]
    summary = {
        "seed": s.run.seed, "config": s.to_dict(), "wall_s": round(wall, 2), "killed": victims,
        "interrupted": interrupted, "adversaries": adversaries,
        "mean_acc": mean_of(honest, "accuracy"),
        "merged_acc": mean_of(honest, "merged_accuracy"),
        "peers": {str(i): peer_record(s, peers[i], f) for i, f in finals.items()},
        "components": components(finals),
        "rounds_by_peer": {str(i): {str(r): a for r, a in sorted(p.rounds.items())}
                           for i, p in enumerate(peers)},
    }
    if s.launch.join:
        summary["join"] = join_record(s, peers, finals)
    folder = RunFolder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.summary.write_text(json.dumps(summary, indent=1))
    plot_launch(summary, folder.plot)
    return summary


def mean_of(finals: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the final summaries that have it; None if none has."""
    values = [f[key] for f in finals if f[key] is not None]
    return float(np.mean(values)) if values else None


def peer_record(s: LaunchConfig, p: PeerProcess, f: dict[str, Any] | None) -> dict[str, Any]:
    """One peer's entry of summary.json: from its final summary (None: it did not finish)."""
    def final(key: str) -> Any:
        return f.get(key) if f else None

    return {
        "accuracy": final("accuracy"), "merged_accuracy": final("merged_accuracy"),
        "rounds_completed": f["rounds_completed"] if f else p.completed,
        "bytes_in": final("bytes_in"), "bytes_out": final("bytes_out"),
        "rss_mb": final("rss_mb"), "pss_mb": final("pss_mb"), "uss_mb": final("uss_mb"),
        "restarts": p.restarts, "finished": f is not None, "component": final("component"),
        **(peer_join_record(p, f) if s.launch.join else {}),
    }


def components(finals: dict[int, dict[str, Any] | None]) -> list[list[int]]:
    """The distinct merge components the peers ended in (final summaries' "component"), largest
    first: one entry means the peers that finished agree they were one network."""
    found = {tuple(f["component"]) for f in finals.values() if f and f.get("component")}
    return [list(c) for c in sorted(found, key=lambda c: (-len(c), c))]


def peer_join_record(p: PeerProcess, final: dict[str, Any] | None) -> dict[str, Any]:
    """A peer's join-mode figures: its role, its join (round, donor, seconds after its start)
    and its first mix, from its log; its membership counters from its final summary; whether
    it left (said so, or was killed by the launcher)."""
    latency = None
    if p.first_mix_t is not None and p.spawned_at is not None:
        latency = round(p.first_mix_t - p.spawned_at, 3)
    return {"role": p.role, "joined": p.joined, "join_failed": p.join_failed,
            "spawned_at": p.spawned_at, "start_to_first_mix_s": latency,
            "first_mix_s": final.get("first_mix_s") if final else None,
            "neighbours": final.get("neighbours") if final else None,
            "left": p.left, "killed": p.stopped_on_purpose,
            "membership": final.get("membership") if final else None}


def join_record(s: LaunchConfig, peers: Sequence[PeerProcess],
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


def component_labels(summary: dict[str, Any]) -> dict[tuple[int, ...], str]:
    """A, B, ... for the components of summary.json, largest first."""
    return {tuple(c): chr(ord("A") + k) if k < 26 else str(k)
            for k, c in enumerate(summary.get("components", []))}


def summary_table(summary: dict[str, Any]) -> str:
    """The table of peers and the lines under it, as scripts/launch.py prints them."""
    join = summary.get("join")
    labels = component_labels(summary)
    rows = [table_row(int(i), p, labels if join else None) for i, p in summary["peers"].items()]
    head = ["peer", "rounds", "accuracy", "merged acc", "MB out", "MB in", "restarts"]
    if join:
        head += ["role", "joined at", "first mix s", "member kB out", "component", "end"]
    mean, merged = summary["mean_acc"], summary["merged_acc"]
    note = "\nINTERRUPTED: the figures are those of the rounds done before Ctrl-C" \
        if summary.get("interrupted") else ""
    text = (format_table(head, rows)
            + f"\n\nmean peer accuracy {mean if mean is None else round(mean, 4)}, "
            f"merged accuracy {merged if merged is None else round(merged, 4)}, "
            f"wall time {summary['wall_s']} s{note}")
    if join:
        text += "\n" + join_line(summary, labels)
    return text


def table_row(i: int, p: dict[str, Any], labels: dict[tuple[int, ...], str] | None
              ) -> list[Any]:
    """One peer's row; with ``labels`` (join mode) its role, join and component too."""
    row = [i, p["rounds_completed"], dash(p["accuracy"]), dash(p["merged_accuracy"]),
           f"{(p['bytes_out'] or 0) / 1e6:.2f}", f"{(p['bytes_in'] or 0) / 1e6:.2f}",
           p["restarts"]]
    if labels is None:
        return row
    joined, component = p["joined"], p.get("component")
    state = "killed" if p["killed"] else "left" if p["left"] else \
        "join failed" if p["join_failed"] else ""
    return row + [p["role"], "-" if joined is None else joined["round"],
                  dash(p["start_to_first_mix_s"]),
                  f"{((p['membership'] or {}).get('membership_bytes_out', 0)) / 1e3:.1f}",
                  labels.get(tuple(component), "-") if component else "-", state]


def dash(value: Any) -> Any:
    return "-" if value is None else value


def join_line(summary: dict[str, Any], labels: dict[tuple[int, ...], str]) -> str:
    """The table's join-mode line: joins, leaves, and the components at the end."""
    join = summary["join"]
    parts = ", ".join(f"{labels[tuple(c)]} = {len(c)} peers" for c in summary["components"])
    failed = f", join failed: {join['join_failed']}" if join["join_failed"] else ""
    verdict = "one component of every peer alive" if join["one_component"] else \
        "NOT one component of the peers alive"
    return (f"join mode: {join['joined']}/{join['joiners']} joiners joined through "
            f"bootstrap peers {join['bootstrap']}{failed}; left or killed: "
            f"{join['left'] or 'none'}; components at the end: {parts or 'none'} "
            f"({verdict})")


def accuracy_by_round(summary: dict[str, Any]) -> dict[int, list[float]]:
    """Every peer's accuracy at each round it logged one."""
    by_round: dict[int, list[float]] = {}
    for rounds in summary["rounds_by_peer"].values():
        for r, acc in rounds.items():
            if acc is not None:
                by_round.setdefault(int(r), []).append(acc)
    return by_round


def plot_title(summary: dict[str, Any]) -> str:
    c = summary["config"]
    note = " (interrupted)" if summary.get("interrupted") else ""
    graph = f"join mode ({c['launch']['bootstrap']} bootstrap)" if c["launch"]["join"] \
        else c["graph"]["topology"]
    return (f"{c['graph']['nodes']} peer processes, {c['algorithm']['name']} on "
            f"{graph}{note}")


def plot_launch(summary: dict[str, Any], path: Path) -> None:
    """The peers' accuracy by round (mean, and the min-max band) and the merged accuracy;
    nothing when no round was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_round = accuracy_by_round(summary)
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
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title=plot_title(summary))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
