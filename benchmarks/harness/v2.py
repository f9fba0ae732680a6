"""KServe v2 inference requests, transport-neutral, and their HTTP binary encoding.

A scenario describes its request once as an :class:`InferRequest` (tensors as
raw little-endian bytes). Each transport renders it into its own wire format:
HTTP uses the binary tensor data extension (JSON header +
``Inference-Header-Content-Length`` + raw bytes); a gRPC transport would build
a ``ModelInferRequest`` with ``raw_input_contents`` from the same object.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass, field

_STRUCT = {"FP32": "f", "FP64": "d", "INT64": "q", "INT32": "i", "INT16": "h", "INT8": "b",
           "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "BOOL": "?"}


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes

    @classmethod
    def pack(cls, name: str, datatype: str, shape: list[int], values) -> Tensor:
        values = list(values)
        return cls(name, datatype, list(shape), struct.pack(f"<{len(values)}{_STRUCT[datatype]}",
                                                            *values))

    def values(self) -> list:
        n = len(self.raw) // struct.calcsize(_STRUCT[self.datatype])
        return list(struct.unpack(f"<{n}{_STRUCT[self.datatype]}", self.raw))


@dataclass
class InferRequest:
    model: str
    inputs: list[Tensor]
    outputs: list[str]
    version: str = ""
    parameters: dict = field(default_factory=dict)

    # ---- HTTP/REST, binary tensor data extension ------------------------
    @property
    def http_path(self) -> str:
        v = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{v}/infer"

    def http_binary_body(self) -> tuple[bytes, int]:
        """(body, json_header_length) for a binary-tensor HTTP request."""
        header = {
            "inputs": [
                {"name": t.name, "shape": t.shape, "datatype": t.datatype,
                 "parameters": {"binary_data_size": len(t.raw)}}
                for t in self.inputs
            ],
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in self.outputs],
        }
        if self.parameters:
            header["parameters"] = self.parameters
        js = json.dumps(header, separators=(",", ":")).encode()
        return js + b"".join(t.raw for t in self.inputs), len(js)


def parse_http_binary_response(headers, body: bytes) -> dict[str, Tensor]:
    """Decode a v2 HTTP response (binary or JSON outputs) into tensors by name."""
    hlen = headers.get("Inference-Header-Content-Length")
    if hlen is None:
        js, rest = json.loads(body), b""
    else:
        hlen = int(hlen)
        js, rest = json.loads(body[:hlen]), body[hlen:]
    out, off = {}, 0
    for o in js.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = rest[off:off + size]
            off += size
            out[o["name"]] = Tensor(o["name"], o["datatype"], o["shape"], raw)
        else:
            out[o["name"]] = Tensor.pack(o["name"], o["datatype"], o["shape"], o["data"])
    return out


def http_infer(base_url: str, req: InferRequest, timeout: float = 30.0) -> dict[str, Tensor]:
    body, hlen = req.http_binary_body()
    r = urllib.request.Request(
        base_url + req.http_path, data=body, method="POST",
        headers={"Content-Type": "application/octet-stream",
                 "Inference-Header-Content-Length": str(hlen)},
    )
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return parse_http_binary_response(resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode(errors="replace")
        raise RuntimeError(f"HTTP {e.code} from {req.http_path}: {detail}") from None


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
