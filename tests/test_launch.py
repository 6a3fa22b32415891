import json
import signal
import subprocess
import sys
from pathlib import Path

from node.config import load_peer_config, parse_peer_config
from tests.helpers import no_peer_left_behind, peer_processes, running, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_launch_8_peers_on_a_ring_completes_and_leaves_no_process(tmp_path):
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        result = subprocess.run(
            [sys.executable, "scripts/launch.py", "--nodes", "8", "--topology", "ring",
             "--rounds", "4", "--seed", "1", "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "merged acc" in result.stdout and "accuracy.png" in result.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert len(summary["peers"]) == 8
        for peer in summary["peers"].values():
            assert peer["rounds_completed"] == 4
            assert 0.0 < peer["accuracy"] <= 1.0
            assert peer["merged_accuracy"] == summary["merged_acc"]
        assert (out / "accuracy.png").exists()
        assert json.loads(result.stdout.strip().splitlines()[-1])["nodes"] == 8


def test_interrupting_the_launcher_stops_every_peer(tmp_path):
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        with running([sys.executable, "scripts/launch.py", "--nodes", "4", "--rounds", "100000",
                      "--out", str(out), "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL) as proc:
            wait_for(lambda: any((out / f"peer{i}" / "checkpoint.pt").exists()
                                 for i in range(4)), 120, "a peer to complete a round")
            assert len(peer_processes(str(out))) == 4
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130


def test_emit_configs_for_several_hosts_starts_nothing(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("10.0.0.5\n10.0.0.6:9000  # second machine\n")
    result = subprocess.run(
        [sys.executable, "scripts/launch.py", "--nodes", "4", "--topology", "ring",
         "--emit-configs", str(tmp_path / "deploy"), "--hosts", str(hosts)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    configs = [parse_peer_config(load_peer_config(tmp_path / "deploy" / f"peer{i}.toml"))
               for i in range(4)]
    assert [c.listen for c in configs] == ["0.0.0.0:8000", "0.0.0.0:9000", "0.0.0.0:8001",
                                           "0.0.0.0:9001"]
    assert configs[0].neighbours == {1: "http://10.0.0.6:9000", 3: "http://10.0.0.6:9001"}
    assert {c.data.shard for c in configs} == {0, 1, 2, 3}
    assert peer_processes(str(tmp_path / "deploy")) == []


def test_churn_killed_peers_restart_and_every_peer_finishes(tmp_path):
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        result = subprocess.run(
            [sys.executable, "scripts/launch.py", "--nodes", "6", "--topology", "ring",
             "--rounds", "12", "--kill-fraction", "0.34", "--kill-at-round", "3",
             "--restart-after", "1", "--deadline-ceiling-s", "3", "--out", str(out), "--quiet",
             # a peer restarted after its neighbours finished waits this long at its first
             # rendezvous (a known limit, docs/peer-config.md); 30 s still covers slow starts
             "--startup-timeout-s", "30"],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert len(summary["killed"]) == 2
        for i, peer in summary["peers"].items():
            assert peer["finished"]
            assert peer["restarts"] == (1 if int(i) in summary["killed"] else 0)
        resumed = [line for i in summary["killed"]
                   for line in (out / f"peer{i}" / "log.jsonl").read_text().splitlines()
                   if '"event": "resumed"' in line]
        assert len(resumed) == 2
