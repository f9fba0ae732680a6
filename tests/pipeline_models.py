"""Small python models and ensemble configs the pipeline tests build repositories from.

Each ``write_*`` function writes one model folder with ``tests.conftest.write_model``.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_model

# Y = X * MUL + ADD (FP32, any length); a negative first element fails the request
# with a model error, NaN raises inside execute, +inf makes it sleep a little.
AFFINE_PY = """
import json, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = cfg.get("parameters", {})
        self.mul = float(p.get("MUL", {}).get("string_value", "1"))
        self.add = float(p.get("ADD", {}).get("string_value", "0"))
        self.name = args["model_name"]

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x.size and np.isnan(x[0]):
                raise ValueError(f"{self.name} cannot take NaN")
            if x.size and x[0] < 0:
                out.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name} refuses negative input")))
                continue
            if x.size and np.isinf(x[0]):
                time.sleep(0.05)
                x = np.zeros_like(x)
            y = (x * self.mul + self.add).astype(np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

AFFINE_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {mbs}
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
parameters {{ key: "MUL" value: {{ string_value: "{mul}" }} }}
parameters {{ key: "ADD" value: {{ string_value: "{add}" }} }}
{extra}
"""

# C = A + B
SUM_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "B").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("C", (a + b).astype(np.float32))]))
        return out
"""

SUM_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "A" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: "B" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "C" data_type: TYPE_FP32 dims: [ -1 ] }} ]
"""

# Decoupled: N = IN[0] responses, each OUT = [i]; IN < 0: an error response.
# Responses after the first come from a thread that outlives execute().
REPEAT_PY = """
import threading, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            sender = r.get_response_sender()
            if n < 0:
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("repeat count must not be negative")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            if n == 0:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([0], np.int32))]))

            def rest(sender=sender, n=n):
                for i in range(1, n):
                    time.sleep(0.001)
                    sender.send(pb_utils.InferenceResponse(
                        [pb_utils.Tensor("OUT", np.array([i], np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

            threading.Thread(target=rest).start()
        return None
"""

REPEAT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""

# Decoupled with an async execute: N = IN[0] responses produced concurrently
ASYNC_REPEAT_PY = """
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            sender = r.get_response_sender()
            for i in range(n):
                await asyncio.sleep(0.01)
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# int32 -> float32 cast, to join a decoupled producer to float steps
CAST_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "F", pb_utils.get_input_tensor_by_name(r, "I").as_numpy().astype(np.float32))])
            for r in requests]
"""

CAST_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ { name: "I" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "F" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def write_affine(repo: Path, name: str, mul: float = 1.0, add: float = 0.0, mbs: int = 0,
                 extra: str = "") -> None:
    write_model(repo, name, AFFINE_CONFIG.format(name=name, mul=mul, add=add, mbs=mbs,
                                                 extra=extra), {"model.py": AFFINE_PY})


def write_sum(repo: Path, name: str = "sum") -> None:
    write_model(repo, name, SUM_CONFIG.format(name=name), {"model.py": SUM_PY})


def write_repeat(repo: Path, name: str = "repeat", asynchronous: bool = False) -> None:
    write_model(repo, name, REPEAT_CONFIG.format(name=name),
                {"model.py": ASYNC_REPEAT_PY if asynchronous else REPEAT_PY})


def write_cast(repo: Path, name: str = "cast") -> None:
    write_model(repo, name, CAST_CONFIG.replace("{name}", name), {"model.py": CAST_PY})


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {ins} {outs} }}'


def write_ensemble(repo: Path, name: str, inputs: list[tuple[str, str, str]],
                   outputs: list[tuple[str, str, str]], steps: list[str], mbs: int = 0,
                   extra: str = "") -> None:
    """inputs/outputs: (name, TYPE_x, dims text like "-1" or "1")."""
    ins = ", ".join(f'{{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in inputs)
    outs = ", ".join(f'{{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in outputs)
    config = (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {mbs}\n'
              f"input [ {ins} ]\noutput [ {outs} ]\n"
              f"ensemble_scheduling {{ {extra} step [ {', '.join(steps)} ] }}\n")
    write_model(repo, name, config, {})
