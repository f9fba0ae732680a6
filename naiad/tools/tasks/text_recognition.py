"""``--task text_recognition``: an image of one line of text in, the text and its score out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ TEXT, SCORES
             (height 48, [-1, 1])                 (CTC decoding)

A CTC recogniser (PP-OCR's: [1, 3, 48, W] in, [1, T, classes] out). The
processing is the OCR task's (``templates/ocr/ocrlib.py``); the characters
come from ``--labels`` or the recogniser's own ONNX metadata (``character``).
Needs OpenCV where the python models run.
"""

from __future__ import annotations

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks.base import TaskContext, TaskError
from naiad.tools.tasks.ocr import LIB, read_dictionary


class TextRecognition(tasks.Task):
    name = "text_recognition"
    description = "text line image -> text and score (a CTC recogniser, e.g. PP-OCR's)"
    max_batch_size = 0
    options = {}

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        if len(net.input) != 1 or len(net.output) != 1:
            raise TaskError("the text recognition network must have one input and one output")
        pre, post = f"{ctx.name}_preprocess", f"{ctx.name}_postprocess"
        if ctx.labels_file:
            with open(ctx.labels_file, encoding="utf-8") as f:
                keys = f.read()
        else:
            keys = read_dictionary(ctx.source_file)
        tasks.python_model(
            ctx.repository, pre, "ocr/text_recognition_pre.py",
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor("REC_X", "TYPE_FP32", [1, 3, 48, -1], output=True)], {},
            {"ocrlib.py": LIB},
            comment=f"Decodes a text line image for {ctx.model_name} (height 48).")
        keys_path = f"{ctx.repository}/{post}.keys.tmp"
        with open(keys_path, "w", encoding="utf-8") as f:
            f.write(keys if keys.endswith("\n") else keys + "\n")
        try:
            tasks.python_model(
                ctx.repository, post, "ocr/text_recognition_post.py",
                [tasks.tensor("REC_PROB", net.output[0].data_type, [1, -1, -1])],
                [tasks.tensor("TEXT", "TYPE_STRING", [1], output=True),
                 tasks.tensor("SCORES", "TYPE_FP32", [1], output=True)], {},
                {"ocrlib.py": LIB, "ppocr_keys.txt": keys_path},
                comment=f"CTC decoding of {ctx.model_name}'s output.")
        finally:
            import os

            os.remove(keys_path)
        tasks.ensemble(
            ctx.repository, ctx.name, [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor("TEXT", "TYPE_STRING", [1], output=True),
             tasks.tensor("SCORES", "TYPE_FP32", [1], output=True)],
            [(pre, {"IMAGE": "IMAGE"}, {"REC_X": "rec_x"}),
             (ctx.model_name, {net.input[0].name: "rec_x"}, {net.output[0].name: "rec_prob"}),
             (post, {"REC_PROB": "rec_prob"}, {"TEXT": "TEXT", "SCORES": "SCORES"})],
            comment=f"Text recognition with {ctx.model_name}: IMAGE (a text line image file's "
                    "bytes) -> TEXT, SCORES (one each).")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = TextRecognition()
