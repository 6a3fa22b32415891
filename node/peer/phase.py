"""The phase of a peer: one enum instead of bare strings compared with hand-written tuples."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    """What a peer is doing; its value is what /status and final.json say (``state``)."""

    STARTING = "starting"
    TRAINING = "training"
    GOSSIP = "gossip"
    MERGING = "merging"
    DONE = "done"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    @property
    def in_round(self) -> bool:
        """A round is in progress (status: current_round == rounds_completed)."""
        return self in (Phase.STARTING, Phase.TRAINING, Phase.GOSSIP)

    @property
    def finishing(self) -> bool:
        """Merging or over: no new edges, no leaving the graph for a refusal."""
        return self in (Phase.MERGING, Phase.DONE, Phase.STOPPED)
