"""The vision examples' models and test pictures, shared by test_vision.py and test_gateway.py.

The shapes network is trained once (a minute or two) into pytest's cache
folder (``.pytest_cache/d/naiad-vision``) and reused by later runs while its
training settings stay the same; the PP-OCR models come from
rapidocr-onnxruntime.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import ROOT, example_script

VISION = ROOT / "examples" / "vision"
GATEWAY = ROOT / "examples" / "gateway"

pictures = example_script("vision", "pictures")
setup_models = example_script("vision", "setup_models")

SCENE, SCENE_SIZE = pictures.SCENE, pictures.SCENE_SIZE
png, scene, text_image, page = pictures.png, pictures.scene, pictures.text_line, pictures.page


def models_folder(config) -> str:
    """The model files (shapes network trained once, PP-OCR copied), cached across runs."""
    folder = config.cache.mkdir("naiad-vision")
    setup_models.prepare_models(str(folder), with_shapes=True, log=lambda _m: None)
    return str(folder)


def build_repository(config, repo, tasks=None) -> list[str]:
    return setup_models.build(str(repo), models_folder(config), tasks, log=lambda _m: None)


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
