"""How a peer combines the models it received: pure functions over flat vectors."""

from mixing.averaging import (
    component_average,
    consensus_distance,
    neighbour_weights,
    weighted_average,
)

__all__ = ["component_average", "consensus_distance", "neighbour_weights", "weighted_average"]
