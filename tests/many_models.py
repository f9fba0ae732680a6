"""Repositories of many small models for the load-on-demand tests and benchmark.

Every model holds a ballast: memory it keeps while loaded, so that a memory
budget decides how many fit. Python models fill ``BALLAST`` bytes in
``initialize``; ONNX models build it when their session is created (a
``ConstantOfShape`` onnxruntime folds into an initializer, read on every
request), so their files stay a few hundred bytes. Both answer
``OUT = IN + OFFSET`` with a per-model offset, so an answer names the model
that gave it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_model

MIB = 1024 * 1024

BALLAST_PY = '''
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}
BALLAST = {ballast}
INIT_SLEEP = {init_sleep}
FAIL_IF = {fail_if!r}
HOLD_UNTIL = {hold_until!r}


class TritonPythonModel:
    def initialize(self, args):
        if INIT_SLEEP:
            time.sleep(INIT_SLEEP)
        deadline = time.monotonic() + 60
        while HOLD_UNTIL and not os.path.exists(HOLD_UNTIL) and time.monotonic() < deadline:
            time.sleep(0.01)
        if FAIL_IF and os.path.exists(FAIL_IF):
            raise RuntimeError("initialize failed on purpose: " + FAIL_IF + " exists")
        self.ballast = np.full(BALLAST, 7, dtype=np.uint8)  # written: resident

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            if x.shape[0] > 1 and x[1] > 0:
                time.sleep(float(x[1]))
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", (x + OFFSET).astype(np.float32))]))
        return out
'''

PY_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{extra}
'''

ONNX_CONFIG = '''
name: "{name}"
backend: "onnxruntime"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{extra}
'''

PIN = 'parameters { key: "NAIAD_PINNED" value: { string_value: "true" } }'


def add_python(repo: Path, name: str, offset: float, ballast: int = 8 * MIB,
               init_sleep: float = 0.0, fail_if: str = "", hold_until: str = "",
               extra: str = "") -> Path:
    """OUT = IN + offset (sleeping IN[1] seconds when IN has two elements and IN[1] > 0);
    holds ``ballast`` bytes; fails to initialize while the file ``fail_if`` exists; its
    initialize waits (up to 60 s) until the file ``hold_until`` exists."""
    source = BALLAST_PY.format(offset=float(offset), ballast=int(ballast),
                               init_sleep=float(init_sleep), fail_if=str(fail_if),
                               hold_until=str(hold_until))
    return write_model(repo, name, PY_CONFIG.format(name=name, extra=extra),
                       {"model.py": source})


def _onnx_model(offset: float, ballast: int):
    from onnx import TensorProto, helper, numpy_helper

    rows = max(1, ballast // 16)

    def const(name, values, dtype):
        return numpy_helper.from_array(np.array(values, dtype), name)

    nodes = [
        # a [rows, 4] tensor of zeros: onnxruntime folds it into an initializer when the
        # session is created, so each session holds it while the file stays tiny
        helper.make_node("ConstantOfShape", ["shape"], ["W"],
                         value=const("fill", [0.0], np.float32)),
        # OUT = IN + W[0 * min(IN)] + offset: the ballast is read on every request
        helper.make_node("ReduceMin", ["IN"], ["low"], keepdims=1),
        helper.make_node("Mul", ["low", "zero"], ["nothing"]),
        helper.make_node("Cast", ["nothing"], ["row_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["W", "row_index"], ["row"], axis=0),
        helper.make_node("Reshape", ["row", "four"], ["row4"]),
        helper.make_node("Add", ["IN", "row4"], ["sum"]),
        helper.make_node("Add", ["sum", "C"], ["OUT"]),
    ]
    graph = helper.make_graph(
        nodes, "ballast", [helper.make_tensor_value_info("IN", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, [4])],
        [const("shape", [rows, 4], np.int64), const("zero", [0.0], np.float32),
         const("four", [4], np.int64), const("C", [offset] * 4, np.float32)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def add_onnx(repo: Path, name: str, offset: float, ballast: int = 8 * MIB,
             extra: str = "") -> Path:
    """OUT = IN + offset for IN of 4 FP32, holding ``ballast`` bytes per session."""
    import onnx

    model_dir = write_model(repo, name, ONNX_CONFIG.format(name=name, extra=extra))
    onnx.save(_onnx_model(offset, ballast), str(model_dir / "1" / "model.onnx"))
    return model_dir


TORCH_CONFIG = '''
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 0
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
'''


def add_torchscript(repo: Path, name: str, offset: float, ballast: int = 8 * MIB,
                    count: int = 1) -> Path:
    """TorchScript: OUTPUT__0 = INPUT__0 + offset, holding a ``ballast``-byte buffer."""
    import torch

    class Ballast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("ballast", torch.zeros(ballast // 4))
            self.offset = offset

        def forward(self, x):
            return x + self.ballast[:4] + self.offset

    model_dir = write_model(repo, name, TORCH_CONFIG.format(name=name, count=count))
    torch.jit.script(Ballast()).save(str(model_dir / "1" / "model.pt"))
    return model_dir


OPENVINO_CONFIG = '''
name: "{name}"
backend: "openvino"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
'''


def add_openvino(repo: Path, name: str, offset: float, ballast: int = 8 * MIB) -> Path:
    """OpenVINO IR: OUT = IN + W[0 * min(IN)] + offset, W a ``ballast``-byte constant."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([4], np.float32, name="IN")
    table = ops.constant(np.zeros((max(1, ballast // 16), 4), np.float32))
    index = ops.convert(ops.multiply(ops.reduce_min(x, [0]), np.float32(0)), "i64")
    row = ops.gather(table, ops.reshape(index, [1], False), 0)
    out = ops.add(ops.add(x, ops.reshape(row, [4], False)), np.full(4, offset, np.float32))
    out.output(0).get_tensor().set_names({"OUT"})
    model_dir = write_model(repo, name, OPENVINO_CONFIG.format(name=name))
    ov.save_model(ov.Model([out], [x], name), str(model_dir / "1" / "model.xml"),
                  compress_to_fp16=False)
    return model_dir
