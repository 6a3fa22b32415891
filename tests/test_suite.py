"""The suite's own rules: torch on one thread in every worker, a serial test alone on the machine
under xdist, the long forms of the slow tests runnable from scripts/, and CI running the README's
test command verbatim."""

import fcntl
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from tests.helpers import MachineLock, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_torch_runs_on_one_thread_in_this_worker():
    # tests/conftest.py sets it at import, which every xdist worker does
    assert torch.get_num_threads() == 1, (os.environ.get("PYTEST_XDIST_WORKER"),
                                          torch.get_num_threads())


def would_block(path: Path, how: int) -> bool:
    """Whether flock(how) on a new open file description of ``path`` would wait."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, how | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def test_a_serial_test_waits_for_running_tests_and_holds_new_ones_back(tmp_path):
    running, serial, later = (MachineLock(tmp_path) for _ in range(3))
    lock, gate = tmp_path / "machine.lock", tmp_path / "machine.gate"
    has_it, done = threading.Event(), threading.Event()

    def serial_test():
        with serial.exclusive():
            has_it.set()
            done.wait(60)

    with running.shared():
        with later.shared():  # tests that are not serial run side by side
            assert would_block(lock, fcntl.LOCK_EX) and not would_block(lock, fcntl.LOCK_SH)
        thread = threading.Thread(target=serial_test)
        thread.start()
        # the serial test waits for the running one, holding the gate: no new test starts
        wait_for(lambda: would_block(gate, fcntl.LOCK_EX), 30, "the serial test at the gate")
        assert not has_it.is_set()
    assert has_it.wait(30)  # the running test ended: the serial one runs, alone
    assert would_block(lock, fcntl.LOCK_SH) and would_block(gate, fcntl.LOCK_EX)
    done.set()
    thread.join(30)
    with later.shared():  # and then the others again
        pass
    assert not would_block(gate, fcntl.LOCK_EX) and not would_block(lock, fcntl.LOCK_EX)
    for machine in (running, serial, later):
        machine.close()


RECORDING_TESTS = '''
import json, os, time
from pathlib import Path
import pytest

def record(name):
    began = time.monotonic_ns()
    time.sleep(0.3)
    with open(os.environ["RECORD_TO"], "a") as fh:
        fh.write(json.dumps([name, began, time.monotonic_ns(),
                             os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_side_by_side(i):
    record(f"plain{i}")

@pytest.mark.serial
@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    record(f"serial{i}")
'''


@pytest.mark.slow
def test_under_xdist_a_serial_test_overlaps_no_other_test(tmp_path):
    """Two workers run 6 plain and 2 serial tests with this suite's conftest: the plain ones
    overlap each other, no serial one overlaps any other test."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_recorded.py").write_text(textwrap.dedent(RECORDING_TESTS))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    serial: alone\n    slow: s\n")
    record = tmp_path / "record.jsonl"
    env = {**os.environ, "RECORD_TO": str(record), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-n", "2", "--dist", "loadgroup", str(tmp_path)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(runs) == 8 and len({worker for *_, worker in runs}) == 2, runs

    def overlap(a, b):
        return a[1] < b[2] and b[1] < a[2]

    for a in runs:
        if a[0].startswith("serial"):
            assert not [b[0] for b in runs if b is not a and overlap(a, b)], runs
    # the plain tests did run side by side (so the lock above is what kept the serial ones apart)
    plain = [r for r in runs if r[0].startswith("plain")]
    assert any(overlap(a, b) for a in plain for b in plain if a is not b), runs


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n# 2\. [^\n]*\n([^\n]+)\n```", readme)
    assert len(blocks) == 1, blocks
    command = blocks[0]
    assert "pytest" in command and "-n auto" in command, command
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in lines, (command, lines)


def test_the_long_form_scripts_run_tests_that_exist():
    import importlib.util

    for name in ("fuzz_peer", "netns_faults"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        path, function = script.TEST.split("::")
        assert f"\ndef {function}(" in (ROOT / path).read_text(), script.TEST
