"""Segmentation post-processing (naiad import --task segmentation).

The network's per-pixel output for one image (LOGITS: [1, C, H, W] or
[C, H, W] class scores, argmax taken; C = 1: a probability, thresholded at
``threshold``; or [1, H, W] class ids when ``class_ids=true``) -> MASK
(INT32 [height, width] class ids at the original image's size, nearest
neighbour; with ``resize=letterbox`` the padding is cut off first), CLASS_IDS (INT64 [K], the classes present) and LABELS (BYTES
[K], labels.txt beside this file).
"""

import os

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        s = imagelib.settings(args)
        self.threshold = float(s["threshold"])
        self.class_ids = s["class_ids"] == "true"
        self.layout = s["layout"]
        self.letterbox = s.get("resize") == "letterbox"
        here = os.path.dirname(os.path.abspath(__file__))
        self.labels = imagelib.read_labels(os.path.join(here, "labels.txt"))

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            h, w = (int(v) for v in
                    pb_utils.get_input_tensor_by_name(request, "IMAGE_SIZE").as_numpy())
            if self.class_ids:
                mask = x.reshape(x.shape[-2], x.shape[-1]).astype(np.int32)
            else:
                x = x.reshape(x.shape[-3:]) if x.ndim >= 3 else x[None]
                if self.layout == "NHWC":
                    x = x.transpose(2, 0, 1)
                if x.shape[0] == 1:
                    mask = (x[0] >= self.threshold).astype(np.int32)
                else:
                    mask = x.argmax(axis=0).astype(np.int32)
            if self.letterbox:  # the picture's part of the letterboxed input
                mh, mw = mask.shape
                scale = min(mh / h, mw / w)
                nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
                top, left = (mh - nh) // 2, (mw - nw) // 2
                mask = mask[top:top + nh, left:left + nw]
            # nearest neighbour back to the image's size
            rows = (np.arange(h) * mask.shape[0] // h).clip(0, mask.shape[0] - 1)
            cols = (np.arange(w) * mask.shape[1] // w).clip(0, mask.shape[1] - 1)
            mask = np.ascontiguousarray(mask[rows][:, cols], dtype=np.int32)
            ids = np.unique(mask).astype(np.int64)
            labels = [(self.labels[i] if 0 <= i < len(self.labels) and self.labels[i]
                       else str(i)).encode() for i in ids]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("MASK", mask),
                pb_utils.Tensor("CLASS_IDS", ids),
                pb_utils.Tensor("LABELS", np.array(labels, dtype=np.object_).reshape(-1)),
            ]))
        return responses
