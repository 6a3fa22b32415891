"""The long form of tests/test_fuzz.py: more than 10,000 hypothesis-made messages posted to a live
peer's /gossip (the suite's default run sends 2,500), every one answered with a status the
test's oracle allows, then the peer and its neighbour finish and merge.

It runs that test with DECENT_LONG_TESTS=1 and pytest's output on (-s: the line of figures at the
end); further arguments go to pytest.

Examples:
  python scripts/fuzz_peer.py
  python scripts/fuzz_peer.py -v --durations=0
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = (
    "tests/test_fuzz.py::"
    "test_fuzzed_gossip_is_refused_and_the_peer_still_finishes_with_its_neighbour")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    env = {**os.environ, "DECENT_LONG_TESTS": "1"}
    return subprocess.call([sys.executable, "-m", "pytest", "-s", TEST, *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
