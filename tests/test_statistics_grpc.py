"""Statistics, trace settings, log settings, classification and parameters over gRPC with
tritonclient.grpc (message shapes as Triton 2.51 answers them).

Runs once the gRPC frontend (naiad.frontends.grpc) is part of the build; until then pytest
reports these as skipped, by that reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("naiad.frontends.grpc", reason="the gRPC frontend is not in this build")

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.conftest import NaiadProcess  # noqa: E402
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


def test_grpc_statistics_add_up(client):
    before = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]
    for b in (1, 3, 2):
        _echo(client, b)
    with pytest.raises(InferenceServerException):
        _echo(client, 1, -1.0)
    after = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]

    def n(stats, *path):
        for p in path:
            stats = stats.get(p, {})
        return int(stats or 0)

    assert n(after, "inference_count") - n(before, "inference_count") == 6
    assert n(after, "execution_count") - n(before, "execution_count") == 4
    assert n(after, "inference_stats", "success", "count") - \
        n(before, "inference_stats", "success", "count") == 3
    assert n(after, "inference_stats", "fail", "count") - \
        n(before, "inference_stats", "fail", "count") == 1
    sizes = {int(e["batch_size"]) for e in after["batch_stats"]}
    assert {1, 2, 3} <= sizes
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert "nope" in e.value.message()


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
