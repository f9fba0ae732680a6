"""Every datatype round-trips through a python identity model, JSON and binary.

One identity model per datatype (``INPUT0`` -> ``OUTPUT0``, dims [-1, -1]),
written against Triton's python-backend API only: non-BF16 tensors go through
``as_numpy()`` and back into a new ``pb_utils.Tensor``; BF16 (which numpy
cannot hold) goes through ``to_dlpack()``/``Tensor.from_dlpack()``, and a
second BF16 model passes the request's tensor straight through (an input and
an output of the same name, which Triton accepts).

Checked against Triton 2.51 (same models, same requests; ``NAIAD_REFERENCE_TRITON``
runs this module against it, see test_http_protocol.py):

=====================================  ====================  =========================
case                                   Triton 2.51           naiad
=====================================  ====================  =========================
binary in/out, every datatype          200, bit-exact        200, bit-exact
JSON in/out, ints/floats/BOOL/BYTES    200                   200
JSON FP16 / BF16 input                 400 "receiving FP16   200 (accepted: a superset;
                                       data via JSON is not  BF16 rounds to nearest-even)
                                       supported"
JSON FP16 / BF16 output                400 "sending FP16     200 (floats; BF16 widened
                                       data via JSON ..."    to float32)
JSON NaN / Infinity literals in input  200                   200 (parsed like Triton)
JSON output of NaN / +-inf             NaN/Infinity/         NaN/Infinity/-Infinity
                                       -Infinity literals    literals (was ``null``)
JSON int out of range (INT8 300)       200, wraps to 44      400 "300 is out of range"
JSON 1.5 or 2.0 for INT32              500                   400 "must be JSON integers"
JSON 1/0 for BOOL, true for INT32      500                   400
JSON numbers/true/null for BYTES       500                   400 "must be JSON strings"
JSON uint64 max / int64 min, max       200                   200, exact
BYTES with NUL and non-ASCII UTF-8     200                   200
non-UTF-8 BYTES as JSON output         raw bytes (invalid    U+FFFD replacement (valid
                                       JSON)                 JSON)
empty tensors [0,3] / [3,0]            200                   200
all binary outputs empty               application/json, no  same (was octet-stream
                                       Inference-Header-...  with the header)
=====================================  ====================  =========================
"""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.clients import post
from tests.conftest import write_model
from tests.test_http_protocol import REFERENCE, naiad_only, start_server

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16, "BYTES": np.object_,
}

IDENTITY = '''
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.bf16 = {i["name"] for i in config["input"] if i["data_type"] == "TYPE_BF16"}

    def execute(self, requests):
        responses = []
        for request in requests:
            outs = []
            for t in request.inputs():
                name = "OUTPUT" + t.name()[len("INPUT"):]
                if t.name() in self.bf16:  # numpy cannot hold BF16
                    outs.append(pb_utils.Tensor.from_dlpack(name, t.to_dlpack()))
                else:
                    outs.append(pb_utils.Tensor(name, t.as_numpy()))
            responses.append(pb_utils.InferenceResponse(output_tensors=outs))
        return responses
'''

PASSTHROUGH = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=r.inputs()) for r in requests]
'''


def _config_type(dt: str) -> str:
    return "TYPE_STRING" if dt == "BYTES" else "TYPE_" + dt


def model_name(dt: str) -> str:
    return "identity_" + dt.lower()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("datatypes")
    for dt in DATATYPES:
        write_model(repo, model_name(dt), f'''
            backend: "python"
            max_batch_size: 0
            input [ {{ name: "INPUT0" data_type: {_config_type(dt)} dims: [ -1, -1 ] }} ]
            output [ {{ name: "OUTPUT0" data_type: {_config_type(dt)} dims: [ -1, -1 ] }} ]
            instance_group [ {{ kind: KIND_CPU }} ]
            ''', {"model.py": IDENTITY})
    write_model(repo, "passthrough_bf16", '''
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_BF16 dims: [ -1, -1 ] } ]
        output [ { name: "X" data_type: TYPE_BF16 dims: [ -1, -1 ] } ]
        ''', {"model.py": PASSTHROUGH})
    with start_server(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.http_url)
    yield c
    c.close()


def sample(dt: str, shape=(2, 3)) -> np.ndarray:
    """Ordinary values plus the type's edge values, in the given shape."""
    n = int(np.prod(shape))
    if dt == "BOOL":
        flat = np.array([True, False] * n, dtype=np.bool_)[:n]
    elif dt == "BYTES":
        pool = [b"hello", "na\u00efve \u4e2d\u6587 \U0001f600".encode(), b"a\x00b\x00",
                b"", b"\x00", b"plain"]
        flat = np.array((pool * n)[:n], dtype=np.object_)
    elif dt in ("FP16", "FP32", "FP64", "BF16"):
        base = np.array([1.5, -2.25, 0.0, 1e-3, 3.0e4, -0.0], dtype=np.float64)
        flat = np.resize(base, n).astype(NUMPY[dt])
    else:
        info = np.iinfo(NUMPY[dt])
        base = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
        flat = np.array((base * n)[:n], dtype=NUMPY[dt])
    return flat.reshape(shape)


def _json_capable(dt: str) -> bool:
    # tritonclient refuses BF16 in JSON (client side): tested with raw requests below
    return dt != "BF16"


def roundtrip(client, dt: str, arr: np.ndarray, binary_in: bool, binary_out: bool,
              model: str | None = None, in_name: str = "INPUT0", out_name: str = "OUTPUT0"):
    inp = httpclient.InferInput(in_name, list(arr.shape), dt)
    inp.set_data_from_numpy(arr, binary_data=binary_in)
    out = httpclient.InferRequestedOutput(out_name, binary_data=binary_out)
    result = client.infer(model or model_name(dt), [inp], outputs=[out])
    got = result.as_numpy(out_name)
    meta = result.get_output(out_name)
    assert meta["datatype"] == dt
    assert meta["shape"] == list(arr.shape)
    return got


def assert_same(dt: str, got: np.ndarray, want: np.ndarray, json_out: bool = False) -> None:
    assert got.shape == want.shape
    if dt == "BYTES":
        flat_got = [g.encode() if isinstance(g, str) else bytes(g) for g in got.reshape(-1)]
        assert flat_got == list(want.reshape(-1))
        return
    if dt == "BF16":
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
        return
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if got.dtype.kind == "f":
        # bit-exact, NaN included
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))
    else:
        np.testing.assert_array_equal(got, want)


# tritonclient sends and reads BF16 only as binary (BF16 in JSON: see test_bf16_json)
_ROUNDTRIPS = [
    pytest.param(dt, bin_in, bin_out,
                 id=f"{dt}-{'bin_in' if bin_in else 'json_in'}-{'bin_out' if bin_out else 'json_out'}")
    for dt in DATATYPES
    for bin_in in (True, False)
    for bin_out in (True, False)
    if dt != "BF16" or (bin_in and bin_out)
]


@pytest.mark.parametrize("dt,binary_in,binary_out", _ROUNDTRIPS)
def test_roundtrip(client, dt, binary_in, binary_out):
    if dt == "FP16" and REFERENCE and (not binary_in or not binary_out):
        pytest.skip("Triton refuses FP16 in JSON (naiad accepts it)")
    for shape in [(2, 3), (1, 1), (1, 7)]:
        arr = sample(dt, shape)
        got = roundtrip(client, dt, arr, binary_in, binary_out)
        assert_same(dt, got, arr)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("dt", [d for d in DATATYPES if d != "BF16"])
def test_empty_tensors(client, dt, shape, binary):
    if dt == "FP16" and REFERENCE and not binary:
        pytest.skip("Triton refuses FP16 in JSON (naiad accepts it)")
    arr = np.empty(shape, dtype=NUMPY[dt])
    got = roundtrip(client, dt, arr, binary, binary)
    assert got.shape == shape
    assert got.size == 0


@pytest.mark.parametrize("binary_out", [True, False], ids=["bin_out", "json_out"])
@pytest.mark.parametrize("dt", ["FP16", "FP32", "FP64"])
def test_float_specials(client, dt, binary_out):
    """NaN, +-inf, -0.0, subnormals and the extremes come back bit-exact."""
    if dt == "FP16" and REFERENCE and not binary_out:
        pytest.skip("Triton refuses FP16 in JSON (naiad accepts it)")
    info = np.finfo(NUMPY[dt])
    arr = np.array([[np.nan, np.inf, -np.inf, -0.0, info.tiny, info.smallest_subnormal,
                     info.max, info.min, info.eps]], dtype=NUMPY[dt])
    got = roundtrip(client, dt, arr, True, binary_out)
    if binary_out:
        assert_same(dt, got, arr)
    else:
        # JSON carries NaN/Infinity/-Infinity literals like Triton's; values exact
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)
        assert np.signbit(got[0, 3])


@pytest.mark.parametrize("dt", ["FP32", "FP64"])
def test_float_specials_json_in(client, dt):
    """Python's json writes NaN/Infinity for non-finite floats; Triton accepts them."""
    arr = np.array([[np.nan, np.inf, -np.inf, 1.25]], dtype=NUMPY[dt])
    got = roundtrip(client, dt, arr, False, False)
    np.testing.assert_array_equal(got, arr)


def test_integer_extremes_json(client):
    for dt in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"):
        info = np.iinfo(NUMPY[dt])
        arr = np.array([[info.min, info.max, 0]], dtype=NUMPY[dt])
        for binary in (True, False):
            got = roundtrip(client, dt, arr, binary, binary)
            assert got.dtype == arr.dtype
            np.testing.assert_array_equal(got, arr)


def test_bytes_binary_arbitrary(client):
    """Binary BYTES carries any byte string: NUL, invalid UTF-8, empty, long."""
    arr = np.array([[b"\x00\xff\xfe", b"", b"\x80" * 1000, "\u00e9".encode("utf-8"),
                     bytes(range(256))]], dtype=np.object_)
    got = roundtrip(client, "BYTES", arr, True, True)
    assert list(got.reshape(-1)) == list(arr.reshape(-1))


def test_bytes_json_unicode(client):
    arr = np.array([["na\u00efve", "\u4e2d\u6587", "emoji \U0001f600", "nul\x00inside",
                     "quote\"back\\slash"]], dtype=np.object_)
    got = roundtrip(client, "BYTES", arr, False, False)
    assert [g if isinstance(g, str) else g.decode() for g in got.reshape(-1)] == \
        list(arr.reshape(-1))


def test_bf16_passthrough(client):
    """BF16 through the python backend: bit patterns exact, binary both ways."""
    values = np.array([[1.0, -2.5, 0.0, 3.140625, 65280.0, -0.0, np.inf, np.nan]],
                      dtype=ml_dtypes.bfloat16)
    got = roundtrip(client, "BF16", values, True, True, model="passthrough_bf16",
                    in_name="X", out_name="X")
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.view(np.uint16), values.view(np.uint16))


def _post(server, model, body: bytes, headers=None):
    return post(server.base, f"/v2/models/{model}/infer", body, headers=headers or {})


@naiad_only
def test_bf16_json(server):
    """BF16 in JSON (Triton refuses it; naiad accepts float values, nearest-even)."""
    data = [1.0, 1.00390625, 1.01171875, -3.5]  # exact, tie (to even: 1.0), tie (up), exact
    body = json.dumps({"inputs": [{"name": "X", "datatype": "BF16", "shape": [1, 4],
                                   "data": data}],
                       "outputs": [{"name": "X", "parameters": {"binary_data": True}}]})
    r = _post(server, "passthrough_bf16", body.encode())
    assert r.status_code == 200, r.text
    hlen = int(r.headers["Inference-Header-Content-Length"])
    bits = np.frombuffer(r.content[hlen:], dtype="<u2")
    want = np.array([1.0, 1.0, 1.015625, -3.5], dtype=ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(bits, want)
    # and as JSON output: float values of the bfloat16 numbers
    r = _post(server, "passthrough_bf16", json.dumps(
        {"inputs": [{"name": "X", "datatype": "BF16", "shape": [1, 4], "data": data}]}).encode())
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1.0, 1.0, 1.015625, -3.5]


def test_binary_layout_is_little_endian(server):
    """Raw request with hand-built little-endian bytes, no client library."""
    for dt, values in [("INT32", [1, -2, 2**31 - 1]), ("UINT16", [1, 258, 65535]),
                       ("FP64", [0.5, -1.0, 1e300]), ("BOOL", [True, False, True])]:
        arr = np.array([values], dtype=np.dtype(NUMPY[dt]).newbyteorder("<"))
        raw = arr.tobytes()
        head = json.dumps({"inputs": [{"name": "INPUT0", "datatype": dt, "shape": [1, 3],
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        r = _post(server, model_name(dt), head + raw,
                  {"Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 200, r.text
        hlen = int(r.headers["Inference-Header-Content-Length"])
        assert r.content[hlen:] == raw
        out = json.loads(r.content[:hlen])["outputs"][0]
        assert out["parameters"] == {"binary_data_size": len(raw)}


def test_bytes_binary_wire_format(server):
    elems = [b"a\x00b", "\u00e9\u4e2d".encode(), b""]
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elems)
    head = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 3],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    r = _post(server, "identity_bytes", head + raw,
              {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    hlen = int(r.headers["Inference-Header-Content-Length"])
    assert r.content[hlen:] == raw


def test_empty_binary_outputs_are_all_json(server):
    """Like Triton: no Inference-Header-Content-Length when no output bytes follow."""
    head = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [0, 3],
                                   "parameters": {"binary_data_size": 0}}],
                       "parameters": {"binary_data_output": True}}).encode()
    r = _post(server, "identity_fp32", head, {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    assert "Inference-Header-Content-Length" not in r.headers
    assert r.headers["Content-Type"] == "application/json"
    out = r.json()["outputs"][0]
    assert out["shape"] == [0, 3]
    assert out["parameters"] == {"binary_data_size": 0}


def test_nonfinite_json_output_literals(server):
    raw = np.array([[np.nan, np.inf, -np.inf, 2.5]], dtype="<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": {"binary_data_size": 16}}]}).encode()
    r = _post(server, "identity_fp32", head + raw,
              {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    assert b'"data":[NaN,Infinity,-Infinity,2.5]' in r.content
