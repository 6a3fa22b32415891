"""Where a peer runs: its clock, where its blocking work runs, and whether its network vouches
for senders. One object for what the simulator changes, instead of three signals (an ``inline``
flag, an isinstance check of the transport, ``mem://`` addresses). The transport declares the
third (``Transport.vouches_for_senders``); ``Peer`` puts it here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Runtime:
    """A real peer (``Runtime.real()``) trains in a worker thread on the wall clock and checks
    every signature; a simulated one (``Runtime.simulated(work_s=...)``, the simulator's peers
    engine on sim.clock.VirtualClockLoop) trains on the event loop's thread and then lets
    ``work_s`` of simulated time pass (work in a thread would take no simulated time at all),
    dates descriptors by the simulated clock, and trusts its in-memory network to say who sent
    a message (what a signature proves on a real one). ``vouched`` alone (tests: real threads
    over the in-memory network) skips keys and signatures only."""

    simulated: bool = False
    work_s: float = 0.0
    vouched: bool = False
    name: str = "peer"
    _executor: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    @classmethod
    def real(cls, *, name: str = "peer", vouched: bool = False) -> Runtime:
        """Wall clock, a worker thread; ``vouched`` when the network says who sent what."""
        return cls(simulated=False, vouched=vouched, name=name)

    @classmethod
    def simulated_clock(cls, *, work_s: float = 0.0) -> Runtime:
        """The simulator's peers engine: simulated clock, work inline, in-memory network."""
        return cls(simulated=True, work_s=work_s, vouched=True)

    @staticmethod
    def now() -> float:
        """The event loop's clock: time.monotonic() for a real peer, simulated time in sim."""
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        """Milliseconds that peers on different machines can compare (descriptor times): the
        wall clock, or the simulated clock in the simulator."""
        if self.simulated:
            return int(self.now() * 1000)
        return int(time.time() * 1000)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` off the event loop (a real peer), or on it and then let ``work_s``
        of simulated time pass (a simulated one)."""
        if self.simulated:
            result = fn(*args)
            await asyncio.sleep(self.work_s)
            return result
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for the worker thread's last job and release it."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
