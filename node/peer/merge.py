"""The final global merge's state (docs/algorithms.md §5.4): flood every model through the live
component, then take the exact average.

Each flood step a peer sends every neighbour the models it has not yet seen that neighbour
hold (not delivered to it, nor received from it), so a message lost to a neighbour that was
restarting is simply sent again. A step in which every live neighbour answered and nothing new
arrived proves the peer knows its whole component (the known set grows by one hop per step
until it stops growing); the peer then sends a last ``final`` message and stops. A step with a
timeout proves nothing, so flooding goes on; merge messages that arrive late are still used.

Agreement among peers that reach the merge at different times: "nothing new" only proves
completeness once every member of the component is flooding. So each merge message also
carries ``waiting`` -- the ids whose model its sender still waits for: its own live neighbours
not yet heard in the merge (still training their last rounds) plus what its neighbours
reported -- and ``gone``, the neighbours some peer found dead (not heard within the ceiling; a
neighbour that left is dropped before the merge and never waited for). A peer finalises only
when, besides the rule above, nobody it knows of is waited for. ``gone`` only grows, so a dead
peer's ``waiting`` entries cannot circulate for ever.

``FloodMerge`` holds that state and its rules; the peer drives it (node/peer/protocol.py
``Peer.final_merge``: send ``messages``, collect, ``absorb``), so it is tested with fake
neighbours and no sockets (tests/test_peer_parts.py)."""

from __future__ import annotations

import torch

from gossip import Message
from gossip.messages import MAX_IDS
from mixing import component_average
from node.peer.inbox import Inbox

# The most flood steps a merging peer moves ahead at once to meet a neighbour's later step.
# Unclamped, one hostile neighbour's message at step 2**62 would carry a peer to the wire's
# integer limit, past which it could send nothing; clamped, it takes 2**42 steps. Refusing
# far-ahead messages instead would stall the merge: a peer a hostile message had moved ahead
# would be refused by its honest neighbours for ever (found in review). Honest neighbours are
# never near the bound: one that waits for a peer still training advances one step per
# deadline ceiling.
MERGE_STEPS_AHEAD = 2**20


class FloodMerge:
    """The flood merge of one peer: what it knows, what each neighbour holds, who finished,
    who is gone, and what each neighbour reported waiting for."""

    def __init__(self, *, own_id: int, own: torch.Tensor, proof: tuple[bytes, bytes],
                 merge_round: int, neighbours: set[int]):
        self.own_id, self.merge_round = own_id, merge_round
        self.known: dict[int, torch.Tensor] = {own_id: own}
        self.proofs: dict[int, tuple[bytes, bytes]] = {own_id: proof}
        self.holds: dict[int, set[int]] = {j: {j} for j in neighbours}  # what j is known to have
        self.finished: set[int] = set()
        self.gone: set[int] = set()
        self.reported: dict[int, set[int]] = {}  # each neighbour's latest waiting list
        self.new_last_step, self.complete = True, False

    def live(self, neighbours: set[int], suspect: set[int]) -> set[int]:
        """Neighbours expected to answer this step: not suspect, not finished."""
        return neighbours - suspect - self.finished

    def waiting(self, neighbours: set[int], suspect: set[int]) -> set[int]:
        """The ids whose model this peer still waits for: live neighbours not heard in the merge
        and what live neighbours reported. Only live neighbours' reports count: one that went
        silent or finished holds nobody up (with every neighbour silent, a dead one's last list
        made the loop spin without a wait, sending to dead peers until memory ran out:
        tests/test_launch.py's churn run in a fresh clone)."""
        live = self.live(neighbours, suspect)
        heard = set().union(*(self.reported[j] for j in live if j in self.reported))
        return ({j for j in live if j not in self.known} | heard) - set(self.known) - self.gone

    def is_final(self, step: int, waits: set[int]) -> bool:
        """Every live neighbour answered the last step with nothing new, and nobody is waited
        for: this peer knows its whole component."""
        return step > 0 and not self.new_last_step and self.complete and not waits

    def messages(self, step: int, *, neighbours: set[int], waits: set[int], final: bool
                 ) -> list[tuple[int, Message, list[int]]]:
        """(neighbour, message, origins it carries) for every unfinished neighbour -- suspects
        too: they may be back -- with the models it is not known to hold."""
        out = []
        for j in sorted(neighbours - self.finished):
            held = self.holds.setdefault(j, {j})
            origins = sorted(set(self.known) - held)
            out.append((j, Message(
                "merge", self.own_id, self.merge_round, step, len(neighbours),
                [(o, self.known[o]) for o in origins], "f32", final,
                {o: self.proofs[o] for o in origins},
                waiting=tuple(sorted(waits)[:MAX_IDS]),
                gone=tuple(sorted(self.gone)[:MAX_IDS])), origins))
        return out

    def held_by(self, j: int) -> set[int]:
        """What ``j`` is known to hold (updated in place when a tracked send is accepted)."""
        return self.holds.setdefault(j, {j})

    def catch_up(self, step: int, inbox: Inbox) -> int:
        """The step to collect next: ``step``, or a later one a neighbour's message is already
        at (it waits for this peer's message of *its* step), up to MERGE_STEPS_AHEAD further;
        messages beyond that are no honest neighbour's and are dropped. Staying at its own
        step, each timed out every step and the two never aligned (a 64-peer ring crawled at
        one step per ceiling for minutes)."""
        inbox.drop_merge_beyond(step + MERGE_STEPS_AHEAD)
        return max(step, max(inbox.merge_steps(), default=0))

    def absorb(self, messages: list[Message], *, expected: set[int], answered: set[int],
               dead: set[int]) -> None:
        """Take one step's messages (and late ones of earlier steps). ``expected`` were waited
        for, ``answered`` answered in time, ``dead`` timed out without a sign of life."""
        # complete only if every neighbour expected at the start of the step answered: one
        # that timed out proves nothing (found by scripts/soak.py: a peer finalised without
        # the neighbour whose message arrived a millisecond late)
        self.complete = expected <= answered
        self.new_last_step = False
        if not dead <= self.gone:
            self.gone |= dead
            self.new_last_step = True
        for message in sorted(messages, key=lambda m: (m.sender, m.step)):
            self._absorb_one(message)

    def _absorb_one(self, message: Message) -> None:
        if message.final:
            self.finished.add(message.sender)
        self.reported[message.sender] = set(message.waiting)
        # news only if it adds someone (an id already known is not news: comparing with the
        # unfiltered list made two peers call every step new, for ever)
        fresh = set(message.gone) - set(self.known) - self.gone
        if fresh:
            self.gone |= fresh
            self.new_last_step = True
        for origin, vector in message.vectors:
            self.holds.setdefault(message.sender, {message.sender}).add(origin)
            if origin not in self.known:
                self.known[origin] = vector
                self.proofs[origin] = message.proofs[origin]
                self.new_last_step = True

    @property
    def component(self) -> list[int]:
        return sorted(self.known)

    def average(self) -> torch.Tensor:
        """The exact average of the component's models (float64, in id order: every member
        computes the same bits)."""
        return component_average(self.known, [self.component])[self.own_id]
