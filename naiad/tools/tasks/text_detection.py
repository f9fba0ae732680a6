"""``--task text_detection``: image file in, text boxes (four corners) and scores out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ BOXES, SCORES, DETS
             (ocr_det_pre)    └─ ORIG, SHAPE ──────────────┘  (DB decoding)

A DB text detector (PP-OCR's: one image input, one [1, 1, H, W] text
probability map). The pre-processing is the OCR task's (``templates/ocr``:
longer side at most 960, multiples of 32, normalised to [-1, 1]); the
post-processing is its DB decoding (``ocrlib.db_boxes_scores``). Needs
OpenCV where the python models run.
"""

from __future__ import annotations

import os

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks.base import TaskContext, TaskError
from naiad.tools.tasks.ocr import LIB, copy_python_model


class TextDetection(tasks.Task):
    name = "text_detection"
    description = "image -> text boxes (4 corners) and scores (a DB detector, e.g. PP-OCR's)"
    max_batch_size = 0
    options = {}

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        if len(net.input) != 1 or len(net.output) != 1:
            raise TaskError("the text detection network must have one input and one output")
        pre, post = f"{ctx.name}_preprocess", f"{ctx.name}_postprocess"
        copy_python_model("ocr_det_pre", os.path.join(ctx.repository, pre), pre)
        outs = [tasks.tensor("BOXES", "TYPE_FP32", [-1, 4, 2], output=True),
                tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
                tasks.tensor("DETS", "TYPE_FP32", [-1, 9], output=True)]
        tasks.python_model(
            ctx.repository, post, "ocr/text_detection_post.py",
            [tasks.tensor("PROB", net.output[0].data_type, [-1, 1, -1, -1]),
             tasks.tensor("SHAPE", "TYPE_FP32", [4])],
            outs, {}, {"ocrlib.py": LIB},
            comment=f"DB decoding of {ctx.model_name}'s text probability map.")
        tasks.ensemble(
            ctx.repository, ctx.name, [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])], outs,
            [(pre, {"IMAGE": "IMAGE"}, {"DET_X": "det_x", "SHAPE": "shape"}),
             (ctx.model_name, {net.input[0].name: "det_x"}, {net.output[0].name: "prob"}),
             (post, {"PROB": "prob", "SHAPE": "shape"}, {o.name: o.name for o in outs})],
            comment=f"Text detection with {ctx.model_name}: IMAGE (an image file's bytes) -> "
                    "BOXES ([N, 4, 2] corners in image pixels, reading order), SCORES, DETS "
                    "([N, 9]: the 8 corner coordinates and the score, MMOCR's layout).")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = TextDetection()
