"""The peer's silent failures of issue 20, each seen once as a new user would, and each now
said out loud: a joiner adopts its network's run length; a peer that never mixed with anyone
says so and exits non-zero; a peer waiting for a neighbour that is not running says whom and
why while it waits; ``python -m node`` without a log file shows a readable progress line and
keeps the JSON in its log; the README's own ``my.toml`` runs as written."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.config import PeerConfig
from node.peer import JsonLog, LogEvent, Peer, Runtime
from node.peer.cli import NEVER_MIXED_EXIT
from node.schema import dump_toml
from tests.helpers import digits_data, no_peer_left_behind, peer_config, running, trusted

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(configs: list[PeerConfig], tmp_path: Path) -> list[Path]:
    paths = []
    for config in trusted(configs, tmp_path):
        path = tmp_path / f"peer{config.peer.id}.toml"
        path.write_text(dump_toml(config))
        paths.append(path)
    return paths


def node(*args: str) -> list[str]:
    return [sys.executable, "-m", "node", *args]


def test_a_joiner_without_rounds_adopts_the_networks_run_length_and_merges_with_it(tmp_path):
    """Before: the joiner kept its default of 100 rounds while the network ran 12: it trained
    on alone past the network's end, its merge messages were of another run length (refused
    409), and the network's merge waited for it, then ended without it."""
    from gossip import InMemoryHub
    from sim.clock import run_simulated

    async def main():
        hub, logs, peers = InMemoryHub(), {}, {}

        def make(i, neighbours, rounds, bootstrap=()):
            c = peer_config(i, 5, tmp_path, rounds, algorithm="dfedavg",
                            dynamic_membership=True, deadline_floor_s=0.2,
                            deadline_ceiling_s=2.0)
            c.neighbours = {j: "http://in-memory" for j in neighbours}
            c.membership.bootstrap = list(bootstrap)
            logs[i] = io.StringIO()
            peers[i] = Peer(c, transport=hub.transport(i), data=digits_data(),
                            log=JsonLog(i, stream=logs[i]),
                            runtime=Runtime.simulated_clock(work_s=0.05))
            return peers[i]

        for i in range(4):
            await make(i, [(i - 1) % 4, (i + 1) % 4], 12).start()
        tasks = [asyncio.create_task(p.run()) for p in list(peers.values())]
        while peers[0].completed_rounds < 4:
            await asyncio.sleep(0.01)
        joiner = make(4, [], PeerConfig.of(id=4).run.rounds, bootstrap=["mem://0"])
        assert joiner.config.run.rounds == 100  # the default, as the docs' command gives it
        await joiner.start()
        tasks.append(asyncio.create_task(joiner.run()))
        return await asyncio.gather(*tasks), logs[4].getvalue()

    summaries, log = run_simulated(main())
    events = [json.loads(line) for line in log.splitlines()]
    adopted = [e for e in events if e["event"] == LogEvent.RUN_LENGTH_ADOPTED]
    assert adopted and adopted[0]["was"] == 100 and adopted[0]["rounds"] == 12
    joiner = summaries[4]
    assert joiner["rounds_completed"] == 12, joiner["rounds_completed"]
    assert joiner["component"] == [0, 1, 2, 3, 4], joiner["component"]
    assert all(s["component"] == [0, 1, 2, 3, 4] for s in summaries)


@pytest.mark.slow
def test_peers_whose_models_differ_say_they_never_mixed_and_exit_non_zero(tmp_path):
    """Before: each refused every message of the other (422), yet both printed a normal done
    line with an accuracy and exited 0."""
    ports = [free_port(), free_port()]
    configs = []
    for i, hidden in enumerate((16, 24)):
        c = peer_config(i, 2, tmp_path, 2, algorithm="dfedavg", hidden=hidden,
                        listen=f"127.0.0.1:{ports[i]}", deadline_floor_s=0.5,
                        deadline_ceiling_s=1.0, startup_timeout_s=10.0,
                        log_file=str(tmp_path / f"peer{i}" / "log.jsonl"))
        c.neighbours = {1 - i: f"http://127.0.0.1:{ports[1 - i]}"}
        configs.append(c)
    paths = write(configs, tmp_path)
    with no_peer_left_behind(str(tmp_path)):
        with running(node("--config", str(paths[0])), cwd=ROOT, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True) as first, \
                running(node("--config", str(paths[1])), cwd=ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True) as second:
            results = [p.communicate(timeout=120) for p in (first, second)]
            codes = [first.returncode, second.returncode]
    assert codes == [NEVER_MIXED_EXIT, NEVER_MIXED_EXIT], (codes, results)
    for i, (_, err) in enumerate(results):
        assert "never mixed with a neighbour" in err, err
        assert "model size mismatch" in err, err
        final = json.loads((tmp_path / f"peer{i}" / "final.json").read_text())
        assert final["never_mixed"] is True and final["mixed_steps"] == 0


@pytest.mark.slow
def test_a_peer_whose_neighbour_is_not_running_says_whom_it_waits_for_and_why(tmp_path):
    """Before: it stayed silent for the whole start-up timeout (100 s by default)."""
    dead = free_port()
    c = peer_config(0, 2, tmp_path, 1, algorithm="dfedavg", listen="127.0.0.1:0",
                    startup_timeout_s=60.0)
    c.neighbours = {1: f"http://127.0.0.1:{dead}"}
    [path] = write([c], tmp_path)
    lines: list[str] = []
    with no_peer_left_behind(str(tmp_path)), \
            running(node("--config", str(path)), cwd=ROOT, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "still waiting" in line:
                break
        proc.terminate()
        proc.communicate(timeout=30)
    report = next((line for line in lines if "still waiting" in line), None)
    assert report is not None, lines
    assert f"neighbour(s) 1 at http://127.0.0.1:{dead} (cannot connect (ECONNREFUSED))" in report
    assert re.search(r"after \d+(\.\d)? s of 60.0 s", report), report
    log = [json.loads(line) for line in (tmp_path / "peer0" / "log.jsonl").read_text()
           .splitlines()]
    assert any(e["event"] == LogEvent.UNREACHABLE and e["neighbours"] == [1] for e in log)


@pytest.mark.slow
def test_python_m_node_without_a_log_file_shows_progress_and_logs_json_to_its_state(tmp_path):
    """Before: one raw JSON line per round on standard output."""
    state = tmp_path / "alone"
    result = subprocess.run(node("--id", "0", "--rounds", "2", "--state-dir", str(state)),
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "{" not in result.stdout  # no JSON for a person to read
    assert re.search(r"peer 0  round 2/2  accuracy 0\.\d{4}", result.stderr), result.stderr
    records = [json.loads(line) for line in (state / "log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["event"] == LogEvent.ROUND] == [1, 2]


def readme_toml() -> str:
    """The ``my.toml`` of the README's section on your own model and data."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own model and your own data"):]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readmes_own_my_toml_runs_with_python_m_node_as_written(tmp_path):
    """Before: ``python -m node --config my.toml`` failed with '[peer] id must be set'."""
    import numpy as np

    (tmp_path / "my.toml").write_text(readme_toml())
    (tmp_path / "model.py").write_text(
        "import torch.nn as nn\n\n"
        "def build(hidden=32):  # the README's def build(**options) -> nn.Module\n"
        "    return nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),\n"
        "                         nn.Linear(hidden, 2))\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    rows = ["a,b,c,fault"] + [f"{a:.4f},{b:.4f},{c:.4f},{int(a + b > 0)}" for a, b, c in x]
    (tmp_path / "readings.csv").write_text("\n".join(rows) + "\n")
    command = re.search(r"(\.venv/bin/python -m node --config my\.toml)",
                        (ROOT / "README.md").read_text()).group(1)
    argv = [sys.executable, *command.split()[1:], "--rounds", "2"]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "val_accuracy 0." in result.stderr, result.stderr


def test_a_peer_restarted_after_its_neighbours_finished_mixed_in_its_earlier_life(tmp_path):
    """Never mixed means in the whole run: the mixing counts live in the checkpoint, so a peer
    restarted when its neighbours were gone (scripts/soak.py) is not called isolated."""
    from gossip import InMemoryHub
    from sim.clock import run_simulated

    def make(hub, i, rounds):
        c = peer_config(i, 2, tmp_path, rounds, algorithm="dfedavg", final_merge=False,
                        deadline_floor_s=0.2, deadline_ceiling_s=1.0)
        c.neighbours = {1 - i: "http://in-memory"}
        return Peer(c, transport=hub.transport(i), data=digits_data(),
                    log=JsonLog(i, stream=io.StringIO()),
                    runtime=Runtime.simulated_clock(work_s=0.05))

    async def first_life():
        hub = InMemoryHub()
        peers = [make(hub, i, 2) for i in range(2)]
        for p in peers:
            await p.start()
        return await asyncio.gather(*(p.run() for p in peers))

    async def second_life():  # peer 0 alone, for one more round
        peer = make(InMemoryHub(), 0, 3)
        await peer.start()
        return await peer.run()

    before = run_simulated(first_life())
    assert before[0]["mixed_steps"] > 0 and not before[0]["never_mixed"]
    after = run_simulated(second_life())
    assert after["rounds_completed"] == 3 and after["gossip_steps"] > before[0]["gossip_steps"]
    assert after["mixed_steps"] == before[0]["mixed_steps"] and not after["never_mixed"]
