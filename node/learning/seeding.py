"""Independent, reproducible random streams derived from one run seed.

The data split, the model init, the topology and each peer's minibatch order each get their own
stream (docs/algorithms.md §10), so changing one (say the topology) leaves the others as they were.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed for ``purpose`` (and a per-peer ``index``) that depends only on its inputs."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(purpose.encode()), index])
    return int(sequence.generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)
