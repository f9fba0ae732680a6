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
            x, shape = ocrlib.det_preprocess(img)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("DET_X", x),
                pb_utils.Tensor("ORIG", img),
                pb_utils.Tensor("SHAPE", shape),
            ]))
        return responses
