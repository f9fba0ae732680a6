"""A small, fast HTTP/1.1 client for the load generator: asyncio + httptools.

One :class:`HttpConnection` is one keep-alive connection with at most one
request in flight (what a perf_analyzer context is). Requests are bytes built
once (``build_request``); the response is parsed by httptools' C parser and
handed to a callback with its timings, so a request costs a few tens of
microseconds of client CPU (measured in docs/tools/perf.md), far below what a
server spends on it. :func:`fetch` is the same connection used for one-off
control calls (metadata, statistics, shared-memory registration).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    """A request that could not be completed (connection refused, closed, ...)."""


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """'host:port', 'http://host:port/prefix' -> (tls, host, port, path prefix)."""
    text = url if "://" in url else "http://" + url
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme '{parts.scheme}' in '{url}'")
    tls = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if tls else 80)
    return tls, host, port, parts.path.rstrip("/")


def build_request(method: str, host: str, path: str, body: bytes = b"",
                  headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for key, value in headers or ():
        lines.append(f"{key}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Callback = Callable[[int, bytes, int, int], None]  # status, body, first byte ns, done ns


class HttpConnection(asyncio.Protocol):
    """A keep-alive connection; ``send(data, callback)`` with one request in flight."""

    def __init__(self, keep_body: bool = True):
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._callback: Callback | None = None
        self._body: list[bytes] = []
        self._first_ns = 0
        self.closed: asyncio.Future | None = None
        self.error: str = ""
        # the last response's Inference-Header-Content-Length (binary tensor data)
        self.header_length: int | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self._first_ns:
            self._first_ns = time.time_ns()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad HTTP response: {exc}")
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self._fail(f"connection closed by the server{': ' + str(exc) if exc else ''}")

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.header_length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 31 and name.lower() == b"inference-header-content-length":
            try:
                self.header_length = int(value)
            except ValueError:
                pass

    def on_body(self, body: bytes) -> None:
        if self.keep_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        callback, self._callback = self._callback, None
        body = b"".join(self._body) if self._body else b""
        self._body = []
        first, self._first_ns = self._first_ns, 0
        status = self._parser.get_status_code()
        if callback is not None:
            callback(status, body, first, time.time_ns())

    # -- use
    def _fail(self, message: str) -> None:
        self.error = self.error or message
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(0, message.encode(), 0, time.time_ns())

    def send(self, data: bytes, callback: Callback) -> None:
        if self.transport is None or self.transport.is_closing():
            callback(0, (self.error or "connection closed").encode(), 0, time.time_ns())
            return
        self._callback = callback
        self._first_ns = 0
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def ssl_context(verify_peer: int = 1, verify_host: int = 2, ca_file: str = "",
                cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.check_hostname = bool(verify_host) and bool(verify_peer)
    if not verify_peer:
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


async def connect(host: str, port: int, tls: ssl.SSLContext | None = None,
                  keep_body: bool = True) -> HttpConnection:
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(lambda: HttpConnection(keep_body), host, port,
                                               ssl=tls, server_hostname=host if tls else None)
    except OSError as exc:
        raise HttpError(f"unable to connect to {host}:{port}: {exc.strerror or exc}") from None
    return conn


async def roundtrip(conn: HttpConnection, data: bytes, timeout: float = 60.0
                    ) -> tuple[int, bytes]:
    fut = asyncio.get_running_loop().create_future()

    def done(status: int, body: bytes, first: int, end: int) -> None:
        if not fut.done():
            fut.set_result((status, body))

    conn.send(data, done)
    status, body = await asyncio.wait_for(fut, timeout)
    if status == 0:
        raise HttpError(body.decode(errors="replace"))
    return status, body
