"""One Sybil adversary against average, local FoolsGold, SybilWall, median and Krum.

The setting of docs/algorithms.md §4.8: honest peers on a random geometric graph with degrees capped
at 5, digits split Dirichlet(0.1), softmax regression, DFedAvg; one adversary runs a targeted label
flip (0 <-> 1, holding every 0 and 1 of the training set) and speaks through S Sybil identities
attached by the spread rule with phi attack edges per honest peer. Part 1 sweeps phi in
{0.5, 1, 2} (default identity count: clusters of 7); part 2 fixes phi = 1 and sweeps S. Reports
honest clean accuracy and attack success rate (mean +- std over seeds), draws a plot, writes the
``study_sybil`` section of docs/results.md, and ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from node.learning import make_attack
from sim import SimConfig, format_table, write_results_section
from sim.study import SeedRunner, markdown_table, mean_std, study_parser

ROOT = Path(__file__).resolve().parents[1]
RULES = ("average", "foolsgold", "sybilwall", "median", "krum")

ATTACK = "label-flip"


def base_config(args) -> SimConfig:
    """The study's setting without the attack (each arm adds the Sybils it needs)."""
    return SimConfig.of(nodes=args.nodes, topology="random-geometric", radius=args.radius,
                        max_degree=5, model="logreg", partition="dirichlet", alpha=args.alpha,
                        algorithm="dfedavg", rounds=args.rounds, eval_every=args.rounds,
                        final_merge=False)


class FlipProbe:
    """The label-flip success metric on a run without an attack: how often honest models
    confuse 0 and 1 anyway (the floor the defended runs should approach)."""

    def __init__(self):
        self.sim = None
        self.value = None

    def on_start(self, sim) -> None:
        self.sim = sim

    def on_round(self, row) -> None:
        pass

    def on_end(self, summary) -> None:
        probe = make_attack("label-flip")
        self.value = float(np.mean([probe.success(self.sim.learners[i].model, self.sim.x_test,
                                                  self.sim.y_test) for i in self.sim.honest]))


def summarise(runs) -> dict[str, list[float]]:
    return {"clean": [s["mean_acc"] for s, _, _ in runs],
            "attack": [s["attack_success"] if "attack_success" in s else obs[0].value
                       for s, _, obs in runs]}


def plot(phi_results, count_results, baseline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    phis = sorted({phi for phi, _ in phi_results})
    for rule in RULES:
        for ax, key in ((axes[0], "attack"), (axes[1], "clean")):
            means = [np.mean(phi_results[(phi, rule)][key]) for phi in phis]
            stds = [np.std(phi_results[(phi, rule)][key]) for phi in phis]
            ax.errorbar(phis, means, yerr=stds, marker="o", capsize=3, label=rule)
    axes[0].axhline(np.mean(baseline["attack"]), color="grey", ls=":", label="no attack")
    axes[1].axhline(np.mean(baseline["clean"]), color="grey", ls=":", label="no attack")
    axes[0].set(xlabel="phi (attack edges per honest peer)", ylabel="attack success rate",
                ylim=(-0.02, 1.02), title="label flip 0<->1: attack success")
    axes[1].set(xlabel="phi", ylabel="honest clean accuracy", title="honest clean accuracy")
    counts = sorted({s for s, _ in count_results})
    for rule in sorted({r for _, r in count_results}):
        means = [np.mean(count_results[(s, rule)]["attack"]) for s in counts]
        stds = [np.std(count_results[(s, rule)]["attack"]) for s in counts]
        axes[2].errorbar(counts, means, yerr=stds, marker="o", capsize=3, label=rule)
    axes[2].set(xlabel="Sybil identities S (phi = 1)", ylabel="attack success rate",
                xscale="log", title="fewer Sybils, same attack edges")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = study_parser(__doc__, ROOT)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--nodes", type=int, default=30, help="honest peers")
    p.add_argument("--radius", type=float, default=0.3)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--phis", default="0.5,1,2")
    p.add_argument("--sybil-counts", default="1,2,4,8,15")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runner = SeedRunner(args.seeds, args.quiet)
    base = base_config(args)
    baseline = summarise(runner.run("no attack, average", base,
                                    lambda: [FlipProbe()]))
    baseline_wall = summarise(runner.run("no attack, sybilwall",
                                         base.updated(mixing="sybilwall"),
                                         lambda: [FlipProbe()]))
    phis = [float(v) for v in args.phis.split(",")]
    phi_results = {}
    for phi in phis:
        for rule in RULES:
            phi_results[(phi, rule)] = summarise(runner.run(
                f"phi {phi:g}, {rule}", base.updated(attack=ATTACK, phi=phi, mixing=rule)))
    count_results = {}
    for count in (int(v) for v in args.sybil_counts.split(",")):
        for rule in ("average", "sybilwall"):
            count_results[(count, rule)] = summarise(runner.run(
                f"phi 1, S={count}, {rule}", base.updated(attack=ATTACK, phi=1.0, sybils=count,
                                                    mixing=rule)))
    header = ["phi"] + [f"{rule}: attack / clean" for rule in RULES]
    rows = [[f"{phi:g}"] + [f"{mean_std(phi_results[(phi, r)]['attack'], 2)} / "
                            f"{mean_std(phi_results[(phi, r)]['clean'], 2)}" for r in RULES]
            for phi in phis]
    count_header = ["Sybils S (phi = 1)", "average: attack", "sybilwall: attack",
                    "sybilwall: clean"]
    counts = sorted({s for s, _ in count_results})
    count_rows = [[s, mean_std(count_results[(s, "average")]["attack"], 2),
                   mean_std(count_results[(s, "sybilwall")]["attack"], 2),
                   mean_std(count_results[(s, "sybilwall")]["clean"], 2)] for s in counts]
    print(format_table(header, rows))
    print()
    print(format_table(count_header, count_rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_sybil.png"
    plot(phi_results, count_results, baseline, figure)
    markdown = (
        "## One Sybil adversary: average vs FoolsGold vs SybilWall vs median vs Krum "
        "(scripts/study_sybil.py)\n\n"
        f"{args.nodes} honest peers on a random geometric graph (radius {args.radius}, degrees "
        f"capped at 5), digits Dirichlet alpha={args.alpha}, softmax regression, DFedAvg (K=5, "
        f"lr 0.05), {args.rounds} rounds, seeds 0..{args.seeds - 1}. One adversary flips "
        "labels 0<->1 on its shard plus every 0 and 1 of the training set and sends one model "
        "from all its Sybil identities, attached by the spread rule. Attack success: fraction "
        "of test 0s and 1s that honest peers classify as the other class (mean over honest "
        "peers); clean: honest peers' test accuracy. Each cell is mean +- std over seeds. "
        "foolsgold = SybilWall's scores from direct neighbours only (no history gossip); "
        "median and krum (f=1) are over the peer's own and its neighbours' models.\n\n"
        f"Without attack: average clean {mean_std(baseline['clean'], 3)}, attack-success "
        f"metric {mean_std(baseline['attack'], 3)}; SybilWall clean "
        f"{mean_std(baseline_wall['clean'], 3)}.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        "Sybil-count sweep at phi = 1 (same number of attack edges, spread over S "
        "identities):\n\n"
        f"{markdown_table(count_header, count_rows)}\n\n"
        f"![attack success, clean accuracy, Sybil count]"
        f"({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_sybil", markdown)
    print(json.dumps({
        "seeds": args.seeds, "baseline_clean": round(float(np.mean(baseline["clean"])), 4),
        "attack_success": {f"phi={phi:g}": {r: round(float(np.mean(phi_results[(phi, r)]
                                                                   ["attack"])), 3)
                                            for r in RULES} for phi in phis},
        "clean_acc": {f"phi={phi:g}": {r: round(float(np.mean(phi_results[(phi, r)]["clean"])),
                                                3) for r in RULES} for phi in phis},
        "sybilwall_attack_by_count": {str(s): round(float(np.mean(
            count_results[(s, "sybilwall")]["attack"])), 3) for s in counts}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
