"""A python function served as a Triton python model (written by ``naiad import``).

The function is named by the config's ``callable`` parameter (``module:function``;
the module sits beside this file or is installed). Each request's inputs are
passed positionally, in the config's input order (a missing optional input as
None); the function returns one array, a tuple/list in the config's output
order, or a dict by output name. An exception fails that request only.
Runs unchanged on Triton's python backend.
"""

import importlib
import json
import os
import sys

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        target = config["parameters"]["callable"]["string_value"]
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        module, _, name = target.rpartition(":")
        self.fn = getattr(importlib.import_module(module), name)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]))
                        for o in config["output"]]

    def _tensors(self, result):
        if isinstance(result, dict):
            missing = [n for n, _ in self.outputs if n not in result]
            if missing:
                raise ValueError(f"the function returned no value for {', '.join(missing)}")
            values = [result[n] for n, _ in self.outputs]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(self.outputs):
            raise ValueError(f"the function returned {len(values)} values for "
                             f"{len(self.outputs)} outputs")
        tensors = []
        for (name, dtype), value in zip(self.outputs, values):
            arr = np.asarray(value)
            if dtype == np.object_ and arr.dtype.kind == "U":
                arr = np.char.encode(arr, "utf-8")
            tensors.append(pb_utils.Tensor(name, arr.astype(dtype)))
        return tensors

    def execute(self, requests):
        responses = []
        for request in requests:
            args = []
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                args.append(None if tensor is None else tensor.as_numpy())
            try:
                responses.append(pb_utils.InferenceResponse(self._tensors(self.fn(*args))))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
