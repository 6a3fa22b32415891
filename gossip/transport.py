"""One transport interface, two implementations: HTTP over aiohttp, and in-memory.

A transport delivers opaque message bytes to a peer id and hands received bytes to the owner's
handler, which answers with an HTTP-style (status, reason). Every send is bounded by a timeout;
a peer that is not reachable yet (still starting) is retried with backoff until the timeout, and a
dead one costs at most that timeout -- never an unbounded wait (hivemind's rule).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

# Receives the body, or None when the transport refused a body over its size limit (so that the
# owner still logs and counts the rejection); answers (status, reason).
Handler = Callable[[bytes | None], Awaitable[tuple[int, str]]]
# path -> coroutine returning (content type, body text) for GET endpoints
GetRoute = Callable[[], Awaitable[tuple[str, str]]]


class Transport(ABC):
    """Send bytes to peers by id; deliver received bytes to a handler."""

    @abstractmethod
    async def start(self, handler: Handler, routes: dict[str, GetRoute] | None = None) -> None:
        """Begin accepting messages (and serving ``routes``, where the transport has any)."""

    @abstractmethod
    async def send(self, peer: int, body: bytes, timeout: float, retry: bool = True
                   ) -> int | None:
        """Deliver ``body`` to ``peer``; the receiver's status, or None if it could not be
        reached within ``timeout`` seconds. With ``retry``, a refused connection (a peer still
        starting) is retried until the timeout; without, it fails at once (a peer that left)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop accepting and release connections."""

    def set_peers(self, peers: dict[int, str]) -> None:  # noqa: B027 - optional hook
        """Where each neighbour listens (ignored by transports that do not need addresses)."""
        return None


class InMemoryHub:
    """The 'network' of in-memory transports in one process: id -> handler. A simulator can
    cut links: a send over a link in ``down_links`` fails as if the peer were unreachable."""

    def __init__(self):
        self.handlers: dict[int, Handler] = {}
        self.down_links: set[frozenset[int]] = set()

    def transport(self, node_id: int) -> InMemoryTransport:
        return InMemoryTransport(self, node_id)


class InMemoryTransport(Transport):
    def __init__(self, hub: InMemoryHub, node_id: int):
        self.hub, self.node_id = hub, node_id

    async def start(self, handler: Handler, routes: dict[str, GetRoute] | None = None) -> None:
        self.hub.handlers[self.node_id] = handler

    async def send(self, peer: int, body: bytes, timeout: float, retry: bool = True
                   ) -> int | None:
        handler = self.hub.handlers.get(peer)
        if handler is None or frozenset((self.node_id, peer)) in self.hub.down_links:
            return None
        try:
            status, _ = await asyncio.wait_for(handler(body), timeout)
        except asyncio.TimeoutError:
            return None
        return status

    async def close(self) -> None:
        self.hub.handlers.pop(self.node_id, None)


class HttpTransport(Transport):
    """aiohttp server (POST /gossip plus GET routes) and one pooled client session."""

    def __init__(self, host: str, port: int, max_body: int, peers: dict[int, str] | None = None):
        self.host, self.port, self.max_body = host, port, max_body
        self.peers: dict[int, str] = dict(peers or {})
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_peers(self, peers: dict[int, str]) -> None:
        self.peers = {k: v.rstrip("/") for k, v in peers.items()}

    async def start(self, handler: Handler, routes: dict[str, GetRoute] | None = None) -> None:
        async def gossip(request: web.Request) -> web.Response:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                body = None
            status, reason = await handler(body)
            return web.Response(status=status, text=reason)

        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/gossip", gossip)
        for path, route in (routes or {}).items():
            app.router.add_get(path, _get_handler(route))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=4))

    async def send(self, peer: int, body: bytes, timeout: float, retry: bool = True
                   ) -> int | None:
        assert self._session is not None, "start() the transport before sending"
        url = self.peers.get(peer)
        if url is None:
            return None
        deadline = time.monotonic() + timeout
        backoff, dropped = 0.02, 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                async with self._session.post(
                        f"{url}/gossip", data=body,
                        timeout=aiohttp.ClientTimeout(total=left)) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientConnectorError:
                if not retry:  # nothing listens there: the peer left
                    return None
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.5)
            except aiohttp.ClientConnectionError:
                # a pooled keep-alive connection to a peer that restarted: try a fresh one
                dropped += 1
                if dropped > 2 and not retry:
                    return None
            except asyncio.TimeoutError:
                return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


def _get_handler(route: GetRoute):
    async def handle(request: web.Request) -> web.Response:
        content_type, text = await route()
        return web.Response(text=text, content_type=content_type)

    return handle
