"""Build the vision model repository: one pipeline per task, each made by ``naiad import --task``.

    pip install -e '.[vision]'
    python examples/vision/setup_models.py            # -> examples/vision/model_repository/

The networks:

* PP-OCR's, from the ``rapidocr-onnxruntime`` package (nothing downloaded):
  its text direction classifier (classification: "0" or "180" degrees), its
  DB text detector (text detection), its CRNN recogniser (text
  recognition), and all three together (OCR);
* the shapes network (``shapes.py``), trained here for a minute or two on
  rendered rectangles, ellipses and triangles and exported once per task:
  detection (ONNX), instance segmentation (ONNX), semantic segmentation
  (ONNX), keypoints (TorchScript, for naiad's pytorch backend) and oriented
  detection (OpenVINO IR). The trained files are kept in ``--cache`` (default
  ``examples/vision/.models``) and reused while the training settings stay.

``COMMANDS`` lists the ``naiad import`` command line of every pipeline; the
README shows them. The repository is generated, not committed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import shapes  # noqa: E402

PPOCR = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
}

#: the pipelines: (task, ensemble name, naiad import arguments after the model file)
#: {models} is the folder of the model files, {repo} the repository
COMMANDS = [
    ("classification", "text_direction",
     "{models}/ppocr_cls.onnx --task classification --labels {models}/directions.txt "
     "--max-batch-size 8 --task-option size=48x192 --task-option mean=0.5,0.5,0.5 "
     "--task-option std=0.5,0.5,0.5 --task-option topk=2"),
    ("detection", "shapes_detection",
     "{models}/shapes_det.onnx --task detection --labels {models}/labels.txt "
     "--max-batch-size 8"),
    ("instance_segmentation", "shapes_instances",
     "{models}/shapes_seg.onnx --task instance_segmentation --labels {models}/labels.txt "
     "--max-batch-size 8"),
    ("segmentation", "shapes_semantic",
     "{models}/shapes_semseg.onnx --task segmentation --labels {models}/classes.txt "
     "--max-batch-size 8 --task-option mean=0 --task-option std=1 "
     "--task-option resize=letterbox"),
    ("keypoints", "shapes_keypoints",
     "{models}/shapes_pose.pt --task keypoints --labels {models}/triangle.txt "
     "--max-batch-size 0 --input images:FP32:1,3,{size},{size} "
     "--output output0:FP32:1,{cells},14 --task-option names={models}/keypoints.txt"),
    ("oriented_detection", "shapes_oriented",
     "{models}/shapes_obb.xml --task oriented_detection --labels {models}/labels.txt "
     "--max-batch-size 8"),
    ("text_detection", "text_detection", "{models}/ppocr_det.onnx --task text_detection"),
    ("text_recognition", "text_recognition", "{models}/ppocr_rec.onnx --task text_recognition"),
    ("ocr", "ocr",
     "{models}/ppocr_det.onnx --task ocr --task-model rec={models}/ppocr_rec.onnx "
     "--task-model cls={models}/ppocr_cls.onnx"),
]


def command_lines(models: str, repo: str) -> list[tuple[str, str, list[str]]]:
    """Each pipeline's ``naiad import`` arguments."""
    values = {"models": models, "size": shapes.SIZE, "cells": shapes.GRID * shapes.GRID}
    out = []
    for task, name, text in COMMANDS:
        args = text.format(**values).split()
        out.append((task, name, [args[0], "-r", repo, "-n", name, "--force", *args[1:]]))
    return out


def ppocr_folder() -> str:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rapidocr-onnxruntime is not installed: pip install -e '.[vision]'")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def prepare_models(models: str, with_shapes: bool = True, log=print) -> str:
    """The model files the commands read, in ``models``: trained once, then reused."""
    os.makedirs(models, exist_ok=True)
    if with_shapes:
        shapes.build(models, log=log)
    source = ppocr_folder()
    for role, filename in PPOCR.items():
        target = os.path.join(models, f"ppocr_{role}.onnx")
        if not os.path.isfile(target):
            shutil.copyfile(os.path.join(source, filename), target)
    files = {"directions.txt": ["0", "180"], "classes.txt": ["background", *shapes.CLASSES],
             "triangle.txt": ["triangle"]}
    for name, lines in files.items():
        with open(os.path.join(models, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return models


def build(repo: str, models: str, tasks: list[str] | None = None, log=print) -> list[str]:
    """Write the pipelines (all, or those of ``tasks``) into ``repo``; their names."""
    from naiad.tools.importer import main as naiad_import

    chosen = [(task, name, args) for task, name, args in command_lines(models, repo)
              if not tasks or task in tasks or name in tasks]
    prepare_models(models, any("shapes" in args[0] for _, _, args in chosen), log=log)
    os.makedirs(repo, exist_ok=True)
    names = []
    for task, name, args in chosen:
        t0 = time.monotonic()
        code = naiad_import(args)
        if code:
            raise SystemExit(f"naiad import {' '.join(args)} failed ({code})")
        log(f"{name}: naiad import --task {task} ({time.monotonic() - t0:.1f} s)")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(HERE, "model_repository"),
                        help="the model repository to write (pipelines in it are replaced)")
    parser.add_argument("--cache", default=os.path.join(HERE, ".models"),
                        help="where the model files are kept (the shapes network is trained "
                             "there once)")
    parser.add_argument("--task", action="append", default=[],
                        help="only this task's pipeline (repeatable; default: all)")
    parser.add_argument("--print-commands", action="store_true",
                        help="print the naiad import command lines and exit")
    args = parser.parse_args(argv)
    if args.print_commands:
        for task, _name, cmd in command_lines(args.cache, args.output):
            print(f"# {task}\nnaiad import {' '.join(cmd)}")
        return 0
    names = build(args.output, args.cache, args.task)
    print(f"{len(names)} pipelines written to {args.output}: {', '.join(names)}")
    naiad = os.path.join(os.path.dirname(sys.executable), "naiad")
    print(f"serve them with: {naiad} --model-repository={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
