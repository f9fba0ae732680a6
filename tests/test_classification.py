"""The classification extension: class_count on a requested output returns the top k as
"score:index[:label]" BYTES, with the labels of the output's label_filename (strings checked
against the reference Triton 2.51 for the same model and inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import NaiadProcess, copy_example, write_model
from tests.models import write_echo

INTS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()),
            pb_utils.Tensor("S", np.array([b"x"], dtype=np.object_))]) for r in requests]
"""

INTS_CONFIG = """
name: "ints"
backend: "python"
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 5 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 5 ] label_filename: "labels.txt" },
         { name: "S" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cls") / "models"
    repo.mkdir()
    write_echo(repo, labels=["a", "b", "c"])  # 3 labels for 4 classes: the last has none
    d = write_model(repo, "ints", INTS_CONFIG, {"model.py": INTS_PY})
    (d / "labels.txt").write_text("zero\none\ntwo\n")
    copy_example(repo, "tiny_classifier")
    with NaiadProcess(repo) as proc:
        yield proc


@pytest.fixture
def client(server):
    return httpclient.InferenceServerClient(server.http_url)


def _classify(client, model, x, datatype, k, output="OUT", input_name="IN"):
    inp = httpclient.InferInput(input_name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp],
                          outputs=[httpclient.InferRequestedOutput(output, class_count=k)])
    (out,) = result.get_response()["outputs"]
    assert out["datatype"] == "BYTES"
    return out["shape"], result.as_numpy(output).tolist()


def test_batched_float_output_top_k_with_labels(client):
    x = np.array([[0.5, 2.25, -1.0, 2.25], [3.0, 1.0, 2.0, 0.0]], dtype=np.float32)
    assert _classify(client, "echo", x, "FP32", 1) == \
        ([2, 1], [[b"2.250000:1:b"], [b"3.000000:0:a"]])
    # ties keep the lower index first; an index past the labels has no label
    assert _classify(client, "echo", x, "FP32", 2) == \
        ([2, 2], [[b"2.250000:1:b", b"2.250000:3"], [b"3.000000:0:a", b"2.000000:2:c"]])
    full = ([2, 4], [[b"2.250000:1:b", b"2.250000:3", b"0.500000:0:a", b"-1.000000:2:c"],
                     [b"3.000000:0:a", b"2.000000:2:c", b"1.000000:1:b", b"0.000000:3"]])
    assert _classify(client, "echo", x, "FP32", 4) == full
    assert _classify(client, "echo", x, "FP32", 10) == full  # k beyond the classes: all


def test_unbatched_integer_output(client):
    x = np.array([3, 9, -2, 9, 7], dtype=np.int32)
    assert _classify(client, "ints", x, "INT32", 2) == ([2], [b"9:1:one", b"9:3"])
    assert _classify(client, "ints", x, "INT32", 5) == \
        ([5], [b"9:1:one", b"9:3", b"7:4", b"3:0:zero", b"-2:2:two"])


def test_classifier_example_returns_its_labels(client):
    x = np.array([[0.1, 0.9, 0.3, 0.5]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    probs = client.infer("tiny_classifier", [inp]).as_numpy("PROBS")[0]
    shape, top = _classify(client, "tiny_classifier", x, "FP32", 3, output="PROBS",
                           input_name="INPUT0")
    assert shape == [1, 3]
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
              "truck"]
    order = np.argsort(-probs, kind="stable")[:3]
    assert top[0] == [f"{probs[i]:f}:{i}:{labels[i]}".encode() for i in order]


def test_classification_over_json_and_of_a_bytes_output(server, client):
    body = {"inputs": [{"name": "IN", "datatype": "INT32", "shape": [5],
                        "data": [1, 5, 2, 0, 4]}],
            "outputs": [{"name": "OUT", "parameters": {"classification": 2}}]}
    r = requests.post(server.base + "/v2/models/ints/infer", json=body, timeout=10)
    assert r.status_code == 200
    assert r.json()["outputs"] == [{"name": "OUT", "datatype": "BYTES", "shape": [2],
                                    "data": ["5:1:one", "4:4"]}]
    with pytest.raises(InferenceServerException) as e:
        _classify(client, "ints", np.zeros(5, np.int32), "INT32", 1, output="S")
    assert e.value.status() == "400"
    assert e.value.message() == \
        "class result not available for output 'S' due to unsupported type 'BYTES'"
    body["outputs"][0]["parameters"]["classification"] = -1
    r = requests.post(server.base + "/v2/models/ints/infer", json=body, timeout=10)
    assert r.status_code == 400
