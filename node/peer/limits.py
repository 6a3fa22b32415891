"""Rate limits per sender (IPv8 rate-limits every peer): a token bucket for each neighbour, one
shared bucket for senders that are not neighbours (checked before their signature costs
anything), and a bounded LRU of buckets for the non-neighbours that signed."""

from __future__ import annotations

from collections import OrderedDict

# envelopes per second from senders that are not neighbours, checked before their signature
# (open membership: joiners, shuffles); each such sender is limited further after it
STRANGER_RATE = 200.0
OTHER_RATE = 20.0  # messages per second from one signed peer that is not a neighbour
MAX_OTHER_BUCKETS = 1024  # rate-limit buckets kept for peers that are not neighbours


class TokenBucket:
    """``rate`` events per second with bursts of ``burst``; ``take(now)`` says whether one more
    is allowed."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at: float | None = None  # when the last event was asked for; None: never

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RateLimits:
    """Every bucket of one peer. ``neighbour_rate`` is [gossip] max_messages_per_s."""

    def __init__(self, neighbours: set[int], *, neighbour_rate: float):
        self.neighbour_rate = neighbour_rate
        self.neighbours = {j: self._neighbour_bucket() for j in neighbours}
        self.strangers = TokenBucket(STRANGER_RATE, 2 * STRANGER_RATE)
        self.others: OrderedDict[int, TokenBucket] = OrderedDict()

    def _neighbour_bucket(self) -> TokenBucket:
        return TokenBucket(self.neighbour_rate, 2 * self.neighbour_rate)

    def add(self, j: int) -> None:
        self.neighbours[j] = self._neighbour_bucket()

    def drop(self, j: int) -> None:
        self.neighbours.pop(j, None)

    def stranger_allowed(self, now: float) -> bool:
        """One more envelope from a sender that is not a neighbour (before its signature)."""
        return self.strangers.take(now)

    def allowed(self, sender: int, now: float) -> bool:
        """One more message from a sender whose signature verified."""
        bucket = self.neighbours.get(sender)
        if bucket is None:
            bucket = self.others.get(sender)
            if bucket is None:
                bucket = self.others[sender] = TokenBucket(OTHER_RATE, 2 * OTHER_RATE)
                if len(self.others) > MAX_OTHER_BUCKETS:
                    self.others.popitem(last=False)
            self.others.move_to_end(sender)
        return bucket.take(now)
