import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import PeerConfig
from node.launcher import PeerProcess, progress_text
from node.supervisor import Policy
from tests.helpers import no_peer_left_behind, peer_processes, running, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
def test_bad_join_mode_input_is_one_clear_error(tmp_path, argv, message):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "scripts/launch.py", *argv, "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: ") and message in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing was started or written


def emit(tmp_path, hosts_lines, *extra):
    """scripts/launch.py --emit-configs TMP_PATH/deploy with these hosts; its message."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("\n".join(hosts_lines) + "\n")
    result = subprocess.run(
        [sys.executable, "scripts/launch.py", "--emit-configs", str(tmp_path / "deploy"),
         "--hosts", str(hosts), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_emitted_configs_say_how_to_allow_joins_and_give_joiners_a_shard_each(tmp_path):
    # static (the default): the files and the message say joins are refused, and how to allow
    static = emit(tmp_path / "static", ["10.0.0.5"], "--nodes", "3", "--topology", "ring")
    text = (tmp_path / "static" / "deploy" / "peer1.toml").read_text()
    assert text.startswith("# Peer 1 of a network of 3")
    for said in (text, static):
        assert "Membership is static" in said and "--joiners K" in said
    assert "# Data: shard 1 of 3" in text
    assert not PeerConfig.load(tmp_path / "static" / "deploy" / "peer1.toml").membership.dynamic
    # --joiners 2: every peer open, the joiners' configs join through the peers, 6 shards
    message = emit(tmp_path, ["10.0.0.5", "10.0.0.6:9000"], "--nodes", "4", "--topology", "ring",
                   "--joiners", "2")
    assert "2 joiner configs (peer4 to peer5)" in message and "6 shards" in message
    deploy = tmp_path / "deploy"
    configs = [PeerConfig.load(deploy / f"peer{i}.toml") for i in range(6)]
    assert all(c.membership.dynamic for c in configs)
    assert [c.data.shard for c in configs] == list(range(6))
    assert {c.data.num_shards for c in configs} == {6}
    static_urls = ["http://10.0.0.5:8000", "http://10.0.0.6:9000", "http://10.0.0.5:8001",
                   "http://10.0.0.6:9001"]
    assert configs[0].neighbours == {1: static_urls[1], 3: static_urls[3]}  # still the ring
    for joiner in configs[4:]:
        assert joiner.neighbours == {} and joiner.membership.bootstrap == static_urls
        assert joiner.data.shard >= 4 and joiner.attack.kind is None
        assert Path(joiner.trust.certificate).exists() and Path(joiner.trust.key_file).exists()
    assert [c.peer.listen for c in configs[4:]] == ["10.0.0.5:8002", "10.0.0.6:9002"]
    assert "a joiner of a network of 4" in (deploy / "peer5.toml").read_text()
    assert peer_processes(str(deploy)) == []


@pytest.mark.slow
def test_a_joiner_of_emitted_configs_joins_the_running_network_on_its_own_shard(tmp_path):
    """The emitted peers run as a user runs them (python -m node --config peerI.toml); the
    emitted joiner is admitted by its certificate, joins, mixes, and trains on a shard that is
    neither the whole split nor another peer's."""
    from contextlib import ExitStack

    from node.launcher import free_ports
    from node.peer.observe import LogEvent, read_log

    ports = free_ports(3)
    emit(tmp_path, [f"127.0.0.{k + 1}:{port}" for k, port in enumerate(ports)],
         "--nodes", "2", "--topology", "complete", "--joiners", "1", "--rounds", "100000",
         "--algorithm", "dfedavg")
    deploy = tmp_path / "deploy"
    logs = [deploy / "state" / f"peer{i}" / "log.jsonl" for i in range(3)]

    def start(i, stack):
        return stack.enter_context(running(
            [sys.executable, "-m", "node", "--config", str(deploy / f"peer{i}.toml")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    with no_peer_left_behind(str(deploy)), ExitStack() as stack:
        procs = [start(i, stack) for i in range(2)]
        wait_for(lambda: all(read_log(log, LogEvent.ROUND) for log in logs[:2]), 120,
                 "the emitted peers to complete a round")
        procs.append(start(2, stack))
        wait_for(lambda: read_log(logs[2], LogEvent.FIRST_MIX), 120, "the joiner to mix")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    joined = read_log(logs[2], LogEvent.JOINED)
    assert read_log(logs[2], LogEvent.ADMITTED) and joined and joined[0]["donor"] in (0, 1)
    samples = [read_log(log, LogEvent.DATA)[0]["samples"] for log in logs]
    # three shards of one split: the joiner's is as large as the others' (not the whole split)
    assert max(samples) - min(samples) <= 1, samples


class FakeProcess:
    """The part of Popen the supervisor uses; ends with 0 when its peer is done, or by a
    signal."""

    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.returncode = -9 if self.returncode is None else self.returncode

    def terminate(self):
        self.returncode = -15 if self.returncode is None else self.returncode


class FakePeer(PeerProcess):
    """A peer process that starts nothing: it 'serves' at once and does one round a tick."""

    def start(self):
        self.proc, self.exit_seen, self.serving = FakeProcess(), False, True
        self.starts = getattr(self, "starts", 0) + 1


class Training(Policy):
    """Moves every running fake peer one round on per tick; one that did ``rounds`` exits 0;
    records every exit the supervisor reports."""

    def __init__(self, rounds):
        self.rounds, self.exits = rounds, []

    def on_exit(self, supervisor, peer, code):
        self.exits.append((supervisor.index(peer), code))

    def on_tick(self, supervisor, now):
        for p in supervisor.peers:
            if p.running:
                p.rounds[p.completed + 1] = 0.5
                if p.completed >= self.rounds:
                    p.proc.returncode = 0


def fake_peers(tmp_path, n):
    return [FakePeer(tmp_path / f"{i}.toml", tmp_path / f"{i}.log", tmp_path / f"peer{i}")
            for i in range(n)]


def test_one_loop_runs_the_churn_policy_and_reports_each_exit_once(tmp_path):
    from node.launch_policies import Churn
    from node.supervisor import Supervisor

    peers = fake_peers(tmp_path, 3)
    training = Training(rounds=5)
    run = Supervisor(peers, [Churn([1], at_round=2, restart_after=0.0), training], rounds=5,
                     timeout=30, quiet=True, poll_s=0.001).run()
    assert not run.timed_out and not run.interrupted
    assert [p.restarts for p in peers] == [0, 1, 0] and peers[1].starts == 2
    # the kill, then each process's own end: every life's exit exactly once
    assert sorted(training.exits) == [(0, 0), (1, -9), (1, 0), (2, 0)]
    assert all(not p.running for p in peers)


def test_the_join_schedule_holds_joiners_until_the_bootstrap_peers_serve(tmp_path):
    from node.launch_policies import BootstrapKill, JoinSchedule
    from node.supervisor import Supervisor

    peers = fake_peers(tmp_path, 4)
    schedule = JoinSchedule(peers[:2], peers[2:], spacing_s=0.0)
    run = Supervisor(peers, [schedule], rounds=3, timeout=30, quiet=True, poll_s=0.001)
    run.start_together([p for p in peers if not run.held_back(p)])
    assert [p.proc is not None for p in peers] == [True, True, False, False]
    assert schedule.pending(run)
    schedule.on_tick(run, 0.0)  # both bootstrap peers serve: the joiners are due now
    assert all(p.running for p in peers) and not schedule.pending(run)
    # once the bootstrap peers did round 2 they are killed for good, and not restarted
    kill = BootstrapKill(peers[:2], at_round=2)
    peers[0].rounds, peers[1].rounds = {1: 0.5}, {2: 0.5}
    kill.on_tick(run, 0.0)
    assert peers[0].running
    peers[0].rounds[2] = 0.5
    kill.on_tick(run, 0.0)
    assert [p.stopped_on_purpose for p in peers] == [True, True, False, False]
    assert not peers[0].running and not peers[1].serving and peers[2].running


def test_the_supervisor_stops_every_peer_past_its_time_limit(tmp_path):
    from node.supervisor import Supervisor

    peers = fake_peers(tmp_path, 2)
    run = Supervisor(peers, [], rounds=3, timeout=0.05, quiet=True, poll_s=0.01).run()
    assert run.timed_out and not run.interrupted
    assert [p.proc.returncode for p in peers] == [-15, -15]
