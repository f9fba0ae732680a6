"""Trivial v2 servers that answer every infer request with canned bytes at once.

    python -m harness.trivial http PORT
    python -m harness.trivial grpc PORT

They serve just enough of the protocols for ``naiad perf`` against add_sub
(server metadata without the statistics extension, the model's metadata and
config, and ModelInfer), and spend almost nothing per request, so a load
generator driving them measures its own ceiling. The HTTP one is a uvloop
protocol answering with add_sub's binary response; the gRPC one a raw
HTTP/2 server (no HPACK table, literal headers) answering ModelInfer with
add_sub's response message and ``grpc-status: 0``.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys

import httptools
import numpy as np

MODEL = "add_sub"
METADATA = {"name": MODEL, "versions": ["1"], "platform": "python",
            "inputs": [{"name": n, "datatype": "FP32", "shape": [4]} for n in ("INPUT0", "INPUT1")],
            "outputs": [{"name": n, "datatype": "FP32", "shape": [4]}
                        for n in ("OUTPUT0", "OUTPUT1")]}
CONFIG = {"name": MODEL, "backend": "python", "max_batch_size": 0,
          "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [4]}
                    for n in ("INPUT0", "INPUT1")],
          "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [4]}
                     for n in ("OUTPUT0", "OUTPUT1")]}
SERVER = {"name": "trivial", "version": "0", "extensions": []}


def _http_response(status: int, body: bytes, headers: tuple = ()) -> bytes:
    head = [f"HTTP/1.1 {status} OK", f"Content-Length: {len(body)}",
            "Content-Type: application/json", *[f"{k}: {v}" for k, v in headers]]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _infer_http() -> bytes:
    out = np.arange(4, dtype=np.float32).tobytes()
    hdr = json.dumps({"model_name": MODEL, "model_version": "1", "outputs": [
        {"name": n, "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
        for n in ("OUTPUT0", "OUTPUT1")]}).encode()
    return _http_response(200, hdr + out + out, (("Inference-Header-Content-Length", len(hdr)),))


class HttpServer(asyncio.Protocol):
    INFER = _infer_http()
    ROUTES = {b"/v2": _http_response(200, json.dumps(SERVER).encode()),
              f"/v2/models/{MODEL}".encode(): _http_response(200, json.dumps(METADATA).encode()),
              f"/v2/models/{MODEL}/config".encode(): _http_response(
                  200, json.dumps(CONFIG).encode()),
              b"/v2/health/ready": _http_response(200, b"")}

    def connection_made(self, transport):
        self.t = transport
        self.p = httptools.HttpRequestParser(self)
        self.url = b""

    def data_received(self, data):
        self.p.feed_data(data)

    def on_url(self, url):
        self.url = url

    def on_message_complete(self):
        url, self.url = self.url, b""
        if url.endswith(b"/infer"):
            self.t.write(self.INFER)
        else:
            self.t.write(self.ROUTES.get(url, _http_response(404, b'{"error":"not found"}')))


# -- gRPC over a raw HTTP/2 server ---------------------------------------------------------


def _frame(kind, flags, sid, payload=b""):
    n = len(payload)
    return struct.pack(">HBBBI", n >> 8, n & 0xFF, kind, flags, sid) + payload


def _lit(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def _grpc_messages():
    from naiad.protocol import grpc_service_pb2 as pb

    r = pb.ModelInferResponse(model_name=MODEL, model_version="1")
    for n in ("OUTPUT0", "OUTPUT1"):
        t = r.outputs.add()
        t.name, t.datatype = n, "FP32"
        t.shape.append(4)
        r.raw_output_contents.append(np.arange(4, dtype=np.float32).tobytes())
    meta = pb.ModelMetadataResponse(name=MODEL, versions=["1"], platform="python")
    for field, names in ((meta.inputs, ("INPUT0", "INPUT1")), (meta.outputs,
                                                                  ("OUTPUT0", "OUTPUT1"))):
        for n in names:
            t = field.add()
            t.name, t.datatype = n, "FP32"
            t.shape.append(4)
    cfg = pb.ModelConfigResponse()
    cfg.config.name, cfg.config.backend = MODEL, "python"
    for field, names in ((cfg.config.input, ("INPUT0", "INPUT1")),
                         (cfg.config.output, ("OUTPUT0", "OUTPUT1"))):
        for n in names:
            t = field.add()
            t.name, t.data_type = n, 11  # TYPE_FP32
            t.dims.append(4)
    server = pb.ServerMetadataResponse(name="trivial", version="0")
    return {b"ModelInfer": r, b"ModelMetadata": meta, b"ModelConfig": cfg,
            b"ServerMetadata": server}


class GrpcServer(asyncio.Protocol):
    HEAD = b"\x88" + _lit("content-type", "application/grpc")  # :status 200
    TRAILERS = _lit("grpc-status", "0")
    MESSAGES = {k: v.SerializeToString() for k, v in _grpc_messages().items()}

    def connection_made(self, transport):
        self.t = transport
        self.buf = bytearray()
        self.preface = False
        self.paths: dict[int, bytes] = {}
        self.t.write(_frame(0x4, 0, 0, struct.pack(">HI", 0x1, 0)) +  # no HPACK table
                     _frame(0x8, 0, 0, struct.pack(">I", 2 ** 30)))
        self.received = 0

    def data_received(self, data):
        self.buf += data
        if not self.preface:
            if len(self.buf) < 24:
                return
            del self.buf[:24]
            self.preface = True
        out = []
        pos = 0
        n = len(self.buf)
        while n - pos >= 9:
            hi, lo, kind, flags, sid = struct.unpack_from(">HBBBI", self.buf, pos)
            length = (hi << 8) | lo
            if n - pos - 9 < length:
                break
            payload = bytes(self.buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            sid &= 0x7FFFFFFF
            if kind == 0x1:  # HEADERS: remember which method (by the path's tail)
                method = next((m for m in self.MESSAGES if m in payload), None)
                if method is None:  # a Huffman-coded path (grpcio): decode the block
                    from hpack import Decoder

                    path = dict(Decoder().decode(payload, raw=True)).get(b":path", b"")
                    method = path.rsplit(b"/", 1)[-1]
                self.paths[sid] = method
            elif kind == 0x0:
                self.received += length
                if flags & 0x1:
                    msg = self.MESSAGES.get(self.paths.pop(sid, b""), b"")
                    body = struct.pack(">BI", 0, len(msg)) + msg
                    out.append(_frame(0x1, 0x4, sid, self.HEAD) + _frame(0x0, 0, sid, body) +
                               _frame(0x1, 0x5, sid, self.TRAILERS))
            elif kind == 0x4 and not flags & 0x1:
                out.append(_frame(0x4, 0x1, 0))
            elif kind == 0x6 and not flags & 0x1:
                out.append(_frame(0x6, 0x1, 0, payload))
        del self.buf[:pos]
        if self.received > 2 ** 29:
            out.append(_frame(0x8, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        if out:
            self.t.write(b"".join(out))


async def serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    factory = HttpServer if kind == "http" else GrpcServer
    server = await loop.create_server(factory, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(sys.argv[1], int(sys.argv[2])))
