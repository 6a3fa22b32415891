"""From a config to a peer's parts: its data and its shard, its HTTP transport, its signing
identity and trust store. ``Peer`` (node/peer/protocol.py) calls these; the launcher's zygote
uses ``load_peer_data`` and ``data_key`` to load a data set once for many peers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gossip import HttpTransport, client_ssl_context, server_ssl_context
from gossip.auth import Identity, TrustStore
from node.config import PeerConfig
from node.learning import Dataset, derive_seed, partition
from node.learning.data import hold_out
from node.learning.files import read_file
from node.peer.checkpoint import private_folder
from node.peer.keys import identity_for, trust_store_for
from node.peer.observe import JsonLog, LogEvent
from node.peer.runtime import Runtime


def load_peer_data(cfg: PeerConfig) -> Dataset:
    """The data set a peer's [data] section names (its shard is cut later, by peer_split): a
    shared source gets a held-out test set when split into shards (every peer of an experiment
    is scored on the same images)."""
    return cfg.data.load(num_nodes=cfg.data.num_shards, seed=cfg.run.seed,
                         import_path=cfg.run.import_path, hold_out_test=cfg.data.num_shards > 1)


def data_key(cfg: PeerConfig) -> str:
    """What ``load_peer_data`` depends on, as a string: peers with equal keys load the same data
    set (node.zygote loads it once for all of them). The shard index is not part of it: the
    shard is cut from the loaded set. Nor is [run] import_path: a peer that reads its config
    file adds that file's folder to it, so the launcher's copy and the peer's differ by the run
    folder while naming the same loader."""
    return json.dumps([cfg.data.model_dump(mode="json", exclude={"shard"}), cfg.run.seed],
                      sort_keys=True)


def peer_split(cfg: PeerConfig, data: Dataset) -> tuple[torch.Tensor, tuple | None]:
    """This peer's training indices into ``data`` (its shard of a shared source, or all of its
    own data) and its validation set (x, y): ``validation_path``, a seeded
    ``validation_fraction`` of its own training data, the one that came with the data, or
    None."""
    d = cfg.data
    if d.num_shards > 1:
        shard = torch.as_tensor(partition(data, d, num_nodes=d.num_shards,
                                          seed=cfg.run.seed)[d.shard], dtype=torch.int64)
    else:
        shard = torch.arange(len(data.y_train))
    if len(shard) == 0:
        raise ValueError(f"[data] shard {d.shard} of {d.num_shards} holds no training sample; "
                         "use fewer shards or another partition")
    if d.validation_path:
        return shard, read_file(d.format or "", d.validation_path, label=d.label)
    if d.validation_fraction > 0:
        kept, held = hold_out(len(shard), fraction=d.validation_fraction,
                              seed=derive_seed(cfg.run.seed, "validation", cfg.id))
        if len(kept) == 0:
            raise ValueError(f"[data] validation_fraction {d.validation_fraction} leaves no "
                             f"training sample of this peer's {len(shard)}")
        held = shard[held]
        return shard[kept], (data.x_train[held], data.y_train[held])
    if data.x_val is not None and d.num_shards == 1:
        return shard, (data.x_val, data.y_val)
    return shard, None


def http_transport(cfg: PeerConfig) -> HttpTransport:
    """The peer's HTTP transport from [peer], [gossip] and [tls]: connection and body limits,
    who may read /status and /metrics, and TLS contexts (failing closed: TLSConfigError, a
    ValueError, when a file cannot be used)."""
    p, tls = cfg.peer, cfg.tls
    token = None
    if p.status_token_file:
        try:
            token = Path(p.status_token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"[peer] status_token_file: cannot read {p.status_token_file}: "
                             f"{exc.strerror}") from None
        if not token:
            raise ValueError(f"[peer] status_token_file {p.status_token_file} is empty")
    ssl_server = ssl_client = None
    if tls.enabled:
        # TlsSection's validation: the three files are set together or not at all
        assert tls.cert_file and tls.key_file and tls.ca_file
        ssl_server = server_ssl_context(tls.cert_file, tls.key_file, tls.ca_file)
        ssl_client = client_ssl_context(tls.ca_file, tls.cert_file, tls.key_file)
    host, port = p.host_port
    return HttpTransport(
        host, port, cfg.gossip.max_message_bytes, max_connections=p.max_connections,
        header_timeout_s=p.header_timeout_s, idle_timeout_s=p.idle_timeout_s,
        min_body_rate_bps=p.min_body_rate, max_concurrent_bodies=p.max_concurrent_bodies,
        route_access=p.status_access, route_token=token, ssl_server=ssl_server,
        ssl_client=ssl_client)


def identity_and_trust(cfg: PeerConfig, runtime: Runtime, log: JsonLog
                       ) -> tuple[Identity, TrustStore]:
    """The peer's signing identity and whom it trusts. A runtime whose network vouches for
    senders (the simulator's in-memory hub) needs no keys."""
    if runtime.vouched:
        return Identity(cfg.id), TrustStore(mode="modelled")
    private_folder(Path(cfg.peer.state_dir))
    identity, created = identity_for(cfg)
    store = trust_store_for(cfg)
    if (cfg.neighbours or cfg.membership.enabled) and store.empty and \
            cfg.trust.mode != "open":
        raise ValueError(
            "[trust] store is not set: a peer with neighbours accepts only senders whose "
            "key or authority certificate its trust store holds (python -m node keys "
            "--help); for a study of an open network set [trust] mode = \"open\"")
    if created:
        log.write(LogEvent.KEY_CREATED, file=str(cfg.trust.key_file or "STATE_DIR/identity.key"))
    if cfg.trust.mode == "open":
        note = ("OPEN MODE: this peer accepts messages from anyone; identities are only "
                "pinned to their first key. Use it to study open networks, never to deploy")
        log.write(LogEvent.OPEN_MODE, warning=note)
        print(f"python -m node: WARNING: peer {cfg.peer.id}: {note}", file=sys.stderr)
    return identity, store
