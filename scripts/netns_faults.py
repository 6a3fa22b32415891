"""The long form of tests/test_netns.py: four peer processes, each in its own Linux network
namespace, through a lossy link, a cut link, a partition and healing, over 240 rounds with faults
held 6 s each (the suite's default run: 120 rounds, faults held 3 s, past the deadline ceiling).

It runs that test with DECENT_LONG_TESTS=1 and pytest's output on (-s: the phases and how often
each peer heard both neighbours after healing); further arguments go to pytest. It needs root,
``ip`` and ``tc``, and skips, saying which is missing, elsewhere (-rs shows why).

Examples:
  sudo .venv/bin/python scripts/netns_faults.py
  sudo .venv/bin/python scripts/netns_faults.py -rs -v
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = (
    "tests/test_netns.py::"
    "test_peers_train_through_loss_cuts_and_a_partition_and_merge_after_healing")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    env = {**os.environ, "DECENT_LONG_TESTS": "1"}
    return subprocess.call([sys.executable, "-m", "pytest", "-s", TEST, *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
