"""What every study script needs: run a config over seeds, summarise with mean +- std, and
write a markdown table. The scripts in ``scripts/study_*.py`` stay thin entry points."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from node.config import SimConfig
from sim.engine import Observer, Simulation
from sim.report import Recorder


def study_parser(doc: str | None, root: Path, seeds: int = 3) -> argparse.ArgumentParser:
    """A parser with what every study takes: --seeds, --out (figures), --results (the markdown
    file whose section it rewrites) and --quiet; the script adds its own options."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=seeds, help="seeds 0..N-1")
    p.add_argument("--out", default=str(root / "docs" / "figures"), help="folder for the plot")
    p.add_argument("--results", default=str(root / "docs" / "results.md"),
                   help="markdown file whose section this study rewrites")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


class SeedRunner:
    """Runs configs, one line of progress per run on stderr (never inside the engine)."""

    def __init__(self, seeds: int, quiet: bool = False):
        self.seeds = seeds
        self.quiet = quiet
        self.start = time.perf_counter()
        self.runs = 0

    def run(self, label: str, config: SimConfig,
            observers: Callable[[], Iterable[Observer]] = tuple
            ) -> list[tuple[dict[str, Any], list[dict[str, Any]], list[Observer]]]:
        """``config`` for seeds 0..seeds-1: [(summary, evaluated rows, extra observers)]."""
        out = []
        for seed in range(self.seeds):
            extra = list(observers())
            recorder = Recorder()
            summary = Simulation.from_config(config.updated(seed=seed),
                                             [recorder, *extra]).run()
            out.append((summary, recorder.rows, extra))
            self.runs += 1
            if not self.quiet:
                line = f"mean {summary['mean_acc']:.4f}"
                if "attack_success" in summary:
                    line += f"  attack {summary['attack_success']:.4f}"
                print(f"[{time.perf_counter() - self.start:7.1f}s] {label:38s} seed {seed}: "
                      f"{line}", file=sys.stderr, flush=True)
        return out


def mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    """``m +- s`` over seeds (population std, as in docs/results.md); None values (a figure a
    seed did not have) are left out, and ``-`` stands for none at all."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    return f"{np.mean(present):.{digits}f} +- {np.std(present):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
