"""Graphs (who talks to whom) and mixing matrices over them. Pure math: no I/O beyond load/save."""

from topology.build import build_topology
from topology.graphs import (
    BUILDERS,
    TOPOLOGY_NAMES,
    Topology,
    TopologyError,
    alive_components,
    barabasi_albert,
    build_graph,
    complete,
    erdos_renyi,
    exponential,
    grid,
    load_graph,
    one_peer_exponential,
    random_geometric,
    random_regular,
    require_connected,
    ring,
    save_graph,
    star,
    torus,
    watts_strogatz,
)
from topology.matrices import (
    MATRICES,
    max_degree_matrix,
    metropolis_hastings_matrix,
    metropolis_weight,
    second_largest_eigenvalue_modulus,
    spectral_gap,
)
from topology.sybil import attach_sybils, cap_degree, k_medoids

__all__ = [
    "BUILDERS", "MATRICES", "TOPOLOGY_NAMES", "Topology", "TopologyError", "alive_components",
    "attach_sybils", "barabasi_albert", "build_graph", "build_topology", "cap_degree", "complete",
    "erdos_renyi",
    "exponential", "grid", "k_medoids", "load_graph", "max_degree_matrix",
    "metropolis_hastings_matrix", "metropolis_weight", "one_peer_exponential",
    "random_geometric", "random_regular", "require_connected", "ring", "save_graph",
    "second_largest_eigenvalue_modulus", "spectral_gap", "star", "torus", "watts_strogatz",
]
