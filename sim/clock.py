"""A simulated clock for asyncio: time stands still while code runs and jumps to the next timer
when every task waits.

``VirtualClockLoop`` is an ordinary selector event loop whose ``time()`` is a counter. Its
selector first polls real I/O without blocking; if nothing is ready and the loop asked to wait
``timeout`` seconds for its next timer, it adds ``timeout`` to the counter instead of sleeping.
Deadlines, ``asyncio.sleep`` and ``wait_for`` therefore behave exactly as on a real clock, but a
run costs only its computation, and the same program gives the same timeline every time. Work
must run on the loop's thread (a worker thread's result would arrive "instantly" in simulated
time only by luck), which is why ``node.peer.Peer`` runs on ``Runtime.simulated_clock()``
here (node.peer.runtime).
"""

from __future__ import annotations

import asyncio
import selectors


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.next_timer = lambda: None

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("simulated clock: every task waits and no timer is set "
                               "(a deadlock in simulated time)")
        # Jump exactly to the next timer: ``now + timeout`` can round to just below it (or, for
        # tiny timeouts, to ``now`` itself), and the loop would then spin without time passing.
        self.now = max(self.now + timeout, self.next_timer() or 0.0)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)
        # the loop's timer heap is private; TimerHandle.when() is public
        self._jumping.next_timer = lambda: self._scheduled[0].when() if self._scheduled else None

    def time(self) -> float:
        return self._jumping.now


def run_simulated(coroutine):
    """Run ``coroutine`` to completion on a fresh ``VirtualClockLoop``."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coroutine)
