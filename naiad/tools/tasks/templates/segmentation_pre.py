"""Segmentation pre-processing (naiad import --task segmentation).

IMAGE (encoded image bytes, UINT8 [-1]) -> the network's input, resized to
its size (bilinear), scaled and normalized, in its layout and data type,
batch of one; and IMAGE_SIZE (INT64 [2]: height, width) for the mask.
"""

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        s = imagelib.settings(args)
        self.output = s["output"]
        self.layout = s["layout"]
        self.height, self.width = int(s["height"]), int(s["width"])
        self.channels = int(s["channels"])
        self.dtype = pb_utils.triton_string_to_numpy(s["data_type"])
        self.scale = float(s["scale"])
        self.mean, self.std = imagelib.floats(s["mean"]), imagelib.floats(s["std"])

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                img = imagelib.decode(data, self.channels)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            size = np.array(img.shape[:2], dtype=np.int64)
            img = imagelib.resize(img, self.height, self.width)
            x = imagelib.to_tensor(img, self.layout, self.dtype, self.scale, self.mean,
                                   self.std)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor(self.output, x), pb_utils.Tensor("IMAGE_SIZE", size)]))
        return responses
