"""The benchmark models: repositories, requests and expected outputs."""

from __future__ import annotations

from pathlib import Path

from .v2 import InferRequest, Tensor

# ---------------------------------------------------------------- add_sub

ADD_SUB_CONFIG = """\
name: "add_sub"
backend: "python"
max_batch_size: 0
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

ADD_SUB_MODEL_PY = '''\
"""add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (benchmark model)."""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.output0_dtype))
            out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.output1_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
        return responses

    def finalize(self):
        pass
'''

ADD_SUB_IN0 = [1.0, 2.0, 3.0, 4.0]
ADD_SUB_IN1 = [0.5, 0.25, -1.0, 2.0]


def write_add_sub_repo(root: Path) -> Path:
    """(Re)write the add_sub model repository under ``root``; returns root."""
    d = Path(root) / "add_sub"
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    (d / "1" / "model.py").write_text(ADD_SUB_MODEL_PY)
    return Path(root)


def add_sub_request() -> InferRequest:
    return InferRequest(
        model="add_sub",
        inputs=[Tensor.pack("INPUT0", "FP32", [4], ADD_SUB_IN0),
                Tensor.pack("INPUT1", "FP32", [4], ADD_SUB_IN1)],
        outputs=["OUTPUT0", "OUTPUT1"],
    )


def check_add_sub(outputs: dict[str, Tensor]) -> None:
    want0 = [a + b for a, b in zip(ADD_SUB_IN0, ADD_SUB_IN1)]
    want1 = [a - b for a, b in zip(ADD_SUB_IN0, ADD_SUB_IN1)]
    for name, want in (("OUTPUT0", want0), ("OUTPUT1", want1)):
        if name not in outputs:
            raise AssertionError(f"{name} missing from response ({sorted(outputs)})")
        t = outputs[name]
        if t.datatype != "FP32" or list(t.shape) != [4]:
            raise AssertionError(f"{name}: got {t.datatype}{t.shape}, want FP32[4]")
        got = t.values()
        if any(abs(g - w) > 1e-6 for g, w in zip(got, want)):
            raise AssertionError(f"{name}: got {got}, want {want}")


# ---------------------------------------------------------------- MiniLM

MINILM_BATCH = 1
MINILM_SEQ = 128


def minilm_tokens(batch: int = MINILM_BATCH, seq: int = MINILM_SEQ) -> dict[str, list[int]]:
    """Deterministic token batch, flattened row-major: [CLS] ids... [SEP], no padding."""
    ids, mask, tt = [], [], []
    for b in range(batch):
        row = [101] + [1000 + (b * 7919 + i * 104729) % 28000 for i in range(seq - 2)] + [102]
        ids += row
        mask += [1] * seq
        tt += [0] * seq
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def minilm_request(batch: int = MINILM_BATCH, seq: int = MINILM_SEQ) -> InferRequest:
    toks = minilm_tokens(batch, seq)
    return InferRequest(
        model="minilm",
        inputs=[Tensor.pack(k, "INT64", [batch, seq], v) for k, v in toks.items()],
        outputs=["sentence_embedding"],
    )
