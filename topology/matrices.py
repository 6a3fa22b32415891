"""Mixing matrices from graphs and their spectral quantities (docs/algorithms.md §1.1)."""

from __future__ import annotations

import networkx as nx
import numpy as np


def metropolis_weight(degree_i: int, degree_j: int) -> float:
    """Metropolis-Hastings edge weight 1 / (1 + max(d_i, d_j)) (docs/algorithms.md §1.1).

    Needs only the two endpoint degrees, which is why a peer can compute it from its neighbours'
    messages alone.
    """
    return 1.0 / (1.0 + max(degree_i, degree_j))


def _with_diagonal(weights: np.ndarray) -> np.ndarray:
    np.fill_diagonal(weights, 0.0)
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return weights


def metropolis_hastings_matrix(graph: nx.Graph) -> np.ndarray:
    """Symmetric, doubly stochastic W with Metropolis weights on edges, the rest on the diagonal."""
    n = graph.number_of_nodes()
    deg = dict(graph.degree)
    weights = np.zeros((n, n))
    for i, j in graph.edges:
        weights[i, j] = weights[j, i] = metropolis_weight(deg[i], deg[j])
    return _with_diagonal(weights)


def max_degree_matrix(graph: nx.Graph) -> np.ndarray:
    """W with 1/(d_max + 1) on every edge and the rest on the diagonal."""
    n = graph.number_of_nodes()
    d_max = max(dict(graph.degree).values(), default=0)
    weights = np.zeros((n, n))
    for i, j in graph.edges:
        weights[i, j] = weights[j, i] = 1.0 / (d_max + 1.0)
    return _with_diagonal(weights)


MATRICES = {"metropolis": metropolis_hastings_matrix, "max-degree": max_degree_matrix}


def second_largest_eigenvalue_modulus(weights: np.ndarray) -> float:
    """lambda = max(|lambda_2|, |lambda_n|) of a symmetric W; one gossip step contracts
    ||X - 1 xbar^T|| by at most lambda."""
    eig = np.sort(np.linalg.eigvalsh(weights))
    if len(eig) < 2:
        return 0.0
    return float(max(abs(eig[-2]), abs(eig[0])))


def spectral_gap(weights: np.ndarray) -> float:
    """1 - lambda, the spectral gap of W."""
    return 1.0 - second_largest_eigenvalue_modulus(weights)
