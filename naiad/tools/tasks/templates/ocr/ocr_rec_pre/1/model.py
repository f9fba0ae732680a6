import ocrlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            cls_prob = pb_utils.get_input_tensor_by_name(request, "CLS_PROB").as_numpy()
            # the ensemble's tensors are shared: work on a copy before turning crops
            crops = pb_utils.get_input_tensor_by_name(request, "REC_CROPS").as_numpy().copy()
            widths = pb_utils.get_input_tensor_by_name(request, "REC_WIDTHS").as_numpy()
            ocrlib.apply_cls(crops, widths, cls_prob)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("REC_X", ocrlib.rec_preprocess(crops, widths))]))
        return responses
