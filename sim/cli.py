"""``python -m sim``: run a decentralized-learning simulation from flags and/or a TOML file.

Every flag comes from the schema (``node.config.SimConfig``): the sections [graph], [run],
[sim], [data], [model], [algorithm], [gossip], [mixing] and [attack], one flag per key.
Started by torchrun (``torchrun --nproc-per-node 2 -m sim --engine batched ...``), the batched
engine runs over the ranks (sim.distributed); ``--device cuda`` runs on a GPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from node.config import SimConfig
from node.schema import (
    ConfigError,
    SettingsParser,
    add_settings,
    config_from_command_line,
    read_config_file,
)
from sim.distributed import env_world_size, rank, start, stop
from sim.engine import Observer
from sim.engines import build_simulation, refusal
from sim.report import MetricsWriter, ProgressBar, summary_table
from sim.scenario import EVENT_KINDS, Event, load_scenario
from topology import TopologyError

# Flags that are not settings: where the settings come from.
NON_SETTINGS = ("--config", "--scenario")


def build_parser() -> tuple[SettingsParser, dict[str, tuple[str, str]]]:
    p = SettingsParser(
        "python -m sim",
        "Simulate n decentralized peers in one process: local SGD/SAM steps, then gossip "
        "averaging with Metropolis weights, then a final global merge. Writes OUT/metrics.jsonl, "
        "OUT/summary.json and OUT/accuracy.png.",
        "Settings can also come from a TOML file (--config) with the same sections as the\n"
        "groups above (e.g. [graph] nodes = 16); flags override it. Example:\n"
        "  python -m sim --nodes 16 --topology ring --algorithm dfedsam-mgs \\\n"
        "      --partition dirichlet --alpha 0.3 --out runs/x")
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below")
    p.add_argument("--scenario", metavar="FILE", help="scenario TOML: settings as in --config "
                   f"plus [[events]] ({', '.join(EVENT_KINDS)}); see sim/scenario.py")
    return p, add_settings(p, SimConfig)


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimConfig, list[Event]]:
    """(config, scenario events): defaults < --config or --scenario file < flags."""
    parser, dests = build_parser()
    args = vars(parser.parse_args(argv))
    config_file, scenario_file = args.pop("config", None), args.pop("scenario", None)
    events: list[Event] = []
    table: dict[str, Any] = {}
    source = ""
    try:
        if config_file and scenario_file:
            raise ConfigError("give --config or --scenario, not both")
        if scenario_file:
            table, events = load_scenario(scenario_file)
            source = scenario_file
        elif config_file:
            table, source = read_config_file(config_file), config_file
    except ConfigError as exc:
        parser.error(str(exc))
    config = config_from_command_line(SimConfig, parser, dests=dests, args=args, table=table,
                                      source=source)
    for index, event in enumerate(events):
        if event.round >= config.run.rounds:
            print(f"python -m sim: note: events[{index}] ({event.kind}) at round {event.round} "
                  f"comes after the last round ({config.run.rounds - 1}) and will not happen",
                  file=sys.stderr)
    return config, events


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim``; under torchrun (WORLD_SIZE > 1) every rank runs this, the batched
    engine shards its rows over the ranks (sim.distributed), and only rank 0 writes and prints."""
    config, events = parse_args(argv)
    torch.set_num_threads(config.run.threads)
    ranks = env_world_size()
    distributed = ranks > 1
    reason = refusal(config, ranks=ranks)
    if reason:
        if not distributed or os.environ.get("RANK", "0") == "0":
            print(f"python -m sim: error: {reason}", file=sys.stderr)
        return 2
    if not distributed:
        return _run(config, events, lead=True)
    start(config.run.device)
    try:
        return _run(config, events, lead=rank() == 0)
    finally:
        stop()


def _run(config: SimConfig, events: list[Event], *, lead: bool) -> int:
    observers: list[Observer] = [MetricsWriter(config.out),
                                 ProgressBar(disable=config.run.quiet)] if lead else []
    try:
        sim = build_simulation(config, observers, events)
    except (ValueError, TopologyError, ConfigError) as exc:
        if lead:  # every rank refuses the same config; one of them says why
            print(f"python -m sim: error: {exc}", file=sys.stderr)
        return 2
    summary = sim.run()
    if lead and not config.run.quiet:
        print(summary_table(summary))
        print(f"\nwrote {config.out}/metrics.jsonl, summary.json, accuracy.png")
    return 0
