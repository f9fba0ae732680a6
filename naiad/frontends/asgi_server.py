"""A small HTTP/1.1 server for ASGI applications, on httptools and asyncio.

Why not uvicorn: measured on this project's add_sub endpoint, uvicorn's
per-request machinery (an ASGI task wrapped in proxy-header middleware, an
asyncio.Event per receive, a regex check per response header, and two socket
writes per response: head, then body) cost more than the whole inference
path. This server parses with the same httptools parser, hands the app the
complete body in one ``http.request`` message, and writes the response head
and body with one ``transport.write``. The app stays a plain ASGI callable,
so it still runs under uvicorn (``NAIAD_HTTP_SERVER=uvicorn``).

What it supports: HTTP/1.0 and 1.1, keep-alive, pipelined requests (answered
in order), Content-Length and chunked request bodies (bounded by
``max_body_size``: larger bodies get 413 before they are buffered), ``Expect:
100-continue``, streamed responses (chunked transfer encoding, for server-sent
events), write back-pressure, idle keep-alive timeouts, and a graceful
shutdown that lets requests in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools

log = logging.getLogger("naiad.http")

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Payload Too Large", 415: b"Unsupported Media Type",
    429: b"Too Many Requests", 499: b"Client Closed Request", 500: b"Internal Server Error",
    501: b"Not Implemented", 503: b"Service Unavailable",
}
_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()
}


async def answer_lifespan(scope: dict, receive: Callable, send: Callable) -> None:
    """For an app's non-HTTP scopes: acknowledge a server's lifespan events (uvicorn
    sends them; this server does not) and ignore anything else."""
    if scope["type"] != "lifespan":
        return
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _too_large_body(limit: int) -> bytes:
    return b'{"error":"request body exceeds the limit of %d bytes"}' % limit


def _status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = b"HTTP/1.1 %d Status\r\n" % code
    return line


# bodies from this size on are written beside their head instead of joined to it
_SEPARATE_WRITE_BYTES = 64 * 1024


class _Request:
    __slots__ = ("scope", "body", "keep_alive")

    def __init__(self, scope: dict, body: bytearray, keep_alive: bool):
        self.scope = scope
        self.body = body
        self.keep_alive = keep_alive


class ServerState:
    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task] = set()
        self.shutting_down = False


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: Callable, loop: asyncio.AbstractEventLoop, state: ServerState,
                 max_body_size: int, keepalive_timeout: float, max_pipeline: int = 32,
                 too_large_body: Callable[[int], bytes] | None = None):
        self.app = app
        self.too_large_body = too_large_body or _too_large_body
        self.loop = loop
        self.state = state
        self.max_body_size = max_body_size
        self.keepalive_timeout = keepalive_timeout
        self.max_pipeline = max_pipeline
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.client: tuple | None = None
        self.server_addr: tuple | None = None
        # request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._too_large = False
        # requests parsed and waiting their turn (pipelining)
        self._pending: deque[_Request] = deque()
        self._busy = False
        self._reading_paused = False
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._disconnect_waiter: asyncio.Future | None = None
        self._discard = False

    # -- connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(self)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self.server_addr = tuple(sock[:2]) if isinstance(sock, tuple) else None
        self._arm_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        self._cancel_keepalive()
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        self._last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error_and_close(400, b'{"error":"protocol upgrades are not supported"}')
        except httptools.HttpParserError as exc:
            msg = str(exc).replace('"', "'")[:200]
            self._error_and_close(400, b'{"error":"malformed HTTP request: %s"}' % msg.encode())

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = bytearray()
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_size:
                        self._too_large = True
                except ValueError:
                    pass
            elif name == b"expect" and value.lower() == b"100-continue" and not self._too_large:
                if self.transport is not None:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._too_large:
            self._reject_too_large()

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        if len(self._body) + len(body) > self.max_body_size:
            self._too_large = True
            self._body = bytearray()
            self._reject_too_large()
            return
        self._body += body

    def _reject_too_large(self) -> None:
        """413 at once, before the body is read; later input is discarded."""
        if self._busy or self._pending:
            return  # answered in turn by on_message_complete
        self._discard = True
        self._error_and_close(413, self.too_large_body(self.max_body_size), linger=True)

    def on_message_complete(self) -> None:
        parser = self.parser
        url = self._url
        path_bytes, _, query = url.partition(b"?")
        path = path_bytes.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": path,
            "raw_path": path_bytes,
            "query_string": query,
            "root_path": "",
            "headers": self._headers,
            "client": self.client,
            "server": self.server_addr,
        }
        keep_alive = parser.should_keep_alive() and not self.state.shutting_down
        if self._too_large:
            if self._discard:
                return  # already answered by _reject_too_large
            # answered in turn, without the body; this connection then closes
            keep_alive = False
            self._body = bytearray()
            req = _Request(scope, bytearray(), False)
            req.scope["naiad.too_large"] = True
        else:
            req = _Request(scope, self._body, keep_alive)
        self._body = bytearray()
        self._pending.append(req)
        if not self._busy:
            self._next()
        elif len(self._pending) >= self.max_pipeline and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- running requests -----------------------------------------------------------------

    def _next(self) -> None:
        if not self._pending or self.closed:
            self._busy = False
            if self._reading_paused and not self.closed:
                self._reading_paused = False
                self.transport.resume_reading()
            if not self.closed:
                self._arm_keepalive()
            return
        self._busy = True
        req = self._pending.popleft()
        if req.scope.get("naiad.too_large"):
            self._error_and_close(413, self.too_large_body(self.max_body_size))
            return
        cycle = _Cycle(self, req)
        coro = cycle.run()
        if not req.scope["path"].endswith("/infer"):
            self._spawn(coro)
            return
        # Inference usually completes without ever waiting (an idle cheap model runs
        # inline): drive the coroutine here, and only if it suspends hand the rest to
        # a task. This saves a task and a loop iteration per request.
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except BaseException:  # _Cycle.run answers errors itself; this is a last resort
            log.exception("HTTP request handler failed")
            self.close()
            return
        self._spawn(_resume(coro, waiting))

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    def _finished(self, keep_alive: bool) -> None:
        if not keep_alive or self.state.shutting_down:
            self.close()
            return
        self._next()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def shutdown(self) -> None:
        """Stop after the current response (graceful shutdown)."""
        if not self._busy:
            self.close()

    def _error_and_close(self, status: int, body: bytes, linger: bool = False) -> None:
        """Answer and close. ``linger``: the client may still be sending; half-close
        and read (discarding) for a moment, so it sees the answer rather than a reset."""
        if self.transport is None or self.closed:
            return
        head = _status_line(status) + (
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body))
        self.transport.write(head + body)
        if linger and self.transport.can_write_eof():
            self._discard = True
            self.transport.write_eof()
            self.loop.call_later(2.0, self.close)
            return
        self.close()

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None

    async def wait_disconnect(self) -> None:
        if self.closed:
            return
        self._disconnect_waiter = self.loop.create_future()
        await self._disconnect_waiter

    # -- keep-alive -------------------------------------------------------------------------

    # One timer per connection, re-armed only when it fires: activity just
    # updates a timestamp, so busy connections create no timer objects.

    def _arm_keepalive(self) -> None:
        self._last_active = self.loop.time()
        if self._keepalive_handle is None and self.keepalive_timeout > 0:
            self._keepalive_handle = self.loop.call_later(self.keepalive_timeout, self._idle)

    def _cancel_keepalive(self) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def _idle(self) -> None:
        self._keepalive_handle = None
        if self.closed:
            return
        remaining = self._last_active + self.keepalive_timeout - self.loop.time()
        if remaining > 0 or self._busy or self._pending:
            self._keepalive_handle = self.loop.call_later(
                max(remaining, 0.05) if remaining > 0 else self.keepalive_timeout, self._idle)
            return
        self.close()


async def _resume(coro, waiting):
    """Finish, inside a task, a coroutine that was started outside one.

    ``waiting`` is what the coroutine yielded: an asyncio future, or None for a
    bare yield (``asyncio.sleep(0)``). Wait for it, then send into the
    coroutine as a Task would; the coroutine reads the future's outcome itself.
    Cancelling this task cancels the coroutine.
    """
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False
                await asyncio.wait((waiting,))
        except asyncio.CancelledError:
            try:
                waiting = coro.throw(asyncio.CancelledError())
            except (StopIteration, asyncio.CancelledError):
                return
            continue
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


class _Cycle:
    """One request/response exchange: the ASGI receive/send pair."""

    __slots__ = ("proto", "req", "body_sent", "started", "complete", "status", "head",
                 "chunked", "keep_alive")

    def __init__(self, proto: HttpProtocol, req: _Request):
        self.proto = proto
        self.req = req
        self.body_sent = False
        self.started = False
        self.complete = False
        self.status = 0
        self.head = b""
        self.chunked = False
        self.keep_alive = req.keep_alive

    async def run(self) -> None:
        proto = self.proto
        try:
            await proto.app(self.req.scope, self.receive, self.send)
        except BaseException as exc:  # noqa: BLE001 - the connection must answer or close
            if isinstance(exc, asyncio.CancelledError):
                proto.close()
                raise
            log.exception("unhandled error in the HTTP application")
            if not self.started:
                self.keep_alive = False
                await self.send({"type": "http.response.start", "status": 500,
                                 "headers": [(b"content-type", b"application/json")]})
                await self.send({"type": "http.response.body",
                                 "body": b'{"error":"internal server error"}'})
            else:
                proto.close()
                return
        if not self.complete:
            proto.close()
            return
        proto._finished(self.keep_alive)

    async def receive(self) -> dict:
        if not self.body_sent:
            self.body_sent = True
            # the whole body at once, as a writable buffer (tensors view it without copying)
            return {"type": "http.request", "body": self.req.body, "more_body": False}
        if not self.complete:
            await self.proto.wait_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        proto = self.proto
        if proto.closed:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind}")
            self.started = True
            self.status = message["status"]
            parts = [_status_line(self.status)]
            has_length = False
            for name, value in message.get("headers", ()):
                if not has_length and name.lower() == b"content-length":
                    has_length = True
                parts += (name, b": ", value, b"\r\n")
            if not has_length and self.req.scope["method"] != "HEAD" and \
                    self.status not in (204, 304):
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            if not self.keep_alive:
                parts.append(b"Connection: close\r\n")
            parts.append(b"\r\n")
            self.head = b"".join(parts)
            return
        if kind != "http.response.body" or self.complete:
            raise RuntimeError(f"unexpected ASGI message {kind}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.req.scope["method"] == "HEAD":
            body = b""
        if self.chunked:
            data = (b"%x\r\n" % len(body) + body + b"\r\n") if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
        if self.head:
            if len(data) >= _SEPARATE_WRITE_BYTES:  # a big body is not copied behind its head
                proto.transport.writelines((self.head, data))
                data = b""
            else:
                data = self.head + data if data else self.head
            self.head = b""
        if data:
            proto.transport.write(data)
        if not more:
            self.complete = True
        elif proto._write_paused:
            await proto.drain()


class AsgiServer:
    """Serve an ASGI app on an already-bound listening socket."""

    def __init__(self, app: Callable, max_body_size: int = 64 * 1024 * 1024,
                 keepalive_timeout: float = 120.0,
                 too_large_body: Callable[[int], bytes] | None = None):
        """``too_large_body(limit)``: the JSON body of the 413 answer (default Triton's)."""
        self.app = app
        self.too_large_body = too_large_body
        self.max_body_size = max_body_size
        self.keepalive_timeout = keepalive_timeout
        self.state = ServerState()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> HttpProtocol:
            return HttpProtocol(self.app, loop, self.state, self.max_body_size,
                                self.keepalive_timeout, too_large_body=self.too_large_body)

        self._server = await loop.create_server(factory, sock=sock, backlog=2048)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), close."""
        self.state.shutting_down = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.state.connections):
            conn.shutdown()
        tasks = list(self.state.tasks)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
        for conn in list(self.state.connections):
            conn.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None
