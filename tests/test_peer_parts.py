"""The peer's parts on their own, without a Peer and without sockets: the admission pipeline
(its order and its refusals), the inbox's window and replay guard, the neighbourhood's vote,
the flood merge's state driven by fake neighbours, and the backoff helper."""

from __future__ import annotations

import io
import json

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gossip import Message
from gossip.auth import Identity, TrustStore, public_bytes
from gossip.backoff import Backoff
from gossip.membership import Control, encode_control
from gossip.messages import encode_message
from node.config import PeerConfig
from node.peer.admission import Admission, Refusals, Refused
from node.peer.inbox import HISTORY_ROUNDS, Inbox, SlotKey, window_refusal
from node.peer.limits import STRANGER_RATE, RateLimits
from node.peer.merge import MERGE_STEPS_AHEAD, FloodMerge
from node.peer.neighbourhood import Neighbourhood
from node.peer.observe import JsonLog, LogEvent
from node.peer.phase import Phase

SIZE = 6


def model(sender: int, round_index: int = 0, step: int = 0, value: float = 0.0, *,
          kind: str = "model") -> Message:
    return Message(kind, sender, round_index, step, 1, [(sender, torch.full((SIZE,), value))])


# -- admission -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def signed_peers(*ids: int) -> tuple[dict[int, Identity], TrustStore]:
    keys = {i: Ed25519PrivateKey.generate() for i in ids}
    store = TrustStore(peers={i: public_bytes(k.public_key()) for i, k in keys.items()})
    return {i: Identity(i, k) for i, k in keys.items()}, store


def admission(store: TrustStore, *, neighbours: set[int], open_to_strangers: bool = False,
              rate: float = 100.0, clock: Clock | None = None) -> Admission:
    gossip = PeerConfig.of(id=0).gossip
    return Admission(trust=store, limits=RateLimits(neighbours, neighbour_rate=rate),
                     clock=clock or Clock(), is_known=lambda j: j in neighbours,
                     open_to_strangers=open_to_strangers, gossip=gossip, vector_size=SIZE,
                     peer_id=0)


def refusal(check, *args) -> int:
    with pytest.raises(Refused) as caught:
        check(*args)
    return caught.value.status


def test_admission_refuses_each_kind_of_bad_body_with_its_own_status():
    ids, store = signed_peers(1, 2, 9)
    gate = admission(store, neighbours={1, 2})
    good = ids[1].seal(encode_message(model(1), SIZE))
    assert gate.data(gate.open(good)).sender == 1
    assert refusal(gate.open, None) == 413  # the transport cut it at the size limit
    assert refusal(gate.open, b"not an envelope at all") == 400
    assert refusal(gate.open, ids[9].seal(encode_message(model(9), SIZE))) == 403  # stranger
    forged = bytearray(good)
    forged[-1] ^= 1
    assert refusal(gate.open, bytes(forged)) == 401  # signature
    other_key = Identity(1, Ed25519PrivateKey.generate()).seal(encode_message(model(1), SIZE))
    assert refusal(gate.open, other_key) == 403  # a key other than the one listed for 1
    wrong_length = ids[1].seal(encode_message(
        Message("model", 1, 0, 0, 1, [(1, torch.zeros(SIZE + 1))]), SIZE + 1))
    assert refusal(gate.data, gate.open(wrong_length)) == 422
    speaks_for_2 = ids[1].seal(encode_message(model(2), SIZE))
    assert refusal(gate.data, gate.open(speaks_for_2)) == 403  # payload sender != signer


def test_admission_checks_the_sender_before_its_signature_and_rate_limits_strangers():
    ids, store = signed_peers(1, 7)
    clock = Clock()
    gate = admission(store, neighbours={1}, open_to_strangers=True, clock=clock)
    stranger = ids[7].seal(encode_message(model(7), SIZE))
    # a stranger of open membership passes the door but may not send data
    assert refusal(gate.data, gate.open(stranger)) == 403
    # the strangers' shared bucket is checked before any signature: a burst of unsigned junk
    # claiming an unknown id is cut off at 2 x STRANGER_RATE without a verification
    junk = bytearray(stranger)
    junk[-1] ^= 1
    statuses = [refusal(gate.open, bytes(junk)) for _ in range(int(2 * STRANGER_RATE) + 5)]
    assert statuses.count(401) == int(2 * STRANGER_RATE) - 1  # the first one took a token
    assert statuses[-1] == 429
    clock.t += 10.0  # the bucket refills
    assert refusal(gate.open, bytes(junk)) == 401


def test_a_neighbour_over_its_rate_is_refused_429_and_a_control_message_is_parsed():
    ids, store = signed_peers(1)
    gate = admission(store, neighbours={1}, rate=2.0)
    body = ids[1].seal(encode_control(Control("leave", 1, 0, ())))
    envelope = gate.open(body)
    assert envelope.is_control and gate.control(envelope).kind == "leave"
    gate.open(body)
    gate.open(body)
    gate.open(body)  # burst of 2 x rate = 4
    assert refusal(gate.open, body) == 429
    lying = ids[1].seal(encode_control(Control("leave", 5, 0, ())))
    gate.limits.add(1)
    assert refusal(gate.control, gate.open(lying)) == 403


def test_refusals_are_all_counted_and_logged_except_the_flood_prone_statuses():
    stream = io.StringIO()
    refusals = Refusals(JsonLog(0, stream=stream))
    for status in (400, 401, 409, 429, 429, 422):
        assert refusals.record(status, "why")[0] == status
    assert refusals.as_dict() == {"400": 1, "401": 1, "409": 1, "429": 2, "422": 1}
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["status"] for r in logged] == [400, 401, 422]
    assert {r["event"] for r in logged} == {LogEvent.REJECTED}


# -- the inbox -------------------------------------------------------------------------------


def test_the_window_takes_the_current_and_next_round_only():
    def why(message: Message, position=(5, 1), base=5) -> str | None:
        return window_refusal(message, position=position, base_round=base, gossip_steps=2,
                              rounds=30)

    assert why(model(1, 5, 1)) is None  # the step being collected
    assert why(model(1, 6, 1)) is None  # the next round
    assert why(model(1, 5, 0)).startswith("stale")
    assert why(model(1, 4, 1)).startswith("stale")
    assert why(model(1, 7, 0)).startswith("outside the window")
    assert why(model(1, 7, 0), base=6) is None  # a round the peer is about to catch up to
    assert why(model(1, 5, 2)).startswith("outside the window")  # no such gossip step
    assert why(model(1, 5 - HISTORY_ROUNDS + 1, 0, kind="history")) is None
    assert why(model(1, 5 - HISTORY_ROUNDS, 0, kind="history")) is not None
    assert why(model(1, 30, 12345, kind="merge")) is None  # any flood step of the merge
    assert why(model(1, 29, 0, kind="merge")) == "a merge message of another run length"


def test_the_inbox_guards_replays_bounds_each_sender_and_forgets_old_rounds():
    inbox = Inbox(per_sender=2)
    first = model(1, 3, 0)
    assert not inbox.replayed(first)
    inbox.remember(first)
    inbox.put(first)
    assert inbox.replayed(model(1, 3, 0, value=9.0))  # same slot, other content: a replay
    assert not inbox.replayed(model(2, 3, 0))  # another sender's slot
    assert not inbox.full_for(1)
    inbox.put(model(1, 3, 1))
    assert inbox.full_for(1) and not inbox.full_for(2)
    assert inbox.senders(SlotKey("model", 3, 0)) == {1}
    assert set(inbox.take(SlotKey("model", 3, 0))) == {1}
    assert inbox.take(SlotKey("model", 3, 0)) == {}
    inbox.put(model(1, 9, 0, kind="merge"))
    inbox.forget_before(4)  # round 3's slots and guard go; the merge's stay
    assert SlotKey("model", 3, 1) not in inbox.slots
    assert not inbox.replayed(first)
    assert inbox.merge_steps() == [0]
    history = Message("history", 1, 3, 0, 1, [(7, torch.zeros(SIZE))])
    inbox.remember(history)
    assert not inbox.replayed(Message("history", 1, 3, 0, 1, [(8, torch.zeros(SIZE))]))
    inbox.forget_before(3 + HISTORY_ROUNDS)  # a history record's guard lives longer
    assert inbox.replayed(history)
    inbox.forget_before(4 + HISTORY_ROUNDS)
    assert not inbox.replayed(history)


# -- the neighbourhood -----------------------------------------------------------------------


def test_one_neighbour_alone_never_moves_a_peer_but_most_of_them_do():
    nb = Neighbourhood({1, 2, 3})
    assert nb.claim(1, 1000) and not nb.claim(1, 999)
    assert not nb.lagging(4)  # one liar among three
    nb.claim(2, 9)
    assert nb.lagging(4) and nb.catch_up_to(4) == 9
    nb.suspect_of(3)
    assert nb.live() == {1, 2}
    assert nb.cleared(3) and not nb.cleared(3)
    assert nb.drop(1) and not nb.drop(1)
    assert 1 not in nb.claimed and len(nb) == 2


def test_a_peer_is_ahead_only_when_most_recently_heard_neighbours_are_behind():
    nb = Neighbourhood({1, 2, 3})
    for j in (1, 2, 3):
        nb.heard(j, now=100.0)
        nb.claim(j, 3)
    assert nb.ahead(5, recent=10.0, now=105.0) and nb.behind(5) == [1, 2, 3]
    assert not nb.ahead(5, recent=10.0, now=200.0)  # nobody heard lately: no vote


# -- the flood merge, with fake neighbours ---------------------------------------------------


def fake_merge_message(sender: int, step: int, models: dict[int, float], *, final: bool = False,
                       waiting=(), gone=()) -> Message:
    vectors = [(o, torch.full((SIZE,), v)) for o, v in models.items()]
    return Message("merge", sender, 10, step, 2, vectors, "f32", final,
                   {o: (b"s", b"c") for o in models}, waiting=tuple(waiting), gone=tuple(gone))


def new_merge(own_id: int = 0, neighbours=(1, 2)) -> FloodMerge:
    return FloodMerge(own_id=own_id, own=torch.full((SIZE,), float(own_id)), proof=(b"s", b"c"),
                      merge_round=10, neighbours=set(neighbours))


def test_the_flood_merge_ends_when_a_complete_step_brings_nothing_new():
    """A line 3 - 1 - 0 - 2: peer 0 learns 1 and 2 at step 0, 3 through 1 at step 1, and may
    finalise after step 2 (every neighbour answered, nothing new, nobody waited for)."""
    merge, neighbours = new_merge(), {1, 2}
    waits = merge.waiting(neighbours, set())
    assert waits == {1, 2} and not merge.is_final(0, waits)
    sent = merge.messages(0, neighbours=neighbours, waits=waits, final=False)
    assert [(j, origins) for j, _, origins in sent] == [(1, [0]), (2, [0])]
    merge.absorb([fake_merge_message(1, 0, {1: 1.0}, waiting=[3]),
                  fake_merge_message(2, 0, {2: 2.0})], expected={1, 2}, answered={1, 2},
                 dead=set())
    assert merge.waiting(neighbours, set()) == {3}  # what neighbour 1 still waits for
    merge.absorb([fake_merge_message(1, 1, {3: 3.0})], expected={1, 2}, answered={1, 2},
                 dead=set())
    assert merge.new_last_step and not merge.is_final(2, merge.waiting(neighbours, set()))
    # what 1 and 2 hold: 1 got everything but 2's and 3's own; 2 has not got 1 or 3
    merge.held_by(1).update({0})
    merge.held_by(2).update({0})
    assert {j: o for j, _, o in merge.messages(2, neighbours=neighbours, waits=set(),
                                               final=False)} == {1: [2], 2: [1, 3]}
    merge.absorb([fake_merge_message(1, 2, {}), fake_merge_message(2, 2, {})],
                 expected={1, 2}, answered={1, 2}, dead=set())
    assert merge.is_final(3, merge.waiting(neighbours, set()))
    assert merge.component == [0, 1, 2, 3]
    assert torch.allclose(merge.average(), torch.full((SIZE,), 1.5, dtype=torch.float64)
                          .to(merge.average().dtype))


def test_a_step_with_a_timeout_proves_nothing_and_a_dead_neighbour_is_gone_for_good():
    merge, neighbours = new_merge(), {1, 2}
    merge.absorb([fake_merge_message(1, 0, {1: 1.0})], expected={1, 2}, answered={1},
                 dead={2})
    assert not merge.complete and merge.gone == {2}
    merge.absorb([fake_merge_message(1, 1, {})], expected={1}, answered={1}, dead=set())
    assert merge.complete and not merge.new_last_step
    assert merge.waiting(neighbours, {2}) == set()  # 2 is gone: not waited for
    assert merge.is_final(2, set())
    # a neighbour's "gone" news of an id already gone is not news (two peers once called every
    # step new for ever)
    merge.absorb([fake_merge_message(1, 2, {}, gone=[2])], expected={1}, answered={1},
                 dead=set())
    assert not merge.new_last_step


def test_the_merge_meets_a_neighbour_steps_ahead_but_never_past_the_clamp():
    merge, inbox = new_merge(), Inbox(per_sender=4)
    inbox.put(fake_merge_message(1, 7, {1: 1.0}))
    inbox.put(fake_merge_message(2, MERGE_STEPS_AHEAD + 50, {2: 2.0}))  # no honest peer's
    assert merge.catch_up(0, inbox) == 7
    assert inbox.merge_steps() == [7]  # the far one was dropped
    assert inbox.answered_later(SlotKey("merge", 10, 3), within=MERGE_STEPS_AHEAD) == {1}
    assert [m.sender for m in inbox.take_merge_before(8)] == [1]


def test_a_finished_neighbour_gets_nothing_more_and_its_waiting_list_stops_counting():
    merge, neighbours = new_merge(), {1, 2}
    merge.absorb([fake_merge_message(1, 0, {1: 1.0}, final=True, waiting=[5]),
                  fake_merge_message(2, 0, {2: 2.0})], expected={1, 2}, answered={1, 2},
                 dead=set())
    assert merge.finished == {1}
    assert merge.waiting(neighbours, set()) == set()  # 1 finished: its list holds nobody up
    assert [j for j, _, _ in merge.messages(1, neighbours=neighbours, waits=set(),
                                            final=False)] == [2]


# -- small parts -----------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_never_waits_past_the_deadline():
    backoff = Backoff(first=0.2, cap=1.0)
    assert [backoff.delay() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert Backoff(first=0.2, cap=1.0).delay(0.05) == 0.05
    assert Backoff(first=0.2, cap=1.0).delay(-3.0) == 0.0
    with pytest.raises(ValueError, match="first"):
        Backoff(first=2.0, cap=1.0)


def test_the_phase_says_whether_a_round_is_in_progress():
    assert [p.value for p in Phase if p.in_round] == ["starting", "training", "gossip"]
    assert [p.value for p in Phase if p.finishing] == ["merging", "done", "stopped"]
    assert Phase.GOSSIP == "gossip" and json.dumps({"state": Phase.DONE.value}) == \
        '{"state": "done"}'


# -- the receiver, with a fake peer ----------------------------------------------------------


class FakeReceivingPeer:
    def __init__(self) -> None:
        self.position, self.rounds, self.gossip_steps, self.woken = (5, 0), 30, 2, 0

    def wake(self) -> None:
        self.woken += 1


class FakeMembership:
    joining = False
    traffic = {"bytes_in": 0}

    def confirm(self, sender: int) -> bool:
        return False


class FakeExchange:
    def __init__(self) -> None:
        self.received_bytes = 0

    def received(self, size: int) -> None:
        self.received_bytes += size


def test_the_receiver_buffers_in_window_refuses_the_rest_and_takes_back_a_suspect():
    from node.peer.receive import Receiver

    ids, store = signed_peers(1, 2)
    stream = io.StringIO()
    nb, inbox, peer = Neighbourhood({1, 2}), Inbox(per_sender=4), FakeReceivingPeer()
    receiver = Receiver(peer, admission=admission(store, neighbours={1, 2}),
                        refusals=Refusals(JsonLog(0, stream=stream)), neighbourhood=nb,
                        inbox=inbox, exchange=FakeExchange(), membership=FakeMembership(),
                        learner=None, log=JsonLog(0, stream=stream), clock=Clock())

    async def send(sender: int, round_index: int, step: int) -> int:
        body = ids[sender].seal(encode_message(model(sender, round_index, step), SIZE))
        return (await receiver.handle(body))[0]

    async def scenario() -> list[int]:
        nb.suspect_of(2)
        return [await send(1, 5, 0), await send(1, 5, 0), await send(1, 7, 0),
                await send(2, 4, 1), await send(1, 6, 1)]

    import asyncio

    statuses = asyncio.run(scenario())
    # in the window; a replay; two rounds ahead; one step behind (stale, but it proves the
    # suspect is alive and in step: it is waited for again); the next round
    assert statuses == [200, 409, 409, 409, 200]
    assert inbox.senders(SlotKey("model", 5, 0)) == {1} and 2 not in nb.suspect
    assert nb.claimed == {1: 7, 2: 4} and peer.woken >= 2
    assert receiver.refusals.counts == {409: 3}
    assert any(json.loads(line)["event"] == LogEvent.NEIGHBOUR_BACK
               for line in stream.getvalue().splitlines())
