"""Protocol answers that match Triton 2.51's (checked against the reference; see the
issue-13 notes): server metadata's extensions, trace settings' JSON types, CUDA shared
memory on a server without CUDA, unsupported request encodings."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import EXAMPLES, NaiadProcess

# what the reference Triton 2.51 lists (python backend, no GPU), in its order
TRITON_EXTENSIONS = ["classification", "sequence", "model_repository",
                     "model_repository(unload_dependents)", "schedule_policy",
                     "model_configuration", "system_shared_memory", "cuda_shared_memory",
                     "binary_tensor_data", "parameters", "statistics", "trace", "logging"]


@pytest.fixture(scope="module")
def server():
    with NaiadProcess(EXAMPLES) as proc:
        yield proc


def test_server_metadata_extensions_are_tritons(server):
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.get_server_metadata()["extensions"] == TRITON_EXTENSIONS
    meta = grpcclient.InferenceServerClient(server.grpc_url).get_server_metadata()
    assert list(meta.extensions) == TRITON_EXTENSIONS


def test_cuda_shared_memory_answers_as_triton_does_without_a_gpu(server):
    """Listed, as Triton lists it on a machine without a GPU; status empty, unregister a
    no-op, registration refused with a message naming the reason."""
    http = httpclient.InferenceServerClient(server.http_url)
    rpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert http.get_cuda_shared_memory_status() == []
    assert len(rpc.get_cuda_shared_memory_status().regions) == 0
    for client in (http, rpc):
        client.unregister_cuda_shared_memory()
        client.unregister_cuda_shared_memory("never_registered")
        with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
            client.register_cuda_shared_memory("r", bytes(64), 0, 16)
    r = requests.get(server.base + "/v2/cudasharedmemory/region/x/status", timeout=10)
    assert r.status_code == 404
    assert r.json() == {"error": "Unable to find cuda shared memory region: 'x'"}


TYPE_ERRORS = [
    # (body, the message naiad gives; Triton 2.51 answers 500 with the text in the comment)
    ({"trace_level": "TIMESTAMPS"}, "'trace_level' must be an array of strings, got a string"),
    # "attempt to access JSON non-array as array"
    ({"trace_level": [1]}, "'trace_level' must be an array of strings, got an array"),
    ({"trace_rate": 5}, "'trace_rate' must be a string, got a number"),
    # "attempt to access JSON non-string as string"
    ({"trace_rate": ["1"]}, "'trace_rate' must be a string, got an array"),
    ({"trace_count": True}, "'trace_count' must be a string, got a boolean"),
    ({"log_frequency": {"a": "1"}}, "'log_frequency' must be a string, got an object"),
    ({"trace_file": 3}, "'trace_file' must be a string, got a number"),
    ({"trace_mode": ["triton"]}, "'trace_mode' must be a string, got an array"),
]


@pytest.mark.parametrize("scope", ["", "/models/add_sub"])
def test_trace_settings_of_the_wrong_json_type_are_refused(server, scope):
    url = f"{server.base}/v2{scope}/trace/setting"
    before = requests.get(url, timeout=10).json()
    for body, message in TYPE_ERRORS:
        # a valid change beside the bad one must not be applied either
        r = requests.post(url, json={"trace_count": "7", **body}, timeout=10)
        assert r.status_code == 400, (body, r.text)
        assert r.json() == {"error": message}, body
        assert requests.get(url, timeout=10).json() == before, body
    # with the official client too
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="must be a string, got a number"):
        client.update_trace_settings(scope.rpartition("/")[2] or None, {"trace_rate": 10})
    assert requests.get(url, timeout=10).json() == before
    # the right types still work; null resets
    model = scope.rpartition("/")[2] or None
    assert client.update_trace_settings(model, {"trace_rate": "10"})["trace_rate"] == "10"
    assert client.update_trace_settings(model, {"trace_rate": None})["trace_rate"] == "1000"


def test_grpc_trace_settings_with_several_values_for_one(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = client.get_trace_settings(as_json=True)
    with pytest.raises(InferenceServerException, match="expect only 1 value for 'trace_rate'") \
            as info:
        client.update_trace_settings(settings={"trace_rate": ["1", "2"], "trace_count": "3"})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.get_trace_settings(as_json=True) == before
    got = client.update_trace_settings("add_sub", settings={"trace_rate": "5"}, as_json=True)
    assert got["settings"]["trace_rate"]["value"] == ["5"]
    got = client.update_trace_settings("add_sub", settings={"trace_rate": []}, as_json=True)
    assert got["settings"]["trace_rate"]["value"] == ["1000"]


def _curl_post(url: str, data: str, headers: dict[str, str]) -> tuple[int, str]:
    """(status, body) of a POST with curl, or with requests where curl is not installed."""
    curl = shutil.which("curl")
    if curl is None:
        r = requests.post(url, data=data, headers=headers, timeout=30)
        return r.status_code, r.text
    args = [curl, "-s", "-w", "\n%{http_code}", "-d", data]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_unsupported_content_encoding_is_415(server):
    code, body = _curl_post(f"{server.base}/v2/models/add_sub/infer", "{}",
                            {"Content-Encoding": "br"})
    assert code == 415  # Triton 2.51: 501
    assert "unsupported Content-Encoding 'br'" in body


def test_deeply_nested_json_is_400(server):
    deep = "[" * 100000 + "]" * 100000
    for path, body in [("/v2/models/add_sub/infer", deep),
                       ("/v2/models/add_sub/infer",
                        '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":'
                        + "[" * 1000 + "1" + "]" * 1000 + ',"data":[1]}]}'),
                       ("/v2/trace/setting", '{"trace_level":' + "[" * 5000 + "]" * 5000 + "}"),
                       ("/v2/repository/index", deep)]:
        r = requests.post(server.base + path, data=body, timeout=30)
        assert r.status_code == 400, (path, r.text[:200])
        assert set(r.json()) == {"error"}
