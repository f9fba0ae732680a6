"""--http-restricted-api and --http-header-forward-pattern, as the reference Triton answers.

Checked against Triton 2.51: with ``--http-restricted-api=model-repository,health:
admin-key=secret`` a request without the header (or with a wrong value) to those
groups gets 403 ``{"error":"This API is restricted, expecting header 'admin-key'"}``
(the per-model ready endpoint is in the health group); other groups are open.
With ``--http-header-forward-pattern='x-.*'`` the headers X-Foo, my-x-bar and x-Baz
all reach the model's parameters (a partial, case-insensitive match).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.conftest import NaiadProcess, copy_example, write_model

PARAMS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", np.array([r.parameters().encode()], dtype=np.object_))]) for r in requests]
"""
PARAMS_CONFIG = """
name: "params"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("access")
    copy_example(repo, "add_sub")
    write_model(repo, "params", PARAMS_CONFIG, {"model.py": PARAMS_MODEL})
    with NaiadProcess(repo, "--http-restricted-api=model-repository,health:admin-key=secret",
                      "--http-header-forward-pattern=x-.*", "--model-control-mode=explicit",
                      "--load-model=*", wait="none") as s:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # health is restricted: probe with the key
            try:
                r = requests.get(s.base + "/v2/health/ready", headers={"admin-key": "secret"},
                                 timeout=1)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert s.proc.poll() is None, s.output()
            time.sleep(0.05)
        yield s


RESTRICTED = [("POST", "/v2/repository/index"), ("GET", "/v2/health/ready"),
              ("GET", "/v2/health/live"), ("GET", "/v2/models/add_sub/ready")]


@pytest.mark.parametrize("method,path", RESTRICTED)
def test_restricted_groups_need_the_header(server, method, path):
    r = requests.request(method, server.base + path, timeout=10)
    assert r.status_code == 403
    assert r.json() == {"error": "This API is restricted, expecting header 'admin-key'"}
    r = requests.request(method, server.base + path, headers={"admin-key": "wrong"},
                         timeout=10)
    assert r.status_code == 403
    r = requests.request(method, server.base + path, headers={"admin-key": "secret"},
                         timeout=10)
    assert r.status_code == 200


def test_other_groups_stay_open(server):
    assert requests.get(server.base + "/v2", timeout=10).status_code == 200
    assert requests.get(server.base + "/v2/models/add_sub/config", timeout=10).status_code == 200
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.arange(4, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"),
              httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist() == [0, 2, 4, 6]
    # tritonclient sends custom headers too
    assert client.is_server_ready(headers={"admin-key": "secret"})


def test_matching_headers_are_forwarded_as_parameters(server):
    body = {"inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [1]}],
            "parameters": {"p": 1}}
    r = requests.post(server.base + "/v2/models/params/infer", json=body, timeout=10,
                      headers={"X-Foo": "1", "my-x-bar": "2", "x-Baz": "three",
                               "other": "no"})
    assert r.status_code == 200
    params = json.loads(r.json()["outputs"][0]["data"][0])
    assert params == {"p": 1, "x-foo": "1", "my-x-bar": "2", "x-baz": "three"}


def test_malformed_flags_are_refused_at_startup(tmp_path):
    for flag in ("--http-restricted-api=nosuch:k=v", "--http-restricted-api=health",
                 "--http-header-forward-pattern=(", "--grpc-restricted-protocol=health"):
        proc = NaiadProcess(tmp_path, flag, wait="none").start()
        try:
            code = proc.proc.wait(timeout=60)
        finally:
            proc.stop()
        assert code != 0
        lines = [line for line in proc.output().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.output()


@pytest.mark.parametrize("path,group", [
    ("/v2", "metadata"),
    ("/v2/models/m", "metadata"),
    ("/v2/models/m/versions/2", "metadata"),
    ("/v2/models/m/ready", "health"),
    ("/v2/models/m/versions/2/ready", "health"),
    ("/v2/models/m/config", "model-config"),
    ("/v2/models/m/infer", "inference"),
    ("/v2/models/m/versions/1/infer", "inference"),
    ("/v2/models/m/generate_stream", "inference"),
    ("/v2/models/m/stats", "statistics"),
    ("/v2/models/stats", "statistics"),
    ("/v2/models/m/trace/setting", "trace"),
    ("/v2/trace/setting", "trace"),
    ("/v2/logging", "logging"),
    ("/v2/systemsharedmemory/status", "shared-memory"),
    ("/v2/cudasharedmemory/region/r/register", "shared-memory"),
    ("/v2/repository/models/m/load", "model-repository"),
    ("/v2/health/live", "health"),
    ("/metrics", None),
])
def test_every_endpoint_maps_to_its_api_group(path, group):
    from naiad.frontends.http import _api_group

    assert _api_group(path.split("/")) == group
