"""Rough edges of the networked peer that a new user hit: error messages, restarts, refusals,
/metrics, /status and the round log."""

import asyncio
import io
import json
import logging
import socket
import subprocess
import sys

import aiohttp
import networkx as nx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import topology as T
from gossip import HttpTransport, InMemoryHub, Message, encode_message
from node.learning.model import build_model
from node.peer import JsonLog, Peer
from node.peer.checkpoint import load_checkpoint
from tests.helpers import running
from tests.test_peer import DIGITS, ROOT, peer_config, start_peers

COMMON_REJECTIONS = ("400", "401", "403", "409", "413", "422", "429")


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_node(*args: str, timeout: float = 120) -> tuple[int, str]:
    """``python -m node ARGS`` to the end; (exit status, standard error). Killed if the test
    fails or it runs past ``timeout``."""
    with running([sys.executable, "-m", "node", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True) as proc:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr


def events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def in_memory_peers(tmp_path, rounds, graph, **settings):
    """Peers on an in-memory hub along ``graph`` (not started), without the final merge; and
    their logs."""
    hub, logs, peers = InMemoryHub(), [], []
    n = graph.number_of_nodes()
    for i in range(n):
        config = peer_config(i, n, tmp_path, rounds, final_merge=False, **settings)
        config.neighbours = {j: "http://in-memory" for j in graph.neighbors(i)}
        logs.append(io.StringIO())
        peers.append(Peer(config, transport=hub.transport(i), data=DIGITS,
                          log=JsonLog(i, stream=logs[i])))
    return peers, logs


@pytest.mark.slow
def test_a_busy_port_gives_one_line_naming_the_address(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        rc, stderr = run_node("--id", "0", "--listen", address, "--rounds", "1",
                              "--state-dir", str(tmp_path / "state"),
                              "--log-file", str(tmp_path / "log"))
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert f"cannot listen on {address}: address already in use" in lines[0]


@pytest.mark.slow
def test_a_state_dir_reused_with_another_model_says_how_to_start_afresh(tmp_path):
    state, config = tmp_path / "state", tmp_path / "peer.toml"
    args = ("--config", str(config), "--id", "0", "--rounds", "1", "--state-dir", str(state),
            "--log-file", str(tmp_path / "log"))

    def write_config(model: str) -> None:
        config.write_text(f'[model]\nname = "{model}"\n[algorithm]\nname = "dsgd"\n')

    write_config("logreg")
    assert run_node(*args)[0] == 0
    write_config("mlp")
    rc, stderr = run_node(*args)
    assert rc == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    sizes = {name: build_model(name, in_features=DIGITS.in_features,
                               num_classes=DIGITS.num_classes, seed=0).size
             for name in ("logreg", "mlp")}
    assert str(state / "checkpoint.pt") in line
    assert f"holds {sizes['logreg']} parameters" in line
    assert "'mlp'" in line and f"{sizes['mlp']} parameters" in line
    assert "--state-dir" in line and "delete" in line


@pytest.mark.slow
def test_a_finished_peer_started_again_says_so_and_keeps_its_summary(tmp_path):
    state, log = tmp_path / "state", tmp_path / "log"
    args = ("--id", "0", "--rounds", "3", "--state-dir", str(state), "--log-file", str(log))
    assert run_node(*args)[0] == 0
    first = (state / "final.json").read_text()
    assert json.loads(first)["accuracy"] is not None
    rc, stderr = run_node(*args)
    assert rc == 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"peer 0 already finished its 3 rounds (state in {state})" in lines[0]
    assert "--state-dir" in lines[0] and "raise rounds" in lines[0]
    assert (state / "final.json").read_text() == first
    second_run = events(log)[[e["event"] for e in events(log)].index("resumed"):]
    assert [e["event"] for e in second_run].count("already_finished") == 1
    assert not any(e["event"] in ("round", "merged", "merge_isolated") for e in second_run)


async def test_a_peer_refused_by_a_neighbour_logs_it_once_and_counts_every_refusal(tmp_path):
    peers, logs = in_memory_peers(tmp_path, 3, T.complete(2), algorithm="dfedavg",
                                  deadline_floor_s=0.05, deadline_ceiling_s=0.1,
                                  startup_timeout_s=0.1)
    peers[1].neighbourhood.members.clear()  # peer 1 does not list peer 0: it answers 403
    for p in peers:
        await p.start()
    try:
        summary = await peers[0].run()
    finally:
        await peers[1].close()
    refusals = [json.loads(line) for line in logs[0].getvalue().splitlines()
                if json.loads(line)["event"] == "refused_by"]
    assert len(refusals) == 1
    assert {k: refusals[0][k] for k in ("neighbour", "status", "reason")} == \
        {"neighbour": 1, "status": 403, "reason": "not a neighbour"}
    assert "sender" not in json.dumps(refusals[0])  # the neighbour's answer is not echoed
    assert summary["refused_by"] == {"1:403": 3}
    assert peers[0].status()["refused_by"] == {"1:403": 3}


async def test_metrics_have_help_a_peer_label_and_rejection_samples_from_the_start(tmp_path):
    peers = await start_peers(T.complete(2), tmp_path, rounds=1, algorithm="dsgd")
    url = peers[0].transport.url
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/metrics") as r:
                assert r.content_type == "text/plain"
                before = await r.text()
            async with session.post(f"{url}/gossip", data=b"\x93\x01") as r:
                assert r.status == 400
            async with session.get(f"{url}/metrics") as r:
                after = await r.text()
    finally:
        for p in peers:
            await p.close()
    families = {f.name: f for f in text_string_to_metric_families(before)}
    for name in ("decent_round", "decent_rounds_completed", "decent_live_neighbours",
                 "decent_last_accuracy", "decent_bytes_in", "decent_bytes_out",
                 "decent_messages_rejected"):
        assert name in families, name
    for family in families.values():
        assert family.documentation, family.name
        assert family.samples, family.name
        for sample in family.samples:
            assert sample.labels.get("peer") == "0", sample
    rejected = {s.labels["status"]: s.value for s in families["decent_messages_rejected"].samples}
    assert rejected == dict.fromkeys(COMMON_REJECTIONS, 0.0)
    assert families["decent_live_neighbours"].samples[0].value == 1
    rejected = {s.labels["status"]: s.value for f in text_string_to_metric_families(after)
                if f.name == "decent_messages_rejected" for s in f.samples}
    assert rejected["400"] == 1.0 and rejected["403"] == 0.0


async def test_the_round_log_counts_neighbours_heard_per_gossip_step(tmp_path):
    peers, logs = in_memory_peers(tmp_path, 2, T.complete(2), algorithm="dfedsam-mgs",
                                  gossip_steps=3)
    for p in peers:
        await p.start()
    await asyncio.gather(*(p.run() for p in peers))
    rounds = [r for r in map(json.loads, logs[0].getvalue().splitlines()) if r["event"] == "round"]
    assert len(rounds) == 2
    for record in rounds:
        assert "heard" not in record
        heard = record["neighbours_heard_per_step"]
        assert heard == [1, 1, 1] and all(type(n) is int for n in heard)


async def test_status_round_fields_never_contradict(tmp_path):
    peers, _ = in_memory_peers(tmp_path, 4, T.complete(2), algorithm="dfedavg")
    target, samples, done = peers[0], [], asyncio.Event()
    between_rounds = 0  # samples taken while the finished round's checkpoint was being written

    async def sample() -> None:
        nonlocal between_rounds
        while not done.is_set():
            samples.append(target.status())
            between_rounds += target.completed_rounds == target.position[0] + 1 and \
                target.state == "gossip"
            await asyncio.sleep(0)

    for p in peers:
        await p.start()
    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(p.run() for p in peers))
    finally:
        done.set()
        await sampler
    samples.append(target.status())
    assert between_rounds > 0 and len(samples) > 100
    completed = [s["rounds_completed"] for s in samples]
    assert completed == sorted(completed) and completed[-1] == 4
    for s in samples:
        assert 0 <= s["rounds_completed"] <= s["rounds"]
        if s["state"] in ("starting", "training", "gossip"):
            assert s["current_round"] == s["rounds_completed"], s
        else:
            assert s["current_round"] is None, s


async def test_a_send_to_a_closed_port_logs_a_debug_record(caplog):
    caplog.set_level(logging.DEBUG, logger="gossip.transport")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    async def handler(body):
        return 200, "ok"

    transport = HttpTransport("127.0.0.1", 0, 1024)
    await transport.start(handler)
    transport.set_peers({1: f"http://127.0.0.1:{port}"})
    try:
        assert await transport.send(1, b"secret payload", 5.0, retry=False) is None
    finally:
        await transport.close()
    records = [r for r in caplog.records
               if r.name == "gossip.transport" and r.levelno == logging.DEBUG]
    assert records and f"127.0.0.1:{port}" in records[0].getMessage()
    assert "secret" not in caplog.text


async def test_the_checkpoint_holds_no_unused_torch_rng_state(tmp_path):
    peers, _ = in_memory_peers(tmp_path, 1, nx.empty_graph(1), algorithm="dsgd")
    await peers[0].start()
    await peers[0].run()
    state = load_checkpoint(tmp_path / "peer0")
    assert state["round"] == 1
    assert "torch_rng" not in state
    assert set(state) == {"round", "learner", "traffic", "mixing"}


async def test_stale_messages_are_counted_as_409_without_a_log_line_each(tmp_path):
    peers, logs = in_memory_peers(tmp_path, 1, T.complete(2), algorithm="dfedavg")
    target = peers[0]
    target.position = (3, 0)  # collecting round 3: a round-1 model is stale
    size = target.learner.model.size
    body = peers[1].identity.seal(
        encode_message(Message("model", 1, 1, 0, 1, [(1, torch.zeros(size))]), size))
    try:
        for _ in range(3):
            assert (await target.handle(body))[0] == 409
    finally:
        for p in peers:
            await p.close()
    assert target.rejected[409] == 3
    assert target.status()["rejected"] == {"409": 3}
    assert "rejected" not in logs[0].getvalue()
