"""Servers, network doubles and images shared by the fetch tests (this module holds no tests)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import ipaddress
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpcore
import uvicorn
from PIL import Image

from app.core.urls import IPAddress
from tests.support.waiting import until

PUBLIC_IP = "93.184.215.14"  # a global address; the Dialer routes it to 127.0.0.1
ZEROS = bytes(64 * 1024)

# A test-only CA and a certificate for public.test and rebind.test, valid 2000-2999.
TEST_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBjjCCATWgAwIBAgIUJMvzvroWH76yl+F1FoSuWSTMt20wCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYaW1hZ2VnZW4tZ2F0ZXdheSB0ZXN0IENBMCAXDTAwMDEwMTAw
MDAwMFoYDzI5OTkxMjMxMDAwMDAwWjAjMSEwHwYDVQQDDBhpbWFnZWdlbi1nYXRl
d2F5IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQOtNLbk84E9910
Nt24WT+1nINBB9StWjmhwaFBP/OaEF1k2ir+0R7Nyp7hgObDpjR3RVinsVzRIqyK
BK8Axvmvo0UwQzASBgNVHRMBAf8ECDAGAQH/AgEAMA4GA1UdDwEB/wQEAwIBBjAd
BgNVHQ4EFgQUshmx5INztg/SG0FNHtMMjM2KH0YwCgYIKoZIzj0EAwIDRwAwRAIg
PRnNYbTVPxbOTZfF4yrUJFmz/G+bf9yMKeEKeSXBcrwCIHNbpFajNA1KZGtOLXxE
NO8KLa8yywgEWRAm9vTsArjO
-----END CERTIFICATE-----
"""
SERVER_CERT_PEM = """-----BEGIN CERTIFICATE-----
MIIB2TCCAX+gAwIBAgIUZEN+xYNXQ7VNdcfIbilpNZ3gzQ8wCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYaW1hZ2VnZW4tZ2F0ZXdheSB0ZXN0IENBMCAXDTAwMDEwMTAw
MDAwMFoYDzI5OTkxMjMxMDAwMDAwWjAWMRQwEgYDVQQDDAtwdWJsaWMudGVzdDBZ
MBMGByqGSM49AgEGCCqGSM49AwEHA0IABHsdSoLeAHQJ3WgY/nYzwc1IilBXKtob
YMSNnGJdYcj+L1RBDn/itGwj2pJiiSoGn8TlY/zrGEHalGx35w2H2rSjgZswgZgw
DAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUH
AwEwIwYDVR0RBBwwGoILcHVibGljLnRlc3SCC3JlYmluZC50ZXN0MB0GA1UdDgQW
BBRSlusbgLzAz8Kg7FbAZ+aTVLlPOzAfBgNVHSMEGDAWgBSyGbHkg3O2D9IbQU0e
0wyMzYofRjAKBggqhkjOPQQDAgNIADBFAiACsameJwE2QuWHYNsN6f+llMOLTbqk
9o0SBYScAd6TKwIhAKHsFUamneUu+mB++qcK3GoX3YfobI3v4Bf9VBEIG8my
-----END CERTIFICATE-----
"""
SERVER_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvF3+vZebXEDESGnI
lHhpb9mCKVQdB67McDA7avAwN+ShRANCAAR7HUqC3gB0Cd1oGP52M8HNSIpQVyra
G2DEjZxiXWHI/i9UQQ5/4rRsI9qSYokqBp/E5WP86xhB2pRsd+cNh9q0
-----END PRIVATE KEY-----
"""


def client_ssl_context() -> ssl.SSLContext:
    """Verifies certificates against the test CA only."""
    return ssl.create_default_context(cadata=TEST_CA_PEM)


def make_images() -> dict[str, bytes]:
    """One small image per accepted format, keyed by extension."""
    gradient = Image.linear_gradient("L").resize((120, 80)).convert("RGB")
    images = {}
    for name, pil_format in (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")):
        buffer = io.BytesIO()
        gradient.save(buffer, pil_format)
        images[name] = buffer.getvalue()
    return images


IMAGES = make_images()
IMAGE_SIZE = (120, 80)
HEADS = {"png": IMAGES["png"][:64], "html": b"<!doctype html><html><body>hi</body></html>"}
BODIES = {
    "html": HEADS["html"],
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\0" * 100,
    "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "empty": b"",
    "short": b"\x89PNG\r\n",
}


def stream_pieces(size: int | None, head: bytes) -> Iterator[bytes]:
    """`head` then zeros, `size` bytes in all (None: without end), in pieces of 64 KiB."""
    yield head
    sent = len(head)
    while size is None or sent < size:
        piece = ZEROS if size is None else ZEROS[: size - sent]
        sent += len(piece)
        yield piece


Scope = Mapping[str, Any]


class ImageServer:
    """An ASGI app with every case the downloader meets; counts requests and records headers."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.requests: list[dict[str, str]] = []
        self.release = asyncio.Event()  # set on shutdown so stalled handlers end
        self.files: dict[str, bytes] = {}  # served at /file/{name}, set by each test

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        self.hits[path] += 1
        self.requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
        name = path.strip("/").split("/")
        headers = [(b"connection", b"close")] if query.get("close") else []
        if name[0] == "img":
            await respond(send, 200, IMAGES[name[1]], headers, "application/octet-stream")
        elif name[0] == "file":
            await respond(send, 200, self.files[name[1]], headers, "application/octet-stream")
        elif name[0] == "body":
            body = BODIES[name[1]]
            await respond(send, 200, body, headers, "text/html")
        elif name[0] == "gzip":
            headers.append((b"content-encoding", b"gzip"))
            await respond(send, 200, gzip.compress(IMAGES["png"]), headers, "image/png")
        elif name[0] == "status":
            await respond(send, int(name[1]), b"nope", headers, "text/plain")
        elif name[0] == "hops" and name[1] == "0":
            await respond(send, 200, IMAGES["png"], headers, "image/png")
        elif name[0] == "hops":
            await redirect(send, 302, f"/hops/{int(name[1]) - 1}", headers)
        elif name[0] == "to":
            await redirect(send, int(query.get("status", "302")), query["location"], headers)
        elif name[0] == "no-location":
            await respond(send, 302, b"", headers, "text/plain")
        elif name[0] == "declared":
            body = b"".join(stream_pieces(int(query["length"]), HEADS["png"]))
            await respond(send, 200, body, headers, "image/png")
        elif name[0] == "stream":
            size = None if query["size"] == "endless" else int(query["size"])
            await self._stream(receive, send, size, HEADS[query.get("head", "png")])
        elif name[0] == "stall-headers":
            await self.release.wait()
            await respond(send, 200, IMAGES["png"], headers, "image/png")
        elif name[0] == "stall-body":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send(
                {"type": "http.response.body", "body": IMAGES["png"][:100], "more_body": True}
            )
            await self.release.wait()
            await send({"type": "http.response.body", "body": b""})
        elif name[0] == "cookie":
            headers.append((b"set-cookie", b"session=abc; Path=/"))
            await respond(send, 200, IMAGES["png"], headers, "image/png")
        else:
            await respond(send, 404, b"unknown", headers, "text/plain")

    async def _stream(self, receive: Any, send: Any, size: int | None, head: bytes) -> None:
        """Send a body of unknown length until it ends or the client goes away."""

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(disconnected())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for piece in stream_pieces(size, head):
                if watcher.done():
                    return
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                await asyncio.sleep(0)  # let the watcher see a disconnect
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()


async def respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: str
) -> None:
    """A complete response with a Content-Length."""
    headers = [*headers, (b"content-type", content_type.encode())]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def redirect(
    send: Any, status: int, location: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """A redirect to `location`."""
    await respond(send, status, b"", [*headers, (b"location", location.encode())], "text/plain")


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket on a free port of `host`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: ImageServer, tls_dir: Path | None = None) -> AsyncIterator[int]:
    """Run `app` on uvicorn in this event loop (over TLS with `tls_dir`); yields its port."""
    options: dict[str, Any] = {}
    if tls_dir is not None:
        (tls_dir / "cert.pem").write_text(SERVER_CERT_PEM)
        (tls_dir / "key.pem").write_text(SERVER_KEY_PEM)
        options = {"ssl_certfile": tls_dir / "cert.pem", "ssl_keyfile": tls_dir / "key.pem"}
    sock = bound_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="off", log_config=None, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), what="uvicorn to start", interval=0.01)
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        yield sock.getsockname()[1]
    finally:
        app.release.set()
        server.should_exit = True
        await task
        sock.close()


class RawServer:
    """A TCP server that counts connections and answers each with fixed bytes."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self.pieces = list(pieces)
        self.connections = 0
        self.port = 0
        self._servers: list[asyncio.Server] = []

    async def __aenter__(self) -> RawServer:
        first = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = first.sockets[0].getsockname()[1]
        self._servers.append(first)
        with contextlib.suppress(OSError):  # also on [::1] where IPv6 is available
            self._servers.append(await asyncio.start_server(self._handle, "::1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            for piece in self.pieces:
                writer.write(piece)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def canary() -> RawServer:
    """An 'internal' server that would happily serve a PNG; its count must stay 0."""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(IMAGES['png'])}\r\n\r\n".encode()
    return RawServer([head + IMAGES["png"]])


class Dialer(httpcore.AsyncNetworkBackend):
    """The network under the checked backend: records each connect, routes PUBLIC_IP locally."""

    def __init__(self, *, hang: bool = False, offline: bool = False) -> None:
        self.attempts: list[tuple[str, int]] = []
        self._hang = hang
        self._offline = offline
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to 127.0.0.1 for PUBLIC_IP, to `host` otherwise."""
        self.attempts.append((host, port))
        if self._hang:
            await asyncio.Event().wait()
        if self._offline:
            raise httpcore.ConnectError("offline")
        target = "127.0.0.1" if host == PUBLIC_IP else host
        return await self._inner.connect_tcp(
            target, port, timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        """As the real backend."""
        await self._inner.sleep(seconds)


class FakeDns:
    """A resolver answering from a table: one answer per lookup, the last one repeating."""

    def __init__(self, table: Mapping[str, list[list[str]]], *, hang: bool = False) -> None:
        self.table = table
        self.lookups: list[str] = []
        self._hang = hang

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        """The next answer for `host`."""
        self.lookups.append(host)
        if self._hang:
            await asyncio.Event().wait()
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.table[host]
        answer = answers[min(self.lookups.count(host), len(answers)) - 1]
        return [ipaddress.ip_address(a) for a in answer]
