"""Uppercase every string of a BYTES tensor; also return each result's length.

BYTES tensors arrive as numpy object arrays of ``bytes``; this model reads
them as UTF-8 text. Written against Triton's python-backend API, so the same
file runs under tritonserver and under naiad unchanged.
"""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            try:
                texts = [item.decode("utf-8") for item in data.reshape(-1)]
            except UnicodeDecodeError as exc:
                # the client's mistake: INVALID_ARG (HTTP 400), not the default INTERNAL
                error = pb_utils.TritonError(f"INPUT0 must hold UTF-8 text: {exc}",
                                             pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            upper = np.array([t.upper().encode("utf-8") for t in texts],
                             dtype=np.object_).reshape(data.shape)
            lengths = np.array([len(t.upper()) for t in texts], dtype=np.int32).reshape(data.shape)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", upper),
                pb_utils.Tensor("LENGTH", lengths),
            ]))
        return responses
