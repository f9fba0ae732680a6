import os

import numpy as np
import ocrlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        self.characters = ocrlib.load_characters(os.path.join(here, "ppocr_keys.txt"))

    def execute(self, requests):
        responses = []
        for request in requests:
            prob = pb_utils.get_input_tensor_by_name(request, "REC_PROB").as_numpy()
            boxes = pb_utils.get_input_tensor_by_name(request, "BOXES").as_numpy()
            texts, scores = ocrlib.ctc_decode(prob, self.characters)
            texts, scores, boxes = ocrlib.select(texts, scores, boxes)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TEXT", np.array([t.encode() for t in texts], dtype=np.object_)),
                pb_utils.Tensor("SCORES", np.array(scores, dtype=np.float32)),
                pb_utils.Tensor("BOXES_OUT", boxes),
            ]))
        return responses
