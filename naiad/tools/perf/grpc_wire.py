"""A minimal HTTP/2 client for unary gRPC calls: the load generator's fast gRPC path.

grpcio's Python client spends ~250 us of CPU per call, more than naiad
spends serving add_sub, so a load generator built on it measures itself.
This client does only what a unary ``ModelInfer`` needs, on an asyncio
connection: it writes a pre-encoded HEADERS block and the framed message
(split to the server's frame size, within its flow-control windows), reads
frames, answers SETTINGS and PING, grants the server a 2 GiB window (topped up
as data arrives), and completes a call when its stream ends. About 20 us per
call (docs/tools/perf.md).

Response headers are only decoded when a call fails: our SETTINGS set the
HPACK dynamic table to 0 bytes, so every header block stands alone, and a
unary call whose stream carried a whole gRPC message succeeded (a gRPC server
answers an error with trailers only). The trailers of a failed call are
decoded with ``hpack`` for ``grpc-status`` and ``grpc-message``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = 2 ** 31 - 1
_FRAME = struct.Struct(">HBBBI")  # length split 16+8, type, flags, stream id


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def _int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: str, value: str) -> bytes:
    """A header as 'literal without indexing, new name', no Huffman coding."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v


def header_block(path: str, authority: str, scheme: str = "http",
                 metadata: tuple = ()) -> bytes:
    block = b"\x83"  # :method POST (static index 3)
    block += b"\x86" if scheme == "http" else b"\x87"  # :scheme http / https
    block += literal(":path", path) + literal(":authority", authority)
    block += literal("content-type", "application/grpc") + literal("te", "trailers")
    for key, value in metadata:
        block += literal(key.lower(), value)
    return block


# completed call: (ok, error message, message bytes or None, first data ns, end ns)
CallDone = Callable[[bool, str, bytes | None, int, int], None]


class _Stream:
    __slots__ = ("id", "done", "data", "headers", "pending", "first_ns", "window")

    def __init__(self, sid: int, done: CallDone, window: int):
        self.id = sid
        self.done = done
        self.data: list[bytes] = []
        self.headers = b""
        self.pending = b""  # request bytes not yet sent (flow control)
        self.first_ns = 0
        self.window = window


class GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection carrying many concurrent unary calls."""

    def __init__(self, path: str, authority: str, scheme: str = "http",
                 metadata: tuple = ()):
        self.block = header_block(path, authority, scheme, metadata)
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.send_window = 65535  # connection-level, what we may send
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.received = 0
        self.blocked: deque[_Stream] = deque()
        self.ready = asyncio.get_running_loop().create_future()
        self.error = ""
        self._cont: tuple[int, int] | None = None  # (stream, flags) awaiting CONTINUATION

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        settings = struct.pack(">HI", 0x1, 0) + struct.pack(">HI", 0x2, 0) + \
            struct.pack(">HI", 0x4, MAX_WINDOW) + struct.pack(">HI", 0x5, (1 << 24) - 1)
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings) +
                        frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)))

    def connection_lost(self, exc) -> None:
        self._close(f"connection closed{': ' + str(exc) if exc else ''}")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 9:
            hi, lo, kind, flags, sid = _FRAME.unpack_from(buf, pos)
            length = (hi << 8) | lo
            end = pos + 9 + length
            if end > n:
                break
            sid &= 0x7FFFFFFF
            payload = bytes(buf[pos + 9:end])
            pos = end
            if kind == DATA:
                self._on_data(sid, flags, payload, length)
            elif kind == HEADERS or kind == CONTINUATION:
                self._on_headers(kind, sid, flags, payload)
            elif kind == SETTINGS:
                if not flags & ACK:
                    self._on_settings(payload)
            elif kind == PING:
                if not flags & ACK:
                    self.transport.write(frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE:
                self._on_window(sid, struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF)
            elif kind == RST_STREAM:
                code = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else 0
                self._finish(sid, False, f"stream reset by the server (HTTP/2 error {code})")
            elif kind == GOAWAY:
                code = struct.unpack(">I", payload[4:8])[0] if len(payload) >= 8 else 0
                detail = payload[8:].decode(errors="replace")
                self._close(f"the server closed the connection (GOAWAY {code}"
                            f"{': ' + detail if detail else ''})")
        del buf[:pos]

    # -- frames ---------------------------------------------------------------------------------

    def _on_settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for s in self.streams.values():
                    s.window += delta
            elif key == 0x5:
                self.peer_max_frame = value
        self.transport.write(frame(SETTINGS, ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)
        self._flush_blocked()

    def _on_window(self, sid: int, increment: int) -> None:
        if sid == 0:
            self.send_window += increment
        else:
            s = self.streams.get(sid)
            if s is not None:
                s.window += increment
        self._flush_blocked()

    def _on_data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        self.received += length
        if self.received > MAX_WINDOW // 2:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        s = self.streams.get(sid)
        if s is None:
            return
        if flags & PADDED and payload:
            payload = payload[1:len(payload) - payload[0]]
        if not s.first_ns:
            s.first_ns = time.time_ns()
        s.data.append(payload)
        if flags & END_STREAM:
            self._complete(s)

    def _on_headers(self, kind: int, sid: int, flags: int, payload: bytes) -> None:
        if kind == HEADERS:
            if flags & PADDED and payload:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            end_stream = bool(flags & END_STREAM)
        else:  # CONTINUATION of the block a HEADERS frame started
            if self._cont is None or self._cont[0] != sid:
                return
            end_stream = bool(self._cont[1])
        s = self.streams.get(sid)
        if s is not None:
            s.headers += payload
        if not flags & END_HEADERS:
            self._cont = (sid, end_stream)
            return
        self._cont = None
        if s is None:
            return
        if end_stream:  # trailers (or a trailers-only answer): the call is over
            self._complete(s)
        else:  # the response headers: nothing in them is needed
            s.headers = b""

    # -- calls ----------------------------------------------------------------------------------

    def call(self, message: bytes, done: CallDone) -> None:
        """Start one unary call with a serialized request message."""
        if self.error or self.transport is None or self.transport.is_closing():
            done(False, self.error or "connection closed", None, 0, time.time_ns())
            return
        sid = self.next_id
        self.next_id += 2
        s = _Stream(sid, done, self.peer_initial_window)
        self.streams[sid] = s
        body = struct.pack(">BI", 0, len(message)) + message
        out = frame(HEADERS, END_HEADERS, sid, self.block)
        if len(body) <= min(s.window, self.send_window, self.peer_max_frame):
            s.window -= len(body)
            self.send_window -= len(body)
            self.transport.write(out + frame(DATA, END_STREAM, sid, body))
            return
        self.transport.write(out)
        s.pending = body
        self.blocked.append(s)
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        while self.blocked:
            s = self.blocked[0]
            if s.id not in self.streams:
                self.blocked.popleft()
                continue
            chunks = []
            while s.pending:
                n = min(len(s.pending), s.window, self.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                piece, s.pending = s.pending[:n], s.pending[n:]
                s.window -= n
                self.send_window -= n
                chunks.append(frame(DATA, 0 if s.pending else END_STREAM, s.id, piece))
            if chunks:
                self.transport.write(b"".join(chunks))
            if s.pending:
                return  # wait for a WINDOW_UPDATE
            self.blocked.popleft()

    def _complete(self, s: _Stream) -> None:
        self.streams.pop(s.id, None)
        end = time.time_ns()
        data = b"".join(s.data)
        if len(data) >= 5:
            compressed, size = struct.unpack_from(">BI", data)
            if len(data) >= 5 + size and not compressed:
                s.done(True, "", data[5:5 + size], s.first_ns, end)
                return
        status, message = decode_status(s.headers)
        if status == 0 and len(data) >= 5:
            s.done(False, "compressed responses are not supported", None, s.first_ns, end)
            return
        s.done(False, message or f"gRPC status {status}", None, s.first_ns, end)

    def _finish(self, sid: int, ok: bool, error: str) -> None:
        s = self.streams.pop(sid, None)
        if s is not None:
            s.done(ok, error, None, s.first_ns, time.time_ns())

    def _close(self, message: str) -> None:
        self.error = self.error or message
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(message))
        for sid in list(self.streams):
            self._finish(sid, False, self.error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def decode_status(block: bytes) -> tuple[int, str]:
    """(grpc-status, grpc-message) from a trailers header block (-1 if absent)."""
    try:
        from hpack import Decoder
    except ImportError:
        from naiad.core.extras import install_hint

        return -1, f"the server answered with a gRPC error (to read it: {install_hint('tools')})"
    try:
        headers = Decoder().decode(block, raw=True)
    except Exception as exc:  # noqa: BLE001 - a block we cannot read
        return -1, f"unreadable gRPC trailers: {exc}"
    status, message = -1, ""
    for key, value in headers:
        if key == b"grpc-status":
            try:
                status = int(value)
            except ValueError:
                pass
        elif key == b"grpc-message":
            message = unquote(value.decode(errors="replace"))
        elif key == b":status" and value != b"200" and not message:
            message = f"HTTP status {value.decode()}"
    return status, message


async def connect(host: str, port: int, path: str, metadata: tuple = (),
                  ssl_context=None, timeout: float = 30.0) -> GrpcConnection:
    loop = asyncio.get_running_loop()
    scheme = "https" if ssl_context is not None else "http"
    try:
        _, conn = await loop.create_connection(
            lambda: GrpcConnection(path, f"{host}:{port}", scheme, metadata), host, port,
            ssl=ssl_context, server_hostname=host if ssl_context else None)
    except OSError as exc:
        raise ConnectionError(f"unable to connect to {host}:{port}: "
                              f"{exc.strerror or exc}") from None
    await asyncio.wait_for(conn.ready, timeout)
    return conn
