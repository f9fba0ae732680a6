"""The generate extension: /generate and /generate_stream map JSON to a model's tensors."""

from __future__ import annotations

import json

import pytest

from tests.clients import post as http_post
from tests.conftest import NaiadProcess, write_model
from tests.models import step, write_affine, write_ensemble

GEN = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            text = pb_utils.get_input_tensor_by_name(r, "text_input").as_numpy()[0]
            mt = pb_utils.get_input_tensor_by_name(r, "max_tokens")
            n = int(mt.as_numpy()[0]) if mt is not None else -1
            if n == 99:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("gen failed")))
                continue
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("text_output", np.array([text.upper()], dtype=np.object_)),
                pb_utils.Tensor("count", np.array([n], np.int32)),
                pb_utils.Tensor("params", np.array([r.parameters().encode()], dtype=np.object_)),
            ]))
        return out
"""

GEN_CONFIG = """
name: "gen"
backend: "python"
max_batch_size: 0
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "count" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "params" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

# One token per response; max_tokens == 2 ends the stream with an error
GENDEC = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            text = pb_utils.get_input_tensor_by_name(r, "text_input").as_numpy()[0]
            n = int(pb_utils.get_input_tensor_by_name(r, "max_tokens").as_numpy()[0])
            sender = r.get_response_sender()
            if n < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("bad count")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor(
                    "text_output", np.array([text + b" %d" % i], dtype=np.object_))]))
            if n == 2:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("stream broke")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

GENDEC_CONFIG = """
name: "gendec"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("gen") / "models"
    repo.mkdir()
    write_model(repo, "gen", GEN_CONFIG, {"model.py": GEN})
    write_model(repo, "gendec", GENDEC_CONFIG, {"model.py": GENDEC})
    write_affine(repo, "double", mul=2)
    write_ensemble(repo, "ens", [("A", "TYPE_FP32", "-1")], [("B", "TYPE_FP32", "-1")],
                   [step("double", {"X": "A"}, {"Y": "B"})])
    with NaiadProcess(repo) as s:
        yield s


def post(server, model, body, stream=False):
    return http_post(server.base, f"/v2/models/{model}/generate{'_stream' if stream else ''}",
                     body, timeout=30, stream=stream)


def events(resp) -> list[dict]:
    out = []
    for chunk in resp.text.split("\n\n"):
        if chunk.strip():
            assert chunk.startswith("data: ")
            out.append(json.loads(chunk[len("data: "):]))
    return out


def test_generate_maps_json_fields_to_inputs_and_outputs(server):
    r = post(server, "gen", {"text_input": "hello", "max_tokens": 3, "id": "r7",
                             "temperature": 0.5, "parameters": {"top_k": 4}})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    params = json.loads(body.pop("params"))
    assert body == {"text_output": "HELLO", "count": 3, "model_name": "gen",
                    "model_version": "1", "id": "r7"}
    assert params == {"temperature": 0.5, "top_k": 4}
    # optional input left out; a one-element array works like a scalar
    assert post(server, "gen", {"text_input": ["hi"]}).json()["count"] == -1
    # ensembles and numeric tensors: a scalar or a flat list fills a [-1] input
    assert post(server, "ens", {"A": [1, 2.5]}).json()["B"] == [2.0, 5.0]
    assert post(server, "ens", {"A": 3}).json()["B"] == 6.0


@pytest.mark.parametrize("model, body, status, message", [
    ("gen", {"text_input": ["a", "b"]}, 400,
     "The schema can not convert input 'text_input' to tensor with proper shape"),
    ("gen", {"text_input": "a", "max_tokens": 3.5}, 400, "expected integers"),
    ("gen", {"text_input": 5}, 400, "expected strings"),
    ("gen", {"text_input": [["a"]]}, 400, "to tensor with proper shape"),
    ("gen", {"max_tokens": 1}, 400, "missing required input(s) ['text_input']"),
    ("gen", "not json", 400, "failed to parse the request JSON buffer"),
    ("gen", [1, 2], 400, "must be a JSON object"),
    ("gen", {"text_input": "a", "max_tokens": 99}, 400, "gen failed"),
    ("nosuch", {"text_input": "a"}, 404, "Request for unknown model: 'nosuch' is not found"),
    ("gendec", {"text_input": "a", "max_tokens": 3}, 400,
     "generate expects model to produce exactly 1 response"),
    ("gendec", {"text_input": "a", "max_tokens": 2}, 400, "stream broke"),
])
def test_generate_errors(server, model, body, status, message):
    r = post(server, model, body)
    assert r.status_code == status
    assert message in r.json()["error"]


def test_generate_of_a_decoupled_model_with_one_response(server):
    r = post(server, "gendec", {"text_input": "x", "max_tokens": 1})
    assert r.status_code == 200
    assert r.json()["text_output"] == "x 0"


def test_generate_stream_sends_each_response_as_an_event(server):
    r = post(server, "gendec", {"text_input": "tok", "max_tokens": 4}, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert [e["text_output"] for e in events(r)] == ["tok 0", "tok 1", "tok 2", "tok 3"]
    assert all(e["model_name"] == "gendec" for e in events(r))
    # zero responses: an empty stream
    empty = post(server, "gendec", {"text_input": "tok", "max_tokens": 0}, stream=True)
    assert empty.status_code == 200 and events(empty) == []
    # a non-decoupled model streams its one response
    one = post(server, "gen", {"text_input": "a"}, stream=True)
    assert [e["text_output"] for e in events(one)] == ["A"]


def test_generate_stream_delivers_errors_in_the_stream(server):
    r = post(server, "gendec", {"text_input": "t", "max_tokens": 2}, stream=True)
    assert r.status_code == 200  # the status is the first response's
    assert events(r) == [
        {"model_name": "gendec", "model_version": "1", "text_output": "t 0"},
        {"model_name": "gendec", "model_version": "1", "text_output": "t 1"},
        {"error": "stream broke"},
    ]
    first = post(server, "gendec", {"text_input": "t", "max_tokens": -1}, stream=True)
    assert first.status_code == 400
    assert first.headers["content-type"].startswith("text/event-stream")
    assert events(first) == [{"error": "bad count"}]
    # refused before inference: a plain JSON error
    bad = post(server, "gendec", {"text_input": "t"}, stream=True)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/json"
    assert "max_tokens" in bad.json()["error"]
