"""The inbox of a peer: messages buffered by slot until the round loop collects them, the
window of slots it accepts, and the replay guard (docs/algorithms.md §0.7).

A slot is named by ``SlotKey(kind, round, step)``. What the window accepts:

- model messages of the step being collected or later, up to the round after the current one
  (or after the round the peer is about to catch up to, or, while joining, the round its new
  neighbours claim);
- history records (SybilWall) of the last ``HISTORY_ROUNDS`` rounds and the next one;
- merge messages of the run's last round, any flood step (peers enter the merge at different
  times; ``per_sender`` bounds what is kept).

A sender may send each (kind, round, step) once (a history record: once per origin), and at
most ``per_sender`` of its messages wait in the inbox at any time."""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from gossip.messages import Message

# history records (SybilWall's gossip) of up to this many rounds back are accepted: the rule
# compares models of the same round over a window of 8 rounds (mixing.SybilWall, window)
HISTORY_ROUNDS = 8


class SlotKey(NamedTuple):
    """Where a message waits: its kind, round and (gossip or flood) step."""

    kind: str
    round: int
    step: int

    @classmethod
    def of(cls, message: Message) -> SlotKey:
        return cls(message.kind, message.round, message.step)


def replay_key(message: Message) -> tuple:
    """What a sender may send once: its slot, and for a history record also its origin (one
    neighbour gossips records of several origins of the same round)."""
    if message.kind == "history":
        return (*SlotKey.of(message), message.vectors[0][0])
    return tuple(SlotKey.of(message))


def window_refusal(message: Message, *, position: tuple[int, int], base_round: int,
                   gossip_steps: int, rounds: int) -> str | None:
    """Why ``message`` is outside the window of a peer collecting ``position`` (round, step),
    whose rounds count from ``base_round`` (its own, or the one it is about to catch up to);
    None when it is inside. The reasons are this module's own words, never the message's."""
    if message.kind == "model":
        if (message.round, message.step) < position:
            return "stale: an earlier step than this peer collects"
        if message.round > base_round + 1 or message.step >= gossip_steps:
            return "outside the window: rounds beyond the next are not buffered"
    elif message.kind == "history":
        if not position[0] - HISTORY_ROUNDS < message.round <= position[0] + 1:
            return "outside the window: a history record of another round"
    elif message.round != rounds:
        return "a merge message of another run length"
    return None


class Inbox:
    """Buffered messages by slot and sender, with the replay guard; bounded per sender."""

    def __init__(self, *, per_sender: int):
        self.per_sender = per_sender
        self.slots: dict[SlotKey, dict[int, Message]] = defaultdict(dict)
        self.seen: dict[int, set[tuple]] = defaultdict(set)

    def replayed(self, message: Message) -> bool:
        """``message.sender`` already sent this slot (or this history origin)."""
        return replay_key(message) in self.seen[message.sender]

    def remember(self, message: Message) -> None:
        """Mark ``message``'s slot as received from its sender (before it is buffered or
        used, so a replay is refused even when the first copy was not kept)."""
        self.seen[message.sender].add(replay_key(message))

    def full_for(self, sender: int) -> bool:
        """``sender`` already has ``per_sender`` messages waiting."""
        return sum(sender in got for got in self.slots.values()) >= self.per_sender

    def put(self, message: Message) -> None:
        self.slots[SlotKey.of(message)][message.sender] = message

    def senders(self, key: SlotKey) -> set[int]:
        """Who has a message waiting in ``key``."""
        return set(self.slots.get(key, {}))

    def take(self, key: SlotKey) -> dict[int, Message]:
        """Remove and return the slot ``key`` (sender -> message)."""
        return self.slots.pop(key, {})

    def drop_sender(self, sender: int) -> None:
        """Forget what ``sender`` has waiting (it is no neighbour any more)."""
        for got in self.slots.values():
            got.pop(sender, None)

    def forget_before(self, round_index: int) -> None:
        """Drop the replay guard's and the inbox's entries of rounds before ``round_index``
        (they can never be collected), which keeps both bounded. A history record's guard
        lives ``HISTORY_ROUNDS`` longer, as long as the window accepts it."""
        def expired(key: tuple) -> bool:
            slot = SlotKey(*key[:3])
            kept = HISTORY_ROUNDS if slot.kind == "history" else 0
            return slot.kind != "merge" and slot.round < round_index - kept

        for seen in self.seen.values():
            seen.difference_update([k for k in seen if expired(k)])
        for key in [k for k in self.slots if k.kind != "merge" and k.round < round_index]:
            del self.slots[key]

    # -- the merge's flood steps (node/peer/merge.py) ------------------------------------

    def merge_steps(self) -> list[int]:
        """The flood steps that have merge messages waiting."""
        return [k.step for k in self.slots if k.kind == "merge"]

    def drop_merge_beyond(self, step: int) -> None:
        """Drop merge messages of flood steps after ``step`` (no honest neighbour is there)."""
        for key in [k for k in self.slots if k.kind == "merge" and k.step > step]:
            del self.slots[key]

    def take_merge_before(self, step: int) -> list[Message]:
        """Remove and return the merge messages of flood steps before ``step`` (late ones)."""
        late = [k for k in self.slots if k.kind == "merge" and k.step < step]
        return [m for k in late for m in self.slots.pop(k).values()]

    def answered_later(self, key: SlotKey, *, within: int) -> set[int]:
        """Senders with a message of a later step of ``key``'s kind and round, at most
        ``within`` steps later: they have moved past ``key``."""
        return {j for k, got in self.slots.items() if k[:2] == key[:2] and
                key.step < k.step <= key.step + within for j in got}
