"""Start N real peer processes on 127.0.0.1 from a topology and report on them.

Examples:
  python scripts/launch.py --nodes 8 --topology ring --rounds 30 --out runs/launch
  python scripts/launch.py --nodes 16 --topology random-regular --kill-fraction 0.25 \\
      --kill-at-round 10 --restart-after 5 --out runs/churn
  python scripts/launch.py --nodes 8 --emit-configs deploy/ --hosts hosts.txt
  python scripts/launch.py --nodes 8 --emit-configs deploy/ --hosts hosts.txt --joiners 2
  python scripts/launch.py --nodes 12 --join --bootstrap 2 --join-spacing-s 1 --rounds 400 \\
      --kill-bootstrap-at-round 200 --out runs/join

Every setting comes from the schema (node.config.LaunchConfig): a --config TOML file with the
sections above, overridden by flags. Simulator-only settings (--engine, --sybils, --phi,
--data-fraction) are not offered: real processes cannot run them.

Join mode (--join): the first --bootstrap peers start with open membership, linked to each
other; once they serve, every other peer starts, --join-spacing-s apart, as python -m node
--join BOOTSTRAP_URLS with no neighbours: it is admitted by its certificate, picks its neighbours
from the view and starts from a neighbour's model. The [graph] topology does not apply (the
joiners choose their own neighbours). --kill-bootstrap-at-round R SIGKILLs the bootstrap peers
once they completed round R and the others go on. The live line counts joins and leaves;
summary.json ("join", and per peer "role", "joined", "start_to_first_mix_s", "membership",
"component") and the table say who joined when and which component each peer ended in. The
network must still be training when the last joiner arrives: give it enough --rounds.

--emit-configs DIR --hosts FILE writes the configs of a deployment over several machines (a
key, a certificate and the trust store with them) and starts nothing. Their membership is static
unless --join or --joiners K: K more configs (peers N..N+K-1) for peers that join the running
network later, through [membership] bootstrap; every peer then has open membership, and the
data is cut into N+K shards so that each joiner trains on one of its own. Each file starts with
comments saying how to run it and how peers can join.
"""

from __future__ import annotations

import sys
from pathlib import Path

from node.config import LaunchConfig
from node.launch_report import RunFolder
from node.launcher import emit_configs, emit_message, launch, summary_table
from node.schema import (
    ConfigError,
    SettingsParser,
    add_settings,
    config_from_command_line,
    read_config_file,
)

NON_SETTINGS = ("--config", "--emit-configs", "--hosts", "--joiners")


def build_parser() -> tuple[SettingsParser, dict[str, tuple[str, str]]]:
    doc = __doc__.split("\n\n")
    p = SettingsParser("scripts/launch.py", doc[0], "\n\n".join(doc[1:]))
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below")
    p.add_argument("--emit-configs", metavar="DIR", help="write per-peer configs for a "
                   "deployment over several machines (needs --hosts) and start nothing")
    p.add_argument("--hosts", metavar="FILE", help="HOST or HOST:PORT per line; peer i gets line "
                   "i (lines are reused in turn when there are fewer lines than peers, with "
                   "ports counting up) and listens on that address")
    p.add_argument("--joiners", type=int, metavar="K", help="with --emit-configs: also write "
                   "configs for K peers that join the running network later (open membership "
                   "on every peer, and a data shard of its own for each joiner)")
    return p, add_settings(p, LaunchConfig)


def main(argv=None) -> int:
    parser, dests = build_parser()
    args = vars(parser.parse_args(argv))
    path, emit, hosts = args.pop("config", None), args.pop("emit_configs", None), \
        args.pop("hosts", None)
    joiners = args.pop("joiners", None)
    try:
        table = read_config_file(path) if path else {}
    except ConfigError as exc:
        parser.error(str(exc))
    settings = config_from_command_line(LaunchConfig, parser, dests=dests, args=args,
                                        table=table, source=path or "")
    if emit and not hosts:
        parser.error("--emit-configs needs --hosts FILE")
    if joiners is not None and not emit:
        parser.error("--joiners needs --emit-configs (the launcher's own joiners: --join)")
    try:
        if emit:
            paths = emit_configs(settings, emit, hosts, joiners=joiners or 0)
            print(emit_message(settings, emit, paths, joiners=joiners or 0))
            return 0
        summary = launch(settings)
    except (ValueError, OSError) as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    if not settings.run.quiet:
        print(summary_table(summary))
        folder = RunFolder(Path(settings.out))
        print(f"\nplot: {folder.plot}   summary: {folder.summary}")
    if summary["interrupted"]:
        print("interrupted: every peer process was stopped; summary.json says what was done",
              file=sys.stderr)
        return 130
    # a peer the launcher killed on purpose (join mode's bootstrap peers) is not a failure
    finished = all(p["finished"] or p.get("killed") for p in summary["peers"].values())
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
