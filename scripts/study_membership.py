"""Open membership study: 200 peers arrive through 3 bootstrap peers, 20% leave, half return.

Runs the real peer protocol (``--engine peers``: every peer is a ``node.peer.Peer`` over the
in-memory hub on a simulated clock) with ``[membership] dynamic = true``: 3 bootstrap peers start
the network (a triangle); the other ``--arrivals`` peers arrive by a Poisson process over the first
30% of the rounds (the rest of the pool at 30%), each joining through the bootstrap peers (join,
Cyclon view, agreed edges, state transfer); at 50% of the rounds 20% of the peers alive leave
gracefully (``depart``: they tell their neighbours); at 75% half of those return with their
models (``rejoin``: through the peers their checkpoints knew). Digits IID, softmax regression,
DFedAvg.

The baseline is the same peers, shards, seeds and timeline on a **static** random 4-regular graph
over all of them ([membership] off): an arrival is a peer that is down from round 0 and comes up
at its arrival round with a fresh model (``crash`` at 0, ``rejoin state = "fresh"`` then: a static
peer cannot be sent the model, it catches up on its neighbours' round and averages its way in); a
departure is the same ``depart`` (with a static graph its neighbours suspect it at once); a return
is the same ``rejoin``. Components of the static run are those of the graph among alive peers.

Prints a table (mean +- spread over seeds), draws accuracy, overlay components, degree
distribution and join latency, writes the ``study_membership`` section of docs/results.md and
ends with one JSON line of headline figures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from node.config import SimConfig
from node.learning import derive_seed
from sim import Recorder, format_table, write_results_section
from sim.peers import PeerSimulation, overlay_metrics
from sim.scenario import Event, Timeline
from sim.study import markdown_table, study_parser

ROOT = Path(__file__).resolve().parents[1]
BOOT = 3
# Time scale. A piece of local work takes WORK_S simulated seconds (a round is about five: ~2 s
# here) and a peer shuffles every 0.5 s, about four shuffles a round. The short time scale
# (--work-s 0.05 --shuffle-every-s 0.1: rounds of ~0.15 s against a 10 s deadline ceiling) is
# the harder case and is reported in docs/results.md too: before the membership fixes of the
# same issue only 13 of the 200 arrivals of seed 1 mixed a model, and after the first fixes
# seed 0 still had up to 9 components of peers drifting rounds apart (now: 200/200, one).
WORK_S = 0.4
MEMBERSHIP = {"dynamic": True, "view_size": 16,
              "shuffle_every_s": 0.5, "forget_after_s": 20.0}


def settings(args, seed: int, dynamic: bool) -> SimConfig:
    return SimConfig.from_table({
        "graph": {"nodes": BOOT + args.arrivals, "topology": "random-regular", "degree": 4},
        "model": {"name": "logreg"}, "algorithm": {"name": "dfedavg", "final_merge": False},
        "run": {"rounds": args.rounds, "seed": seed}, "sim": {"engine": "peers"},
        "gossip": {"startup_timeout_s": 2.0},
        **({"membership": membership(args)} if dynamic else {})})


def membership(args) -> dict:
    """The [membership] table of the open runs: MEMBERSHIP with --shuffle-every-s."""
    return {**MEMBERSHIP, "shuffle_every_s": args.shuffle_every_s}


def timeline(args, seed: int, dynamic: bool) -> tuple[list[Event], dict[int, int]]:
    """The events of one run, and the arrival round of each arriving peer (the same for both
    runs of a seed: the Poisson draw is the dynamic run's, replayed as crash/rejoin)."""
    arrive_until = max(2, round(0.3 * args.rounds))
    pool = list(range(BOOT, BOOT + args.arrivals))
    arrive = Event("arrive", round=1, nodes=pool, rate=args.arrivals / (arrive_until - 1),
                   until=arrive_until)
    when = Timeline([arrive], derive_seed(seed, "events")).arrivals(BOOT + args.arrivals)
    leave_at, back_at = round(0.5 * args.rounds), round(0.75 * args.rounds)
    leave = Event("depart", round=leave_at, fraction=0.2)
    if dynamic:
        return [arrive, leave, Event("rejoin", round=back_at, nodes=None)], when
    by_round: dict[int, list[int]] = {}
    for v, r in sorted(when.items()):
        by_round.setdefault(r, []).append(v)
    return ([Event("crash", round=0, nodes=pool), leave, Event("rejoin", round=back_at)]
            + [Event("rejoin", round=r, nodes=vs, state="fresh")
               for r, vs in sorted(by_round.items())]), when


def one_run(args, seed: int, dynamic: bool) -> dict:
    events, when = timeline(args, seed, dynamic)
    recorder = Recorder()
    sim = PeerSimulation.from_config(settings(args, seed, dynamic), [recorder], events)
    sim.work_s = args.work_s
    if dynamic:  # half of the leavers return (chosen when they have left: see _returning)
        sim.bring_back = _returning(sim, sim.bring_back)
    else:
        sim.bring_back = _returning(sim, sim.bring_back, arrivals=set(when))
    summary = sim.run()
    rows = recorder.rows
    alive = sorted(sim.alive)
    if dynamic:
        shape = overlay_metrics(sim.overlay())
        components = [r["overlay_components"] for r in rows]
        gaps = [r["spectral_gap"] for r in rows]
        latency = [a["first_mix_s"] for a in summary["arrivals"].values()
                   if a["first_mix_s"] is not None]
    else:
        shape = overlay_metrics(sim.topology.graph_at(0).subgraph(alive))
        components = [r["components"] for r in rows]
        gaps = [overlay_metrics(sim.topology.graph_at(0).subgraph(alive))["spectral_gap"]]
        latency = [sim.lives[v][1].first_mix_s for v in when
                   if len(sim.lives[v]) > 1 and sim.lives[v][1].first_mix_s is not None]
    arrive_until = max(2, round(0.3 * args.rounds))
    at = {r["round"]: r for r in rows}
    return {"seed": seed, "dynamic": dynamic, "rows": rows, "wall_s": summary["wall_s"],
            "acc_arrived": at[arrive_until + 1]["mean_acc"], "acc_final": rows[-1]["mean_acc"],
            "min_acc_final": rows[-1]["min_acc"],
            "components_max": max(components),
            "components_after_arrivals": max(components[arrive_until + 1:]),
            "gap_final": shape["spectral_gap"], "gap_mean": float(np.mean(gaps)),
            "degree_hist": shape["degree_hist"], "degree_mean": shape["degree_mean"],
            "joined": len(latency), "arrivals": len(when),
            "latency_mean": float(np.mean(latency)) if latency else None,
            "latency_max": max(latency, default=None),
            "alive_final": rows[-1]["alive"]}


def _returning(sim, bring_back, arrivals: set[int] = frozenset()):
    """Wrap the engine's bring_back so that a default ``rejoin`` (every peer down) brings back
    the lower-id half of the peers that departed, and arrivals' rejoins pass unchanged."""
    def wrapped(peers, base, fresh=False):
        peers = sorted(peers)
        if fresh or set(peers) <= arrivals:
            return bring_back(peers, base, fresh)
        gone = sorted(sim.departed)
        return bring_back(gone[: len(gone) // 2], base, fresh)
    return wrapped


def spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else \
        f"{values[0]:.3f}"


def plot(runs: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.3))
    for run in runs:
        style = "-" if run["dynamic"] else "--"
        label = f"{'open' if run['dynamic'] else 'static'} s{run['seed']}"
        rounds = [r["round"] for r in run["rows"]]
        axes[0].plot(rounds, [r["mean_acc"] for r in run["rows"]], style, label=label)
        key = "overlay_components" if run["dynamic"] else "components"
        axes[1].plot(rounds, [r[key] for r in run["rows"]], style, label=label)
        hist = run["degree_hist"]
        axes[2].plot(range(len(hist)), hist, style + "o", label=label)
    lat = [r for r in runs if r["dynamic"]]
    for run in lat:
        axes[3].plot([r["round"] for r in run["rows"]],
                     [r["join_latency_mean_s"] for r in run["rows"]], label=f"open s{run['seed']}")
    titles = ["mean accuracy of the peers in the round", "components of the alive peers",
              "degree distribution at the end", "mean join latency so far (simulated s)"]
    xlabels = ["round", "round", "degree", "round"]
    for ax, title, xl in zip(axes, titles, xlabels, strict=True):
        ax.set(xlabel=xl, title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = study_parser(__doc__, ROOT, seeds=2)
    p.add_argument("--arrivals", type=int, default=200, help="peers that arrive (plus 3 "
                   "bootstrap peers)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--work-s", type=float, default=WORK_S,
                   help=f"simulated seconds per piece of local work (default: {WORK_S})")
    p.add_argument("--shuffle-every-s", type=float, default=MEMBERSHIP["shuffle_every_s"],
                   help="[membership] shuffle_every_s of the open runs (default: "
                   f"{MEMBERSHIP['shuffle_every_s']})")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = []
    for seed in range(args.seeds):
        for dynamic in (True, False):
            runs.append(one_run(args, seed, dynamic))
            if not args.quiet:
                print(f"seed {seed} {'open' if dynamic else 'static'}: "
                      f"{runs[-1]['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
    arrive_until = max(2, round(0.3 * args.rounds))
    header = ["network", f"acc at round {arrive_until + 1}", "final acc", "final min acc",
              "most components", f"most components after round {arrive_until}",
              "spectral gap (end)", "mean degree (end)", "joined / arrivals",
              "join latency mean (s)", "join latency max (s)", "wall s"]
    table = []
    for dynamic in (True, False):
        rs = [r for r in runs if r["dynamic"] == dynamic]
        table.append([
            "open membership" if dynamic else "static 4-regular",
            spread([r["acc_arrived"] for r in rs]), spread([r["acc_final"] for r in rs]),
            spread([r["min_acc_final"] for r in rs]),
            "/".join(str(r["components_max"]) for r in rs),
            "/".join(str(r["components_after_arrivals"]) for r in rs),
            spread([r["gap_final"] for r in rs]), spread([r["degree_mean"] for r in rs]),
            "/".join(f"{r['joined']}/{r['arrivals']}" for r in rs),
            spread([r["latency_mean"] for r in rs]), spread([r["latency_max"] for r in rs]),
            "/".join(f"{r['wall_s']:.0f}" for r in rs)])
    print(format_table(header, table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "study_membership.png"
    plot(runs, args, figure)
    hists = {("open" if r["dynamic"] else "static") + f" s{r['seed']}": r["degree_hist"]
             for r in runs}
    markdown = (
        "## Open membership (scripts/study_membership.py)\n\n"
        f"{BOOT} bootstrap peers start the network; {args.arrivals} peers arrive by a Poisson "
        f"process over rounds 1..{arrive_until} (30% of {args.rounds}), each through the "
        "bootstrap peers with the real protocol (`--engine peers`, `[membership] dynamic`: "
        f"{', '.join(f'{k} {v}' for k, v in membership(args).items() if k != 'dynamic')}, "
        "the other settings their defaults); at round "
        f"{round(0.5 * args.rounds)} 20% of the alive peers leave gracefully, at round "
        f"{round(0.75 * args.rounds)} half of them return with their models through the peers "
        f"they knew. Each piece of local work takes {args.work_s} simulated s. Digits IID, softmax "
        "regression, DFedAvg, no final merge. Baseline: the same "
        "peers, shards and timeline on a static random 4-regular graph over all of them "
        "(arrivals down from round 0 and up at their arrival round with a fresh model; the "
        f"same leaves and returns). Seeds 0..{args.seeds - 1}; mean ± standard deviation over "
        "seeds, or one value per seed separated by /.\n\n"
        f"{markdown_table(header, table)}\n\n"
        "Degree histograms at the end (index = degree): "
        + "; ".join(f"{k}: {v}" for k, v in hists.items()) + "\n\n"
        f"![accuracy, components, degrees and join latency]"
        f"({os.path.relpath(figure, Path(args.results).parent)})\n"
    )
    write_results_section(args.results, "study_membership", markdown)
    dyn = [r for r in runs if r["dynamic"]]
    sta = [r for r in runs if not r["dynamic"]]
    print(json.dumps({
        "seeds": args.seeds, "peers": BOOT + args.arrivals, "rounds": args.rounds,
        "open_final_acc": [round(r["acc_final"], 4) for r in dyn],
        "static_final_acc": [round(r["acc_final"], 4) for r in sta],
        "open_acc_after_arrivals": [round(r["acc_arrived"], 4) for r in dyn],
        "static_acc_after_arrivals": [round(r["acc_arrived"], 4) for r in sta],
        "open_components_max": [r["components_max"] for r in dyn],
        "static_components_max_after_arrivals": [r["components_after_arrivals"] for r in sta],
        "open_join_latency_mean_s": [r["latency_mean"] for r in dyn],
        "open_join_latency_max_s": [r["latency_max"] for r in dyn],
        "open_spectral_gap_end": [r["gap_final"] for r in dyn],
        "static_spectral_gap_end": [r["gap_final"] for r in sta]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
