"""Plots drawn after a run from its recorded rows (never inside the training loop)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import networkx as nx
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "",
                  events: Sequence[dict[str, Any]] = ()) -> None:
    """Mean peer accuracy with its min-max band, and the merged model's accuracy, per round;
    with scenario events, a dotted line at each event and the accuracy inside and outside the
    largest component."""
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.fill_between(rounds, [r["min_acc"] for r in rows], [r["max_acc"] for r in rows],
                    alpha=0.25, color="tab:blue", label="peers min-max")
    ax.plot(rounds, [r["mean_acc"] for r in rows], color="tab:blue", label="mean peer accuracy")
    ax.plot(rounds, [r["merged_acc"] for r in rows], color="tab:red", linestyle="--",
            label="merged model (average)")
    if rows and "acc_largest" in rows[0]:
        ax.plot(rounds, [r["acc_largest"] for r in rows], color="tab:green",
                label="largest component")
        outside = [np.nan if r["acc_outside"] is None else r["acc_outside"] for r in rows]
        if not np.all(np.isnan(outside)):
            ax.plot(rounds, outside, color="tab:orange", label="outside largest component")
    for e in events:
        ax.axvline(e["round"], color="grey", linestyle=":", linewidth=1)
        ax.text(e["round"], 0.02, f" {e['kind']}", rotation=90, fontsize=7, color="grey",
                va="bottom")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_snapshots(snapshots: Sequence[dict[str, Any]], data_holders: set[int],
                   out_dir: str | Path) -> list[Path]:
    """One picture per disruptive round: the graph before and after, failed peers as red
    crosses, relays (no data) as hollow circles, data holders filled. Node positions come from
    the ``pos`` attribute (geometric graphs) or one seeded layout shared by every picture."""
    if not snapshots:
        return []
    first = snapshots[0]["before"]
    pos = nx.get_node_attributes(first, "pos") or nx.spring_layout(first, seed=0)
    paths = []
    for snap in snapshots:
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        for ax, key, alive_key, name in ((axes[0], "before", "alive_before", "before"),
                                         (axes[1], "after", "alive_after", "after")):
            graph, alive = snap[key], snap[alive_key]
            live = graph.subgraph(alive)
            nx.draw_networkx_edges(live, pos, ax=ax, alpha=0.4, width=0.7)
            holders = [v for v in alive if v in data_holders]
            relays = [v for v in alive if v not in data_holders]
            dead = [v for v in graph if v not in alive]
            nx.draw_networkx_nodes(live, pos, nodelist=holders, node_size=40, ax=ax,
                                   node_color="tab:blue", label="data holder")
            nx.draw_networkx_nodes(live, pos, nodelist=relays, node_size=40, ax=ax,
                                   node_color="white", edgecolors="tab:blue", label="relay")
            if dead:
                nx.draw_networkx_nodes(graph, pos, nodelist=dead, node_size=40, ax=ax,
                                       node_shape="x", node_color="tab:red", label="down")
            parts = nx.number_connected_components(live) if alive else 0
            ax.set_title(f"{name} round {snap['round']}: {len(alive)} alive, {parts} component"
                         f"{'s' if parts != 1 else ''}")
            ax.axis("off")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.suptitle(", ".join(snap["events"]))
        fig.tight_layout()
        path = Path(out_dir) / f"graph_round{snap['round']}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
