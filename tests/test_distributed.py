"""The batched engine over torch.distributed (sim/distributed.py): 2 gloo ranks on 127.0.0.1 give
one process's metrics, gossip exchanges only halo rows, and what cannot run distributed says so.

Tolerance: the engine's (tests/test_batched.py): accuracies within one test image, the consensus
distance and losses to 1e-5 relative. Only the order of float sums differs between one process
and two ranks (W X split into an owned and a halo product; metric sums over ranks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sim import SimConfig
from sim.batched import BatchedSimulation, Rows
from sim.cli import main
from sim.distributed import block_bounds

ROOT = Path(__file__).resolve().parents[1]
ACC_TOL = 1 / 450 + 1e-9
REL_TOL = 1e-5
LAUNCH_TIMEOUT_S = 90  # the whole torchrun, rendezvous included (measured: 9 s on 2 cores)

SCENARIO = """
[graph]
nodes = 24
topology = "random-regular"
degree = 4
data_fraction = 0.75

[data]
partition = "dirichlet"
alpha = 0.5

[algorithm]
name = "dfedsam-mgs"
gossip_steps = 2

[run]
rounds = 6
seed = 5
quiet = true

[[events]]
round = 2
kind = "crash"
fraction = 0.25
select = "degree"

[[events]]
round = 4
kind = "rejoin"
state = "fresh"
"""


PARTITION_SCENARIO = """
[graph]
nodes = 25
topology = "random-geometric"
radius = 0.35
data_fraction = 0.6

[algorithm]
name = "dfedsam"

[run]
rounds = 6
eval_every = 2
seed = 2
quiet = true

[[events]]
round = 1
kind = "partition"
until = 4

[[events]]
round = 2
kind = "link-failure"
probability = 0.2
until = 5

[[events]]
round = 3
kind = "crash"
fraction = 0.2

[[events]]
round = 5
kind = "rejoin"
state = "fresh"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], ranks: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` with ``ranks`` gloo ranks on 127.0.0.1; the launcher
    and every rank are killed (their process group) if it outlives LAUNCH_TIMEOUT_S."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "sim", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def close(a: float | None, b: float | None, tol: float = REL_TOL) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12)


def one_and_ranks(tmp_path: Path, scenario: str, ranks: int
                  ) -> tuple[list[dict], list[dict], dict, dict]:
    """The scenario's metrics rows and summaries from one process and from ``ranks`` ranks."""
    path = tmp_path / "scenario.toml"
    path.write_text(scenario)
    common = ["--scenario", str(path), "--engine", "batched"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    result = torchrun([*common, "--out", str(tmp_path / "ranks")], ranks=ranks)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[json.loads(r) for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "ranks")]
    summaries = [json.loads((tmp_path / d / "summary.json").read_text())
                 for d in ("one", "ranks")]
    return rows[0], rows[1], summaries[0], summaries[1]


def assert_same_run(one: list[dict], many: list[dict], s1: dict, s2: dict) -> None:
    assert len(one) == len(many)
    for a, b in zip(one, many, strict=True):
        for key in ("alive", "messages", "bytes_sent", "components", "largest_component",
                    "isolated"):
            assert a[key] == b[key], (a["round"], key)
        for key in ("mean_acc", "min_acc", "max_acc", "merged_acc", "acc_largest"):
            assert abs(a[key] - b[key]) <= ACC_TOL, (a["round"], key)
        for key in ("consensus_distance", "train_loss"):
            assert close(a[key], b[key]), (a["round"], key, a[key], b[key])
    assert s1["messages"] == s2["messages"] and s1["node_samples"] == s2["node_samples"]
    for key in ("node_accuracy", "node_accuracy_after_merge"):
        assert s1[key].keys() == s2[key].keys()
        assert all(abs(s1[key][i] - s2[key][i]) <= ACC_TOL for i in s1[key])


@pytest.mark.slow
def test_two_gloo_ranks_give_the_metrics_of_one_process(tmp_path):
    one, two, s1, s2 = one_and_ranks(tmp_path, SCENARIO, ranks=2)
    assert len(one) == 6
    assert one[2]["alive"] == 18 and one[-1]["alive"] == 24  # the crash and the rejoin happened
    assert_same_run(one, two, s1, s2)


@pytest.mark.slow
def test_three_uneven_ranks_through_a_partition_and_failing_links(tmp_path):
    """25 peers over 3 ranks (9, 8, 8 rows): a partition (several components to merge), links
    failing, relays, a crash and a fresh rejoin whose donor may sit on another rank."""
    one, three, s1, s2 = one_and_ranks(tmp_path, PARTITION_SCENARIO, ranks=3)
    assert [r["components"] for r in one][:2] == [3, 4]  # the partition and the crash split it
    assert_same_run(one, three, s1, s2)


class TwoBlocks(Rows):
    """Rows 0:8 of 16, as rank 0 of two would own them (no process group needed to plan)."""

    def owner_bounds(self) -> list[tuple[int, int]]:
        return block_bounds(self.n, 2)


def test_gossip_sends_only_the_halo_rows_a_rank_needs():
    sim = BatchedSimulation.from_config(SimConfig.of(nodes=16, topology="ring", rounds=1,
                                                     engine="batched"))
    sim.rows = TwoBlocks(16, 0, 8)
    plan = sim.gossip_plan(sim.topology.graph_at(0))
    # on a ring, rank 0 (peers 0-7) borders rank 1 at 7-8 and 15-0: two rows each way of eight
    assert plan.recv == {1: 2}
    assert plan.send[1].tolist() == [0, 7]
    assert plan.own.shape == (8, 8) and plan.halo.shape == (8, 2)
    sim.take_down([15])
    plan = sim.gossip_plan(sim.topology.graph_at(0))
    assert plan.recv == {1: 1} and plan.send[1].tolist() == [7]


def test_block_bounds_cover_every_row_once_in_contiguous_blocks():
    assert block_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert block_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_other_engines_refuse_torchrun_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = main(["--engine", "reference", "--nodes", "6", "--rounds", "1", "--quiet",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "only --engine batched shards its rows over ranks" in err
