import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgpack
import pytest
import torch

import topology as T
from gossip import Message, encode, encode_message
from node.peer import JsonLog, Peer
from node.peer.checkpoint import load_checkpoint
from sim import SimConfig, Simulation
from tests.helpers import (
    digits_data,
    peer_config,
    run_memory_network,
    running,
    trusted,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = digits_data()
__all__ = ["peer_config", "start_peers"]  # also used by tests/test_peer_edges.py


async def start_peers(graph, tmp_path, rounds, algorithm="dfedsam-mgs", **settings):
    """Peers on 127.0.0.1 with OS-chosen ports, wired to their neighbours once all listen."""
    n = graph.number_of_nodes()
    if algorithm == "dfedsam-mgs":
        settings.setdefault("gossip_steps", 2)
    configs = []
    for i in range(n):
        config = peer_config(i, n, tmp_path, rounds, algorithm=algorithm, **settings)
        config.neighbours = {j: "http://127.0.0.1:1" for j in graph.neighbors(i)}
        configs.append(config)
    peers = [Peer(config, data=DIGITS, log=JsonLog(i, stream=io.StringIO()))
             for i, config in enumerate(trusted(configs, tmp_path))]
    for p in peers:
        await p.start()
    for p in peers:
        p.transport.set_peers({j: peers[j].transport.url for j in p.neighbours})
    return peers


async def test_peers_over_loopback_http_equal_the_simulator(tmp_path):
    graph = T.ring(5)
    peers = await start_peers(graph, tmp_path, rounds=4, deadline_floor_s=30.0,
                              deadline_ceiling_s=30.0)
    for p in peers:
        p.config.algorithm.final_merge = False
    summaries = await asyncio.gather(*(p.run() for p in peers))
    assert all(s["rounds_completed"] == 4 and s["bytes_out"] > 0 for s in summaries)
    sim = Simulation.from_config(SimConfig.of(
        nodes=5, topology="ring", rounds=4, partition="dirichlet", alpha=0.5, seed=0,
        algorithm="dfedsam-mgs", gossip_steps=2, final_merge=False))
    sim.run()
    for peer, learner in zip(peers, sim.learners):
        assert torch.allclose(peer.learner.params, learner.params, atol=1e-6)
    assert not torch.allclose(peers[0].learner.params, peers[1].learner.params)


async def test_final_merge_gives_every_peer_of_the_component_the_exact_average(tmp_path):
    graph = T.build_graph("random-geometric", 6, seed=1, radius=0.6)
    peers = await start_peers(graph, tmp_path, rounds=2, algorithm="dfedavg",
                              deadline_floor_s=30.0, deadline_ceiling_s=30.0)
    before = {}
    originals = [p.final_merge for p in peers]

    def capture(peer, original):
        async def wrapped():
            before[peer.id] = peer.learner.params.clone()
            return await original()
        return wrapped

    for p, original in zip(peers, originals):
        p.final_merge = capture(p, original)
    summaries = await asyncio.gather(*(p.run() for p in peers))
    exact = torch.stack([before[i].double() for i in range(6)]).mean(0).float()
    for p, s in zip(peers, summaries):
        assert torch.equal(p.learner.params, peers[0].learner.params)
        assert s["component"] == list(range(6))
    assert torch.allclose(peers[0].learner.params, exact, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
async def test_a_peer_killed_mid_run_does_not_stall_the_others(tmp_path):
    graph = T.ring(5)
    ceiling = 3.0  # generous: under a loaded CI machine a live but slow peer must not be suspected
    peers = await start_peers(graph, tmp_path, rounds=8, algorithm="dfedavg",
                              deadline_floor_s=0.2, deadline_ceiling_s=ceiling,
                              startup_timeout_s=10.0)
    victim = peers[0]
    tasks = [asyncio.create_task(p.run()) for p in peers]

    async def kill_after(rounds):
        while victim.completed_rounds < rounds:
            await asyncio.sleep(0.005)
        tasks[0].cancel()

    await kill_after(2)
    survivors = await asyncio.gather(*tasks[1:])
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    seen = [(s["component"], s["merged_accuracy"], s["rounds_completed"]) for s in survivors]
    for s in survivors:
        assert s["rounds_completed"] == 8, seen
        assert s["component"] == [1, 2, 3, 4], seen
        assert s["merged_accuracy"] == survivors[0]["merged_accuracy"], seen
    # every wait after the start-up rendezvous is bounded by the ceiling
    for p in peers[1:]:
        assert max(p.wait_times[1:]) <= ceiling + 0.5
    assert 0 in peers[1].suspect or 0 in peers[4].suspect


async def test_bad_messages_get_4xx_and_the_peer_keeps_training(tmp_path):
    peers = await start_peers(T.complete(2), tmp_path, rounds=40, algorithm="dsgd",
                              max_message_bytes=64 * 1024)
    target = peers[0]
    tasks = [asyncio.create_task(p.run()) for p in peers]
    size = target.learner.model.size

    def body(**changes):
        """A payload signed by the trusted neighbour 1, with ``changes``."""
        raw = msgpack.unpackb(encode_message(Message("model", 1, 0, 0, 1, [(1, torch.zeros(size))]),
                                             size), raw=False)
        raw.update(changes)
        return peers[1].identity.seal(msgpack.packb(raw, use_bin_type=True))

    cases = {
        "unsigned": (b"\x93\x01", 400),
        "malformed": (peers[1].identity.seal(b"\x93\x01"), 400),
        "unknown kind": (body(kind="shutdown"), 400),
        "wrong shape": (body(length=size + 1), 422),
        "NaN": (body(vectors=[[1, encode(torch.full((size,), float("nan")))]]), 422),
        "Inf": (body(vectors=[[1, encode(torch.full((size,), float("inf")))]]), 422),
        "forged sender": (body(sender=7, vectors=[[7, encode(torch.zeros(size))]]), 403),
        "oversized": (b"\0" * (65 * 1024), 413),
    }
    async with aiohttp.ClientSession() as session:
        for name, (payload, status) in cases.items():
            async with session.post(f"{target.transport.url}/gossip", data=payload) as r:
                assert r.status == status, name
        async with session.get(f"{target.transport.url}/status") as r:
            status = await r.json()
        async with session.get(f"{target.transport.url}/metrics") as r:
            metrics = await r.text()
        async with session.get(f"{target.transport.url}/healthz") as r:
            assert r.status == 200
    summaries = await asyncio.gather(*tasks)
    assert all(s["rounds_completed"] == 40 for s in summaries)
    assert summaries[0]["accuracy"] > 0.5
    assert sum(target.rejected.values()) == len(cases)
    assert status["id"] == 0 and "live_neighbours" in status and "bytes_in" in status
    assert 'decent_messages_rejected_total{peer="0",status="422"} 3.0' in metrics


def checkpoint_round(state_dir):
    try:
        state = load_checkpoint(state_dir)
    except Exception:  # written atomically, but be lenient while the file appears
        return 0
    return 0 if state is None else state["round"]


@pytest.mark.slow
def test_a_peer_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    state = tmp_path / "state"
    log = tmp_path / "peer.log"
    command = [sys.executable, "-m", "node", "--id", "0", "--rounds", "600", "--state-dir",
               str(state), "--log-file", str(log)]
    with running(command, cwd=ROOT) as first:
        killed_at = wait_for(lambda: checkpoint_round(state) >= 20, 60, "20 rounds")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    saved = checkpoint_round(state)
    assert saved >= killed_at
    with running(command, cwd=ROOT) as second:
        assert second.wait(timeout=120) == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] == saved
    rounds_after = [e["round"] for e in events[events.index(resumed[0]):] if e["event"] == "round"]
    assert rounds_after[0] == saved + 1 and rounds_after[-1] == 600
    final = json.loads((state / "final.json").read_text())
    assert final["rounds_completed"] == 600
    # alone, the final merge keeps the peer's own model and says so
    assert any(e["event"] == "merge_isolated" for e in events)
    assert final["merged_accuracy"] == final["accuracy"]


@pytest.mark.slow
def test_sigterm_stops_cleanly_after_the_current_step(tmp_path):
    state = tmp_path / "state"
    with running([sys.executable, "-m", "node", "--id", "0", "--rounds", "100000",
                  "--state-dir", str(state), "--log-file", str(tmp_path / "log")],
                 cwd=ROOT) as proc:
        wait_for(lambda: checkpoint_round(state) >= 3, 60, "3 rounds")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    final = json.loads((state / "final.json").read_text())
    assert final["state"] == "stopped" and 3 <= final["rounds_completed"] < 100000


@pytest.mark.slow
def test_bad_peer_config_names_the_key(tmp_path):
    path = tmp_path / "peer.toml"
    path.write_text('[peer]\nid = 1\n[gossip]\ndeadline_floor_s = -1\n')
    result = subprocess.run([sys.executable, "-m", "node", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 2
    assert "[gossip] deadline_floor_s: must be > 0" in result.stderr
    assert result.stderr.count("\n") == 1  # one line: no usage block, no traceback


async def run_in_memory(tmp_path, codec):
    configs = [peer_config(i, 4, tmp_path / codec, rounds=3, algorithm="dfedavg", codec=codec,
                           final_merge=False) for i in range(4)]
    peers = await run_memory_network(T.ring(4), configs, run=False)
    summaries = await asyncio.gather(*(p.run() for p in peers))
    assert all(s["rounds_completed"] == 3 for s in summaries)
    return [p.learner.params.clone() for p in peers], summaries


async def test_in_memory_transport_and_lossy_codecs_selected_by_config(tmp_path):
    exact, summaries = await run_in_memory(tmp_path, "f32")
    sim = Simulation.from_config(SimConfig.of(
        nodes=4, topology="ring", rounds=3, partition="dirichlet", alpha=0.5, seed=0,
        algorithm="dfedavg", final_merge=False))
    sim.run()
    assert all(torch.equal(a, b.params) for a, b in zip(exact, sim.learners))
    for codec, tolerance in (("bf16", 0.05), ("q8", 0.1)):
        lossy, lossy_summaries = await run_in_memory(tmp_path, codec)
        gap = max(float((a - b).abs().max()) for a, b in zip(exact, lossy))
        assert 0 < gap < tolerance, codec
        assert lossy_summaries[0]["bytes_out"] < summaries[0]["bytes_out"]
