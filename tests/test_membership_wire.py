"""The wire of open membership (gossip/membership.py) and the merge agreement among peers that
reach the merge at different times (docs/algorithms.md §5.4, §9.2)."""

from __future__ import annotations

import asyncio
import io
import random

import msgpack
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gossip import AuthError, Identity, InMemoryHub, Message, MessageError, TrustStore
from gossip.auth import issue_certificate, public_bytes
from gossip.membership import (
    MAX_CONTROL_BYTES,
    MAX_DESCRIPTORS,
    Control,
    Descriptor,
    PeerView,
    decode_control,
    encode_control,
    is_control,
)
from gossip.messages import MAX_IDS, decode_message, encode_message
from node.peer import JsonLog, Peer, Runtime
from sim.clock import run_simulated
from tests.helpers import digits_data, peer_config


def descriptor(identity: Identity, url: str, issued: int) -> Descriptor:
    signature, credential = identity.sign_descriptor(url, issued)
    return Descriptor(identity.peer, url, issued, credential, signature)


def test_a_control_message_round_trips_and_is_told_apart_from_a_data_message():
    me = Identity(7, Ed25519PrivateKey.generate())
    message = Control("shuffle", 7, 3, (descriptor(me, "http://127.0.0.1:8007", 1000),))
    payload = encode_control(message)
    assert is_control(payload) and decode_control(payload) == message
    data = encode_message(Message("model", 7, 0, 0, 1, [(7, torch.zeros(3))]), 3)
    assert not is_control(data)  # a data message is a map
    assert decode_message(data, 3, 10**6).waiting == ()


@pytest.mark.parametrize("raw, status", [
    ([1, "join", 1, 0], 400),                                   # four fields
    ([2, "join", 1, 0, []], 400),                               # another version
    ([1, "take-over", 1, 0, []], 400),                          # unknown kind
    ([1, "join", -1, 0, []], 400),                              # negative sender
    ([1, "join", 2**63, 0, []], 400),                           # beyond 2**62
    ([1, "join", 1, 0, {}], 400),                               # a map where a list goes
    ([1, "join", 1, 0, [[1, "ftp://x", 0, b"", b""]]], 400),    # a scheme no peer speaks
    ([1, "join", 1, 0, [[1, "http://x", 0, b"x" * 33, b""]]], 400),  # credential length
    ([1, "join", 1, 0, [[1, "http://x", 0, b"", b"x" * 63]]], 400),  # signature length
    ([1, "join", 1, 0, [[1, "http://x", 0, b"", b""]] * 2], 400),    # a peer twice
    ([1, "join", 1, 0, [[1, "http://" + "x" * 300, 0, b"", b""]]], 400),  # url too long
    ([1, "join", 1, 0, [[i, "http://x", 0, b"", b""] for i in range(MAX_DESCRIPTORS + 1)]],
     400),                                                      # 65 descriptors
    ([1, "join", 1, 0, [[[[[[]]]]]]], 400),                     # nested junk
])
def test_malformed_control_messages_are_refused_with_a_4xx(raw, status):
    with pytest.raises(MessageError) as refused:
        decode_control(msgpack.packb(raw, use_bin_type=True))
    assert refused.value.status == status


def test_an_oversized_or_deeply_nested_control_payload_is_refused_unparsed():
    with pytest.raises(MessageError) as refused:
        decode_control(b"\x91" * (MAX_CONTROL_BYTES + 1))
    assert refused.value.status == 413
    with pytest.raises(MessageError) as refused:
        decode_control(b"\x91" * (MAX_CONTROL_BYTES - 1) + b"\x90")
    assert refused.value.status == 400


def test_id_lists_are_bounded_and_only_in_merge_messages():
    merge = Message("merge", 1, 5, 0, 1, [], waiting=(2, 3), gone=(4,))
    assert decode_message(encode_message(merge, 3), 3, 10**6).waiting == (2, 3)
    with pytest.raises(ValueError):
        encode_message(Message("merge", 1, 5, 0, 1, [], waiting=tuple(range(MAX_IDS + 1))), 3)
    model = encode_message(Message("model", 1, 0, 0, 1, [(1, torch.zeros(3))], gone=(4,)), 3)
    with pytest.raises(MessageError):
        decode_message(model, 3, 10**6)


def test_a_descriptor_verifies_only_as_its_peer_signed_it():
    authority = Ed25519PrivateKey.generate()
    key = Ed25519PrivateKey.generate()
    cert = issue_certificate(authority, peer=5, public_key=public_bytes(key.public_key()),
                             valid_s=3600)
    me = Identity(5, key, cert)
    store = TrustStore()
    store.add_authority(public_bytes(authority.public_key()))
    good = descriptor(me, "http://127.0.0.1:8005", 1000)
    store.verify_descriptor(good.peer, good.url, good.issued, good.signature, good.credential)
    for forged in (Descriptor(5, "http://127.0.0.1:9999", 1000, good.credential, good.signature),
                   Descriptor(5, good.url, 2000, good.credential, good.signature),
                   Descriptor(6, good.url, 1000, good.credential, good.signature),
                   Descriptor(5, good.url, 1000, good.credential, b"")):
        with pytest.raises(AuthError):  # redirected, made younger, another id, unsigned
            store.verify_descriptor(forged.peer, forged.url, forged.issued, forged.signature,
                                    forged.credential)
    stranger = descriptor(Identity(5, Ed25519PrivateKey.generate()), good.url, 1000)
    with pytest.raises(AuthError):  # a bare key the store does not list
        store.verify_descriptor(5, stranger.url, 1000, stranger.signature, stranger.credential)


def test_the_view_stays_bounded_keeps_fresh_entries_and_replaces_what_was_sent():
    view = PeerView(0, 4, random.Random(0))
    assert not view.add(Descriptor(0, "mem://0", 5))  # never itself
    for i in range(1, 5):
        assert view.add(Descriptor(i, f"mem://{i}", 10 * i))
    assert len(view) == 4 and view.oldest() == 1
    assert view.add(Descriptor(9, "mem://9", 5), replaceable={3})  # full: replaces a sent one
    assert 3 not in view and 9 in view and len(view) == 4
    assert not view.add(Descriptor(8, "mem://8", 1))  # full, nothing sent, older than the oldest
    assert view.add(Descriptor(8, "mem://8", 100))  # ... but a fresher one evicts the oldest
    assert 9 not in view and len(view) == 4
    assert not view.add(Descriptor(2, "mem://2", 1))  # an older duplicate is ignored
    assert view.add(Descriptor(2, "mem://2", 500)) and view.entries[2].issued == 500
    assert view.expire(now=450, max_age=400) == [1, 4]  # issued before 50
    sample = view.sample(2, exclude={2})
    assert [d.peer for d in sample] == [8]  # 2 excluded, 1 and 4 expired
    first, second = PeerView(0, 4, random.Random(3)), PeerView(0, 4, random.Random(3))
    first.entries = second.entries = dict(view.entries)
    assert [d.peer for d in first.sample(3)] == [d.peer for d in second.sample(3)]  # same seed


def test_a_peer_does_not_finalise_the_merge_while_a_neighbour_still_waits_for_someone(tmp_path):
    """Peer 1 between 0 and 2; 2 reports that it still waits for 3 (3 is training its last
    rounds) and has nothing new for several flood steps. 'Nothing new and everyone answered'
    alone would end 1's merge as [0, 1, 2] (the old rule; tests/test_netns.py saw it under
    load); with the waiting lists 1 waits until 3's model arrives through 2 and ends with all
    four."""
    config = peer_config(1, 4, tmp_path, 3, algorithm="dfedavg", deadline_floor_s=0.2,
                         deadline_ceiling_s=1.0)
    config.neighbours = {0: "http://in-memory", 2: "http://in-memory"}
    arrives_at = 4  # the flood step at which 2 finally has 3's model

    async def scenario():
        hub = InMemoryHub()
        peer = Peer(config, transport=hub.transport(1), data=digits_data(),
                    runtime=Runtime.simulated_clock(),
                    log=JsonLog(1, stream=io.StringIO()))
        length = peer.learner.vector_size
        models = {j: torch.full((length,), float(j)) for j in (0, 2, 3)}
        replies: set[asyncio.Task] = set()

        def fake(j: int):
            sender = hub.transport(j)
            identity = Identity(j)

            async def answer(step: int) -> None:
                vectors, waiting = [], ()
                if step == 0:
                    vectors = [(j, models[j])]
                if j == 2:
                    waiting = (3,) if step < arrives_at else ()
                    if step == arrives_at:
                        vectors = [(3, models[3])]
                message = Message("merge", j, 3, step, 1, vectors, "f32", False,
                                  {o: (b"", b"") for o, _ in vectors}, waiting=waiting)
                await sender.send(1, identity.seal(encode_message(message, length)), 5.0)

            async def handler(body: bytes):
                message = decode_message(TrustStore(mode="modelled").open(body).payload,
                                         length, 10**9)
                task = asyncio.create_task(answer(message.step))
                replies.add(task)
                return 200, "ok"

            hub.handlers[j] = handler

        fake(0)
        fake(2)
        await peer.start()
        merged = await peer.final_merge()
        await asyncio.gather(*replies)
        await peer.close()
        return merged

    merged = run_simulated(scenario())
    assert merged["component"] == [0, 1, 2, 3]
    assert merged["flood_steps"] > arrives_at


def merge_with_fake_neighbours(config, answer_for, *, limit: int = 1000):
    """Run peer 1's final merge between fake neighbours 0 and 2 on a simulated clock.
    ``answer_for(j, step, length)`` is fake j's reply (a merge Message, or None for none) to
    peer 1's message of ``step``; more than ``limit`` sends by peer 1 fail the test (a merge
    loop that never ends)."""
    async def scenario():
        hub = InMemoryHub()
        peer = Peer(config, transport=hub.transport(1), data=digits_data(),
                    runtime=Runtime.simulated_clock(),
                    log=JsonLog(1, stream=io.StringIO()))
        length = peer.learner.vector_size
        replies: set[asyncio.Task] = set()
        sends = [0]
        send_tracked = peer.exchange.send_tracked

        def counted(*args, **kwargs):
            sends[0] += 1
            if sends[0] > limit:
                raise RuntimeError("the merge loop does not end")
            return send_tracked(*args, **kwargs)

        peer.exchange.send_tracked = counted

        def fake(j: int):
            sender, identity = hub.transport(j), Identity(j)

            async def send(message: Message) -> None:
                await sender.send(1, identity.seal(encode_message(message, length)), 5.0)

            async def handler(body: bytes):
                step = decode_message(TrustStore(mode="modelled").open(body).payload, length,
                                      10**9).step
                message = answer_for(j, step, length)
                if message is not None:  # None: accepted, never answered
                    replies.add(asyncio.create_task(send(message)))
                return 200, "ok"

            hub.handlers[j] = handler

        fake(0)
        fake(2)
        await peer.start()
        try:
            began = peer.runtime.now()
            merged = await peer.final_merge()
            return merged, peer.runtime.now() - began
        finally:
            await asyncio.gather(*replies)
            await peer.close()

    return run_simulated(scenario())



def test_a_neighbour_that_went_silent_no_longer_holds_up_the_merge(tmp_path):
    """Peer 1 between 0 and 2: 2 sends its model and 'still waiting for 3' at flood step 0, then
    dies. Its last list must not hold 1's merge for ever: 1 suspects 2 after the ceiling and
    ends with [0, 1, 2] in a few steps. (It once spun without a wait, sending to the dead peers
    until memory ran out: the churn launch of tests/test_launch.py in a fresh clone; the send
    helper's send counter turns such a spin into a failure instead of a hang.)"""
    config = peer_config(1, 4, tmp_path, 3, algorithm="dfedavg", deadline_floor_s=0.2,
                         deadline_ceiling_s=1.0)
    config.neighbours = {0: "http://in-memory", 2: "http://in-memory"}

    def answer(j, step, length):
        if j == 2 and step > 0:
            return None  # accepted, never answered: it is gone
        vectors = [(j, torch.full((length,), float(j)))] if step == 0 else []
        return Message("merge", j, 3, step, 1, vectors, "f32", False,
                       {o: (b"", b"") for o, _ in vectors}, waiting=(3,) if j == 2 else ())

    merged, _ = merge_with_fake_neighbours(config, answer)
    assert merged["component"] == [0, 1, 2]
    assert merged["flood_steps"] < 10

def test_peers_that_reach_the_merge_late_are_waited_for_through_the_line(tmp_path):
    """End to end on a line 0-1-2-3 whose end peer starts four rounds late and is still
    training while 0, 1 and 2 flood: every peer ends with the same four-member merge and the
    same model. (The rule itself is pinned by the test above, which fails without the waiting
    lists; this one did not, since its flood steps happen to misalign.)"""
    rounds, late_by = 8, 4
    configs = [peer_config(i, 4, tmp_path, rounds, algorithm="dfedavg", deadline_floor_s=0.2,
                           deadline_ceiling_s=1.0, startup_timeout_s=1.0) for i in range(4)]
    for i, config in enumerate(configs):
        config.neighbours = {j: "http://in-memory" for j in (i - 1, i + 1) if 0 <= j < 4}

    async def scenario():
        hub = InMemoryHub()
        peers = [Peer(c, transport=hub.transport(i), data=digits_data(),
                      runtime=Runtime.simulated_clock(work_s=0.05),
                      log=JsonLog(i, stream=io.StringIO()))
                 for i, c in enumerate(configs)]
        for p in peers[:3]:
            await p.start()
        tasks = [asyncio.create_task(p.run()) for p in peers[:3]]
        while peers[0].completed_rounds < late_by:
            await asyncio.sleep(0.01)
        await peers[3].start()
        tasks.append(asyncio.create_task(peers[3].run()))
        summaries = await asyncio.gather(*tasks)
        return summaries, [p.learner.vector().clone() for p in peers]

    summaries, vectors = run_simulated(scenario())
    assert [s["component"] for s in summaries] == [[0, 1, 2, 3]] * 4
    assert all(torch.equal(vectors[0], v) for v in vectors[1:])


def test_a_crowd_of_joiners_leaves_the_view_and_the_address_book_bounded(tmp_path):
    """300 distinct identities join one open-mode peer: each is admitted (open mode), but the
    view keeps view_size entries and the transport's address book stays bounded (the joiners'
    addresses are forgotten once they are neither in the view nor neighbours)."""
    from node.peer.membership import ADDRESS_BOOK

    config = peer_config(0, 1, tmp_path, 1, dynamic_membership=True, trust_mode="open",
                         view_size=8)

    async def scenario():
        peer = Peer(config, data=digits_data(), log=JsonLog(0, stream=io.StringIO()))
        await peer.start()
        statuses = []
        try:
            for i in range(1, 301):
                joiner = Identity(i, Ed25519PrivateKey.generate())
                d = descriptor(joiner, f"http://127.0.0.1:{1 + i % 3}", peer.membership.now_ms())
                body = joiner.seal(encode_control(Control("join", i, 0, (d,))))
                statuses.append((await peer.handle(body))[0])
            return statuses, len(peer.membership.view), len(peer.transport.peers)
        finally:
            await peer.close()

    statuses, view, book = asyncio.run(scenario())
    assert statuses == [200] * 300
    assert view == 8 and book <= ADDRESS_BOOK + 8 + 1


def test_the_merge_covers_the_late_joiner_and_not_the_peer_that_left(tmp_path):
    """Open membership, simulated clock: a 4-peer ring; peer 4 joins through peer 0 at round 8,
    peer 3 stops cleanly (SIGTERM's path: it says leave) at round 14; everyone else trains to
    round 24 and merges. Every finishing peer's component is exactly {0, 1, 2, 4}, and they end
    with the same model."""
    def make(hub, i, neighbours, bootstrap=()):
        c = peer_config(i, 5, tmp_path, 24, algorithm="dfedavg", dynamic_membership=True,
                        deadline_floor_s=0.2, deadline_ceiling_s=2.0)
        c.neighbours = {j: "http://in-memory" for j in neighbours}
        c.membership.bootstrap = list(bootstrap)
        return Peer(c, transport=hub.transport(i), data=digits_data(),
                    runtime=Runtime.simulated_clock(work_s=0.05),
                      log=JsonLog(i, stream=io.StringIO()))

    async def scenario():
        hub = InMemoryHub()
        peers = {i: make(hub, i, [(i - 1) % 4, (i + 1) % 4]) for i in range(4)}
        for p in peers.values():
            await p.start()
        tasks = {i: asyncio.create_task(p.run()) for i, p in peers.items()}
        while peers[0].completed_rounds < 8:
            await asyncio.sleep(0.01)
        peers[4] = make(hub, 4, [], bootstrap=["mem://0"])
        await peers[4].start()
        tasks[4] = asyncio.create_task(peers[4].run())
        while peers[3].completed_rounds < 14:
            await asyncio.sleep(0.01)
        peers[3].request_stop()
        summaries = dict(zip(tasks, await asyncio.gather(*tasks.values())))
        return summaries, {i: p.learner.vector().clone() for i, p in peers.items()}

    summaries, vectors = run_simulated(scenario())
    assert summaries[3]["state"] == "stopped"
    finishing = [0, 1, 2, 4]
    assert [summaries[i]["component"] for i in finishing] == [finishing] * 4
    assert all(torch.equal(vectors[0], vectors[i]) for i in finishing)


def test_a_yes_that_would_exceed_max_links_is_undone_with_an_unlink(tmp_path):
    """Edges accepted while a link request is in flight count: a peer that reached max_links
    meanwhile does not count the new edge and tells the other end (unlink), so no peer ends
    above max_links (study_membership saw one at 11 of 10)."""
    config = peer_config(0, 1, tmp_path, 1, dynamic_membership=True, max_links=2, links=2)

    async def scenario():
        hub = InMemoryHub()
        peer = Peer(config, transport=hub.transport(0), data=digits_data(),
                    log=JsonLog(0, stream=io.StringIO()))
        await peer.start()
        told: list[str] = []

        async def other(body: bytes):
            told.append(decode_control(TrustStore(mode="modelled").open(body).payload).kind)
            if told[-1] == "link":  # says yes; meanwhile two others linked to the asker
                peer.add_neighbour(7)
                peer.add_neighbour(8)
            return 200, "ok"

        hub.handlers[5] = other
        try:
            linked = await peer.membership.link(Descriptor(5, "mem://5", peer.membership.now_ms()))
            await asyncio.gather(*list(peer.exchange.sends))
            return linked, sorted(peer.neighbours), told
        finally:
            await peer.close()

    linked, neighbours, told = run_simulated(scenario())
    assert not linked and neighbours == [7, 8]
    assert told == ["link", "unlink"]


def test_a_gone_list_of_peers_already_merged_is_not_news_for_ever(tmp_path):
    """From step 1 both neighbours report 3 as gone, but 3's model is already known (it came at
    step 0).
    That is nothing new: the merge ends. (Comparing the report with the unfiltered list made
    every step 'new' for ever: two peers of a 64-peer ring flooded 14,000 steps.)"""
    config = peer_config(1, 4, tmp_path, 3, algorithm="dfedavg", deadline_floor_s=0.2,
                         deadline_ceiling_s=1.0)
    config.neighbours = {0: "http://in-memory", 2: "http://in-memory"}

    def answer(j, step, length):
        vectors = [(j, torch.full((length,), float(j)))] if step == 0 else []
        if j == 2 and step == 0:
            vectors.append((3, torch.full((length,), 3.0)))
        return Message("merge", j, 3, step, 1, vectors, "f32", False,
                       {o: (b"", b"") for o, _ in vectors}, gone=(3,) if step else ())

    merged, _ = merge_with_fake_neighbours(config, answer)
    assert merged["component"] == [0, 1, 2, 3]
    assert merged["flood_steps"] < 10


def test_a_peer_behind_its_neighbours_jumps_to_their_flood_step(tmp_path):
    """The neighbours entered the merge earlier: each answers peer 1's message (of whatever
    step) with its own next step, 10 and more ahead. Peer 1 jumps to their step and ends within
    a few ceilings; waiting at its own step, it timed out every step and never ended (a 64-peer
    ring crawled at one step per ceiling for minutes)."""
    config = peer_config(1, 4, tmp_path, 3, algorithm="dfedavg", deadline_floor_s=0.2,
                         deadline_ceiling_s=1.0)
    config.neighbours = {0: "http://in-memory", 2: "http://in-memory"}
    their_step = {0: 10, 2: 10}

    def answer(j, step, length):
        mine = their_step[j]
        their_step[j] += 1
        vectors = [(j, torch.full((length,), float(j)))] if mine == 10 else []
        return Message("merge", j, 3, mine, 1, vectors, "f32", False,
                       {o: (b"", b"") for o, _ in vectors})

    merged, seconds = merge_with_fake_neighbours(config, answer, limit=200)
    assert merged["component"] == [0, 1, 2]
    assert merged["flood_steps"] >= 10  # it went on from their step, not from 0
    assert seconds < 3 * config.gossip.deadline_ceiling_s


def test_a_merge_message_far_ahead_neither_stalls_nor_spins_the_merge(tmp_path):
    """Neighbour 0 is hostile: its first merge message claims flood step 2**62 (the largest a
    message can carry). Peer 1 drops it (no honest neighbour is 2**20 steps ahead), neither
    moves to a step its own messages could not carry nor spins on it, and ends with 0 and 2
    once they answer normally. (Refusing such messages instead let a peer that one had moved
    ahead be refused by its honest neighbours for ever; following it unclamped ran the step
    past what a message can carry.)"""
    config = peer_config(1, 4, tmp_path, 3, algorithm="dfedavg", deadline_floor_s=0.2,
                         deadline_ceiling_s=1.0)
    config.neighbours = {0: "http://in-memory", 2: "http://in-memory"}
    replies = {0: 0, 2: 0}

    def answer(j, step, length):
        replies[j] += 1
        if j == 0 and replies[j] == 1:
            return Message("merge", 0, 3, 2**62, 1, [], "f32", False)
        first = (j == 0 and replies[j] == 2) or (j == 2 and replies[j] == 1)
        vectors = [(j, torch.full((length,), float(j)))] if first else []
        return Message("merge", j, 3, step, 1, vectors, "f32", False,
                       {o: (b"", b"") for o, _ in vectors})

    merged, seconds = merge_with_fake_neighbours(config, answer, limit=200)
    assert merged["component"] == [0, 1, 2]
    assert merged["flood_steps"] < 100
    assert seconds < 5 * config.gossip.deadline_ceiling_s


def test_the_state_a_donor_sends_is_a_snapshot_of_its_model(tmp_path):
    """A donor may go on training in its worker thread while it serves a joiner: the model it
    seals must not change under the envelope (hashed, then copied into the body). The live
    parameters did, and a joiner of tests/test_launch.py refused its donor's state with 401
    'bad signature'. Here the parameters change right after the message is built."""
    config = peer_config(0, 2, tmp_path, 3, algorithm="dfedavg", dynamic_membership=True)
    config.neighbours = {1: "http://in-memory"}

    async def scenario():
        hub = InMemoryHub()
        peer = Peer(config, transport=hub.transport(0), data=digits_data(),
                    runtime=Runtime.simulated_clock(),
                    log=JsonLog(0, stream=io.StringIO()))
        sealed = []
        body = peer.exchange.seal

        def capture(message):
            sent = message.vectors[0][1]
            sealed.append((sent, sent.clone()))
            with torch.no_grad():
                peer.learner.model.params.add_(1.0)  # a training step meanwhile
            return body(message)

        async def joiner(received: bytes):
            return 200, "ok"

        peer.exchange.seal = capture
        hub.handlers[1] = joiner
        peer.membership.serving += 1  # as accepting the request does; donate gives it back
        await peer.membership.donate(1)
        await peer.close()
        return sealed

    [(sent, at_build)] = run_simulated(scenario())
    assert torch.equal(sent, at_build)
