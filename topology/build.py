"""The graph of an experiment from its [graph] settings: a named builder or a file, optionally
degree-capped, checked to be connected."""

from __future__ import annotations

from topology.graphs import Topology, load_graph, require_connected
from topology.sybil import cap_degree


def build_topology(*, name: str, nodes: int, seed: int, file: str | None = None,
                   degree: int | None = None, probability: float | None = None,
                   attach: int | None = None, radius: float | None = None,
                   max_degree: int | None = None, cap_seed: int = 0) -> Topology:
    """``file`` (an edge list or .json) or the builder ``name`` on ``nodes`` nodes with ``seed``;
    ``max_degree`` removes random non-bridge edges (drawn with ``cap_seed``) until no node has
    more neighbours. A static graph must be connected."""
    if file:
        graph = load_graph(file)
        if graph.number_of_nodes() != nodes:
            raise ValueError(f"[graph] file: {file} has {graph.number_of_nodes()} nodes but "
                             f"[graph] nodes is {nodes}")
        topology = Topology.from_graph(graph, name=str(file))
    else:
        topology = Topology(name, nodes, seed=seed, degree=degree, probability=probability,
                            attach=attach, radius=radius)
    if max_degree is not None:
        if topology.time_varying:
            raise ValueError("[graph] max_degree: applies to a static graph only")
        capped = cap_degree(topology.graph_at(0), max_degree, cap_seed)
        topology = Topology.from_graph(capped, name=f"{topology.name} (degree <= {max_degree})")
    if not topology.time_varying:
        require_connected(topology.graph_at(0), f"topology {topology.name}")
    return topology
