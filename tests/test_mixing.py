import pytest
import torch

import topology as T
from mixing import component_average, consensus_distance, neighbour_weights, weighted_average


def gossip_once(graph, vectors, alive=None):
    """One synchronous gossip step through the peer-side functions."""
    alive = set(graph.nodes) if alive is None else alive
    out = {}
    for i in alive:
        received = {j: vectors[j] for j in graph.neighbors(i) if j in alive}
        degrees = {j: graph.degree[j] for j in graph.neighbors(i)}
        weights = neighbour_weights(graph.degree[i], degrees, present=list(received))
        out[i] = weighted_average(vectors[i], received, weights)
    return out


def random_vectors(n, dim=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(dim, generator=g, dtype=torch.float64) for i in range(n)}


@pytest.mark.parametrize("name", ["ring", "torus", "exponential", "barabasi-albert", "star"])
def test_one_gossip_step_equals_W_times_X_and_keeps_the_average(name):
    graph = T.build_graph(name, 16, seed=1)
    x = random_vectors(16)
    mixed = gossip_once(graph, x)
    stacked = torch.stack([x[i] for i in range(16)])
    w = torch.tensor(T.metropolis_hastings_matrix(graph))
    assert torch.allclose(torch.stack([mixed[i] for i in range(16)]), w @ stacked, atol=1e-12)
    assert torch.allclose(torch.stack(list(mixed.values())).mean(0), stacked.mean(0), atol=1e-13)


def test_weights_of_absent_neighbours_return_to_the_own_weight():
    # node 0 of a star of 4 (degree 3), leaves of degree 1: w_0j = 1/4
    weights = neighbour_weights(3, {1: 1, 2: 1, 3: 1}, present=[1, 3])
    assert weights == {1: 0.25, 3: 0.25}
    own = torch.zeros(3)
    out = weighted_average(own, {1: torch.ones(3), 3: torch.full((3,), 2.0)}, weights)
    assert torch.allclose(out, torch.full((3,), 0.75))  # 0.5*0 + 0.25*1 + 0.25*2


def test_average_is_kept_when_both_ends_agree_a_peer_is_gone():
    graph = T.build_graph("torus", 16)
    x = random_vectors(16)
    alive = set(range(16)) - {5}
    mixed = gossip_once(graph, x, alive)
    before = torch.stack([x[i] for i in alive]).mean(0)
    assert torch.allclose(torch.stack([mixed[i] for i in alive]).mean(0), before, atol=1e-13)


def test_weighted_average_refuses_weights_above_one():
    with pytest.raises(ValueError, match="sum to"):
        weighted_average(torch.zeros(2), {1: torch.ones(2), 2: torch.ones(2)}, {1: 0.7, 2: 0.7})


def consensus_after(name, steps, n=16):
    graph = T.build_graph(name, n)
    x = random_vectors(n, seed=7)
    start = consensus_distance(list(x.values()))
    for _ in range(steps):
        x = gossip_once(graph, x)
    return start, consensus_distance(list(x.values())), graph


@pytest.mark.parametrize("name", ["ring", "torus", "exponential", "random-regular", "complete"])
def test_gossip_only_consensus_is_bounded_by_the_spectral_prediction(name):
    for steps in (1, 3, 10):
        start, end, graph = consensus_after(name, steps)
        lam = T.second_largest_eigenvalue_modulus(T.metropolis_hastings_matrix(graph))
        assert end <= lam ** (2 * steps) * start * (1 + 1e-9) + 1e-20


def test_consensus_ordering_complete_exponential_torus_ring():
    after = {name: consensus_after(name, 5)[1] for name in ["complete", "exponential", "torus",
                                                            "ring"]}
    assert after["complete"] < after["exponential"] < after["torus"] < after["ring"]
    assert after["complete"] < 1e-20


def test_component_average_is_exact_and_identical_within_each_component():
    x = random_vectors(6, dim=1000)
    x32 = {i: v.float() for i, v in x.items()}
    merged = component_average(x32, [[0, 1, 2, 3], [4, 5]])
    expect = torch.stack([x32[i].double() for i in range(4)]).mean(0).float()
    assert torch.equal(merged[0], expect)
    assert all(torch.equal(merged[i], merged[0]) for i in range(4))
    assert torch.equal(merged[4], merged[5]) and not torch.equal(merged[4], merged[0])
    assert consensus_distance([merged[i] for i in range(4)]) == 0.0
