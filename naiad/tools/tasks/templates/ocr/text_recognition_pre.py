"""Text recognition pre-processing (naiad import --task text_recognition).

IMAGE (a text line image file's bytes, UINT8 [-1]) -> REC_X (FP32 [1, 3, 48,
W]): resized to height 48 keeping the aspect ratio (at least 320 wide,
padded), normalised to [-1, 1] (``ocrlib.rec_resize`` and ``rec_preprocess``).
"""

import ocrlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                img = ocrlib.decode_image(data)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            resized, widths = ocrlib.rec_resize([img])
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("REC_X", ocrlib.rec_preprocess(resized, widths))]))
        return responses
