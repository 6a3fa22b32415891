"""Plots drawn after a run from its recorded rows (never inside the training loop)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Mean peer accuracy with its min-max band, and the merged model's accuracy, per round."""
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.fill_between(rounds, [r["min_acc"] for r in rows], [r["max_acc"] for r in rows],
                    alpha=0.25, color="tab:blue", label="peers min-max")
    ax.plot(rounds, [r["mean_acc"] for r in rows], color="tab:blue", label="mean peer accuracy")
    ax.plot(rounds, [r["merged_acc"] for r in rows], color="tab:red", linestyle="--",
            label="merged model (average)")
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
