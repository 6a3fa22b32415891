"""What every study script needs: run a config over seeds, summarise with mean +- std, and
write a markdown table. The scripts in ``scripts/study_*.py`` stay thin entry points."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from sim.config import SimConfig
from sim.engine import Observer, Simulation
from sim.report import Recorder


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
            summary = Simulation.from_config(replace(config, seed=seed),
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


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``m +- s`` over seeds (population std, as in docs/results.md)."""
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
