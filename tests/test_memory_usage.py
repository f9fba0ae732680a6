"""Statistics' ``memory_usage``: what a version's load grew the server's memory by.

Filled for python and onnxruntime models loaded while nothing else loads (the
growth is then the version's own); a load that overlapped another reports
nothing rather than a number that mixes two models.
"""

from __future__ import annotations

import gc

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from naiad.repository import memory
from naiad.repository.memory import LoadMeter
from tests.conftest import NaiadProcess, write_model

MIB = 1 << 20

BIG_PY = """
import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        self.table = np.ones(8 * 1024 * 1024, np.float64)  # 64 MiB, every page touched

    def execute(self, requests):
        return []
"""


def _big_onnx(path) -> None:
    """Y = X + W with a 16 MiB initializer W."""
    n = 4 * MIB
    weights = numpy_helper.from_array(np.random.default_rng(0).random(n, np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_memory_usage_of_python_and_onnxruntime_models(repo):
    write_model(repo, "pybig", """
        name: "pybig"
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """, {"model.py": BIG_PY})
    _big_onnx(repo / "ortbig" / "1" / "model.onnx")
    (repo / "ortbig" / "config.pbtxt").write_text('name: "ortbig"\nbackend: "onnxruntime"\n')
    with NaiadProcess(repo, "--model-control-mode=explicit") as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        rpc = grpcclient.InferenceServerClient(proc.grpc_url)
        for name, at_least in (("pybig", 60 * MIB), ("ortbig", 16 * MIB)):
            http.load_model(name)  # one at a time: each load is measured alone
            (usage,) = http.get_inference_statistics(name)["model_stats"][0]["memory_usage"]
            assert usage["type"] == "CPU" and usage["id"] == 0
            assert at_least <= usage["byte_size"] < at_least + 512 * MIB, (name, usage)
            (grpc_usage,) = rpc.get_inference_statistics(name).model_stats[0].memory_usage
            assert (grpc_usage.type, grpc_usage.byte_size) == ("CPU", usage["byte_size"])


def test_overlapping_loads_report_nothing():
    # this process only (the session's example server is a child of pytest), with the
    # garbage of earlier in-process servers collected first: a collection inside the
    # windows would shrink the process by more than the 32 MiB measured
    memory.release_freed_memory()
    assert not memory._active  # no meter of another test still open
    with LoadMeter(children=False) as first:
        with LoadMeter(children=False) as second:
            grown = bytearray(32 * MIB)
            grown[::4096] = b"\1" * len(grown[::4096])  # touch every page
        third = LoadMeter(children=False)
    gc.disable()  # nothing else freed while the third one measures
    try:
        with third:
            kept = bytearray(32 * MIB)
            kept[::4096] = b"\1" * len(kept[::4096])
    finally:
        gc.enable()
    assert first.usage() == [] and second.usage() == []  # they overlapped
    (alone,) = third.usage()
    assert alone["type"] == "CPU" and alone["byte_size"] >= 16 * MIB
    del grown, kept
