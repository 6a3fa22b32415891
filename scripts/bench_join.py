"""Open membership on real processes: how long a joiner takes to mix, and what membership costs.

32 peers on this machine through scripts/launch.py's join mode: 2 bootstrap peers (open
membership, linked to each other), then 30 joiners started --spacing-s apart with --join and no
neighbours. Digits, MLP 64-32-10, dfedavg, one local epoch per round. Once every joiner mixed
(or gave up), the network runs --settle-s longer, then the launcher is interrupted (every peer
leaves cleanly and writes final.json).

Figures:
  join latency      wall time from the joiner's process spawn (the launcher's clock) to the
                    wall-clock "t" of its "first_mix" log line: median, p90, max. It includes
                    the process start (Python, torch, data), admission, linking, state transfer
                    and the first round, on a machine whose cores all peers share; shown
                    with its two parts: spawn to serving (the process start, which 30
                    processes starting at once on few cores dominate) and the peer's own
                    first_mix_s (its start() to its first mixed model: the protocol).
  membership bytes  membership_bytes_out of final.json per peer per minute of its life (spawn
                    to its "done" line): joins, views, shuffles, links, leaves.
  model bytes       bytes_out of final.json (model messages and state transfers) per peer
                    per minute, for comparison.
Ends with one JSON line of the headline figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node.launch_report import RunFolder
from node.peer.observe import LogEvent, read_log
from node.supervisor import read_final
from node.text import format_table

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(args: argparse.Namespace, out: Path) -> dict:
    """Launch, wait until every joiner mixed or failed, settle, interrupt; the summary."""
    command = [sys.executable, "scripts/launch.py", "--nodes", str(args.peers), "--join",
               "--bootstrap", str(args.bootstrap), "--join-spacing-s", str(args.spacing_s),
               "--rounds", "1000000", "--seed", str(args.seed), "--out", str(out), "--quiet",
               "--timeout", str(args.timeout_s), "--algorithm", "dfedavg"]
    joiners = range(args.bootstrap, args.peers)
    run = RunFolder(out)
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        # a joiner that never mixes (see never_mixed) must not hold the run to its timeout
        deadline = time.monotonic() + min(args.mix_wait_s, args.timeout_s - args.settle_s - 30)
        while time.monotonic() < deadline and proc.poll() is None:
            ready = [read_log(run.log(i), LogEvent.FIRST_MIX, LogEvent.JOIN_FAILED)
                     for i in joiners]
            if all(ready):
                break
            time.sleep(1.0)
        print(f"{sum(map(bool, ready))}/{len(joiners)} joiners mixed or failed; settling "
              f"{args.settle_s:g} s", file=sys.stderr, flush=True)
        time.sleep(args.settle_s)  # the measurement window of steady-state traffic
        proc.send_signal(signal.SIGTERM)  # (SIGINT is ignored by a background job)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not run.summary.exists():
        raise SystemExit(f"bench_join.py: the launcher wrote no summary: {err[-2000:]}")
    return json.loads(run.summary.read_text())


def measure(summary: dict, out: Path, bootstrap: int) -> dict:
    latencies, member, model, failed, isolated = [], [], [], [], []
    starting, joining = [], []  # spawn -> listening; the peer's own start() -> first mix
    run = RunFolder(out)
    for i, p in summary["peers"].items():
        log = run.log(int(i))
        final = read_final(run.peer(int(i)))
        if int(i) >= bootstrap:
            mix = read_log(log, LogEvent.FIRST_MIX)
            if mix:
                latencies.append(mix[0]["t"] - p["spawned_at"])
                joining.append(mix[0]["after_s"])
                listening = read_log(log, LogEvent.LISTENING)
                if listening:
                    starting.append(listening[0]["t"] - p["spawned_at"])
            elif read_log(log, LogEvent.JOIN_FAILED):
                failed.append(int(i))
            else:
                isolated.append(int(i))
        done = read_log(log, LogEvent.DONE)
        if final and done and p["spawned_at"]:
            minutes = (done[-1]["t"] - p["spawned_at"]) / 60
            member.append((final.get("membership") or {}).get("membership_bytes_out", 0)
                          / minutes)
            model.append(final["bytes_out"] / minutes)
    return {
        "joiners": len(summary["peers"]) - bootstrap, "mixed": len(latencies),
        "join_failed": failed, "never_mixed": isolated,
        "join_latency_s": {"median": statistics.median(latencies),
                           "p90": percentile(latencies, 0.9), "max": max(latencies)}
        if latencies else None,
        "process_start_s_median": statistics.median(starting) if starting else None,
        "serving_to_first_mix_s": {"median": statistics.median(joining),
                                   "p90": percentile(joining, 0.9), "max": max(joining)}
        if joining else None,
        "membership_bytes_per_peer_min": statistics.mean(member) if member else None,
        "model_bytes_per_peer_min": statistics.mean(model) if model else None,
        "wall_s": summary["wall_s"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=32, help="peers in all (default: 32)")
    p.add_argument("--bootstrap", type=int, default=2, help="bootstrap peers (default: 2)")
    p.add_argument("--spacing-s", type=float, default=1.0,
                   help="seconds between two joiners' starts (default: 1.0)")
    p.add_argument("--settle-s", type=float, default=30.0,
                   help="seconds the network runs after the last joiner mixed (default: 30)")
    p.add_argument("--mix-wait-s", type=float, default=240.0,
                   help="wait at most this long from the launch for every joiner to mix; "
                   "those that did not are reported as never mixed (default: 240)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    p.add_argument("--timeout-s", type=float, default=900.0,
                   help="give up after this long (default: 900)")
    p.add_argument("--out", help="run folder (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "join"
        summary = run(args, out)
        r = measure(summary, out, args.bootstrap)
    lat = r["join_latency_s"] or {}
    own = r["serving_to_first_mix_s"] or {}
    print(format_table(["figure", "value"], [
        ["peers (bootstrap + joiners)", f"{args.bootstrap} + {r['joiners']}"],
        ["joiners that mixed", f"{r['mixed']}/{r['joiners']}"],
        ["join failed / never mixed", f"{r['join_failed']} / {r['never_mixed']}"],
        ["join latency median s", round(lat.get("median", float("nan")), 2)],
        ["join latency p90 s", round(lat.get("p90", float("nan")), 2)],
        ["join latency max s", round(lat.get("max", float("nan")), 2)],
        ["  of which process start, median s", round(r["process_start_s_median"] or
                                                      float("nan"), 2)],
        ["serving to first mix median s", round(own.get("median", float("nan")), 2)],
        ["serving to first mix p90 s", round(own.get("p90", float("nan")), 2)],
        ["serving to first mix max s", round(own.get("max", float("nan")), 2)],
        ["membership kB/peer/min", round((r["membership_bytes_per_peer_min"] or 0) / 1e3, 1)],
        ["model kB/peer/min", round((r["model_bytes_per_peer_min"] or 0) / 1e3, 1)],
        ["wall s", r["wall_s"]]]))
    print(json.dumps({"peers": args.peers, "seed": args.seed, "mixed": r["mixed"],
                      "join_latency_s": {k: round(v, 3) for k, v in lat.items()},
                      "serving_to_first_mix_s": {k: round(v, 3) for k, v in own.items()},
                      "membership_bytes_per_peer_min": round(r["membership_bytes_per_peer_min"]
                                                             or 0),
                      "model_bytes_per_peer_min": round(r["model_bytes_per_peer_min"] or 0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
