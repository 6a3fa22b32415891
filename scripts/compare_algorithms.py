"""D-SGD vs DFedAvg vs DFedSAM vs DFedSAM-MGS on a 16-node ring, Dirichlet(0.3) digits.

Runs every algorithm for several seeds, prints a table of the mean and standard deviation of the
final mean peer accuracy and of the merged model's accuracy, writes a plot and the
``compare_algorithms`` section of docs/results.md, and ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sim import Recorder, SimConfig, Simulation, format_table, write_results_section

ROOT = Path(__file__).resolve().parents[1]
ARMS = {  # label -> algorithm settings
    "D-SGD": {"algorithm": "dsgd"},
    "DFedAvg": {"algorithm": "dfedavg"},
    "DFedSAM": {"algorithm": "dfedsam"},
    "DFedSAM-MGS (Q=4)": {"algorithm": "dfedsam-mgs", "gossip_steps": 4},
}


def run_arm(settings: dict, seed: int, args) -> tuple[dict, list[dict]]:
    algorithm = settings["algorithm"]
    config = SimConfig.of(
        nodes=args.nodes, topology="ring", partition="dirichlet", alpha=args.alpha,
        rounds=args.rounds, local_steps=None if algorithm == "dsgd" else args.local_steps,
        rho=None if algorithm in ("dsgd", "dfedavg") else args.rho, seed=seed,
        eval_every=args.eval_every, **settings)
    curve = Recorder()
    summary = Simulation.from_config(config, [curve]).run()
    return summary, curve.rows


def plot(curves: dict[str, list[list[dict]]], finals: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, runs in curves.items():
        rounds = [r["round"] for r in runs[0]]
        acc = np.array([[r["mean_acc"] for r in run] for run in runs])
        line, = left.plot(rounds, acc.mean(0), label=label)
        left.fill_between(rounds, acc.min(0), acc.max(0), alpha=0.15, color=line.get_color())
    left.set(xlabel="round", ylabel="mean peer test accuracy", ylim=(0, 1),
             title="mean peer accuracy (band: min-max over seeds)")
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    labels = list(finals)
    x = np.arange(len(labels))
    for offset, key, name in ((-0.2, "mean", "mean peer"), (0.2, "merged", "merged model")):
        right.bar(x + offset, [np.mean(finals[k][key]) for k in labels], 0.4,
                  yerr=[np.std(finals[k][key]) for k in labels], capsize=4, label=name)
    right.set_xticks(x, labels, rotation=10)
    lows = [np.min(finals[k]["mean"]) for k in labels]
    right.set(ylabel="final test accuracy", ylim=(max(0.0, min(lows) - 0.1), 1.0),
              title="final accuracy (mean +- std over seeds)")
    right.legend(loc="lower right")
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--results", default=str(ROOT / "docs" / "results.md"),
                   help="markdown file whose compare_algorithms section is rewritten")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    finals: dict[str, dict] = {}
    curves: dict[str, list] = {}
    start = time.perf_counter()
    for label, settings in ARMS.items():
        finals[label] = {"mean": [], "merged": [], "consensus": [], "mb": []}
        curves[label] = []
        for seed in range(args.seeds):
            summary, rows = run_arm(settings, seed, args)
            finals[label]["mean"].append(summary["mean_acc"])
            finals[label]["merged"].append(summary["merged_acc"])
            finals[label]["consensus"].append(summary["consensus_distance"])
            finals[label]["mb"].append(summary["bytes_sent"] / 1e6)
            curves[label].append(rows)
            print(f"[{time.perf_counter() - start:6.1f}s] {label:18s} seed {seed}: "
                  f"mean {summary['mean_acc']:.4f}  merged {summary['merged_acc']:.4f}",
                  file=sys.stderr, flush=True)
    base = np.array(finals["DFedAvg"]["mean"])

    def paired_gain(f: dict) -> str:  # same seed, same split: differences cancel split luck
        gain = np.array(f["mean"]) - base
        return f"{gain.mean():+.4f} +- {gain.std():.4f}"

    rows = [[label, f"{np.mean(f['mean']):.4f} +- {np.std(f['mean']):.4f}", paired_gain(f),
             f"{np.mean(f['merged']):.4f} +- {np.std(f['merged']):.4f}",
             f"{np.mean(f['consensus']):.3g}", f"{np.mean(f['mb']):.0f}"]
            for label, f in finals.items()]
    header = ["algorithm", "mean peer acc", "vs DFedAvg (paired)", "merged acc",
              "consensus dist", "MB sent"]
    table = format_table(header, rows)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "compare_algorithms.png"
    plot(curves, finals, figure)
    md_rows = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    markdown = (
        f"## D-SGD, DFedAvg, DFedSAM, DFedSAM-MGS on a ring (scripts/compare_algorithms.py)\n\n"
        f"{args.nodes} peers on a ring (Metropolis weights 1/3), digits split Dirichlet "
        f"alpha={args.alpha}, MLP 64-64-10, {args.rounds} rounds, K={args.local_steps} local "
        f"steps (D-SGD: 1), batch 16, lr 0.05 x 0.998^t, momentum 0.9, weight decay 5e-4, "
        f"rho={args.rho}, seeds 0..{args.seeds - 1}. Mean +- std over seeds of the final "
        f"figures; 'merged acc' is the exact average of all peers' final models.\n\n"
        f"| {' | '.join(header)} |\n|{'---|' * len(header)}\n{md_rows}\n\n"
        f"![accuracy per round and final accuracy]"
        f"({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "compare_algorithms", markdown)
    print(json.dumps({label.split(" ")[0]: {"mean_acc": round(float(np.mean(f["mean"])), 4),
                                            "mean_acc_std": round(float(np.std(f["mean"])), 4),
                                            "merged_acc": round(float(np.mean(f["merged"])), 4)}
                      for label, f in finals.items()} | {"seeds": args.seeds,
                                                          "rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
