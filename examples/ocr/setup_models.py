"""Build the OCR model repository from the models rapidocr-onnxruntime ships.

    pip install rapidocr-onnxruntime        # (in naiad's "test" extra)
    python examples/ocr/setup_models.py     # -> examples/ocr/model_repository/

Copies the PP-OCRv4 detection, the angle classification and the PP-OCRv4
recognition ONNX models out of the installed package, writes the
recognition model's character dictionary (stored in its ONNX metadata) next
to the python models that decode with it, and copies the configs and python
models: the ensemble, the BLS model and the ONNX configs from
``examples/ocr/models/``, the four pre/post-processing models and ``ocrlib.py``
from ``naiad/tools/tasks/templates/ocr/`` (the same files ``naiad import
--task ocr`` uses). Nothing is downloaded; the result is not committed (it is
generated, and 16 MB).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys

from naiad.tools.tasks.ocr import LIB, PYTHON_MODELS, copy_python_model, read_dictionary

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "models")

ONNX_MODELS = {
    "ocr_det": "ch_PP-OCRv4_det_infer.onnx",
    "ocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ocr_rec": "ch_PP-OCRv4_rec_infer.onnx",
}
# python models that read the recognition dictionary
NEEDS_KEYS = ("ocr_rec_post", "ocr_bls")


def rapidocr_models_dir() -> str:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rapidocr-onnxruntime is not installed: pip install rapidocr-onnxruntime")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models")
    if not os.path.isdir(path):
        raise SystemExit(f"no models folder in the rapidocr-onnxruntime package ({path})")
    return path


def build(output: str) -> str:
    source = rapidocr_models_dir()
    if os.path.isdir(output):
        shutil.rmtree(output)
    os.makedirs(output)
    for name in sorted(os.listdir(TEMPLATES)):
        shutil.copytree(os.path.join(TEMPLATES, name), os.path.join(output, name))
    for name in PYTHON_MODELS:
        copy_python_model(name, os.path.join(output, name), name)
    for name, filename in ONNX_MODELS.items():
        vdir = os.path.join(output, name, "1")
        os.makedirs(vdir, exist_ok=True)
        shutil.copyfile(os.path.join(source, filename), os.path.join(vdir, "model.onnx"))
    keys = read_dictionary(os.path.join(source, ONNX_MODELS["ocr_rec"]))
    for name in sorted(os.listdir(output)):
        vdir = os.path.join(output, name, "1")
        if os.path.isfile(os.path.join(vdir, "model.py")):
            shutil.copyfile(LIB, os.path.join(vdir, "ocrlib.py"))
        if name in NEEDS_KEYS:
            with open(os.path.join(vdir, "ppocr_keys.txt"), "w", encoding="utf-8") as f:
                f.write(keys)
        os.makedirs(vdir, exist_ok=True)  # ensembles need a version folder too
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(HERE, "model_repository"),
                        help="where to write the model repository (replaced if it exists)")
    args = parser.parse_args(argv)
    path = build(args.output)
    print(f"OCR model repository written to {path}")
    naiad = os.path.join(os.path.dirname(sys.executable), "naiad")
    print(f"serve it with: {naiad} --model-repository={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
