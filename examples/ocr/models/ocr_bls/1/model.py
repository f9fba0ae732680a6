import os

import numpy as np
import ocrlib

import triton_python_backend_utils as pb_utils


class ModelError(Exception):
    def __init__(self, error):
        super().__init__(error.message())
        self.error = error


def infer(model, input_name, output_name, x):
    """One BLS call to an ONNX model: numpy in, numpy out."""
    request = pb_utils.InferenceRequest(model_name=model,
                                        inputs=[pb_utils.Tensor(input_name, x)],
                                        requested_output_names=[output_name])
    response = request.exec()
    if response.has_error():
        raise ModelError(response.error())
    return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        self.characters = ocrlib.load_characters(os.path.join(here, "ppocr_keys.txt"))

    def run(self, data):
        img = ocrlib.decode_image(data)
        x, shape = ocrlib.det_preprocess(img)
        boxes = ocrlib.db_boxes(infer("ocr_det", "x", "sigmoid_0.tmp_0", x), shape)
        crops = ocrlib.crop_boxes(img, boxes) or [ocrlib.blank_crop()]
        cls_prob = infer("ocr_cls", "x", "save_infer_model/scale_0.tmp_1",
                         ocrlib.cls_preprocess(crops))
        resized, widths = ocrlib.rec_resize(crops)
        ocrlib.apply_cls(resized, widths, cls_prob)
        prob = infer("ocr_rec", "x", "softmax_11.tmp_0", ocrlib.rec_preprocess(resized, widths))
        texts, scores = ocrlib.ctc_decode(prob, self.characters)
        return ocrlib.select(texts, scores, boxes)

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                texts, scores, boxes = self.run(data)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            except ModelError as exc:
                responses.append(pb_utils.InferenceResponse(error=exc.error))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TEXT", np.array([t.encode() for t in texts], dtype=np.object_)),
                pb_utils.Tensor("SCORES", np.array(scores, dtype=np.float32)),
                pb_utils.Tensor("BOXES", boxes),
            ]))
        return responses
