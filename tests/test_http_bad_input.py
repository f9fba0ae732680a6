"""Malformed and hostile HTTP requests: a clear error, the right status, a healthy server.

Every case checks the status and (for naiad) the message, then that the
server still serves: a valid inference succeeds and /v2/health/ready is 200.
Hostile requests are also bounded in time, and in memory: the server's peak
RSS (VmHWM, reset through /proc/PID/clear_refs) may not jump.

Triton 2.51 answers 500 to several client mistakes; naiad answers 400 with a
clear ``{"error": ...}`` (the ``triton`` column of CASES holds Triton's status;
``NAIAD_REFERENCE_TRITON=...`` runs this module against Triton, see
test_http_protocol.py):

=======================================================  ==============  ===================
case                                                     Triton 2.51     naiad
=======================================================  ==============  ===================
malformed JSON, JSON not an object, missing ``inputs``,  500             400
``inputs`` not a list, input without name/datatype/
shape, negative/float/string dims, ``id`` or
``parameters`` or ``outputs`` of the wrong JSON type
JSON ``data``: element count mismatch (nested or not),   500             400
strings, numeric strings, null, booleans for numbers,
floats for ints, a scalar instead of an array
JSON ``data`` nested raggedly, right leaf count          200             200 (was 400)
empty body                                               400 (raw input  400 (JSON parse
                                                         deduction)      error)
unknown datatype, wrong/missing/duplicate input, wrong   400             400
datatype, wrong shape, batch > max_batch_size, no batch
dimension, unknown requested output
``data`` and ``binary_data_size`` both set               400             400 (was 200)
unknown model / version                                  404             404
non-numeric or negative version in the URL               404             404
Inference-Header-Content-Length beyond the body, < 0     400             400
header length cutting the JSON short                     500             400
binary_data_size past the end, trailing bytes,           400             400
binary_data_size != shape x element size
BYTES length prefix past the end, truncated prefix,      400             400
too few / too many elements
shape [1, 10**12] over a 16-byte body (binary, BYTES)    400, no alloc   400, no alloc
shape [1, 10**12] with 4 JSON ``data`` elements          dies            400, no alloc
shape [2**63, 0] (0 elements, dim beyond int64)         200, then its   400
                                                         python stub
                                                         dies
100000 nested ``[``                                      500             400
100000 nested arrays inside ``data``                     crashes         400
                                                         (stack
                                                         overflow)
gzip bomb (1 GiB of zeros in 1 MiB), honest or lying     (no limit in    413, peak RSS
trailer                                                  2.51)           bounded by the limit
Content-Length above --http-max-input-size               waits for the   413 at once, body
                                                         body            never read
chunked body above the limit                             (no limit)      413
Content-Length announced, body never sent                -               no memory committed
                                                                         for the announced size
unsupported Content-Encoding                             501             415 (was 501)
=======================================================  ==============  ===================
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import struct
import time
import zlib

import numpy as np
import pytest
import requests

from tests.conftest import EXAMPLES, write_model
from tests.test_http_protocol import REFERENCE, naiad_only, server_pid, start_server

LIMIT = 16 * 1024 * 1024  # --http-max-input-size of the server under test

IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUTPUT" + t.name()[len("INPUT"):], t.as_numpy())
            for t in r.inputs()]) for r in requests]
'''


def _identity_config(dt: str, dims: str = "[ -1, -1 ]", max_batch: int = 0) -> str:
    cfg = "TYPE_STRING" if dt == "BYTES" else "TYPE_" + dt
    return f'''
        backend: "python"
        max_batch_size: {max_batch}
        input [ {{ name: "INPUT0" data_type: {cfg} dims: {dims} }} ]
        output [ {{ name: "OUTPUT0" data_type: {cfg} dims: {dims} }} ]
        instance_group [ {{ kind: KIND_CPU }} ]
        '''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("bad_input")
    write_model(repo, "add_sub", (EXAMPLES / "add_sub" / "config.pbtxt").read_text(),
                {"model.py": (EXAMPLES / "add_sub" / "1" / "model.py").read_text()})
    write_model(repo, "batched", _identity_config("FP32", "[ 2 ]", max_batch=4),
                {"model.py": IDENTITY})
    for dt in ("FP32", "INT32", "INT8", "BOOL", "BYTES"):
        write_model(repo, "identity_" + dt.lower(), _identity_config(dt), {"model.py": IDENTITY})
    with start_server(repo, f"--http-max-input-size={LIMIT}") as proc:
        yield proc


# -- helpers ---------------------------------------------------------------------------------

P = "/v2/models/add_sub/infer"
A = {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}
B = {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}
VALID = json.dumps({"inputs": [A, B]}).encode()


def J(obj) -> bytes:
    return json.dumps(obj).encode()


def infer_body(*inputs, **extra) -> bytes:
    return J({"inputs": list(inputs), **extra})


def binary_body(inputs, raw: bytes, header_length=None, **extra):
    head = J({"inputs": inputs, **extra})
    hl = len(head) if header_length is None else header_length
    return head + raw, {"Inference-Header-Content-Length": str(hl)}


def fp32_bin(shape, size):
    return {"name": "INPUT0", "datatype": "FP32", "shape": shape,
            "parameters": {"binary_data_size": size}}


def bytes_bin(shape, size):
    return {"name": "INPUT0", "datatype": "BYTES", "shape": shape,
            "parameters": {"binary_data_size": size}}


def elem(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def assert_healthy(server) -> None:
    r = requests.post(server.base + P, data=VALID, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert requests.get(server.base + "/v2/health/ready", timeout=10).status_code == 200


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@contextlib.contextmanager
def peak_rss_growth(server, limit_mib: float):
    """Assert the server's peak RSS during the block grows by less than ``limit_mib``."""
    pid = server_pid(server)
    try:  # reset the high-water mark (Linux >= 4.0)
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        field = "VmHWM"
    except OSError:
        field = "VmRSS"
    before = rss_kib(pid)
    yield
    grown = (rss_kib(pid, field) - before) / 1024
    assert grown < limit_mib, f"server {field} grew by {grown:.1f} MiB (bound {limit_mib} MiB)"


@contextlib.contextmanager
def within(seconds: float = 10):
    """The exchange ended in ``seconds``: no hang, no work that grows with what the input
    claims. The default leaves room for the stalls of a loaded 2-core CI machine; the
    memory bounds (``peak_rss_growth``) are what show nothing was allocated for a claim."""
    t = time.monotonic()
    yield
    elapsed = time.monotonic() - t
    assert elapsed < seconds, f"took {elapsed:.2f}s (bound {seconds}s)"


def check(r, status: int, triton: int, message: str | None):
    want = triton if REFERENCE else status
    assert r.status_code == want, (r.status_code, r.text)
    if not REFERENCE and message is not None:
        body = r.json()
        assert set(body) == {"error"}, body
        assert message in body["error"], body["error"]


# -- the cases: (id, path, body, headers, naiad status, Triton status, naiad message) --------

INT32 = "/v2/models/identity_int32/infer"
BOOL = "/v2/models/identity_bool/infer"
BYTES = "/v2/models/identity_bytes/infer"
FP32 = "/v2/models/identity_fp32/infer"


def _i(dt, data, shape=None):
    shape = [1, len(data)] if shape is None else shape
    return infer_body({"name": "INPUT0", "datatype": dt, "shape": shape, "data": data})


CASES = [
    # the JSON document
    ("malformed-json", P, b'{"inputs": [', None, 400, 500, "failed to parse the request JSON"),
    ("trailing-garbage-json", P, VALID + b"}", None, 400, 500, "failed to parse"),
    ("json-array", P, b"[1, 2]", None, 400, 500, "must be an object"),
    ("json-string", P, b'"inputs"', None, 400, 500, "must be an object"),
    ("json-number", P, b"42", None, 400, 500, "must be an object"),
    ("empty-body", P, b"", None, 400, 400, "failed to parse"),
    ("not-utf8", P, b'{"inputs": "\xff\xfe"}', None, 400, 500, "failed to parse"),
    ("missing-inputs", P, J({"id": "x"}), None, 400, 500, "'inputs'"),
    ("inputs-not-list", P, J({"inputs": {"INPUT0": A}}), None, 400, 500, "'inputs'"),
    ("inputs-null", P, J({"inputs": None}), None, 400, 500, "'inputs'"),
    ("input-not-object", P, J({"inputs": [1, 2]}), None, 400, 400, "JSON object"),
    ("input-no-name", P, infer_body({k: v for k, v in A.items() if k != "name"}, B),
     None, 400, 500, "'name'"),
    ("input-name-not-string", P, infer_body(dict(A, name=7), B), None, 400, 500, "'name'"),
    ("input-no-datatype", P, infer_body({k: v for k, v in A.items() if k != "datatype"}, B),
     None, 400, 500, "invalid datatype"),
    ("input-no-shape", P, infer_body({k: v for k, v in A.items() if k != "shape"}, B),
     None, 400, 500, "shape of input 'INPUT0'"),
    ("unknown-datatype", P, infer_body(dict(A, datatype="FP8"), B), None, 400, 400,
     "invalid datatype for input INPUT0"),
    ("lowercase-datatype", P, infer_body(dict(A, datatype="fp32"), B), None, 400, 400,
     "invalid datatype"),
    ("negative-dim", P, infer_body(dict(A, shape=[-4]), B), None, 400, 500,
     "non-negative integers"),
    ("float-dim", P, infer_body(dict(A, shape=[4.0]), B), None, 400, 500,
     "non-negative integers"),
    ("string-dim", P, infer_body(dict(A, shape=["4"]), B), None, 400, 500,
     "non-negative integers"),
    ("bool-dim", P, infer_body(dict(A, shape=[True]), B), None, 400, 500,
     "non-negative integers"),
    ("shape-not-list", P, infer_body(dict(A, shape=4), B), None, 400, 500,
     "must be an array of integers"),
    ("id-not-string", P, J({"id": 5, "inputs": [A, B]}), None, 400, 500, "'id'"),
    ("parameters-not-object", P, J({"inputs": [A, B], "parameters": [1]}), None, 400, 500,
     "'parameters'"),
    ("outputs-not-list", P, J({"inputs": [A, B], "outputs": {"name": "OUTPUT0"}}), None,
     400, 500, "'outputs'"),
    # inputs against the model
    ("wrong-input-name", P, infer_body(dict(A, name="X"), B), None, 400, 400,
     "unexpected inference input 'X' for model 'add_sub'"),
    ("missing-input", P, infer_body(A), None, 400, 400,
     "missing required input(s) ['INPUT1']"),
    ("no-inputs", P, infer_body(), None, 400, 400, "expected 2 inputs but got 0"),
    ("duplicate-input", P, infer_body(A, A, B), None, 400, 400,
     "[request id: <id_unknown>] input 'INPUT0' already exists in request"),
    ("wrong-datatype", P, infer_body(dict(A, datatype="INT32"), B), None, 400, 400,
     "data-type is 'INT32', but model 'add_sub' expects 'FP32'"),
    ("wrong-shape", P, infer_body(dict(A, shape=[2, 2]), B), None, 400, 400,
     "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [4], got [2,2]"),
    ("batch-too-large", "/v2/models/batched/infer", infer_body(
        {"name": "INPUT0", "datatype": "FP32", "shape": [5, 2], "data": [0] * 10}), None,
     400, 400, "batch-size must be <= 4"),
    ("batch-dim-missing", "/v2/models/batched/infer", infer_body(
        {"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [0, 0]}), None,
     400, 400, "Expected [-1,2], got [2]"),
    ("unknown-output", P, J({"inputs": [A, B], "outputs": [{"name": "NOPE"}]}), None,
     400, 400, "unexpected inference output 'NOPE' for model 'add_sub'"),
    ("data-and-binary", P, *binary_body(
        [dict(A, parameters={"binary_data_size": 16}), B], b"\0" * 16), 400, 400,
     "only one of 'data', 'binary_data_size'"),
    ("no-data", P, infer_body({k: v for k, v in A.items() if k != "data"}, B), None,
     400, 400, "must have 'data'"),
    # JSON data
    ("data-too-few", P, infer_body(dict(A, data=[1, 2, 3]), B), None, 400, 500,
     "3 elements given, shape [4] needs 4"),
    ("data-too-many", P, infer_body(dict(A, data=[1, 2, 3, 4, 5]), B), None, 400, 500,
     "5 elements given"),
    ("data-strings", P, infer_body(dict(A, data=["a", "b", "c", "d"]), B), None, 400, 500,
     "FP32 elements must be JSON numbers"),
    ("data-numeric-strings", P, infer_body(dict(A, data=["1", "2", "3", "4"]), B), None,
     400, 500, "must be JSON numbers"),
    ("data-null", P, infer_body(dict(A, data=[None, 2, 3, 4]), B), None, 400, 500,
     "must be JSON numbers"),
    ("data-object", P, infer_body(dict(A, data=[{}, 2, 3, 4]), B), None, 400, 500,
     "must be JSON numbers"),
    ("data-booleans-for-fp32", P, infer_body(dict(A, data=[True, False, True, True]), B),
     None, 400, 500, "must be JSON numbers"),
    ("data-ragged", P, infer_body(dict(A, data=[[1, 2], [3]]), B), None, 400, 500,
     "3 elements given, shape [4] needs 4"),
    ("data-ragged-too-many", P, infer_body(dict(A, data=[[1, 2], [3, 4, 5]]), B), None,
     400, 500, "5 elements given"),
    ("data-scalar", P, infer_body(dict(A, data=1), B), None, 400, 500,
     "expected a JSON array"),
    ("data-float-for-int32", INT32, _i("INT32", [1.5, 2]), None, 400, 500,
     "INT32 elements must be JSON integers"),
    ("data-integral-float-for-int32", INT32, _i("INT32", [2.0]), None, 400, 500,
     "must be JSON integers"),
    ("data-bool-for-int32", INT32, _i("INT32", [True]), None, 400, 500,
     "must be JSON integers"),
    ("data-int-out-of-range", INT32, _i("INT32", [2**31]), None, 400, 200, "out of range"),
    ("data-int8-out-of-range", "/v2/models/identity_int8/infer", _i("INT8", [-129]), None,
     400, 200, "-129 is out of range for INT8"),
    ("data-ints-for-bool", BOOL, _i("BOOL", [1, 0]), None, 400, 500,
     "BOOL elements must be JSON booleans"),
    ("data-numbers-for-bytes", BYTES, _i("BYTES", [1, 2]), None, 400, 500,
     "BYTES elements must be JSON strings"),
    ("data-null-for-bytes", BYTES, _i("BYTES", [None]), None, 400, 500,
     "must be JSON strings"),
    # URL
    ("unknown-model", "/v2/models/nope/infer", VALID, None, 404, 404,
     "Request for unknown model: 'nope' is not found"),
    ("unknown-version", "/v2/models/add_sub/versions/3/infer", VALID, None, 404, 404,
     "Request for unknown model: 'add_sub' version 3 is not found"),
    ("non-numeric-version", "/v2/models/add_sub/versions/one/infer", VALID, None, 404, 404,
     "Not Found"),
    ("negative-version", "/v2/models/add_sub/versions/-1/infer", VALID, None, 404, 404,
     "Not Found"),
    ("unicode-digit-version", "/v2/models/add_sub/versions/%D9%A1/infer", VALID, None,
     404, 404, "Not Found"),
    # binary framing
    ("header-length-beyond-body", FP32, *binary_body(
        [fp32_bin([1, 4], 16)], b"\0" * 16, header_length=100000), 400, 400,
     "Inference-Header-Content-Length 100000"),
    ("header-length-negative", FP32, *binary_body(
        [fp32_bin([1, 4], 16)], b"\0" * 16, header_length=-5), 400, 400,
     "Inference-Header-Content-Length -5"),
    ("header-length-cuts-json", FP32, *binary_body(
        [fp32_bin([1, 4], 16)], b"\0" * 16, header_length=10), 400, 500,
     "failed to parse the request JSON"),
    ("binary-size-past-end", FP32, *binary_body([fp32_bin([1, 4], 16)], b"\0" * 8), 400, 400,
     "unexpected size for input 'INPUT0', expecting 16 additional bytes"),
    ("binary-trailing-bytes", FP32, *binary_body([fp32_bin([1, 4], 16)], b"\0" * 20), 400, 400,
     "unexpected additional input data for model 'identity_fp32'"),
    ("binary-size-smaller-than-shape", FP32, *binary_body([fp32_bin([1, 4], 8)], b"\0" * 8),
     400, 400, "expected 16 bytes for shape [1, 4] of FP32, got 8"),
    ("binary-size-larger-than-shape", FP32, *binary_body([fp32_bin([1, 4], 20)], b"\0" * 20),
     400, 400, "expected 16 bytes"),
    ("binary-size-not-multiple", FP32, *binary_body([fp32_bin([1, 1], 3)], b"\0" * 3),
     400, 400, "expected 4 bytes"),
    ("binary-size-negative", FP32, *binary_body([fp32_bin([1, 4], -1)], b"\0" * 16), 400, 500,
     "binary_data_size of input 'INPUT0' must be a non-negative integer"),
    ("binary-size-string", FP32, *binary_body([fp32_bin([1, 4], "16")], b"\0" * 16), 400, 500,
     "non-negative integer"),
    ("bytes-length-past-end", BYTES, *binary_body(
        [bytes_bin([1, 1], 8)], struct.pack("<I", 1000) + b"abcd"), 400, 400,
     "element 0 has length 1000 but only 4 bytes are left"),
    ("bytes-second-length-past-end", BYTES, *binary_body(
        [bytes_bin([1, 2], 13)], elem(b"ok") + struct.pack("<I", 99) + b"abc"), 400, 400,
     "element 1 has length 99"),
    ("bytes-truncated-prefix", BYTES, *binary_body(
        [bytes_bin([1, 2], 8)], elem(b"a") + b"\0\0\0"), 400, 400,
     "incomplete string length indicator"),
    ("bytes-too-few-elements", BYTES, *binary_body([bytes_bin([1, 2], 5)], elem(b"a")), 400,
     400, "5 bytes cannot hold 2 elements"),
    ("bytes-too-many-elements", BYTES, *binary_body(
        [bytes_bin([1, 1], 10)], elem(b"a") + elem(b"b")), 400, 400,
     "5 bytes left after the 1 elements"),
    # transport
    ("unsupported-content-encoding", P, VALID, {"Content-Encoding": "br"}, 415, 501,
     "unsupported Content-Encoding 'br'"),
    ("bad-header-length-value", FP32, *binary_body(
        [fp32_bin([1, 4], 16)], b"\0" * 16, header_length="sixteen"), 400, 400,
     "Inference-Header-Content-Length must be an integer"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server, case):
    _, path, body, headers, status, triton, message = case
    with within():
        r = requests.post(server.base + path, data=body, headers=headers or {}, timeout=10)
    check(r, status, triton, message)
    assert_healthy(server)


# -- hostile requests: refused before allocating ---------------------------------------------

HUGE = 10**12


@pytest.mark.parametrize("kind", [
    "binary",
    pytest.param("json", marks=naiad_only),  # Triton 2.51 dies on this one
    "bytes-binary", "bytes-json"])
def test_huge_shape_small_body(server, kind):
    if kind == "binary":
        body, headers = binary_body([fp32_bin([1, HUGE], 16)], b"\0" * 16)
        path, message = FP32, "expected 4000000000000 bytes"
    elif kind == "json":
        body, headers = _i("FP32", [1.0, 2.0, 3.0, 4.0], [1, HUGE]), None
        path, message = FP32, "4 elements given"
    elif kind == "bytes-binary":
        body, headers = binary_body([bytes_bin([1, HUGE], 16)], elem(b"abc") * 2 + b"\0" * 2)
        path, message = BYTES, f"16 bytes cannot hold {HUGE} elements"
    else:
        body, headers = _i("BYTES", ["a", "b"], [1, HUGE]), None
        path, message = BYTES, "2 elements given"
    with peak_rss_growth(server, 20), within():
        r = requests.post(server.base + path, data=body, headers=headers or {}, timeout=10)
    check(r, 400, 400, message)
    assert_healthy(server)


def assert_fp32_identity_serves(server):
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    body, headers = binary_body([fp32_bin([2, 3], 24)], x.tobytes(),
                                parameters={"binary_data_output": True})
    r = requests.post(server.base + FP32, data=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    hl = int(r.headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[hl:], "<f4").reshape(2, 3), x)


@pytest.mark.parametrize("dims", [
    [0, 2**70],
    pytest.param([2**63, 0], marks=naiad_only),  # Triton passes it on; its python stub dies
    [1] * 65])
def test_shape_beyond_numpy(server, dims):
    """Dims past int64, or more than numpy's 64 dimensions: 400, never a crash or 500."""
    body, headers = binary_body([fp32_bin(dims, 0)], b"")
    r = requests.post(server.base + FP32, data=body, headers=headers, timeout=10)
    if REFERENCE:
        assert r.status_code in (400, 500)
    else:
        assert r.status_code == 400, r.text
        assert "shape of input 'INPUT0'" in r.json()["error"]
    assert_healthy(server)
    assert_fp32_identity_serves(server)


def test_deeply_nested_json(server):
    with peak_rss_growth(server, 50), within():
        r = requests.post(server.base + P, data=b"[" * 100000, timeout=10)
    check(r, 400, 500, "failed to parse the request JSON")
    assert_healthy(server)


@naiad_only  # Triton 2.51 overflows its stack on this one and dies
@pytest.mark.parametrize("leaf", [b"1", b"NaN", b'"s"'])
def test_deeply_nested_data(server, leaf):
    depth = 100000
    body = (b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":'
            + b"[" * depth + leaf + b"]" * depth + b"}]}")
    with peak_rss_growth(server, 50), within():
        r = requests.post(server.base + P, data=body, timeout=10)
    check(r, 400, 500, "failed to parse the request JSON")
    assert_healthy(server)


def test_ragged_data_with_the_right_count(server):
    """Triton counts the leaves of ``data`` (row-major), whatever their nesting."""
    for data in ([[1, 2], 3, 4], [[1], [2, 3, 4]], [[[1, 2, 3, 4]]]):
        r = requests.post(server.base + P, data=infer_body(dict(A, data=data), B), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    r = requests.post(server.base + BYTES, data=_i("BYTES", [["a"], "b", [["c"]]], [1, 3]),
                      timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ["a", "b", "c"]


@naiad_only
@pytest.mark.parametrize("dt,leaf,want", [("FP32", b"1", 1.0), ("BYTES", b'"s"', "s"),
                                          ("INT32", b"7", 7)])
def test_nested_data_within_parser_depth(server, dt, leaf, want):
    """Nesting the JSON parser accepts but numpy cannot hold (> 64 dims) and deeper
    than Python's recursion limit: the one leaf is found, no 500."""
    depth = 1000
    body = J({"inputs": [{"name": "INPUT0", "datatype": dt, "shape": [1, 1], "data": 0}]})
    body = body.replace(b'"data": 0', b'"data": ' + b"[" * depth + leaf + b"]" * depth)
    r = requests.post(f"{server.base}/v2/models/identity_{dt.lower()}/infer", data=body,
                      timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [want]
    assert_healthy(server)


def gzip_bomb(total_mib: int, lie: bool = False) -> bytes:
    """``total_mib`` MiB of zeros as one gzip member of about total_mib KiB.

    Built from one compressed 1 MiB block repeated (after a full flush every
    block compresses to the same bytes). The CRC is not computed: a server
    honouring its limit never reaches the trailer. ``lie`` puts a small size
    in the trailer, defeating any check of the declared size.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()[:-8]
    size = 100 if lie else (total_mib << 20) & 0xFFFFFFFF
    return first + again * (total_mib - 1) + tail + struct.pack("<II", 0, size)


@naiad_only
@pytest.mark.parametrize("lie", [False, True], ids=["honest-trailer", "lying-trailer"])
def test_gzip_bomb(server, lie):
    bomb = gzip_bomb(1024, lie)
    assert len(bomb) < 2 << 20
    with peak_rss_growth(server, 3 * LIMIT / 2**20 + 16), within():
        r = requests.post(server.base + P, data=bomb, headers={"Content-Encoding": "gzip"},
                          timeout=10)
    check(r, 413, 413, f"decompressed request body exceeds the limit of {LIMIT} bytes")
    assert_healthy(server)


@naiad_only
def test_deflate_bomb(server):
    c = zlib.compressobj(9, zlib.DEFLATED, 15)
    body = c.compress(b"\0" * (64 << 20)) + c.flush()
    with peak_rss_growth(server, 3 * LIMIT / 2**20 + 16), within():
        r = requests.post(server.base + P, data=body, headers={"Content-Encoding": "deflate"},
                          timeout=10)
    check(r, 413, 413, "decompressed request body exceeds the limit")
    assert_healthy(server)


def _raw_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read one response (headers and Content-Length body)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
        head, _, rest = out.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head + b"\r\n\r\n" + rest


@naiad_only
def test_content_length_above_limit_refused_before_body(server):
    """413 as soon as the headers arrive: the body is never sent, so never read."""
    with peak_rss_growth(server, 10), within():
        resp = _raw_exchange(server, (
            f"POST {P} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {LIMIT + 1}\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b"exceeds the limit" in resp
    assert_healthy(server)


@naiad_only
def test_body_above_limit_with_content_length(server):
    with within():
        r = requests.post(server.base + P, data=b" " * (LIMIT + 1024), timeout=30)
    check(r, 413, 413, "exceeds the limit")
    assert_healthy(server)


@naiad_only
def test_chunked_body_above_limit(server):
    def chunks():
        for _ in range(LIMIT // (1 << 20) + 4):
            yield b" " * (1 << 20)

    with peak_rss_growth(server, 3 * LIMIT / 2**20 + 16), within(20):
        r = requests.post(server.base + P, data=chunks(), timeout=30)
    check(r, 413, 413, "request body exceeds the limit")
    assert_healthy(server)


@naiad_only
def test_announced_body_never_sent(server):
    """A Content-Length just under the limit and a few bytes: no memory committed for it."""
    pid = server_pid(server)
    socks = []
    try:
        with peak_rss_growth(server, 10):
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
                s.sendall((f"POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT - 1}"
                           "\r\n\r\n{\"inputs\"").encode())
                socks.append(s)
            time.sleep(0.5)
            assert rss_kib(pid) > 0
        assert_healthy(server)
    finally:
        for s in socks:
            s.close()
    assert_healthy(server)


@naiad_only
@pytest.mark.parametrize("value", [b"-5", b"abc", b"1e3"])
def test_invalid_content_length(server, value):
    resp = _raw_exchange(server, b"POST " + P.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: " + value + b"\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400"), resp[:200]
    assert_healthy(server)


def test_compressed_valid_then_corrupt(server):
    r = requests.post(server.base + P, data=gzip.compress(VALID),
                      headers={"Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 200
    r = requests.post(server.base + P, data=b"\x1f\x8b" + b"\0" * 30,
                      headers={"Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 400
    assert_healthy(server)


def test_many_bad_requests_on_one_connection(server):
    """Errors do not poison a keep-alive connection."""
    with requests.Session() as s:
        for case in CASES[:20]:
            _, path, body, headers, status, triton, _ = case
            r = s.post(server.base + path, data=body, headers=headers or {}, timeout=10)
            assert r.status_code == (triton if REFERENCE else status)
            r = s.post(server.base + P, data=VALID, timeout=10)
            assert r.status_code == 200


@naiad_only
def test_no_unhandled_errors_logged(server):
    """Nothing above reached the catch-all (which logs a traceback and answers 500)."""
    log = server.output()
    assert "unhandled error" not in log
    assert "Traceback" not in log


def test_still_serving_numpy_values(server):
    assert_fp32_identity_serves(server)
