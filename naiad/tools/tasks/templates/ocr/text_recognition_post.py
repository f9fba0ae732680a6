"""Text recognition post-processing (naiad import --task text_recognition).

REC_PROB (FP32 [1, T, classes]) -> TEXT (BYTES [1]) and SCORES (FP32 [1]):
best-path CTC decoding with the characters in ppocr_keys.txt beside this file
(``ocrlib.ctc_decode``).
"""

import os

import numpy as np
import ocrlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        self.characters = ocrlib.load_characters(os.path.join(here, "ppocr_keys.txt"))

    def execute(self, requests):
        responses = []
        for request in requests:
            prob = pb_utils.get_input_tensor_by_name(request, "REC_PROB").as_numpy()
            texts, scores = ocrlib.ctc_decode(prob.reshape((-1,) + prob.shape[-2:]),
                                              self.characters)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TEXT", np.array([texts[0].encode()], dtype=np.object_)),
                pb_utils.Tensor("SCORES", np.array(scores[:1], dtype=np.float32)),
            ]))
        return responses
