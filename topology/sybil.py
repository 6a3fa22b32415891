"""Attaching Sybil identities to an honest graph: the "spread attack" of SybilWall's evaluation
(Werthenbach and Pouwelse 2023, ``notebooks/Graph generator.ipynb``; docs/algorithms.md §4.6).

phi is the number of attack edges per honest node. Each of the floor(phi) full passes groups all
honest nodes into clusters of mutually close nodes (hop distance) and links each cluster to one
new Sybil identity, so every honest node gains one Sybil neighbour per pass. The fractional part
picks round(frac * H) honest nodes spread over the graph by k-medoids and clusters those the same
way. Cluster size sets how many identities there are: 7 by default (the authors' degree cap),
or whatever makes the total equal ``sybils`` when that is given.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from topology.graphs import TopologyError


def cap_degree(graph: nx.Graph, max_degree: int, seed: int) -> nx.Graph:
    """Remove random edges at nodes of degree > ``max_degree`` without disconnecting the graph
    (docs/algorithms.md §4.8: "degrees capped at 7 by removing random edges"; bridges are kept)."""
    if max_degree < 1:
        raise TopologyError(f"max_degree must be >= 1, got {max_degree}")
    out = graph.copy()
    rng = np.random.default_rng(seed)
    for node in sorted(out.nodes):
        neighbours = sorted(out.neighbors(node))
        for other in rng.permutation(neighbours):
            if out.degree[node] <= max_degree:
                break
            other = int(other)
            if out.degree[other] <= 1:
                continue
            out.remove_edge(node, other)
            if not nx.has_path(out, node, other):
                out.add_edge(node, other)
    return out


def k_medoids(distances: np.ndarray, k: int, *, rng: np.random.Generator,
              iterations: int = 20) -> list[int]:
    """Voronoi-iteration k-medoids on a distance matrix; returns the medoid indices (sorted)."""
    n = len(distances)
    medoids = sorted(int(i) for i in rng.choice(n, size=k, replace=False))
    for _ in range(iterations):
        owner = np.argmin(distances[:, medoids], axis=1)
        updated = []
        for c in range(k):
            members = np.flatnonzero(owner == c)
            cost = distances[np.ix_(members, members)].sum(axis=1)
            updated.append(int(members[np.argmin(cost)]))
        updated = sorted(updated)
        if updated == medoids:
            break
        medoids = updated
    return medoids


def _clusters(nodes: list[int], distances: np.ndarray, size: int) -> list[list[int]]:
    """Greedy clusters of at most ``size`` mutually close nodes: seed with the lowest unassigned
    id, add its nearest unassigned nodes (ties by id)."""
    left = sorted(nodes)
    out = []
    while left:
        seed_node = left[0]
        ranked = sorted(left, key=lambda v: (distances[seed_node, v], v))
        cluster = sorted(ranked[:size])
        out.append(cluster)
        left = [v for v in left if v not in cluster]
    return out


def _identities_per_pass(passes: list[list[int]], sybils: int | None,
                         cluster_size: int) -> list[int]:
    """How many identities each pass gets: clusters of ``cluster_size``, or ``sybils`` shared in
    proportion to the passes' sizes (largest remainders), at least one each."""
    if sybils is None:
        return [math.ceil(len(p) / cluster_size) for p in passes]
    edges = sum(len(p) for p in passes)
    exact = [sybils * len(p) / edges for p in passes]
    counts = [max(1, math.floor(e)) for e in exact]
    order = sorted(range(len(passes)), key=lambda k: (counts[k] - exact[k], k))
    k = 0
    while sum(counts) < sybils:
        if counts[order[k % len(order)]] < len(passes[order[k % len(order)]]):
            counts[order[k % len(order)]] += 1
        k += 1
    while sum(counts) > sybils:
        biggest = max(range(len(counts)), key=lambda j: (counts[j], -j))
        counts[biggest] -= 1
    return counts


def attach_sybils(graph: nx.Graph, phi: float, sybils: int | None = None, *,
                  cluster_size: int = 7, seed: int = 0) -> tuple[nx.Graph, list[int]]:
    """Return the graph with Sybil identities added (ids after the honest ones) and their ids.

    ``phi`` > 0 attack edges per honest node; ``sybils`` identities in all (default: clusters of
    ``cluster_size``, e.g. 15 for phi = 1 and 99 honest nodes). Raises TopologyError naming the
    argument when the request is impossible.
    """
    honest = sorted(graph.nodes)
    h = len(honest)
    if honest != list(range(h)):
        raise TopologyError("attach_sybils: honest nodes must be 0..n-1")
    if phi <= 0:
        raise TopologyError(f"phi must be > 0, got {phi}")
    passes = [honest] * int(math.floor(phi))
    distances = np.full((h, h), float(h))
    for source, lengths in nx.all_pairs_shortest_path_length(graph):
        for target, d in lengths.items():
            distances[source, target] = d
    rng = np.random.default_rng(seed)
    fraction = round((phi - math.floor(phi)) * h)
    if fraction > 0:
        passes.append(k_medoids(distances, fraction, rng=rng))
    edges = sum(len(p) for p in passes)
    if sybils is not None and not len(passes) <= sybils <= edges:
        raise TopologyError(f"sybils must be in [{len(passes)}, {edges}] for phi={phi} and {h} "
                            f"honest nodes (one identity per cluster, at least one per pass), "
                            f"got {sybils}")
    clusters = []
    for p, count in zip(passes, _identities_per_pass(passes, sybils, cluster_size), strict=True):
        part = _clusters(p, distances, math.ceil(len(p) / count))
        while len(part) < count:  # split the largest cluster until the pass has its count
            largest = max(range(len(part)), key=lambda k: (len(part[k]), -k))
            c = part.pop(largest)
            part[largest:largest] = [c[: len(c) // 2], c[len(c) // 2:]]
        clusters.extend(part)
    out = graph.copy()
    ids = list(range(h, h + len(clusters)))
    for identity, cluster in zip(ids, clusters, strict=True):
        out.add_node(identity, sybil=True)
        out.add_edges_from((identity, v) for v in cluster)
    return out, ids
