import ocrlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            prob = pb_utils.get_input_tensor_by_name(request, "PROB").as_numpy()
            img = pb_utils.get_input_tensor_by_name(request, "ORIG").as_numpy()
            shape = pb_utils.get_input_tensor_by_name(request, "SHAPE").as_numpy()
            boxes = ocrlib.db_boxes(prob, shape)
            # the models downstream need at least one crop: a blank one when nothing was found
            crops = ocrlib.crop_boxes(img, boxes) or [ocrlib.blank_crop()]
            resized, widths = ocrlib.rec_resize(crops)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", boxes),
                pb_utils.Tensor("CLS_X", ocrlib.cls_preprocess(crops)),
                pb_utils.Tensor("REC_CROPS", resized),
                pb_utils.Tensor("REC_WIDTHS", widths),
            ]))
        return responses
