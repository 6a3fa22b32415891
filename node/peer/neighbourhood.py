"""A peer's neighbourhood: who its neighbours are, which of them are suspect (not waited for),
when each was last heard, the round each claims, and the catch-up vote built on those claims
(docs/algorithms.md §0.7)."""

from __future__ import annotations

import math


def catch_up_target(own_round: int, claims: list[int]) -> int:
    """The round a peer may jump to: the lower median of its own round and the rounds its live
    neighbours claim (docs/algorithms.md §0.7, catch-up). Counting its own round as one vote
    means that one neighbour alone -- lying, or simply ahead -- never moves it: on a line end
    the vote is {own, claim}, whose lower median is its own round; a peer that was down and
    whose neighbours all moved on catches up with them."""
    votes = sorted([own_round, *claims])
    return votes[(len(votes) - 1) // 2]


class Neighbourhood:
    """The neighbours of one peer and what it knows of each.

    ``members`` are counted in the mixing weights (open membership adds and drops them);
    ``suspect`` ones missed a deadline and are not waited for until they speak again;
    ``last_heard`` is when each last sent anything valid; ``claimed`` is the latest round each
    sent a model or merge message of (only messages that passed admission count)."""

    def __init__(self, members: set[int] | list[int]):
        self.members: set[int] = set(members)
        self.suspect: set[int] = set()
        self.last_heard: dict[int, float] = {}
        self.claimed: dict[int, int] = {}

    def __contains__(self, j: object) -> bool:
        return j in self.members

    def __len__(self) -> int:
        return len(self.members)

    @property
    def degree(self) -> int:
        return len(self.members)

    def live(self) -> set[int]:
        """Neighbours not suspected of being down."""
        return self.members - self.suspect

    def add(self, j: int, *, now: float) -> None:
        """Count ``j`` from now on; the edge's start counts as a sign of life."""
        self.members.add(j)
        self.last_heard.setdefault(j, now)

    def drop(self, j: int) -> bool:
        """Stop counting ``j``; False when it was not a neighbour."""
        if j not in self.members:
            return False
        self.members.discard(j)
        self.suspect.discard(j)
        self.claimed.pop(j, None)
        self.last_heard.pop(j, None)
        return True

    def heard(self, j: int, *, now: float) -> None:
        self.last_heard[j] = now

    def heard_within(self, j: int, seconds: float, *, now: float) -> bool:
        """``j`` sent anything valid in the last ``seconds``."""
        return self.last_heard.get(j, -math.inf) >= now - seconds

    def claim(self, j: int, round_index: int) -> bool:
        """``j`` sent a message of ``round_index``; True when that is later than its claim."""
        if round_index <= self.claimed.get(j, -1):
            return False
        self.claimed[j] = round_index
        return True

    def suspect_of(self, j: int) -> None:
        self.suspect.add(j)

    def cleared(self, j: int) -> bool:
        """``j`` spoke: it is not suspect any more; True when it was."""
        if j not in self.suspect:
            return False
        self.suspect.discard(j)
        return True

    def catch_up_to(self, round_index: int) -> int:
        """``catch_up_target`` over the neighbours' claimed rounds (suspects too: one that ran
        ahead while this peer did not wait for it is exactly the one to catch up with; a dead
        one's old claim only makes the vote more cautious)."""
        return catch_up_target(round_index, list(self.claimed.values()))

    def lagging(self, round_index: int) -> bool:
        """True when most of the neighbourhood is two or more rounds ahead: they finished round
        ``round_index + 1`` without this peer's messages, so they timed out on us (we were
        down). One round ahead is normal: that neighbour heard us and moved on first."""
        return self.catch_up_to(round_index) >= round_index + 2

    def behind(self, round_index: int) -> list[int]:
        """Neighbours that claim a round two or more before ``round_index``."""
        return sorted(j for j in self.members
                      if self.claimed.get(j, round_index) <= round_index - 2)

    def ahead(self, round_index: int, *, recent: float, now: float) -> bool:
        """True when most neighbours heard within ``recent`` seconds claim a round two or more
        behind ``round_index``: this peer would train on alone, its messages beyond their
        window (the mirror of ``lagging``)."""
        claims = [self.claimed[j] for j in self.members
                  if j in self.claimed and self.heard_within(j, recent, now=now)]
        behind = sum(1 for claim in claims if claim <= round_index - 2)
        return 2 * behind > len(self.members)
