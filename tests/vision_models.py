"""The vision examples' models and test pictures, shared by test_vision.py and test_gateway.py.

The shapes network is trained once (two or three minutes) into pytest's cache
folder (``.pytest_cache/d/naiad-vision``) and reused by later runs while its
training settings stay the same; the PP-OCR models come from
rapidocr-onnxruntime. Training and ``naiad import`` run in a child process: in
the test process they would leave torch's threads and heap, and the importer's
logging set-up, to the tests that run after them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, example_script

VISION = ROOT / "examples" / "vision"
GATEWAY = ROOT / "examples" / "gateway"

pictures = example_script("vision", "pictures")

SCENE, SCENE_SIZE = pictures.SCENE, pictures.SCENE_SIZE
png, scene, text_image, page = pictures.png, pictures.scene, pictures.text_line, pictures.page


def _setup(call: str):
    """``setup_models.<call>`` in a child process; what it returns (JSON)."""
    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(VISION)!r})\n"
            "import setup_models\n"
            f"print('RESULT=' + json.dumps(setup_models.{call}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-4000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("RESULT=")]
    return json.loads(line[len("RESULT="):])


def models_folder(config) -> str:
    """The model files (shapes network trained once, PP-OCR copied), cached across runs."""
    folder = str(config.cache.mkdir("naiad-vision"))
    _setup(f"prepare_models({folder!r}, with_shapes=True, log=lambda _m: None) and None")
    return folder


def build_repository(config, repo, tasks=None) -> list[str]:
    folder = models_folder(config)
    return _setup(f"build({str(repo)!r}, {folder!r}, {tasks!r}, log=lambda _m: None)")


def iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_match(box, boxes) -> tuple[int, float]:
    scores = [iou(box, b) for b in boxes]
    if not scores:
        return -1, 0.0
    i = int(np.argmax(scores))
    return i, scores[i]


def angle_error(a: float, b: float) -> float:
    """Difference of two box angles, modulo pi (a box turned by pi is the same box)."""
    d = (a - b) % math.pi
    return min(d, math.pi - d)


@pytest.fixture(scope="module")
def vision_models(request) -> str:
    return models_folder(request.config)
