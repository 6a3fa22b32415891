"""The batched engine agrees with the reference engine and refuses what it cannot batch."""

import json

import pytest
import torch

from sim import SimConfig
from sim.batched import BatchedSimulation, build_simulation
from sim.cli import main
from sim.scenario import Event

# Stated tolerance: per-round accuracies within 1/450 (one test image of digits) and parameters
# within 1e-4; the engines differ only in float summation order (sparse W X vs id-ordered sums,
# one batched backward vs one per peer).
ACC_TOL = 1 / 450 + 1e-9


def rows(config, events):
    from sim import Recorder

    recorder = Recorder()
    sim = build_simulation(config, [recorder], events)
    summary = sim.run()
    return sim, recorder.rows, summary


@pytest.mark.parametrize("settings", [
    {"algorithm": "dfedavg", "model": "mlp"},
    {"algorithm": "dfedsam-mgs", "gossip_steps": 2, "model": "mlp", "data_fraction": 0.5},
])
def test_batched_engine_matches_the_reference_on_a_scenario_with_a_crash(settings):
    base = dict(nodes=16, topology="random-regular", degree=4, rounds=12, partition="dirichlet",
                alpha=0.5, seed=3, **settings)
    events = [Event("crash", round=4, fraction=0.25, select="degree"),
              Event("rejoin", round=8, state="fresh")]
    ref, ref_rows, ref_summary = rows(SimConfig.of(engine="reference", **base), events)
    bat, bat_rows, bat_summary = rows(SimConfig.of(engine="batched", **base), events)
    assert isinstance(bat, BatchedSimulation)
    assert len(ref_rows) == len(bat_rows) == 12
    for a, b in zip(ref_rows, bat_rows, strict=True):
        assert a["alive"] == b["alive"] and a["messages"] == b["messages"]
        for key in ("mean_acc", "min_acc", "max_acc", "acc_largest"):
            assert abs(a[key] - b[key]) <= ACC_TOL, (a["round"], key)
    for x, y in zip(ref.learners, bat.learners, strict=True):
        assert torch.allclose(x.params, y.params, atol=1e-4)
    assert ref_rows[4]["alive"] == 12 and ref_rows[-1]["alive"] == 16


@pytest.mark.parametrize("flags, message", [
    (["--mixing", "median"], "[mixing] name = median keeps per-peer state"),
    (["--attack", "noise", "--adversaries", "1"], "[attack] kind needs per-peer behaviour"),
])
def test_batched_engine_refuses_what_it_cannot_batch(flags, message, tmp_path, capsys):
    code = main(["--engine", "batched", "--nodes", "6", "--rounds", "1", "--quiet",
                 "--out", str(tmp_path), *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_batched_cli_run_writes_the_same_files(tmp_path):
    assert main(["--engine", "batched", "--nodes", "32", "--topology", "torus", "--rounds", "3",
                 "--algorithm", "dfedavg", "--quiet", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["sim"]["engine"] == "batched" and summary["mean_acc"] > 0.3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
