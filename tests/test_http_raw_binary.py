"""Triton's raw binary request: Inference-Header-Content-Length: 0, body = the only input.

Checked against the reference Triton 2.51: a [4] FP32 input of a batching
model takes 16 raw bytes as shape [1,4] and answers every output in binary;
32 or 12 bytes answer 400 "input byte size mismatch ... Expected 16, got N";
a [-1] input deduces its length from the byte count.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.clients import post
from tests.conftest import NaiadProcess, write_model

MODEL = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", x), pb_utils.Tensor("OUT2", x * 2)]))
        return out
"""


def config(name: str, dims: str, inputs: int = 1) -> str:
    extra = '{ name: "IN_B" data_type: TYPE_FP32 dims: [ 4 ] },' if inputs == 2 else ""
    return f"""
    name: "{name}"
    backend: "python"
    max_batch_size: 8
    input [ {extra} {{ name: "IN" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
    output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ {dims} ] }},
             {{ name: "OUT2" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
    """


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("raw")
    write_model(repo, "fixed", config("fixed", "4"), {"model.py": MODEL})
    write_model(repo, "var", config("var", "-1"), {"model.py": MODEL})
    write_model(repo, "two", config("two", "4", inputs=2), {"model.py": MODEL})
    with NaiadProcess(repo) as s:
        yield s


def post_raw(server, model: str, body: bytes):
    r = post(server.base, f"/v2/models/{model}/infer", body,
             headers={"Inference-Header-Content-Length": "0"})
    return r.status_code, r.headers, r.content


def split(headers, body: bytes):
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    out, off = {}, n
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[off:off + size], "<f4").reshape(o["shape"])
        off += size
    return head, out


def test_raw_body_is_the_single_input_with_batch_one(server):
    status, headers, body = post_raw(server, "fixed", struct.pack("<4f", 1, 2, 3, 4))
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    head, out = split(headers, body)
    assert [o["shape"] for o in head["outputs"]] == [[1, 4], [1, 4]]
    np.testing.assert_array_equal(out["OUT2"], [[2, 4, 6, 8]])


@pytest.mark.parametrize("n", [3, 8])
def test_raw_body_of_wrong_size_is_refused(server, n):
    status, _, body = post_raw(server, "fixed", struct.pack(f"<{n}f", *range(n)))
    assert status == 400
    assert (f"input byte size mismatch for input 'IN' for model 'fixed'. Expected 16, got "
            f"{4 * n}") in json.loads(body)["error"]


def test_variable_dimension_is_deduced_from_the_byte_count(server):
    status, headers, body = post_raw(server, "var", struct.pack("<6f", *range(6)))
    assert status == 200
    _, out = split(headers, body)
    np.testing.assert_array_equal(out["OUT"], [list(range(6))])


def test_model_with_two_inputs_cannot_take_a_raw_body(server):
    status, _, body = post_raw(server, "two", struct.pack("<4f", 1, 2, 3, 4))
    assert status == 400
    assert "exactly one input" in json.loads(body)["error"]
