"""Launched peer processes: forked from one parent vs one interpreter each, 8 to 256 peers.

The workload is p2pfl's digits benchmark: peers on a ring, 10 rounds, each round one local epoch
over an IID shard of the digits training split (80/20 stratified split), MLP 64-32-10, plain
SGD lr 0.1, batch 32, shared initial model, one gossip step; then the final merge. Each run is
``scripts/launch.py`` as a user types it, timed from the command to its exit (interpreter
start, imports, data, forks, training, merge, table and plot: end to end), side by side in one
run of this script:

* ``fork`` (the default on Linux, node/zygote.py) at each ``--sizes`` (8, 64, 256);
* ``exec`` (a ``python -m node`` interpreter per peer, as before) at ``--exec-sizes`` (8).

Reported per run: end-to-end seconds; start-up (command to the last peer listening, and the
spread between the first and the last peer to listen); the launcher's own wall time; each
peer's private memory at its end from /proc/PID/smaps_rollup (USS: pages no other process maps;
PSS: shared pages divided among their sharers; RSS, which counts every shared page in full, for
contrast); mean and merged accuracy; the merge components. The headline ratio compares 8
forked peers with p2pfl's 83.2 s for the same workload, measured once on this 2-core machine
(docs/results.md). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node.launch_report import RunFolder
from node.peer.observe import LogEvent, read_log
from node.text import format_table

ROOT = Path(__file__).resolve().parents[1]
P2PFL_8_PEERS_S = 83.2  # p2pfl, 8 peers, the same workload, this machine (issue 14)


def command(n: int, rounds: int, out: Path, method: str) -> list[str]:
    shard = 1797 * 0.8 / n
    return [sys.executable, str(ROOT / "scripts" / "launch.py"), "--nodes", str(n),
            "--topology", "ring", "--algorithm", "dfedavg", "--rounds", str(rounds),
            "--local-steps", str(math.ceil(shard / 32)), "--partition", "iid",
            "--test-fraction", "0.2", "--hidden", "32", "--lr", "0.1", "--lr-decay", "1.0",
            "--momentum", "0.0", "--weight-decay", "0.0", "--batch-size", "32", "--seed", "0",
            "--start-method", method, "--quiet", "--out", str(out)]


def first_event_time(log: Path, event: str) -> float | None:
    records = read_log(log, event)
    return records[0]["t"] if records else None


def measure(n: int, rounds: int, out: Path, method: str, timeout: float) -> dict:
    began = time.time()
    result = subprocess.run(command(n, rounds, out, method), cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    end_to_end = time.time() - began
    if result.returncode != 0:
        raise RuntimeError(f"{method} {n} peers failed: {result.stderr[-1500:]}")
    run = RunFolder(out)
    summary = json.loads(run.summary.read_text())
    listening = [first_event_time(run.log(i), LogEvent.LISTENING) for i in range(n)]
    listening = [t for t in listening if t is not None]
    peers = list(summary["peers"].values())

    def mean_of(key: str) -> float | None:
        values = [p[key] for p in peers if p.get(key) is not None]
        return round(statistics.mean(values), 1) if values else None

    return {
        "peers": n, "method": method, "end_to_end_s": round(end_to_end, 2),
        "launcher_wall_s": summary["wall_s"],
        "startup_s": round(max(listening) - began, 2) if listening else None,
        "listen_spread_s": round(max(listening) - min(listening), 2) if listening else None,
        "uss_mb_per_peer": mean_of("uss_mb"), "pss_mb_per_peer": mean_of("pss_mb"),
        "rss_mb_per_peer": mean_of("rss_mb"),
        "uss_mb_max": max((p["uss_mb"] for p in peers if p.get("uss_mb") is not None),
                          default=None),
        "mean_acc": round(summary["mean_acc"], 4), "merged_acc": round(summary["merged_acc"], 4),
        "components": len(summary["components"]),
        "all_finished": all(p["finished"] for p in peers),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 256],
                   help="peer counts to launch forked (default: 8 64 256)")
    p.add_argument("--exec-sizes", type=int, nargs="*", default=[8],
                   help="peer counts to launch as one interpreter each (default: 8; none: "
                   "--exec-sizes with no value)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--timeout", type=float, default=1200.0,
                   help="seconds one launch may take before the benchmark fails")
    args = p.parse_args(argv)
    runs = [("fork", n) for n in args.sizes] + [("exec", n) for n in args.exec_sizes]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, n in runs:
            print(f"{method}: {n} peers ...", file=sys.stderr, flush=True)
            r = measure(n, args.rounds, Path(tmp) / f"{method}{n}", method, args.timeout)
            print(f"  {r['end_to_end_s']} s end to end, USS {r['uss_mb_per_peer']} MB/peer",
                  file=sys.stderr, flush=True)
            results.append(r)
    print(format_table(
        ["peers", "start", "end to end s", "start-up s", "listen spread s", "launcher s",
         "USS MB/peer", "PSS MB/peer", "RSS MB/peer", "mean acc", "merged acc", "components"],
        [[str(r[k]) for k in ("peers", "method", "end_to_end_s", "startup_s", "listen_spread_s",
                              "launcher_wall_s", "uss_mb_per_peer", "pss_mb_per_peer",
                              "rss_mb_per_peer", "mean_acc", "merged_acc", "components")]
         for r in results]))
    fork8 = next((r for r in results if r["method"] == "fork" and r["peers"] == 8), None)
    exec8 = next((r for r in results if r["method"] == "exec" and r["peers"] == 8), None)
    headline = {
        "vs_p2pfl_8_peers": round(P2PFL_8_PEERS_S / fork8["end_to_end_s"], 1) if fork8 else None,
        "fork_vs_exec_8_peers": round(exec8["end_to_end_s"] / fork8["end_to_end_s"], 1)
        if fork8 and exec8 else None,
        "largest_run": max((r["peers"] for r in results if r["all_finished"]), default=None),
        "max_uss_mb_per_peer_forked": max((r["uss_mb_max"] for r in results
                                           if r["method"] == "fork" and r["uss_mb_max"]),
                                          default=None),
    }
    if fork8:
        print(f"\n8 forked peers: {fork8['end_to_end_s']} s end to end, "
              f"{headline['vs_p2pfl_8_peers']}x faster than p2pfl's {P2PFL_8_PEERS_S} s")
    print(json.dumps({"headline": headline, "runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
