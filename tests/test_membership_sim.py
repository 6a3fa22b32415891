"""Open membership in the peers engine: real ``node.peer.Peer`` objects joining, leaving, crashing
and rejoining on the simulated clock (sim/peers.py, the arrive / depart events of sim/scenario.py).

One small run (24 peers, 3 of them starting the network, the rest arriving by a Poisson process,
20% leaving gracefully, one crash, some returning) is shared by the tests; a second run with the
same seed checks that rows repeat exactly.
"""

from __future__ import annotations

import pytest

from node.config import SimConfig
from node.schema import ConfigError
from sim import Recorder
from sim.batched import BatchedSimulation
from sim.engine import Simulation
from sim.peers import PeerSimulation, overlay_metrics
from sim.scenario import Event, Timeline, parse_event

NODES, ROUNDS, BOOT = 24, 20, 3
VIEW = 16
DEPART_AT, CRASH_AT, REJOIN_AT = 10, 13, 15
MEMBERSHIP = {"dynamic": True, "view_size": VIEW, "shuffle_every_s": 0.1, "forget_after_s": 5.0}


def config(seed: int = 0) -> SimConfig:
    return SimConfig.from_table({
        "graph": {"nodes": NODES, "topology": "random-regular", "degree": 4},
        "model": {"name": "logreg"}, "algorithm": {"name": "dfedavg", "final_merge": False},
        "run": {"rounds": ROUNDS, "seed": seed}, "sim": {"engine": "peers"},
        "membership": MEMBERSHIP})


def events(seed: int = 0) -> list[Event]:
    arrivals = list(range(BOOT, NODES))
    return [Event("arrive", round=1, nodes=arrivals, rate=(NODES - BOOT) / 5, until=6),
            Event("depart", round=DEPART_AT, fraction=0.2, among="all"),
            Event("crash", round=CRASH_AT, nodes=[NODES - 1]),
            Event("rejoin", round=REJOIN_AT)]


def run(seed: int = 0) -> tuple[PeerSimulation, dict, list[dict]]:
    recorder = Recorder()
    sim = PeerSimulation.from_config(config(seed), [recorder], events(seed))
    summary = sim.run()
    return sim, summary, recorder.rows


@pytest.fixture(scope="module")
def membership_run():
    return run()


def records(sim: PeerSimulation, peer: int) -> list[dict]:
    return sim.log_records(peer)


@pytest.mark.slow
def test_views_stay_bounded_and_fill(membership_run):
    sim, summary, rows = membership_run
    assert len(rows) == ROUNDS
    assert all(r["view_max"] <= VIEW for r in rows)
    # the views do fill (a view that never grows would pass the bound trivially)
    assert max(r["view_max"] for r in rows) >= VIEW // 2


@pytest.mark.slow
def test_the_overlay_of_alive_peers_stays_connected(membership_run):
    sim, summary, rows = membership_run
    assert [r["overlay_components"] for r in rows] == [1] * ROUNDS
    assert all(r["spectral_gap"] > 0 for r in rows)
    assert rows[-1]["arrived"] == NODES - BOOT
    # every peer is back and in the one component at the end
    assert rows[-1]["overlay_largest"] == NODES


@pytest.mark.slow
def test_arrivals_receive_the_current_model(membership_run):
    sim, summary, rows = membership_run
    fresh_after_one_round = rows[0]["mean_acc"]  # the initial peers start from a fresh model
    arrivals = summary["arrivals"]
    assert len(arrivals) == NODES - BOOT
    for peer, a in arrivals.items():
        assert a["joined"] is not None and a["joined"]["donor"] is not None, peer
        assert a["joined"]["round"] >= a["round"], peer  # it starts at the network's round
        assert a["first_accuracy"] > fresh_after_one_round + 0.1, (peer, a)
        assert a["first_mix_s"] is not None
    assert rows[-1]["joined"] == NODES - BOOT
    assert rows[-1]["join_latency_max_s"] < 2.0  # simulated seconds: a few pieces of work


@pytest.mark.slow
def test_leavers_leave_their_neighbours_sets(membership_run):
    sim, summary, rows = membership_run
    departed = {int(v) for v in summary["departed"]}
    assert len(departed) == round(0.2 * NODES)
    for d in departed:
        told = [r for r in records(sim, d) if r["event"] == "left"]
        assert told and told[0]["told"], d  # it said so to its neighbours
        for j in told[0]["told"]:
            if j in departed:
                continue
            dropped = [r for r in records(sim, j) if r["event"] == "neighbour_dropped"
                       and r["neighbour"] == d]
            assert dropped and dropped[0]["reason"] == "left", (d, j)
    # two rounds after the leave (and before the crash) nobody counts a peer that is gone
    after = next(r for r in rows if r["round"] == DEPART_AT + 2)
    assert after["one_sided_edges"] == 0


@pytest.mark.slow
def test_a_restarted_peer_rejoins_through_the_peers_it_knew(membership_run):
    sim, summary, rows = membership_run
    back = summary["rejoins"]
    assert {int(v) for v in back} == {int(v) for v in summary["departed"]} | {NODES - 1}
    for v, lives in back.items():
        peer = sim.peers[int(v)]
        assert peer.resumed and peer.config.membership.bootstrap == []
        admitted = [r for r in records(sim, int(v)) if r["event"] == "admitted"]
        assert admitted[-1]["via"] in peer.membership.known_urls
        assert lives[0]["joined"] is not None and peer.neighbours
        assert peer.completed_rounds == ROUNDS


@pytest.mark.slow
def test_the_same_seed_gives_the_same_rows(membership_run):
    _, _, rows = membership_run
    _, _, again = run()

    def strip(rs):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]

    assert strip(again) == strip(rows)


def test_poisson_arrivals_are_seeded_and_complete():
    e = Event("arrive", round=2, nodes=list(range(3, 40)), rate=4.0, until=9)
    a = Timeline([e], seed=1).arrivals(40)
    assert a == Timeline([e], seed=1).arrivals(40)
    assert a != Timeline([e], seed=2).arrivals(40)
    assert sorted(a) == list(range(3, 40)) and 2 <= min(a.values()) and max(a.values()) <= 9
    listed = Event("arrive", round=1, nodes=[5, 6], rounds=[3, 7])
    assert Timeline([listed], seed=0).arrivals(8) == {5: 3, 6: 7}
    with pytest.raises(ValueError, match="arrive twice"):
        Timeline([listed, Event("arrive", round=2, nodes=[6])], seed=0).arrivals(8)


def test_arrive_and_depart_are_checked_and_refused_by_other_engines():
    with pytest.raises(ConfigError, match="rounds"):
        parse_event(0, {"kind": "arrive", "nodes": [1, 2], "rounds": [3]})
    with pytest.raises(ConfigError, match="nodes"):
        parse_event(0, {"kind": "arrive", "rate": 2.0})
    base = {"graph": {"nodes": 6}, "model": {"name": "logreg"}, "run": {"rounds": 2}}
    for kind, extra in (("arrive", {"nodes": [5]}), ("depart", {"nodes": [1]})):
        e = parse_event(0, {"kind": kind, "round": 1, **extra})
        with pytest.raises(ValueError, match="only on --engine peers"):
            Simulation.from_config(SimConfig.from_table(base), events=[e])
        with pytest.raises(ValueError, match="--engine batched.*use --engine peers"):
            BatchedSimulation.from_config(SimConfig.from_table(base), events=[e])
    static = SimConfig.from_table({**base, "sim": {"engine": "peers"}})
    with pytest.raises(ValueError, match="needs \\[membership\\] dynamic"):
        PeerSimulation.from_config(static, events=[parse_event(0, {"kind": "arrive",
                                                                    "nodes": [5]})])


def test_overlay_metrics_of_known_graphs():
    import networkx as nx

    ring = overlay_metrics(nx.cycle_graph(6))
    assert ring["overlay_components"] == 1 and ring["degree_hist"] == [0, 0, 6]
    assert 0 < ring["spectral_gap"] < overlay_metrics(nx.complete_graph(6))["spectral_gap"]
    split = overlay_metrics(nx.Graph([(0, 1), (2, 3), (3, 4)]))
    assert split["overlay_components"] == 2 and split["overlay_largest"] == 3
