"""naiad's own HTTP/1.1 server (naiad/frontends/asgi_server.py), over raw sockets.

Each test serves a tiny ASGI app on a free loopback port and speaks HTTP by
hand, so framing details (pipelining, chunked bodies, 100-continue, limits,
streaming) are checked byte for byte.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from naiad.frontends.asgi_server import AsgiServer
from naiad.frontends.http import bind_socket

SLOW_STARTED = threading.Event()  # set when the app starts answering /slow


async def echo_app(scope, receive, send):
    """Echoes method, path, query and body; /stream sends three chunks; /slow waits."""
    msg = await receive()
    body = msg["body"]
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i,
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path == "/slow":
        SLOW_STARTED.set()
        await asyncio.sleep(0.3)
    if path == "/boom":
        raise RuntimeError("boom")
    out = b"%s %s %s %d %s" % (scope["method"].encode(), path.encode(), scope["query_string"],
                               len(body), bytes(body[:16]))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


class Served:
    def __init__(self, app=echo_app, **kwargs):
        self.loop = asyncio.new_event_loop()
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = AsgiServer(app, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self.sock), self.loop).result(5)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(2), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def connect(self) -> Conn:
        return Conn(socket.create_connection(("127.0.0.1", self.port), timeout=5))


class Conn:
    """A client socket with a read buffer, so pipelined responses can be read one by one."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def settimeout(self, t: float) -> None:
        self.sock.settimeout(t)

    def recv(self, n: int) -> bytes:
        if self.buf:
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        return self.sock.recv(n)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk

    def read_response(self) -> tuple[int, dict, bytes]:
        """Read one Content-Length or chunked response."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(b":", 1)
            headers[k.strip().lower().decode()] = v.strip().decode()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body
        assert headers.get("transfer-encoding") == "chunked"
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(self.buf) < size + 2:
                self._fill()
            body += self.buf[:size]
            self.buf = self.buf[size + 2:]
            if size == 0:
                return status, headers, body


def read_response(c: Conn) -> tuple[int, dict, bytes]:
    return c.read_response()


def test_keep_alive_serves_several_requests_on_one_connection():
    with Served() as srv, srv.connect() as s:
        for i in range(3):
            s.sendall(b"POST /x?q=%d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" % i)
            status, headers, body = read_response(s)
            assert status == 200
            assert body == b"POST /x q=%d 3 abc" % i
            assert "connection" not in headers


def test_pipelined_requests_answered_in_order():
    with Served() as srv, srv.connect() as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        _, _, first = read_response(s)
        _, _, second = read_response(s)
        assert first.startswith(b"GET /slow")
        assert second.startswith(b"GET /fast")


def test_chunked_request_body_is_reassembled():
    with Served() as srv, srv.connect() as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        status, _, body = read_response(s)
        assert status == 200 and body == b"POST /c  7 abcdefg"


def test_expect_100_continue_gets_interim_response():
    with Served() as srv, srv.connect() as s:
        s.sendall(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim = s.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"hi")
        status, _, body = read_response(s)
        assert status == 200 and body.endswith(b"2 hi")


def test_http10_closes_after_response():
    with Served() as srv, srv.connect() as s:
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(s)
        assert status == 200
        assert headers.get("connection") == "close"
        assert s.recv(10) == b""


def test_oversized_declared_body_refused_before_it_is_sent():
    with Served(max_body_size=1000) as srv, srv.connect() as s:
        s.sendall(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        status, headers, body = read_response(s)
        assert status == 413
        assert b"exceeds the limit of 1000 bytes" in body
        assert headers["connection"] == "close"


def test_oversized_chunked_body_refused():
    with Served(max_body_size=1000) as srv, srv.connect() as s:
        s.sendall(b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            try:
                s.sendall(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
            except OSError:
                break
        status, _, _ = read_response(s)
        assert status == 413


def test_streamed_response_uses_chunked_encoding():
    with Served() as srv, srv.connect() as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = read_response(s)
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_app_error_answers_500_without_traceback_and_server_survives():
    with Served() as srv:
        with srv.connect() as s:
            s.sendall(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
            status, _, body = read_response(s)
            assert status == 500
            assert b"Traceback" not in body
        with srv.connect() as s:
            s.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(s)[0] == 200


def test_malformed_request_gets_400_and_close():
    with Served() as srv, srv.connect() as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        status, headers, _ = read_response(s)
        assert status == 400
        assert headers["connection"] == "close"


def test_idle_keep_alive_connection_is_closed():
    with Served(keepalive_timeout=0.2) as srv, srv.connect() as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s)[0] == 200
        deadline = time.monotonic() + 3
        s.settimeout(3)
        assert s.recv(10) == b""
        assert time.monotonic() < deadline


def test_graceful_stop_finishes_request_in_flight():
    srv = Served()
    srv.__enter__()
    try:
        SLOW_STARTED.clear()
        s = srv.connect()
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        assert SLOW_STARTED.wait(10)  # the request is in flight when the stop begins
        stopper = asyncio.run_coroutine_threadsafe(srv.server.stop(5), srv.loop)
        status, _, body = read_response(s)
        assert status == 200 and body.startswith(b"GET /slow")
        stopper.result(5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    finally:
        srv.loop.call_soon_threadsafe(srv.loop.stop)
        srv.thread.join(5)


async def waiting_app(scope, receive, send):
    """An /infer route that suspends (bare yield, a future, a sleep) before answering."""
    await receive()
    await asyncio.sleep(0)
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, b"late")
    body = await fut
    await asyncio.sleep(0.01)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def test_infer_route_that_suspends_is_finished_by_a_task():
    with Served(waiting_app) as srv, srv.connect() as s:
        for _ in range(3):
            s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            status, _, body = read_response(s)
            assert (status, body) == (200, b"late")
