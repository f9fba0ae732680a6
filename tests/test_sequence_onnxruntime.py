"""Implicit state with the onnxruntime backend: state tensors are graph inputs/outputs."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import pytest
import tritonclient.http.aio as aioclient
from conftest import NaiadProcess, write_model
from onnx import TensorProto, helper


def accumulator_onnx(path):
    """OUT = IN + STATE_IN * (1 - START); STATE_OUT = OUT (all [batch, 1])."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Cast", ["START"], ["start_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "start_f"], ["keep"]),
        helper.make_node("Mul", ["STATE_IN", "keep"], ["kept"]),
        helper.make_node("Add", ["IN", "kept"], ["OUT"]),
        helper.make_node("Identity", ["OUT"], ["STATE_OUT"]),
    ]
    shape = ["batch", 1]
    graph = helper.make_graph(
        nodes, "accumulator",
        [helper.make_tensor_value_info("IN", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("START", TensorProto.INT32, shape)],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("STATE_OUT", TensorProto.FLOAT, shape)],
        initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{
  {strategy}
  control_input [ {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START
                                              int32_false_true: [ 0, 1 ] }} ] }} ]
  state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32
             dims: [ 1 ] initial_state {{ data_type: TYPE_FP32 dims: [ 1 ]
                                          zero_data: true name: "zero" }} }} ]
}}
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("seq_onnx")
    for name, strategy in (("acc_direct", "direct { }"),
                           ("acc_oldest", "oldest { max_candidate_sequences: 8 "
                                          "max_queue_delay_microseconds: 20000 }")):
        write_model(repo, name, CONFIG.format(name=name, strategy=strategy))
        accumulator_onnx(repo / name / "1" / "model.onnx")
    with NaiadProcess(repo) as s:
        yield s


@pytest.mark.parametrize("model", ["acc_direct", "acc_oldest"])
def test_state_is_carried_between_requests_of_each_sequence(server, model):
    plans = {sid: [float(sid % 7 + k) for k in range(5)] for sid in range(1, 13)}

    async def run_sequence(client, sid, values):
        sums = []
        for i, v in enumerate(values):
            inp = aioclient.InferInput("IN", [1, 1], "FP32")
            inp.set_data_from_numpy(np.array([[v]], np.float32))
            r = await client.infer(model, [inp], sequence_id=sid, sequence_start=i == 0,
                                   sequence_end=i == len(values) - 1)
            assert r.as_numpy("STATE_OUT") is None  # state stays inside the server
            sums.append(float(r.as_numpy("OUT")[0][0]))
        return sums

    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            return await asyncio.gather(*[run_sequence(client, sid, vals)
                                          for sid, vals in plans.items()])
        finally:
            await client.close()

    for (sid, values), sums in zip(plans.items(), asyncio.run(go())):
        assert sums == list(np.cumsum(values)), sid
