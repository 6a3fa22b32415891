"""The fork launcher (node/zygote.py): peers forked from one parent that loaded the data once,
sharing its pages, named as what they run, and gone when the launcher goes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.zygote import fork_available
from tests.helpers import no_peer_left_behind, peer_processes, running, wait_for

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not fork_available(),
                                reason="peers are forked on Linux only (elsewhere: exec)")

LOADER = '''
import os
from pathlib import Path

import numpy as np


def load(count_file):
    """A user's data loader that counts its calls (one line per call, with the caller's pid)."""
    with open(count_file, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    return x, y
'''


def parent_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.slow
def test_forked_peers_load_the_data_once_and_share_the_parents_pages(tmp_path):
    (tmp_path / "mydata.py").write_text(LOADER)
    count = tmp_path / "calls.txt"
    # the config file's folder is on the import path, so mydata is found
    (tmp_path / "exp.toml").write_text(
        f'[data]\nloader = "mydata:load"\n[data.options]\ncount_file = "{count}"\n')
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        with running([sys.executable, "scripts/launch.py", "--config", str(tmp_path / "exp.toml"),
                      "--nodes", "3", "--topology", "ring", "--rounds", "4",
                      "--start-method", "fork", "--out", str(out), "--quiet"],
                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True) as proc:
            # while they run, the peers are the launcher's own children, shown as python -m node
            wait_for(lambda: proc.poll() is not None or len(peer_processes(str(out))) == 3, 120,
                     "3 forked peers")
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            pids = peer_processes(str(out))
            assert {parent_of(pid) for pid in pids} <= {proc.pid, None}
            cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().replace(b"\0", b" ")
            assert b"-m node --config" in cmdline and b"forked by" in cmdline
            stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    # one call: the launcher's (a peer started as its own interpreter would call it again)
    assert count.read_text().split() == [str(proc.pid)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["components"] == [[0, 1, 2]]
    for peer in summary["peers"].values():
        assert peer["rounds_completed"] == 4
        # most of what a forked peer maps is the parent's: its unique memory is a fraction of
        # its resident set (an interpreter of its own has ~220 of ~280 MB to itself)
        assert peer["uss_mb"] is not None and peer["uss_mb"] < 0.4 * peer["rss_mb"], peer


@pytest.mark.slow
def test_killing_the_launcher_leaves_no_forked_peer(tmp_path):
    out = tmp_path / "run"
    with no_peer_left_behind(str(out)):
        with running([sys.executable, "scripts/launch.py", "--nodes", "3", "--rounds", "100000",
                      "--start-method", "fork", "--out", str(out), "--quiet"], cwd=ROOT,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            wait_for(lambda: all((out / f"peer{i}" / "checkpoint.pt").exists()
                                 for i in range(3)), 120, "every peer to complete a round")
            assert len(peer_processes(str(out))) == 3
            proc.send_signal(signal.SIGKILL)  # no chance to stop anyone: the kernel tells them
            proc.wait(timeout=30)
            wait_for(lambda: not peer_processes(str(out)), 30,
                     "the orphaned peers to stop (PR_SET_PDEATHSIG)")
    # they stopped as after SIGTERM: each logged how it ended
    for i in range(3):
        events = [json.loads(line)["event"]
                  for line in (out / f"peer{i}" / "log.jsonl").read_text().splitlines()]
        assert "stopped" in events or "done" in events, events[-5:]


def test_a_peer_that_fails_in_the_child_reports_on_its_stderr(tmp_path):
    """A forked peer whose port is taken exits 2 with python -m node's one line, in its own
    stderr file; the launcher sees the exit code like any child's."""
    import socket

    from node.config import LaunchConfig, PeerConfig
    from node.launcher import PeerProcess, write_configs
    from node.zygote import Zygote

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        s = LaunchConfig.of(nodes=2, topology="complete", rounds=1, out=str(tmp_path))
        configs = s.peer_configs([("127.0.0.1", holder.getsockname()[1]), ("127.0.0.1", 0)],
                                 tmp_path)
        path = write_configs(configs, tmp_path)[0]
        config: PeerConfig = configs[0]
        peer = PeerProcess(path, Path(config.peer.log_file), Path(config.peer.state_dir),
                           zygote=Zygote(configs))
        started = time.monotonic()
        peer.start()
        assert peer.proc.wait(timeout=60) == 2
        assert time.monotonic() - started < 60
        assert peer.proc.poll() == 2 and not peer.running
        text = (Path(config.peer.state_dir) / "stderr.txt").read_text()
        assert text.count("python -m node: error:") == 1, text[-2000:]
        assert os.path.exists(config.peer.state_dir)
    finally:
        holder.close()
