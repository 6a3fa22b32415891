"""Cost of one mixing step per rule, as a ratio to plain averaging, measured side by side.

A peer with ``--neighbours`` neighbours mixes flat vectors of ``--params`` values (float32) with
every rule of ``mixing.make_rule``; reports the median of ``--repeats`` timings per rule and its
ratio to ``average``. SybilWall is timed with ``--histories`` known histories (neighbours plus
gossiped ones), since its score costs O(m^2 D). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from mixing import MIXING_NAMES, make_rule, neighbour_weights
from sim import format_table


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--neighbours", type=int, default=8)
    p.add_argument("--histories", type=int, default=24)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    own = torch.randn(args.params, generator=g)
    received = {j: torch.randn(args.params, generator=g) for j in range(1, args.neighbours + 1)}
    weights = neighbour_weights(args.neighbours, dict.fromkeys(received, args.neighbours),
                                list(received))
    bounds = [(0, args.params // 2), (args.params // 2, args.params)]
    seconds = {}
    for name in MIXING_NAMES:
        rule = make_rule(name, own_id=0, boundaries=bounds)
        for origin in range(100, 100 + max(0, args.histories - args.neighbours)):
            rule.accept_history(1, origin, 0, 1, torch.randn(args.params, generator=g))
        seconds[name] = timed(lambda rule=rule: rule.mix(own, received, weights, 0),
                              args.repeats)
    base = seconds["average"]
    rows = [[name, f"{s * 1e3:.1f}", f"{s / base:.1f}"] for name, s in seconds.items()]
    print(format_table(["rule", "ms per mix", "x average"], rows))
    print(json.dumps({"params": args.params, "neighbours": args.neighbours,
                      "histories": args.histories, "threads": args.threads,
                      "ms": {k: round(v * 1e3, 2) for k, v in seconds.items()},
                      "ratio_to_average": {k: round(v / base, 2) for k, v in seconds.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
