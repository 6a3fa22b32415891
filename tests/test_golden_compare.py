"""The golden contract (tests/helpers.compare_rows): bit-identical on one machine, float rounding
across machines. The comparison of the project's golden files lets through what another CPU's
float32 sums change (one part in 1e7 on every float) and refuses what a change of the code
would (one part in 1e4 on a single float), naming the round and the key."""

import json
import math
from pathlib import Path

import pytest

from tests.helpers import GOLDEN_REL, compare_golden, compare_rows

GOLDEN = Path(__file__).resolve().parent / "golden"
ENGINES = ["reference", "batched", "peers"]


def read_rows(engine: str) -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / f"{engine}.jsonl").read_text().splitlines()]


def perturbed(value, relative: float, flip: list[int]):
    """``value`` with every float (nested in dicts and lists too) times 1 + relative or
    1 - relative, alternately (``flip`` counts the floats seen)."""
    if isinstance(value, dict):
        return {k: perturbed(v, relative, flip) for k, v in value.items()}
    if isinstance(value, list):
        return [perturbed(v, relative, flip) for v in value]
    if isinstance(value, float):
        flip[0] += 1
        return value * (1 + relative if flip[0] % 2 else 1 - relative)
    return value


def float_paths(value, path=()):
    """The path (keys and indices) of every non-zero float in ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from float_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from float_paths(v, (*path, i))
    elif isinstance(value, float) and value != 0 and math.isfinite(value):
        yield path


def changed(value, path, factor: float):
    """A copy of ``value`` with the float at ``path`` multiplied by ``factor``."""
    copy = json.loads(json.dumps(value))
    *above, last = path
    holder = copy
    for step in above:
        holder = holder[step]
    holder[last] *= factor
    return copy


def test_the_tolerance_sits_between_float_rounding_and_a_change():
    assert 1e-7 < GOLDEN_REL < 1e-4


@pytest.mark.parametrize("engine", ENGINES)
def test_every_float_one_part_in_1e7_off_passes(engine):
    golden = read_rows(engine)
    rows = perturbed(golden, 1e-7, [0])
    assert rows != golden  # the perturbation is there
    compare_rows(rows, golden)


def test_every_float_of_the_launch_golden_one_part_in_1e7_off_passes():
    golden = json.loads((GOLDEN / "launch.json").read_text())
    summary = perturbed(golden, 1e-7, [0])
    assert summary != golden
    compare_golden(summary, golden)


@pytest.mark.parametrize("engine", ENGINES)
def test_one_float_one_part_in_1e4_off_fails_naming_its_round_and_key(engine):
    golden = read_rows(engine)
    paths = list(float_paths(golden))
    assert len(paths) > 20
    for index, key, *below in paths:
        rows = changed(golden, (index, key, *below), 1 + 1e-4)
        with pytest.raises(AssertionError) as failed:
            compare_rows(rows, golden)
        message = str(failed.value)
        where = f"round {golden[index]['round']}, {key}" + "".join(f"[{i}]" for i in below)
        assert f"{where}: " in message, message
        assert "1 difference(s)" in message, message
        # both values are in the message
        value = golden[index][key]
        for i in below:
            value = value[i]
        assert repr(value) in message and repr(value * (1 + 1e-4)) in message, message


def test_one_accuracy_of_the_launch_golden_1e4_off_fails_naming_peer_and_round():
    golden = json.loads((GOLDEN / "launch.json").read_text())
    summary = changed(golden, ("rounds_by_peer", "2", "3"), 1 - 1e-4)
    with pytest.raises(AssertionError, match=r"rounds_by_peer\['2'\]\['3'\]: "):
        compare_golden(summary, golden)
    summary = changed(golden, ("peers", "1", "merged_accuracy"), 1 + 1e-4)
    with pytest.raises(AssertionError, match=r"peers\['1'\]\['merged_accuracy'\]: "):
        compare_golden(summary, golden)


def test_everything_but_floats_is_compared_exactly_and_keys_and_rows_must_match():
    golden = read_rows("reference")
    rows = changed(golden, (2, "messages"), 1)
    rows[2]["messages"] += 1
    with pytest.raises(AssertionError, match=r"round 3, messages: 45 != golden 44"):
        compare_rows(rows, golden)
    rows = changed(golden, (0, "alive"), 1)
    rows[0]["alive"] = float(rows[0]["alive"])  # 8.0 for 8: a number equal to it passes
    compare_rows(rows, golden)
    rows[0]["acc_outside"] = 0.0  # None in the golden file
    with pytest.raises(AssertionError, match=r"round 1, acc_outside: 0.0 != golden None"):
        compare_rows(rows, golden)
    rows = changed(golden, (1, "alive"), 1)
    del rows[1]["train_loss"]
    rows[3]["surprise"] = 1
    with pytest.raises(AssertionError) as failed:
        compare_rows(rows, golden)
    assert "round 2: missing key(s) ['train_loss']" in str(failed.value)
    assert "round 4: unexpected key(s) ['surprise']" in str(failed.value)
    with pytest.raises(AssertionError, match=r"3 rows, golden 4"):
        compare_rows(golden[:3], golden)
    rows = changed(golden, (0, "merged_acc_components"), 1)
    rows[0]["merged_acc_components"].append(0.5)
    with pytest.raises(AssertionError, match=r"round 1, merged_acc_components: 2 items"):
        compare_rows(rows, golden)


def test_nan_equals_nan_and_a_tolerance_can_be_widened():
    compare_golden({"loss": math.nan}, {"loss": math.nan})
    with pytest.raises(AssertionError, match=r"loss: nan != golden 1.0"):
        compare_golden({"loss": math.nan}, {"loss": 1.0})
    with pytest.raises(AssertionError, match=r"relative difference 1.0e-05 > 1e-06"):
        compare_golden({"w": 1.00001}, {"w": 1.0})
    compare_golden({"w": 1.00001}, {"w": 1.0}, rel=1e-4)
