"""Start N real peer processes on 127.0.0.1 from a topology and report on them.

Examples:
  python scripts/launch.py --nodes 8 --topology ring --rounds 30 --out runs/launch
  python scripts/launch.py --nodes 16 --topology random-regular --kill-fraction 0.25 \\
      --kill-at-round 10 --restart-after 5 --out runs/churn
  python scripts/launch.py --nodes 8 --emit-configs deploy/ --hosts hosts.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from node.launcher import LaunchSettings, emit_configs, launch, summary_table
from sim.cli import validate
from sim.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LaunchSettings()
    helps = {
        "nodes": "number of peer processes", "topology": "graph builder (as in python -m sim)",
        "graph": "edge list or .json graph file instead of --topology",
        "kill_fraction": "fraction of peers to SIGKILL (churn)",
        "kill_at_round": "kill once every peer completed this round",
        "restart_after": "restart killed peers after this many seconds (they resume from "
                         "their checkpoints)",
        "timeout": "give up (and stop every peer) after this many seconds",
        "out": "run folder: peer configs, states, logs, summary.json, accuracy.png",
        "final_merge": "end with the global merge (true/false)",
    }
    for f in fields(LaunchSettings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if f.name == "quiet":
            p.add_argument(flag, action="store_true", help="no progress line and no table")
            continue
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        if isinstance(default, bool):
            kind = lambda v: v.lower() in ("1", "true", "yes")  # noqa: E731
        p.add_argument(flag, type=kind, default=default,
                       help=f"{helps.get(f.name, '')} (default {default})".strip())
    p.add_argument("--emit-configs", metavar="DIR", help="write per-peer configs for a "
                   "deployment over several machines (needs --hosts) and start nothing")
    p.add_argument("--hosts", metavar="FILE", help="HOST or HOST:PORT per line, one per peer "
                   "(reused round-robin)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    emit, hosts = args.pop("emit_configs"), args.pop("hosts")
    settings = LaunchSettings(**args)
    try:
        validate(settings)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        if emit:
            if not hosts:
                parser.error("--emit-configs needs --hosts FILE")
            paths = emit_configs(settings, emit, hosts)
            print(f"wrote {len(paths)} peer configs to {emit}; on each machine run: "
                  f"python -m node --config peerI.toml")
            return 0
        summary = launch(settings)
    except (ValueError, OSError) as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every peer process was stopped", file=sys.stderr)
        return 130
    if not settings.quiet:
        print(summary_table(summary))
        print(f"\nplot: {settings.out}/accuracy.png   summary: {settings.out}/summary.json")
    print(json.dumps({"mean_acc": summary["mean_acc"], "merged_acc": summary["merged_acc"],
                      "wall_s": summary["wall_s"], "nodes": settings.nodes}))
    finished = all(p["finished"] for p in summary["peers"].values())
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
