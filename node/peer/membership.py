"""Open membership for one peer: joining, the Cyclon view, symmetric edges, state transfer,
leaving (docs/algorithms.md §9.2).

The wire parts (signed descriptors, control messages, the bounded view) are gossip.membership;
this module is the peer's side of the protocol, owned by a ``Peer`` and run on its event loop,
so the simulator's peers engine runs exactly this code on its simulated clock.

Decisions, and why:

- **Admission is the trust store's.** A joiner is admitted when its envelope and its descriptor
  verify against the receiver's own trust store: a certificate of the network authority is
  enough, nobody's store is edited; in open mode anyone is (each id pinned to its first key, so
  a joiner cannot take an id another key holds).
- **Edges are agreed before they are counted.** A peer asks for an edge with ``link``; the
  answer's HTTP status is the decision (200 yes; 429 full; 409 while merging). The asker counts
  the edge once it read the 200 and says so (``linked``); the accepting peer holds it as
  *pending* and counts it on that message, or on the asker's first data message if it was lost
  (either proves the asker counts it), so neither end puts a neighbour in its Metropolis weights
  that does not also have it. A pending edge that never
  sees a message expires. A new neighbour gets the current gossip step's model at once, so two
  peers in the same step exchange without waiting a deadline. Each peer keeps ``links`` edges
  of its own asking (a random k-out graph: connected with high probability under churn).
- **Ages are signed times.** A view entry's age is ``now - issued`` of its descriptor, which
  only the described peer can renew; Cyclon's shuffle partner is the oldest entry. A crashed
  peer stops renewing and is forgotten after ``forget_after_s``; a peer that fails a shuffle is
  removed from the view at once.
- **State transfer is bounded at the donor.** A donor sends its model to at most
  ``max_joiners`` joiners at once and answers 429 to the others, which ask their next
  neighbour (then retry with backoff): a crowd of joiners is spread over their neighbours
  instead of queueing on one.
- **Leaving is said.** A peer that stops cleanly sends ``leave`` to its neighbours, which drop
  it at once; a crashed one is dropped after ``drop_suspect_rounds`` rounds of suspicion and
  replaced from the view.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gossip import Transport
from gossip.auth import AuthError, Identity, TrustStore
from gossip.backoff import join_introduction, join_retry
from gossip.membership import (
    Control,
    Descriptor,
    PeerView,
    encode_control,
)
from gossip.messages import Message
from node.learning import derive_seed
from node.peer.admission import refusal_reason
from node.peer.neighbourhood import Neighbourhood
from node.peer.observe import JsonLog, LogEvent
from node.peer.phase import Phase
from node.peer.runtime import Runtime

if TYPE_CHECKING:
    from node.config import MembershipSection, PeerConfig

SKEW_MS = 60_000  # a descriptor issued this far in the future is refused (clock skew allowed)
ADDRESS_BOOK = 256  # addresses kept beyond those of neighbours, pending edges and the view


class JoinError(RuntimeError):
    """Joining failed for good; ``code`` is the process exit status (3 refused, 4 nobody
    answered)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class PeerSide(Protocol):
    """What membership needs of its peer: its services (identity, trust, transport, runtime,
    log), its neighbourhood and progress, and the few actions that change them. ``Peer``
    (node/peer/protocol.py) provides it; a test can provide a small fake."""

    id: int
    config: PeerConfig
    identity: Identity
    trust: TrustStore
    transport: Transport
    runtime: Runtime
    log: JsonLog
    neighbourhood: Neighbourhood
    completed_rounds: int
    resumed: bool

    @property
    def phase(self) -> Phase: ...

    @property
    def stopping(self) -> bool: ...

    def add_neighbour(self, j: int) -> None: ...

    def drop_neighbour(self, j: int, *, reason: str) -> None: ...

    def adopt_state(self, message: Message) -> None: ...

    def state_message(self) -> Message: ...

    def wake(self) -> None: ...

    def in_background(self, coroutine: Coroutine[Any, Any, Any]) -> None: ...

    def seal(self, message: Message) -> bytes: ...


class Membership:
    """The membership state and protocol of one peer (see the module docstring)."""

    def __init__(self, peer: PeerSide, section: MembershipSection, *, seed: int):
        self.peer, self.cfg = peer, section
        self.view = PeerView(peer.id, section.view_size,
                             random.Random(derive_seed(seed, "membership", peer.id)))
        self.rng = random.Random(derive_seed(seed, "membership-choices", peer.id))
        self.pending: dict[int, float] = {}  # accepted edges -> when, until the asker speaks
        self.suspect_since: dict[int, int] = {}  # neighbour -> round it became suspect
        self.serving = 0  # joiners being sent this peer's model now
        self.most_served_at_once = 0
        self.joining = False
        self.joined: dict[str, Any] | None = None  # round, donor, seconds after start
        self.events = {"joins_served": 0, "links": 0, "unlinks": 0, "left": 0, "dropped": 0,
                       "forgotten": 0, "shuffles": 0, "refused_joins": 0}
        self.traffic = {"bytes_out": 0, "bytes_in": 0}
        self._shuffled: dict[int, set[int]] = {}  # partner -> ids sent, awaiting its reply
        self._state: asyncio.Future | None = None
        self._state_from: int | None = None
        self._viewed = asyncio.Event()
        self._descriptor: Descriptor | None = None
        self._expired: OrderedDict[int, bool] = OrderedDict()  # agreements whose slot expired
        self.outgoing: set[int] = set()  # neighbours this peer asked for
        self._remembered: OrderedDict[str, bool] = OrderedDict()  # URLs of peers once known
        self.known_urls: list[str] = []  # from the checkpoint: peers this one knew

    # -- clocks and descriptors ------------------------------------------------------------

    def now_ms(self) -> int:
        """Descriptor time: wall-clock milliseconds for a real peer (peers on different
        machines compare them), the simulated clock in the simulator."""
        return self.peer.runtime.wall_ms()

    @property
    def url(self) -> str:
        return self.cfg.advertise_url or self.peer.transport.url

    def descriptor(self) -> Descriptor:
        """This peer's own descriptor, re-signed when it is older than a shuffle period."""
        now = self.now_ms()
        d = self._descriptor
        if d is None or now - d.issued >= self.cfg.shuffle_every_s * 500:
            signature, credential = self.peer.identity.sign_descriptor(self.url, now)
            self._descriptor = d = Descriptor(self.peer.id, self.url, now, credential, signature)
        return d

    def verify(self, d: Descriptor) -> None:
        """AuthError unless ``d`` is signed by its peer, accepted by this trust store, fresh,
        and at an address this peer can use."""
        now = self.now_ms()
        if not now - self.cfg.forget_after_s * 1000 <= d.issued <= now + SKEW_MS:
            raise AuthError(409, "a view entry that is stale or from the future")
        self.peer.trust.verify_descriptor(d.peer, d.url, d.issued, d.signature, d.credential)
        if not self.peer.runtime.vouched:  # an in-memory network has no schemes
            secure = d.url.startswith("https://")
            if secure != (self.peer.config.tls.enabled):
                raise AuthError(403, "a view entry at an address of the other scheme (TLS)")

    # -- sending ---------------------------------------------------------------------------

    def _control(self, kind: str, descriptors: Sequence[Descriptor] = ()) -> bytes:
        body = self.peer.identity.seal(encode_control(Control(
            kind, self.peer.id, self.peer.completed_rounds, tuple(descriptors))))
        self.traffic["bytes_out"] += len(body)
        return body

    async def _tell(self, peer: int, kind: str, descriptors: Sequence[Descriptor] = (), *,
                    timeout: float | None = None) -> int | None:
        return await self.peer.transport.send(
            peer, self._control(kind, descriptors),
            timeout or self.peer.config.gossip.deadline_ceiling_s, retry=False)

    def _tell_later(self, peer: int, kind: str, descriptors: Sequence[Descriptor] = ()) -> None:
        self.peer.in_background(self._tell(peer, kind, descriptors))

    def _learn(self, d: Descriptor) -> None:
        """Remember where ``d``'s peer listens; the address book stays bounded: beyond
        ADDRESS_BOOK entries, those of peers that are neither neighbours, pending, in the view
        nor awaited in a shuffle are forgotten (joiners and shufflers come and go)."""
        transport = self.peer.transport
        transport.learn(d.peer, d.url)
        book = transport.known_peers()
        if len(book) > ADDRESS_BOOK:
            keep = self.peer.neighbourhood.members | set(self.view.entries) | set(self.pending) | \
                set(self._shuffled) | {d.peer}
            for j in [j for j in book if j not in keep]:
                transport.forget(j)

    # -- receiving -------------------------------------------------------------------------

    def handle(self, sender: int, message: Control) -> tuple[int, str]:
        """A verified control message from ``sender`` (envelope signer == payload sender)."""
        if message.kind == "leave":
            return self._on_leave(sender)
        if not self.cfg.enabled:
            return 403, "this peer's membership is static"
        try:
            for d in message.descriptors:
                self.verify(d)
        except AuthError as exc:
            return exc.status, exc.reason
        own = next((d for d in message.descriptors if d.peer == sender), None)
        if message.kind in ("join", "shuffle", "link", "state_request") and own is None:
            return 400, "a join, shuffle, link or state request carries its sender's descriptor"
        return getattr(self, f"_on_{message.kind}")(sender, message, own)

    def _on_join(self, sender: int, message: Control, own: Descriptor) -> tuple[int, str]:
        self._learn(own)
        sample = self.view.sample(self.cfg.view_size - 1, exclude={sender})
        self.view.add(own)
        self.events["joins_served"] += 1
        self.peer.log.write(LogEvent.JOIN_SERVED, joiner=sender)
        self._tell_later(sender, "view", [self.descriptor(), *sample])
        return 200, "ok"

    def _on_view(self, sender: int, message: Control, own: Descriptor | None
                 ) -> tuple[int, str]:
        if not self.joining:
            return 409, "not joining: a view is only accepted in answer to a join"
        for d in message.descriptors:
            self.view.add(d)
        self._viewed.set()
        return 200, "ok"

    def _on_shuffle(self, sender: int, message: Control, own: Descriptor) -> tuple[int, str]:
        self._learn(own)
        reply = self.view.sample(self.cfg.shuffle_length, exclude={sender})
        self._tell_later(sender, "reply", reply)
        sent = {d.peer for d in reply}
        for d in message.descriptors:
            self.view.add(d, replaceable=sent)
        return 200, "ok"

    def _on_reply(self, sender: int, message: Control, own: Descriptor | None
                  ) -> tuple[int, str]:
        sent = self._shuffled.pop(sender, None)
        if sent is None:
            return 409, "no shuffle with this peer is waiting for a reply"
        for d in message.descriptors:
            self.view.add(d, replaceable=sent)
        return 200, "ok"

    def _on_link(self, sender: int, message: Control, own: Descriptor) -> tuple[int, str]:
        p = self.peer
        if p.phase.finishing or p.stopping:
            return 409, "merging or stopping: no new edges"
        if sender in p.neighbourhood.members:
            return 200, "ok"
        if len(p.neighbourhood.members) + len(self.pending) >= self.cfg.max_links:
            return 429, "this peer has as many neighbours as it accepts"
        self._learn(own)
        self.view.add(own)
        self.pending[sender] = p.runtime.now()
        return 200, "ok"

    def _on_linked(self, sender: int, message: Control, own: Descriptor | None
                   ) -> tuple[int, str]:
        if self.confirm(sender):
            return 200, "ok"
        return 409, "no edge was agreed with this peer"

    def _on_unlink(self, sender: int, message: Control, own: Descriptor | None
                   ) -> tuple[int, str]:
        self.pending.pop(sender, None)
        if sender in self.peer.neighbourhood.members:
            self.events["unlinks"] += 1
            self.peer.drop_neighbour(sender, reason="unlinked")
        return 200, "ok"

    def _on_leave(self, sender: int) -> tuple[int, str]:
        """A neighbour stops: with open membership it is dropped now; with a static graph it is
        suspected now (not waited for) and is back when it speaks again."""
        p = self.peer
        if sender not in p.neighbourhood.members and sender not in self.pending:
            return 403, "not a neighbour"
        self.events["left"] += 1
        if not self.cfg.enabled:
            p.neighbourhood.suspect_of(sender)
            p.log.write(LogEvent.NEIGHBOUR_LEFT, neighbour=sender)
            p.wake()
            return 200, "ok"
        self.pending.pop(sender, None)
        self.view.remove(sender)
        p.drop_neighbour(sender, reason="left")
        return 200, "ok"

    def _on_state_request(self, sender: int, message: Control, own: Descriptor
                          ) -> tuple[int, str]:
        p = self.peer
        if sender not in p.neighbourhood.members and sender not in self.pending:
            return 403, "state is sent to neighbours only"
        if self.joining:  # its own model is not the network's yet (tests/test_membership.py)
            return 429, "joining itself: no state to give yet; ask another neighbour"
        if self.serving >= self.cfg.max_joiners:
            return 429, "serving as many joiners as allowed: ask another neighbour"
        self.serving += 1
        self.most_served_at_once = max(self.most_served_at_once, self.serving)
        p.in_background(self.donate(sender))
        return 200, "ok"

    async def donate(self, joiner: int) -> None:
        """Send ``joiner`` this peer's model and round (a state transfer already counted in
        ``serving``, which this gives back)."""
        p = self.peer
        try:
            # a snapshot: the peer may be training in its worker thread meanwhile, and a vector
            # that changes between the envelope's hash and its copy fails the joiner's signature
            # check (a joiner of tests/test_launch.py got 401 'bad signature' from its donor)
            message = p.state_message()
            status = await p.transport.send(joiner, p.seal(message),
                                            p.config.gossip.deadline_ceiling_s, retry=False)
            p.log.write(LogEvent.STATE_SENT, joiner=joiner, round=p.completed_rounds, status=status)
        finally:
            self.serving -= 1

    def expect_state(self, donor: int) -> asyncio.Future[Message]:
        """From now on, a state message from ``donor`` (and only from it) is this joiner's."""
        self._state = asyncio.get_running_loop().create_future()
        self._state_from = donor
        return self._state

    def accept_state(self, sender: int, message: Message) -> tuple[int, str]:
        """The donor's model and round, when this peer asked that donor for it."""
        if self._state is None or self._state.done() or sender != self._state_from:
            return 409, "no state was asked of this peer"
        self._state.set_result(message)
        return 200, "ok"

    # -- edges -----------------------------------------------------------------------------

    def confirm(self, sender: int) -> bool:
        """A data message from a pending edge's asker: it counts the edge, so this peer does
        too. True when ``sender`` is (now) a neighbour. An agreement whose pending slot expired
        (the asker's first round took long) still counts if there is room."""
        p = self.peer
        if sender in p.neighbourhood.members:
            return True
        if p.stopping:
            return False
        if self.pending.pop(sender, None) is None:
            if self._expired.pop(sender, None) is None or \
                    p.phase in (Phase.MERGING, Phase.DONE) or \
                    len(p.neighbourhood.members) + len(self.pending) >= self.cfg.max_links:
                return False
        self._add(sender, how="accepted")
        return True

    def _add(self, j: int, *, how: str) -> None:
        self.events["links"] += 1
        if how == "asked":
            self.outgoing.add(j)
        self.peer.add_neighbour(j)
        self.peer.log.write(LogEvent.LINKED, neighbour=j, how=how,
                            degree=len(self.peer.neighbourhood))

    async def link(self, d: Descriptor) -> bool:
        """Ask ``d``'s peer for an edge; True when it agreed (it then counts for both)."""
        self._learn(d)
        status = await self._tell(d.peer, "link", [self.descriptor()])
        if status == 200:
            # the cap is checked again: edges accepted (or held pending for their asker) while
            # the request was in flight count
            if not self.peer.phase.finishing and \
                    len(self.peer.neighbourhood.members) + len(self.pending) < self.cfg.max_links:
                self._add(d.peer, how="asked")
                self._tell_later(d.peer, "linked")
                return True
            status = None
        if status is None:  # no answer, or a yes it cannot keep: make sure no edge dangles
            self.view.remove(d.peer)
            self._tell_later(d.peer, "unlink")
        return False

    def asked_edges(self) -> set[int]:
        """The neighbours this peer asked for (its out-edges; the others asked it)."""
        self.outgoing &= self.peer.neighbourhood.members
        return self.outgoing

    async def link_up(self, *, limit: int | None = None) -> None:
        """Ask view entries for edges until this peer has asked ``links`` neighbours that
        agreed (``limit`` tries). Each peer keeping ``links`` edges of its own choosing, to
        peers drawn from the sampling service, makes the overlay a random k-out graph, which is
        connected with high probability for k >= 2 however peers come and go; counting every
        neighbour instead let groups whose bridges left stay cut off (scripts/
        study_membership.py: 7-17 components of 200 peers)."""
        p = self.peer
        tries = 0
        exclude = p.neighbourhood.members | set(self.pending)
        for d in self.view.sample(self.cfg.view_size, exclude=exclude):
            if len(self.asked_edges()) >= self.cfg.links or \
                    len(p.neighbourhood.members) + len(self.pending) >= self.cfg.max_links or \
                    (limit is not None and tries >= limit) or p.stopping:
                return
            tries += 1
            await self.link(d)

    def on_round(self, round_index: int) -> None:
        """At each round start: drop neighbours that are dead -- suspect for
        ``drop_suspect_rounds`` rounds *and* not heard at all (not even a stale message) for
        twice the deadline ceiling, so a live neighbour that is out of step is kept (rounds can
        last milliseconds) -- and forget pending edges whose asker never spoke."""
        p = self.peer
        silent_for = 2 * p.config.gossip.deadline_ceiling_s
        for j in list(self.suspect_since):
            if j not in p.neighbourhood.suspect or j not in p.neighbourhood.members:
                del self.suspect_since[j]
        for j in sorted(p.neighbourhood.suspect & p.neighbourhood.members):
            self.suspect_since.setdefault(j, round_index)
            heard = p.neighbourhood.last_heard.get(j, -math.inf)
            if self.cfg.enabled and p.runtime.now() - heard >= silent_for and \
                    round_index - self.suspect_since[j] >= self.cfg.drop_suspect_rounds:
                self.events["dropped"] += 1
                self.view.remove(j)
                self._tell_later(j, "unlink")
                p.drop_neighbour(j, reason="suspect")
        stale = p.runtime.now() - max(self.cfg.forget_after_s,
                                      4 * p.config.gossip.deadline_ceiling_s)
        for j in [j for j, at in self.pending.items() if at < stale]:
            del self.pending[j]
            self._expired[j] = True  # still agreed: counted if its first message comes
            if len(self._expired) > self.cfg.max_links * 4:
                self._expired.popitem(last=False)

    # -- the background loop ---------------------------------------------------------------

    async def maintain(self) -> None:
        """Every ``shuffle_every_s``: forget old entries, shuffle with the oldest one, and link
        up to ``links`` (one try per period; not while merging). A peer left with no neighbour
        and an empty view introduces itself again through its bootstrap peers and the peers it
        once knew (found by the launcher's join mode: a peer whose neighbours all left trained
        alone to the end)."""
        p = self.peer
        while not p.stopping and p.phase not in (Phase.DONE, Phase.STOPPED):
            await asyncio.sleep(self.cfg.shuffle_every_s)
            for d in self.view.entries.values():
                self._remembered[d.url] = True
                self._remembered.move_to_end(d.url)
            while len(self._remembered) > 32:
                self._remembered.popitem(last=False)
            for gone in self.view.expire(self.now_ms(), self.cfg.forget_after_s * 1000):
                self.events["forgotten"] += 1
                if gone not in p.neighbourhood.members:
                    p.transport.forget(gone)
            if p.phase.finishing:
                await self.shuffle()
                continue
            if not p.neighbourhood.members and not self.view and not self.joining:
                await self.reintroduce()
            await self.shuffle()
            await self.link_up(limit=1)

    async def reintroduce(self) -> None:
        """One round of joins to the bootstrap peers and the peers once known, taking the view
        that comes back (never fatal: the peer keeps training meanwhile)."""
        urls = list(dict.fromkeys([*self.cfg.bootstrap, *self.known_urls, *self._remembered]))
        urls = [u for u in urls if u != self.url]
        if not urls:
            return
        self.joining = True
        self._viewed.clear()
        try:
            for url in self.rng.sample(urls, min(len(urls), 4)):
                status = await self.peer.transport.send_url(
                    url, self._control("join", [self.descriptor()]),
                    self.peer.config.gossip.deadline_ceiling_s, retry=False)
                if status == 200:
                    self.peer.log.write(LogEvent.REINTRODUCED, via=url)
                    try:
                        await asyncio.wait_for(self._viewed.wait(),
                                               self.peer.config.gossip.deadline_ceiling_s)
                    except asyncio.TimeoutError:
                        pass
                    return
        finally:
            self.joining = False

    async def shuffle(self) -> None:
        """Cyclon's exchange with the oldest entry: it is removed from the view (a dead one is
        gone for good; a live one comes back in the reply's place or a later shuffle)."""
        partner = self.view.oldest()
        if partner is None or len(self.view) < self.cfg.shuffle_length:
            # a young view (a bootstrap peer, or neighbours from a static table): shuffle with a
            # neighbour too, which brings its descriptor and its view into this one
            others = sorted(self.peer.neighbourhood.live() - set(self.view.entries))
            if others:
                neighbour = self.rng.choice(others)
                sent = self.view.sample(self.cfg.shuffle_length - 1, exclude={neighbour})
                self._shuffled[neighbour] = {e.peer for e in sent}
                self.events["shuffles"] += 1
                if await self._tell(neighbour, "shuffle", [self.descriptor(), *sent]) != 200:
                    self._shuffled.pop(neighbour, None)
                return
        if partner is None:
            return
        d = self.view.entries[partner]
        self.view.remove(partner)
        sent = self.view.sample(self.cfg.shuffle_length - 1, exclude={partner})
        self._shuffled[partner] = {e.peer for e in sent}
        if len(self._shuffled) > self.cfg.view_size:  # replies that never came
            self._shuffled.pop(next(iter(self._shuffled)))
        self._learn(d)
        self.events["shuffles"] += 1
        status = await self._tell(partner, "shuffle", [self.descriptor(), *sent])
        if status != 200:
            self._shuffled.pop(partner, None)
            if partner not in self.peer.neighbourhood.members:
                self.peer.transport.forget(partner)
        else:
            self.view.add(d)  # it answered: keep it (its reply brings a fresher one)

    # -- joining and leaving ---------------------------------------------------------------

    async def join(self, urls: list[str]) -> None:
        """Introduce this peer through ``urls`` (retrying with backoff up to join_timeout_s),
        take their view, link up to ``links`` and fetch the current model from a neighbour.
        JoinError when nobody admits it."""
        p, cfg = self.peer, self.cfg
        self.joining = True
        started = p.runtime.now()
        deadline = started + cfg.join_timeout_s
        try:
            await self._introduce(urls, deadline)
            left = max(0.0, deadline - p.runtime.now())
            try:
                await asyncio.wait_for(self._viewed.wait(), min(left,
                                                                p.config.gossip.deadline_ceiling_s))
            except asyncio.TimeoutError:
                p.log.write(LogEvent.JOIN_NO_VIEW,
                            note="no view arrived; linking from what is known")
            backoff = join_retry()
            while not p.neighbourhood.members and not p.stopping:
                await self.link_up()
                if p.neighbourhood.members or p.runtime.now() + backoff.peek() > deadline:
                    break
                await asyncio.sleep(backoff.delay())
            if not p.neighbourhood.members:
                raise JoinError("admitted, but no peer of the view accepted an edge within "
                                f"{cfg.join_timeout_s:g} s ([membership] join_timeout_s)", 4)
            state = await self._fetch_state(deadline)
        except JoinError as exc:
            p.log.write(LogEvent.JOIN_FAILED, reason=str(exc))
            raise
        finally:
            self.joining = False
        self.joined = {"round": p.completed_rounds, "donor": state.sender if state else None,
                       "after_s": round(p.runtime.now() - started, 3),
                       "neighbours": sorted(p.neighbourhood.members)}
        p.log.write(LogEvent.JOINED, **self.joined)

    async def _introduce(self, urls: list[str], deadline: float) -> None:
        p = self.peer
        backoff, attempts = join_introduction(), 0
        while True:
            for url in self.rng.sample(urls, len(urls)):
                left = deadline - p.runtime.now()
                if left <= 0:
                    break
                attempts += 1
                status = await p.transport.send_url(
                    url, self._control("join", [self.descriptor()]),
                    min(left, p.config.gossip.deadline_ceiling_s), retry=False)
                if status == 200:
                    p.log.write(LogEvent.ADMITTED, via=url)
                    return
                if status in (401, 403):
                    raise JoinError(
                        f"refused admission by {url}: {status} {refusal_reason(status)} -- this "
                        "network admits peers whose key its trust store lists or that hold a "
                        "certificate of its authority ([trust] certificate; python -m node keys "
                        "issue)", 3)
            if p.runtime.now() >= deadline or p.stopping:
                raise JoinError(f"no bootstrap peer admitted this peer within "
                                f"{self.cfg.join_timeout_s:g} s ({attempts} attempts to "
                                f"{', '.join(urls)}); check the URLs and that they run with "
                                "[membership] dynamic", 4)
            # the last wait ends at the deadline, so the attempts span all of join_timeout_s
            await asyncio.sleep(backoff.delay(deadline - p.runtime.now()))

    async def _fetch_state(self, deadline: float) -> Message | None:
        """The current model and round from a neighbour (busy donors answer 429; the next
        neighbour is asked, then all again after a backoff). None when no donor sent one in
        time, or a resumed peer is not behind: it keeps its own model."""
        p = self.peer
        backoff = join_retry()
        while not p.stopping:
            donors = sorted(p.neighbourhood.members)
            for donor in self.rng.sample(donors, len(donors)):
                expected = self.expect_state(donor)
                status = await self._tell(donor, "state_request", [self.descriptor()])
                if status != 200:
                    continue
                try:
                    message = await asyncio.wait_for(
                        expected, max(0.1, min(deadline - p.runtime.now(),
                                                  2 * p.config.gossip.deadline_ceiling_s)))
                except asyncio.TimeoutError:
                    continue
                finally:
                    self._state = self._state_from = None
                if message.round > p.completed_rounds or not p.resumed:
                    p.adopt_state(message)
                return message
            if p.runtime.now() + backoff.peek() > deadline:
                p.log.write(LogEvent.NO_STATE, note="no neighbour sent its model in time: training "
                            "from this peer's own model")
                return None
            await asyncio.sleep(backoff.delay())
        return None

    async def leave(self) -> None:
        """Tell every neighbour (and pending edge) that this peer stops; bounded by the
        deadline ceiling."""
        p = self.peer
        to = sorted(p.neighbourhood.members | set(self.pending))
        if not to:
            return
        await asyncio.wait([asyncio.ensure_future(self._tell(j, "leave")) for j in to],
                           timeout=p.config.gossip.deadline_ceiling_s)
        p.log.write(LogEvent.LEFT, told=to)

    def status(self) -> dict[str, Any]:
        return {"dynamic": self.cfg.enabled, "view": sorted(self.view.entries),
                "pending": sorted(self.pending), "joined": self.joined,
                "serving": self.serving, "most_served_at_once": self.most_served_at_once,
                **self.events, "membership_bytes_out": self.traffic["bytes_out"],
                "membership_bytes_in": self.traffic["bytes_in"]}

    def known(self) -> list[str]:
        """URLs of the peers this one knows (kept in the checkpoint: a restarted peer rejoins
        through them)."""
        urls = {d.url for d in self.view.entries.values()}
        urls |= {u for j in self.peer.neighbourhood.members
                 if (u := self.peer.transport.address_of(j))}
        return sorted(urls)[:64]
