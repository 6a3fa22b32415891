import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ENGINES as ENGINE_NAMES
from sim import Recorder, SimConfig, Simulation
from sim.cli import main, parse_args
from sim.engines import ENGINES, build_simulation, refusal

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_python_m_sim_writes_metrics_summary_and_plot(tmp_path):
    out = tmp_path / "run"
    result = run_cli("--nodes", "6", "--rounds", "3", "--topology", "torus", "--nodes", "9",
                     "--algorithm", "dfedsam-mgs", "--gossip-steps", "2", "--partition",
                     "dirichlet", "--alpha", "0.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in ("mean_acc", "min_acc", "max_acc", "consensus_distance", "merged_acc", "alive",
                "bytes_sent"):
        assert key in rows[-1]
    # torus of 9: 36 directed messages per gossip step, 2 steps per round, 4.8k float32 each
    assert rows[0]["messages"] == 72
    assert rows[0]["bytes_sent"] == 72 * 4 * 4810
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["config"]["algorithm"]["gossip_steps"] == 2
    assert len(summary["node_accuracy"]) == 9
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "merged acc" in result.stdout


@pytest.mark.slow
def test_the_readme_demo_config_runs(tmp_path):
    result = run_cli("--config", "configs/demo.toml", "--rounds", "2", "--out",
                     str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["algorithm"]["name"] == "dfedsam-mgs" and summary["rounds"] == 2
    readme = (ROOT / "README.md").read_text()
    assert "configs/demo.toml" in readme


@pytest.mark.parametrize("args, message", [
    (["--topology", "hypercube"], r"\[graph\] topology: unknown 'hypercube'; valid: ring"),
    (["--algorithm", "fedprox"], r"\[algorithm\] name: unknown 'fedprox'; valid: dsgd"),
    (["--nodes", "1"], r"\[graph\] nodes: must be >= 2, got 1"),
    (["--lr", "0"], r"\[algorithm\] lr: must be > 0.0"),
    (["--rho", "0.1"], r"\[algorithm\] rho = 0.1 does not apply to dsgd"),
    (["--topology", "random-regular", "--degree", "3", "--nodes", "5"], "n\\*degree even"),
    (["--batch-size", "many"], "argument --batch-size: invalid int value"),
    (["--config", "missing.toml"], "--config: file missing.toml does not exist"),
    (["--node", "4"], r"unrecognized argument --node; did you mean --nodes\?"),
])
def test_bad_arguments_get_one_clear_line_and_a_nonzero_exit(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main([*args, "--quiet", "--out", str(tmp_path / "x")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_bad_flag_exits_nonzero_from_the_shell():
    result = run_cli("--topology", "hypercube")
    assert result.returncode == 2 and "[graph] topology: unknown 'hypercube'" in result.stderr


@pytest.mark.slow
def test_help_lists_every_topology_and_algorithm():
    result = run_cli("--help")
    assert result.returncode == 0
    text = re.sub(r"-\s+", "-", " ".join(result.stdout.split()))
    for name in ("ring", "torus", "exponential", "barabasi-albert", "random-geometric",
                 "one-peer-exponential", "dsgd", "dfedavg", "dfedsam", "dfedsam-mgs"):
        assert name in text


def test_toml_config_is_read_and_flags_override_it(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[graph]\nnodes = 8\ntopology = "exponential"\n\n'
                    '[algorithm]\nname = "dfedavg"\nlocal_steps = 3\n\n[run]\nseed = 4\n')
    config, _ = parse_args(["--config", str(path), "--seed", "9"])
    assert (config.graph.nodes, config.graph.topology, config.algorithm.name,
            config.algorithm.local_steps, config.run.seed) == (8, "exponential", "dfedavg", 3, 9)
    capsys.readouterr()
    for text, message in [
        ("[graph]\nnodez = 8\n", "unknown key [graph] nodez; did you mean 'nodes'?"),
        ("nodes = 8\n", "key 'nodes' must be inside its section: [graph] nodes"),
        ('[graph]\nnodes = "eight"\n', "[graph] nodes: must be int, got 'eight'"),
    ]:
        path.write_text(text)
        with pytest.raises(SystemExit):
            parse_args(["--config", str(path)])
        assert message in capsys.readouterr().err


def metrics_of(seed, **overrides):
    config = SimConfig.of(nodes=6, rounds=3, partition="dirichlet", alpha=0.5, seed=seed,
                          topology="erdos-renyi", **overrides)
    sim = Simulation.from_config(config)
    recorder = Recorder()
    sim.observers.append(recorder)
    summary = sim.run()
    rows = [{k: v for k, v in row.items() if k != "wall_s"} for row in recorder.rows]
    return rows, summary


def test_same_seed_same_numbers_different_seed_different_numbers():
    a, sa = metrics_of(5)
    b, sb = metrics_of(5)
    c, sc = metrics_of(6)
    assert a == b and sa["node_accuracy"] == sb["node_accuracy"]
    assert a != c and sa["node_samples"] != sc["node_samples"]


def test_final_merge_gives_every_peer_the_exact_average():
    _, summary = metrics_of(1, algorithm="dfedavg")
    after = set(summary["node_accuracy_after_merge"].values())
    assert len(after) == 1 and after == {summary["merged_acc"]}


def test_time_varying_topology_and_synthetic_data_run():
    config = SimConfig.of(nodes=8, rounds=3, topology="one-peer-exponential",
                          dataset="synthetic", partition="natural", model="logreg", seed=2)
    summary = Simulation.from_config(config).run()
    assert 0.0 <= summary["mean_acc"] <= 1.0 and summary["model_parameters"] == 610


def test_the_engine_table_holds_every_engine_the_config_names():
    assert list(ENGINES) == list(ENGINE_NAMES)
    assert [e.simulation.engine_name for e in ENGINES.values()] == list(ENGINE_NAMES)


@pytest.mark.parametrize("settings, ranks, message", [
    ({"engine": "batched", "attack": "noise", "adversaries": 1}, 1,
     "--engine batched: [attack] kind needs per-peer behaviour"),
    ({"engine": "batched", "mixing": "median"}, 1, "--engine batched: [mixing] name = median"),
    ({"engine": "peers", "data_fraction": 0.5}, 1, "--engine peers: [graph] data_fraction"),
    ({"engine": "peers", "nodes": 1348}, 1, "--engine peers: more peers than digits"),
    ({"engine": "peers", "device": "cuda"}, 1, "use --engine batched or reference on a GPU"),
    ({"engine": "reference"}, 2, "--engine reference runs in one process; under torchrun "
     "(WORLD_SIZE > 1) only --engine batched shards"),
    ({"engine": "peers", "data_fraction": 0.5}, 2, "--engine peers runs in one process"),
])
def test_each_engine_refuses_what_it_cannot_run_with_one_reason(settings, ranks, message):
    reason = refusal(SimConfig.of(**settings), ranks=ranks)
    assert reason is not None and message in reason and "\n" not in reason


@pytest.mark.parametrize("engine", list(ENGINE_NAMES))
def test_what_every_engine_runs_is_not_refused(engine):
    config = SimConfig.of(engine=engine, nodes=4, rounds=1, model="logreg")
    assert refusal(config) is None
    attacked = refusal(config.updated(attack="noise", adversaries=1))
    assert (attacked is not None) == (engine == "batched")
    assert type(build_simulation(config)) is ENGINES[engine].simulation


def test_build_simulation_refuses_before_building(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("built a refused config")
    monkeypatch.setattr(ENGINES["batched"].simulation, "from_config", never)
    with pytest.raises(ValueError, match=r"^--engine batched: \[mixing\] name = median"):
        build_simulation(SimConfig.of(engine="batched", mixing="median"))
