"""The batched engine over torch.distributed: the (n, D) rows sharded over ranks.

Started by torchrun (``torchrun --nproc-per-node 2 -m sim --engine batched ...``, on one machine
or several), which sets WORLD_SIZE, RANK and LOCAL_RANK. Rank r owns the contiguous block of rows
``block_bounds(n, world)[r]`` (docs/design.md, docs/algorithms.md §10):

* it builds learners, data shards, samplers and the rows X, M only for its own peers, so no rank
  holds the full (n, D) matrices. What every rank holds whole is small or is the input every
  rank needs to compute the same thing: the graph and the scenario timeline (every rank applies
  the same events with the same seed, so alive sets agree without messages), the dataset (the
  partition into shards is computed from it on every rank, as in one process), and the test set;
* it trains only its rows; each peer's minibatch stream is its own generator's, seeded by its id,
  so results do not depend on which rank holds it;
* gossip sends each rank only the rows its peers need from other ranks (the halo: alive
  neighbours of its alive rows), point to point (isend/irecv), computed on both sides from the
  round's graph (``BatchedSimulation.gossip_plan``); the owned part of W X runs meanwhile;
* metrics are sums of small tensors over ranks (all_reduce): each peer's accuracy and loss (an
  n-vector zero-filled except one rank's entries, so the sum is exact), the consensus distance's
  mean and spread, each component's row sum for the merge. Rank 0 reports exactly what one
  process would, to float rounding of the sums' order.

Backend gloo on CPUs, NCCL with ``--device cuda`` (rank r on GPU LOCAL_RANK). Every wait is
bounded by the process group's timeout (``DIST_TIMEOUT_S``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from node.config import SimConfig, learner_for
from node.learning import Attack, Dataset, Learner
from sim.batched import BatchedSimulation, Rows

DIST_TIMEOUT_S = 300  # the longest any collective or point-to-point wait may block


def env_world_size() -> int:
    """How many ranks torchrun started (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    """Ranks in the initialized process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def start(device: str, *, timeout_s: float = DIST_TIMEOUT_S) -> None:
    """Join torchrun's process group (env:// rendezvous): gloo on CPUs, NCCL on GPUs, where
    each rank takes GPU LOCAL_RANK first."""
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def block_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous blocks of rows, one per rank, sizes differing by at most one."""
    base, extra = divmod(n, world)
    bounds, lo = [], 0
    for r in range(world):
        hi = lo + base + (1 if r < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


class DistRows(Rows):
    """This rank's block and the collectives over the process group."""

    def __init__(self, n: int):
        self.bounds = block_bounds(n, dist.get_world_size())
        self.rank = dist.get_rank()
        lo, hi = self.bounds[self.rank]
        if any(b <= a for a, b in self.bounds):  # every rank refuses, rank 0 says why
            raise ValueError(f"{n} peers over {len(self.bounds)} ranks leaves a rank without "
                             "rows; start at most as many ranks as peers")
        super().__init__(n, lo, hi)

    def owner_bounds(self) -> list[tuple[int, int]]:
        return self.bounds

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def exchange(self, sends: dict[int, torch.Tensor], receives: dict[int, torch.Tensor]
                 ) -> Callable[[], None] | None:
        """Point to point, both directions at once: gloo takes isend/irecv pairs, NCCL one
        batch of them (batch_isend_irecv)."""
        if not sends and not receives:
            return None
        outgoing = {r: t.contiguous() for r, t in sends.items()}  # alive until the wait
        if dist.get_backend() == "nccl":
            ops = [dist.P2POp(dist.isend, t, r) for r, t in sorted(outgoing.items())]
            ops += [dist.P2POp(dist.irecv, t, r) for r, t in sorted(receives.items())]
            requests = dist.batch_isend_irecv(ops)
        else:
            started = [dist.isend(t, r) for r, t in sorted(outgoing.items())]
            started += [dist.irecv(t, r) for r, t in sorted(receives.items())]
            requests = [w for w in started if w is not None]  # None: a rank outside the group

        def wait() -> None:
            for request in requests:
                request.wait()
            outgoing.clear()

        return wait


@dataclass
class RemotePeer:
    """A peer another rank trains: what the shared reports need to know about it."""

    node_id: int
    num_samples: int
    attack: Attack | None = None


class DistributedBatchedSimulation(BatchedSimulation):
    """The batched engine on this rank's block of rows; ``run()`` as in one process."""

    @classmethod
    def _rows_for(cls, n: int) -> Rows:
        return DistRows(n)

    @classmethod
    def _make_learners(  # type: ignore[override]  # other ranks' peers are RemotePeer records
            cls, config: SimConfig, parts: Sequence[torch.Tensor], *, data: Dataset,
            factory: Callable[..., Any] | None, attack: Attack | None,
            adversaries: Sequence[int]) -> list[Learner | RemotePeer]:
        """Learners for this rank's block only; the other peers are ``RemotePeer`` records."""
        lo, hi = block_bounds(len(parts), dist.get_world_size())[dist.get_rank()]
        return [learner_for(config, i, data=data, shard=idx, factory=factory,
                            device=config.run.device) if lo <= i < hi
                else RemotePeer(i, len(idx)) for i, idx in enumerate(parts)]
