"""``python -m node init DIR``: the starter project it writes trains as it is, in one peer and
in the simulator, and it never writes into a folder that holds something."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from node.peer import init
from node.schema import read_toml
from tests.helpers import no_peer_left_behind, running

ROOT = Path(__file__).resolve().parent.parent
CHANCE = 0.6  # data.py's binary rule is about balanced: chance is near 0.5


def run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``, killed if it outlives ``timeout`` (or the test fails)."""
    with running([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def new_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    result = run(["-m", "node", "init", str(project)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in project.iterdir()) == sorted(init.FILES)
    return project


@pytest.mark.slow
def test_the_starter_peer_trains_on_its_data(tmp_path):
    project = new_project(tmp_path)
    with no_peer_left_behind(str(project)):
        result = run(["-m", "node", "--config", str(project / "peer.toml"), "--rounds", "5"],
                     cwd=project)
    assert result.returncode == 0, result.stderr
    final = json.loads((project / "state" / "final.json").read_text())
    assert final["state"] == "done" and final["rounds_completed"] == 5
    assert final["accuracy"] > CHANCE, final
    assert final["val_accuracy"] > CHANCE, final
    assert "loader data:load" in final["scored_on"]["data"]
    assert (project / "state" / "log.jsonl").exists()


@pytest.mark.slow
def test_the_starter_project_simulates(tmp_path):
    """The same file in the simulator ([data] validation_fraction is accepted there too)."""
    project = new_project(tmp_path)
    out = tmp_path / "sim"
    result = run(["-m", "sim", "--config", str(project / "peer.toml"), "--rounds", "5",
                  "--quiet", "--out", str(out)], cwd=project)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_acc"] > CHANCE and summary["merged_acc"] > CHANCE, summary


@pytest.mark.slow
def test_the_starter_project_launches_from_another_folder(tmp_path):
    """The launched peers import model:build and data:load through the [run] import_path their
    configs inherit, not through the launcher's working directory."""
    project = new_project(tmp_path)
    out = tmp_path / "launch"
    with no_peer_left_behind(str(out)):
        result = run([str(ROOT / "scripts" / "launch.py"), "--config",
                      str(project / "peer.toml"), "--nodes", "3", "--rounds", "2", "--quiet",
                      "--out", str(out), "--timeout", "60"], cwd=tmp_path, timeout=90)
    assert result.returncode == 0, (result.stderr, (out / "peer0" / "stderr.txt").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_acc"] > CHANCE, summary


@pytest.mark.slow
def test_init_refuses_a_folder_that_holds_something(tmp_path):
    project = tmp_path / "taken"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    result = run(["-m", "node", "init", str(project)], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0], result.stderr
    assert [p.name for p in project.iterdir()] == ["notes.txt"]
    assert (project / "notes.txt").read_text() == "mine"


def test_init_into_an_empty_folder_and_its_help(tmp_path, capsys):
    from node.peer.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["init", str(empty)]) == 0  # the dispatch of python -m node
    assert sorted(p.name for p in empty.iterdir()) == sorted(init.FILES)
    with pytest.raises(SystemExit) as exit_:
        main(["init", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "python -m node init" in text and "peer.toml" in text and "empty" in text


def test_the_starter_files_fit_what_peer_toml_says(tmp_path):
    """peer.toml has the sections asked for and names the files' functions with options they
    take; data.py's rule is balanced and seeded."""
    init.write_project(tmp_path / "p")
    config = read_toml(tmp_path / "p" / "peer.toml")
    assert config["peer"] == {"id": 0, "listen": "127.0.0.1:0", "state_dir": "state",
                              "log_file": "state/log.jsonl"}
    assert config["algorithm"]["name"] == "dfedavg" and config["run"]["rounds"] == 20
    assert config["data"]["validation_fraction"] == 0.2
    assert config["graph"] == {"nodes": 4, "topology": "ring"}
    assert config["launch"]["out"] == "runs/launch"
    namespace: dict = {}
    exec((tmp_path / "p" / "model.py").read_text(), namespace)
    model = namespace["build"](**config["model"]["options"])
    exec((tmp_path / "p" / "data.py").read_text(), namespace)
    data = namespace["load"](**config["data"]["options"])
    x, y = data["train"]
    assert x.shape == (2000, 8) and 0.4 < y.mean() < 0.6
    assert model(torch.from_numpy(x[:3])).shape == (3, 2)
    again = namespace["load"](**config["data"]["options"])
    assert np.array_equal(again["test"][0], data["test"][0])
