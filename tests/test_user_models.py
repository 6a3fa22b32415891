"""Your own model and your own data: a user's factory and files, in one peer, in launched peers
and in the simulator; BatchNorm buffers; what bad input gets; the Python API."""

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import topology as T
from node.config import PeerConfig, SimConfig, learner_for
from node.learning import make_learner
from node.learning.model import FlatModel
from node.schema import ConfigError
from sim import Simulation
from tests.helpers import no_peer_left_behind, run_memory_network

ROOT = Path(__file__).resolve().parents[1]

MODEL_PY = '''
from torch import nn


def build(in_features=4, num_classes=2, hidden=16):
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))


def not_a_module():
    return 42


VALUE = 3
'''


def write_csv(path: Path, rows: int, seed: int) -> None:
    """Four readings and a learnable label: fault = 1 when r0 + r1 > r2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = (x[:, 0] + x[:, 1] > x[:, 2]).astype(int)
    lines = ["r0,r1,r2,r3,fault"] + [",".join(f"{v:.5f}" for v in row) + f",{label}"
                                     for row, label in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def project(tmp_path):
    """A user's folder, outside the package: model.py, readings.csv, test.csv, config.toml
    that all three tools read."""
    (tmp_path / "model.py").write_text(MODEL_PY)
    write_csv(tmp_path / "readings.csv", 900, seed=1)
    write_csv(tmp_path / "test.csv", 300, seed=2)
    (tmp_path / "config.toml").write_text(textwrap.dedent('''
        [peer]
        id = 0
        state_dir = "state"
        log_file = "state/log.jsonl"

        [run]
        rounds = 12

        [model]
        factory = "model:build"

        [model.options]
        in_features = 4
        hidden = 16

        [data]
        format = "csv"
        path = "readings.csv"
        label = "fault"
        test_path = "test.csv"
        partition = "iid"

        [algorithm]
        name = "dfedavg"
        lr = 0.1

        [graph]
        nodes = 3
        topology = "ring"

        [sim]
        out = "runs/sim"

        [launch]
        out = "runs/launch"
        '''))
    return tmp_path


@pytest.mark.slow
def test_a_user_model_on_a_user_csv_trains_in_a_peer_in_launched_peers_and_in_the_simulator(
        project):
    config = str(project / "config.toml")
    peer = subprocess.run([sys.executable, "-m", "node", "--config", config], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert peer.returncode == 0, peer.stderr[-2000:]
    final = json.loads((project / "state" / "final.json").read_text())
    assert final["rounds_completed"] == 12 and final["accuracy"] > 0.8  # chance is ~0.5
    assert final["scored_on"]["accuracy"].startswith("shared test set (300")
    with no_peer_left_behind(str(project / "runs")):
        launched = subprocess.run([sys.executable, "scripts/launch.py", "--config", config,
                                   "--quiet"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=600)
    assert launched.returncode == 0, launched.stderr[-2000:]
    summary = json.loads((project / "runs" / "launch" / "summary.json").read_text())
    assert len(summary["peers"]) == 3 and summary["mean_acc"] > 0.8
    simulated = subprocess.run([sys.executable, "-m", "sim", "--config", config, "--quiet"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert simulated.returncode == 0, simulated.stderr[-2000:]
    sim_summary = json.loads((project / "runs" / "sim" / "summary.json").read_text())
    assert sim_summary["mean_acc"] > 0.8
    # the launched peers and the simulator ran the same experiment: the same accuracies
    assert sim_summary["mean_acc"] == pytest.approx(summary["mean_acc"], abs=1e-6)


async def test_a_user_model_gives_the_same_numbers_in_the_simulator_and_in_memory_peers(
        project):
    table = {"model": {"factory": "model:build", "options": {"hidden": 8}},
             "data": {"format": "csv", "path": str(project / "readings.csv"),
                      "label": "fault", "partition": "dirichlet", "alpha": 0.5},
             "algorithm": {"name": "dfedavg", "final_merge": False},
             "graph": {"nodes": 4, "topology": "ring"},
             "run": {"rounds": 3, "import_path": [str(project)]}}
    config = SimConfig.from_table(table)
    sim = Simulation.from_config(config)
    sim.run()
    data = config.data.load(num_nodes=4, seed=0, import_path=config.run.import_path)
    configs = config.peer_configs([("127.0.0.1", 1)] * 4, project / "peers")
    peers = await run_memory_network(T.ring(4), configs, data)
    for peer, learner in zip(peers, sim.learners, strict=True):
        assert torch.equal(peer.learner.params, learner.params)
    assert sim.learners[0].model.size == 4 * 8 + 8 + 8 * 2 + 2


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


def bn_learners(mode: str):
    from node.config import AlgorithmSection
    from node.learning import resolve_algorithm
    from node.learning.data import user_dataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = user_dataset("t", (x, (x[:, 0] > 0).long()), "test")
    learners = []
    for i in range(2):
        learner = make_learner(i, data=data, shard=torch.arange(32 * i, 32 * i + 32),
                               model="", train=AlgorithmSection().train_config(),
                               algorithm=resolve_algorithm("dsgd"), seed=0, hidden=0,
                               mixing="average", mixing_options={}, init="shared",
                               buffers=mode, factory=lambda **_: BatchNormNet())
        learner.local_update(0)  # training updates each peer's running statistics
        learners.append(learner)
    return learners, x


@pytest.mark.parametrize("mode", ["average", "local"])
def test_batchnorm_buffers_follow_the_chosen_mode(mode):
    (a, b), _ = bn_learners(mode)
    assert a.model.buffers.numel() == 12 and not torch.equal(a.model.buffers, b.model.buffers)
    before_a, before_b = a.model.buffers.clone(), b.model.buffers.clone()
    sent_a, sent_b = a.outgoing().clone(), b.outgoing().clone()
    # what the engines and the peer do: every peer's mix from the vectors sent, then each loads
    mixed_a = a.mixed({1: sent_b}, own_degree=1, neighbour_degrees={1: 1})
    mixed_b = b.mixed({0: sent_a}, own_degree=1, neighbour_degrees={0: 1})
    assert torch.equal(a.model.buffers, before_a)  # mixed returns a new vector, loads nothing
    a.model.load_vector(mixed_a)
    b.model.load_vector(mixed_b)
    if mode == "average":  # Metropolis weights 1/2 on a single edge: the mean of the two
        assert torch.allclose(a.model.buffers, (before_a + before_b) / 2)
        assert torch.allclose(b.model.buffers, (before_a + before_b) / 2)
        assert a.vector_size == a.model.size + 12
    else:
        assert torch.equal(a.model.buffers, before_a) and torch.equal(b.model.buffers, before_b)
        assert a.vector_size == a.model.size
    assert torch.allclose(a.params, b.params)  # the weights are averaged either way


def test_recalibration_changes_only_the_buffers():
    (a, _), x = bn_learners("recalibrate")
    params, buffers = a.params.clone(), a.model.buffers.clone()
    a.model.recalibrate(x)
    assert torch.equal(a.params, params) and not torch.equal(a.model.buffers, buffers)
    fc = a.model.module.fc
    with torch.no_grad():
        h = fc(x)
    assert torch.allclose(a.model.module.bn.running_mean, h.mean(0), atol=1e-5)


def test_the_simulator_recalibrates_after_the_final_merge(project):
    (project / "bn.py").write_text(textwrap.dedent('''
        from torch import nn
        def build():
            return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        '''))
    table = {"model": {"factory": "bn:build", "buffers": "recalibrate"},
             "data": {"format": "csv", "path": str(project / "readings.csv"), "label": "fault"},
             "algorithm": {"name": "dfedavg"}, "graph": {"nodes": 3},
             "run": {"rounds": 3, "import_path": [str(project)]}}
    sim = Simulation.from_config(SimConfig.from_table(table))
    sim.run()
    a, b = sim.learners[0].model, sim.learners[1].model
    assert torch.equal(a.params, b.params)  # merged
    assert not torch.equal(a.buffers, b.buffers)  # each re-estimated on its own data
    from sim.batched import BatchedSimulation

    batched = SimConfig.from_table({**table, "sim": {"engine": "batched"}})
    with pytest.raises(ValueError, match="batched: the model has buffers"):  # with the reason
        BatchedSimulation.from_config(batched)


@pytest.mark.parametrize("model, message", [
    ({"factory": "nosuchmodule:build"}, r"\[model\] factory: cannot import 'nosuchmodule'"),
    ({"factory": "model:missing"}, r"\[model\] factory: module 'model' has no 'missing'"),
    ({"factory": "model:VALUE"}, r"\[model\] factory: 'model:VALUE' is a int, not a function"),
    ({"factory": "model:not_a_module"}, r"returned int, not a torch.nn.Module"),
    ({"factory": "model:build", "options": {"num_classes": 1}},
     r"\[model\] outputs 1 class scores but the labels of \[data\] go up to 1"),
    ({"factory": "model:build", "options": {"in_features": 7}},
     r"\[model\] cannot run on the data's samples of shape \(4,\)"),
])
def test_bad_user_code_is_one_line_naming_the_key(project, model, message):
    config = PeerConfig.from_table({
        "peer": {"id": 0}, "model": model, "run": {"import_path": [str(project)]},
        "data": {"format": "csv", "path": str(project / "readings.csv"), "label": "fault"}})
    data = config.data.load(num_nodes=1, seed=0, hold_out_test=False)
    with pytest.raises(ValueError, match=message) as info:
        learner_for(config, 0, data=data, shard=torch.arange(10))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_bad_data_files_and_sources_stop_the_peer_with_one_line(project):
    (project / "bad.csv").write_text("r0,fault\n1.0,1\nhot,0\n")
    for table, message in [
        ({"format": "csv", "path": "bad.csv", "label": "fault"}, "r0"),
        ({"format": "csv", "path": "nothere.csv", "label": "fault"}, "nothere.csv"),
        ({"loader": "model:VALUE"}, "[data] loader: 'model:VALUE' is a int"),
    ]:
        path = project / "bad.toml"
        lines = ["[peer]", "id = 0", "[data]"] + [f'{k} = "{v}"' for k, v in table.items()]
        path.write_text("\n".join(lines) + "\n")
        result = subprocess.run([sys.executable, "-m", "node", "--config", str(path)],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-1500:]
        assert message in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0
    with pytest.raises(ConfigError, match=r"\[data\] format and path go together"):
        PeerConfig.of(id=0, format="csv")


async def test_peers_with_different_model_sizes_both_log_the_two_sizes(tmp_path):
    from tests.helpers import peer_config

    configs = [peer_config(i, 2, tmp_path, rounds=1, algorithm="dsgd", hidden=h,
                           deadline_floor_s=0.2, deadline_ceiling_s=0.5, startup_timeout_s=0.5,
                           final_merge=False)
               for i, h in enumerate((8, 16))]
    peers = await run_memory_network(T.complete(2), configs, run=False)
    streams = [p.log.stream for p in peers]
    await asyncio.gather(*(p.run() for p in peers))
    sizes = sorted(p.learner.vector_size for p in peers)
    logs = [[json.loads(line) for line in s.getvalue().splitlines()] for s in streams]
    receiver = [e for e in logs[1] if e["event"] == "rejected"]
    assert receiver and f"has {sizes[0]} parameters, this peer's {sizes[1]}" in \
        receiver[0]["reason"]
    sender = [e for e in logs[0] if e["event"] == "refused_by"]
    assert sender and sender[0]["own_model_length"] == sizes[0]
    assert sender[0]["neighbour_model_length"] == sizes[1]
    assert f"{sizes[0]} parameters, the neighbour's {sizes[1]}" in sender[0]["reason"]


def test_the_python_api_example_in_the_docs_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "python-api.md").read_text()
    code = text.split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/python-api.md", "exec"), {})
    assert (tmp_path / "state" / "api-peer" / "final.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device; none here (every other test runs on the CPU)")
def test_a_peer_trains_on_the_gpu_where_one_exists(project):
    config = PeerConfig.from_table({"peer": {"id": 0}, "run": {"device": "cuda"}})
    data = config.data.load(num_nodes=1, seed=0)
    learner = learner_for(config, 0, data=data, shard=torch.arange(64), device="cuda")
    learner.local_update(0)
    assert learner.params.is_cuda and torch.isfinite(learner.params).all()


def test_flat_model_refuses_integer_parameters():
    module = nn.Linear(2, 2)
    module.register_parameter("steps", nn.Parameter(torch.zeros(1, dtype=torch.int64),
                                                    requires_grad=False))
    with pytest.raises(ValueError, match="steps is not floating-point"):
        FlatModel(module)


def test_the_batched_engine_runs_a_user_model_and_equals_the_reference(project):
    from sim import Recorder
    from sim.engines import build_simulation

    table = {"model": {"factory": "model:build"},
             "data": {"format": "csv", "path": str(project / "readings.csv"), "label": "fault"},
             "algorithm": {"name": "dfedavg"}, "graph": {"nodes": 4},
             "run": {"rounds": 3, "import_path": [str(project)]}}
    rows = {}
    for engine in ("reference", "batched"):
        recorder = Recorder()
        build_simulation(SimConfig.from_table({**table, "sim": {"engine": engine}}),
                         [recorder]).run()
        rows[engine] = [r["mean_acc"] for r in recorder.rows]
    assert rows["batched"] == pytest.approx(rows["reference"], abs=1 / 225)  # one test sample


def test_installed_packages_add_models_and_data_sets_by_name(tmp_path, monkeypatch):
    """A distribution on the path with entry points in the groups decent.models and
    decent.datasets (what `pip install` of a plugin package leaves behind)."""
    (tmp_path / "tinyplug.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        def model(width=4):
            return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
        def data(rows=200):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(rows, 3, generator=g)
            return x, (x[:, 0] > 0).long()
        '''))
    info = tmp_path / "tinyplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[decent.models]\ntiny = tinyplug:model\n\n"
                                           "[decent.datasets]\ntinydata = tinyplug:data\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = SimConfig.of(model="tiny", dataset="tinydata", nodes=3, rounds=2)
    summary = Simulation.from_config(config).run()
    assert summary["model_parameters"] == 3 * 4 + 4 + 4 * 2 + 2
    with pytest.raises(ConfigError, match=r"\[model\] name: unknown 'tinyy'.*'tiny'"):
        SimConfig.of(model="tinyy")
