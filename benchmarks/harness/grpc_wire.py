"""KServe v2 gRPC messages on the wire, with the standard library only.

The benchmark drives gRPC with h2load, which posts one fixed body: a
length-prefixed ``inference.ModelInferRequest`` (protobuf) built here from
the transport-neutral :class:`~harness.v2.InferRequest`, tensors in
``raw_input_contents``. ``grpc_infer`` sends one request with ``nghttp`` (from
the same Debian package as h2load) to check a server's answer before it is
measured: its grpc-status, its outputs, and the size of its response body,
which is how the load generator tells successful responses from errors
(a gRPC error is an HTTP 200 with no body).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from .v2 import InferRequest, Tensor

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]


# ---------------------------------------------------------------- protobuf

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def encode_infer_request(req: InferRequest) -> bytes:
    """inference.ModelInferRequest with every input in raw_input_contents."""
    out = _string(1, req.model) + _string(2, req.version)
    for t in req.inputs:
        shape = b"".join(_varint(d) for d in t.shape)
        tensor = _string(1, t.name) + _string(2, t.datatype) + _field(3, shape)
        out += _field(5, tensor)
    for name in req.outputs:
        out += _field(6, _string(1, name))
    for t in req.inputs:
        out += _field(7, t.raw)
    return out


def frame(message: bytes) -> bytes:
    """gRPC's length prefix: 1 byte compressed flag, 4 bytes big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def _fields(buf: bytes):
    """(number, wire type, value) of each field; value is bytes for type 2, int otherwise."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wtype = key >> 3, key & 7
        if wtype == 0:
            value, i = _read_varint(buf, i)
        elif wtype == 2:
            size, i = _read_varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wtype == 1:
            value, i = buf[i:i + 8], i + 8
        elif wtype == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wtype}")
        yield number, wtype, value


def decode_infer_response(message: bytes) -> dict[str, Tensor]:
    """Outputs of an inference.ModelInferResponse, by name (raw contents)."""
    outputs: list[tuple[str, str, list[int]]] = []
    raws: list[bytes] = []
    for number, _, value in _fields(message):
        if number == 5:
            name = datatype = ""
            shape: list[int] = []
            for n, wt, v in _fields(value):
                if n == 1:
                    name = v.decode()
                elif n == 2:
                    datatype = v.decode()
                elif n == 3:
                    if wt == 2:  # packed
                        j = 0
                        while j < len(v):
                            d, j = _read_varint(v, j)
                            shape.append(d)
                    else:
                        shape.append(v)
            outputs.append((name, datatype, shape))
        elif number == 6:
            raws.append(value)
    return {name: Tensor(name, datatype, shape, raws[k] if k < len(raws) else b"")
            for k, (name, datatype, shape) in enumerate(outputs)}


# ---------------------------------------------------------------- one request

class GrpcError(RuntimeError):
    pass


def grpc_infer(port: int, req: InferRequest, timeout: float = 60.0) -> tuple[dict, int]:
    """Send one ModelInfer with nghttp; returns (outputs by name, response body bytes).

    Two requests: one verbose with the body discarded (for grpc-status), one for
    the body. Raises GrpcError unless grpc-status is 0.
    """
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        raise GrpcError("nghttp not found (Debian package nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="naiad-grpc-") as tmp:
        body_file = Path(tmp) / "request.bin"
        body_file.write_bytes(frame(encode_infer_request(req)))
        base = [nghttp] + [a for h in GRPC_HEADERS for a in ("-H", h)] + [
            "-d", str(body_file), f"http://127.0.0.1:{port}{GRPC_PATH}"]
        v = subprocess.run(base[:1] + ["-v", "-n"] + base[1:], capture_output=True,
                           timeout=timeout, check=False)
        status = re.search(rb"grpc-status: (\d+)", v.stdout)
        if v.returncode != 0 or status is None:
            raise GrpcError(f"nghttp failed (rc {v.returncode}): {v.stdout[-300:]!r} "
                            f"{v.stderr[-300:]!r}")
        if status.group(1) != b"0":
            message = re.search(rb"grpc-message: ([^\n]*)", v.stdout)
            detail = message.group(1).decode(errors="replace") if message else ""
            raise GrpcError(f"grpc-status {status.group(1).decode()}: {detail}")
        r = subprocess.run(base, capture_output=True, timeout=timeout, check=False)
    body = r.stdout
    if r.returncode != 0 or len(body) < 5:
        raise GrpcError(f"nghttp returned no response body (rc {r.returncode})")
    size = struct.unpack(">I", body[1:5])[0]
    return decode_infer_response(body[5:5 + size]), 5 + size
