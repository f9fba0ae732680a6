"""Text detection post-processing (naiad import --task text_detection).

PROB (the DB text probability map, [1, 1, H, W]) and SHAPE (the original and
resized sizes, from ocr_det_pre) -> BOXES (FP32 [N, 4, 2]: top-left,
top-right, bottom-right, bottom-left in image pixels, reading order), SCORES
(FP32 [N], the mean probability inside each box) and DETS (FP32 [N, 9]: the 8
coordinates and the score). The decoding is ``ocrlib.db_boxes_scores``.
"""

import numpy as np
import ocrlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            prob = pb_utils.get_input_tensor_by_name(request, "PROB").as_numpy()
            shape = pb_utils.get_input_tensor_by_name(request, "SHAPE").as_numpy()
            boxes, scores = ocrlib.db_boxes_scores(prob, shape)
            dets = np.concatenate([boxes.reshape(-1, 8), scores[:, None]], axis=1)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", boxes),
                pb_utils.Tensor("SCORES", scores),
                pb_utils.Tensor("DETS", dets.astype(np.float32)),
            ]))
        return responses
