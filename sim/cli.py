"""``python -m sim``: run a decentralized-learning simulation from flags and/or a TOML file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mixing import MIXING_NAMES, SybilWall, VarianceCorrected
from node.learning import ALGORITHM_NAMES, ATTACKS, DATASETS, INITS, MODELS, PARTITIONS
from sim.batched import build_simulation
from sim.config import FIELDS, ConfigError, SimConfig, build_config, load_toml
from sim.report import MetricsWriter, ProgressBar, summary_table
from sim.scenario import Event, load_scenario
from topology import TOPOLOGY_NAMES, TopologyError

_CHOICES = {
    "dataset": DATASETS,
    "partition": PARTITIONS,
    "topology": TOPOLOGY_NAMES,
    "algorithm": ALGORITHM_NAMES,
    "model": tuple(MODELS),
    "mixing": MIXING_NAMES,
    "vc_target": VarianceCorrected.TARGETS,
    "history_mode": SybilWall.HISTORY_MODES,
    "init": INITS,
    "engine": ("reference", "batched", "peers"),
}
# key -> (lowest allowed value, whether the bound is exclusive)
_LOWER_BOUNDS = {
    "nodes": (2, False), "rounds": (1, False), "batch_size": (1, False), "eval_every": (1, False),
    "threads": (1, False), "classes_per_node": (1, False), "lr": (0.0, True),
    "alpha": (0.0, True), "lr_decay": (0.0, True), "momentum": (0.0, False),
    "weight_decay": (0.0, False), "degree": (1, False), "probability": (0.0, False),
    "attach": (1, False), "radius": (0.0, True), "synthetic_alpha": (0.0, False),
    "synthetic_beta": (0.0, False), "hidden": (1, False), "test_fraction": (0.0, True),
    "dampening": (0.0, False), "byzantine_f": (0, False), "clip_radius": (0.0, True),
    "max_degree": (1, False), "data_fraction": (0.0, True),
    "vc_own_weight": (0.0, False), "history_decay": (0.0, True), "adversaries": (0, False),
    "sybils": (1, False), "phi": (0.0, True), "attack_scale": (0.0, True),
}


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def validate(config: SimConfig) -> None:
    """Raise ConfigError naming the flag and the valid values for the first bad setting."""
    for key, valid in _CHOICES.items():
        value = getattr(config, key)
        if value not in valid:
            raise ConfigError(f"{flag(key)}: unknown {value!r}; valid: {', '.join(valid)}")
    for key, (low, exclusive) in _LOWER_BOUNDS.items():
        value = getattr(config, key)
        if value is not None and (value <= low if exclusive else value < low):
            raise ConfigError(f"{flag(key)}: must be {'>' if exclusive else '>='} {low}, "
                              f"got {value}")
    for key in ("momentum", "dampening"):
        if getattr(config, key) >= 1.0:
            raise ConfigError(f"{flag(key)}: must be < 1, got {getattr(config, key)}")
    if config.data_fraction > 1.0:
        raise ConfigError(f"--data-fraction: must be <= 1, got {config.data_fraction}")
    if config.data_fraction < 1.0 and config.attack:
        raise ConfigError("--data-fraction: relays and attacks do not combine; use 1")
    if config.vc_own_weight is not None and config.vc_own_weight > 1.0:
        raise ConfigError(f"--vc-own-weight: must be <= 1, got {config.vc_own_weight}")
    validate_attack(config)
    if config.graph and not Path(config.graph).exists():
        raise ConfigError(f"--graph: file {config.graph} does not exist")


def validate_attack(config: SimConfig) -> None:
    """An attack needs exactly one placement: --adversaries K or --phi (with --sybils)."""
    placed = config.adversaries > 0 or config.phi is not None
    if config.attack is None:
        if placed or config.sybils is not None or config.attack_scale is not None:
            raise ConfigError("--adversaries/--sybils/--phi/--attack-scale need --attack "
                              f"(one of: {', '.join(ATTACKS)})")
        return
    if config.attack not in ATTACKS:
        raise ConfigError(f"--attack: unknown {config.attack!r}; valid: {', '.join(ATTACKS)}")
    if config.adversaries > 0 and config.phi is not None:
        raise ConfigError("--attack: give either --adversaries K or --sybils S --phi PHI, "
                          "not both")
    if not placed:
        raise ConfigError("--attack: say where the adversaries are: --adversaries K, or "
                          "--phi PHI (and optionally --sybils S)")
    if config.sybils is not None and config.phi is None:
        raise ConfigError("--sybils: needs --phi, the attack edges per honest node")
    if config.adversaries >= config.nodes:
        raise ConfigError(f"--adversaries: must be < --nodes ({config.nodes}), "
                          f"got {config.adversaries}")


def build_parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m sim",
        description="Simulate n decentralized peers in one process: local SGD/SAM steps, then "
                    "gossip averaging with Metropolis weights, then a final global merge. Writes "
                    "OUT/metrics.jsonl, OUT/summary.json and OUT/accuracy.png.",
        epilog="Settings can also come from a TOML file (--config) whose keys are these flag "
               "names; flags override it. Example: python -m sim --nodes 16 --topology ring "
               "--algorithm dfedsam-mgs --partition dirichlet --alpha 0.3 --out runs/x",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=None,
    )
    add = p.add_argument
    add("--config", metavar="FILE", help="TOML file with any of the settings below")
    add("--scenario", metavar="FILE", help="scenario TOML: settings as in --config plus "
        "[[events]] (crash, leave, rejoin, link-failure, regional-outage, battery, partition, "
        "trace); see sim/scenario.py")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of: {', '.join(DATASETS)} (default {d.dataset})")
    g.add_argument("--partition", help=f"one of: {', '.join(PARTITIONS)}; 'natural' keeps "
                   f"the synthetic generator's per-node split (default {d.partition})")
    g.add_argument("--alpha", type=float, help=f"Dirichlet concentration (default {d.alpha})")
    g.add_argument("--classes-per-node", type=int,
                   help=f"classes per node for --partition shards (default {d.classes_per_node})")
    g.add_argument("--test-fraction", type=float, help="digits: held-out fraction of the fixed "
                   "stratified split (default 0.25)")
    g.add_argument("--synthetic-alpha", type=float, help="LEAF synthetic alpha (default 1)")
    g.add_argument("--synthetic-beta", type=float, help="LEAF synthetic beta (default 1)")
    g = p.add_argument_group("graph")
    g.add_argument("--nodes", type=int, help=f"number of peers (default {d.nodes})")
    g.add_argument("--topology", help=f"one of: {', '.join(TOPOLOGY_NAMES)} "
                   f"(default {d.topology})")
    g.add_argument("--graph", metavar="FILE", help="load the graph from an edge list or .json "
                   "file instead of --topology")
    g.add_argument("--degree", type=int, help="degree of random-regular, neighbours of "
                   "watts-strogatz (default 4)")
    g.add_argument("--probability", type=float, help="edge probability of erdos-renyi "
                   "(default 0.3), rewiring probability of watts-strogatz (default 0.1)")
    g.add_argument("--attach", type=int, help="edges per new node (m) of barabasi-albert "
                   "(default 2)")
    g.add_argument("--radius", type=float, help="radius of random-geometric (default 0.3)")
    g.add_argument("--data-fraction", type=float, help="fraction of peers holding data, drawn "
                   "with the seed; the others only relay (default 1)")
    g.add_argument("--max-degree", type=int, help="remove random edges (never a bridge) until "
                   "no node has more neighbours than this")
    g = p.add_argument_group("algorithm")
    g.add_argument("--algorithm", help=f"one of: {', '.join(ALGORITHM_NAMES)} "
                   f"(default {d.algorithm})")
    g.add_argument("--rounds", type=int, help=f"training rounds (default {d.rounds})")
    g.add_argument("--local-steps", type=int, help="local steps K per round (default: 1 for "
                   "dsgd, 5 otherwise)")
    g.add_argument("--gossip-steps", type=int, help="gossip steps Q per round (dfedsam-mgs, "
                   "default 4)")
    g.add_argument("--rho", type=float, help="SAM radius (dfedsam*, default 0.05)")
    g.add_argument("--no-final-merge", dest="final_merge", action="store_const", const=False,
                   help="skip the final global merge")
    g = p.add_argument_group("mixing rule")
    g.add_argument("--mixing", help=f"how a peer combines what it received; one of: "
                   f"{', '.join(MIXING_NAMES)} (default {d.mixing}); foolsgold is SybilWall "
                   "without history gossip, multi-krum averages the n-f best Krum scores")
    g.add_argument("--byzantine-f", type=int, help="inputs the robust rule tolerates: "
                   "trimmed-mean trims f per side, krum/multi-krum/nna drop f "
                   f"(default {d.byzantine_f})")
    g.add_argument("--clip-radius", type=float, help="clipped-gossip radius tau "
                   "(default: adaptive, the second-largest neighbour distance)")
    g.add_argument("--vc-own-weight", type=float, help="variance-corrected: own model weight c "
                   "in c*own + (1-c)*mean(received) (default: Metropolis weights)")
    g.add_argument("--vc-target", help="variance-corrected target variance: others (mean of "
                   "the received), self, or conservative (default others)")
    g.add_argument("--history-mode", help="sybilwall/foolsgold history: latest (latest model, "
                   "as the authors' code) or sum (sum of updates, as FoolsGold) "
                   f"(default {d.history_mode})")
    g.add_argument("--history-decay", type=float, help="sybilwall: a history d hops away is "
                   f"gossiped with weight decay*exp(-decay*(d-1)) (default {d.history_decay})")
    g.add_argument("--init", help=f"shared (one initial model for all) or independent (one per "
                   f"peer) (default {d.init})")
    g = p.add_argument_group("attack")
    g.add_argument("--attack", help=f"one of: {', '.join(ATTACKS)}; label-flip swaps classes 0 "
                   "and 1, backdoor adds a 3x3 trigger labelled 1, noise sends x+scale*N(0,I), "
                   "sign-flip sends -scale*x")
    g.add_argument("--adversaries", type=int, help="K adversarial peers placed at random among "
                   "--nodes (default 0)")
    g.add_argument("--sybils", type=int, help="S Sybil identities of one adversary, attached to "
                   "the --nodes honest peers by the spread rule (default: clusters of 7)")
    g.add_argument("--phi", type=float, help="attack edges per honest node for --sybils")
    g.add_argument("--attack-scale", type=float, help="noise: std (default 100); sign-flip: "
                   "factor (default 1)")
    g = p.add_argument_group("local optimizer and model")
    g.add_argument("--model", help=f"one of: {', '.join(MODELS)} (default {d.model})")
    g.add_argument("--hidden", type=int, help=f"MLP hidden width (default {d.hidden})")
    g.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    g.add_argument("--lr-decay", type=float, help=f"per-round lr factor (default {d.lr_decay})")
    g.add_argument("--momentum", type=float, help=f"local momentum (default {d.momentum})")
    g.add_argument("--dampening", type=float, help="momentum dampening; = --momentum gives "
                   "MoNNA's m = b*m + (1-b)*g (default 0)")
    g.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    g.add_argument("--batch-size", type=int, help=f"(default {d.batch_size})")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help=f"seeds the split, init, graph, batches "
                   f"(default {d.seed})")
    g.add_argument("--engine", help="reference (synchronous rounds, every mixing rule, attack "
                   "and event), batched (all peers in one tensor; average mixing only) or peers "
                   "(the real peer protocol with deadlines and suspicion, on a simulated clock) "
                   "(default reference)")
    g.add_argument("--eval-every", type=int, help=f"evaluate every N rounds "
                   f"(default {d.eval_every})")
    g.add_argument("--threads", type=int, help=f"torch CPU threads (default {d.threads})")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/<algorithm>-"
                   "<topology>-s<seed>)")
    g.add_argument("--quiet", action="store_true", default=False,
                   help="no progress bar and no final table")
    p.set_defaults(**{k: None for k in FIELDS})
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimConfig, bool, list[Event]]:
    """(config, quiet, scenario events): defaults < --config or --scenario file < flags."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    quiet = args.pop("quiet")
    config_file, scenario_file = args.pop("config"), args.pop("scenario")
    events: list[Event] = []
    try:
        if config_file and scenario_file:
            raise ConfigError("give --config or --scenario, not both")
        if scenario_file:
            file_settings, events = load_scenario(scenario_file)
        else:
            file_settings = load_toml(config_file) if config_file else {}
        config = build_config(file_settings, args)
        validate(config)
    except ConfigError as exc:
        parser.error(str(exc))
    if config.out is None:
        config.out = f"runs/{config.algorithm}-{config.topology}-s{config.seed}"
    return config, quiet, events


def parse_config(argv: Sequence[str] | None = None) -> tuple[SimConfig, bool]:
    config, quiet, _ = parse_args(argv)
    return config, quiet


def main(argv: Sequence[str] | None = None) -> int:
    config, quiet, events = parse_args(argv)
    torch.set_num_threads(config.threads)
    try:
        sim = build_simulation(
            config, [MetricsWriter(config.out), ProgressBar(disable=quiet)], events)
    except (ValueError, TopologyError, ConfigError) as exc:
        print(f"python -m sim: error: {exc}", file=sys.stderr)
        return 2
    summary = sim.run()
    if not quiet:
        print(summary_table(summary))
        print(f"\nwrote {config.out}/metrics.jsonl, summary.json, accuracy.png")
    return 0
