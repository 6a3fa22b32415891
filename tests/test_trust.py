"""Identities and hostile input: what an attacker on the same network tries, and proof that the
peer refuses it (issue: trust and survival). Peers are real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgpack
import networkx as nx
import pytest
import torch

import topology as T
from gossip import InMemoryHub, Message, encode, encode_message
from gossip.auth import (
    AuthError,
    Identity,
    TrustStore,
    create_key,
    issue_certificate,
    load_key,
    public_bytes,
)
from node.config import PeerConfig
from node.peer import JsonLog, Peer
from node.peer.keys import provision, read_certificate
from node.peer.neighbourhood import catch_up_target
from node.schema import dump_toml
from tests.helpers import digits_data, peer_config, running, trusted, wait_for
from tests.test_peer import start_peers

ROOT = Path(__file__).resolve().parents[1]
DIGITS = digits_data()


async def post(url: str, body: bytes, headers: dict | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/gossip", data=body, headers=headers) as response:
            await response.read()
            return response.status


def model_payload(sender: int, size: int, *, round_index: int = 0, step: int = 0,
                  value: float = 0.0) -> bytes:
    return encode_message(Message("model", sender, round_index, step, 1,
                                  [(sender, torch.full((size,), value))]), size)


# -- the trust store's decisions -------------------------------------------------------------


def test_certificates_are_checked_for_authority_peer_id_and_expiry(tmp_path):
    authority = create_key(tmp_path / "authority.key")
    rogue = create_key(tmp_path / "rogue.key")
    peer = create_key(tmp_path / "peer.key")
    now = [time.time()]
    store = TrustStore(clock=lambda: now[0])
    store.add_authority(public_bytes(authority.public_key()))
    good = issue_certificate(authority, peer=4, public_key=public_bytes(peer.public_key()),
                             valid_s=60)
    assert store.key_for(4, good.to_bytes())  # accepted
    with pytest.raises(AuthError, match="another peer id") as info:
        store.key_for(5, good.to_bytes())
    assert info.value.status == 403
    forged = issue_certificate(rogue, peer=4, public_key=public_bytes(peer.public_key()),
                               valid_s=60)
    with pytest.raises(AuthError, match="does not trust"):
        store.key_for(4, forged.to_bytes())
    tampered = bytearray(good.to_bytes())
    tampered[20] ^= 1  # inside the public key
    with pytest.raises(AuthError, match="signature invalid"):
        store.key_for(4, bytes(tampered))
    now[0] += 120
    with pytest.raises(AuthError, match="expired"):
        store.key_for(4, good.to_bytes())
    with pytest.raises(AuthError, match="unknown sender"):
        TrustStore().key_for(4, public_bytes(peer.public_key()))


def test_open_mode_pins_each_id_to_its_first_key(tmp_path):
    a, b = create_key(tmp_path / "a.key"), create_key(tmp_path / "b.key")
    store = TrustStore(mode="open")
    body = Identity(7, a).seal(b"payload")
    assert store.open(body).sender == 7
    with pytest.raises(AuthError, match="pinned to another key") as info:
        store.open(Identity(7, b).seal(b"payload"))
    assert info.value.status == 403
    assert store.open(Identity(8, b).seal(b"x")).sender == 8


def test_one_neighbours_claim_never_moves_a_peer_but_a_majority_does():
    assert catch_up_target(3, [2**40]) == 3  # a line end and its only neighbour
    assert catch_up_target(3, [4, 2**40]) == 4  # one honest neighbour one round ahead
    assert catch_up_target(3, [20, 20]) == 20  # was down: both neighbours moved on
    assert catch_up_target(3, [20, 20, 2**40]) == 20
    assert catch_up_target(3, []) == 3


# -- live peers ------------------------------------------------------------------------------


async def test_forged_unknown_replayed_tampered_and_invented_origin_messages_are_refused(
        tmp_path):
    peers = await start_peers(T.complete(2), tmp_path, rounds=2, algorithm="dsgd")
    target, neighbour = peers
    url, size = target.transport.url, target.learner.vector_size
    before = target.learner.vector().clone()
    outsider = create_key(tmp_path / "outsider.key")
    rogue_authority = create_key(tmp_path / "rogue.key")
    try:
        good = neighbour.identity.seal(model_payload(1, size, value=0.5))
        tampered = bytearray(good)
        tampered[-1] ^= 0x40
        self_certified = Identity(1, outsider, issue_certificate(
            rogue_authority, peer=1, public_key=public_bytes(outsider.public_key()),
            valid_s=60))
        # a neighbour's certificate presented with an outsider's signature
        stolen = Identity(1, outsider)
        stolen_body = bytearray(stolen.seal(model_payload(1, size)))
        cases = [
            ("forged sender, outsider's bare key", Identity(1, outsider).seal(
                model_payload(1, size)), 401),
            ("outsider's key, certificate of a rogue authority",
             self_certified.seal(model_payload(1, size)), 401),
            ("claims an id that is not a neighbour", Identity(9, outsider).seal(
                model_payload(9, size)), 403),
            ("unsigned payload", model_payload(1, size), 400),
            ("tampered payload", bytes(tampered), 401),
            ("signed by the neighbour, naming another sender", neighbour.identity.seal(
                model_payload(0, size)), 403),
            ("outsider's signature over the neighbour's id", bytes(stolen_body), 401),
        ]
        for name, body, status in cases:
            assert await post(url, body) == status, name
        assert not target.inbox.slots, "nothing refused may be buffered"
        assert await post(url, good) == 200
        assert await post(url, good) == 409  # the same message again: a replay
        # a merge message from the trusted neighbour inventing a member: origin 99 signed by
        # the neighbour's own key, and an origin with no signature at all
        fake = torch.zeros(size)
        invented = Message("merge", 1, 2, 0, 1, [(99, fake)], "f32", False,
                           {99: neighbour.identity.sign_origin(2, encode(fake, "f32"))})
        assert await post(url, neighbour.identity.seal(encode_message(invented, size))) == 403
        unsigned = Message("merge", 1, 2, 1, 1, [(1, fake)], "f32", False, {})
        assert await post(url, neighbour.identity.seal(encode_message(unsigned, size))) == 401
        altered = Message("merge", 1, 2, 2, 1, [(1, fake + 1)], "f32", False,
                          {1: neighbour.identity.sign_origin(2, encode(fake, "f32"))})
        assert await post(url, neighbour.identity.seal(encode_message(altered, size))) == 401
        assert list(target.inbox.slots) == [("model", 0, 0)]  # only the one good message
        assert torch.equal(target.learner.vector(), before)
        assert target.rejected[401] == 6 and target.rejected[403] == 3
    finally:
        for p in peers:
            await p.close()


async def test_a_far_future_round_from_one_neighbour_skips_no_round(tmp_path):
    """The attack of the issue: one model message with round 2**40 naming a neighbour made a
    3-peer line catch up to the end. Here the neighbour really is trusted (its own key)."""
    rounds = 12
    peers = await start_peers(nx.path_graph(3), tmp_path, rounds=rounds, algorithm="dsgd",
                              deadline_floor_s=0.2, deadline_ceiling_s=1.0, final_merge=False)
    size = peers[0].learner.vector_size
    far = 2**40
    # the middle peer and a line end each get the claim from a neighbour they trust (before
    # the run starts: these peers finish 12 rounds of digits in well under a second)
    assert await post(peers[1].transport.url, peers[0].identity.seal(
        model_payload(0, size, round_index=far))) == 409
    assert await post(peers[0].transport.url, peers[1].identity.seal(
        model_payload(1, size, round_index=far))) == 409
    tasks = [asyncio.create_task(p.run()) for p in peers]
    try:
        summaries = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        for task in tasks:
            task.cancel()
    for p, s in zip(peers, summaries):
        assert s["rounds_completed"] == rounds
        assert p.completed_rounds == rounds
    assert peers[1].neighbourhood.claimed[0] == 2**40  # the claim was heard, and did not move it


async def test_a_huge_finite_vector_leaves_the_receivers_model_finite(tmp_path):
    graph = T.complete(2)
    hub = InMemoryHub()
    peers = []
    for i in range(2):
        config = peer_config(i, 2, tmp_path, 3, algorithm="dsgd", final_merge=False,
                             deadline_floor_s=0.2, deadline_ceiling_s=0.5)
        config.neighbours = {j: "http://in-memory" for j in graph.neighbors(i)}
        peers.append(Peer(config, transport=hub.transport(i), data=DIGITS,
                          log=JsonLog(i, stream=io.StringIO())))
    for p in peers:
        await p.start()
    size = peers[0].learner.vector_size
    huge = model_payload(1, size, value=3.4e38)
    try:
        # refused at the door: beyond max_abs_value
        assert (await peers[0].handle(peers[1].identity.seal(huge)))[0] == 422
        # and with the bound lifted, the mixed model is checked: the sum overflows to Inf, the
        # peer keeps its own model
        peers[0].config.gossip.max_abs_value = 3.5e38
        assert (await peers[0].handle(peers[1].identity.seal(huge)))[0] == 200
        await peers[0].gossip_step(0, 0)
        assert torch.isfinite(peers[0].learner.vector()).all()
    finally:
        for p in peers:
            await p.close()


# -- resources, measured on a peer process ---------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peer_process_config(tmp_path: Path, port: int, **settings) -> tuple[Path, list]:
    """Peer 0 (listening on ``port``) with neighbour 1 that never starts; both provisioned;
    returns peer 0's config file and the two configs."""
    configs = [PeerConfig.of(id=i, listen=f"127.0.0.1:{port + i}", rounds=1000, seed=0,
                             state_dir=str(tmp_path / f"peer{i}"),
                             log_file=str(tmp_path / f"peer{i}" / "log.jsonl"),
                             startup_timeout_s=120, **settings) for i in range(2)]
    for i, c in enumerate(configs):
        c.neighbours = {1 - i: f"http://127.0.0.1:{port + 1 - i}"}
    configs = provision(configs, tmp_path / "trust")
    path = tmp_path / "peer0.toml"
    path.write_text(dump_toml(configs[0]))
    return path, configs


@pytest.mark.slow
def test_bombs_are_refused_before_memory_is_spent(tmp_path):
    """A body announcing 2 GB, a gzip body that inflates to 60 MiB, and msgpack bodies of
    millions of empty containers (signed by the trusted neighbour, so they reach the parser):
    each refused, and the peer's peak RSS grows by less than 50 MB."""
    port = free_port()
    path, configs = peer_process_config(tmp_path, port)
    neighbour = Identity(1, load_key(configs[1].trust.key_file),
                         read_certificate(configs[1].trust.certificate))
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "node", "--config", str(path)], cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        log = Path(configs[0].peer.log_file)
        wait_for(lambda: log.exists() and "listening" in log.read_text(), 60, "peer 0 listens")
        time.sleep(0.5)
        baseline = peak_rss_mb(proc.pid)

        async def attack() -> list[int]:
            statuses = []
            async with aiohttp.ClientSession() as session:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /gossip HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648"
                             b"\r\n\r\n" + b"\0" * 4096)
                await writer.drain()
                statuses.append(int((await reader.readline()).split()[1]))
                writer.close()
                inflating = gzip.compress(b"\0" * (60 * 2**20))
                async with session.post(f"{url}/gossip", data=inflating,
                                        headers={"Content-Encoding": "gzip"}) as r:
                    statuses.append(r.status)
                empties = msgpack.packb({"v": 1, "kind": "model", "sender": 1, "round": 0,
                                         "step": 0, "degree": 1, "codec": "f32", "length": 1,
                                         "final": False, "vectors": [[]] * 3_000_000})
                nested = msgpack.packb({"v": [{}] * 3_000_000})
                assert len(empties) > 2_000_000 and len(nested) > 2_000_000
                for payload in (empties, nested):
                    async with session.post(f"{url}/gossip",
                                            data=neighbour.seal(payload)) as r:
                        statuses.append(r.status)
            return statuses

        statuses = asyncio.run(attack())
        assert proc.poll() is None, "the peer died"
        grown = peak_rss_mb(proc.pid) - baseline
    assert statuses == [413, 415, 400, 400]
    assert grown < 50, f"peak RSS grew by {grown:.0f} MB"


def test_a_peer_with_neighbours_and_no_trust_store_refuses_to_start(tmp_path):
    config = PeerConfig.of(id=0, state_dir=str(tmp_path / "s"), rounds=1)
    config.neighbours = {1: "http://127.0.0.1:1"}
    with pytest.raises(ValueError, match=r"\[trust\] store is not set"):
        Peer(config, data=DIGITS, log=JsonLog(0, stream=io.StringIO()))
    alone = PeerConfig.of(id=0, state_dir=str(tmp_path / "alone"), rounds=1)
    Peer(alone, data=DIGITS, log=JsonLog(0, stream=io.StringIO()))  # no neighbours: fine
    key = tmp_path / "alone" / "identity.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "alone").stat().st_mode & 0o777 == 0o700


def test_open_mode_is_announced_loudly(tmp_path, capsys):
    config = PeerConfig.of(id=0, state_dir=str(tmp_path / "s"), rounds=1, trust_mode="open")
    config.neighbours = {1: "http://127.0.0.1:1"}
    log = io.StringIO()
    Peer(config, data=DIGITS, log=JsonLog(0, stream=log))
    assert "OPEN MODE" in capsys.readouterr().err
    assert any(json.loads(line)["event"] == "open_mode" for line in log.getvalue().splitlines())


def test_launched_peer_configs_are_authenticated_by_default(tmp_path):
    from node.config import LaunchConfig
    from node.launcher import write_configs

    experiment = LaunchConfig.of(nodes=3, topology="ring", rounds=1)
    paths = write_configs(experiment.peer_configs([("127.0.0.1", 9000 + i) for i in range(3)],
                                                  tmp_path), tmp_path)
    for path in paths:
        config = PeerConfig.load(path)
        assert config.trust.mode == "signed" and Path(config.trust.store).exists()
        cert = read_certificate(config.trust.certificate)
        assert cert.peer == config.peer.id
    assert (tmp_path / "authority.key").stat().st_mode & 0o777 == 0o600


def test_trusted_helper_gives_every_peer_a_certificate(tmp_path):
    configs = trusted([peer_config(i, 2, tmp_path, 1) for i in range(2)], tmp_path)
    certs = [read_certificate(c.trust.certificate) for c in configs]
    assert [c.peer for c in certs] == [0, 1] and certs[0].public_key != certs[1].public_key


# -- TLS -------------------------------------------------------------------------------------


def write_peer_pki(folder: Path) -> dict[str, str]:
    """A CA and one certificate for 127.0.0.1 that a peer serves and connects with."""
    from tests.test_transport_limits import write_pki

    paths = write_pki(folder)
    return {"ca": paths["ca"], "cert": paths["peer"], "key": paths["peer_key"]}


async def test_two_peers_train_and_merge_over_mutual_tls(tmp_path):
    pki = write_peer_pki(tmp_path)
    ports = [free_port(), free_port()]
    configs = []
    for i in range(2):
        config = peer_config(i, 2, tmp_path, 3, algorithm="dsgd", listen=f"127.0.0.1:{ports[i]}",
                             tls_cert=pki["cert"], tls_key=pki["key"], tls_ca=pki["ca"])
        configs.append(config.updated(neighbours={1 - i: f"https://127.0.0.1:{ports[1 - i]}"}))
    peers = [Peer(c, data=DIGITS, log=JsonLog(i, stream=io.StringIO()))
             for i, c in enumerate(trusted(configs, tmp_path))]
    for p in peers:
        await p.start()
    assert peers[0].transport.url.startswith("https://")
    try:
        async with aiohttp.ClientSession() as session:  # plaintext to a TLS port: no answer
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://127.0.0.1:{ports[0]}/gossip", data=b"x",
                                        timeout=aiohttp.ClientTimeout(total=5)) as r:
                    await r.read()
        summaries = await asyncio.wait_for(asyncio.gather(*(p.run() for p in peers)), 120)
    finally:
        for p in peers:
            await p.close()
    assert [s["rounds_completed"] for s in summaries] == [3, 3]
    assert [s["component"] for s in summaries] == [[0, 1], [0, 1]]
    assert all(s["bytes_in"] > 0 for s in summaries)


@pytest.mark.slow
def test_tls_that_cannot_be_used_stops_the_peer_at_start(tmp_path):
    pki = write_peer_pki(tmp_path)
    missing = str(tmp_path / "nowhere.pem")
    config = PeerConfig.of(id=0, state_dir=str(tmp_path / "s"), rounds=1, tls_cert=missing,
                           tls_key=pki["key"], tls_ca=pki["ca"])
    with pytest.raises(ValueError, match="nowhere.pem"):
        Peer(config, data=DIGITS, log=JsonLog(0, stream=io.StringIO()))
    rc = subprocess.run([sys.executable, "-m", "node", "--id", "0", "--rounds", "1",
                         "--state-dir", str(tmp_path / "s2"), "--tls-cert", missing,
                         "--tls-key", pki["key"], "--tls-ca", pki["ca"]], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert rc.returncode == 2
    assert "nowhere.pem" in rc.stderr and len(rc.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match=r"https:// but \[tls\] ca_file is not set"):
        PeerConfig.from_table({"peer": {"id": 0}, "neighbours": {"1": "https://127.0.0.1:9"}})
    with pytest.raises(ValueError, match="plain http://"):
        PeerConfig.from_table({"peer": {"id": 0}, "neighbours": {"1": "http://127.0.0.1:9"},
                               "tls": {"cert_file": pki["cert"], "key_file": pki["key"],
                                       "ca_file": pki["ca"]}})
    with pytest.raises(ValueError, match="together"):
        PeerConfig.of(id=0, tls_ca=pki["ca"])


# -- descriptors -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_peer_under_a_1024_descriptor_limit_survives_1100_slow_connections(tmp_path):
    """The issue's crash: 1,100 slow-header connections against a peer under the common 1,024
    limit ended it with EMFILE in save_checkpoint. Now the connections beyond the cap are closed
    at once and the peer, which checkpoints every round meanwhile, finishes its rounds."""
    import resource

    from gossip import raise_fd_limit
    from tests.test_transport_limits import connect_many

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_fd_limit() < 1300:
        pytest.skip(f"this test process cannot open 1300 files (hard limit {hard})")
    port = free_port()
    state = tmp_path / "state"

    def limit_descriptors() -> None:  # in the child, before python starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    sockets = []
    try:
        with running([sys.executable, "-m", "node", "--id", "0", "--rounds", "400",
                      "--listen", f"127.0.0.1:{port}", "--state-dir", str(state),
                      "--log-file", str(state / "log.jsonl"), "--algorithm", "dfedavg",
                      "--local-steps", "30",
                      "--header-timeout-s", "30"], cwd=ROOT, stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, preexec_fn=limit_descriptors) as proc:
            log = state / "log.jsonl"
            wait_for(lambda: log.exists() and "listening" in log.read_text(), 60,
                     "the peer listens")
            sockets = connect_many(port, 1100)

            def rounds_done() -> int:
                return log.read_text().count('"event": "round"')

            rounds_then = rounds_done()
            # the peer goes on training (and checkpointing) with all of them open
            wait_for(lambda: rounds_done() >= rounds_then + 5 or proc.poll() is not None, 120,
                     "rounds while the connections are open")
            assert proc.poll() is None or rounds_then < 400, "the peer stopped"
            _, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr.decode()[-2000:]
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    final = json.loads((state / "final.json").read_text())
    assert final["rounds_completed"] == 400 and final["state"] == "done"
    assert rounds_then < 400, "the connections came too late to overlap the rounds"


def test_the_keys_command_makes_an_authority_keys_certificates_and_stores(tmp_path, capsys):
    from node.peer.keys import main, read_trust_store

    net, key, cert = tmp_path / "net", tmp_path / "p3.key", tmp_path / "p3.cert"
    assert main(["authority", str(net)]) == 0
    assert main(["new", str(key)]) == 0
    public = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["issue", "--authority", str(net / "authority.key"), "--peer-id", "3",
                 "--key", str(key), "--days", "2", "--out", str(cert)]) == 0
    issued = read_certificate(cert)
    assert issued.peer == 3 and issued.not_after - time.time() == pytest.approx(2 * 86400, 5)
    store = read_trust_store(net / "trust.toml")
    assert store.key_for(3, issued.to_bytes())  # the authority's store admits peer 3
    assert main(["store", str(tmp_path / "peers.toml"), "--peer", f"3={public}"]) == 0
    assert read_trust_store(tmp_path / "peers.toml").peers == {3: issued.public_key}
    assert main(["show", str(cert)]) == 0 and "peer 3" in capsys.readouterr().out
    assert main(["new", str(key)]) == 2  # a key is never overwritten
    assert "refusing to overwrite" in capsys.readouterr().err
    for path in (key, cert, net / "authority.key"):
        assert path.stat().st_mode & 0o777 == 0o600


def test_open_mode_refuses_a_certificate_sized_credential_that_is_no_certificate():
    """Open mode pins each id to its first key; a credential of a certificate's size that is no
    certificate has no key to pin (it once pinned None and raised TypeError)."""
    from gossip.auth import (
        _HEAD,
        CERTIFICATE_SIZE,
        ENVELOPE_VERSION,
        MAGIC,
        SIGNATURE_SIZE,
        AuthError,
    )

    body = _HEAD.pack(MAGIC, ENVELOPE_VERSION, 5, CERTIFICATE_SIZE) + \
        b"\x07" * CERTIFICATE_SIZE + b"\x00" * SIGNATURE_SIZE + b"payload"
    store = TrustStore(mode="open")
    with pytest.raises(AuthError) as refused:
        store.open(body)
    assert refused.value.status == 401 and not store.pinned
