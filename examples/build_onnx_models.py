"""Build the ONNX example models of examples/model_repository (no torch needed).

    python examples/build_onnx_models.py

writes

* ``simple_onnx/1/model.onnx``: OUTPUT0 = INPUT0 @ W + b, FP32 [-1, 16] -> [-1, 4]
* ``tiny_classifier/1/model.onnx``: PROBS = softmax(INPUT0 @ W + b), FP32 [-1, 4] -> [-1, 10]

The weights come from fixed seeds and the files carry no timestamps, so running
the script again rewrites byte-identical files. The config.pbtxt and
labels.txt files beside them are written by hand.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.join(HERE, "model_repository")

# Old enough for every onnxruntime naiad supports.
IR_VERSION = 8
OPSET = 17


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, producer_name="naiad-examples",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _weights(seed: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # two decimals: small, readable numbers that are exact to recompute in a test
    w = np.round(rng.uniform(-1.0, 1.0, size=(rows, cols)), 2).astype(np.float32)
    b = np.round(rng.uniform(-0.5, 0.5, size=(cols,)), 2).astype(np.float32)
    return w, b


def simple_onnx() -> onnx.ModelProto:
    """A batched linear layer: [-1, 16] -> [-1, 4]."""
    w, b = _weights(16, 16, 4)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["INPUT0", "W", "B"], ["OUTPUT0"], name="linear")],
        "simple_onnx",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _model(graph)


def tiny_classifier() -> onnx.ModelProto:
    """Softmax scores over 10 classes from 4 features: [-1, 4] -> [-1, 10]."""
    w, b = _weights(10, 4, 10)
    w = w * 3  # spread the scores so the top classes are clearly apart
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["INPUT0", "W", "B"], ["logits"], name="linear"),
            helper.make_node("Softmax", ["logits"], ["PROBS"], name="softmax", axis=-1),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _model(graph)


MODELS = {
    "simple_onnx": simple_onnx,
    "tiny_classifier": tiny_classifier,
}


def build(repository: str = REPOSITORY) -> list[str]:
    written = []
    for name, make in MODELS.items():
        path = os.path.join(repository, name, "1", "model.onnx")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = make().SerializeToString()
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=REPOSITORY,
                        help="model repository to write into (default: %(default)s)")
    args = parser.parse_args()
    for path in build(args.repository):
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
