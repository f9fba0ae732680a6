"""Classification post-processing (naiad import --task classification).

The network's scores for one image (SCORES_IN, [1, C] or [C]) -> the top k
classes: CLASS_IDS (INT64 [k]), SCORES (FP32 [k], probabilities: a softmax is
applied unless the scores already are probabilities, or as softmax= says)
and LABELS (BYTES [k], from labels.txt beside this file; the class index
when there is no label); and PROBS (FP32 [C], every class's probability).
"""

import os

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        s = imagelib.settings(args)
        self.topk = int(s["topk"])
        self.softmax = s["softmax"]
        here = os.path.dirname(os.path.abspath(__file__))
        self.labels = imagelib.read_labels(os.path.join(here, "labels.txt"))

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "SCORES_IN").as_numpy()
            x = x.astype(np.float64).reshape(-1)
            probs = x
            is_prob = x.size and x.min() >= 0 and abs(x.sum() - 1.0) < 1e-3
            if self.softmax == "true" or (self.softmax == "auto" and not is_prob):
                e = np.exp(x - x.max())
                probs = e / e.sum()
            k = min(self.topk, probs.size)
            ids = np.argsort(-probs, kind="stable")[:k]
            labels = [(self.labels[i] if i < len(self.labels) and self.labels[i] else str(i))
                      .encode() for i in ids]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("CLASS_IDS", ids.astype(np.int64)),
                pb_utils.Tensor("SCORES", probs[ids].astype(np.float32)),
                pb_utils.Tensor("LABELS", np.array(labels, dtype=np.object_)),
                pb_utils.Tensor("PROBS", probs.astype(np.float32)),
            ]))
        return responses
