"""Segmentation pre-processing (naiad import --task segmentation).

IMAGE (encoded image bytes, UINT8 [-1]) -> the network's input, resized to
its size (bilinear; stretched, or letterboxed with ``resize=letterbox``), scaled
and normalized, in its layout and data type,
batch of one; and IMAGE_SIZE (INT64 [2]: height, width) for the mask.
"""

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.pre = imagelib.Preprocess(args, pb_utils.triton_string_to_numpy)
        self.letterbox = self.pre.settings.get("resize") == "letterbox"

    def execute(self, requests):
        pre, letterbox = self.pre, self.letterbox

        def handle(img):
            size = np.array(img.shape[:2], dtype=np.int64)
            if letterbox:
                fitted = imagelib.letterbox(img, pre.height, pre.width)[0]
            else:
                fitted = imagelib.resize(img, pre.height, pre.width)
            x = pre.tensor(fitted)
            return [pb_utils.Tensor(pre.output, x), pb_utils.Tensor("IMAGE_SIZE", size)]

        return pre.run(requests, pb_utils, handle)
