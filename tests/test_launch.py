import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import PeerConfig
from node.launcher import PeerProcess, progress_text
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
        # the figures are printed once, as the table (no bare JSON object after it)
        assert result.stdout.count("mean peer accuracy") == 1
        assert not result.stdout.strip().splitlines()[-1].startswith("{")
        # the settings are called "config", nested by section, as in the simulator's summary
        assert summary["config"]["graph"]["nodes"] == 8 and "settings" not in summary
        assert summary["interrupted"] is False


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
    # what was done is still reported: summary, plot, and the table (marked as interrupted)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert any(p["rounds_completed"] >= 1 for p in summary["peers"].values())
    assert (out / "accuracy.png").exists()


def test_an_interrupted_launch_prints_its_table(tmp_path):
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        with running([sys.executable, "scripts/launch.py", "--nodes", "3", "--rounds", "100000",
                      "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True) as proc:
            wait_for(lambda: any((out / f"peer{i}" / "checkpoint.pt").exists()
                                 for i in range(3)), 120, "a peer to complete a round")
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "INTERRUPTED" in stdout and "mean peer accuracy" in stdout


def test_emit_configs_for_several_hosts_starts_nothing(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("10.0.0.5\n10.0.0.6:9000  # second machine\n")
    result = subprocess.run(
        [sys.executable, "scripts/launch.py", "--nodes", "4", "--topology", "ring",
         "--emit-configs", str(tmp_path / "deploy"), "--hosts", str(hosts)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    configs = [PeerConfig.load(tmp_path / "deploy" / f"peer{i}.toml") for i in range(4)]
    # each peer listens on the address the hosts file gives it (not 0.0.0.0 whatever it says)
    assert [c.peer.listen for c in configs] == ["10.0.0.5:8000", "10.0.0.6:9000",
                                                "10.0.0.5:8001", "10.0.0.6:9001"]
    assert configs[0].neighbours == {1: "http://10.0.0.6:9000", 3: "http://10.0.0.6:9001"}
    assert {c.data.shard for c in configs} == {0, 1, 2, 3}
    # relative paths in a config file are relative to the file
    assert configs[2].peer.state_dir == str((tmp_path / "deploy" / "state" / "peer2").resolve())
    assert 'state_dir = "state/peer2"' in (tmp_path / "deploy" / "peer2.toml").read_text()
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


def test_the_live_line_says_what_it_counts(tmp_path):
    peers = [PeerProcess(tmp_path / f"{i}.toml", tmp_path / f"{i}.log", tmp_path)
             for i in range(3)]
    # before any process has started, nothing is called live
    assert progress_text(peers, 30) == "starting: 0/3 peers serving, no round done yet"
    peers[0].rounds, peers[1].rounds, peers[2].rounds = {1: 0.5}, {1: 0.5, 2: 0.7}, {1: 0.4}
    text = progress_text(peers, 30)
    assert text.startswith("rounds done 1 (slowest) to 2 (fastest) of 30")
    assert "peers serving 0/3" in text


def test_join_mode_grows_one_network_from_two_bootstrap_peers(tmp_path):
    """2 bootstrap peers, then 2 joiners with --join only: both are admitted, link, take a
    neighbour's model, mix, and the merge finds one component of all four."""
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        result = subprocess.run(
            [sys.executable, "scripts/launch.py", "--nodes", "4", "--join", "--bootstrap", "2",
             "--join-spacing-s", "0", "--rounds", "140", "--seed", "2", "--out", str(out),
             "--timeout", "300",
             # rounds of a few hundred ms (a wider model, 100 local steps), so that the
             # bootstrap pair is still training when the joiners' processes have started
             "--algorithm", "dfedavg", "--hidden", "256", "--local-steps", "100",
             "--batch-size", "32"],
            cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        join = summary["join"]
        assert join["bootstrap"] == [0, 1] and join["joiners"] == 2 and join["joined"] == 2
        assert join["join_failed"] == [] and join["left"] == []
        peers = summary["peers"]
        assert [peers[str(i)]["role"] for i in range(4)] == ["bootstrap"] * 2 + ["joiner"] * 2
        for i in ("2", "3"):
            assert peers[i]["joined"]["round"] >= 0 and peers[i]["joined"]["donor"] in (0, 1)
            assert peers[i]["start_to_first_mix_s"] > 0
            assert peers[i]["membership"]["membership_bytes_out"] > 0
        # the merge's component, as each peer saw it, is every peer alive at the end
        assert summary["components"] == [[0, 1, 2, 3]] and join["one_component"]
        assert all(p["component"] == [0, 1, 2, 3] for p in peers.values())
        assert "joiner" in result.stdout and "components at the end: A = 4 peers" in \
            result.stdout
        # the joiners were started with --join naming the bootstrap peers, and nothing else
        configs = [PeerConfig.load(out / f"peer{i}.toml") for i in range(4)]
        assert configs[2].neighbours == {} and configs[0].neighbours.keys() == {1}
        assert all(c.membership.dynamic for c in configs)
    assert peer_processes(str(out)) == []


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "3", "--join", "--bootstrap", "3"], "--bootstrap 3 must be < --nodes 3"),
    (["--nodes", "4", "--kill-bootstrap-at-round", "2"], "--kill-bootstrap-at-round needs "
                                                          "--join"),
    (["--nodes", "4", "--join", "--rounds", "5", "--kill-bootstrap-at-round", "5"],
     "must be < --rounds 5"),
])
def test_bad_join_mode_input_is_one_clear_error(tmp_path, argv, message):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "scripts/launch.py", *argv, "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: ") and message in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing was started or written
