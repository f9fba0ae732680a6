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
        s = imagelib.settings(args)
        self.output = s["output"]
        self.layout = s["layout"]
        self.height, self.width = int(s["height"]), int(s["width"])
        self.channels = int(s["channels"])
        self.dtype = pb_utils.triton_string_to_numpy(s["data_type"])
        self.scale = float(s["scale"])
        self.mean, self.std = imagelib.floats(s["mean"]), imagelib.floats(s["std"])
        self.stretch = s["resize"] == "stretch"

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
            h, w = img.shape[:2]
            if self.stretch:
                boxed = imagelib.resize(img, self.height, self.width)
                geometry = [self.width / w, self.height / h, 0.0, 0.0, w, h]
            else:
                boxed, scale, px, py = imagelib.letterbox(img, self.height, self.width)
                geometry = [scale, scale, px, py, w, h]
            x = imagelib.to_tensor(boxed, self.layout, self.dtype, self.scale, self.mean,
                                   self.std)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor(self.output, x),
                pb_utils.Tensor("GEOMETRY", np.array(geometry, dtype=np.float32)),
            ]))
        return responses
