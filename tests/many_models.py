"""Repositories of many small models for the load-on-demand tests and benchmark.

Every model holds a ballast: memory it keeps while loaded, so that a memory
budget decides how many fit. Python models fill ``BALLAST`` bytes in
``initialize``; ONNX models carry them as an initializer the graph reads on
every request (its external-data file is one file hard-linked into every
model folder, so fifty models cost one file on disk). Both answer
``OUT = IN + OFFSET`` with a per-model offset, so an answer names the model
that gave it.
"""

from __future__ import annotations

import os
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


class TritonPythonModel:
    def initialize(self, args):
        if INIT_SLEEP:
            time.sleep(INIT_SLEEP)
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
               init_sleep: float = 0.0, fail_if: str = "", extra: str = "") -> Path:
    """OUT = IN + offset (sleeping IN[1] seconds when IN has two elements and IN[1] > 0);
    holds ``ballast`` bytes; fails to initialize while the file ``fail_if`` exists."""
    source = BALLAST_PY.format(offset=float(offset), ballast=int(ballast),
                               init_sleep=float(init_sleep), fail_if=str(fail_if))
    return write_model(repo, name, PY_CONFIG.format(name=name, extra=extra),
                       {"model.py": source})


def _onnx_model(offset: float, ballast_file: str, rows: int):
    from onnx import TensorProto, helper, numpy_helper

    ballast = numpy_helper.from_array(np.zeros((rows, 4), np.float32), "W")
    ballast.ClearField("raw_data")
    ballast.data_location = TensorProto.EXTERNAL
    for key, value in (("location", ballast_file), ("offset", "0"),
                       ("length", str(rows * 16))):
        entry = ballast.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("ReduceMean", ["W"], ["mean"], axes=[0], keepdims=0),
             helper.make_node("Add", ["IN", "mean"], ["sum"]),
             helper.make_node("Add", ["sum", "C"], ["OUT"])]
    graph = helper.make_graph(
        nodes, "ballast", [helper.make_tensor_value_info("IN", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, [4])],
        [ballast, numpy_helper.from_array(np.full(4, offset, np.float32), "C")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def ballast_file(folder: Path, ballast: int = 8 * MIB) -> Path:
    """The one file of zeros every ONNX model of ``folder`` links to (the mean it adds is
    0, so OUT = IN + offset)."""
    path = folder / f"ballast-{ballast}.bin"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(ballast - ballast % 16)
            f.seek(0)
            f.write(b"\0")  # a real block, not only a hole
    return path


def add_onnx(repo: Path, name: str, offset: float, ballast: int = 8 * MIB,
             shared: Path | None = None, extra: str = "") -> Path:
    """OUT = IN + offset for IN of 4 FP32; reads a ``ballast``-byte initializer on every
    request (a hard link to ``shared``, default one file beside ``repo``)."""
    import onnx

    shared = shared or ballast_file(repo.parent / "ballast", ballast)
    rows = os.path.getsize(shared) // 16
    model_dir = write_model(repo, name, ONNX_CONFIG.format(name=name, extra=extra))
    onnx.save(_onnx_model(offset, "ballast.bin", rows), str(model_dir / "1" / "model.onnx"))
    os.link(shared, model_dir / "1" / "ballast.bin")
    return model_dir
