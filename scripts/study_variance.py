"""Plain vs variance-corrected averaging from independent and from shared initial models.

Tian et al. (2024, docs/algorithms.md §3) observe that averaging uncorrelated models shrinks each
layer's weight variance by about the number of models averaged, which stalls training on a
plateau; rescaling each averaged tensor back to the inputs' mean variance removes the plateau.
Here: 32 peers on a random 4-regular graph, digits, MLP 64-64-10, D-SGD (one minibatch per round,
as the authors' gossip-learning preset), peers starting from independent inits (the setting of
the problem) and, as a control, from one shared init. Reports rounds to reach a fixed mean test
accuracy, the final accuracy, and the per-layer weight variance trace; writes a plot and the
``study_variance`` section of docs/results.md; ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sim import SimConfig, format_table, write_results_section
from sim.study import SeedRunner, markdown_table, mean_std, study_parser

ROOT = Path(__file__).resolve().parents[1]
ARMS = {  # label -> (init, mixing)
    "independent init, average": ("independent", "average"),
    "independent init, variance-corrected": ("independent", "variance-corrected"),
    "shared init, average": ("shared", "average"),
    "shared init, variance-corrected": ("shared", "variance-corrected"),
}


class VarianceTrace:
    """Per evaluated round: the mean over peers of each weight matrix's variance."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.sim = None

    def on_start(self, sim) -> None:
        self.sim = sim

    def on_round(self, row: dict[str, Any]) -> None:
        layout = self.sim.learners[0].model.layout
        trace = {"round": row["round"]}
        for s in layout:
            if s.name.endswith("weight"):
                trace[s.name] = float(np.mean([float(lr.params[s.start:s.stop].var())
                                               for lr in self.sim.learners]))
        self.rows.append(trace)

    def on_end(self, summary: dict[str, Any]) -> None:
        pass


def rounds_to(rows: list[dict], target: float) -> int | None:
    return next((r["round"] for r in rows if r["mean_acc"] >= target), None)


def plot(results: dict[str, list], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, var_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, runs in results.items():
        style = "-" if label.startswith("independent") else "--"
        rounds = [r["round"] for r in runs[0][1]]
        acc = np.array([[r["mean_acc"] for r in rows] for _, rows, _ in runs])
        line, = acc_ax.plot(rounds, acc.mean(0), style, label=label)
        acc_ax.fill_between(rounds, acc.min(0), acc.max(0), alpha=0.15, color=line.get_color())
        trace = runs[0][2][0].rows
        name = [k for k in trace[0] if k != "round"][0]
        var_ax.plot([t["round"] for t in trace], [t[name] for t in trace], style,
                    color=line.get_color(), label=f"{label} ({name})")
    acc_ax.axhline(target, color="grey", lw=0.8, ls=":")
    acc_ax.set(xlabel="round", ylabel="mean peer test accuracy", ylim=(0, 1),
               title="accuracy (band: min-max over seeds)")
    acc_ax.legend(loc="lower right", fontsize=8)
    acc_ax.grid(alpha=0.3)
    var_ax.set(xlabel="round", ylabel="variance", yscale="log",
               title="first layer's weight variance (mean over peers, seed 0)")
    var_ax.legend(fontsize=7)
    var_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = study_parser(__doc__, ROOT)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--target", type=float, default=0.85, help="accuracy for rounds-to-target")
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runner = SeedRunner(args.seeds, args.quiet)
    results = {}
    for label, (init, mixing) in ARMS.items():
        config = SimConfig.of(nodes=args.nodes, topology="random-regular", degree=4,
                           algorithm="dsgd", rounds=args.rounds, init=init, mixing=mixing,
                           lr=args.lr, final_merge=False)
        results[label] = runner.run(label, config, lambda: [VarianceTrace()])
    header = ["arm", f"rounds to {args.target:.2f}", "final mean acc", "layer-1 var at r1",
              "layer-1 var final"]
    rows, figures = [], {}
    for label, runs in results.items():
        reach = [rounds_to(rows_, args.target) for _, rows_, _ in runs]
        hit = [r for r in reach if r is not None]
        reach_text = (f"{np.mean(hit):.0f} +- {np.std(hit):.0f}" if hit else "never") + \
            (f" ({len(hit)}/{len(reach)} seeds)" if len(hit) < len(reach) else "")
        finals = [s["mean_acc"] for s, _, _ in runs]
        traces = [obs[0].rows for _, _, obs in runs]
        name = [k for k in traces[0][0] if k != "round"][0]
        first = [t[0][name] for t in traces]
        last = [t[-1][name] for t in traces]
        rows.append([label, reach_text, mean_std(finals), f"{np.mean(first):.2e}",
                     f"{np.mean(last):.2e}"])
        figures[label] = {"rounds_to_target": [r for r in reach],
                          "final_mean_acc": round(float(np.mean(finals)), 4)}
    print(format_table(header, rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_variance.png"
    plot(results, args.target, figure)
    markdown = (
        "## Vanishing variance: plain vs variance-corrected averaging "
        "(scripts/study_variance.py)\n\n"
        f"{args.nodes} peers on a random 4-regular graph (Metropolis weights 1/5), digits IID, "
        f"MLP 64-64-10 (PyTorch's default init), D-SGD (one minibatch of 16 per round, lr "
        f"{args.lr}, momentum 0.9), {args.rounds} rounds, seeds 0..{args.seeds - 1}. "
        f"'Rounds to {args.target:.2f}': first round whose mean peer test accuracy reaches it "
        f"(mean +- std over seeds). Layer-1 variance: variance of the first weight matrix, mean "
        f"over peers, after round 1 and at the end.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        f"![accuracy and variance trace]({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_variance", markdown)
    print(json.dumps({"target": args.target, "seeds": args.seeds, "arms": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
