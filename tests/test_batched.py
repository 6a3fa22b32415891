"""The batched engine agrees with the reference engine and refuses what it cannot batch."""

import json

import pytest
import torch

from sim import SimConfig
from sim.batched import BatchedSimulation
from sim.cli import main
from sim.engines import build_simulation
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


# On a GPU the engines agree with the CPU to this tolerance: accuracies within one test image,
# consensus distance within 1e-4 relative (cuBLAS and cuSPARSE sum in other orders than the CPU
# kernels; over 8 rounds of SGD the parameters drift apart by float rounding only).
DEVICE_REL_TOL = 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: compares --device cuda with --device cpu")
@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_cuda_gives_the_cpu_metrics(engine):
    base = dict(nodes=16, topology="random-regular", degree=4, rounds=8, partition="dirichlet",
                alpha=0.5, seed=3, algorithm="dfedsam-mgs", gossip_steps=2, engine=engine)
    events = [Event("crash", round=3, fraction=0.25), Event("rejoin", round=6, state="fresh")]
    _, cpu_rows, cpu_summary = rows(SimConfig.of(device="cpu", **base), events)
    sim, gpu_rows, gpu_summary = rows(SimConfig.of(device="cuda", **base), events)
    assert sim.x_test.is_cuda and sim.learners[0].params.is_cuda
    for a, b in zip(cpu_rows, gpu_rows, strict=True):
        assert a["alive"] == b["alive"] and a["messages"] == b["messages"]
        for key in ("mean_acc", "min_acc", "max_acc", "merged_acc"):
            assert abs(a[key] - b[key]) <= ACC_TOL, (a["round"], key)
        assert abs(a["consensus_distance"] - b["consensus_distance"]) <= \
            DEVICE_REL_TOL * a["consensus_distance"]
    assert abs(cpu_summary["merged_acc"] - gpu_summary["merged_acc"]) <= ACC_TOL


@pytest.mark.parametrize("engine, message", [
    ("batched", "[run] device = cuda, but torch finds no CUDA GPU on this machine"),
    ("reference", "[run] device = cuda, but torch finds no CUDA GPU on this machine"),
    ("peers", "[run] device = cuda: the peers engine runs real peers' protocol code on the CPU"),
])
def test_device_cuda_without_a_gpu_exits_2_with_one_line(engine, message, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["--engine", engine, "--device", "cuda", "--nodes", "6", "--rounds", "1",
                 "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_the_row_sampler_draws_each_peers_own_stream():
    """RowSampler (all peers at once) yields what each peer's BatchSampler would, shards
    smaller than a batch (padded and masked) included."""
    from node.learning.training import BatchSampler
    from sim.batched import RowSampler

    sizes, batch = [3, 20, 7, 16], 8
    reference = [BatchSampler(s, batch, seed=10 + k) for k, s in enumerate(sizes)]
    mine = RowSampler([BatchSampler(s, batch, seed=10 + k) for k, s in enumerate(sizes)],
                      offsets=[0, 3, 23, 30], device="cpu")
    members = torch.tensor([0, 1, 2, 3]).numpy()
    for _ in range(9):
        index, mask = mine.next(members)
        for k, sampler in enumerate(reference):
            expected = sampler.next() + [0, 3, 23, 30][k]
            width = int(mask[k].sum())
            assert index[k, :width].tolist() == expected.tolist()
    odd = torch.tensor([1, 3]).numpy()  # a subset (crashed peers skip steps)
    index, mask = mine.next(odd)
    assert mask is None and index[1].tolist() == (reference[3].next() + 30).tolist()
