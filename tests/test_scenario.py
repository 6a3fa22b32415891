import json

import networkx as nx
import pytest
import torch

from sim import SimConfig, Simulation
from sim.batched import BatchedSimulation
from sim.cli import main, parse_args
from sim.scenario import Event, in_disc, parse_event


def small(**kw):
    base = dict(nodes=12, topology="ring", model="logreg", algorithm="dfedavg", rounds=6,
                final_merge=False)
    return SimConfig.of(**{**base, **kw})


def run(config, events):
    sim = Simulation.from_config(config, events=events)
    summary = sim.run()
    return sim, summary


def test_a_crashed_peer_sends_and_receives_nothing_and_its_model_freezes():
    sim = Simulation.from_config(small(rounds=4), events=[Event("crash", round=2, nodes=[3])])
    frozen = None
    for t in range(4):
        graph = sim.apply_events(t, sim.topology.graph_at(t))
        if t == 2:
            frozen = sim.learners[3].params.clone()
            sent_before = sim.traffic.messages
        sim.local_updates(t)
        sim.gossip_step(graph, t)
        if t == 2:
            # ring of 12 without peer 3: 11 peers, 10 edges, 20 directed messages
            assert sim.traffic.messages - sent_before == 20
    assert 3 not in sim.alive
    assert torch.equal(sim.learners[3].params, frozen)


def test_a_rejoined_peer_trains_again_kept_or_fresh():
    for state in ("kept", "fresh"):
        sim = Simulation.from_config(small(rounds=6), events=[
            Event("crash", round=1, nodes=[5]), Event("rejoin", round=3, nodes=[5], state=state)])
        for t in range(3):
            graph = sim.apply_events(t, sim.topology.graph_at(t))
            sim.local_updates(t)
            sim.gossip_step(graph, t)
        down = sim.learners[5].params.clone()
        graph = sim.apply_events(3, sim.topology.graph_at(3))
        assert 5 in sim.alive
        if state == "fresh":
            assert torch.equal(sim.learners[5].params, sim.learners[4].params)
        else:
            assert torch.equal(sim.learners[5].params, down)
        sim.local_updates(3)
        assert not torch.equal(sim.learners[5].params, down)


def test_regional_outage_removes_exactly_the_peers_in_the_disc_and_they_come_back():
    config = small(nodes=40, topology="random-geometric", radius=0.35, rounds=5)
    event = Event("regional-outage", round=1, center=[0.5, 0.5], radius=0.25, until=3)
    sim = Simulation.from_config(config, events=[event])
    base = sim.topology.graph_at(0)
    inside = {v for v in base if sum((a - 0.5) ** 2 for a in base.nodes[v]["pos"]) <= 0.25 ** 2}
    assert inside and set(in_disc(base, [0.5, 0.5], 0.25)) == inside
    sim.apply_events(0, base)
    sim.apply_events(1, base)
    assert sim.alive == set(range(40)) - inside
    sim.apply_events(2, base)
    sim.apply_events(3, base)
    assert sim.alive == set(range(40))


def test_a_partition_splits_the_graph_and_heals():
    sim = Simulation.from_config(small(nodes=20, topology="random-regular", degree=4),
                                 events=[Event("partition", round=2, until=4)])
    base = sim.topology.graph_at(0)
    graphs = [sim.apply_events(t, base) for t in range(5)]
    assert nx.number_connected_components(graphs[1]) == 1
    assert nx.number_connected_components(graphs[2]) == 2
    assert nx.number_connected_components(graphs[3]) == 2
    assert nx.number_connected_components(graphs[4]) == 1


def test_link_failures_battery_and_trace(tmp_path):
    sim = Simulation.from_config(small(nodes=20, topology="complete"), events=[
        Event("link-failure", round=1, probability=0.5, until=3)])
    base = sim.topology.graph_at(0)
    edges = [sim.apply_events(t, base).number_of_edges() for t in range(4)]
    assert edges[0] == edges[3] == 190 and 60 < edges[1] < 130 and 60 < edges[2] < 130
    sim = Simulation.from_config(small(), events=[Event("battery", round=0, lifetime=[2, 3])])
    alive = [len(sim.apply_events(t, base) and sim.alive) for t in range(5)]
    assert alive[0] == alive[1] == 12 and alive[4] == 0 and alive[2] >= alive[3]
    trace = tmp_path / "trace.csv"
    trace.write_text("peer,start,end\n0,0,2\n0,4,9\n1,3,9\n")
    sim = Simulation.from_config(small(), events=[Event("trace", file=str(trace))])
    states = [{v for v in (0, 1) if v in (sim.apply_events(t, base) and sim.alive)}
              for t in range(5)]
    assert states == [{0}, {0}, set(), {1}, {0, 1}]


def test_degree_selection_among_relays_takes_the_hubs_and_keeps_data_holders():
    config = small(nodes=30, topology="barabasi-albert", attach=2, data_fraction=0.5)
    sim = Simulation.from_config(config, events=[
        Event("crash", round=0, fraction=0.4, select="degree", among="relays")])
    base = sim.topology.graph_at(0)
    relays = sorted(set(range(30)) - sim.data_holders)
    assert len(sim.data_holders) == 15
    sim.apply_events(0, base)
    removed = set(range(30)) - sim.alive
    assert removed <= set(relays) and len(removed) == 6
    kept_relays = set(relays) - removed
    assert min(base.degree[v] for v in removed) >= max(base.degree[v] for v in kept_relays)
    assert all(sim.learners[v].num_samples == 0 for v in relays)


def test_mixing_weights_renormalise_over_surviving_neighbours():
    """One gossip step after a crash is X <- W X with W zero on dead peers' columns, rows summing
    to 1 and symmetric among the survivors (so their average is kept)."""
    config = small(nodes=15, topology="barabasi-albert", attach=2)
    sim = Simulation.from_config(config, events=[Event("crash", round=0, nodes=[0, 1])])
    batched = BatchedSimulation.from_config(config, events=[Event("crash", round=0,
                                                                  nodes=[0, 1])])
    graph = sim.apply_events(0, sim.topology.graph_at(0))
    batched.apply_events(0, batched.topology.graph_at(0))
    for k in range(15):  # distinct vectors so that W is identifiable from one step
        sim.learners[k].model.load(torch.randn(sim.model_size, generator=torch.Generator()
                                               .manual_seed(k)))
    before = torch.stack([lr.params.clone() for lr in sim.learners]).double()
    sim.gossip_step(graph)
    after = torch.stack([lr.params for lr in sim.learners]).double()
    W = batched.mixing_matrix(graph).to_dense().double()
    assert torch.allclose(after, W @ before, atol=1e-5)
    assert torch.allclose(W.sum(dim=1), torch.ones(15, dtype=torch.float64))
    alive = sorted(sim.alive)
    assert torch.equal(W[:, [0, 1]][alive], torch.zeros(13, 2, dtype=torch.float64))
    assert torch.allclose(W[alive][:, alive], W[alive][:, alive].T)
    assert torch.allclose(after[alive].mean(0), before[alive].mean(0), atol=1e-5)


def test_scenario_file_runs_and_the_same_seed_gives_the_same_metrics(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text("""
[graph]
nodes = 20
topology = "barabasi-albert"
data_fraction = 0.5

[model]
name = "logreg"

[algorithm]
name = "dfedavg"

[run]
rounds = 8

[[events]]
round = 4
kind = "crash"
fraction = 0.3
select = "betweenness"

[[events]]
round = 6
kind = "rejoin"
state = "fresh"
""")
    for out in ("a", "b"):
        assert main(["--scenario", str(scenario), "--out", str(tmp_path / out), "--quiet"]) == 0
    a = (tmp_path / "a" / "metrics.jsonl").read_text()
    b = (tmp_path / "b" / "metrics.jsonl").read_text()
    strip = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
             for line in a.splitlines()]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
                     for line in b.splitlines()]
    rows = [json.loads(line) for line in a.splitlines()]
    assert rows[4]["alive"] == 14 and rows[-1]["alive"] == 20
    assert {"components", "largest_component", "acc_largest", "acc_outside", "isolated",
            "acc_isolated", "merged_acc_components"} <= set(rows[-1])
    assert (tmp_path / "a" / "graph_round4.png").exists()
    assert (tmp_path / "a" / "graph_round6.png").exists()


@pytest.mark.parametrize("event, message", [
    ({"kind": "explode"}, "events[0]: kind must be one of crash"),
    ({"kind": "crash", "round": 3}, "events[0] (crash): give exactly one of 'nodes' or"),
    ({"kind": "crash", "fraction": 2.0}, "events[0] (crash): key 'fraction' must be in (0, 1]"),
    ({"kind": "link-failure"}, "events[0] (link-failure): key 'probability' is required"),
    ({"kind": "partition", "round": 5, "until": 2}, "key 'until' must be after round"),
    ({"kind": "crash", "nodes": [1], "colour": "red"}, "unknown key 'colour'"),
    ({"kind": "battery", "lifetime": [5, 2]}, "key 'lifetime' must be [low, high]"),
    ({"kind": "crash", "nodes": "all"}, "events[0] (crash): key 'nodes' must be list, got 'all'"),
])
def test_bad_events_name_the_event_and_the_key(event, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        parse_event(0, event)


def test_bad_scenario_file_is_reported_by_the_cli(tmp_path, capsys):
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[graph]\nnodes = 10\n\n[[events]]\nkind = "crash"\nround = 1\n'
                        'fraction = 0\n')
    with pytest.raises(SystemExit):
        parse_args(["--scenario", str(scenario)])
    assert "events[0] (crash): key 'fraction'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["disaster.toml", "outage.toml"])
def test_the_shipped_scenarios_run(name, tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    assert main(["--scenario", str(path), "--rounds", "22", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert len(rows) == 22 and rows[-1]["alive"] < rows[0]["alive"]
    assert list(tmp_path.glob("graph_round*.png"))


def test_an_event_after_the_last_round_is_reported(capsys):
    from pathlib import Path

    from sim.cli import parse_args

    root = Path(__file__).resolve().parents[1]
    parse_args(["--scenario", str(root / "configs" / "disaster.toml"), "--rounds", "25"])
    err = capsys.readouterr().err
    assert "events[1] (rejoin) at round 40 comes after the last round (24)" in err
    assert "events[0]" not in err
