"""Classification pre-processing (naiad import --task classification).

IMAGE (encoded image bytes, UINT8 [-1]) -> the network's input: resized to
its size (bilinear), scaled and normalized ((x * scale - mean) / std per
channel), in its layout and data type, batch of one.
"""

import imagelib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.pre = imagelib.Preprocess(args, pb_utils.triton_string_to_numpy)

    def execute(self, requests):
        pre = self.pre

        def handle(img):
            img = imagelib.resize(img, pre.height, pre.width)
            return [pb_utils.Tensor(pre.output, pre.tensor(img))]

        return pre.run(requests, pb_utils, handle)
