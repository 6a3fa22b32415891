"""Gossip averaging over flat parameter vectors (docs/algorithms.md §1.1, §2.1, §5.1).

Pure functions: a peer calls :func:`neighbour_weights` and :func:`weighted_average` with the
vectors it received; the simulator calls the very same functions with the vectors its in-memory
exchange delivered. No function here knows about transports or clocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from topology import metropolis_weight


def neighbour_weights(
    own_degree: int, neighbour_degrees: Mapping[int, int], present: Sequence[int] | None = None
) -> dict[int, float]:
    """Metropolis weights w_ij = 1/(1+max(d_i, d_j)) for the neighbours that are present.

    Degrees are the full graph degrees, not the counts of present neighbours: the weight of an
    absent (crashed, late, suspect) neighbour goes back to the peer's own weight
    w_ii = 1 - sum_j w_ij. Rows thus always sum to 1, and when both ends of an edge agree that it is
    down, W stays symmetric and doubly stochastic, so the network average is preserved.
    """
    keys = neighbour_degrees.keys() if present is None else present
    return {j: metropolis_weight(own_degree, neighbour_degrees[j]) for j in keys}


def weighted_average(
    own: torch.Tensor, received: Mapping[int, torch.Tensor], weights: Mapping[int, float]
) -> torch.Tensor:
    """x_i' = w_ii x_i + sum_j w_ij x_j with w_ii = 1 - sum_j w_ij (one gossip step,
    docs/algorithms.md §1.1).

    Only neighbours present in both ``received`` and ``weights`` count. They are summed in order of
    their ids, so the result does not depend on the order in which messages arrived (a networked
    peer and the simulator get the same bits). Returns a new tensor; the caller copies it into its
    flat parameters.
    """
    used = sorted(j for j in received if j in weights)
    self_weight = 1.0 - sum(weights[j] for j in used)
    if self_weight < -1e-9:
        raise ValueError(f"neighbour weights sum to {1 - self_weight:.6f} > 1")
    out = own * self_weight
    for j in used:
        out.add_(received[j].to(out.device), alpha=weights[j])
    return out


def component_average(vectors: Mapping[int, torch.Tensor], components: Sequence[Sequence[int]]
                      ) -> dict[int, torch.Tensor]:
    """The final global merge: every node of a component gets the exact mean of its component.

    Computed in float64 and cast back so that the result does not depend on the summation order
    (every member of a component ends with bit-identical parameters). Nodes not listed in any
    component are left out of the result.
    """
    merged: dict[int, torch.Tensor] = {}
    for component in components:
        stacked = torch.stack([vectors[i].to(torch.float64) for i in component])
        mean = stacked.mean(dim=0).to(vectors[component[0]].dtype)
        for i in component:
            merged[i] = mean
    return merged


def consensus_distance(vectors: Sequence[torch.Tensor]) -> float:
    """Xi^2 = (1/n) sum_i ||x_i - xbar||^2 (docs/algorithms.md §0.1)."""
    stacked = torch.stack(list(vectors)).to(torch.float64)
    return float(((stacked - stacked.mean(dim=0)) ** 2).sum(dim=1).mean())
