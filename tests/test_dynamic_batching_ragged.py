"""Ragged batching with onnxruntime: ragged inputs, batch_input and batch_output."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import onnx
import pytest
import tritonclient.http.aio as aioclient
from conftest import NaiadProcess, write_model
from onnx import TensorProto, helper

from naiad.backends.batch_io import BatchIO, validate_batch_io
from naiad.core.types import InferenceRequest, Tensor
from naiad.protocol import model_config_pb2 as mc
from naiad.repository.config import parse_config_text


def ragged_onnx(path):
    """OUT = INPUT (1-D, all requests' elements); IDX = INDEX as a column; COUNT = N."""
    nodes = [
        helper.make_node("Identity", ["INPUT"], ["OUT"]),
        helper.make_node("Unsqueeze", ["INDEX", "axis1"], ["IDX"]),
        helper.make_node("Shape", ["INPUT"], ["n"]),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["n_f", "shape_of_idx"], ["COUNT"]),
        helper.make_node("Shape", ["IDX"], ["shape_of_idx"]),
    ]
    graph = helper.make_graph(
        nodes, "ragged",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["total"]),
         helper.make_tensor_value_info("INDEX", TensorProto.FLOAT, ["requests"])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["total"]),
         helper.make_tensor_value_info("IDX", TensorProto.FLOAT, ["requests", 1]),
         helper.make_tensor_value_info("COUNT", TensorProto.FLOAT, ["requests", 1])],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])])
    # node order: Shape(IDX) must come before Expand
    graph.node.insert(4, graph.node.pop(5))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


CONFIG = """
name: "ragged"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [
  { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "IDX" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "COUNT" data_type: TYPE_FP32 dims: [ 1 ] }
]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "INDEX"
                data_type: TYPE_FP32 source_input: "INPUT" } ]
batch_output [ { target_name: "OUT" kind: BATCH_SCATTER_WITH_INPUT_SHAPE
                 source_input: "INPUT" } ]
dynamic_batching { max_queue_delay_microseconds: 500000 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ragged")
    write_model(repo, "ragged", CONFIG)
    ragged_onnx(repo / "ragged" / "1" / "model.onnx")
    with NaiadProcess(repo) as s:
        yield s


def test_ragged_requests_share_one_execution_and_get_their_own_rows(server):
    widths = [3, 4, 5]

    async def one(client, i, width):
        await asyncio.sleep(0.02 * i)  # within the queue delay (a loaded machine may swap them)
        data = np.arange(width, dtype=np.float32).reshape(1, width) + 10 * i
        inp = aioclient.InferInput("INPUT", [1, width], "FP32")
        inp.set_data_from_numpy(data)
        r = await client.infer("ragged", [inp])
        return data, r.as_numpy("OUT"), r.as_numpy("IDX"), r.as_numpy("COUNT")

    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            return await asyncio.gather(*[one(client, i, w) for i, w in enumerate(widths)])
        finally:
            await client.close()

    results = asyncio.run(go())
    # BATCH_ACCUMULATED_ELEMENT_COUNT: each request's end in the batch, in arrival order
    arrival = sorted(range(len(widths)), key=lambda i: float(results[i][2].flat[0]))
    accumulated = np.cumsum([widths[i] for i in arrival])
    for position, i in enumerate(arrival):
        data, out, idx, count = results[i]
        assert out.shape == data.shape and out.tolist() == data.tolist()  # scattered back
        assert idx.tolist() == [[float(accumulated[position])]]
        assert count.tolist() == [[12.0]]  # all three ran as one 12-element tensor
    with urllib.request.urlopen(f"{server.base}/v2/models/ragged/stats") as r:
        stats = json.load(r)["model_stats"][0]
    assert stats["execution_count"] == 1 and stats["inference_count"] == 3


def _requests(shapes):
    return [InferenceRequest("m", {"X": Tensor("X", "FP32", np.zeros(s, np.float32))})
            for s in shapes]


def test_batch_input_kinds():
    config = parse_config_text("""
        name: "m" backend: "onnxruntime" max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1, -1 ] allow_ragged_batch: true } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
        batch_input [
          { kind: BATCH_ELEMENT_COUNT target_name: "EC" data_type: TYPE_INT32 source_input: "X" },
          { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "AC" data_type: TYPE_INT32
            source_input: "X" },
          { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ACZ"
            data_type: TYPE_FP32 source_input: "X" },
          { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "MAX" data_type: TYPE_INT32
            source_input: "X" },
          { kind: BATCH_ITEM_SHAPE target_name: "IS" data_type: TYPE_INT32 source_input: "X" },
          { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: "ISF" data_type: TYPE_INT32
            source_input: "X" }
        ]
        batch_output [ { target_name: "Y" kind: BATCH_SCATTER_WITH_INPUT_SHAPE
                         source_input: "X" } ]
    """)
    validate_batch_io(config)
    bio = BatchIO(config)
    # Triton's example: one batch-2 request of shape [3, 1] and one batch-1 of shape [2, 2]
    requests = _requests([(2, 3, 1), (1, 2, 2)])
    arrays = bio.batch_input_arrays(requests)
    assert arrays["EC"].tolist() == [6, 4] and arrays["EC"].dtype == np.int32
    assert arrays["AC"].tolist() == [6, 10]
    assert arrays["ACZ"].tolist() == [0.0, 6.0, 10.0] and arrays["ACZ"].dtype == np.float32
    assert arrays["MAX"].shape == (6,)
    assert arrays["IS"].tolist() == [[3, 1], [3, 1], [2, 2]]
    assert arrays["ISF"].tolist() == [3, 1, 3, 1, 2, 2]
    assert bio.concat_ragged(requests, "X").shape == (10,)
    pieces = bio.scatter_output("Y", np.arange(10, dtype=np.float32), requests)
    assert [p.shape for p in pieces] == [(2, 3, 1), (1, 2, 2)]
    assert pieces[1].reshape(-1).tolist() == [6.0, 7.0, 8.0, 9.0]


@pytest.mark.parametrize("extra, message", [
    ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "T" data_type: TYPE_INT64 '
     'source_input: "X" } ]', "batch input data type must be TYPE_INT32 or TYPE_FP32"),
    ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "T" data_type: TYPE_INT32 '
     'source_input: "NOPE" } ]', "unknown source input name 'NOPE'"),
    ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "T" data_type: TYPE_INT32 } ]',
     "expects 1 source input, got 0"),
    ('batch_output [ { target_name: "Z" source_input: "X" } ]', "unknown target output name 'Z'"),
])
def test_invalid_batch_io_is_refused(extra, message):
    config = parse_config_text(f"""
        name: "m" backend: "onnxruntime" max_batch_size: 4
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        {extra}
    """)
    with pytest.raises(Exception) as info:
        validate_batch_io(config)
    assert message in str(info.value)
    assert isinstance(config, mc.ModelConfig)
