"""Detection pre-processing (naiad import --task detection).

IMAGE (encoded image bytes, UINT8 [-1]) -> the network's input, letterboxed
(aspect kept, padded with grey 114; or stretched with resize=stretch),
scaled and normalized, in its layout and data type, batch of one; and
GEOMETRY (FP32 [6]: scale_x, scale_y, pad_x, pad_y, image width, image
height) so the post-processing can map boxes back onto the image.
"""

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.pre = imagelib.Preprocess(args, pb_utils.triton_string_to_numpy)
        self.stretch = self.pre.settings["resize"] == "stretch"

    def execute(self, requests):
        pre = self.pre

        def handle(img):
            h, w = img.shape[:2]
            if self.stretch:
                boxed = imagelib.resize(img, pre.height, pre.width)
                geometry = [pre.width / w, pre.height / h, 0.0, 0.0, w, h]
            else:
                boxed, scale, px, py = imagelib.letterbox(img, pre.height, pre.width)
                geometry = [scale, scale, px, py, w, h]
            return [pb_utils.Tensor(pre.output, pre.tensor(boxed)),
                    pb_utils.Tensor("GEOMETRY", np.array(geometry, dtype=np.float32))]

        return pre.run(requests, pb_utils, handle)
