"""How a peer combines the models it received: pure functions and small rule classes over flat
vectors (no I/O, no clocks). ``make_rule(name, ...)`` gives one rule instance per peer."""

from mixing.averaging import (
    component_average,
    consensus_distance,
    neighbour_weights,
    weighted_average,
)
from mixing.rules import (
    MIXING_NAMES,
    Average,
    ClippedGossip,
    HistoryRecord,
    Krum,
    Median,
    MixingRule,
    NearestNeighbourAverage,
    SybilWall,
    TrimmedMean,
    VarianceCorrected,
    foolsgold_scores,
    make_rule,
    same_round_similarities,
)

__all__ = [
    "MIXING_NAMES", "Average", "ClippedGossip", "HistoryRecord", "Krum", "Median", "MixingRule",
    "NearestNeighbourAverage", "SybilWall", "TrimmedMean", "VarianceCorrected",
    "component_average", "consensus_distance", "foolsgold_scores", "make_rule",
    "neighbour_weights", "same_round_similarities", "weighted_average",
]
