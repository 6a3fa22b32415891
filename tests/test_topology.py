import networkx as nx
import numpy as np
import pytest

import topology as T


@pytest.mark.parametrize("name", list(T.BUILDERS))
def test_builders_give_connected_seeded_graphs_on_0_to_n_minus_1(name):
    g1 = T.build_graph(name, 16, seed=3)
    g2 = T.build_graph(name, 16, seed=3)
    assert sorted(g1.nodes) == list(range(16))
    assert nx.is_connected(g1)
    assert sorted(g1.edges) == sorted(g2.edges)


@pytest.mark.parametrize("name", ["erdos-renyi", "random-regular", "barabasi-albert",
                                  "watts-strogatz", "random-geometric"])
def test_random_builders_depend_on_the_seed(name):
    graphs = {tuple(sorted(T.build_graph(name, 30, seed=s).edges)) for s in range(4)}
    assert len(graphs) > 1


def test_structured_builders_have_the_expected_shape():
    assert all(d == 2 for _, d in T.ring(10).degree)
    assert all(d == 4 for _, d in T.torus(16).degree)
    assert T.star(6).degree[0] == 5
    assert T.complete(7).number_of_edges() == 21
    expo = T.exponential(16)
    assert set(expo.neighbors(0)) == {1, 2, 4, 8, 15, 14, 12}
    assert all(d == 4 for _, d in T.random_regular(20, degree=4).degree)
    assert all("pos" in data for _, data in T.random_geometric(20, radius=0.5).nodes(data=True))


@pytest.mark.parametrize("call, message", [
    (lambda: T.ring(2), "n must be an integer >= 3"),
    (lambda: T.torus(13), "no factorisation"),
    (lambda: T.random_regular(5, degree=3), "n\\*degree even"),
    (lambda: T.barabasi_albert(5, attach=5), "attach"),
    (lambda: T.erdos_renyi(50, probability=0.001), "connectivity threshold"),
    (lambda: T.random_geometric(50, radius=0.01), "radius=0.01 is too small"),
    (lambda: T.build_graph("hypercube", 8), "valid: ring, grid, torus"),
])
def test_bad_arguments_get_errors_that_name_them(call, message):
    with pytest.raises(T.TopologyError, match=message):
        call()


def test_require_connected_names_the_components():
    g = nx.disjoint_union(T.ring(4), T.ring(3))
    with pytest.raises(T.TopologyError, match="2 components of sizes 4, 3"):
        T.require_connected(g)
    T.require_connected(T.ring(5))


@pytest.mark.parametrize("suffix", [".json", ".edges"])
def test_save_and_load_round_trip(tmp_path, suffix):
    g = T.random_geometric(12, radius=0.6, seed=1)
    path = tmp_path / f"g{suffix}"
    T.save_graph(g, path)
    back = T.load_graph(path)
    assert sorted(back.nodes) == list(range(12))
    assert {frozenset(e) for e in back.edges} == {frozenset(e) for e in g.edges}
    if suffix == ".json":
        assert np.allclose(back.nodes[3]["pos"], g.nodes[3]["pos"])


def test_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.edges"
    bad.write_text("0 1\n1 x\n")
    with pytest.raises(T.TopologyError, match="bad.edges:2"):
        T.load_graph(bad)
    gap = tmp_path / "gap.edges"
    gap.write_text("0 1\n1 5\n")
    with pytest.raises(T.TopologyError, match="integers 0..n-1"):
        T.load_graph(gap)
    with pytest.raises(T.TopologyError, match="does not exist"):
        T.load_graph(tmp_path / "missing.json")


@pytest.mark.parametrize("name", list(T.BUILDERS))
@pytest.mark.parametrize("matrix", list(T.MATRICES))
def test_mixing_matrices_are_symmetric_doubly_stochastic_and_follow_the_graph(name, matrix):
    g = T.build_graph(name, 16, seed=2)
    w = T.MATRICES[matrix](g)
    assert np.allclose(w, w.T)
    assert np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
    assert (w >= -1e-15).all()
    adjacency = nx.to_numpy_array(g, nodelist=range(16)) + np.eye(16)
    assert (w[adjacency == 0] == 0).all()
    eig = np.linalg.eigvalsh(w)
    assert eig.max() == pytest.approx(1.0) and eig.min() > -1


def test_metropolis_weights_on_a_ring_are_one_third_and_complete_is_exact_average():
    assert np.allclose(T.metropolis_hastings_matrix(T.ring(8))[0, [0, 1, 7]], 1 / 3)
    assert np.allclose(T.metropolis_hastings_matrix(T.complete(5)), np.full((5, 5), 0.2))
    assert T.spectral_gap(T.metropolis_hastings_matrix(T.complete(5))) == pytest.approx(1.0)


def test_spectral_gap_orders_the_classic_topologies():
    gaps = {name: T.spectral_gap(T.metropolis_hastings_matrix(T.build_graph(name, 16)))
            for name in ["complete", "exponential", "torus", "ring"]}
    assert gaps["complete"] > gaps["exponential"] > gaps["torus"] > gaps["ring"] > 0


def test_one_peer_exponential_cycles_through_hops_and_unions_to_the_exponential_graph():
    n = 16
    union = nx.Graph()
    for t in range(4):
        g = T.one_peer_exponential(n, t)
        assert max(d for _, d in g.degree) <= 2
        assert g.has_edge(0, 2 ** t % n)
        union.add_edges_from(g.edges)
    assert T.one_peer_exponential(n, 4).edges == T.one_peer_exponential(n, 0).edges
    assert {frozenset(e) for e in union.edges} == {frozenset(e) for e in T.exponential(n).edges}
    topo = T.Topology("one-peer-exponential", n)
    assert topo.time_varying and topo.graph_at(1).has_edge(0, 2)


def test_alive_components_of_a_ring_with_two_dead_nodes():
    comps = T.alive_components(T.ring(8), [0, 1, 2, 4, 5, 6, 7])
    assert comps == [[0, 1, 2, 4, 5, 6, 7]]
    comps = T.alive_components(T.ring(8), [0, 1, 4, 5, 6])
    assert comps == [[4, 5, 6], [0, 1]]
