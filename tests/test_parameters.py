"""The parameters extension: request parameters reach the model (request.parameters()), the
model's response parameters reach the client, and Triton's reserved names are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.conftest import NaiadProcess
from tests.models import write_echo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("params") / "models"
    repo.mkdir()
    write_echo(repo)
    with NaiadProcess(repo) as proc:
        yield proc


def _inputs():
    inp = httpclient.InferInput("IN", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    return [inp]


def test_parameters_pass_through_to_the_model_and_back(server):
    client = httpclient.InferenceServerClient(server.http_url)
    params = {"temperature": 0.5, "mode": "fast", "top_k": 3, "stream": False}
    result = client.infer("echo", _inputs(), parameters=params)
    response = result.get_response()
    # the model saw exactly the custom parameters and echoed them as response parameters
    assert json.loads(response["parameters"]["echo"]) == params
    assert response["parameters"]["count"] == 4
    assert response["parameters"]["ok"] is True


def test_protocol_parameters_are_consumed_not_passed_through(server):
    body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 4],
                        "data": [1, 2, 3, 4]}],
            "parameters": {"priority": 1, "timeout": 100000, "binary_data_output": False,
                           "custom": "kept"}}
    r = requests.post(server.base + "/v2/models/echo/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["parameters"]["echo"]) == {"custom": "kept"}


@pytest.mark.parametrize("key", ["triton_enable_empty_final_response", "triton_x"])
def test_reserved_parameter_names_are_refused(server, key):
    # (tritonclient refuses these itself; other clients reach the server)
    body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 4],
                        "data": [1, 2, 3, 4]}], "parameters": {key: True}}
    r = requests.post(server.base + "/v2/models/echo/infer", json=body, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == ("parameter keys starting with 'triton_' are reserved for "
                                 "Triton usage and should not be specified.")


def test_parameters_of_unsupported_types_are_refused(server):
    body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 4],
                        "data": [1, 2, 3, 4]}],
            "parameters": {"nested": {"a": 1}}}
    r = requests.post(server.base + "/v2/models/echo/infer", json=body, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"].startswith("parameter 'nested' has invalid type")
    body["parameters"] = ["not", "an", "object"]
    r = requests.post(server.base + "/v2/models/echo/infer", json=body, timeout=10)
    assert r.status_code == 400


def test_server_metadata_lists_the_working_extensions(server):
    meta = httpclient.InferenceServerClient(server.http_url).get_server_metadata()
    for ext in ("classification", "parameters", "statistics", "system_shared_memory",
                "cuda_shared_memory", "trace", "logging", "binary_tensor_data",
                "model_repository", "model_configuration"):
        assert ext in meta["extensions"], ext
    # Triton's order for the ones both list
    order = ["classification", "model_repository", "model_configuration",
             "system_shared_memory", "cuda_shared_memory", "binary_tensor_data", "parameters",
             "statistics", "trace", "logging"]
    assert [e for e in meta["extensions"] if e in order] == order
