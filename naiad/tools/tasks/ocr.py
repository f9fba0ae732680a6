"""``--task ocr``: image file in, text lines with scores and boxes out (PP-OCR).

    naiad import det.onnx -r models --task ocr --task-model rec=rec.onnx \\
        --task-model cls=cls.onnx [--labels keys.txt]

The PP-OCR pipeline of ``examples/ocr`` (one copy of its processing,
``templates/ocr/ocrlib.py``, serves both): the imported file is the text
detection network (``<name>_model``), ``rec`` the recogniser (``<name>_rec``)
and ``cls`` the angle classifier (``<name>_cls``). The character
dictionary is ``--labels`` or the recogniser's own ONNX metadata
(``character``, as PP-OCR exports carry it).

    IMAGE ─▶ _det_pre ─▶ _model ─▶ _det_post ─▶ _cls ─▶ _rec_pre ─▶ _rec ─▶ _rec_post ─▶ TEXT,
                                                                              SCORES, BOXES
Needs OpenCV (``opencv-python``, which rapidocr-onnxruntime brings) where the
python models run. Every network is served with max_batch_size 0: the crops
of one image form the batch dimension.
"""

from __future__ import annotations

import os
import shutil

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks.base import TaskContext, TaskError

TEMPLATES = os.path.join(tasks.TEMPLATES, "ocr")
PYTHON_MODELS = ("ocr_det_pre", "ocr_det_post", "ocr_rec_pre", "ocr_rec_post")
LIB = os.path.join(TEMPLATES, "ocrlib.py")


def read_dictionary(rec_model: str) -> str:
    """A PP-OCR recogniser's characters, one per line, from its ONNX metadata."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(rec_model, options, providers=["CPUExecutionProvider"])
    keys = session.get_modelmeta().custom_metadata_map.get("character")
    if keys is None:
        raise TaskError(f"{rec_model} has no 'character' metadata: give the dictionary with "
                        "--labels")
    return keys if keys.endswith("\n") else keys + "\n"


def copy_python_model(template: str, target_dir: str, name: str, replace: dict | None = None
                      ) -> None:
    """One of the OCR python models (config, model.py, ocrlib.py) under a new name."""
    shutil.copytree(os.path.join(TEMPLATES, template), target_dir)
    path = os.path.join(target_dir, "config.pbtxt")
    with open(path, encoding="utf-8") as f:
        text = f.read().replace(f'name: "{template}"', f'name: "{name}"')
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    shutil.copyfile(LIB, os.path.join(target_dir, "1", "ocrlib.py"))


class OCR(tasks.Task):
    name = "ocr"
    description = "image -> text lines, scores, boxes (PP-OCR det/cls/rec networks)"
    max_batch_size = 0
    options = {}

    def model_names(self, name: str) -> list[str]:
        return [name, f"{name}_cls", f"{name}_rec"] + \
            [f"{name}_{m[4:]}" for m in PYTHON_MODELS]

    def build(self, ctx: TaskContext) -> list[str]:
        unknown = sorted(set(ctx.models) - {"rec", "cls"})
        if unknown or "rec" not in ctx.models or "cls" not in ctx.models:
            raise TaskError("give the recogniser and the angle classifier: --task-model "
                            "rec=FILE --task-model cls=FILE"
                            + (f"; unknown roles: {', '.join(unknown)}" if unknown else ""))
        n = ctx.name
        nets = {}
        for role in ("cls", "rec"):
            nets[role] = ctx.import_network(ctx.models[role], f"{n}_{role}", 0)
        det = ctx.model_config
        rec = nets["rec"]
        for label, config in (("detection", det), ("rec", rec), ("cls", nets["cls"])):
            if len(config.input) != 1 or len(config.output) != 1:
                raise TaskError(f"the {label} network must have one input and one output")
        classes = rec.output[0].dims[-1]
        if ctx.labels_file:
            with open(ctx.labels_file, encoding="utf-8") as f:
                keys = f.read()
        else:
            keys = read_dictionary(ctx.models["rec"])
        names = {m: f"{n}_{m[4:]}" for m in PYTHON_MODELS}
        for template, name in names.items():
            copy_python_model(template, os.path.join(ctx.repository, name), name,
                              {"6625 ] }": f"{classes} ] }}"} if template == "ocr_rec_post"
                              else None)
        with open(os.path.join(ctx.repository, names["ocr_rec_post"], "1", "ppocr_keys.txt"),
                  "w", encoding="utf-8") as f:
            f.write(keys)
        d_in, d_out = det.input[0].name, det.output[0].name
        r_in, r_out = rec.input[0].name, rec.output[0].name
        c = nets["cls"]
        steps = [
            (names["ocr_det_pre"], {"IMAGE": "IMAGE"},
             {"DET_X": "det_x", "ORIG": "orig", "SHAPE": "shape"}),
            (ctx.model_name, {d_in: "det_x"}, {d_out: "det_prob"}),
            (names["ocr_det_post"], {"PROB": "det_prob", "ORIG": "orig", "SHAPE": "shape"},
             {"BOXES": "boxes", "CLS_X": "cls_x", "REC_CROPS": "rec_crops",
              "REC_WIDTHS": "rec_widths"}),
            (f"{n}_cls", {c.input[0].name: "cls_x"}, {c.output[0].name: "cls_prob"}),
            (names["ocr_rec_pre"], {"CLS_PROB": "cls_prob", "REC_CROPS": "rec_crops",
                                    "REC_WIDTHS": "rec_widths"}, {"REC_X": "rec_x"}),
            (f"{n}_rec", {r_in: "rec_x"}, {r_out: "rec_prob"}),
            (names["ocr_rec_post"], {"REC_PROB": "rec_prob", "BOXES": "boxes"},
             {"TEXT": "TEXT", "SCORES": "SCORES", "BOXES_OUT": "BOXES"}),
        ]
        tasks.ensemble(
            ctx.repository, n, [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor("TEXT", "TYPE_STRING", [-1], output=True),
             tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
             tasks.tensor("BOXES", "TYPE_FP32", [-1, 4, 2], output=True)],
            steps, comment=f"PP-OCR with {ctx.model_name}: IMAGE (an image file's bytes) -> "
                           "TEXT lines top to bottom, SCORES, BOXES (4 corners, image pixels).")
        return tasks.finish(ctx, [n, *(f"{n}_{r}" for r in nets), *names.values()])


TASK = OCR()
