"""The HTTP/REST endpoints, status codes and JSON shapes, compared with Triton's.

Raw ``requests``/``http.client`` and the official ``tritonclient.http``.
Expected JSON below is what Triton 2.51 returns for the same models.

Set ``NAIAD_REFERENCE_TRITON=/path/to/triton.sh`` (the reference launcher,
``triton.sh start REPO HTTP GRPC METRICS``) to run these tests, and those of
test_http_bad_input.py and test_datatypes.py that state Triton's answer,
against the reference Triton instead of naiad: that is how the table was made.

=================================================  ==========================  ==========================
case                                               Triton 2.51                 naiad
=================================================  ==========================  ==========================
GET /v2, /v2/health/live, /v2/health/ready         200                         200
GET /v2/  (trailing slash)                         404                         404 (was 200)
GET /v2/models/m[/versions/v][/config]             200, same JSON              200, same JSON
GET .../versions/2 (absent), unknown model         404 "Request for unknown    404, same message
                                                   model: 'm' version 2 is
                                                   not found"
GET .../versions/x (not a number)                  404 "Not Found"             404 "Not Found"
GET /v2/models/m/ready, version absent / unknown   400 {"error": "Model        400, same (was empty)
                                                   version not ready"}
GET /v2/models/m/stats                             200, same JSON              200, same JSON
GET stats of unknown model / version               400 "requested model 'x'    400, same (was 404:
                                                   is not available"           server.py, fixed there)
unknown route / wrong method                       404 / 405                   404 / 405
request ``id``                                     echoed, absent if not sent  same
binary_data_output / per-output binary_data        octet-stream + Inference-   same
                                                   Header-Content-Length
listed output without binary_data, with            JSON (binary_data_output    JSON (was binary)
binary_data_output true                            covers unlisted outputs)
all-JSON response                                  application/json, no        same
                                                   header length
request parameters -> request.parameters()         JSON of the custom keys     same keys and values
Content-Encoding gzip / deflate request            200                         200
Content-Encoding br                                501 "Unsupported            415 (a client
                                                   compression type"           mistake: no 5xx)
Accept-Encoding gzip, deflate, q-values            highest q, first on a tie,  same (was: substring
                                                   q=0 and identity honoured   match, q ignored)
keep-alive, errors included                        one connection              one connection
=================================================  ==========================  ==========================
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.clients import post as http_post
from tests.conftest import EXAMPLES, NaiadProcess, _http_status, free_port, write_model

# -- the server under test: naiad, or the reference Triton ---------------------------------

REFERENCE_SCRIPT = os.environ.get("NAIAD_REFERENCE_TRITON", "")
REFERENCE = bool(REFERENCE_SCRIPT)

naiad_only = pytest.mark.skipif(REFERENCE, reason="naiad behaviour, differs from Triton's")


class ReferenceTriton:
    """The reference tritonserver on a repository (see the module docstring)."""

    def __init__(self, repo, *flags: str):
        self.repo = str(repo)
        self.flags = flags
        self.http_port = free_port()
        self.pid: int | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "ReferenceTriton":
        out = subprocess.run(
            ["bash", REFERENCE_SCRIPT, "start", self.repo, str(self.http_port), str(free_port()),
             str(free_port()), *self.flags], check=True, capture_output=True, text=True)
        self.pid = int(out.stdout.split()[-1])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if _http_status(self.base + "/v2/health/ready") == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the reference Triton did not become ready")

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, 15)
            for _ in range(200):
                os.kill(self.pid, 0)
                time.sleep(0.1)
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        self.pid = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def start_server(repo, *flags: str):
    """A context manager serving ``repo``: naiad, or Triton in reference mode."""
    if REFERENCE:
        flags = tuple(f for f in flags if not f.startswith("--http-max-input-size"))
        return ReferenceTriton(repo, *flags)
    return NaiadProcess(repo, *flags)


def server_pid(server) -> int:
    return server.pid if isinstance(server, ReferenceTriton) else server.proc.pid


# -- models ---------------------------------------------------------------------------------

PARAMS_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "PARAMS", np.array([r.parameters().encode()], dtype=np.object_))])
            for r in requests]
'''

VERSION_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", x),
                pb_utils.Tensor("VERSION", np.array([self.version], dtype=np.int32))]))
        return out
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("protocol")
    for name in ("add_sub", "idle"):
        write_model(repo, name, (EXAMPLES / "add_sub" / "config.pbtxt").read_text()
                    .replace('name: "add_sub"', f'name: "{name}"'),
                    {"model.py": (EXAMPLES / "add_sub" / "1" / "model.py").read_text()})
    write_model(repo, "params", '''
        backend: "python"
        max_batch_size: 0
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
        ''', {"model.py": PARAMS_MODEL})
    write_model(repo, "multi", '''
        backend: "python"
        max_batch_size: 0
        version_policy: { all { } }
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
                 { name: "VERSION" data_type: TYPE_INT32 dims: [ 1 ] } ]
        ''', {"model.py": VERSION_MODEL}, versions=(1, 2))
    with start_server(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.http_url)
    yield c
    c.close()


def get(server, path, **kw):
    return requests.get(server.base + path, timeout=10, **kw)


def post(server, path, body=b"", **kw):
    return http_post(server.base, path, body, **kw)


A = {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}
B = {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": [10, 20, 30, 40]}
ADD_SUB = json.dumps({"inputs": [A, B]}).encode()

ADD_SUB_METADATA = {
    "name": "add_sub", "versions": ["1"], "platform": "python",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4]},
               {"name": "INPUT1", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [4]},
                {"name": "OUTPUT1", "datatype": "FP32", "shape": [4]}],
}

# GET /v2/models/add_sub/config from Triton 2.51
ADD_SUB_CONFIG = json.loads("""{"name": "add_sub", "platform": "", "backend": "python",
 "runtime": "", "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 0,
 "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4],
   "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
   "is_non_linear_format_io": false},
  {"name": "INPUT1", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4],
   "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
   "is_non_linear_format_io": false}],
 "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "",
   "is_shape_tensor": false, "is_non_linear_format_io": false},
  {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "",
   "is_shape_tensor": false, "is_non_linear_format_io": false}],
 "batch_input": [], "batch_output": [],
 "optimization": {"priority": "PRIORITY_DEFAULT", "input_pinned_memory": {"enable": true},
   "output_pinned_memory": {"enable": true}, "gather_kernel_buffer_threshold": 0,
   "eager_batching": false},
 "instance_group": [{"name": "add_sub_0", "kind": "KIND_CPU", "count": 1, "gpus": [],
   "secondary_devices": [], "profile": [], "passive": false, "host_policy": ""}],
 "default_model_filename": "model.py", "cc_model_filenames": {}, "metric_tags": {},
 "parameters": {}, "model_warmup": []}""")

_ZERO = {"count": 0, "ns": 0}
IDLE_STATS = {"model_stats": [{
    "name": "idle", "version": "1", "last_inference": 0, "inference_count": 0,
    "execution_count": 0,
    "inference_stats": {k: _ZERO for k in ("success", "fail", "queue", "compute_input",
                                           "compute_infer", "compute_output", "cache_hit",
                                           "cache_miss")},
    "response_stats": {}, "batch_stats": [], "memory_usage": []}]}


def idle_stats_shape(stats: dict) -> dict:
    """``stats`` with its memory_usage checked and cleared for comparing to IDLE_STATS.

    Triton's python backend reports no memory_usage; naiad reports the RSS growth of a
    version's load when it loaded alone (test_memory_usage.py), which depends on what
    loaded beside it: present or not, each entry must have Triton's fields."""
    (entry,) = stats["model_stats"]
    usage = entry["memory_usage"]
    assert all(set(u) == {"type", "id", "byte_size"} and u["type"] == "CPU"
               and u["byte_size"] > 0 for u in usage), usage
    return {"model_stats": [dict(entry, memory_usage=[])]}


def error_of(r) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- health and metadata --------------------------------------------------------------------


def test_server_metadata(server):
    r = get(server, "/v2")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    meta = r.json()
    assert set(meta) == {"name", "version", "extensions"}
    assert meta["name"] == "triton"
    assert isinstance(meta["version"], str)
    assert all(isinstance(e, str) for e in meta["extensions"])
    for ext in ("classification", "model_repository", "model_configuration",
                "binary_tensor_data", "parameters", "statistics"):
        assert ext in meta["extensions"]
    assert get(server, "/v2/").status_code == 404  # Triton: no trailing slash


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready",
                                  "/v2/models/add_sub/ready",
                                  "/v2/models/add_sub/versions/1/ready",
                                  "/v2/models/multi/versions/2/ready"])
def test_health_endpoints(server, path):
    r = get(server, path)
    assert r.status_code == 200
    assert r.content == b""


@pytest.mark.parametrize("path", ["/v2/models/add_sub/versions/2/ready",
                                  "/v2/models/nope/ready", "/v2/models/nope/versions/1/ready"])
def test_model_not_ready(server, path):
    r = get(server, path)
    assert r.status_code == 400
    assert r.json() == {"error": "Model version not ready"}


def test_model_metadata(server):
    for path in ("/v2/models/add_sub", "/v2/models/add_sub/versions/1"):
        r = get(server, path)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/json"
        assert r.json() == ADD_SUB_METADATA
    multi = get(server, "/v2/models/multi").json()
    assert multi["versions"] == ["1", "2"]
    assert multi["outputs"][1] == {"name": "VERSION", "datatype": "INT32", "shape": [1]}


@pytest.mark.parametrize("path,message", [
    ("/v2/models/add_sub/versions/2", "Request for unknown model: 'add_sub' version 2 is not found"),
    ("/v2/models/nope", "Request for unknown model: 'nope' is not found"),
    ("/v2/models/nope/config", "Request for unknown model: 'nope' is not found"),
    ("/v2/models/add_sub/versions/7/config",
     "Request for unknown model: 'add_sub' version 7 is not found"),
])
def test_unknown_model_or_version(server, path, message):
    r = get(server, path)
    assert r.status_code == 404
    assert error_of(r) == message


def test_model_config(server):
    for path in ("/v2/models/add_sub/config", "/v2/models/add_sub/versions/1/config"):
        r = get(server, path)
        assert r.status_code == 200
        assert r.json() == ADD_SUB_CONFIG


def test_model_stats_shape(server):
    for path in ("/v2/models/idle/stats", "/v2/models/idle/versions/1/stats"):
        assert idle_stats_shape(get(server, path).json()) == IDLE_STATS
    everything = get(server, "/v2/models/stats").json()
    names = {(s["name"], s["version"]) for s in everything["model_stats"]}
    assert {("add_sub", "1"), ("idle", "1"), ("multi", "1"), ("multi", "2"),
            ("params", "1")} <= names


def test_model_stats_count_inferences(server):
    before = get(server, "/v2/models/multi/versions/1/stats").json()["model_stats"][0]
    for _ in range(3):
        assert post(server, "/v2/models/multi/versions/1/infer", json.dumps(
            {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2],
                         "data": [1, 2]}]}).encode()).status_code == 200
    after = get(server, "/v2/models/multi/versions/1/stats").json()["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["execution_count"] == before["execution_count"] + 3
    succ = after["inference_stats"]["success"]
    assert succ["count"] == before["inference_stats"]["success"]["count"] + 3
    assert succ["ns"] > 0
    assert after["last_inference"] > 0
    assert set(after) == set(IDLE_STATS["model_stats"][0])


@pytest.mark.parametrize("path,message", [
    ("/v2/models/nope/stats", "requested model 'nope' is not available"),
    ("/v2/models/add_sub/versions/9/stats",
     "requested model version is not available for model 'add_sub'"),
])
def test_stats_of_unknown_model(server, path, message):
    r = get(server, path)
    assert r.status_code == 400
    assert error_of(r) == message


# -- inference ------------------------------------------------------------------------------


def test_infer_with_and_without_version(server):
    for path in ("/v2/models/add_sub/infer", "/v2/models/add_sub/versions/1/infer"):
        r = post(server, path, ADD_SUB)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/json"
        assert "Inference-Header-Content-Length" not in r.headers
        body = r.json()
        assert body == {
            "model_name": "add_sub", "model_version": "1",
            "outputs": [
                {"name": "OUTPUT0", "datatype": "FP32", "shape": [4],
                 "data": [11.0, 22.0, 33.0, 44.0]},
                {"name": "OUTPUT1", "datatype": "FP32", "shape": [4],
                 "data": [-9.0, -18.0, -27.0, -36.0]}]}


def test_infer_picks_the_version(server):
    req = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1],
                                  "data": [5]}]}).encode()
    for path, version in [("/v2/models/multi/versions/1/infer", 1),
                          ("/v2/models/multi/versions/2/infer", 2),
                          ("/v2/models/multi/infer", 2)]:
        r = post(server, path, req)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == str(version)
        assert body["outputs"][1]["data"] == [version]


def test_request_id_echoed(server):
    body = json.loads(ADD_SUB)
    body["id"] = "my-request \u00e9 42"
    r = post(server, "/v2/models/add_sub/infer", json.dumps(body).encode())
    assert r.json()["id"] == "my-request \u00e9 42"
    assert list(r.json())[0] == "id"
    assert "id" not in post(server, "/v2/models/add_sub/infer", ADD_SUB).json()


def _split(r):
    hlen = int(r.headers["Inference-Header-Content-Length"])
    return json.loads(r.content[:hlen]), r.content[hlen:]


def test_binary_data_output_parameter(server):
    body = json.loads(ADD_SUB)
    body["parameters"] = {"binary_data_output": True}
    r = post(server, "/v2/models/add_sub/infer", json.dumps(body).encode())
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    head, raw = _split(r)
    assert [o["parameters"] for o in head["outputs"]] == [{"binary_data_size": 16}] * 2
    assert all("data" not in o for o in head["outputs"])
    out = np.frombuffer(raw, dtype="<f4")
    np.testing.assert_array_equal(out, [11, 22, 33, 44, -9, -18, -27, -36])


def test_per_output_binary_data(server):
    """As Triton: binary_data_output covers the outputs a request does not list; a
    listed output is binary only with its own ``binary_data: true``."""
    body = json.loads(ADD_SUB)
    body["parameters"] = {"binary_data_output": True}
    body["outputs"] = [{"name": "OUTPUT1", "parameters": {"binary_data": True}},
                       {"name": "OUTPUT0"}]
    r = post(server, "/v2/models/add_sub/infer", json.dumps(body).encode())
    assert r.headers["Content-Type"] == "application/octet-stream"
    head, raw = _split(r)
    outs = {o["name"]: o for o in head["outputs"]}
    assert outs["OUTPUT0"]["data"] == [11.0, 22.0, 33.0, 44.0]
    assert outs["OUTPUT1"]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), [-9, -18, -27, -36])
    # listed outputs without binary_data: all JSON, no header length
    for listed in ([{"name": "OUTPUT0"}], [{"name": "OUTPUT0", "parameters": {}}],
                   [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]):
        body["outputs"] = listed
        r = post(server, "/v2/models/add_sub/infer", json.dumps(body).encode())
        assert r.headers["Content-Type"] == "application/json"
        assert "Inference-Header-Content-Length" not in r.headers
        assert r.json()["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [4],
                                        "data": [11.0, 22.0, 33.0, 44.0]}]


def test_binary_request_body(server):
    a = np.arange(4, dtype="<f4")
    head = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [4],
         "parameters": {"binary_data_size": 16}},
        {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": [1, 1, 1, 1]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    r = post(server, "/v2/models/add_sub/infer", head + a.tobytes(),
             headers={"Inference-Header-Content-Length": str(len(head)),
                      "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    _, raw = _split(r)
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), a + 1)


def _params_seen(server, params) -> dict:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [0]}],
            "parameters": params}
    r = post(server, "/v2/models/params/infer", json.dumps(body).encode())
    assert r.status_code == 200, r.text
    return json.loads(r.json()["outputs"][0]["data"][0])


def test_parameters_reach_the_model(server):
    params = {"a": 1, "b": "x \u00e9", "c": True, "d": -7, "e": False}
    assert _params_seen(server, params) == params
    # the protocol's own keys are consumed, not passed on
    assert _params_seen(server, {"binary_data_output": False, "priority": 0,
                                 "timeout": 0, "z": "kept"}) == {"z": "kept"}


def test_parameters_of_invalid_type(server):
    for value in ({"x": 1}, [1], None):
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [0]}],
                "parameters": {"a": value}}
        r = post(server, "/v2/models/params/infer", json.dumps(body).encode())
        assert r.status_code == 400
        assert "parameter 'a'" in error_of(r)


# -- compression -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send it
])
def test_compressed_request(server, encoding, compress):
    if REFERENCE and compress not in (gzip.compress, zlib.compress):
        pytest.skip("Triton accepts only zlib-wrapped deflate")
    r = post(server, "/v2/models/add_sub/infer", compress(ADD_SUB),
             headers={"Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [11.0, 22.0, 33.0, 44.0]


def test_unsupported_content_encoding(server):
    r = post(server, "/v2/models/add_sub/infer", ADD_SUB, headers={"Content-Encoding": "br"})
    assert r.status_code == (501 if REFERENCE else 415)
    assert "Content-Encoding" in r.json()["error"] or REFERENCE


@naiad_only
def test_corrupt_compressed_request(server):
    for body in (b"\x1f\x8bnot gzip at all", gzip.compress(ADD_SUB)[:-12]):
        r = post(server, "/v2/models/add_sub/infer", body, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400
        assert "decompress" in error_of(r)


def _raw_response(server, accept: str, body=ADD_SUB):
    r = requests.post(server.base + "/v2/models/add_sub/infer", data=body, timeout=10,
                      headers={"Accept-Encoding": accept}, stream=True)
    raw = r.raw.read(decode_content=False)
    return r, raw


@pytest.mark.parametrize("accept,coding", [
    ("gzip", "gzip"), ("deflate", "deflate"), ("gzip, deflate", "gzip"),
    ("deflate, gzip", "deflate"), ("gzip;q=0.5, deflate;q=0.8", "deflate"),
    ("deflate;q=0.5, gzip", "gzip"), ("gzip;q=0", None), ("gzip;q=0, deflate", "deflate"),
    ("identity, gzip", None), ("br", None), ("*", None),
])
def test_response_compression(server, accept, coding):
    r, raw = _raw_response(server, accept)
    assert r.status_code == 200
    assert r.headers.get("Content-Encoding") == coding
    assert int(r.headers["Content-Length"]) == len(raw)
    if coding == "gzip":
        raw = gzip.decompress(raw)
    elif coding == "deflate":
        raw = zlib.decompress(raw)
    assert json.loads(raw)["outputs"][1]["data"] == [-9.0, -18.0, -27.0, -36.0]


def test_binary_response_compression(server):
    body = json.loads(ADD_SUB)
    body["parameters"] = {"binary_data_output": True}
    r, raw = _raw_response(server, "gzip", json.dumps(body).encode())
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Content-Type"] == "application/octet-stream"
    plain = gzip.decompress(raw)
    hlen = int(r.headers["Inference-Header-Content-Length"])  # of the uncompressed body
    assert json.loads(plain[:hlen])["model_name"] == "add_sub"
    assert len(plain) == hlen + 32


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_tritonclient_compression_binary(client, algo):
    a = np.arange(4, dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = httpclient.InferInput(name, [4], "FP32")
        i.set_data_from_numpy(a, binary_data=True)
        inputs.append(i)
    result = client.infer("add_sub", inputs, request_compression_algorithm=algo,
                          response_compression_algorithm=algo)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


def test_errors_are_not_compressed(server):
    r, raw = _raw_response(server, "gzip", b"{")
    assert r.status_code in (400, 500)
    assert "Content-Encoding" not in r.headers
    assert b"error" in raw


# -- connection handling and routing -------------------------------------------------------


def test_keep_alive(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        calls = [("GET", "/v2/health/ready", None, 200),
                 ("POST", "/v2/models/add_sub/infer", ADD_SUB, 200),
                 ("POST", "/v2/models/add_sub/infer", b'{"inputs": [', None),  # 400 or 500
                 ("GET", "/v2/nothing/here", None, 404),
                 ("POST", "/v2/health/live", b"", 405),
                 ("POST", "/v2/models/add_sub/versions/1/infer", ADD_SUB, 200),
                 ("GET", "/v2/models/add_sub", None, 200)] * 3
        for method, path, body, status in calls:
            conn.request(method, path, body=body,
                         headers={"Content-Type": "application/json"} if body else {})
            r = conn.getresponse()
            data = r.read()
            if status is not None:
                assert r.status == status, (path, r.status, data)
            else:
                assert r.status >= 400
            assert (r.getheader("Connection") or "").lower() != "close"
            assert conn.sock is sock, "the server closed the connection"
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/", "/v1", "/v2/nothing", "/v2/models", "/v2/health",
                                  "/v2/health/alive", "/v2/models/add_sub/unknown",
                                  "/v2/models/add_sub/versions", "/v2/models/add_sub/versions/",
                                  "/v2/models/add_sub/versions/x",
                                  "/v2/models/add_sub/versions/-1",
                                  "/v2/models/add_sub/versions/1/unknown"])
def test_unknown_routes(server, path):
    assert get(server, path).status_code == 404


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2"), ("POST", "/v2/health/live"), ("POST", "/v2/health/ready"),
    ("DELETE", "/v2/health/ready"), ("POST", "/v2/models/add_sub"),
    ("POST", "/v2/models/add_sub/ready"), ("POST", "/v2/models/add_sub/config"),
    ("PUT", "/v2/models/add_sub/stats"), ("GET", "/v2/models/add_sub/infer"),
    ("PUT", "/v2/models/add_sub/infer"), ("GET", "/v2/models/add_sub/versions/1/infer"),
])
def test_wrong_methods(server, method, path):
    r = requests.request(method, server.base + path, timeout=10)
    assert r.status_code == 405
    assert error_of(r) == "Method Not Allowed"


def test_healthy_after_everything(server):
    assert get(server, "/v2/health/ready").status_code == 200
    assert post(server, "/v2/models/add_sub/infer", ADD_SUB).status_code == 200


# -- the official client ----------------------------------------------------------------------


def test_tritonclient_endpoints(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "2")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"] == "triton"
    assert client.get_model_metadata("add_sub") == ADD_SUB_METADATA
    assert client.get_model_metadata("add_sub", "1") == ADD_SUB_METADATA
    assert client.get_model_config("add_sub") == ADD_SUB_CONFIG
    stats = client.get_inference_statistics("idle")
    assert idle_stats_shape(stats) == IDLE_STATS
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


def test_tritonclient_infer_version_id_parameters(client):
    x = np.array([3.5], dtype=np.float32)
    i = httpclient.InferInput("INPUT0", [1], "FP32")
    i.set_data_from_numpy(x)
    result = client.infer("multi", [i], model_version="1", request_id="rid-7")
    assert result.get_response()["id"] == "rid-7"
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("VERSION"), [1])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    result = client.infer("params", [i], parameters={"k": "v", "n": 3, "flag": True})
    assert json.loads(result.as_numpy("PARAMS")[0]) == {"k": "v", "n": 3, "flag": True}


def test_tritonclient_error_keeps_client_usable(client):
    i = httpclient.InferInput("INPUT0", [5], "FP32")
    i.set_data_from_numpy(np.zeros(5, np.float32))
    with pytest.raises(InferenceServerException, match="expected 2 inputs"):
        client.infer("add_sub", [i])
    with pytest.raises(InferenceServerException, match="version 9 is not found"):
        client.infer("add_sub", [i], model_version="9")
    assert client.is_server_ready()


def test_reference_mode_is_off_in_ci():
    """Reference mode needs the tritonserver launcher; CI runs against naiad."""
    assert not REFERENCE or Path(REFERENCE_SCRIPT).exists()
