"""Trace settings, log settings, classification and parameters over gRPC with
tritonclient.grpc (message shapes as Triton 2.51 answers them). The statistics that
add up after known traffic are checked over both protocols in test_statistics.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import NaiadProcess
from tests.models import write_echo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("stats_grpc") / "models"
    repo.mkdir()
    write_echo(repo, labels=["a", "b", "c", "d"])
    trace_file = repo.parent / "trace.json"
    with NaiadProcess(repo, "--trace-config", f"triton,file={trace_file}") as proc:
        yield proc


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _echo(client, batch=1, value=1.0, **kw):
    x = np.full((batch, 4), value, np.float32)
    inp = grpcclient.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("echo", [inp], **kw)


def test_grpc_trace_settings(client):
    s = client.get_trace_settings(as_json=True)["settings"]
    assert s["trace_level"]["value"] == ["OFF"]
    assert s["trace_rate"]["value"] == ["1000"]
    s = client.update_trace_settings(settings={"trace_rate": "5"}, as_json=True)["settings"]
    assert s["trace_rate"]["value"] == ["5"]
    s = client.update_trace_settings(settings={"trace_rate": None}, as_json=True)["settings"]
    assert s["trace_rate"]["value"] == ["1000"]
    s = client.update_trace_settings(model_name="echo", settings={"trace_count": "3"},
                                     as_json=True)["settings"]
    assert s["trace_count"]["value"] == ["3"]
    with pytest.raises(InferenceServerException) as e:
        client.update_trace_settings(settings={"trace_rate": "abc"})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.value.message() == "Unable to parse 'trace_rate', got: abc"
    with pytest.raises(InferenceServerException) as e:
        client.get_trace_settings(model_name="nope")
    assert e.value.message() == "Request for unknown model : nope"


def test_grpc_log_settings(client):
    s = client.get_log_settings(as_json=True)["settings"]
    assert s["log_info"] == {"bool_param": True}
    assert s["log_verbose_level"] == {"uint32_param": 0}
    assert s["log_format"] == {"string_param": "default"}
    s = client.update_log_settings(settings={"log_verbose_level": 1, "log_info": False},
                                   as_json=True)["settings"]
    assert s["log_verbose_level"] == {"uint32_param": 1} and s["log_info"] == {"bool_param": False}
    with pytest.raises(InferenceServerException) as e:
        client.update_log_settings(settings={"log_format": "xml"})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.update_log_settings(settings={"log_verbose_level": 0, "log_info": True})


def test_grpc_classification_and_parameters(client):
    x = np.array([[0.5, 2.25, -1.0, 3.0]], np.float32)
    inp = grpcclient.InferInput("IN", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("echo", [inp],
                          outputs=[grpcclient.InferRequestedOutput("OUT", class_count=2)],
                          parameters={"mode": "fast", "n": 2})
    assert result.as_numpy("OUT").tolist() == [[b"3.000000:3:d", b"2.250000:1:b"]]
    params = result.get_response(as_json=True)["parameters"]
    assert json.loads(params["echo"]["string_param"]) == {"mode": "fast", "n": 2}
