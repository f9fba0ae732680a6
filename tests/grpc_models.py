"""Model repositories for the gRPC tests (python models written against Triton's API)."""

from __future__ import annotations

from pathlib import Path

from conftest import copy_example, write_model

WIRE_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "FP32", "FP64", "BYTES"]


def _identity_config() -> str:
    ins, outs = [], []
    for t in WIRE_TYPES:
        ct = "TYPE_STRING" if t == "BYTES" else f"TYPE_{t}"
        ins.append(f'{{ name: "IN_{t}" data_type: {ct} dims: [ -1 ] optional: true }}')
        outs.append(f'{{ name: "OUT_{t}" data_type: {ct} dims: [ -1 ] }}')
    return (
        'name: "identity"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input [\n  {(',' + chr(10) + '  ').join(ins)}\n]\n"
        f"output [\n  {(',' + chr(10) + '  ').join(outs)}\n]\n"
        "instance_group [ { kind: KIND_CPU } ]\n"
    )


IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outs = [pb_utils.Tensor("OUT_" + t.name()[3:], t.as_numpy())
                    for t in request.inputs()]
            responses.append(pb_utils.InferenceResponse(outs))
        return responses
"""

# N responses (OUT = 0..N-1), each 10 ms apart from a thread, then the final
# flag alone; N < 0: one error response with the final flag; N >= 100: N-100
# responses, the last carrying the final flag.
REPEAT_CONFIG = """
name: "repeat"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

REPEAT_MODEL = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            sender = request.get_response_sender()
            threading.Thread(target=self.run, args=(n, sender)).start()
        return None

    def run(self, n, sender):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def out(i):
            return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))])

        if n < 0:
            error = pb_utils.TritonError("negative n")
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        if n >= 100:
            k = n - 100
            for i in range(k):
                sender.send(out(i), flags=final if i == k - 1 else 0)
            return
        for i in range(n):
            time.sleep(0.01)
            sender.send(out(i))
        sender.send(flags=final)
"""

# Every execution waits until 8 requests are inside execute at once: it can
# only finish if the server keeps 8 requests in flight.
BARRIER_CONFIG = """
name: "barrier"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 8 } ]
"""

BARRIER_MODEL = """
import threading

import triton_python_backend_utils as pb_utils

BARRIER = threading.Barrier(8, timeout=20)


class TritonPythonModel:
    def execute(self, requests):
        BARRIER.wait()
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
"""

# Returns its request's parameters as JSON (forwarded headers land there).
PARAMS_CONFIG = """
name: "params"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

PARAMS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "PARAMS", np.array([r.parameters().encode()], dtype=np.object_))])
            for r in requests]
"""

SLOW_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

SLOW_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(float(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0]))
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
"""


def bf16_identity(repo: Path) -> None:
    """An ONNX model: y = x (BF16) and f = float(x), batched."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]),
         helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT)], "bf16_identity",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 3]),
         helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = repo / "bf16_identity" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    (repo / "bf16_identity" / "config.pbtxt").write_text(
        'name: "bf16_identity"\nbackend: "onnxruntime"\nmax_batch_size: 4\n')


def build_repository(repo: Path) -> Path:
    """add_sub, string_upper, tiny_classifier (examples) plus the models above."""
    for name in ("add_sub", "string_upper", "tiny_classifier"):
        copy_example(repo, name)
    write_model(repo, "identity", _identity_config(), {"model.py": IDENTITY_MODEL})
    write_model(repo, "repeat", REPEAT_CONFIG, {"model.py": REPEAT_MODEL})
    write_model(repo, "barrier", BARRIER_CONFIG, {"model.py": BARRIER_MODEL})
    write_model(repo, "params", PARAMS_CONFIG, {"model.py": PARAMS_MODEL})
    write_model(repo, "slow", SLOW_CONFIG, {"model.py": SLOW_MODEL})
    bf16_identity(repo)
    return repo
