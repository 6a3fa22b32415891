"""Seeded graph builders on nodes ``0..n-1``, plus load/save and a time-varying schedule.

Every builder is a plain function ``builder(n, ..., seed=...) -> nx.Graph`` whose errors name the
bad argument, as NetworkX's own generators do. Random builders that may produce a disconnected
graph (Erdos-Renyi, random regular, Watts-Strogatz, random geometric) redraw with the derived seeds
``seed, seed+1, ...`` up to ``MAX_TRIES`` times, so the same seed always gives the same graph and a
caller that asks for a connected graph gets one or a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import networkx as nx

MAX_TRIES = 100


class TopologyError(ValueError):
    """A graph could not be built or loaded as asked; the message names the argument."""


def _check_n(name: str, n: int, minimum: int) -> None:
    if not isinstance(n, int) or n < minimum:
        raise TopologyError(f"{name}: n must be an integer >= {minimum}, got {n!r}")


def _connected_draw(name: str, draw: Callable[[int], nx.Graph], seed: int, hint: str) -> nx.Graph:
    for attempt in range(MAX_TRIES):
        graph = draw(seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise TopologyError(f"{name}: no connected graph in {MAX_TRIES} draws from seed {seed}; {hint}")


def ring(n: int, seed: int = 0) -> nx.Graph:
    """Cycle 0-1-...-(n-1)-0. ``seed`` is accepted for a uniform signature and unused."""
    _check_n("ring", n, 3)
    return nx.cycle_graph(n)


def _near_square(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def _grid_graph(name: str, n: int, periodic: bool, min_side: int) -> nx.Graph:
    _check_n(name, n, min_side * min_side)
    rows, cols = _near_square(n)
    if rows < min_side:
        raise TopologyError(
            f"{name}: n={n} has no factorisation rows*cols with both sides >= {min_side}; "
            f"pick n like {min_side * min_side}, {min_side * (min_side + 1)}, 16, 64"
        )
    graph = nx.grid_2d_graph(rows, cols, periodic=periodic)
    return nx.convert_node_labels_to_integers(graph, ordering="sorted")


def grid(n: int, seed: int = 0) -> nx.Graph:
    """2-D grid with the most nearly square shape rows*cols = n (no wrap-around)."""
    return _grid_graph("grid", n, periodic=False, min_side=2)


def torus(n: int, seed: int = 0) -> nx.Graph:
    """2-D torus (grid with wrap-around); every node has degree 4."""
    return _grid_graph("torus", n, periodic=True, min_side=3)


def complete(n: int, seed: int = 0) -> nx.Graph:
    """Every pair connected: Metropolis weights give W = 11^T/n, exact averaging in one step."""
    _check_n("complete", n, 2)
    return nx.complete_graph(n)


def star(n: int, seed: int = 0) -> nx.Graph:
    """Node 0 is the hub."""
    _check_n("star", n, 3)
    return nx.star_graph(n - 1)


def erdos_renyi(n: int, probability: float = 0.3, seed: int = 0) -> nx.Graph:
    """G(n, p), redrawn until connected."""
    _check_n("erdos-renyi", n, 2)
    if not 0.0 < probability <= 1.0:
        raise TopologyError(f"erdos-renyi: probability must be in (0, 1], got {probability}")
    return _connected_draw(
        "erdos-renyi",
        lambda s: nx.gnp_random_graph(n, probability, seed=s),
        seed,
        f"probability={probability} is below the connectivity threshold "
        f"ln(n)/n={math.log(n) / n:.3f}",
    )


def random_regular(n: int, degree: int = 4, seed: int = 0) -> nx.Graph:
    """Uniform random d-regular graph, redrawn until connected."""
    _check_n("random-regular", n, 3)
    if not 1 <= degree < n or (n * degree) % 2:
        raise TopologyError(
            f"random-regular: degree must satisfy 1 <= degree < n and n*degree even, "
            f"got degree={degree}, n={n}"
        )
    return _connected_draw(
        "random-regular",
        lambda s: nx.random_regular_graph(degree, n, seed=s),
        seed,
        f"degree={degree} is too small to connect the graph",
    )


def barabasi_albert(n: int, attach: int = 2, seed: int = 0) -> nx.Graph:
    """Preferential attachment, each new node attaching ``attach`` (m) edges; always connected."""
    _check_n("barabasi-albert", n, 2)
    if not 1 <= attach < n:
        raise TopologyError(f"barabasi-albert: attach (m) must satisfy 1 <= m < n, got {attach}")
    return nx.barabasi_albert_graph(n, attach, seed=seed)


def watts_strogatz(n: int, degree: int = 4, probability: float = 0.1, *, seed: int = 0
                   ) -> nx.Graph:
    """Small world: ring lattice with ``degree`` nearest neighbours, each edge rewired with
    ``probability``."""
    _check_n("watts-strogatz", n, 3)
    if not 2 <= degree < n:
        raise TopologyError(f"watts-strogatz: degree must satisfy 2 <= degree < n, got {degree}")
    if not 0.0 <= probability <= 1.0:
        raise TopologyError(f"watts-strogatz: probability must be in [0, 1], got {probability}")
    return _connected_draw(
        "watts-strogatz",
        lambda s: nx.watts_strogatz_graph(n, degree, probability, seed=s),
        seed,
        "lower the rewiring probability or raise the degree",
    )


def exponential(n: int, seed: int = 0) -> nx.Graph:
    """Static exponential graph: node i linked to i +- 2^k mod n for every 2^k < n."""
    _check_n("exponential", n, 2)
    graph = nx.empty_graph(n)
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    return graph


def random_geometric(n: int, radius: float = 0.3, seed: int = 0) -> nx.Graph:
    """Nodes at uniform positions in the unit square (stored as node attribute ``pos``), linked
    when closer than ``radius``; redrawn until connected."""
    _check_n("random-geometric", n, 2)
    if not radius > 0.0:
        raise TopologyError(f"random-geometric: radius must be > 0, got {radius}")
    return _connected_draw(
        "random-geometric",
        lambda s: nx.random_geometric_graph(n, radius, seed=s),
        seed,
        f"radius={radius} is too small; try about sqrt(2 ln(n) / (pi n))="
        f"{math.sqrt(2 * math.log(n) / (math.pi * n)):.3f} or more",
    )


def one_peer_exponential(n: int, round_index: int) -> nx.Graph:
    """Time-varying one-peer exponential graph (Ying et al. 2021) at a given round.

    At round t every node i is linked to i + 2^(t mod tau) mod n, tau = ceil(log2 n). The paper's
    version is directed with weights 1/2; we keep the project's undirected graphs and symmetric
    Metropolis weights, so each node has degree <= 2 per round. The union over tau consecutive
    rounds is the static exponential graph, which is connected.
    """
    _check_n("one-peer-exponential", n, 2)
    tau = max(1, math.ceil(math.log2(n)))
    hop = 2 ** (round_index % tau)
    graph = nx.empty_graph(n)
    graph.add_edges_from((i, (i + hop) % n) for i in range(n) if (i + hop) % n != i)
    return graph


# name -> (builder, names of the parameters it takes besides n and seed)
BUILDERS: dict[str, tuple[Callable[..., nx.Graph], tuple[str, ...]]] = {
    "ring": (ring, ()),
    "grid": (grid, ()),
    "torus": (torus, ()),
    "complete": (complete, ()),
    "star": (star, ()),
    "erdos-renyi": (erdos_renyi, ("probability",)),
    "random-regular": (random_regular, ("degree",)),
    "barabasi-albert": (barabasi_albert, ("attach",)),
    "watts-strogatz": (watts_strogatz, ("degree", "probability")),
    "exponential": (exponential, ()),
    "random-geometric": (random_geometric, ("radius",)),
}
TIME_VARYING = ("one-peer-exponential",)
TOPOLOGY_NAMES = tuple(BUILDERS) + TIME_VARYING


def build_graph(name: str, n: int, seed: int = 0, **params: float | int | None) -> nx.Graph:
    """Build a static graph by name. ``params`` may hold any of degree, probability, attach,
    radius; those the builder does not take, and those set to None, are ignored."""
    if name not in BUILDERS:
        raise TopologyError(
            f"unknown topology {name!r}; valid: {', '.join(BUILDERS)}"
            + ("" if name not in TIME_VARYING else " (time-varying ones go through Topology)")
        )
    builder, accepted = BUILDERS[name]
    kwargs = {k: v for k, v in params.items() if k in accepted and v is not None}
    return builder(n, seed=seed, **kwargs)


class Topology:
    """Who-talks-to-whom per round: a static graph, or a schedule of graphs.

    Kept apart from the mixing weights (Stochastic Gradient Push's graph manager): this object only
    answers ``graph_at(round)``.
    """

    def __init__(self, name: str, n: int, seed: int = 0, **params: float | int | None):
        self.name = name
        self.n = n
        self._static = None if name in TIME_VARYING else build_graph(name, n, seed, **params)
        if name in TIME_VARYING:
            _check_n(name, n, 2)

    @classmethod
    def from_graph(cls, graph: nx.Graph, name: str = "file") -> Topology:
        obj = cls.__new__(cls)
        obj.name, obj.n, obj._static = name, graph.number_of_nodes(), graph
        return obj

    @property
    def time_varying(self) -> bool:
        return self._static is None

    def graph_at(self, round_index: int) -> nx.Graph:
        if self._static is not None:
            return self._static
        return one_peer_exponential(self.n, round_index)


def require_connected(graph: nx.Graph, what: str = "graph") -> None:
    """Raise a TopologyError naming the components when ``graph`` is not connected."""
    if graph.number_of_nodes() == 0:
        raise TopologyError(f"{what} has no nodes")
    if not nx.is_connected(graph):
        parts = sorted((sorted(c) for c in nx.connected_components(graph)), key=len, reverse=True)
        sizes = ", ".join(str(len(p)) for p in parts)
        raise TopologyError(
            f"{what} is disconnected: {len(parts)} components of sizes {sizes}; "
            f"e.g. nodes {parts[-1][:5]} cannot reach node {parts[0][0]}"
        )


def alive_components(graph: nx.Graph, alive: Iterable[int]) -> list[list[int]]:
    """Connected components of the subgraph induced by the alive nodes, largest first."""
    sub = graph.subgraph(alive)
    return sorted((sorted(c) for c in nx.connected_components(sub)), key=lambda c: (-len(c), c[0]))


def _check_labels(graph: nx.Graph, path: Path) -> nx.Graph:
    nodes = sorted(graph.nodes)
    if nodes != list(range(len(nodes))):
        raise TopologyError(f"{path}: nodes must be the integers 0..n-1, got {nodes[:8]}...")
    return graph


def save_graph(graph: nx.Graph, path: str | Path) -> None:
    """Write ``.json`` (node-link, keeps node attributes such as ``pos``) or an edge list."""
    path = Path(path)
    if path.suffix == ".json":
        data = nx.node_link_data(graph, edges="edges")
        path.write_text(json.dumps(data))
    else:
        with path.open("w") as fh:
            fh.write(f"# nodes {graph.number_of_nodes()}\n")
            for u, v in graph.edges:
                fh.write(f"{u} {v}\n")


def load_graph(path: str | Path) -> nx.Graph:
    """Read a graph written by :func:`save_graph` (or any whitespace edge list of integers)."""
    path = Path(path)
    if not path.exists():
        raise TopologyError(f"graph file {path} does not exist")
    if path.suffix == ".json":
        try:
            graph = nx.node_link_graph(json.loads(path.read_text()), edges="edges")
        except (ValueError, KeyError) as exc:
            raise TopologyError(f"{path}: not a node-link JSON graph ({exc})") from exc
        return _check_labels(nx.Graph(graph), path)
    graph = nx.Graph()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("# nodes"):
            graph.add_nodes_from(range(int(line.split()[2])))
            continue
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            u, v = int(parts[0]), int(parts[1])
        except (ValueError, IndexError) as exc:
            raise TopologyError(f"{path}:{lineno}: expected 'u v' integers, got {line!r}") from exc
        graph.add_edge(u, v)
    return _check_labels(graph, path)
