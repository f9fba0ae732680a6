"""The official tritonclient.http talks to naiad unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(example_server):
    c = httpclient.InferenceServerClient(url=example_server.http_url)
    yield c
    c.close()


def _add_sub_inputs(a, b, binary=True):
    i0 = httpclient.InferInput("INPUT0", list(a.shape), "FP32")
    i0.set_data_from_numpy(a, binary_data=binary)
    i1 = httpclient.InferInput("INPUT1", list(b.shape), "FP32")
    i1.set_data_from_numpy(b, binary_data=binary)
    return [i0, i1]


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    meta = client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    mm = client.get_model_metadata("add_sub")
    assert mm["name"] == "add_sub"
    assert mm["versions"] == ["1"]
    assert mm["platform"] == "python"
    assert [i["name"] for i in mm["inputs"]] == ["INPUT0", "INPUT1"]
    assert mm["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [4]}


def test_model_config_is_completed(client):
    cfg = client.get_model_config("add_sub")
    assert cfg["name"] == "add_sub"
    assert cfg["backend"] == "python"
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    assert cfg["instance_group"][0]["name"] == "add_sub_0"
    assert cfg["instance_group"][0]["count"] == 1
    assert cfg["input"][0]["dims"] == [4]  # numbers, not strings
    assert cfg["default_model_filename"] == "model.py"


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_add_sub_infer(client, binary_in, binary_out):
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    outs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
            httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary_out)]
    result = client.infer("add_sub", _add_sub_inputs(a, b, binary_in), outputs=outs,
                          request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == "1"


def test_requested_output_subset(client):
    a = np.arange(4, dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, a),
                          outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros(4, np.float32))


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_compression_both_ways(client, algo):
    a = np.arange(4, dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, a), request_compression_algorithm=algo,
                          response_compression_algorithm=algo)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


def test_unknown_model_error(client):
    a = np.arange(4, dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", _add_sub_inputs(a, a))
    assert "unknown model" in str(err.value)


def test_wrong_shape_error_then_healthy(client):
    a = np.arange(5, dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        client.infer("add_sub", _add_sub_inputs(a, a))
    assert "unexpected shape for input 'INPUT0'" in str(err.value)
    assert client.is_server_ready()


def test_async_infer(client):
    a = np.arange(4, dtype=np.float32)
    handles = [client.async_infer("add_sub", _add_sub_inputs(a, a * i)) for i in range(8)]
    for i, h in enumerate(handles):
        np.testing.assert_array_equal(h.get_result().as_numpy("OUTPUT1"), a - a * i)
