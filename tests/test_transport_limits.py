"""The HTTP transport under hostile clients: slow heads and bodies, too many connections, bodies
over the limit or too many at once, version-free answers, status routes' access control, TLS
that fails closed, and a process out of file descriptors. Real sockets on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import ipaddress
import logging
import re
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossip.transport import (
    HttpTransport,
    TLSConfigError,
    client_ssl_context,
    raise_fd_limit,
    route_allowed,
    server_ssl_context,
)

TRANSPORT_PY = Path(__file__).resolve().parents[1] / "gossip" / "transport.py"


# -- helpers ----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serving(max_body: int = 1024, routes=None, **settings):
    """A started HttpTransport on 127.0.0.1 whose handler records what it was given."""
    seen: list[bytes | None] = []

    async def handler(body):
        seen.append(body)
        return (413, "too large") if body is None else (200, "ok")

    transport = HttpTransport("127.0.0.1", 0, max_body, **settings)
    await transport.start(handler, routes)
    try:
        yield transport, seen
    finally:
        await transport.close()


@contextlib.asynccontextmanager
async def sender(url: str, **settings):
    """A started client transport that knows the server at ``url`` as peer 1."""
    async def handler(body):
        return 200, "ok"

    transport = HttpTransport("127.0.0.1", 0, 1024, **settings)
    await transport.start(handler)
    try:
        transport.set_peers({1: url})
        yield transport
    finally:
        await transport.close()


class Connections:
    """Raw connections to a port, all closed on exit."""

    def __init__(self, port: int):
        self.port, self.writers = port, []

    async def open(self, data: bytes = b""):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        if data:
            writer.write(data)
            await writer.drain()
        return reader, writer

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.sleep(0)


async def read_response(reader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    return status, headers, body


async def closed_within(reader, timeout: float) -> bool:
    """Whether the server closed the connection (EOF or reset) within ``timeout`` seconds;
    any bytes it sent before are skipped."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not await asyncio.wait_for(reader.read(4096), left):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except asyncio.TimeoutError:
        return False


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


HEAD = b"POST /gossip HTTP/1.1\r\nHost: x\r\n"


# -- connections and timeouts -----------------------------------------------------------------

async def test_slow_heads_are_closed_after_the_header_timeout_and_service_goes_on():
    async with serving(header_timeout_s=0.5, idle_timeout_s=5.0) as (server, seen):
        async with Connections(server.port) as conns:
            silent, _ = await conns.open()
            began = time.monotonic()
            partial, _ = await conns.open(HEAD)  # a head that never ends
            # keep-alive: one request answered, then a second head that never ends
            kept, writer = await conns.open(HEAD + b"Content-Length: 2\r\n\r\nok")
            assert (await read_response(kept))[0] == 200
            await asyncio.sleep(0.3)
            writer.write(HEAD)
            second_began = time.monotonic()
            assert await closed_within(partial, 2.0)
            assert 0.4 < time.monotonic() - began < 1.5
            assert await closed_within(silent, 1.0)
            assert await closed_within(kept, 2.0)
            assert 0.4 < time.monotonic() - second_began < 1.5
        assert server.heads_timed_out == 3
        async with sender(server.url) as client:
            assert await client.send(1, b"after", 5.0) == 200
        assert seen == [b"ok", b"after"]


async def test_idle_kept_alive_connections_are_closed_after_the_idle_timeout():
    async with serving(header_timeout_s=5.0, idle_timeout_s=0.5) as (server, seen):
        async with Connections(server.port) as conns:
            reader, _ = await conns.open(HEAD + b"Content-Length: 2\r\n\r\nok")
            assert (await read_response(reader))[0] == 200
            began = time.monotonic()
            assert await closed_within(reader, 3.0)
            assert 0.3 < time.monotonic() - began < 2.0
        assert server.heads_timed_out == 0 and seen == [b"ok"]


@pytest.mark.slow
async def test_a_trickled_body_is_cut_off_with_408_and_never_handled():
    async with serving(max_body=1 << 16, header_timeout_s=5.0, body_timeout_s=0.5,
                       min_body_rate_bps=65536) as (server, seen):
        async with Connections(server.port) as conns:
            reader, writer = await conns.open(HEAD + b"Content-Length: 8192\r\n\r\n")
            began = time.monotonic()

            async def trickle():  # 64 bytes every 50 ms: about 1.3 KiB/s
                with contextlib.suppress(ConnectionError):
                    for _ in range(200):
                        writer.write(b"x" * 64)
                        await writer.drain()
                        await asyncio.sleep(0.05)

            task = asyncio.create_task(trickle())
            try:
                status, _, _ = await read_response(reader, timeout=5.0)
                elapsed = time.monotonic() - began
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert status == 408
            assert 0.4 < elapsed < 2.0, elapsed
            assert await closed_within(reader, 3.0)
        assert seen == [] and server.bodies_too_slow == 1
        assert server.bodies_in_progress == 0


async def test_connections_over_the_cap_are_closed_at_once():
    async with serving(max_connections=4, header_timeout_s=10.0) as (server, seen):
        async with Connections(server.port) as conns:
            held = [await conns.open() for _ in range(4)]
            await wait_until(lambda: server.open_connections == 4, 2.0, "4 open connections")
            began = time.monotonic()
            extra, _ = await conns.open()
            assert await closed_within(extra, 1.0)
            assert time.monotonic() - began < 1.0
            assert server.connections_refused == 1 and server.open_connections == 4
            for _, writer in held:
                writer.close()
            await wait_until(lambda: server.open_connections == 0, 2.0, "connections to go")
        async with sender(server.url) as client:
            assert await client.send(1, b"hello", 5.0) == 200
        assert seen == [b"hello"]


# -- bodies -----------------------------------------------------------------------------------

def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_a_chunked_body_over_the_limit_is_refused_as_soon_as_the_limit_is_passed():
    async with serving(max_body=4096) as (server, seen):
        async with Connections(server.port) as conns:
            # 5 KiB of a body that never ends: the 413 can only come from counting bytes read
            reader, writer = await conns.open(HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                                              + b"".join(chunk(b"y" * 1024) for _ in range(5)))
            status, _, body = await read_response(reader)
            assert status == 413 and body == b"too large"
            assert seen == [None]
            # one within the limit, chunked, arrives whole
            reader, writer = await conns.open(
                HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                + b"".join(chunk(bytes([65 + i]) * 1000) for i in range(4)) + b"0\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            assert seen[1] == b"A" * 1000 + b"B" * 1000 + b"C" * 1000 + b"D" * 1000
            # exactly at the limit without Content-Length is fine; one byte more is not
            for extra, expected in ((0, 200), (1, 413)):
                reader, _ = await conns.open(
                    HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                    + chunk(b"z" * (4096 + extra)) + b"0\r\n\r\n")
                assert (await read_response(reader))[0] == expected
        assert seen[2:] == [b"z" * 4096, None]


async def test_bodies_beyond_the_concurrency_cap_get_503_unread():
    async with serving(max_body=1000, max_concurrent_bodies=2) as (server, seen):
        async with Connections(server.port) as conns:
            slow = [await conns.open(HEAD + b"Content-Length: 100\r\n\r\n" + b"a" * 10)
                    for _ in range(2)]
            await wait_until(lambda: server.bodies_in_progress == 2, 2.0, "2 bodies in progress")
            reader, _ = await conns.open(HEAD + b"Content-Length: 100\r\n\r\n" + b"b" * 10)
            status, headers, _ = await read_response(reader, timeout=2.0)
            assert status == 503 and headers.get("retry-after") == "1"
            assert seen == [] and server.bodies_refused_busy == 1
            for _, writer in slow:  # the two in progress finish normally
                writer.write(b"a" * 90)
            for reader, _ in slow:
                assert (await read_response(reader))[0] == 200
        assert seen == [b"a" * 100, b"a" * 100]
        assert server.bodies_in_progress == 0


# -- what answers and logs say ----------------------------------------------------------------

async def test_answers_name_no_versions_and_nothing_received_is_quoted(caplog):
    caplog.set_level(logging.DEBUG)
    marker = b"ZQ(XJ" * 6  # "(" cannot be in a method or a header name

    async def health():
        return "text/plain", "ok"

    async with serving(routes={"/healthz": health}) as (server, _):
        async with Connections(server.port) as conns:
            requests = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                        HEAD + b"Content-Length: 2\r\n\r\nhi",
                        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
                        marker + b" / HTTP/1.1\r\nHost: x\r\n\r\n",  # not a method
                        b"GET / HTTP/1.1\r\nHost: x\r\nBad" + marker + b": v\r\n\r\n"]
            statuses = []
            for request in requests:
                reader, _ = await conns.open(request)
                status, headers, body = await read_response(reader)
                statuses.append(status)
                assert headers.get("server") == "decent"
                assert marker not in body
                raw = str(headers).lower()
                assert "aiohttp" not in raw and "python" not in raw
        assert statuses == [200, 200, 404, 400, 400]
    assert marker.decode() not in caplog.text


# -- status routes' access control ------------------------------------------------------------

@pytest.mark.parametrize("remote, authorization, access, token, allowed", [
    ("127.0.0.1", None, "loopback", None, True),
    ("127.8.9.1", None, "loopback", None, True),
    ("::1", None, "loopback", None, True),
    ("::ffff:127.0.0.1", None, "loopback", None, True),
    ("10.0.0.5", None, "loopback", None, False),
    ("192.168.1.2", "Bearer t0ken", "loopback", None, False),
    ("10.0.0.5", "Bearer t0ken", "loopback", "t0ken", True),
    ("10.0.0.5", "bearer t0ken", "loopback", "t0ken", True),
    ("10.0.0.5", "Bearer wrong", "loopback", "t0ken", False),
    ("::ffff:10.0.0.5", None, "loopback", "t0ken", False),
    (None, None, "loopback", None, False),
    ("not-an-address", None, "loopback", None, False),
    ("127.0.0.1", None, "token", "t0ken", False),
    ("127.0.0.1", "Bearer t0ken", "token", "t0ken", True),
    ("10.0.0.5", "Bearer t0ken", "token", "t0ken", True),
    ("10.0.0.5", "Basic t0ken", "token", "t0ken", False),
    ("10.0.0.5", "Bearer t0ken2", "token", "t0ken", False),
    ("10.0.0.5", "Bearer t\u00f6ken", "token", "t0ken", False),
    ("10.0.0.5", "Bearer ", "token", None, False),
    ("10.0.0.5", None, "open", None, True),
])
def test_route_allowed(remote, authorization, access, token, allowed):
    assert route_allowed(remote, authorization, access=access, token=token) is allowed


def test_route_access_settings_are_checked_at_construction():
    with pytest.raises(ValueError, match="route_token"):
        HttpTransport("127.0.0.1", 0, 1024, route_access="token")
    with pytest.raises(ValueError, match="route_access"):
        HttpTransport("127.0.0.1", 0, 1024, route_access="lan")
    with pytest.raises(ValueError, match="route_access"):
        route_allowed("127.0.0.1", None, access="everyone", token=None)


async def test_a_token_guarded_status_route_and_a_public_healthz():
    async def status():
        return "application/json", '{"round": 3}'

    async def health():
        return "text/plain", "ok"

    routes = {"/status": status, "/healthz": health}
    async with serving(routes=routes, route_access="token", route_token="s3cret") as (server, _):
        async with Connections(server.port) as conns:
            def get(path: str, auth: bytes = b"") -> bytes:
                return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + auth + b"\r\n"

            results = []
            for request in (get("/status"), get("/status", b"Authorization: Bearer nope\r\n"),
                            get("/status", b"Authorization: Bearer s3cret\r\n"),
                            get("/healthz")):
                reader, _ = await conns.open(request)
                status, _, body = await read_response(reader)
                results.append((status, body))
    assert results == [(403, b"forbidden"), (403, b"forbidden"), (200, b'{"round": 3}'),
                       (200, b"ok")]
    async with serving(routes=routes) as (server, _):  # loopback (the default): 127.0.0.1 may
        async with Connections(server.port) as conns:
            reader, _ = await conns.open(get("/status"))
            assert (await read_response(reader))[:1] == (200,)


# -- TLS --------------------------------------------------------------------------------------

def write_pki(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 (IP subjectAltName), a client certificate and a
    peer certificate (both uses), signed by the CA; and a second CA that signed nothing here.
    Paths by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths: dict[str, str] = {}

    def save(name: str, cert, key) -> None:
        paths[name] = str(directory / f"{name}.pem")
        Path(paths[name]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}_key"] = str(directory / f"{name}.key")
        Path(paths[f"{name}_key"]).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def build(subject: str, key, issuer_name, issuer_key, *, ca: bool, extensions=()):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    for ca_name in ("ca", "other_ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {ca_name}")])
        ca_usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                 content_commitment=False, key_encipherment=False,
                                 data_encipherment=False, key_agreement=False,
                                 encipher_only=False, decipher_only=False)
        save(ca_name, build(f"test {ca_name}", key, name, key, ca=True,
                            extensions=[ca_usage]), key)
        if ca_name == "ca":
            ca_key, ca_subject = key, name
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    # "peer": one certificate a peer serves and connects with (mutual TLS between peers)
    for leaf, usages in (("server", [server]), ("client", [client]), ("peer", [server, client])):
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        save(leaf, build(leaf, key, ca_subject, ca_key, ca=False,
                         extensions=[san, x509.ExtendedKeyUsage(usages)]), key)
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_pki(tmp_path_factory.mktemp("pki"))


async def test_tls_delivers_verified_and_fails_closed(pki):
    tls = server_ssl_context(pki["server"], pki["server_key"])
    async with serving(ssl_server=tls) as (server, seen):
        assert server.url.startswith("https://127.0.0.1:")
        async with sender(server.url, ssl_client=client_ssl_context(pki["ca"])) as client:
            assert await client.send(1, b"over tls", 5.0) == 200
        assert seen == [b"over tls"]
        # a client that does not trust the CA gives up at once, and sends nothing in clear
        for ca in (None, pki["other_ca"]):
            async with sender(server.url, ssl_client=client_ssl_context(ca)) as client:
                began = time.monotonic()
                assert await client.send(1, b"unverified", 5.0) is None
                assert time.monotonic() - began < 2.0
        # plaintext to the TLS port is not served either
        async with sender(server.url.replace("https://", "http://")) as client:
            assert await client.send(1, b"plaintext", 3.0, retry=False) is None
        assert seen == [b"over tls"]


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki):
    tls = server_ssl_context(pki["server"], pki["server_key"], ca_file=pki["ca"])
    async with serving(ssl_server=tls) as (server, seen):
        async with sender(server.url, ssl_client=client_ssl_context(pki["ca"])) as client:
            assert await client.send(1, b"anonymous", 3.0, retry=False) is None
        with_cert = client_ssl_context(pki["ca"], pki["client"], pki["client_key"])
        async with sender(server.url, ssl_client=with_cert) as client:
            assert await client.send(1, b"known", 5.0) == 200
        assert seen == [b"known"]


def test_tls_files_that_are_missing_or_wrong_are_named(pki, tmp_path):
    missing = str(tmp_path / "no-such-cert.pem")
    with pytest.raises(TLSConfigError, match=re.escape(f"cert_file {missing} does not exist")):
        server_ssl_context(missing, pki["server_key"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    named = re.escape
    with pytest.raises(TLSConfigError, match=named(f"cert_file {garbage} holds no PEM cert")):
        server_ssl_context(str(garbage), pki["server_key"])
    with pytest.raises(TLSConfigError, match=named(f"key_file {garbage} holds no PEM private")):
        server_ssl_context(pki["server"], str(garbage))
    with pytest.raises(TLSConfigError, match="is not the private key of the certificate"):
        server_ssl_context(pki["server"], pki["client_key"])
    with pytest.raises(TLSConfigError, match=named(f"ca_file {garbage} holds no PEM cert")):
        client_ssl_context(str(garbage))
    with pytest.raises(TLSConfigError, match=named(f"ca_file {tmp_path} is not a file")):
        server_ssl_context(pki["server"], pki["server_key"], ca_file=str(tmp_path))
    with pytest.raises(TLSConfigError, match="give both or neither"):
        client_ssl_context(pki["ca"], cert_file=pki["client"])


def test_neighbours_must_all_match_the_tls_configuration(pki):
    with pytest.raises(TLSConfigError, match="neighbour 3 is at an https:// URL but no ssl_client"):
        HttpTransport("127.0.0.1", 0, 1024).set_peers({1: "http://127.0.0.1:1",
                                                       3: "https://127.0.0.1:2"})
    with pytest.raises(TLSConfigError, match="neighbour 2"):
        HttpTransport("127.0.0.1", 0, 1024, peers={2: "https://127.0.0.1:2"})
    secure = HttpTransport("127.0.0.1", 0, 1024, ssl_client=client_ssl_context(pki["ca"]))
    with pytest.raises(TLSConfigError, match="neighbour 1 is at a plaintext URL"):
        secure.set_peers({1: "http://127.0.0.1:1"})
    secure.set_peers({1: "https://127.0.0.1:1/"})
    assert secure.peers == {1: "https://127.0.0.1:1"}


# -- out of file descriptors ------------------------------------------------------------------

CHILD = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # before aiohttp is imported
import asyncio, importlib.util, os
spec = importlib.util.spec_from_file_location("transport_under_test", sys.argv[1])
transport = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transport)
if sys.argv[3] == "no-reserve":  # let connections take every descriptor: accept hits EMFILE
    transport.FD_RESERVE = -100_000
state, failed = sys.argv[2], 0

async def main():
    global failed
    async def handler(body):
        return 200, "ok"
    server = transport.HttpTransport("127.0.0.1", 0, 1024, max_connections=100_000,
                                     header_timeout_s=60, idle_timeout_s=60)
    await server.start(handler)
    print(server.port, server.connection_limit, flush=True)
    n = 0
    while True:  # a checkpoint every 0.1 s; a failed write is counted, not fatal
        n += 1
        try:
            with open(state + ".tmp", "w") as f:
                f.write(f"{n} {server.open_connections} {server.connections_refused} {failed}")
            os.replace(state + ".tmp", state)
        except OSError:
            failed += 1
        await asyncio.sleep(0.1)

asyncio.run(main())
"""


def read_state(path: Path) -> tuple[int, int, int, int]:
    for _ in range(50):
        with contextlib.suppress(OSError, ValueError):
            n, open_, refused, failed = map(int, path.read_text().split())
            return n, open_, refused, failed
        time.sleep(0.02)
    raise AssertionError(f"cannot read {path}")


def wait_for_state(path: Path, predicate, timeout: float, what: str, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server process died"
        if path.exists():
            state = read_state(path)
            if predicate(state):
                return state
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def post(port: int, timeout: float) -> int | None:
    """POST /gossip; the status, retried until ``timeout`` (the server may still be catching
    up with a full accept queue)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            connection.request("POST", "/gossip", body=b"after the flood")
            return connection.getresponse().status
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    return None


def test_raise_fd_limit_raises_the_soft_limit_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 256:
        pytest.skip("needs a finite hard limit on open files of at least 256")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        assert raise_fd_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raise_fd_limit() == hard  # already there: unchanged
        # and a server keeps 64 descriptors of its soft limit free of connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(400, hard), hard))

        async def started_limit() -> int:
            async with serving(max_connections=500) as (server, _):
                return server.connection_limit

        assert asyncio.run(started_limit()) == min(400, hard) - 64
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        raise_fd_limit()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1300:
        pytest.skip(f"this process cannot have 1300 open files (hard limit {hard})")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect_many(port: int, count: int) -> list[socket.socket]:
    """``count`` non-blocking TCP connections to ``port`` (started, sending nothing), a batch
    at a time so that the listen backlog (128) does not overflow and the kernel holds them
    back for seconds."""
    sockets = []
    for i in range(count):
        sock = socket.socket()
        sockets.append(sock)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        if i % 50 == 49:
            time.sleep(0.02)
    return sockets


@pytest.mark.parametrize("reserve", ["reserve", "no-reserve"])
@pytest.mark.slow
def test_a_server_out_of_descriptors_degrades_and_recovers(tmp_path, many_fds, reserve):
    state, stderr_path = tmp_path / "state", tmp_path / "stderr"
    sockets: list[socket.socket] = []
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(TRANSPORT_PY), str(state),
                                 reserve], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20.0)
        assert ready, "the server process did not start"
        port, limit = map(int, proc.stdout.readline().split())
        if reserve == "reserve":
            assert limit == 1024 - 64
        sockets = connect_many(port, 1100)
        if reserve == "reserve":  # the cap holds: connections over it are closed at once
            n, _, _, _ = wait_for_state(
                state, lambda s: s[1] == limit and s[2] >= 1100 - limit - 10, 15.0,
                "the connection cap to fill", proc)
            time.sleep(0.5)
            # alive, and still writing its checkpoint while the connections are held
            later = wait_for_state(state, lambda s: s[0] > n, 3.0, "another checkpoint", proc)
            assert later[1] == limit and later[3] == 0  # no write failed for want of an fd
        else:  # no cap below the descriptor limit: accept runs out, pauses and retries
            deadline = time.monotonic() + 15.0
            while "out of file descriptors" not in stderr_path.read_text():
                assert proc.poll() is None, "the server process died"
                assert time.monotonic() < deadline, "accept never ran out of descriptors"
                time.sleep(0.05)
            # a few retried accepts (0.5 s apart) while still out of descriptors; a fixed wait,
            # since the child cannot report anything while it has no descriptor to write with
            time.sleep(1.5)
            assert proc.poll() is None
            # one warning, not one per retry (asyncio's own accept loop multiplies them)
            assert stderr_path.read_text().count("\n") == 1, stderr_path.read_text()[:500]
            n = read_state(state)[0]
        for sock in sockets:
            sock.close()
        sockets = []
        assert post(port, 15.0) == 200
        final = wait_for_state(state, lambda s: s[0] > n and s[1] <= 1, 10.0,
                               "the flood's connections to go", proc)
        if reserve == "no-reserve":
            assert final[3] > 0  # it really ran out: checkpoint writes failed meanwhile
        assert proc.poll() is None
    finally:
        for sock in sockets:
            sock.close()
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
