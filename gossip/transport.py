"""One transport interface, two implementations: HTTP over aiohttp, and in-memory.

A transport delivers opaque message bytes to a peer id and hands received bytes to the owner's
handler, which answers with an HTTP-style (status, reason). Every send is bounded by a timeout;
a peer that is not reachable yet (still starting) is retried with backoff until the timeout, and a
dead one costs at most that timeout -- never an unbounded wait (hivemind's rule).

The HTTP server treats every byte from the network as hostile: it bounds its connections, how long
a request head and a body may take, how many bodies it reads at once and how many bytes of each
(counted as they arrive, not as announced), names no software versions, serves its status
endpoints only to whom ``route_access`` allows, and can speak TLS -- failing closed, never falling
back to plaintext (see ``HttpTransport``, ``server_ssl_context``, ``client_ssl_context``).

Errors a send survives (refused connections, timeouts, dropped keep-alive connections) are logged
at debug level on this module's ``logging`` logger, never with the bytes received.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import os
import resource
import socket
import ssl
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gossip.auth import envelope_sender
from gossip.backoff import connect_retry

# Receives the body, or None when the transport refused a body over its size limit (so that the
# owner still logs and counts the rejection); answers (status, reason).
Handler = Callable[[bytes | None], Awaitable[tuple[int, str]]]
# path -> coroutine returning (content type, body text) for GET endpoints
GetRoute = Callable[[], Awaitable[tuple[str, str]]]

logger = logging.getLogger(__name__)

SERVER_NAME = "decent"  # the Server (and User-Agent) header: no software or versions named
ROUTE_ACCESS = ("loopback", "token", "open")
FD_RESERVE = 64  # descriptors kept free of connections for the process's own files
BODY_CHUNK = 1 << 16  # bodies are read this many bytes at a time at most
LINGER_S = 2.0  # how long an unread body is drained before the connection closes
SHUTDOWN_TIMEOUT_S = 2.0  # what close() grants requests in flight (aiohttp's default: 60 s)


class ListenError(OSError):
    """The transport cannot serve on its address (in use, not this machine's, not allowed);
    the message names the address: ``cannot listen on HOST:PORT: address already in use``."""

    def __init__(self, host: str, port: int, cause: OSError):
        reason = {errno.EADDRINUSE: "address already in use",
                  errno.EADDRNOTAVAIL: "address not available on this machine",
                  errno.EACCES: "permission denied"}.get(
            cause.errno or 0, (cause.strerror or str(cause)).lower())
        super().__init__(cause.errno, f"cannot listen on {host}:{port}: {reason}")
        self.host, self.port = host, port

    def __str__(self) -> str:
        return self.strerror or ""


class TLSConfigError(ValueError):
    """TLS cannot be set up as configured (a file missing, unreadable or not what it should be;
    an https:// neighbour without a client context, or a plaintext one with it). Raised at
    configuration time: the transport never falls back to plaintext."""


LENGTH_HEADER = "X-Model-Length"  # the receiver's model length, on a 422 answer


class Transport(ABC):
    """Send bytes to peers by id; deliver received bytes to a handler.

    ``model_length`` (set by the owner) is announced when a message is refused with 422, so a
    sender whose model has another size learns the receiver's; what senders learn that way is
    in ``peer_lengths`` (a bounded integer, never other received text)."""

    model_length: int | None = None
    peer_lengths: dict[int, int]
    # the network itself says who sent each body (the simulator's hub): no keys needed
    vouches_for_senders: bool = False

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

    def learn(self, peer: int, url: str) -> None:  # noqa: B027 - optional hook
        """Where one more peer listens (open membership: from a verified descriptor)."""
        return None

    def forget(self, peer: int) -> None:  # noqa: B027 - optional hook
        """Drop a peer's address (it left, or was forgotten from the view)."""
        return None

    def address_of(self, peer: int) -> str | None:
        """Where ``peer`` listens, if this transport keeps an address for it (in-memory
        transports keep none)."""
        return None

    def known_peers(self) -> set[int]:
        """The peers this transport keeps an address for."""
        return set()

    def why_unreachable(self, peer: int) -> str | None:
        """Why the last send to ``peer`` was not delivered, in this transport's own words (an
        error kind such as ECONNREFUSED, never text the peer sent); None after a delivery."""
        return None

    @abstractmethod
    async def send_url(self, url: str, body: bytes, timeout: float, retry: bool = True
                       ) -> int | None:
        """``send`` to an address rather than a peer id (a bootstrap peer whose id is not yet
        known)."""

    @property
    def url(self) -> str:
        """Where this transport is reached (what a descriptor announces)."""
        raise NotImplementedError


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
    """A peer of an ``InMemoryHub``: it delivers a body only when its envelope names the
    transport that sent it, which is what a signature proves on a real network."""

    vouches_for_senders = True

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
        claimed = envelope_sender(body)
        if claimed is not None and claimed != self.node_id:
            # the simulated network knows who sends: what a signature proves on a real one
            return 401
        try:
            status, _ = await asyncio.wait_for(handler(body), timeout)
        except asyncio.TimeoutError:
            logger.debug("send from %s to %s: no answer within %.3gs", self.node_id, peer, timeout)
            return None
        length = self.hub.lengths.get(peer)
        if status == 422 and length is not None:
            self.peer_lengths[peer] = length
        return status

    @property
    def url(self) -> str:
        return f"mem://{self.node_id}"

    def why_unreachable(self, peer: int) -> str | None:
        if peer not in self.hub.handlers:
            return "not running"
        if frozenset((self.node_id, peer)) in self.hub.down_links:
            return "link down"
        return None

    async def send_url(self, url: str, body: bytes, timeout: float, retry: bool = True
                       ) -> int | None:
        """In-memory peers are addressed ``mem://ID``."""
        target = url.removeprefix("mem://")
        if not url.startswith("mem://") or not target.isdigit():
            return None
        return await self.send(int(target), body, timeout, retry)

    async def close(self) -> None:
        self.hub.handlers.pop(self.node_id, None)


# -- limits on the file descriptors and on who may read the status routes ----------------------

def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit; returns
    the soft limit now in force (``resource.RLIM_INFINITY``, -1, when unlimited). A limit that
    cannot be raised is left as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and soft != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses an infinite soft limit
            logger.debug("cannot raise the open-file limit from %d to %d", soft, hard)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _fd_connection_cap(wanted: int) -> int:
    """``wanted``, but at most the soft open-file limit less FD_RESERVE (at least 1)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return address.is_loopback


def _bearer_matches(authorization: str | None, token: str) -> bool:
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        given_bytes = given.strip().encode("ascii")
    except UnicodeEncodeError:  # tokens are ASCII: this cannot be one
        return False
    return hmac.compare_digest(given_bytes, token.encode("ascii"))


def route_allowed(remote: str | None, authorization: str | None, *, access: str,
                  token: str | None) -> bool:
    """Whether a GET route that is not public may be served to a client at address ``remote``
    (as ``request.remote`` gives it) that sent the ``Authorization`` header ``authorization``.

    ``access`` "open": anyone; "loopback": clients on a loopback address (127.0.0.0/8, ::1) or
    that present ``Authorization: Bearer <token>``; "token": only clients that present it. The
    token is compared in constant time; without a token configured none is accepted."""
    if access not in ROUTE_ACCESS:
        raise ValueError(f"route_access must be one of {', '.join(ROUTE_ACCESS)}")
    if access == "open":
        return True
    if token is not None and _bearer_matches(authorization, token):
        return True
    return access == "loopback" and _is_loopback(remote)


# -- TLS --------------------------------------------------------------------------------------

def _readable_file(argument: str, path: str | os.PathLike) -> str:
    """``path`` as a string, or TLSConfigError naming ``argument`` and what is wrong with it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TLSConfigError(f"{argument} {path} does not exist")
    if not os.path.isfile(path):
        raise TLSConfigError(f"{argument} {path} is not a file")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise TLSConfigError(f"{argument} {path} cannot be read: "
                             f"{(exc.strerror or type(exc).__name__).lower()}") from exc
    return path


def _load_verify(context: ssl.SSLContext, argument: str, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{argument} {path} holds no PEM certificate") from exc
    if not context.cert_store_stats().get("x509"):
        raise TLSConfigError(f"{argument} {path} holds no PEM certificate")


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKey  # never let OpenSSL prompt on the terminal for a pass phrase


def _load_chain(context: ssl.SSLContext, cert_file: str | os.PathLike,
                key_file: str | os.PathLike) -> None:
    cert = _readable_file("cert_file", cert_file)
    key = _readable_file("key_file", key_file)
    _load_verify(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "cert_file", cert)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise TLSConfigError(f"key_file {key} is encrypted with a pass phrase, which is not "
                             "supported: give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"key_file {key} is not the private key of the certificate in "
                                 f"cert_file {cert}") from exc
        raise TLSConfigError(f"key_file {key} holds no PEM private key") from exc


def server_ssl_context(cert_file: str, key_file: str, ca_file: str | None = None
                       ) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) presenting ``cert_file`` (PEM chain) with
    ``key_file`` (unencrypted PEM key). With ``ca_file``, every client must present a
    certificate that chains to it. A file missing, unreadable or invalid raises TLSConfigError
    naming it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert_file, key_file)
    if ca_file is not None:
        _load_verify(context, "ca_file", _readable_file("ca_file", ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(ca_file: str | None, cert_file: str | None = None,
                       key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2 or later) that verifies servers against ``ca_file`` (the
    system's trust store when None) and checks the host name or IP address of the URL against
    the certificate (put IP addresses in its subjectAltName). With ``cert_file`` and
    ``key_file``, presents that certificate to servers that ask for one. A file missing,
    unreadable or invalid raises TLSConfigError naming it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        _load_verify(context, "ca_file", _readable_file("ca_file", ca_file))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (cert_file is None) != (key_file is None):
        raise TLSConfigError("cert_file and key_file go together: give both or neither")
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file)
    return context


# -- the HTTP server's protocol: connection cap and head timeout ------------------------------

class _GuardedHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, plus: closed unless a complete request head arrives
    within ``header_timeout_s`` of the connection opening (or of the first byte of the next
    request, on keep-alive); error answers and logs that never quote what was received. The
    connection was counted in the owner's open connections when it was accepted
    (``_Listener``); it is uncounted here when it closes."""

    __slots__ = ("_owner", "_state", "_head_timer", "_in_request")

    def __init__(self, owner: HttpTransport, manager: web.Server, **kwargs):
        super().__init__(manager, **kwargs)
        self._owner = owner
        self._state = "new"  # -> "made" -> "lost"
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._state = "made"
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._state != "made":
            return
        self._state = "lost"
        self._owner._open -= 1
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request and self._head_timer is None:
            self._arm_head_timer()  # the first byte of the next request on a kept-alive one
        super().data_received(data)

    def request_started(self) -> None:
        self._in_request = True
        self._cancel_head_timer()

    def request_finished(self) -> None:
        self._in_request = False

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._loop.call_later(self._owner.header_timeout_s, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._in_request:
            self._owner.heads_timed_out += 1
            self.force_close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # aiohttp's own answer quotes the parser's message (received bytes) and logs it
        if isinstance(exc, ConnectionError):  # the client left mid-request: routine
            logger.debug("client gone during a request (%s)", type(exc).__name__)
        elif status >= 500 and exc is not None:
            logger.error("error handling a request (%s):\n%s", type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)))
        else:
            logger.debug("refused a malformed request with %d (%s)", status,
                         type(exc).__name__ if exc is not None else "no detail")
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        response = web.Response(status=status, text=f"{status} {phrase}",
                                headers={"Server": SERVER_NAME})
        response.force_close()
        return response

    def log_exception(self, *args, **kwargs) -> None:
        # aiohttp's messages can quote a response or the request: the type and frames only
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException):
            logger.error("aiohttp server error (%s):\n%s", type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)))
        else:
            logger.error("aiohttp server error")


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_RETRY_S = 0.5  # out of descriptors: how long accepting pauses before it is tried again


class _Listener:
    """The listening sockets of an ``HttpTransport`` and their accept loops.

    Not ``loop.create_server``: on EMFILE, asyncio's accept loop (CPython 3.11 to 3.13) goes on
    calling accept() up to ``backlog`` times, scheduling one retry for each failure, so the
    retries and their error logs multiply every second while the process stays out of
    descriptors. Here a failed accept pauses accepting for ACCEPT_RETRY_S, with one warning
    per episode. A connection is counted as open from accept() (so TLS handshakes count too);
    one over the cap is closed at once."""

    def __init__(self, owner: HttpTransport, sockets: list[socket.socket],
                 factory: Callable[[], _GuardedHandler], ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float):
        self._owner, self.sockets, self._factory = owner, sockets, factory
        self._ssl, self._handshake_timeout = ssl_context, handshake_timeout
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in sockets]
        self._connecting: set[asyncio.Task] = set()

    @classmethod
    async def open(cls, owner: HttpTransport, host: str, port: int, backlog: int,
                   **settings) -> _Listener:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return cls(owner, sockets, **settings)

    async def _accept(self, sock: socket.socket) -> None:
        loop, owner = asyncio.get_running_loop(), self._owner
        paused = False
        try:
            while True:
                try:
                    conn, _ = await loop.sock_accept(sock)
                except OSError as exc:
                    if exc.errno in _OUT_OF_RESOURCES:
                        owner.accept_pauses += 1
                        if not paused:
                            logger.warning("out of file descriptors (%s): not accepting "
                                           "connections for a while", _describe(exc))
                        paused = True
                        await asyncio.sleep(ACCEPT_RETRY_S)
                    elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                        logger.error("accept failed (%s); retrying", _describe(exc))
                        await asyncio.sleep(ACCEPT_RETRY_S)
                    continue
                if paused:
                    logger.info("accepting connections again")
                    paused = False
                if owner._open >= owner.connection_limit:
                    owner.connections_refused += 1
                    conn.close()  # over the cap: closed at once, never queued
                    continue
                owner._open += 1
                task = loop.create_task(self._connect(conn))
                self._connecting.add(task)
                task.add_done_callback(self._connecting.discard)
        finally:
            sock.close()  # after the cancelled sock_accept has unregistered it

    async def _connect(self, conn: socket.socket) -> None:
        made: list[_GuardedHandler] = []

        def factory() -> _GuardedHandler:
            made.append(self._factory())
            return made[-1]

        try:
            conn.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(
                factory, conn, ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl else None)
        except BaseException as exc:
            if not made or made[0]._state == "new":  # never reached the protocol: uncount
                self._owner._open -= 1
            conn.close()
            if not isinstance(exc, Exception):  # cancelled (close()), or the process ends
                raise
            # a failed or timed-out TLS handshake, a client gone at once
            logger.debug("connection closed before its first request (%s)", type(exc).__name__)

    def close(self) -> None:
        for task in (*self._accepting, *self._connecting):
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._connecting, return_exceptions=True)


class _GuardedSite(web.BaseSite):
    """A site that serves through a ``_Listener``."""

    __slots__ = ("_owner", "_host", "_port", "_factory", "_handshake_timeout")

    def __init__(self, runner: web.BaseRunner, owner: HttpTransport, host: str, port: int,
                 factory: Callable[[], _GuardedHandler], *,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float):
        super().__init__(runner, ssl_context=ssl_context)
        self._owner, self._host, self._port, self._factory = owner, host, port, factory
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await _Listener.open(  # type: ignore[assignment]
            self._owner, self._host, self._port, self._backlog, factory=self._factory,
            ssl_context=self._ssl_context, handshake_timeout=self._handshake_timeout)

    async def stop(self) -> None:
        listener = self._server
        await super().stop()
        if isinstance(listener, _Listener):
            await listener.wait_closed()


class _SlowBody(Exception):
    pass


class HttpTransport(Transport):
    """aiohttp server (POST /gossip plus GET routes) and one pooled client session.

    :param host: the address to listen on
    :param port: the port to listen on; 0 picks a free one (``port`` holds it after ``start``)
    :param max_body: the most bytes a /gossip body may have, counted as they arrive (also for
        chunked bodies without Content-Length); over it the handler gets None (and answers,
        e.g. 413) -- at most ``max_body`` plus one 64 KiB chunk of a body is ever held
    :param peers: where each neighbour listens, as for ``set_peers``
    :param max_connections: the most open server connections, TLS handshakes in progress
        included (default 256); one more is closed as soon as it is accepted. At ``start`` it is
        capped at the soft open-file limit less 64, so the process keeps descriptors for its own
        files (``connection_limit`` holds the cap in force; see ``raise_fd_limit``). Out of
        descriptors anyway, accepting pauses for ACCEPT_RETRY_S and is tried again, with one
        warning: service degrades, the process lives on
    :param header_timeout_s: a connection that has not sent a complete request head within
        this many seconds of opening (after the TLS handshake), or of the first byte of its
        next request on keep-alive, is closed (default 10; also the TLS handshake timeout)
    :param idle_timeout_s: a kept-alive connection that sends no complete request head within
        this many seconds of its previous request is closed (default 30)
    :param body_timeout_s: with ``min_body_rate_bps``, how long a body may take: at any moment
        the bytes so far must have arrived within ``body_timeout_s + bytes / min_body_rate_bps``
        seconds of the head (default 10); a slower body is cut off, the handler is not called
        and the client, if still there, gets 408
    :param min_body_rate_bps: the slowest sustained body rate accepted, in bytes per second
        (default 65536: a body trickled at 1 KiB/s is cut off after about ``body_timeout_s``)
    :param max_concurrent_bodies: the most /gossip bodies read or handled at once (default 8);
        one more is answered 503 at once, its body unread. Bounds memory near
        ``max_concurrent_bodies * max_body``
    :param public_routes: GET paths served to anyone (default ``{"/healthz"}``)
    :param route_access: who may GET the other routes (``/status``, ``/metrics``):
        "loopback" (default): clients on 127.0.0.0/8 or ::1, or that send the token;
        "token": only clients that send ``Authorization: Bearer <route_token>``; "open": anyone.
        Others get 403. See ``route_allowed``
    :param route_token: the bearer token for ``route_access`` (printable ASCII, no spaces);
        required with "token"
    :param ssl_server: a TLS context (``server_ssl_context``) to serve https:// instead of http://
    :param ssl_client: a TLS context (``client_ssl_context``) for sending to https:// neighbours.
        Fails closed: with it, every neighbour must be https://, and an https:// neighbour
        without it is refused -- both raise TLSConfigError in ``set_peers``

    A body refused unread (413, 503, 408) is drained for at most LINGER_S, so that the client
    can read the answer, and the connection is closed. Every answer carries ``Server: decent``
    (no software versions), requests carry the same User-Agent; the server's error answers and
    logs never quote received bytes. ``close`` grants requests in flight about twice
    SHUTDOWN_TIMEOUT_S, then cancels them.
    """

    def __init__(self, host: str, port: int, max_body: int, *,
                 peers: dict[int, str] | None = None,
                 max_connections: int = 256,
                 header_timeout_s: float = 10.0,
                 idle_timeout_s: float = 30.0,
                 body_timeout_s: float = 10.0,
                 min_body_rate_bps: float = 65536.0,
                 max_concurrent_bodies: int = 8,
                 public_routes: frozenset[str] = frozenset({"/healthz"}),
                 route_access: str = "loopback",
                 route_token: str | None = None,
                 ssl_server: ssl.SSLContext | None = None,
                 ssl_client: ssl.SSLContext | None = None):
        for name, value in (("max_connections", max_connections),
                            ("max_concurrent_bodies", max_concurrent_bodies)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        for name, seconds in (("header_timeout_s", header_timeout_s),
                              ("idle_timeout_s", idle_timeout_s),
                              ("body_timeout_s", body_timeout_s),
                              ("min_body_rate_bps", min_body_rate_bps)):
            if not seconds > 0:
                raise ValueError(f"{name} must be positive")
        if route_access not in ROUTE_ACCESS:
            raise ValueError(f"route_access must be one of {', '.join(ROUTE_ACCESS)}")
        if route_token is not None and not (
                route_token.isascii() and route_token.isprintable() and route_token
                and not any(c.isspace() for c in route_token)):
            raise ValueError("route_token must be non-empty printable ASCII without spaces")
        if route_access == "token" and route_token is None:
            raise ValueError('route_access "token" needs route_token')
        self.host, self.port, self.max_body = host, port, max_body
        self.max_connections = self.connection_limit = max_connections
        self.header_timeout_s, self.idle_timeout_s = header_timeout_s, idle_timeout_s
        self.body_timeout_s, self.min_body_rate_bps = body_timeout_s, min_body_rate_bps
        self.max_concurrent_bodies = max_concurrent_bodies
        self.public_routes = frozenset(public_routes)
        self.route_access, self.route_token = route_access, route_token
        self.ssl_server, self.ssl_client = ssl_server, ssl_client
        self.peers: dict[int, str] = {}
        self.failures: dict[int, str] = {}  # peer -> why its last send failed (bounded: peers)
        if peers:
            self.set_peers(peers)
        self.peer_lengths = {}
        # what the limits did, for tests and metrics (counts, never received data)
        self.connections_refused = self.heads_timed_out = self.accept_pauses = 0
        self.bodies_refused_busy = self.bodies_too_slow = 0
        self._open = 0
        self._bodies = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_server else 'http'}://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Server connections open now."""
        return self._open

    @property
    def bodies_in_progress(self) -> int:
        """/gossip bodies being read or handled now."""
        return self._bodies

    def set_peers(self, peers: dict[int, str]) -> None:
        """Where each neighbour listens. With ``ssl_client``, every URL must be https://;
        without, none may be (TLSConfigError: no plaintext fallback, no unverified TLS)."""
        for peer, url in sorted(peers.items()):
            self._check_scheme(f"neighbour {peer}", url)
        self.peers = {k: v.rstrip("/") for k, v in peers.items()}

    def learn(self, peer: int, url: str) -> None:
        """Add one address; TLSConfigError when its scheme does not match the TLS setting."""
        self._check_scheme(f"peer {peer}", url)
        self.peers[peer] = url.rstrip("/")

    def forget(self, peer: int) -> None:
        self.peers.pop(peer, None)
        self.failures.pop(peer, None)

    def address_of(self, peer: int) -> str | None:
        return self.peers.get(peer)

    def why_unreachable(self, peer: int) -> str | None:
        return self.failures.get(peer)

    def _failed(self, peer: int, why: str) -> None:
        if peer >= 0 and (peer in self.peers or peer in self.failures):
            self.failures[peer] = why

    def known_peers(self) -> set[int]:
        return set(self.peers)

    def _check_scheme(self, who: str, url: str) -> None:
        secure = url.lower().startswith("https://")
        if secure and self.ssl_client is None:
            raise TLSConfigError(f"{who} is at an https:// URL but no ssl_client "
                                 "context is configured to verify it")
        if not secure and self.ssl_client is not None:
            raise TLSConfigError(f"{who} is at a plaintext URL while TLS is "
                                 "configured: use https:// for every neighbour")

    async def start(self, handler: Handler, routes: dict[str, GetRoute] | None = None) -> None:
        # a body left unread (413, 503, 408) is drained for at most LINGER_S before the close,
        # so that the client can read the answer (aiohttp's default: 10 s)
        settings: dict[str, Any] = {"access_log": None, "keepalive_timeout": self.idle_timeout_s,
                                    "auto_decompress": False, "lingering_time": LINGER_S}
        # close() waits at most about twice this for requests in flight, then cancels them
        self._runner = web.AppRunner(self._app(handler, routes),
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_S, **settings)
        await self._runner.setup()
        await self._listen(self._runner, settings)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=4,
                                           ssl=self.ssl_client if self.ssl_client else True),
            headers={"User-Agent": SERVER_NAME})

    def _app(self, on_gossip: Handler, routes: dict[str, GetRoute] | None) -> web.Application:
        """POST /gossip to ``handler`` and the GET ``routes``, every request marked on its
        guarded connection (so idle connections can be told from busy ones)."""

        @web.middleware
        async def mark_request(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                               ) -> web.StreamResponse:
            protocol = request.protocol
            guarded = protocol if isinstance(protocol, _GuardedHandler) else None
            if guarded is not None:
                guarded.request_started()
            try:
                return await handler(request)  # aiohttp passes it by this name
            finally:
                if guarded is not None:
                    guarded.request_finished()

        async def server_header(request: web.Request, response: web.StreamResponse) -> None:
            response.headers["Server"] = SERVER_NAME

        async def gossip(request: web.Request) -> web.StreamResponse:
            return await self._receive(request, on_gossip)

        app = web.Application(client_max_size=self.max_body, middlewares=[mark_request])
        app.on_response_prepare.append(server_header)
        app.router.add_post("/gossip", gossip)
        for path, route in (routes or {}).items():
            app.router.add_get(path, self._get_handler(route, path in self.public_routes))
        return app

    async def _receive(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """One POST /gossip: refused unread when compressed, announced too large or when too
        many bodies are being read; else read within the size and rate limits and handled."""
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            # peers never compress; a compressed body could expand far past the limit
            return web.Response(status=415, text="compressed bodies are refused")
        if request.content_length is not None and request.content_length > self.max_body:
            status, reason = await handler(None)  # announced too large: refused unread
        elif self._bodies >= self.max_concurrent_bodies:
            self.bodies_refused_busy += 1
            return _closing(web.Response(status=503, text="busy: too many bodies at once",
                                         headers={"Retry-After": "1"}))
        else:
            self._bodies += 1
            try:
                try:
                    body = await self._read_body(request)
                except _SlowBody:
                    self.bodies_too_slow += 1
                    return _closing(web.Response(status=408, text="body too slow"))
                except HttpProcessingError:  # e.g. broken chunked framing
                    return _closing(web.Response(status=400, text="malformed body"))
                status, reason = await handler(body)
            finally:
                self._bodies -= 1
        headers = {LENGTH_HEADER: str(self.model_length)} \
            if status == 422 and self.model_length is not None else None
        return web.Response(status=status, text=reason, headers=headers)

    async def _listen(self, runner: web.AppRunner, settings: dict[str, Any]) -> None:
        """Serve ``runner`` on (host, port) through the guarded site (connection and header
        limits, TLS); ListenError when the address cannot be used."""
        loop = asyncio.get_running_loop()
        self.connection_limit = _fd_connection_cap(self.max_connections)
        manager = runner.server
        assert manager is not None

        def factory() -> _GuardedHandler:
            return _GuardedHandler(self, manager, loop=loop, **settings)

        site = _GuardedSite(runner, self, self.host, self.port, factory,
                            ssl_context=self.ssl_server, handshake_timeout=self.header_timeout_s)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._runner = None
            raise ListenError(self.host, self.port, exc) from exc
        self.port = runner.addresses[0][1]

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None as soon as more than ``max_body`` bytes arrived; _SlowBody when it
        comes slower than ``body_timeout_s + bytes / min_body_rate_bps`` allows."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        chunks: list[bytes] = []
        received = 0
        while True:
            left = began + self.body_timeout_s + received / self.min_body_rate_bps - loop.time()
            if left <= 0:
                raise _SlowBody
            try:
                chunk = await asyncio.wait_for(request.content.read(BODY_CHUNK), left)
            except asyncio.TimeoutError:
                raise _SlowBody from None
            if not chunk:
                return b"".join(chunks)
            received += len(chunk)
            if received > self.max_body:
                return None
            chunks.append(chunk)

    def _get_handler(self, route: GetRoute, public: bool):
        async def handle(request: web.Request) -> web.Response:
            if not public and not route_allowed(
                    request.remote, request.headers.get("Authorization"),
                    access=self.route_access, token=self.route_token):
                return web.Response(status=403, text="forbidden")
            content_type, text = await route()
            # aiohttp takes the charset apart ("text/plain; version=1.0.0; charset=utf-8")
            media, _, charset = content_type.partition("; charset=")
            return web.Response(text=text, content_type=media, charset=charset or None)

        return handle

    async def send(self, peer: int, body: bytes, timeout: float, retry: bool = True
                   ) -> int | None:
        url = self.peers.get(peer)
        if url is None:
            logger.debug("send to %s: no address known", peer)
            return None
        status = await self._post(url, body, timeout, retry, peer)
        if status is not None:
            self.failures.pop(peer, None)
        return status

    async def send_url(self, url: str, body: bytes, timeout: float, retry: bool = True
                       ) -> int | None:
        try:
            self._check_scheme("the address", url)
        except TLSConfigError:
            return None
        return await self._post(url.rstrip("/"), body, timeout, retry, -1)

    async def _post(self, url: str, body: bytes, timeout: float, retry: bool, peer: int
                    ) -> int | None:
        assert self._session is not None, "start() the transport before sending"
        deadline = time.monotonic() + timeout
        backoff, dropped = connect_retry(), 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._failed(peer, f"not reached within {timeout:.3g} s")
                return None
            try:
                async with self._session.post(
                        f"{url}/gossip", data=body,
                        timeout=aiohttp.ClientTimeout(total=left)) as response:
                    await response.read()
                    announced = response.headers.get(LENGTH_HEADER, "")
                    if response.status == 422 and announced.isdigit() and len(announced) <= 12 \
                            and peer >= 0:
                        self.peer_lengths[peer] = int(announced)
                    return response.status
            except aiohttp.ClientSSLError as exc:
                # not transient: a certificate that does not verify will not on a retry either
                logger.debug("send to %s at %s: TLS failed (%s); giving up", peer, url,
                             type(exc).__name__)
                self._failed(peer, f"TLS handshake failed ({type(exc).__name__})")
                return None
            except aiohttp.ClientConnectorError as exc:
                self._failed(peer, f"cannot connect ({_describe(exc)})")
                if not retry:  # nothing listens there: the peer left
                    logger.debug("send to %s at %s: cannot connect (%s); giving up", peer, url,
                                 _describe(exc))
                    return None
                logger.debug("send to %s at %s: cannot connect (%s); retrying", peer, url,
                             _describe(exc))
                await asyncio.sleep(backoff.delay(deadline - time.monotonic()))
            except aiohttp.ClientConnectionError as exc:
                # a pooled keep-alive connection to a peer that restarted: try a fresh one
                dropped += 1
                logger.debug("send to %s at %s: connection dropped (%s), %d so far", peer, url,
                             type(exc).__name__, dropped)
                self._failed(peer, "connection dropped")
                if dropped > 2 and not retry:
                    return None
                if dropped > 1:  # a peer that keeps dropping connections is not hammered
                    await asyncio.sleep(backoff.delay(deadline - time.monotonic()))
            except asyncio.TimeoutError:
                logger.debug("send to %s at %s: no answer within %.3gs", peer, url, timeout)
                self._failed(peer, f"no answer within {timeout:.3g} s")
                return None
            except OSError as exc:  # out of descriptors (EMFILE) and the like: not fatal
                logger.debug("send to %s at %s: %s", peer, url, _describe(exc))
                self._failed(peer, _describe(exc))
                return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


def _closing(response: web.Response) -> web.Response:
    """``response`` on a connection closed after it (its body may be left unread)."""
    response.force_close()
    return response


def _describe(exc: OSError) -> str:
    """An OS error's kind (``ECONNREFUSED``...) without its message, which can quote the peer."""
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__
