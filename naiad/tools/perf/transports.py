"""The two wire transports of the load generator: HTTP/1.1 and gRPC.

A transport turns a data step into a *prepared* request once (the bytes that
do not change between requests) and sends it on a *slot*: a keep-alive HTTP
connection, or a gRPC call on one shared channel (or one bidirectional
stream per slot with ``--streaming``). Sending never awaits: the slot calls
back with a :class:`Result` when the response is complete, so one event loop
keeps many requests in flight cheaply.

Per-request parameters (sequence id/start/end, ``--request-parameter``) are
added without re-encoding the tensors: appended to the JSON header over HTTP,
and over gRPC as a second serialized ``ModelInferRequest`` holding only
``parameters``, concatenated to the prepared bytes (protobuf merges them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from naiad.core import tensor_bytes as tb
from naiad.protocol import tensor_codec
from naiad.tools.perf import http_wire
from naiad.tools.perf.data import Step, Value, tensor_bytes


@dataclasses.dataclass
class Result:
    ok: bool
    error: str
    start_ns: int
    end_ns: int  # the last (non-empty) response
    send_ns: int  # time spent sending
    recv_ns: int  # time spent receiving/reading the response
    responses: int = 1
    null_last: bool = False
    response_times: list[int] | None = None  # every response's time (profile export)
    outputs: list[dict] | None = None  # decoded outputs (profile export)


Callback = Callable[[Result], None]


@dataclasses.dataclass
class ShmPlan:
    """Where a step's inputs live in this process's input region, and the output region."""
    input_region: str
    input_offsets: dict[str, tuple[int, int]]  # input -> (offset, byte size)
    output_region: str
    output_size: int  # bytes per output


class Prepared:
    """One step, encoded for a transport."""

    def __init__(self, index: int, step: Step):
        self.index = index
        self.step = step


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class HttpTransport:
    name = "http"

    def __init__(self, url: str, model: str, version: str, outputs: list[str],
                 headers: list[tuple[str, str]], input_format: str = "binary",
                 output_format: str = "binary", tls=None, keep_outputs: bool = False):
        self.tls_flag, self.host, self.port, prefix = http_wire.parse_url(url)
        self.tls = tls
        path = f"{prefix}/v2/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{quote(version, safe='')}"
        self.path = path + "/infer"
        self.outputs = outputs
        self.headers = headers
        self.binary_in = input_format == "binary"
        self.binary_out = output_format == "binary"
        self.keep_outputs = keep_outputs

    def prepare(self, index: int, step: Step, shm: ShmPlan | None = None) -> Prepared:
        p = Prepared(index, step)
        inputs, blobs = [], []
        for name, v in step.items():
            entry: dict[str, Any] = {"name": name, "shape": list(v.array.shape),
                                     "datatype": v.datatype}
            if shm is not None:
                offset, size = shm.input_offsets[name]
                entry["parameters"] = {"shared_memory_region": shm.input_region,
                                       "shared_memory_byte_size": size,
                                       "shared_memory_offset": offset}
            elif self.binary_in:
                raw = tensor_bytes(v)
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = _json_list(v)
            inputs.append(entry)
        outputs = []
        for i, name in enumerate(self.outputs):
            if shm is not None:
                outputs.append({"name": name, "parameters": {
                    "shared_memory_region": shm.output_region,
                    "shared_memory_byte_size": shm.output_size,
                    "shared_memory_offset": i * shm.output_size}})
            else:
                outputs.append({"name": name, "parameters": {"binary_data": self.binary_out}})
        p.header = {"inputs": inputs, "outputs": outputs}
        p.binary = b"".join(blobs)
        p.full = self._encode(p, None)
        return p

    def _encode(self, p: Prepared, params: dict | None) -> bytes:
        header = p.header if not params else {**p.header, "parameters": params}
        hdr = orjson.dumps(header)
        headers = [("Content-Type", "application/octet-stream" if p.binary else
                    "application/json")]
        if p.binary:
            headers.append(("Inference-Header-Content-Length", str(len(hdr))))
        headers += self.headers
        return http_wire.build_request("POST", self.host, self.path, hdr + p.binary, headers)

    async def open(self) -> None:
        pass

    async def new_slot(self) -> HttpSlot:
        conn = await http_wire.connect(self.host, self.port, self.tls,
                                       keep_body=True)
        return HttpSlot(self, conn)

    async def close(self) -> None:
        pass


def _json_list(v: Value) -> list:
    data = tensor_codec.json_data(v.datatype, v.array)
    return data.tolist() if isinstance(data, np.ndarray) else data


class HttpSlot:
    def __init__(self, transport: HttpTransport, conn: http_wire.HttpConnection):
        self.t = transport
        self.conn = conn

    def send(self, p: Prepared, params: dict | None, callback: Callback) -> None:
        t0 = time.time_ns()
        data = p.full if not params else self.t._encode(p, params)
        conn = self.conn

        def done(status: int, body: bytes, first_ns: int, end_ns: int) -> None:
            if status == 200:
                outputs = (_http_outputs(body, conn.header_length) if self.t.keep_outputs
                           else None)
                callback(Result(True, "", t0, end_ns, sent_ns,
                                end_ns - first_ns if first_ns else 0, outputs=outputs))
                return
            callback(Result(False, _http_error(status, body), t0, end_ns, 0, 0))

        sent_ns = 0
        conn.send(data, done)
        sent_ns = time.time_ns() - t0

    def close(self) -> None:
        self.conn.close()


def _http_error(status: int, body: bytes) -> str:
    if status == 0:
        return body.decode(errors="replace")
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and doc.get("error"):
            return str(doc["error"])
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {status}: {body[:200].decode(errors='replace')}"


def _http_outputs(body: bytes, header_length: int | None) -> list[dict]:
    """A response body's outputs as {name: flat list} (profile export)."""
    if header_length is None:
        header_length = len(body)
    try:
        doc = orjson.loads(body[:header_length])
    except orjson.JSONDecodeError:
        return []
    binary = body[header_length:]
    out, offset = {}, 0
    for o in doc.get("outputs", []):
        params = o.get("parameters") or {}
        if "data" in o:
            out[o["name"]] = o["data"]
        elif "binary_data_size" in params:
            size = int(params["binary_data_size"])
            raw = binary[offset:offset + size]
            offset += size
            out[o["name"]] = _decode(raw, o["datatype"], o.get("shape", []), o["name"])
    return [out]


def _decode(raw: bytes, datatype: str, shape, name: str):
    try:
        shape = tuple(int(d) for d in shape)
        if datatype == "BYTES":
            arr = tb.decode_bytes_elements(raw, shape, name)
            return [bytes(x).decode("utf-8", "replace") for x in arr.reshape(-1)]
        return tb.decode_raw(raw, datatype, shape, name).reshape(-1).tolist()
    except Exception:  # noqa: BLE001 - export only, never fails a measurement
        return []


# ---------------------------------------------------------------------------
# gRPC
# ---------------------------------------------------------------------------

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def _identity(b):
    return b


def grpc_channel(url: str, ssl: bool = False, root: str = "", key: str = "", chain: str = ""):
    import grpc

    target = url.split("://", 1)[1] if "://" in url else url
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    if ssl:
        def read(path: str) -> bytes | None:
            return open(path, "rb").read() if path else None

        creds = grpc.ssl_channel_credentials(read(root), read(key), read(chain))
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


class GrpcTransport:
    name = "grpc"

    #: calls per raw HTTP/2 connection before another is opened (like tritonclient's
    #: channel sharing)
    SLOTS_PER_CONNECTION = 16

    def __init__(self, channel_factory: Callable[[], Any], model: str, version: str,
                 outputs: list[str], headers: list[tuple[str, str]], compression: str = "none",
                 streaming: bool = False, keep_outputs: bool = False, url: str = "",
                 tls=None):
        from naiad.protocol import grpc_service_pb2 as pb

        self.pb = pb
        self.channel_factory = channel_factory
        self.model = model
        self.version = version
        self.outputs = outputs
        self.metadata = tuple((k.lower(), v) for k, v in headers) or None
        self.compression = compression
        self.streaming = streaming
        self.keep_outputs = keep_outputs
        self.channel = None
        self.url = url
        self.tls = tls
        # unary calls without compression take the raw HTTP/2 path (grpc_wire)
        self.raw = not streaming and compression == "none" and bool(url)
        self._conns: list = []
        self._slots_on_last = 0

    def prepare(self, index: int, step: Step, shm: ShmPlan | None = None) -> Prepared:
        from naiad.protocol.grpc_codec import set_parameters

        p = Prepared(index, step)
        msg = self.pb.ModelInferRequest(model_name=self.model, model_version=self.version)
        for name, v in step.items():
            t = msg.inputs.add()
            t.name, t.datatype = name, v.datatype
            t.shape.extend(v.array.shape or v.shape)
            if shm is not None:
                offset, size = shm.input_offsets[name]
                set_parameters(t.parameters, {"shared_memory_region": shm.input_region,
                                              "shared_memory_byte_size": size,
                                              "shared_memory_offset": offset})
            else:
                msg.raw_input_contents.append(tensor_bytes(v))
        for i, name in enumerate(self.outputs):
            o = msg.outputs.add()
            o.name = name
            if shm is not None:
                set_parameters(o.parameters, {"shared_memory_region": shm.output_region,
                                              "shared_memory_byte_size": shm.output_size,
                                              "shared_memory_offset": i * shm.output_size})
        p.full = msg.SerializeToString()
        return p

    def encode(self, p: Prepared, params: dict | None, request_id: str = "") -> bytes:
        if not params and not request_id:
            return p.full
        from naiad.protocol.grpc_codec import set_parameters

        extra = self.pb.ModelInferRequest(id=request_id)
        if params:
            set_parameters(extra.parameters, params)
        return p.full + extra.SerializeToString()

    async def open(self) -> None:
        import grpc

        if self.raw:
            return
        self.channel = self.channel_factory()
        self._compression = {"gzip": grpc.Compression.Gzip,
                             "deflate": grpc.Compression.Deflate}.get(self.compression)
        self.infer = self.channel.unary_unary(_INFER, request_serializer=_identity,
                                              response_deserializer=_identity)
        self.stream = self.channel.stream_stream(_STREAM, request_serializer=_identity,
                                                 response_deserializer=_identity)

    async def new_slot(self):
        if self.raw:
            from naiad.tools.perf import grpc_wire

            if not self._conns or self._slots_on_last >= self.SLOTS_PER_CONNECTION:
                target = self.url.split("://", 1)[-1]
                host, _, port = target.rpartition(":")
                conn = await grpc_wire.connect(host or "localhost", int(port), _INFER,
                                               self.metadata or (), self.tls)
                self._conns.append(conn)
                self._slots_on_last = 0
            self._slots_on_last += 1
            return GrpcRawSlot(self, self._conns[-1])
        if self.streaming:
            slot = GrpcStreamSlot(self)
            await slot.open()
            return slot
        return GrpcSlot(self)

    def decode_outputs(self, raw: bytes) -> list[dict]:
        msg = self.pb.ModelInferResponse.FromString(raw)
        out = {}
        for i, o in enumerate(msg.outputs):
            data = msg.raw_output_contents[i] if i < len(msg.raw_output_contents) else b""
            out[o.name] = _decode(data, o.datatype, o.shape, o.name)
        return [out]

    async def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns = []
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


class GrpcRawSlot:
    """Unary calls on a shared raw HTTP/2 connection (one in flight per slot)."""

    def __init__(self, transport: GrpcTransport, conn):
        self.t = transport
        self.conn = conn

    def send(self, p: Prepared, params: dict | None, callback: Callback) -> None:
        t0 = time.time_ns()
        data = self.t.encode(p, params)
        keep = self.t.keep_outputs

        def done(ok: bool, error: str, message: bytes | None, first_ns: int, end_ns: int):
            if not ok:
                callback(Result(False, error, t0, end_ns, 0, 0))
                return
            outputs = self.t.decode_outputs(message) if keep else None
            callback(Result(True, "", t0, end_ns, send_ns, end_ns - first_ns if first_ns else 0,
                            outputs=outputs))

        send_ns = 0
        self.conn.call(data, done)
        send_ns = time.time_ns() - t0

    def close(self) -> None:
        pass


class GrpcSlot:
    """Unary ModelInfer calls on the shared channel (one in flight per slot)."""

    def __init__(self, transport: GrpcTransport):
        self.t = transport

    def send(self, p: Prepared, params: dict | None, callback: Callback) -> None:
        t0 = time.time_ns()
        data = self.t.encode(p, params)
        call = self.t.infer(data, metadata=self.t.metadata, compression=self.t._compression)
        t1 = time.time_ns()
        asyncio.ensure_future(self._wait(call, t0, t1 - t0, callback))

    async def _wait(self, call, t0: int, send_ns: int, callback: Callback) -> None:
        import grpc

        try:
            raw = await call
        except grpc.aio.AioRpcError as exc:
            callback(Result(False, exc.details() or str(exc.code()), t0, time.time_ns(), 0, 0))
            return
        except asyncio.CancelledError:
            callback(Result(False, "cancelled", t0, time.time_ns(), 0, 0))
            return
        end = time.time_ns()
        outputs = self.t.decode_outputs(raw) if self.t.keep_outputs else None
        callback(Result(True, "", t0, end, send_ns, time.time_ns() - end, outputs=outputs))

    def close(self) -> None:
        pass


class GrpcStreamSlot:
    """One ModelStreamInfer stream; a request ends with its final response.

    Requests ask for ``triton_enable_empty_final_response`` so that a decoupled
    model's last response is marked even when it carries no outputs; such an
    empty final response does not count as a response (perf_analyzer's rule).
    """

    def __init__(self, transport: GrpcTransport):
        self.t = transport
        self._pending: dict[str, tuple[int, Callback, list[int], list]] = {}
        self._next = 0

    async def open(self) -> None:
        self.call = self.t.stream(metadata=self.t.metadata, compression=self.t._compression)
        self._reader = asyncio.ensure_future(self._read())

    def send(self, p: Prepared, params: dict | None, callback: Callback) -> None:
        t0 = time.time_ns()
        self._next += 1
        rid = str(self._next)
        merged = dict(params or {})
        merged["triton_enable_empty_final_response"] = True
        data = self.t.encode(p, merged, rid)
        self._pending[rid] = (t0, callback, [], [])
        asyncio.ensure_future(self._write(data, rid))

    async def _write(self, data: bytes, rid: str) -> None:
        try:
            await self.call.write(data)
        except Exception as exc:  # noqa: BLE001 - the stream broke: fail the request
            self._finish(rid, False, f"stream write failed: {exc}")

    def _finish(self, rid: str, ok: bool, error: str, null_last: bool = False) -> None:
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        t0, callback, times, outputs = entry
        end = times[-1] if times else time.time_ns()
        callback(Result(ok, error, t0, end, 0, 0, responses=len(times), null_last=null_last,
                        response_times=list(times),
                        outputs=outputs if self.t.keep_outputs else None))

    async def _read(self) -> None:
        import grpc

        pb = self.t.pb
        try:
            async for raw in self.call:
                now = time.time_ns()
                msg = pb.ModelStreamInferResponse.FromString(raw)
                r = msg.infer_response
                rid = r.id
                if msg.error_message:
                    if rid in self._pending:
                        self._finish(rid, False, msg.error_message)
                    elif self._pending:  # no id on the error: fail the oldest
                        self._finish(next(iter(self._pending)), False, msg.error_message)
                    continue
                entry = self._pending.get(rid)
                if entry is None:
                    continue
                final_param = r.parameters.get("triton_final_response")
                final = final_param.bool_param if final_param is not None else True
                empty = len(r.outputs) == 0
                if not (final and empty):
                    entry[2].append(now)
                    if self.t.keep_outputs:
                        entry[3].extend(self.t.decode_outputs(r.SerializeToString()))
                if final:
                    self._finish(rid, True, "", null_last=empty)
        except grpc.aio.AioRpcError as exc:
            for rid in list(self._pending):
                self._finish(rid, False, exc.details() or str(exc.code()))
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        self._reader.cancel()
        self.call.cancel()

