"""Observers that turn engine events into files, a progress bar and a final table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from node.text import format_table


class Recorder:
    """Keeps every evaluated round's row, and the summary, in memory."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

    def on_start(self, sim) -> None:
        pass

    def on_round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.summary = summary


class MetricsWriter(Recorder):
    """DIR/metrics.jsonl (one line per evaluated round), DIR/summary.json, DIR/accuracy.png."""

    def __init__(self, out_dir: str | Path, plot: bool = True):
        super().__init__()
        self.out = Path(out_dir)
        self.plot = plot
        self._fh: TextIO | None = None
        self._sim = None  # kept for the graph pictures drawn at the end

    def on_start(self, sim) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._fh = (self.out / "metrics.jsonl").open("w")
        self._sim = sim

    def on_round(self, row: dict[str, Any]) -> None:
        super().on_round(row)
        assert self._fh is not None
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def on_end(self, summary: dict[str, Any]) -> None:
        super().on_end(summary)
        if self._fh is not None:
            self._fh.close()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.plot:
            from sim.plots import plot_accuracy, plot_snapshots

            graph = summary["config"]["graph"]
            title = f"{summary['algorithm']['name']} on {graph['topology']}, " \
                    f"{graph['nodes']} peers, seed {summary['seed']}"
            plot_accuracy(self.rows, self.out / "accuracy.png", title=title,
                          events=summary.get("events", ()))
            if self._sim is not None and self._sim.snapshots:
                plot_snapshots(self._sim.snapshots, self._sim.data_holders, self.out)


class ProgressBar:
    """One tqdm line on stderr with the latest mean and merged accuracy."""

    def __init__(self, stream: TextIO = sys.stderr, disable: bool = False):
        self.stream, self.disable = stream, disable
        self._bar: tqdm | None = None

    def on_start(self, sim) -> None:
        self._bar = tqdm(total=sim.config.run.rounds, desc="rounds", unit="rnd", file=self.stream,
                         disable=self.disable, dynamic_ncols=True)

    def on_round(self, row: dict[str, Any]) -> None:
        assert self._bar is not None
        self._bar.update(row["round"] - self._bar.n)
        self._bar.set_postfix(mean_acc=f"{row['mean_acc']:.3f}", merged=f"{row['merged_acc']:.3f}",
                              refresh=False)

    def on_end(self, summary: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()


def summary_table(summary: dict[str, Any]) -> str:
    """Per-peer accuracy before and after the final merge, then the run's headline figures."""
    before = summary["node_accuracy"]
    after = summary.get("node_accuracy_after_merge", {})
    rows = [[int(i), summary["node_samples"][i], before[i], after.get(i, float("nan"))]
            for i in before]
    table = format_table(["peer", "samples", "accuracy", "after merge"], rows)
    footer = format_table(
        ["mean acc", "min acc", "merged acc", "consensus", "MB sent", "s/round"],
        [[summary["mean_acc"], summary["min_acc"], summary["merged_acc"],
          f"{summary['consensus_distance']:.3g}", f"{summary['bytes_sent'] / 1e6:.1f}",
          f"{summary['seconds_per_round']:.4f}"]])
    return table + "\n\n" + footer


def write_results_section(path: str | Path, key: str, markdown: str) -> None:
    """Replace (or append) the section of ``path`` between the markers of ``key``, so that each
    study rewrites only its own part of docs/results.md."""
    path = Path(path)
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
