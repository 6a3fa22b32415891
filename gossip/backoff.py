"""One backoff helper for every retry loop of the project: doubling waits with a cap, never past
a deadline.

Four loops (the transport's connect retries, a joiner's introductions, its links and its state
requests) each had their own constants and their own arithmetic; their schedules are now named
here, next to each other, so that a change of policy is made in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Waits of ``first``, ``2 first``, ``4 first`` ... seconds, at most ``cap`` each.

    ``delay(left)`` gives the next wait, cut to the ``left`` seconds before the caller's
    deadline (so the last wait ends at the deadline, never after it), and doubles the one after.
    """

    first: float
    cap: float
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"Backoff: first ({self.first}) must be > 0 and <= cap "
                             f"({self.cap})")
        self._next = self.first

    def delay(self, left: float = math.inf) -> float:
        """The next wait in seconds, at most ``left`` (and never negative)."""
        wait = max(0.0, min(self._next, left))
        self._next = min(2 * self._next, self.cap)
        return wait

    def peek(self) -> float:
        """The next wait, without using it up."""
        return self._next


def connect_retry() -> Backoff:
    """A send to a peer that is not listening yet (it may still be starting): short waits."""
    return Backoff(first=0.02, cap=0.5)


def join_introduction() -> Backoff:
    """A joiner's rounds of introductions to its bootstrap peers (they may be restarting)."""
    return Backoff(first=0.2, cap=5.0)


def join_retry() -> Backoff:
    """A joiner's link requests and state requests (its neighbours may all be busy donors)."""
    return Backoff(first=0.2, cap=2.0)
