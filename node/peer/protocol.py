"""The networked peer: one asyncio process that trains, gossips, checkpoints and merges.

The round protocol (the simulator's, with a transport and a wall clock instead of a loop):

1. ``K`` local steps of the shared ``Learner`` in a worker thread, so the event loop keeps
   serving gossip and status while the peer trains;
2. ``Q`` gossip steps: send the model to every neighbour, collect theirs until all live ones
   arrived or the step's deadline passed, then mix with ``Learner.gossip_step`` over the vectors
   that arrived (Metropolis weights; a missing neighbour's weight goes back to the peer's own);
3. an atomic checkpoint and one JSON log line.

Every message arrives in a signed envelope (gossip.auth) and passes, in this order, before
anything proportional to it is allocated: the transport's size and connection limits, the
claimed sender is a neighbour, its key (trust store or authority certificate) and signature, a
per-neighbour rate limit, the schema parse with bounded containers, payload sender = signer,
and the window: model messages for the current or the next round only, history records of the
last rounds, merge messages for the merge round, no (kind, round, step) twice from one sender
(replays), at most ``inbox_per_sender`` buffered per neighbour. Stale ones are answered 409 and
dropped. A neighbour that misses a deadline becomes *suspect* and is not waited for until it speaks
again. Deadlines adapt (factor x smoothed time for all neighbours to arrive, within a floor and a
ceiling), so no wait is unbounded. A peer that learns that most of its neighbourhood is rounds
ahead (it was down) jumps to their round (``catch_up_target``: one neighbour's claim alone never
moves a peer).

After the last round, the final global merge floods every model through the live component
(each peer forwards what it learned in the previous flood step) until a step brings nothing new,
which proves the peer knows its whole component; every peer then takes the same float64 average
in the same order, so all members of a component end with bit-identical models (docs/algorithms.md
§5.4 asks for this exactness; flooding costs at most two transfers of each model per edge).

The JSON-lines log is the peer's record of events; the ``logging`` logger of this module only
carries debug detail (sends that failed, tasks that ended with an error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gossip import (
    HttpTransport,
    InMemoryTransport,
    Message,
    MessageError,
    Transport,
    client_ssl_context,
    decode_message,
    encode,
    server_ssl_context,
)
from gossip.auth import AuthError, Identity, TrustStore, envelope_sender
from gossip.membership import decode_control, is_control
from gossip.messages import MAX_IDS, encode_parts, within
from mixing import component_average
from node.config import PeerConfig, learner_for
from node.learning import Dataset, derive_seed, partition
from node.learning.data import hold_out
from node.learning.files import read_file
from node.peer.checkpoint import (
    check_fits,
    load_checkpoint,
    private_folder,
    save_checkpoint,
    write_private,
)
from node.peer.keys import identity_for, trust_store_for
from node.peer.membership import Membership
from node.peer.observe import (
    FINAL_SUMMARY,
    JsonLog,
    PeerMetrics,
    private_megabytes,
    rss_megabytes,
)

# states in which a round is in progress (status: current_round == rounds_completed)
ROUND_STATES = ("starting", "training", "gossip")
# why a neighbour answered a message with a 4xx status (the peer's own reasons in ``handle``)
REFUSAL_REASONS = {400: "malformed", 401: "not authenticated", 403: "not a neighbour",
                   409: "stale", 413: "too large", 422: "bad vector", 429: "too many"}
# history records (SybilWall's gossip) of up to this many rounds back are accepted: the rule
# compares models of the same round over a window of 8 rounds (mixing.SybilWall, window)
HISTORY_ROUNDS = 8
# The most flood steps a merging peer moves ahead at once to meet a neighbour's later step
# (final_merge). Unclamped, one hostile neighbour's message at step 2**62 would carry a peer to
# the wire's integer limit, past which it could send nothing; clamped, it takes 2**42 steps.
# Refusing far-ahead messages instead would stall the merge: a peer a hostile message had moved
# ahead would be refused by its honest neighbours for ever (found in review). Honest neighbours
# are never near the bound: one that waits for a peer still training advances one step per
# deadline ceiling.
MERGE_STEPS_AHEAD = 2**20
# envelopes per second from senders that are not neighbours, checked before their signature
# (open membership: joiners, shuffles); each such sender is limited further after it
STRANGER_RATE = 200.0

logger = logging.getLogger(__name__)


def refusal_reason(status: int) -> str:
    """A short reason code for a 4xx answer, derived from the status alone."""
    return REFUSAL_REASONS.get(status, "refused")


def replay_key(message: Message) -> tuple:
    """What a sender may send once: (kind, round, step), and for a history record also its
    origin (one neighbour gossips records of several origins of the same round)."""
    if message.kind == "history":
        return ("history", message.round, message.step, message.vectors[0][0])
    return (message.kind, message.round, message.step)


def catch_up_target(own_round: int, claims: list[int]) -> int:
    """The round a peer may jump to: the lower median of its own round and the rounds its live
    neighbours claim (docs/algorithms.md §0.7, catch-up). Counting its own round as one vote
    means that one neighbour alone -- lying, or simply ahead -- never moves it: on a line end
    the vote is {own, claim}, whose lower median is its own round; a peer that was down and
    whose neighbours all moved on catches up with them."""
    votes = sorted([own_round, *claims])
    return votes[(len(votes) - 1) // 2]


class TokenBucket:
    """``rate`` events per second with bursts of ``burst``; ``take(now)`` says whether one more
    is allowed (IPv8's per-peer rate limit)."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


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
                              seed=derive_seed(cfg.run.seed, "validation", cfg.peer.id))
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
        ssl_server = server_ssl_context(tls.cert_file, tls.key_file, tls.ca_file)
        ssl_client = client_ssl_context(tls.ca_file, tls.cert_file, tls.key_file)
    host, port = p.host_port
    return HttpTransport(
        host, port, cfg.gossip.max_message_bytes, max_connections=p.max_connections,
        header_timeout_s=p.header_timeout_s, idle_timeout_s=p.idle_timeout_s,
        min_body_rate_bps=p.min_body_rate, max_concurrent_bodies=p.max_concurrent_bodies,
        route_access=p.status_access, route_token=token, ssl_server=ssl_server,
        ssl_client=ssl_client)


class AdaptiveDeadline:
    """How long to wait for a step's messages: ``factor`` x an exponential moving average of
    the time complete steps took, clamped to [floor, ceiling]; the ceiling before any
    observation."""

    def __init__(self, *, floor: float, ceiling: float, factor: float, smoothing: float = 0.3):
        self.floor, self.ceiling, self.factor, self.smoothing = floor, ceiling, factor, smoothing
        self.average: float | None = None

    def current(self) -> float:
        if self.average is None:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.factor * self.average))

    def observe(self, seconds: float) -> None:
        self.average = seconds if self.average is None else \
            (1 - self.smoothing) * self.average + self.smoothing * seconds


class Peer:
    """Build from a PeerConfig; ``await run()`` trains, merges and returns the final summary."""

    def __init__(self, config: PeerConfig, *, transport: Transport | None = None,
                 data: Dataset | None = None, log: JsonLog | None = None,
                 inline: bool = False, work_s: float = 0.0,
                 model_factory: Callable[..., Any] | None = None):
        self.config = cfg = config
        self.id = cfg.peer.id
        self.algorithm = cfg.algorithm.resolve()
        data = data or load_peer_data(cfg)
        self.log = log or JsonLog(cfg.peer.id, cfg.peer.log_file)
        shard, validation = peer_split(cfg, data)
        self.learner = learner_for(cfg, cfg.peer.id, data=data, shard=shard,
                                   attack=cfg.attack.attack(), device=cfg.run.device,
                                   factory=model_factory)
        device = cfg.run.device
        self.x_test, self.y_test = data.x_test.to(device), data.y_test.to(device)
        self.x_val, self.y_val = (None, None) if validation is None else \
            (validation[0].to(device), validation[1].to(device))
        self.data_source = cfg.data.source
        self.identity, self.trust = self._identity_and_trust(
            vouched=isinstance(transport, InMemoryTransport))
        self.transport = transport or http_transport(cfg)
        self.transport.set_peers(cfg.neighbours)
        self.transport.model_length = self.learner.vector_size
        self.neighbours = set(cfg.neighbours)  # open membership adds and drops (membership.py)
        g = cfg.gossip
        self.deadline = AdaptiveDeadline(floor=g.deadline_floor_s, ceiling=g.deadline_ceiling_s,
                                         factor=g.deadline_factor)
        self.inbox: dict[tuple[str, int, int], dict[int, Message]] = defaultdict(dict)
        self._last_heard: dict[int, float] = {}  # when each neighbour last sent anything valid
        self._seen: dict[int, set[tuple[str, int, int]]] = defaultdict(set)  # replay guard
        self._buckets = {j: TokenBucket(g.max_messages_per_s, 2 * g.max_messages_per_s)
                         for j in self.neighbours}
        self._strangers = TokenBucket(STRANGER_RATE, 2 * STRANGER_RATE)
        self.position = (0, 0)  # the (round, step) being collected; earlier messages are stale
        self.suspect: set[int] = set()
        self.neighbour_round: dict[int, int] = {}
        self.completed_rounds = 0
        self.state = "starting"
        self.last_accuracy: float | None = None  # on the shared test set
        self.last_val_accuracy: float | None = None  # on this peer's own validation data
        self.last_loss: float | None = None
        self.traffic = {"bytes_in": 0, "bytes_out": 0, "messages_in": 0, "messages_out": 0}
        self.rejected: dict[int, int] = defaultdict(int)
        # "neighbour:status" -> how many of this peer's messages were refused that way
        self.refused_by: dict[str, int] = defaultdict(int)
        self.resumed = False
        self.already_finished = False  # run() found the work done by an earlier run
        self.wait_times: list[float] = []
        # one registry per peer (never the process-wide default: the simulator runs many peers)
        self.metrics = CollectorRegistry(auto_describe=False)
        self.metrics.register(PeerMetrics(self.id, self.status))
        self._arrived = asyncio.Event()
        self._stop = False
        self._first_wait = True
        self._sends: set[asyncio.Task] = set()
        # ``inline``: train on the event loop's thread, then let ``work_s`` of (simulated) time
        # pass. The simulator's virtual clock needs it: work in a thread would take no simulated
        # time at all. A real peer trains in a worker thread.
        self.inline, self.work_s = inline, work_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"peer{cfg.peer.id}")
        self.membership = Membership(self, cfg.membership, seed=cfg.run.seed)
        self._maintenance: asyncio.Task | None = None
        self._step_body: tuple[tuple[int, int], bytes] | None = None  # this step's model
        self._started: float | None = None
        self.first_mix_s: float | None = None  # start -> first model mixed with a neighbour's
        self._resume()
        if cfg.membership.enabled and not cfg.neighbours:
            self._first_wait = False  # nobody is starting with this peer: no start-up waits

    # -- identity ----------------------------------------------------------------------------

    def _identity_and_trust(self, *, vouched: bool) -> tuple[Identity, TrustStore]:
        """The peer's signing identity and whom it trusts. ``vouched``: the in-memory network
        knows every sender (the simulator models identities without keys)."""
        cfg = self.config
        if vouched:
            return Identity(cfg.peer.id), TrustStore(mode="modelled")
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
            self.log.write("key_created", file=str(cfg.trust.key_file or "STATE_DIR/"
                                                   "identity.key"))
        if cfg.trust.mode == "open":
            note = ("OPEN MODE: this peer accepts messages from anyone; identities are only "
                    "pinned to their first key. Use it to study open networks, never to deploy")
            self.log.write("open_mode", warning=note)
            print(f"python -m node: WARNING: peer {cfg.peer.id}: {note}", file=sys.stderr)
        return identity, store

    # -- state -------------------------------------------------------------------------------

    def _resume(self) -> None:
        state = load_checkpoint(self.config.peer.state_dir)
        if state is None:
            return
        check_fits(state, state_dir=self.config.peer.state_dir, size=self.learner.model.size,
                   model=repr(self.config.model.name))
        self.learner.load_state_dict(state["learner"])
        self.resumed = True
        self.completed_rounds = int(state["round"])
        self.position = (self.completed_rounds, 0)
        self.traffic.update(state.get("traffic", {}))
        self.membership.known_urls = list(state.get("known", []))
        # A resumed peer rejoins a running network: its neighbours are up or down, not starting,
        # so its first waits are bounded by the deadline ceiling, not the startup timeout (a
        # peer returning among dead neighbours would otherwise stall startup_timeout_s).
        self._first_wait = False
        self.log.write("resumed", round=self.completed_rounds)

    def _checkpoint(self) -> None:
        save_checkpoint(self.config.peer.state_dir, {
            "round": self.completed_rounds, "learner": self.learner.state_dict(),
            "traffic": dict(self.traffic),
            **({"known": self.membership.known()} if self.membership.cfg.enabled else {})})

    def request_stop(self) -> None:
        """Stop after the current step (SIGINT/SIGTERM)."""
        self._stop = True
        self._arrived.set()

    # -- receiving ---------------------------------------------------------------------------

    def _reject(self, status: int, reason: str) -> tuple[int, str]:
        self.rejected[status] += 1
        self.log.write("rejected", status=status, reason=reason)
        return status, reason

    async def handle(self, body: bytes | None) -> tuple[int, str]:
        """Check one message (the order of the module docstring) and buffer it for its (kind,
        round, step). Reasons never quote what was received."""
        g = self.config.gossip
        if body is None:
            return self._reject(413, f"body over the size limit {g.max_message_bytes}")
        claimed = envelope_sender(body)
        if claimed is None:
            return self._reject(400, "not a signed envelope of this protocol")
        known = claimed in self.neighbours or claimed in self.membership.pending
        if not known:
            if not self.membership.cfg.enabled:
                return self._reject(403, f"the claimed sender is not a neighbour of {self.id}")
            if not self._strangers.take(self._now()):  # before the signature costs anything
                self.rejected[429] += 1
                return 429, "rate limit"
        try:
            opened = self.trust.open(body)
        except AuthError as exc:
            return self._reject(exc.status, exc.reason)
        sender = opened.sender
        bucket = self._buckets.get(sender) or self.membership.bucket_for(sender)
        if not bucket.take(self._now()):
            self.rejected[429] += 1  # counted, not logged: a flood would flood the log
            return 429, "rate limit"
        if is_control(opened.payload):
            return self._handle_control(sender, opened.payload, len(body))
        if not known:
            return self._reject(403, f"data messages are accepted from neighbours of {self.id} "
                                "only")
        try:
            message = decode_message(opened.payload, self.learner.vector_size,
                                     g.max_message_bytes, max_abs=g.max_abs_value)
        except MessageError as exc:
            return self._reject(exc.status, exc.reason)
        if message.sender != sender:
            return self._reject(403, "the payload names another sender than its signer")
        if message.kind == "state":
            return self.membership.accept_state(sender, message)
        if sender not in self.neighbours and not self.membership.confirm(sender):
            return self._reject(403, "not a neighbour any more")
        if message.kind == "merge":
            try:
                self._verify_origins(message)
            except AuthError as exc:
                return self._reject(exc.status, exc.reason)
        self.traffic["bytes_in"] += len(body)
        self.traffic["messages_in"] += 1
        self._last_heard[sender] = self._now()
        if message.kind != "history" and message.round > self.neighbour_round.get(sender, -1):
            self.neighbour_round[sender] = message.round
            self._arrived.set()  # a peer waiting for its neighbourhood to catch up looks again
        refusal = self._outside_window(message)
        if refusal is not None and sender in self.suspect and message.kind == "model" and \
                (message.round, message.step) == self._previous_step():
            # one step behind: the neighbour is alive and in step with us but for the wait we
            # skipped; waiting for it again resynchronises the two (tests/test_netns.py found
            # suspected neighbours on healthy links staying suspect for the rest of a run)
            self.suspect.discard(sender)
            self.log.write("neighbour_back", neighbour=sender)
        if refusal is not None:
            # a neighbour that is behind stays suspect: waiting for it again would cost every
            # round a deadline until it catches up (found by scripts/study_churn.py). Counted,
            # but not logged: a peer that was down can send many before it catches up.
            self.rejected[409] += 1
            return 409, refusal
        key = (message.kind, message.round, message.step)
        self._seen[sender].add(replay_key(message))
        if message.kind == "history":  # SybilWall's gossip: step carries the record's distance
            origin, vector = message.vectors[0]
            self.learner.accept_history(sender, origin, message.round, message.step, vector)
            return 200, "ok"
        if sum(sender in got for got in self.inbox.values()) >= g.inbox_per_sender:
            self.rejected[429] += 1
            return 429, "inbox full for this sender"
        if sender in self.suspect:
            self.suspect.discard(sender)
            self.log.write("neighbour_back", neighbour=sender)
        self.inbox[key][sender] = message
        self._arrived.set()
        return 200, "ok"

    def _handle_control(self, sender: int, payload: memoryview, size: int) -> tuple[int, str]:
        """A membership message (node/peer/membership.py), already verified and rate-limited."""
        try:
            control = decode_control(payload)
        except MessageError as exc:
            return self._reject(exc.status, exc.reason)
        if control.sender != sender:
            return self._reject(403, "the payload names another sender than its signer")
        self.membership.traffic["bytes_in"] += size
        status, reason = self.membership.handle(sender, control)
        if status == 429 or status == 409:
            self.rejected[status] += 1  # counted, not logged: a busy donor answers many
        elif status >= 400:
            self._reject(status, reason)
        return status, reason

    # -- neighbours (open membership changes them; node/peer/membership.py) -------------------

    def add_neighbour(self, j: int) -> None:
        """Count ``j`` as a neighbour from now on, and waited for like any other. If a gossip
        step is in progress, ``j`` gets this step's model now (it was sent to the others before
        the edge existed), so two peers in the same step exchange at once instead of each
        waiting a deadline for a message sent before the edge (tests/test_membership.py: new
        neighbours that were not waited for let a joiner run ahead of the network alone)."""
        g = self.config.gossip
        self.neighbours.add(j)
        self._buckets[j] = TokenBucket(g.max_messages_per_s, 2 * g.max_messages_per_s)
        self._last_heard.setdefault(j, self._now())  # the edge's start counts as a sign of life
        if self._step_body is not None:
            self._in_background(self._send(j, self._step_body[1]))
        self._arrived.set()

    def drop_neighbour(self, j: int, *, reason: str) -> None:
        """Stop counting ``j`` (it left, unlinked, or stayed suspect): not waited for, not in the
        weights, its buffered messages dropped."""
        if j not in self.neighbours:
            return
        self.neighbours.discard(j)
        self.suspect.discard(j)
        self._buckets.pop(j, None)
        self.neighbour_round.pop(j, None)
        self._last_heard.pop(j, None)
        for got in self.inbox.values():
            got.pop(j, None)
        if j not in self.membership.view:
            self.transport.forget(j)
        self.log.write("neighbour_dropped", neighbour=j, reason=reason,
                       degree=len(self.neighbours))
        self._arrived.set()

    def adopt_state(self, message: Message) -> None:
        """A joiner takes its donor's model and round (state transfer): it starts where the
        network is instead of from scratch."""
        self.learner.model.load_vector(message.vector().to(self.learner.params.device))
        self.completed_rounds = min(message.round, self.config.run.rounds)
        self.position = (self.completed_rounds, 0)
        self._first_wait = False
        if self.deadline.average is None:
            # a joiner enters a running network: its first waits start at the deadline floor
            # and adapt from there, instead of the ceiling that a peer starting with its
            # neighbours uses (with rounds of 0.15 s, a 10 s first wait put each joiner ~60
            # rounds behind: scripts/study_membership.py --work-s 0.05)
            self.deadline.observe(self.deadline.floor / self.deadline.factor)
        self.log.write("state_received", donor=message.sender, round=self.completed_rounds)

    def _previous_step(self) -> tuple[int, int]:
        """The (round, step) collected just before the current one."""
        position_round, position_step = self.position
        if position_step > 0:
            return position_round, position_step - 1
        return position_round - 1, self.algorithm.gossip_steps - 1

    def _outside_window(self, message: Message) -> str | None:
        """Why ``message`` is not accepted now (stale, replayed, too far ahead), else None."""
        position_round, position_step = self.position
        if replay_key(message) in self._seen[message.sender]:
            return "replay: this (kind, round, step) was already received from this sender"
        if message.kind == "model":
            if (message.round, message.step) < self.position:
                return "stale: an earlier step than this peer collects"
            # the round this peer is about to catch up to counts as its own: a peer that was
            # down keeps its neighbours' messages of the round it jumps to
            base = max(position_round, self._catch_up_to(position_round))
            if self.membership.joining:  # its round is the donor's, about to be adopted: keep
                # what new neighbours send now (inbox_per_sender bounds it), which a joiner
                # would otherwise refuse and then wait a deadline for (scripts/launch.py --join)
                base = max(base, max(self.neighbour_round.values(), default=0))
            if message.round > base + 1 or \
                    message.step >= self.algorithm.gossip_steps:
                return "outside the window: rounds beyond the next are not buffered"
        elif message.kind == "history":
            if not position_round - HISTORY_ROUNDS < message.round <= position_round + 1:
                return "outside the window: a history record of another round"
        else:
            if message.round != self.config.run.rounds:
                return "a merge message of another run length"
            # any flood step: peers enter the merge at different times (a merging peer moves
            # to the step it finds buffered, at most MERGE_STEPS_AHEAD at a time);
            # inbox_per_sender bounds what is kept
        return None

    def _verify_origins(self, message: Message) -> None:
        """Every model of a merge message carries its origin's own signature (gossip.auth), so
        a relay cannot invent or alter a member."""
        for origin, vector in message.vectors:
            signature, credential = message.proofs[origin]
            self.trust.verify_origin(origin, message.round, encode(vector, "f32"), signature,
                                     credential)

    def _forget_before(self, round_index: int) -> None:
        """Drop the replay guard's and the inbox's entries of rounds before ``round_index``
        (they can never be collected), which keeps both bounded."""
        for seen in self._seen.values():
            seen.difference_update([k for k in seen if k[0] != "merge" and k[1] < round_index
                                    - (HISTORY_ROUNDS if k[0] == "history" else 0)])
        for key in [k for k in self.inbox if k[0] != "merge" and k[1] < round_index]:
            del self.inbox[key]

    # -- sending and collecting --------------------------------------------------------------

    def _in_background(self, coroutine) -> None:
        """Run a send without waiting for it; close() cancels what is still pending."""
        task = asyncio.create_task(coroutine)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _body(self, message: Message) -> bytes:
        """The signed envelope of ``message``."""
        return self.identity.seal(encode_parts(message, self.learner.vector_size))

    def _send_all(self, message: Message, to: set[int]) -> None:
        body = self._body(message)
        for peer in sorted(to):
            self._in_background(self._send(peer, body))

    def _send_tracked(self, peer: int, message: Message, holds: set[int],
                      origins: list[int]) -> None:
        """Send one merge message; once it is accepted, ``peer`` holds ``origins``."""
        body = self._body(message)

        async def send() -> None:
            if await self._send(peer, body) == 200:
                holds.update(origins)

        self._in_background(send())

    async def _send(self, peer: int, body: bytes) -> int | None:
        g = self.config.gossip  # until the first rendezvous, a neighbour may still be starting
        timeout = g.startup_timeout_s if self._first_wait else g.deadline_ceiling_s
        status = await self.transport.send(peer, body, timeout, retry=self._first_wait)
        if status is None:
            logger.debug("peer %s: message to %s not delivered (unreachable or no answer)",
                         self.id, peer)
            return None
        self.traffic["bytes_out"] += len(body)
        self.traffic["messages_out"] += 1
        if 400 <= status < 500:
            self._refused(peer, status)
            if status == 403 and self.membership.cfg.enabled and peer in self.neighbours and \
                    self.state not in ("merging", "done"):
                # it does not count this edge (it dropped us, or its agreement expired)
                self.drop_neighbour(peer, reason="refused")
        return status

    def _refused(self, peer: int, status: int) -> None:
        """Count a 4xx answer; log the first of each (neighbour, status). The reason comes from
        the status alone: the neighbour's answer text is never echoed."""
        key = f"{peer}:{status}"
        self.refused_by[key] += 1
        if self.refused_by[key] == 1:
            theirs = self.transport.peer_lengths.get(peer)
            if status == 422 and theirs is not None and theirs != self.learner.vector_size:
                self.log.write("refused_by", neighbour=peer, status=status,
                               reason=f"model size mismatch: this peer's model has "
                                      f"{self.learner.vector_size} parameters, the neighbour's "
                                      f"{theirs}", own_model_length=self.learner.vector_size,
                               neighbour_model_length=theirs)
            else:
                self.log.write("refused_by", neighbour=peer, status=status,
                               reason=refusal_reason(status))

    def _catch_up_to(self, round_index: int) -> int:
        """``catch_up_target`` over the neighbours' claimed rounds (suspects too: one that ran
        ahead while this peer did not wait for it is exactly the one to catch up with; a dead
        one's old claim only makes the vote more cautious)."""
        return catch_up_target(round_index, list(self.neighbour_round.values()))

    def _ahead(self, round_index: int) -> bool:
        """True when most live neighbours (heard within the deadline ceiling) claim a round two
        or more behind ``round_index``: this peer would train on alone, its messages beyond
        their window (the mirror of ``_lagging``)."""
        recent = self._now() - self.config.gossip.deadline_ceiling_s
        claims = [self.neighbour_round[j] for j in self.neighbours
                  if j in self.neighbour_round and self._last_heard.get(j, -math.inf) >= recent]
        behind = sum(1 for claim in claims if claim <= round_index - 2)
        return 2 * behind > len(self.neighbours)

    async def _wait_if_ahead(self, round_index: int) -> None:
        """Open membership: before a round, wait (up to the deadline ceiling) while most of the
        neighbourhood is two or more rounds behind. Peers that arrive at different rounds
        otherwise drift apart for good: the fast ones suspect the slow ones, stop waiting for
        them and run ahead mixing with one neighbour or none (scripts/study_membership.py at a
        short time scale: peers finished their last round while most of their neighbours were
        ten rounds behind). The slow ones meanwhile catch up by vote (``_lagging``)."""
        if not self.membership.cfg.enabled or not self._ahead(round_index):
            return
        behind = sorted(j for j in self.neighbours
                        if self.neighbour_round.get(j, round_index) <= round_index - 2)
        self.log.write("waiting_for_neighbours", round=round_index, behind=behind)
        deadline = self._now() + self.config.gossip.deadline_ceiling_s
        while self._ahead(round_index) and not self._stop:
            left = deadline - self._now()
            if left <= 1e-6 or not await self._next_arrival(left):
                break

    async def _next_arrival(self, left: float) -> bool:
        """Wait up to ``left`` seconds for the next message (or claim, or stop); False on
        timeout."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), left)
        except asyncio.TimeoutError:
            return False
        return True

    def _lagging(self, round_index: int) -> bool:
        """True when most of the neighbourhood is two or more rounds ahead: they finished round
        ``round_index + 1`` without this peer's messages, so they timed out on us (we were
        down). One round ahead is normal: that neighbour heard us and moved on first."""
        return self._catch_up_to(round_index) >= round_index + 2

    async def _collect(self, key: tuple[str, int, int], expected: set[int],
                       timeout: float | None = None, *, spare_if_heard: bool = False,
                       later_answers: bool = False) -> dict[int, Message]:
        """Wait until every expected, non-suspect neighbour's message for ``key`` arrived, or the
        deadline passed (then the missing ones become suspect). ``spare_if_heard`` (the merge):
        a missing neighbour that sent anything valid within the wait is alive -- still training
        its last rounds -- and is waited for again instead of being suspected (tests/test_netns.py
        found a peer that reached the merge first ending alone while its neighbours, alive,
        merged it into theirs). ``later_answers`` (the merge): a neighbour whose message of a
        later step is already here has moved past this step and will not send it; it is not
        waited for (the caller then moves to that step, final_merge)."""
        if timeout is None:
            timeout = self.config.gossip.startup_timeout_s if self._first_wait \
                else self.deadline.current()
        start = self._now()
        while True:
            waiting = (expected - self.suspect) - set(self.inbox.get(key, {}))
            if later_answers and waiting:
                waiting -= {j for k, got in self.inbox.items() if k[:2] == key[:2] and
                            key[2] < k[2] <= key[2] + MERGE_STEPS_AHEAD for j in got}
            # below a microsecond counts as expired: with a simulated clock, start + timeout - now
            # can round to a tiny positive number that no timer can wait out
            left = start + timeout - self._now()
            if left < 1e-6:
                left = 0.0
            if not waiting or left <= 0 or self._stop or \
                    (key[0] == "model" and self._lagging(key[1])):
                break
            await self._next_arrival(left)
        elapsed = self._now() - start
        self.wait_times.append(elapsed)
        if waiting and left <= 0:
            if spare_if_heard:
                waiting = {j for j in waiting
                           if self._last_heard.get(j, -math.inf) < self._now() - timeout}
            for peer in sorted(waiting):
                self.suspect.add(peer)
                self.log.write("suspect", neighbour=peer, round=key[1], step=key[2],
                               waited_s=round(elapsed, 3))
        elif not waiting and expected - self.suspect:
            self.deadline.observe(elapsed)
            self._first_wait = False
        return self.inbox.pop(key, {})

    async def gossip_step(self, round_index: int, step: int) -> int:
        """One exchange and one mixing; returns how many neighbours were heard."""
        self.position = (round_index, step)
        body = self._body(Message("model", self.id, round_index, step, len(self.neighbours),
                                  [(self.id, self.learner.outgoing())], self.config.gossip.codec))
        self._step_body = (round_index, step), body
        for peer in sorted(self.neighbours):
            self._in_background(self._send(peer, body))
        try:
            got = await self._collect(("model", round_index, step), self.neighbours)
        finally:
            self._step_body = None
        got = {j: m for j, m in got.items() if j in self.neighbours}
        if got and self.first_mix_s is None and self._started is not None:
            self.first_mix_s = round(self._now() - self._started, 3)
            self.log.write("first_mix", after_s=self.first_mix_s, round=round_index)
        # in sender order, whatever the arrival order: the same seed gives the same sums
        received = {j: got[j].vector() for j in sorted(got)}
        mixed = self.learner.mixed(received, len(self.neighbours),
                                   {j: m.degree for j, m in got.items()}, round_index)
        if within(mixed):
            self.learner.model.load_vector(mixed)
        else:  # cannot happen with bounded inputs and convex rules; never keep it if it does
            self.log.write("mix_not_finite", round=round_index, step=step,
                           note="mixed model not finite: kept this peer's own model")
        return len(got)

    def share_histories(self) -> None:
        """SybilWall's probabilistic gossip (docs/algorithms.md §4.5): one stored history to each
        live neighbour, without waiting; a late record is simply used in a later round."""
        for j in sorted(self.neighbours - self.suspect):
            picked = self.learner.history_for(j)
            if picked is not None:
                origin, record = picked
                self._send_all(Message("history", self.id, record.round, record.distance,
                                       len(self.neighbours), [(origin, record.vector)],
                                       self.config.gossip.codec), {j})

    # -- the run -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving (POST /gossip, GET /status, /metrics, /healthz)."""
        await self.transport.start(self.handle, {
            "/status": self._status_route, "/metrics": self._metrics_route,
            "/healthz": self._health_route})
        self._started = self._now()
        if isinstance(self.transport, HttpTransport):
            self.log.write("listening", url=self.transport.url)
        self.log.write("data", samples=self.learner.num_samples, **self.scored_on)

    async def _in_thread(self, fn, *args):
        if self.inline:
            result = fn(*args)
            await asyncio.sleep(self.work_s)
            return result
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def _now() -> float:
        """The event loop's clock: time.monotonic() for a real peer, simulated time in sim."""
        return asyncio.get_running_loop().time()

    async def run(self) -> dict[str, Any]:
        """Train the remaining rounds, merge, write the summary, close; returns the summary."""
        cfg = self.config
        try:
            previous = self._previous_summary()
            if previous is not None:
                return self._already_done(previous)
            if cfg.membership.enabled:
                await self._join_network()
            t = self.completed_rounds
            while t < cfg.run.rounds and not self._stop:
                self.membership.on_round(t)
                if self._lagging(t):
                    ahead = self._catch_up_to(t)
                    self.log.write("catch_up", from_round=t, to_round=min(ahead, cfg.run.rounds))
                    t = min(ahead, cfg.run.rounds)
                    if t >= cfg.run.rounds:  # the skipped rounds are over for this peer too
                        self.completed_rounds = t
                        await self._in_thread(self._checkpoint)
                        break
                await self._wait_if_ahead(t)
                await self._round(t)
                t += 1
            merged = None
            if not self._stop and cfg.algorithm.final_merge:
                merged = await self.final_merge()
            if self._stop:
                await self.membership.leave()
            return self._write_summary(merged)
        finally:
            await self.close()

    async def _join_network(self) -> None:
        """Open membership: start the view's upkeep, and join through the bootstrap peers (and,
        after a restart, through the peers this one knew). JoinError when nobody admits it."""
        self._maintenance = asyncio.create_task(self.membership.maintain())
        urls = list(dict.fromkeys(self.config.membership.bootstrap +
                                  self.membership.known_urls))
        if urls:
            await self.membership.join(urls)

    def _previous_summary(self) -> dict[str, Any] | None:
        """The final summary of an earlier run that finished every configured round and its
        merge (checkpoint at ``rounds``, final.json with state done), else None."""
        if not self.resumed or self.completed_rounds < self.config.run.rounds:
            return None
        path = Path(self.config.peer.state_dir) / FINAL_SUMMARY
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.debug("peer %s: no usable %s (%s): finishing the run", self.id, path,
                         type(exc).__name__)
            return None
        return previous if isinstance(previous, dict) and previous.get("state") == "done" \
            else None

    def already_finished_note(self) -> str:
        """The sentence a restarted peer that has nothing left to do prints."""
        folder = self.config.peer.state_dir
        return (f"peer {self.id} already finished its {self.completed_rounds} rounds (state in "
                f"{folder}); to start afresh use a new --state-dir or delete {folder}; to train "
                f"longer raise rounds")

    def _already_done(self, previous: dict[str, Any]) -> dict[str, Any]:
        """Nothing to train: say so and keep the earlier final.json as it is."""
        self.already_finished = True
        self.state = "done"
        self.last_accuracy = previous.get("accuracy")
        self.last_loss = previous.get("loss")
        self.log.write("already_finished", rounds=self.completed_rounds,
                       state_dir=self.config.peer.state_dir, note=self.already_finished_note())
        return previous

    @property
    def scored_on(self) -> dict[str, str | None]:
        """What each accuracy is measured on (the log, /status and final.json carry this)."""
        return {"accuracy": f"shared test set ({len(self.y_test)} samples)"
                if len(self.y_test) else None,
                "val_accuracy": f"this peer's validation data ({len(self.y_val)} samples)"
                if self.y_val is not None else None,
                "data": self.data_source}

    async def _accuracies(self) -> tuple[float | None, float | None]:
        """(accuracy on the shared test set, on this peer's validation data), None where the
        peer has no such data."""
        test = await self._in_thread(self.learner.accuracy, self.x_test, self.y_test) \
            if len(self.y_test) else None
        val = await self._in_thread(self.learner.accuracy, self.x_val, self.y_val) \
            if self.y_val is not None else None
        return test, val

    async def _evaluate(self) -> None:
        self.last_accuracy, self.last_val_accuracy = await self._accuracies()

    async def _round(self, t: int) -> None:
        cfg = self.config
        began = self._now()
        self.state, self.position = "training", (t, 0)
        self._forget_before(t)
        bytes_before = dict(self.traffic)
        self.last_loss = await self._in_thread(self.learner.local_update, t)
        heard_per_step = []
        for q in range(self.algorithm.gossip_steps):
            self.state = "gossip"
            heard_per_step.append(await self.gossip_step(t, q))
            if self._stop:
                return  # the checkpoint of the last whole round stays the one to resume from
        self.share_histories()
        if (t + 1) % cfg.run.eval_every == 0 or t + 1 == cfg.run.rounds:
            await self._evaluate()
        self.completed_rounds = t + 1
        await self._in_thread(self._checkpoint)
        self.log.write(
            "round", round=t + 1, loss=self.last_loss, accuracy=self.last_accuracy,
            val_accuracy=self.last_val_accuracy,
            bytes_in=self.traffic["bytes_in"] - bytes_before["bytes_in"],
            bytes_out=self.traffic["bytes_out"] - bytes_before["bytes_out"],
            neighbours_heard_per_step=heard_per_step, suspect=sorted(self.suspect),
            deadline_s=round(self.deadline.current(), 3),
            round_s=round(self._now() - began, 4), rss_mb=round(rss_megabytes(), 1))

    async def final_merge(self) -> dict[str, Any]:
        """Flood all models through the live component, then take their exact average.

        Each flood step a peer sends every neighbour the models it has not yet seen that
        neighbour hold (not delivered to it, nor received from it), so a message lost to a
        neighbour that was restarting is simply sent again. A step in which every live neighbour
        answered and nothing new arrived proves the peer knows its whole component (the known
        set grows by one hop per step until it stops growing); the peer then sends a last
        ``final`` message and stops. A step with a timeout proves nothing, so flooding goes on;
        merge messages that arrive late are still used. Merge steps wait up to the deadline
        ceiling, since peers reach the merge at different times.

        Agreement among peers that reach the merge at different times (docs/algorithms.md
        §5.4): "nothing new" only proves completeness once every member of the component is
        flooding. So each merge message also carries ``waiting`` -- the ids whose model its
        sender still waits for: its own live neighbours not yet heard in the merge (still
        training their last rounds) plus what its neighbours reported -- and ``gone``, the
        neighbours some peer found dead (not heard within the ceiling; a neighbour that left is
        dropped before the merge and never waited for). A peer finalises only when, besides the
        rule above, nobody it knows of is waited for. ``gone`` only grows, so a dead peer's
        ``waiting`` entries cannot circulate for ever.
        """
        self.state = "merging"
        merge_round, ceiling = self.config.run.rounds, self.config.gossip.deadline_ceiling_s
        own = self.learner.vector().detach().cpu().clone()
        known = {self.id: own}
        proofs = {self.id: self.identity.sign_origin(merge_round, encode(own, "f32"))}
        # every neighbour gets a fresh chance: one that was restarting in the last rounds
        # rejoins the merge if it comes back within the deadline ceiling
        if self.suspect:
            self.log.write("merge_waits_for", neighbours=sorted(self.suspect))
            self.suspect.clear()
        holds: dict[int, set[int]] = {j: {j} for j in self.neighbours}  # what j is known to have
        new_last_step, complete = True, False
        finished: set[int] = set()
        gone: set[int] = set()
        reported: dict[int, set[int]] = {}  # each neighbour's latest waiting list

        def waiting() -> set[int]:
            # what live neighbours reported only: a neighbour that went silent (suspect) or
            # finished no longer holds anyone up (with every neighbour silent, a dead one's last
            # list made the loop spin without a wait, sending to dead peers until memory ran
            # out: tests/test_launch.py's churn run in a fresh clone)
            live = self.neighbours - self.suspect - finished
            heard = set().union(*(reported[j] for j in live if j in reported))
            return ({j for j in live if j not in known} | heard) - set(known) - gone
        def caught_up(step: int) -> int:
            # a neighbour that is steps ahead (it reached the merge first, or this peer waited
            # at a step it had passed) waits for this peer's message of *its* step: go there,
            # up to MERGE_STEPS_AHEAD at once; earlier messages count as late. Staying at
            # its own step, each timed out every step and the two never aligned (a 64-peer ring
            # crawled at one step per ceiling for minutes)
            # messages further ahead than that are no honest neighbour's: dropped
            for k in [k for k in self.inbox if k[0] == "merge" and k[2] > step +
                      MERGE_STEPS_AHEAD]:
                del self.inbox[k]
            return max(step, max((k[2] for k in self.inbox if k[0] == "merge"), default=0))

        step = caught_up(0)
        while not self._stop:
            self.position = (merge_round, step)
            waits = waiting()
            final = step > 0 and not new_last_step and complete and not waits
            for j in sorted(self.neighbours - finished):  # suspects too: they may be back
                held = holds.setdefault(j, {j})
                origins = sorted(set(known) - held)
                message = Message("merge", self.id, merge_round, step, len(self.neighbours),
                                  [(o, known[o]) for o in origins], "f32", final,
                                  {o: proofs[o] for o in origins},
                                  waiting=tuple(sorted(waits)[:MAX_IDS]),
                                  gone=tuple(sorted(gone)[:MAX_IDS]))
                self._send_tracked(j, message, held, origins)
            if final:
                break
            live = self.neighbours - self.suspect - finished
            got = await self._collect(("merge", merge_round, step), live, timeout=ceiling,
                                      spare_if_heard=True, later_answers=True)
            # complete only if every neighbour expected at the start of the step answered: one
            # that timed out (now suspect) proves nothing (found by scripts/soak.py: a peer
            # finalised without the neighbour whose message arrived a millisecond late)
            complete = live <= set(got)
            late = [k for k in self.inbox if k[0] == "merge" and k[2] < step]
            messages = list(got.values()) + [m for k in late for m in self.inbox.pop(k).values()]
            new_last_step = False
            dead = (live - set(got)) & self.suspect  # timed out, and not heard within the wait
            if not dead <= gone:
                gone |= dead
                new_last_step = True
            for message in sorted(messages, key=lambda m: (m.sender, m.step)):
                if message.final:
                    finished.add(message.sender)
                reported[message.sender] = set(message.waiting)
                # news only if it adds someone (an id already known is not news: comparing with
                # the unfiltered list made two peers call every step new, for ever)
                fresh = set(message.gone) - set(known) - gone
                if fresh:
                    gone |= fresh
                    new_last_step = True
                for origin, vector in message.vectors:
                    holds.setdefault(message.sender, {message.sender}).add(origin)
                    if origin not in known:
                        known[origin] = vector
                        proofs[origin] = message.proofs[origin]
                        new_last_step = True
            step = caught_up(step + 1)
        if self._sends:  # let the last messages go out, but never wait past the ceiling
            await asyncio.wait(set(self._sends), timeout=ceiling)
        component = sorted(known)
        if len(component) == 1:
            self.log.write("merge_isolated", note="no live neighbour: keeping own model")
        merged = component_average(known, [component])[self.id]
        self.learner.model.load_vector(merged.to(self.learner.params.device))
        if self.learner.model.buffer_mode == "recalibrate":
            await self._in_thread(self.learner.model.recalibrate, self.learner.trainer.x)
        test, val = await self._accuracies()
        accuracy = test if test is not None else val
        self.log.write("merged", component=component, flood_steps=step, accuracy=accuracy,
                       val_accuracy=val)
        return {"component": component, "flood_steps": step, "accuracy": accuracy}

    def _write_summary(self, merged: dict[str, Any] | None) -> dict[str, Any]:
        self.state = "done" if not self._stop else "stopped"
        summary = {
            "id": self.id, "rounds_completed": self.completed_rounds,
            "accuracy": self.last_accuracy, "val_accuracy": self.last_val_accuracy,
            "scored_on": self.scored_on, "loss": self.last_loss,
            "merged_accuracy": merged["accuracy"] if merged else None,
            "component": merged["component"] if merged else None,
            "max_wait_s": max(self.wait_times, default=0.0),
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "refused_by": dict(self.refused_by),
            **self.traffic, "rss_mb": round(rss_megabytes(), 1),
            **(private_megabytes() or {"pss_mb": None, "uss_mb": None}), "state": self.state,
            "first_mix_s": self.first_mix_s, "neighbours": sorted(self.neighbours),
            **({"membership": self.membership.status()} if self.membership.cfg.enabled else {}),
        }
        folder = private_folder(self.config.peer.state_dir)
        write_private(folder / FINAL_SUMMARY, json.dumps(summary, indent=1).encode())
        self.log.write("done", **{k: v for k, v in summary.items() if k != "component"})
        return summary

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        for task in list(self._sends):
            task.cancel()
        for result in await asyncio.gather(*self._sends, return_exceptions=True):
            if isinstance(result, Exception):
                logger.debug("peer %s: a send ended with %s", self.id, type(result).__name__)
        await self.transport.close()
        self._executor.shutdown(wait=True)
        self.log.close()

    # -- endpoints ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What GET /status serves. The round fields cannot contradict each other:

        - ``state``: starting, training, gossip (a round in progress), merging, done, stopped.
        - ``rounds_completed``: rounds that are over for this peer (trained, gossiped and
          checkpointed, or skipped by catching up with neighbours that were ahead). A round
          counts once the next one begins, or the merge does.
        - ``current_round``: the 0-based index of the round in progress while ``state`` is
          starting, training or gossip, and then always equal to ``rounds_completed``; None
          once ``state`` is merging, done or stopped (no round is in progress).
        - ``gossip_step``: the gossip step being collected in the current round (0 while
          training); while merging, the flood step.
        """
        if self.state in ROUND_STATES:
            current = completed = self.position[0]
        else:
            current, completed = None, self.completed_rounds
        return {
            "id": self.id, "state": self.state, "current_round": current,
            "gossip_step": self.position[1], "rounds_completed": completed,
            "rounds": self.config.run.rounds,
            "live_neighbours": sorted(self.neighbours - self.suspect),
            "suspect": sorted(self.suspect), "last_accuracy": self.last_accuracy,
            "last_val_accuracy": self.last_val_accuracy, "scored_on": self.scored_on,
            "last_loss": self.last_loss, **self.traffic,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "refused_by": dict(self.refused_by),
            "deadline_s": self.deadline.current(), "neighbours": sorted(self.neighbours),
            "first_mix_s": self.first_mix_s,
            **({"membership": self.membership.status()} if self.membership.cfg.enabled else {}),
        }

    async def _status_route(self) -> tuple[str, str]:
        return "application/json", json.dumps(self.status())

    async def _health_route(self) -> tuple[str, str]:
        return "text/plain", "ok"

    async def _metrics_route(self) -> tuple[str, str]:
        return CONTENT_TYPE_LATEST, generate_latest(self.metrics).decode()
