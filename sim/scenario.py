"""Scenario files: a whole study in one TOML file, with a timeline of disruptions.

A scenario is the simulator's settings (the same sections as ``--config``) plus
``[[events]]``::

    [graph]
    nodes = 60
    topology = "barabasi-albert"
    attach = 2
    data_fraction = 0.5          # the other peers only relay

    [run]
    rounds = 60

    [[events]]
    round = 20                   # applied before round 20's local update
    kind = "crash"               # crash/leave, rejoin, link-failure, regional-outage,
    fraction = 0.3               #   battery, partition, trace
    select = "degree"            # random (default), degree or betweenness
    among = "relays"             # all (default), data or relays

Event keys, by kind (``round`` is always allowed and defaults to 0):

* ``crash`` / ``leave``: ``nodes = [ids]`` or ``fraction`` with ``select`` and ``among``. The peer
  stops sending and receiving; its model is kept for a later ``rejoin``.
* ``rejoin``: ``nodes = [ids]`` (default: every peer down), ``state = "kept"`` (the model it had)
  or ``"fresh"`` (a new model that catches up by copying its lowest-id live neighbour's).
* ``link-failure``: every edge is down with ``probability`` each round, until ``until``.
* ``regional-outage``: every peer within ``radius`` of ``center = [x, y]`` (node attribute ``pos``
  of a geometric graph) goes down; back with its model at ``until`` if given.
* ``battery``: each peer (``among``) dies after a number of rounds of work drawn uniformly in
  ``lifetime = [low, high]``.
* ``partition``: the graph splits in two halves (Kernighan-Lin bisection, seeded) whose cross
  edges are down until ``until`` (the heal).
* ``trace``: ``file`` is a CSV of ``peer,start,end`` online intervals (end exclusive, one or more
  lines per peer); listed peers are up exactly inside their intervals.

Open membership (``--engine peers`` with ``[membership] dynamic = true`` only; the other engines
refuse these kinds, since their peers cannot join a running network):

* ``arrive``: the peers ``nodes = [ids]`` are not started at round 0; they join later through
  the bootstrap peers (the peers no arrive event names: those alive at round 0). All at
  ``round``; or one round each with ``rounds = [r, ...]``; or with ``rate``, a Poisson number of
  them per round from ``round`` on (drawn from the event's seed stream, in a seeded random order)
  until all have arrived; with ``until``, those still waiting then all arrive at ``until``.
* ``depart``: a graceful leave (the peer's ``request_stop()``: it finishes its step and tells its
  neighbours, which drop it at once); ``nodes`` or ``fraction`` with ``select`` and ``among`` as
  for ``crash``. (``leave`` is the older name of ``crash`` and stays one.)

Every event draws its randomness from its own stream of the run seed, so a scenario and a seed
give the same timeline. Errors name the event (by index and kind) and the key.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as checked_dataclass

from node.learning.seeding import derive_seed
from node.schema import ConfigError, describe, read_config_file, suggest

SELECTIONS = ("random", "degree", "betweenness")
AMONG = ("all", "data", "relays")


@checked_dataclass(config=ConfigDict(strict=True))  # typed fields; a TOML string is no number
class Event:
    kind: str
    round: int = 0
    nodes: list[int] | None = None
    fraction: float | None = None
    select: str = "random"
    among: str = "all"
    state: str = "kept"
    probability: float | None = None
    until: int | None = None
    center: list[float] | None = None
    radius: float | None = None
    lifetime: list[int] | None = None
    file: str | None = None
    rate: float | None = None
    rounds: list[int] | None = None

    @property
    def label(self) -> str:
        """A short text for plots: what happened."""
        if self.kind == "arrive":
            return "arrivals" + (f" {self.rate:g}/round" if self.rate is not None else
                                 f" of {len(self.nodes or ())}")
        if self.kind in ("crash", "leave", "depart"):
            who = f"{len(self.nodes)} peers" if self.nodes else \
                f"{self.fraction:.0%} {self.select}" + ("" if self.among == "all"
                                                       else f" {self.among}")
            return f"{self.kind} {who}"
        if self.kind == "link-failure":
            return f"links fail p={self.probability}"
        if self.kind == "regional-outage":
            return f"outage r={self.radius}"
        return self.kind


# What an event does to a running simulation: ``start(sim, index, event, base, graph)`` at its
# round and, for events with ``until``, ``end(sim, index, event, base)`` then. ``sim`` is the
# engine (``sim.engine.Simulation``); the handlers use only its take_down / bring_back and the
# timeline's state, so every engine that has those runs every kind.
StartHandler = Callable[[Any, int, "Event", nx.Graph, nx.Graph], None]
EndHandler = Callable[[Any, int, "Event", nx.Graph], str]


@dataclass(frozen=True)
class EventKind:
    """One kind of event: the keys it takes (besides kind and round), those it requires, and
    its handlers. A new kind is one entry of ``EVENT_KINDS`` (and its handlers)."""

    keys: tuple[str, ...]
    required: tuple[str, ...] = ()
    start: StartHandler | None = None
    end: EndHandler | None = None
    engines: tuple[str, ...] | None = None  # the engines that run it (None: every engine)


def _roles(sim: Any) -> dict[str, set[int]]:
    return {"all": sim.alive, "data": sim.alive & sim.data_holders,
            "relays": sim.alive - sim.data_holders}


def _check_ids(sim: Any, e: Event, ids: list[int]) -> None:
    unknown = sorted(set(ids) - set(sim.owner))
    if unknown:
        raise ValueError(f"event {e.kind} at round {e.round}: unknown peers {unknown}")


def _chosen(sim: Any, index: int, e: Event, graph: nx.Graph) -> list[int]:
    """The peers a crash or a departure takes: ``nodes``, else ``fraction`` of ``among``
    chosen by ``select`` among the alive ones."""
    if e.nodes is not None:
        _check_ids(sim, e, e.nodes)
        return e.nodes
    return sim.timeline.select(e, index, sorted(_roles(sim)[e.among]), graph.subgraph(sim.alive))


def _start_crash(sim: Any, index: int, e: Event, base: nx.Graph, graph: nx.Graph) -> None:
    sim.take_down(_chosen(sim, index, e, graph))


def _start_depart(sim: Any, index: int, e: Event, base: nx.Graph, graph: nx.Graph) -> None:
    sim.depart(_chosen(sim, index, e, graph))


def _start_rejoin(sim: Any, index: int, e: Event, base: nx.Graph, graph: nx.Graph) -> None:
    if e.nodes is not None:
        _check_ids(sim, e, e.nodes)
    back = e.nodes if e.nodes is not None else sorted(set(sim.owner) - sim.alive)
    sim.bring_back(back, base, fresh=e.state == "fresh")


def _start_outage(sim: Any, index: int, e: Event, base: nx.Graph, graph: nx.Graph) -> None:
    assert e.center is not None and e.radius is not None  # required keys (parse_event)
    down = [v for v in in_disc(base, e.center, e.radius) if v in sim.alive]
    sim.timeline.outages[index] = down
    sim.take_down(down)


def _end_outage(sim: Any, index: int, e: Event, base: nx.Graph) -> str:
    sim.bring_back(sim.timeline.outages.pop(index, []), base)
    return "outage ends"


def _start_battery(sim: Any, index: int, e: Event, base: nx.Graph, graph: nx.Graph) -> None:
    tl = sim.timeline
    rng = tl.rng(index)
    assert e.lifetime is not None  # a required key (parse_event)
    low, high = e.lifetime
    for v in sorted(_roles(sim)[e.among]):
        tl.lifetimes[v] = int(rng.integers(low, high + 1))
        tl.worked[v] = 0


def _start_partition(sim: Any, index: int, e: Event, base: nx.Graph, graph: nx.Graph) -> None:
    sim.timeline.cut_edges[index] = sim.timeline.partition_edges(base, index)


def _end_partition(sim: Any, index: int, e: Event, base: nx.Graph) -> str:
    sim.timeline.cut_edges.pop(index, None)
    return "partition heals"


# The registry of event kinds. link-failure acts through Timeline.graph_at, trace and battery
# also every round (Simulation.apply_events), arrive through the peers engine's arrival schedule
# (Timeline.arrivals).
EVENT_KINDS: dict[str, EventKind] = {
    "crash": EventKind(("nodes", "fraction", "select", "among"), start=_start_crash),
    "leave": EventKind(("nodes", "fraction", "select", "among"), start=_start_crash),
    "rejoin": EventKind(("nodes", "state"), start=_start_rejoin),
    "link-failure": EventKind(("probability", "until"), ("probability",)),
    "regional-outage": EventKind(("center", "radius", "until"), ("center", "radius"),
                                 start=_start_outage, end=_end_outage),
    "battery": EventKind(("lifetime", "among"), ("lifetime",), start=_start_battery),
    "partition": EventKind(("until",), start=_start_partition, end=_end_partition),
    "trace": EventKind(("file",), ("file",)),
    "arrive": EventKind(("nodes", "rounds", "rate", "until"), ("nodes",), engines=("peers",)),
    "depart": EventKind(("nodes", "fraction", "select", "among"), start=_start_depart,
                        engines=("peers",)),
}


def refuse_events(events: Sequence[Event], engine: str) -> None:
    """ValueError (one line) when an event's kind does not run on ``engine``."""
    for e in events:
        engines = EVENT_KINDS[e.kind].engines
        if engines is not None and engine not in engines:
            raise ValueError(f"--engine {engine}: event kind {e.kind!r} (round {e.round}) runs "
                             f"only on --engine {' or '.join(engines)} (with [membership] "
                             "dynamic = true): use --engine peers")


def parse_event(index: int, raw: Any, base: Path | None = None) -> Event:
    """One ``[[events]]`` table, checked; errors say ``events[index] (kind): key ...``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"events[{index}] must be a table")
    kind = raw.get("kind")
    where = f"events[{index}] ({kind})"
    if kind not in EVENT_KINDS:
        raise ConfigError(f"events[{index}]: kind must be one of {', '.join(EVENT_KINDS)}, "
                          f"got {kind!r}")
    allowed = ("kind", "round") + EVENT_KINDS[kind].keys
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'{suggest(key, allowed)}; valid: "
                              f"{', '.join(allowed)}")
    for key in EVENT_KINDS[kind].required:
        if key not in raw:
            raise ConfigError(f"{where}: key '{key}' is required")
    try:
        event = Event(**raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = error["loc"][0] if error["loc"] else "?"
        raise ConfigError(f"{where}: key '{key}' {describe(error)}") from None
    _check_ranges(where, event)
    if event.file and base is not None and not Path(event.file).is_absolute():
        event.file = str(base / event.file)
    return event


def _check_ranges(where: str, e: Event) -> None:
    problems = [
        ("round", e.round >= 0, "must be >= 0"),
        ("fraction", e.fraction is None or 0 < e.fraction <= 1, "must be in (0, 1]"),
        ("select", e.select in SELECTIONS, f"must be one of {', '.join(SELECTIONS)}"),
        ("among", e.among in AMONG, f"must be one of {', '.join(AMONG)}"),
        ("state", e.state in ("kept", "fresh"), "must be kept or fresh"),
        ("probability", e.probability is None or 0 <= e.probability <= 1, "must be in [0, 1]"),
        ("until", e.until is None or e.until > e.round, "must be after round"),
        ("center", e.center is None or len(e.center) == 2, "must be [x, y]"),
        ("radius", e.radius is None or e.radius > 0, "must be > 0"),
        ("lifetime", e.lifetime is None or (len(e.lifetime) == 2
                                            and 1 <= e.lifetime[0] <= e.lifetime[1]),
         "must be [low, high] with 1 <= low <= high"),
    ]
    for key, ok, message in problems:
        if not ok:
            raise ConfigError(f"{where}: key '{key}' {message}")
    if e.kind in ("crash", "leave", "depart") and (e.nodes is None) == (e.fraction is None):
        raise ConfigError(f"{where}: give exactly one of 'nodes' or 'fraction'")
    if e.kind == "arrive":
        _check_arrive(where, e)


def _check_arrive(where: str, e: Event) -> None:
    if e.rate is not None and not (0 < e.rate <= 1e6):
        raise ConfigError(f"{where}: key 'rate' must be > 0 (arrivals per round)")
    if e.rate is None and e.until is not None:
        raise ConfigError(f"{where}: key 'until' goes with 'rate'")
    if e.rounds is not None:
        if e.rate is not None or e.nodes is None or len(e.rounds) != len(e.nodes):
            raise ConfigError(f"{where}: key 'rounds' needs 'nodes' of the same length (one "
                              "round per peer) and no 'rate'")
        if min(e.rounds, default=0) < e.round:
            raise ConfigError(f"{where}: key 'rounds' must be >= round")
    if e.nodes is not None and len(set(e.nodes)) != len(e.nodes):
        raise ConfigError(f"{where}: key 'nodes' lists a peer twice")


def load_scenario(path: str | Path) -> tuple[dict[str, Any], list[Event]]:
    """(the settings table, events) of a scenario file. The settings are checked by the caller
    exactly like a ``--config`` file (``SimConfig.from_table``); the events here."""
    raw = read_config_file(path)
    events_raw = raw.pop("events", [])
    if not isinstance(events_raw, list):
        raise ConfigError(f"{path}: 'events' must be an array of tables ([[events]])")
    base = Path(path).resolve().parent
    events = [parse_event(i, e, base) for i, e in enumerate(events_raw)]
    return raw, events


def read_trace(path: str | Path) -> dict[int, list[tuple[int, int]]]:
    """``peer,start,end`` lines (a header line is allowed) -> online intervals per peer."""
    intervals: dict[int, list[tuple[int, int]]] = {}
    try:
        with open(path, newline="") as fh:
            for number, row in enumerate(csv.reader(fh), start=1):
                if not row or row[0].strip().startswith("#") or row[0].strip() == "peer":
                    continue
                try:
                    peer, start, end = (int(v) for v in row[:3])
                except ValueError as exc:
                    raise ConfigError(f"trace {path}, line {number}: expected peer,start,end "
                                      f"integers, got {row}") from exc
                if end <= start:
                    raise ConfigError(f"trace {path}, line {number}: end {end} <= start {start}")
                intervals.setdefault(peer, []).append((start, end))
    except OSError as exc:
        raise ConfigError(f"trace file {path}: {exc.strerror}") from exc
    return intervals


@dataclass
class Timeline:
    """The state the events leave behind: who is down, which edges are down; consulted by the
    engine at the start of every round. It never touches models except through ``engine``'s
    ``take_down`` / ``bring_back``."""

    events: list[Event]
    seed: int
    cut_edges: dict[int, set[tuple[int, int]]] = field(default_factory=dict)
    outages: dict[int, list[int]] = field(default_factory=dict)  # event index -> peers it took
    lifetimes: dict[int, int] = field(default_factory=dict)
    worked: dict[int, int] = field(default_factory=dict)
    traces: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def __post_init__(self):
        for e in self.events:
            if e.kind == "trace":
                self.traces.update(read_trace(e.file))

    def rng(self, index: int, round_index: int = 0) -> np.random.Generator:
        return np.random.default_rng(derive_seed(self.seed, "event", index * 100003
                                                 + round_index))

    def select(self, event: Event, index: int, candidates: list[int], graph: nx.Graph
               ) -> list[int]:
        """``event.fraction`` of ``candidates`` (rounded, at least one), at random or by
        centrality on the current graph (ties by id)."""
        fraction = event.fraction or 0.0  # given when nodes is not (parse_event)
        count = max(1, round(fraction * len(candidates))) if candidates else 0
        if event.select == "random":
            chosen = self.rng(index).choice(candidates, size=count, replace=False)
            return sorted(int(v) for v in chosen)
        if event.select == "degree":
            score = dict(graph.degree(candidates))
        else:
            score = nx.betweenness_centrality(graph)
        ranked = sorted(candidates, key=lambda v: (-score[v], v))
        return sorted(ranked[:count])

    def arrivals(self, nodes: int) -> dict[int, int]:
        """Peer -> the round it arrives at, from the ``arrive`` events (see the module
        docstring). ValueError when a peer arrives twice or is no peer at all."""
        when: dict[int, int] = {}
        for index, e in enumerate(self.events):
            if e.kind != "arrive":
                continue
            arriving = e.nodes or []  # a required key of arrive (parse_event)
            if e.rate is None:
                rounds = e.rounds if e.rounds is not None else [e.round] * len(arriving)
                schedule = dict(zip(arriving, rounds, strict=True))
            else:
                schedule = self._poisson(index, e, arriving, rate=e.rate)
            clash = sorted(set(schedule) & set(when))
            wrong = sorted(v for v in schedule if not 0 <= v < nodes)
            if clash or wrong:
                raise ValueError(f"event arrive at round {e.round}: peers {clash or wrong} "
                                 + ("arrive twice" if clash else f"are not peers (nodes = "
                                                                 f"{nodes})"))
            when.update(schedule)
        return when

    def _poisson(self, index: int, e: Event, pool: list[int], *, rate: float
                 ) -> dict[int, int]:
        rng = self.rng(index)
        order = [int(v) for v in rng.permutation(np.asarray(pool, dtype=np.int64))]
        schedule, t = {}, e.round
        while order:
            if e.until is not None and t >= e.until:
                schedule.update(dict.fromkeys(order, e.until))
                break
            count = int(rng.poisson(rate))
            schedule.update(dict.fromkeys(order[:count], t))
            order, t = order[count:], t + 1
        return schedule

    def graph_at(self, base: nx.Graph, round_index: int) -> nx.Graph:
        """The base graph minus this round's failed links and cut edges."""
        graph = base.copy()
        for index, e in enumerate(self.events):
            if e.kind == "link-failure" and e.round <= round_index and \
                    (e.until is None or round_index < e.until):
                rng = self.rng(index, round_index)
                edges = sorted(tuple(sorted(edge)) for edge in base.edges)
                graph.remove_edges_from(edge for edge, draw in zip(edges, rng.random(len(edges)),
                                                                  strict=True)
                                        if draw < e.probability)
        for cut in self.cut_edges.values():
            graph.remove_edges_from(cut)
        return graph

    def partition_edges(self, graph: nx.Graph, index: int) -> set[tuple[int, int]]:
        from networkx.algorithms.community import kernighan_lin_bisection

        left, _ = kernighan_lin_bisection(graph, seed=derive_seed(self.seed, "partition",
                                                                  index))
        return {(a, b) for a, b in graph.edges if (a in left) != (b in left)}


def in_disc(graph: nx.Graph, center: list[float], radius: float) -> list[int]:
    """Nodes whose ``pos`` lies within ``radius`` of ``center``."""
    missing = [v for v in graph if "pos" not in graph.nodes[v]]
    if missing:
        raise ConfigError("regional-outage needs node positions: use topology "
                          "random-geometric or a graph file with 'pos' attributes")
    return sorted(v for v in graph if math.dist(graph.nodes[v]["pos"], center) <= radius)
