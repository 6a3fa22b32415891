"""One Sybil adversary against average, local FoolsGold, SybilWall, median and Krum.

The setting of docs/algorithms.md §4.8: honest peers on a random geometric graph with degrees capped
at 5, digits split Dirichlet(0.1), softmax regression, DFedAvg; one adversary runs a targeted label
flip (0 <-> 1, holding every 0 and 1 of the training set) and speaks through S Sybil identities
attached by the spread rule with phi attack edges per honest peer.

Part 0 runs every rule without an attack; part 1 sweeps phi in {0.5, 1, 2} (default identity
count: clusters of 7); part 2 fixes phi = 1 and sweeps S; part 3 runs the evasive Sybils at phi = 1
(``sybil-noise`` over a range of noise std, ``sybil-slices``); part 4 traces, on seed 0, what the
authors' scoring and ours measure round by round (similarities and weights). SybilWall runs with
our same-round scoring (the default, ``history_mode = "rounds"``), with FoolsGold's logit over the
same similarities (``SybilWall(logit=True)``) and with the authors' (``history_mode = "latest"``).
Reports honest clean accuracy and attack success rate (mean +- std over seeds), draws a plot,
writes the ``study_sybil`` section of docs/results.md, and ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from mixing import SybilWall
from node.learning import make_attack
from sim import SimConfig, Simulation, format_table, write_results_section
from sim.study import markdown_table, mean_std, study_parser

ROOT = Path(__file__).resolve().parents[1]
# label -> (mixing rule, extra [mixing] settings)
ARMS = {
    "average": ("average", {}),
    "foolsgold": ("foolsgold", {}),
    "sybilwall": ("sybilwall", {}),
    "sybilwall-logit": ("sybilwall", {}),  # same-round similarities, FoolsGold's logit
    "sybilwall-authors": ("sybilwall", {"history_mode": "latest"}),
    "median": ("median", {}),
    "krum": ("krum", {}),
}
LOGIT_ARMS = ("sybilwall-logit",)  # SybilWall(logit=True): no [mixing] setting, set per rule
COUNT_ARMS = ("average", "sybilwall", "sybilwall-authors")
EVASIVE_ARMS = ("average", "sybilwall", "median")
ATTACK = "label-flip"


# the reference engine (it asks a per-identity Sybil attack what each identity sends)
ENGINE = Simulation


def base_config(args) -> SimConfig:
    """The study's setting without the attack (each arm adds the Sybils it needs)."""
    return SimConfig.of(nodes=args.nodes, topology="random-geometric", radius=args.radius,
                        max_degree=5, model="logreg", partition="dirichlet", alpha=args.alpha,
                        algorithm="dfedavg", rounds=args.rounds, eval_every=args.rounds,
                        final_merge=False)


class FlipProbe:
    """The label-flip success metric on a run without an attack (how often honest models
    confuse 0 and 1 anyway), and the weights SybilWall peers give at the end: mean weight of
    honest and of Sybil neighbours, share of honest neighbours at weight 0."""

    def __init__(self):
        self.sim = None
        self.value = None
        self.weights = {}
        self.offset = None  # distance of the adversary's model to the honest mean

    def on_start(self, sim) -> None:
        self.sim = sim

    def on_round(self, row) -> None:
        pass

    def on_end(self, summary) -> None:
        sim = self.sim
        probe = make_attack("label-flip")
        self.value = float(np.mean([probe.success(sim.learners[i].model, sim.x_test,
                                                  sim.y_test) for i in sim.honest]))
        adversaries = sorted({sim.owner[v] for v in sim.owner} - set(sim.honest))
        if adversaries:
            mean = torch.stack([sim.learners[i].vector() for i in sim.honest]).mean(dim=0)
            self.offset = float((sim.learners[adversaries[0]].vector() - mean).norm())
        honest, sybil = [], []
        for i in sim.honest:
            rule = sim.learners[i].rule
            if isinstance(rule, SybilWall):
                for j, w in rule.last_weights.items():
                    (honest if sim.learners[sim.owner[j]].attack is None else sybil).append(w)
        if honest:
            self.weights = {"honest": float(np.mean(honest)),
                            "honest_zero": float(np.mean([w == 0 for w in honest])),
                            "sybil": float(np.mean(sybil)) if sybil else None}


class Trace:
    """Round by round on the SybilWall peers (every ``eval_every`` rounds): the similarities
    their scoring computes among honest origins and between honest and Sybil origins, and the
    weights of their honest and Sybil neighbours (docs/results.md, the cause of the clean-accuracy
    gap)."""

    def __init__(self):
        self.rows = []

    def on_start(self, sim) -> None:
        self.sim = sim

    def on_end(self, summary) -> None:
        pass

    def on_round(self, row) -> None:
        sim = self.sim
        honest_sim, sybil_sim, w_honest, w_sybil = [], [], [], []
        for i in sim.honest:
            rule = sim.learners[i].rule
            for j, w in rule.last_weights.items():
                is_honest = sim.learners[sim.owner[j]].attack is None
                (w_honest if is_honest else w_sybil).append(w)
            if rule.scoring == "authors":
                origins = sorted(rule.records)
                if len(origins) < 2:
                    continue
                v = torch.stack([rule.records[o].vector for o in origins]).double()
                v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
                cos = (v @ v.T).fill_diagonal_(-2.0)
                for k, j in enumerate(origins):
                    if j in rule.last_weights:
                        mask = torch.tensor([sim.learners[sim.owner[o]].attack is None
                                             for o in origins])
                        target = honest_sim if mask[k] else sybil_sim
                        target.append(float(cos[k].max()))
            else:
                for j, m in rule.last_similarity.items():
                    is_honest = sim.learners[sim.owner[j]].attack is None
                    (honest_sim if is_honest else sybil_sim).append(m)
        self.rows.append({
            "round": row["round"], "clean": row["mean_acc"],
            "attack": row.get("attack_success"),
            "sim_honest": float(np.mean(honest_sim)) if honest_sim else None,
            "sim_honest_p90": float(np.percentile(honest_sim, 90)) if honest_sim else None,
            "sim_sybil": float(np.mean(sybil_sim)) if sybil_sim else None,
            "w_honest": float(np.mean(w_honest)),
            "honest_zero": float(np.mean([w == 0 for w in w_honest])),
            "w_sybil": float(np.mean(w_sybil)) if w_sybil else None})


class Runner:
    """Runs a config over seeds with :data:`ENGINE`, one progress line per run on stderr."""

    def __init__(self, seeds: int, quiet: bool):
        self.seeds, self.quiet, self.start = seeds, quiet, time.perf_counter()

    def run(self, label: str, config: SimConfig, logit: bool = False) -> dict[str, list]:
        out = {"clean": [], "attack": [], "w_honest": [], "honest_zero": [], "w_sybil": [],
               "offset": []}
        for seed in range(self.seeds):
            probe = FlipProbe()
            summary = build(config.updated(seed=seed), [probe], logit).run()
            out["clean"].append(summary["mean_acc"])
            out["attack"].append(summary.get("attack_success", probe.value))
            out["w_honest"].append(probe.weights.get("honest"))
            out["honest_zero"].append(probe.weights.get("honest_zero"))
            out["w_sybil"].append(probe.weights.get("sybil"))
            out["offset"].append(probe.offset)
            if not self.quiet:
                print(f"[{time.perf_counter() - self.start:7.1f}s] {label:44s} seed {seed}: "
                      f"clean {out['clean'][-1]:.4f}  attack {out['attack'][-1]:.4f}",
                      file=sys.stderr, flush=True)
        return out


def build(config: SimConfig, observers=(), logit: bool = False) -> Simulation:
    """The engine for ``config``; ``logit`` switches the SybilWall peers to FoolsGold's logit
    over the same-round similarities (``SybilWall(logit=True)``)."""
    sim = ENGINE.from_config(config, list(observers))
    if logit:
        for learner in sim.learners:
            if isinstance(learner.rule, SybilWall):
                learner.rule.scoring = "rounds-foolsgold"
    return sim


def arm_config(base: SimConfig, arm: str, **attack) -> SimConfig:
    mixing, extra = ARMS[arm]
    return base.updated(mixing=mixing, **extra, **attack)


def cell(result, digits=2) -> str:
    return f"{mean_std(result['attack'], digits)} / {mean_std(result['clean'], digits)}"


def weight(result, key="w_sybil") -> str:
    return mean_std(result[key], 2)


def plot(phi_results, count_results, noise_results, baseline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.3))
    phis = sorted({phi for phi, _ in phi_results})
    for arm in ARMS:
        for ax, key in ((axes[0], "attack"), (axes[1], "clean")):
            means = [np.mean(phi_results[(phi, arm)][key]) for phi in phis]
            stds = [np.std(phi_results[(phi, arm)][key]) for phi in phis]
            ax.errorbar(phis, means, yerr=stds, marker="o", capsize=3, label=arm)
    axes[0].axhline(np.mean(baseline["attack"]), color="grey", ls=":", label="no attack")
    axes[1].axhline(np.mean(baseline["clean"]), color="grey", ls=":", label="average, no attack")
    axes[0].set(xlabel="phi (attack edges per honest peer)", ylabel="attack success rate",
                ylim=(-0.02, 1.02), title="label flip 0<->1: attack success")
    axes[1].set(xlabel="phi", ylabel="honest clean accuracy", title="honest clean accuracy")
    counts = sorted({s for s, _ in count_results})
    for arm in COUNT_ARMS:
        means = [np.mean(count_results[(s, arm)]["attack"]) for s in counts]
        stds = [np.std(count_results[(s, arm)]["attack"]) for s in counts]
        axes[2].errorbar(counts, means, yerr=stds, marker="o", capsize=3, label=arm)
    axes[2].set(xlabel="Sybil identities S (phi = 1)", ylabel="attack success rate",
                xscale="log", ylim=(-0.02, 1.02), title="fewer Sybils, same attack edges")
    stds_noise = sorted({s for s, _ in noise_results})
    for arm in EVASIVE_ARMS:
        means = [np.mean(noise_results[(s, arm)]["attack"]) for s in stds_noise]
        errs = [np.std(noise_results[(s, arm)]["attack"]) for s in stds_noise]
        axes[3].errorbar(stds_noise, means, yerr=errs, marker="o", capsize=3, label=arm)
    means = [np.mean(noise_results[(s, "sybilwall")]["w_sybil"]) for s in stds_noise]
    axes[3].plot(stds_noise, means, ls="--", color="grey", label="sybilwall: Sybil weight")
    axes[3].set(xlabel="noise std per identity (sybil-noise, phi = 1)",
                ylabel="attack success / weight", xscale="log", ylim=(-0.02, 1.02),
                title="Sybils adding noise")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trace_rows(trace: Trace) -> list[list]:
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    return [[r["round"], f(r["clean"]), f(r["attack"], 2), f(r["sim_honest"]),
             f(r["sim_honest_p90"]), f(r["sim_sybil"]), f(r["w_honest"], 2),
             f"{100 * r['honest_zero']:.0f}%", f(r["w_sybil"], 2)] for r in trace.rows]


def main(argv=None) -> int:
    p = study_parser(__doc__, ROOT)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--nodes", type=int, default=30, help="honest peers")
    p.add_argument("--radius", type=float, default=0.3)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--phis", default="0.5,1,2")
    p.add_argument("--sybil-counts", default="1,2,4,8,15")
    p.add_argument("--noise-stds", default="0.003,0.01,0.015,0.02,0.03,0.1,0.3,1")
    p.add_argument("--no-trace", action="store_true", help="skip part 4 (the round traces)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runner = Runner(args.seeds, args.quiet)
    base = base_config(args)

    no_attack = {arm: runner.run(f"no attack, {arm}", arm_config(base, arm), arm in LOGIT_ARMS)
                 for arm in ARMS}
    baseline = no_attack["average"]
    phis = [float(v) for v in args.phis.split(",")]
    phi_results = {(phi, arm): runner.run(f"phi {phi:g}, {arm}",
                                          arm_config(base, arm, attack=ATTACK, phi=phi),
                                          arm in LOGIT_ARMS)
                   for phi in phis for arm in ARMS}
    counts = [int(v) for v in args.sybil_counts.split(",")]
    count_results = {(s, arm): runner.run(f"phi 1, S={s}, {arm}",
                                          arm_config(base, arm, attack=ATTACK, phi=1.0,
                                                     sybils=s))
                     for s in counts for arm in COUNT_ARMS}
    noise_stds = [float(v) for v in args.noise_stds.split(",")]
    noise_results = {(s, arm): runner.run(f"phi 1, sybil-noise {s:g}, {arm}",
                                          arm_config(base, arm, attack="sybil-noise", phi=1.0,
                                                     attack_scale=s))
                     for s in noise_stds for arm in EVASIVE_ARMS}
    slices_results = {arm: runner.run(f"phi 1, sybil-slices, {arm}",
                                      arm_config(base, arm, attack="sybil-slices", phi=1.0))
                      for arm in EVASIVE_ARMS}
    traces = {}
    if not args.no_trace:
        every = max(1, args.rounds // 10)
        for arm in ("sybilwall-authors", "sybilwall"):
            for phi in (None, 1.0):
                trace = Trace()
                attack = {} if phi is None else {"attack": ATTACK, "phi": phi}
                config = arm_config(base, arm, eval_every=every, seed=0, **attack)
                ENGINE.from_config(config, [trace]).run()
                traces[(arm, phi)] = trace

    probe_sim = ENGINE.from_config(base.updated(seed=0))
    graph, size = probe_sim.topology.graph_at(0), probe_sim.model_size
    identities = {phi: len(ENGINE.from_config(base.updated(seed=0, attack=ATTACK, phi=phi))
                           .owner) - args.nodes for phi in phis}

    # -- tables ----------------------------------------------------------------------------
    header = ["phi (identities)"] + [f"{arm}: attack / clean" for arm in ARMS]
    rows = [["none"] + [cell(no_attack[arm]) for arm in ARMS]]
    rows += [[f"{phi:g} ({identities[phi]})"] + [cell(phi_results[(phi, arm)]) for arm in ARMS]
             for phi in phis]
    weight_header = ["phi", "sybilwall: honest weight", "honest at 0", "Sybil weight",
                     "authors: honest weight", "honest at 0", "Sybil weight"]
    weight_rows = [["none"] + [mean_std(no_attack[a][k], 2) for a in ("sybilwall",
                                                                      "sybilwall-authors")
                               for k in ("w_honest", "honest_zero", "w_sybil")]]
    weight_rows += [[f"{phi:g}"] + [mean_std(phi_results[(phi, a)][k], 2)
                                    for a in ("sybilwall", "sybilwall-authors")
                                    for k in ("w_honest", "honest_zero", "w_sybil")]
                    for phi in phis]
    count_header = ["Sybils S (phi = 1)"] + [f"{arm}: attack / clean" for arm in COUNT_ARMS]
    count_rows = [[s] + [cell(count_results[(s, arm)]) for arm in COUNT_ARMS] for s in counts]
    evasive_header = ["Sybils at phi = 1", "noise / Sybil offset"] + \
        [f"{arm}: attack / clean" for arm in EVASIVE_ARMS] + \
        ["sybilwall: Sybil weight", "sybilwall: honest weight"]

    def evasive_row(label, results, ratio="-"):
        return [label, ratio] + [cell(results[arm]) for arm in EVASIVE_ARMS] + \
            [weight(results["sybilwall"]), weight(results["sybilwall"], "w_honest")]

    offset = np.mean([v for v in phi_results[(1.0, "average")]["offset"] if v is not None])
    evasive_rows = [evasive_row("label-flip (one model)",
                                {arm: phi_results[(1.0, arm)] for arm in EVASIVE_ARMS}, "0")]
    evasive_rows += [evasive_row(f"sybil-noise, std {s:g}",
                                 {arm: noise_results[(s, arm)] for arm in EVASIVE_ARMS},
                                 f"{s * np.sqrt(size) / offset:.2f}") for s in noise_stds]
    evasive_rows += [evasive_row("sybil-slices (one per identity)", slices_results)]
    trace_header = ["round", "clean", "attack", "honest: max similarity", "p90",
                    "Sybil: max similarity", "honest weight", "honest at 0", "Sybil weight"]
    print(format_table(header, rows))
    print()
    print(format_table(count_header, count_rows))
    print()
    print(format_table(evasive_header, evasive_rows))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_sybil.png"
    plot(phi_results, count_results, noise_results, baseline, figure)
    trace_md = ""
    for (arm, phi), trace in traces.items():
        scoring = "the authors' scoring (cosines of the latest histories)" \
            if arm == "sybilwall-authors" else "our same-round scoring (cosines of same-round " \
            "models centred on their median)"
        trace_md += (f"SybilWall with {scoring}, "
                     f"{'no attack' if phi is None else f'phi = {phi:g}'}, seed 0:\n\n"
                     f"{markdown_table(trace_header, trace_rows(trace))}\n\n")
    wall = SybilWall(0)
    markdown = (
        "## One Sybil adversary: average vs FoolsGold vs SybilWall vs median vs Krum "
        "(scripts/study_sybil.py)\n\n"
        f"{args.nodes} honest peers on a random geometric graph (radius {args.radius}, degrees "
        f"capped at 5; seed 0: {graph.number_of_edges()} edges), digits Dirichlet "
        f"alpha={args.alpha}, softmax regression, DFedAvg (K=5, lr 0.05), {args.rounds} rounds, "
        f"seeds 0..{args.seeds - 1}. One adversary flips labels 0<->1 on its shard plus every 0 "
        "and 1 of the training set and sends one model from all its Sybil identities, attached "
        "by the spread rule. Attack success: fraction of test 0s and 1s that honest peers "
        "classify as the other class (mean over honest peers; without attack, the same metric "
        "on the honest models); clean: honest peers' test accuracy. Each cell is mean +- std "
        "over seeds. sybilwall = SybilWall with our same-round scoring (the default "
        f"`history_mode = \"rounds\"`, docs/algorithms.md §4.3: window {wall.window} rounds, "
        f"weight 0 from similarity {wall.threshold:g} up, 1 from "
        f"{wall.threshold - wall.ramp:g} down, Metropolis weights scaled by the scores); "
        "sybilwall-logit = the same similarities "
        "through FoolsGold's pardoning and logit; sybilwall-authors = the authors' scoring "
        "(`history_mode = \"latest\"`); foolsgold = our scoring from direct neighbours only "
        "(no history gossip); median and krum (f=1) are over the peer's own and its neighbours' "
        "models.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        "Weights at the last round (mean over the honest peers' neighbours; 'honest at 0': share "
        "of honest neighbours given weight exactly 0):\n\n"
        f"{markdown_table(weight_header, weight_rows)}\n\n"
        "Sybil-count sweep at phi = 1 (same number of attack edges, spread over S "
        "identities):\n\n"
        f"{markdown_table(count_header, count_rows)}\n\n"
        "Evasive Sybils at phi = 1 (default identity count): `sybil-noise` adds independent "
        "N(0, std^2 I) noise per identity and gossip step to the shared model; `sybil-slices` "
        "splits the poisoned data into one slice per identity, each trained from the "
        "adversary's mixed model. Noise / Sybil offset: the noise's norm (std sqrt(D), "
        f"D = {size}) over the distance from the adversary's model to the honest peers' mean "
        f"at the end of the plain label flip under averaging ({offset:.2f}). Sybil weight: "
        "mean score honest SybilWall peers give their Sybil neighbours at the last round.\n\n"
        f"{markdown_table(evasive_header, evasive_rows)}\n\n"
        f"{trace_md}"
        f"![attack success, clean accuracy, Sybil count, noise]"
        f"({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_sybil", markdown)

    def m(values, digits=3):
        present = [v for v in values if v is not None]
        return round(float(np.mean(present)), digits) if present else None

    print(json.dumps({
        "seeds": args.seeds,
        "no_attack_clean": {arm: m(no_attack[arm]["clean"]) for arm in ARMS},
        "attack_success": {f"phi={phi:g}": {arm: m(phi_results[(phi, arm)]["attack"])
                                            for arm in ARMS} for phi in phis},
        "clean_acc": {f"phi={phi:g}": {arm: m(phi_results[(phi, arm)]["clean"])
                                       for arm in ARMS} for phi in phis},
        "sybilwall_attack_by_count": {str(s): m(count_results[(s, "sybilwall")]["attack"])
                                      for s in counts},
        "sybil_noise": {f"std={s:g}": {"average": m(noise_results[(s, "average")]["attack"]),
                                       "sybilwall": m(noise_results[(s, "sybilwall")]["attack"]),
                                       "sybil_weight": m(noise_results[(s, "sybilwall")]
                                                         ["w_sybil"])} for s in noise_stds},
        "sybil_noise_median": {f"std={s:g}": m(noise_results[(s, "median")]["attack"])
                               for s in noise_stds},
        "sybil_slices": {arm: m(slices_results[arm]["attack"]) for arm in EVASIVE_ARMS},
        "graph_edges_seed0": nx.number_of_edges(graph)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
