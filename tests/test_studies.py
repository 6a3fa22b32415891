"""The study scripts run end to end on tiny settings: a table, a plot, their results section and
one JSON line (the real runs are in docs/results.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, args, key", [
    ("study_variance.py", ["--rounds", "4", "--nodes", "8"], "arms"),
    ("study_sybil.py", ["--rounds", "3", "--nodes", "12", "--phis", "1",
                        "--sybil-counts", "2"], "attack_success"),
    ("study_byzantine.py", ["--rounds", "5", "--nodes", "8"], "honest_acc"),
    ("study_disaster.py", ["--rounds", "6", "--nodes", "20", "--disrupt-at", "3",
                           "--fractions", "0.3"], "final_acc"),
    ("study_churn.py", ["--rounds", "8", "--nodes", "20", "--fail-at", "3",
                        "--return-at", "5"], "max_round_s_after"),
])
@pytest.mark.slow
def test_study_script_writes_its_section_plot_and_json_line(tmp_path, script, args, key):
    results = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--seeds", "1", "--quiet",
         "--out", str(tmp_path), "--results", str(results), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert key in figures and figures["seeds"] == 1
    name = script.removesuffix(".py")
    text = results.read_text()
    assert f"<!-- {name}:start -->" in text and "| " in text
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
