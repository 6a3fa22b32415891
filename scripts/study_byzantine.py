"""Noise and sign-flip attackers against plain gossip, ClippedGossip, NNA/MoNNA, median and
trimmed mean.

Spec section 7.3: Byzantine peers send ``x + scale N(0, I)`` or the sign-flipped (scaled) model;
plain gossip should collapse near them while ClippedGossip and NNA stay within a few points of
attack-free gossip. Here: peers on a random 4-regular graph (so that removing the attackers
leaves the honest graph connected), digits IID, softmax regression, DFedAvg, K adversaries placed
at random. Prints a table of honest accuracy per rule and attack (mean +- std over seeds), draws
a plot, writes the ``study_byzantine`` section of docs/results.md, ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sim import SimConfig, format_table, write_results_section
from sim.study import SeedRunner, markdown_table, mean_std, study_parser

ROOT = Path(__file__).resolve().parents[1]
ARMS = {  # label -> settings
    "plain gossip": {"mixing": "average"},
    "ClippedGossip (adaptive tau)": {"mixing": "clipped-gossip"},
    "NNA (f=1)": {"mixing": "nna"},
    "MoNNA (f=1, beta=0.9)": {"mixing": "nna", "dampening": 0.9},
    "median": {"mixing": "median"},
    "trimmed mean (f=1)": {"mixing": "trimmed-mean"},
}
ATTACKS = {"noise (scale 100)": ("noise", 100.0), "sign-flip (scale 4)": ("sign-flip", 4.0)}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ATTACKS), figsize=(6 * len(ATTACKS), 4.3), squeeze=False)
    for ax, attack in zip(axes[0], ATTACKS, strict=True):
        for label in ["no attack, plain gossip", *ARMS]:
            runs = curves["no attack" if label.startswith("no attack") else (attack, label)]
            rounds = [r["round"] for r in runs[0]]
            acc = np.array([[r["mean_acc"] for r in rows] for rows in runs])
            style = ":" if label.startswith("no attack") else "-"
            line, = ax.plot(rounds, acc.mean(0), style, label=label)
            ax.fill_between(rounds, acc.min(0), acc.max(0), alpha=0.12, color=line.get_color())
        ax.set(xlabel="round", ylabel="honest mean test accuracy", ylim=(0, 1), title=attack)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = study_parser(__doc__, ROOT)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--adversaries", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runner = SeedRunner(args.seeds, args.quiet)
    base = SimConfig.of(nodes=args.nodes, topology="random-regular", degree=4, model="logreg",
                     algorithm="dfedavg", rounds=args.rounds, eval_every=5, final_merge=False)
    clean = runner.run("no attack, plain gossip", base)
    curves = {"no attack": [rows for _, rows, _ in clean]}
    finals: dict = {}
    for attack, (kind, scale) in ATTACKS.items():
        for label, settings in ARMS.items():
            config = base.updated(attack=kind, attack_scale=scale,
                             adversaries=args.adversaries, **settings)
            runs = runner.run(f"{kind}, {label}", config)
            curves[(attack, label)] = [rows for _, rows, _ in runs]
            finals[(attack, label)] = [s["mean_acc"] for s, _, _ in runs]
    clean_acc = [s["mean_acc"] for s, _, _ in clean]
    header = ["rule"] + [f"{a}: honest acc" for a in ATTACKS]
    rows = [[label] + [mean_std(finals[(a, label)]) for a in ATTACKS] for label in ARMS]
    print(format_table(header, rows))
    print(f"\nno attack, plain gossip: {mean_std(clean_acc)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_byzantine.png"
    plot(curves, figure)
    markdown = (
        "## Byzantine peers: plain gossip vs ClippedGossip vs NNA vs median "
        "(scripts/study_byzantine.py)\n\n"
        f"{args.nodes} peers on a random 4-regular graph, {args.adversaries} of them Byzantine "
        f"(placed at random by the seed), digits IID, softmax regression, DFedAvg (K=5, lr "
        f"0.05, momentum 0.9), {args.rounds} rounds, seeds 0..{args.seeds - 1}. Noise sends "
        "x + 100 N(0, I); sign-flip sends -4 x (the adversary averages its neighbours, so x is "
        "close to their mean). Honest accuracy: mean test accuracy of the honest peers at the "
        f"end, mean +- std over seeds. Attack-free plain gossip: {mean_std(clean_acc)}.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        f"![honest accuracy per round]({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_byzantine", markdown)
    print(json.dumps({"seeds": args.seeds, "clean_acc": round(float(np.mean(clean_acc)), 4),
                      "honest_acc": {f"{a} | {label}": round(float(np.mean(finals[(a, label)])),
                                                             4) for a in ATTACKS
                                     for label in ARMS}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
