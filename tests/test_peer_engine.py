"""The peer engine runs node.peer.Peer on a simulated clock: the real protocol, simulated time."""

import asyncio
import json

import pytest
import torch

from sim import Recorder, SimConfig, Simulation
from sim.cli import main
from sim.clock import run_simulated
from sim.engines import build_simulation
from sim.peers import PeerSimulation
from sim.scenario import Event

BASE = dict(nodes=8, topology="ring", rounds=6, algorithm="dfedavg", model="logreg",
            partition="dirichlet", alpha=0.5, final_merge=False)


def test_the_simulated_clock_jumps_over_waits_and_keeps_their_order():
    async def scenario():
        loop = asyncio.get_running_loop()
        order = []

        async def later(delay, name):
            await asyncio.sleep(delay)
            order.append((name, loop.time()))

        await asyncio.gather(later(30.0, "b"), later(5.0, "a"))
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 1e-7)
        except asyncio.TimeoutError:
            order.append(("timeout", loop.time()))
        return order

    assert run_simulated(scenario()) == [("a", 5.0), ("b", 30.0), ("timeout", 30.0000001)]


def test_peer_engine_equals_the_reference_engine_without_events():
    reference = Simulation.from_config(SimConfig.of(**BASE))
    reference.run()
    peers = PeerSimulation.from_config(SimConfig.of(engine="peers", **BASE))
    summary = peers.run()
    for a, b in zip(reference.learners, peers.learners, strict=True):
        assert torch.equal(a.params, b.params)
    assert summary["simulated_s"] > 0 and summary["wall_s"] > 0


def crash_run():
    events = [Event("crash", round=2, nodes=[3]), Event("rejoin", round=4, nodes=[3])]
    recorder = Recorder()
    # the launcher's former waits (floor 2 s, startup 120 s), which the test below measures
    config = SimConfig.of(engine="peers", deadline_floor_s=2.0, startup_timeout_s=120.0, **BASE)
    sim = build_simulation(config, [recorder], events)
    sim.run()
    return sim, recorder.rows


def test_a_crash_is_suspected_after_one_deadline_and_no_round_waits_longer():
    sim, rows = crash_run()
    # [gossip] deadline_ceiling_s (default 10 s); the floor (deadline_floor_s = 2 s, set in
    # crash_run) is what a crash costs
    ceiling = sim.config.gossip.deadline_ceiling_s
    assert ceiling == 10.0 and sim.config.gossip.deadline_floor_s == 2.0
    assert [r["round"] for r in rows] == list(range(1, 7))
    assert rows[0]["suspects"] == 0 and max(r["suspects"] for r in rows) >= 2
    assert all(r["max_round_s"] <= ceiling + 3 * PeerSimulation.work_s for r in rows)
    assert max(r["max_round_s"] for r in rows) >= 2.0  # someone did wait for the crashed peer
    logs = sim.log_records(3)
    assert any(e["event"] == "resumed" for e in logs)  # the rejoined peer used its checkpoint
    assert sim.peers[3].completed_rounds == 6
    again, rows_again = crash_run()
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in rows_again]


def test_peer_engine_refuses_relays_and_runs_from_the_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="--engine peers: .*a real peer always holds a data shard"):
        build_simulation(SimConfig.of(engine="peers", data_fraction=0.5, **BASE))
    assert main(["--engine", "peers", "--nodes", "6", "--rounds", "3", "--model", "logreg",
                 "--quiet", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["sim"]["engine"] == "peers" and "simulated_s" in summary


def test_a_fresh_rejoin_restarts_the_peer_from_the_initial_model():
    config = SimConfig.of(engine="peers", nodes=6, rounds=4, model="logreg")
    events = [Event("crash", round=1, nodes=[2]), Event("rejoin", round=2, nodes=[2],
                                                        state="fresh")]
    recorder = Recorder()
    build_simulation(config, [recorder], events).run()
    assert [r["round"] for r in recorder.rows][-1] == 4
    assert recorder.rows[-1]["alive"] == 6
