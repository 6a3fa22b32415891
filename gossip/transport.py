"""One transport interface, two implementations: HTTP over aiohttp, and in-memory.

A transport delivers opaque message bytes to a peer id and hands received bytes to the owner's
handler, which answers with an HTTP-style (status, reason). Every send is bounded by a timeout;
a peer that is not reachable yet (still starting) is retried with backoff until the timeout, and a
dead one costs at most that timeout -- never an unbounded wait (hivemind's rule).

Errors a send survives (refused connections, timeouts, dropped keep-alive connections) are logged
at debug level on this module's ``logging`` logger, never with the bytes received.
"""

from __future__ import annotations

import asyncio
import errno
import logging
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

logger = logging.getLogger(__name__)


class ListenError(OSError):
    """The transport cannot serve on its address (in use, not this machine's, not allowed);
    the message names the address: ``cannot listen on HOST:PORT: address already in use``."""

    def __init__(self, host: str, port: int, cause: OSError):
        reason = {errno.EADDRINUSE: "address already in use",
                  errno.EADDRNOTAVAIL: "address not available on this machine",
                  errno.EACCES: "permission denied"}.get(
            cause.errno, (cause.strerror or str(cause)).lower())
        super().__init__(cause.errno, f"cannot listen on {host}:{port}: {reason}")
        self.host, self.port = host, port

    def __str__(self) -> str:
        return self.strerror


LENGTH_HEADER = "X-Model-Length"  # the receiver's model length, on a 422 answer


class Transport(ABC):
    """Send bytes to peers by id; deliver received bytes to a handler.

    ``model_length`` (set by the owner) is announced when a message is refused with 422, so a
    sender whose model has another size learns the receiver's; what senders learn that way is
    in ``peer_lengths`` (a bounded integer, never other received text)."""

    model_length: int | None = None
    peer_lengths: dict[int, int]

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
        self.lengths: dict[int, int | None] = {}
        self.down_links: set[frozenset[int]] = set()

    def transport(self, node_id: int) -> InMemoryTransport:
        return InMemoryTransport(self, node_id)


class InMemoryTransport(Transport):
    def __init__(self, hub: InMemoryHub, node_id: int):
        self.hub, self.node_id = hub, node_id
        self.peer_lengths = {}

    async def start(self, handler: Handler, routes: dict[str, GetRoute] | None = None) -> None:
        self.hub.handlers[self.node_id] = handler
        self.hub.lengths[self.node_id] = self.model_length

    async def send(self, peer: int, body: bytes, timeout: float, retry: bool = True
                   ) -> int | None:
        handler = self.hub.handlers.get(peer)
        if handler is None or frozenset((self.node_id, peer)) in self.hub.down_links:
            return None
        try:
            status, _ = await asyncio.wait_for(handler(body), timeout)
        except asyncio.TimeoutError:
            logger.debug("send from %s to %s: no answer within %.3gs", self.node_id, peer, timeout)
            return None
        if status == 422 and self.hub.lengths.get(peer) is not None:
            self.peer_lengths[peer] = self.hub.lengths[peer]
        return status

    async def close(self) -> None:
        self.hub.handlers.pop(self.node_id, None)


class HttpTransport(Transport):
    """aiohttp server (POST /gossip plus GET routes) and one pooled client session."""

    def __init__(self, host: str, port: int, max_body: int, *,
                 peers: dict[int, str] | None = None):
        self.host, self.port, self.max_body = host, port, max_body
        self.peers: dict[int, str] = dict(peers or {})
        self.peer_lengths = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_peers(self, peers: dict[int, str]) -> None:
        self.peers = {k: v.rstrip("/") for k, v in peers.items()}

    async def start(self, handler: Handler, routes: dict[str, GetRoute] | None = None) -> None:
        async def gossip(request: web.Request) -> web.Response:
            if request.headers.get("Content-Encoding", "identity").lower() != "identity":
                # peers never compress; a compressed body could expand far past the limit
                return web.Response(status=415, text="compressed bodies are refused")
            if request.content_length is not None and request.content_length > self.max_body:
                body = None  # announced too large: refused before a byte of it is read
            else:
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    body = None
            status, reason = await handler(body)
            headers = {LENGTH_HEADER: str(self.model_length)} \
                if status == 422 and self.model_length is not None else None
            return web.Response(status=status, text=reason, headers=headers)

        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/gossip", gossip)
        for path, route in (routes or {}).items():
            app.router.add_get(path, _get_handler(route))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ListenError(self.host, self.port, exc) from exc
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=4))

    async def send(self, peer: int, body: bytes, timeout: float, retry: bool = True
                   ) -> int | None:
        assert self._session is not None, "start() the transport before sending"
        url = self.peers.get(peer)
        if url is None:
            logger.debug("send to %s: no address known", peer)
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
                    announced = response.headers.get(LENGTH_HEADER, "")
                    if response.status == 422 and announced.isdigit() and len(announced) <= 12:
                        self.peer_lengths[peer] = int(announced)
                    return response.status
            except aiohttp.ClientConnectorError as exc:
                if not retry:  # nothing listens there: the peer left
                    logger.debug("send to %s at %s: cannot connect (%s); giving up", peer, url,
                                 _describe(exc))
                    return None
                logger.debug("send to %s at %s: cannot connect (%s); retrying", peer, url,
                             _describe(exc))
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 0.5)
            except aiohttp.ClientConnectionError as exc:
                # a pooled keep-alive connection to a peer that restarted: try a fresh one
                dropped += 1
                logger.debug("send to %s at %s: connection dropped (%s), %d so far", peer, url,
                             type(exc).__name__, dropped)
                if dropped > 2 and not retry:
                    return None
            except asyncio.TimeoutError:
                logger.debug("send to %s at %s: no answer within %.3gs", peer, url, timeout)
                return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


def _describe(exc: OSError) -> str:
    """An OS error's kind (``ECONNREFUSED``...) without its message, which can quote the peer."""
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__


def _get_handler(route: GetRoute):
    async def handle(request: web.Request) -> web.Response:
        content_type, text = await route()
        # aiohttp takes the charset apart ("text/plain; version=1.0.0; charset=utf-8")
        media, _, charset = content_type.partition("; charset=")
        return web.Response(text=text, content_type=media, charset=charset or None)

    return handle
