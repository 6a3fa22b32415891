"""Disaster study: losing data holders vs losing relays, at random vs the hubs (docs/algorithms.md
§6).

Palmieri et al. (ICT-DM 2023) found that on a Barabasi-Albert graph, decentralized learning
suffers more from losing connectivity than from losing data. Here: a BA graph (m=2), half of the
peers hold IID shards of digits and half only relay, softmax regression, DFedAvg; in the middle
of training a disruption removes 10, 30 or 50 percent of the peers, chosen among data holders or
among relays, at random or by degree (the hubs). Reports the survivors' final accuracy, the size
of the largest component, the accuracy inside and outside it and of isolated peers (mean +- std
over seeds), draws a plot, writes the ``study_disaster`` section of docs/results.md, and ends
with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sim import Recorder, SimConfig, format_table, write_results_section
from sim.engines import build_simulation
from sim.scenario import Event
from sim.study import markdown_table, mean_std, study_parser

ROOT = Path(__file__).resolve().parents[1]
CASES = [("data", "random"), ("relays", "random"), ("data", "degree"), ("relays", "degree")]


def run(config: SimConfig, events: list[Event]) -> list[dict]:
    recorder = Recorder()
    build_simulation(config, [recorder], events).run()
    return recorder.rows


def plot(results: dict, fractions: list[float], baseline: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    panels = [("final", "survivors' final mean accuracy"),
              ("largest", "largest component (peers)"),
              ("isolated_acc", "accuracy of isolated peers")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for among, select in CASES:
            means = []
            for f in fractions:
                values = [v for v in results[(among, select, f)][key] if v is not None]
                means.append(np.mean(values) if values else np.nan)
            ax.plot([100 * f for f in fractions], means, marker="o",
                    linestyle="-" if select == "degree" else "--",
                    label=f"remove {among}, {select}")
        if key == "final":
            ax.axhline(np.mean(baseline), color="grey", ls=":", label="no disruption")
        ax.set(xlabel="share of the group removed (%)", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = study_parser(__doc__, ROOT)
    p.add_argument("--nodes", type=int, default=60)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--disrupt-at", type=int, default=20)
    p.add_argument("--fractions", default="0.1,0.3,0.5")
    p.add_argument("--engine", default="batched", help="batched or reference")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fractions = [float(v) for v in args.fractions.split(",")]
    base = SimConfig.of(nodes=args.nodes, topology="barabasi-albert", attach=2, data_fraction=0.5,
                     model="logreg", algorithm="dfedavg", rounds=args.rounds,
                     partition="iid", final_merge=False, engine=args.engine)
    baseline, before = [], []
    for seed in range(args.seeds):
        rows = run(base.updated(seed=seed), [])
        baseline.append(rows[-1]["mean_acc"])
        before.append(rows[args.disrupt_at - 1]["mean_acc"])
    results = {}
    for among, select in CASES:
        for f in fractions:
            found = {k: [] for k in ("final", "largest", "components", "isolated",
                                     "isolated_acc", "outside_acc", "largest_acc")}
            for seed in range(args.seeds):
                event = Event("crash", round=args.disrupt_at, fraction=f, select=select,
                              among=among)
                last = run(base.updated(seed=seed), [event])[-1]
                found["final"].append(last["mean_acc"])
                found["largest"].append(last["largest_component"])
                found["components"].append(last["components"])
                found["isolated"].append(last["isolated"])
                found["isolated_acc"].append(last["acc_isolated"])
                found["outside_acc"].append(last["acc_outside"])
                found["largest_acc"].append(last["acc_largest"])
            results[(among, select, f)] = found
            if not args.quiet:
                print(f"remove {f:.0%} of {among} by {select}: final "
                      f"{np.mean(found['final']):.4f}, largest component "
                      f"{np.mean(found['largest']):.1f}", file=sys.stderr, flush=True)
    header = ["removed (of group)", "group", "by", "survivors acc", "largest comp", "components",
              "acc in largest", "acc outside", "isolated", "isolated acc"]
    rows = [[f"{f:.0%}", among, select, mean_std(r["final"]), mean_std(r["largest"], 1),
             mean_std(r["components"], 1), mean_std(r["largest_acc"]), mean_std(r["outside_acc"]),
             mean_std(r["isolated"], 1), mean_std(r["isolated_acc"])]
            for (among, select, f), r in sorted(results.items(), key=lambda kv: (kv[0][2],
                                                                                  kv[0][1],
                                                                                  kv[0][0]))]
    print(format_table(header, rows))
    print(f"\nno disruption: {mean_std(baseline)}; mean accuracy at round {args.disrupt_at}: "
          f"{mean_std(before)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_disaster.png"
    plot(results, fractions, baseline, figure)
    markdown = (
        "## Disaster: losing data holders vs relays, random vs hubs (scripts/study_disaster.py)"
        "\n\n"
        f"Barabasi-Albert graph of {args.nodes} peers (m=2), half of them (drawn by the seed) "
        "holding IID shards of digits, half relaying only; softmax regression, DFedAvg (K=5, "
        f"lr 0.05), Metropolis weights over the surviving neighbours, {args.rounds} rounds; at "
        f"round {args.disrupt_at} the given share of one group crashes: of the data holders or "
        "of the relays (each group is half the peers, so 50% of a group is 25% of all peers), "
        "chosen at random or by degree. Final figures at the last round, "
        f"mean +- std over seeds 0..{args.seeds - 1} ('-': no such peers in any seed). "
        f"Without disruption: {mean_std(baseline)}; mean accuracy at round {args.disrupt_at}: "
        f"{mean_std(before)}.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        f"![survivors' accuracy, largest component, isolated peers]"
        f"({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_disaster", markdown)
    print(json.dumps({"seeds": args.seeds, "baseline": round(float(np.mean(baseline)), 4),
                      "final_acc": {f"{among}/{select}/{f:g}": round(float(np.mean(
                          r["final"])), 4) for (among, select, f), r in results.items()},
                      "largest_component": {f"{among}/{select}/{f:g}": round(float(np.mean(
                          r["largest"])), 1) for (among, select, f), r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
