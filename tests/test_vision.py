"""The vision examples end to end: every task's pipeline, made by ``naiad import --task``,
served by a real naiad and queried with tritonclient (HTTP and gRPC).

Each test checks the served answer against the same pipeline run in this process
(``examples/vision/inprocess.py``: the same model.py files, the networks called
with onnxruntime / torch / OpenVINO directly) and against the picture: shapes
drawn at known places are found there, rendered words are read.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import NaiadProcess, example_script
from tests.vision_models import (
    SCENE,
    SCENE_SIZE,
    VISION,
    angle_error,
    best_match,
    build_repository,
    page,
    scene,
    text_image,
)

pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("torch")
pytest.importorskip("openvino")

# the first test here may train the shapes network (about 2-3 minutes on an idle 2-core
# machine, more on a busy one) before its own work: more than the suite's 300 s default
pytestmark = pytest.mark.timeout(900)

vision_client = example_script("vision", "client")
setup_models = example_script("vision", "setup_models")
Pipeline = example_script("vision", "inprocess").Pipeline

WORDS = "HELLO NAIAD"


@pytest.fixture(scope="module")
def vision(request, tmp_path_factory):
    repo = tmp_path_factory.mktemp("vision") / "model_repository"
    names = build_repository(request.config, repo)
    with NaiadProcess(repo, startup_timeout=180) as server:
        server.repo = str(repo)
        server.names = names
        yield server


_PIPELINES: dict = {}


def in_process(server, name: str, data: bytes) -> dict:
    key = (server.repo, name)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline(server.repo, name)
    return _PIPELINES[key]({"IMAGE": np.frombuffer(data, dtype=np.uint8)})


def served(server, name: str, data: bytes, protocol: str = "http") -> dict:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return vision_client.infer(name, data, url, protocol)


def assert_same(a: dict, b: dict, atol=1e-3):
    """The served answer equals the in-process one (same outputs, shapes, values)."""
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape, k
        if x.dtype == object:
            assert x.tolist() == y.tolist(), k
        elif x.dtype.kind in "iub":
            assert np.array_equal(x, y), k
        else:
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-3, err_msg=k)


def test_every_task_is_in_the_repository(vision):
    assert vision.names == [name for _, name, _ in setup_models.COMMANDS]
    client = httpclient.InferenceServerClient(vision.http_url)
    for name in vision.names:
        assert client.is_model_ready(name), name


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_detection_finds_each_drawn_shape_where_it_was_drawn(vision, protocol):
    data, drawn = scene()
    got = served(vision, "shapes_detection", data, protocol)
    assert_same(got, in_process(vision, "shapes_detection", data))
    assert len(got["BOXES"]) == len(SCENE)
    labels = [v.decode() for v in got["LABELS"]]
    for shape in drawn:
        i, overlap = best_match(shape["box"], got["BOXES"])
        assert overlap >= 0.5, (shape["label"], got["BOXES"], shape["box"])
        assert labels[i] == shape["label"]
        assert got["SCORES"][i] > 0.3
    np.testing.assert_allclose(got["DETS"][:, :4], got["BOXES"])
    np.testing.assert_allclose(got["DETS"][:, 4], got["SCORES"])


def test_instance_masks_cover_each_drawn_shape(vision):
    data, drawn = scene()
    got = served(vision, "shapes_instances", data, "grpc")
    reference = in_process(vision, "shapes_instances", data)
    assert_same({k: v for k, v in got.items() if k != "MASKS"},
                {k: v for k, v in reference.items() if k != "MASKS"})
    # the same masks, give or take pixels on a probability of exactly the threshold
    assert (got["MASKS"] != reference["MASKS"]).mean() < 1e-4
    assert got["MASKS"].shape == (len(SCENE), SCENE_SIZE[1], SCENE_SIZE[0])
    labels = [v.decode() for v in got["LABELS"]]
    for shape in drawn:
        i, overlap = best_match(shape["box"], got["BOXES"])
        assert overlap >= 0.5 and labels[i] == shape["label"]
        mask, truth = got["MASKS"][i].astype(bool), shape["mask"]
        mask_iou = (mask & truth).sum() / (mask | truth).sum()
        assert mask_iou >= 0.6, (shape["label"], mask_iou)


def test_semantic_segmentation_labels_the_pixels_of_each_shape(vision):
    data, drawn = scene()
    got = served(vision, "shapes_semantic", data)
    assert_same(got, in_process(vision, "shapes_semantic", data))
    mask = got["MASK"]
    assert mask.shape == (SCENE_SIZE[1], SCENE_SIZE[0])
    assert sorted(v.decode() for v in got["LABELS"]) == sorted(
        ["background"] + [s["label"] for s in drawn])
    background = np.ones_like(mask, dtype=bool)
    for shape in drawn:
        inside = shape["mask"]
        background &= ~inside
        assert (mask[inside] == shape["cls"] + 1).mean() >= 0.8, shape["label"]
    assert (mask[background] == 0).mean() >= 0.95


def test_keypoints_are_the_corners_of_the_drawn_triangle(vision):
    data, drawn = scene()
    got = served(vision, "shapes_keypoints", data, "grpc")
    assert_same(got, in_process(vision, "shapes_keypoints", data))
    assert [v.decode() for v in got["KEYPOINT_NAMES"]] == ["apex", "base_right", "base_left"]
    (triangle,) = [s for s in drawn if s["label"] == "triangle"]
    i, overlap = best_match(triangle["box"], got["BOXES"])
    assert overlap >= 0.5 and got["LABELS"][i] == b"triangle"
    assert len(got["BOXES"]) == 1  # only the triangle has keypoints
    points = got["KEYPOINTS"][i]
    assert points.shape == (3, 3)
    # each keypoint within a fifth of the triangle's length of its true corner
    error = np.hypot(*(points[:, :2] - triangle["keypoints"]).T)
    assert (error < 0.2 * triangle["w"]).all(), (points, triangle["keypoints"])


def test_oriented_boxes_have_the_drawn_shapes_centres_and_angles(vision):
    data, drawn = scene()
    got = served(vision, "shapes_oriented", data)
    assert_same(got, in_process(vision, "shapes_oriented", data))
    labels = [v.decode() for v in got["LABELS"]]
    assert sorted(labels) == sorted(s["label"] for s in drawn)
    for shape in drawn:
        i = labels.index(shape["label"])
        cx, cy, w, h, angle = got["BOXES"][i]
        assert math.hypot(cx - shape["cx"], cy - shape["cy"]) < 0.15 * shape["w"]
        assert abs(w - shape["w"]) < 0.3 * shape["w"] and abs(h - shape["h"]) < 0.35 * shape["h"]
        assert angle_error(angle, shape["theta"]) < math.radians(15), (shape, got["BOXES"][i])
        # the corners are those of the box
        corners = got["CORNERS"][i]
        assert np.allclose(corners.mean(axis=0), (cx, cy), atol=0.5)


@pytest.mark.parametrize("rotate, expected", [(False, "0"), (True, "180")])
def test_text_direction_classifier_tells_upright_from_upside_down(vision, rotate, expected):
    data = text_image(WORDS, rotate=rotate)
    got = served(vision, "text_direction", data)
    assert_same(got, in_process(vision, "text_direction", data))
    assert got["LABELS"][0].decode() == expected and got["SCORES"][0] > 0.9


def test_the_classification_extension_gives_top_k_with_labels(vision):
    data = np.frombuffer(text_image(WORDS, rotate=True), dtype=np.uint8)
    client = grpcclient.InferenceServerClient(vision.grpc_url)
    image = grpcclient.InferInput("IMAGE", [len(data)], "UINT8")
    image.set_data_from_numpy(data)
    result = client.infer("text_direction", [image],
                          outputs=[grpcclient.InferRequestedOutput("PROBS", class_count=2)])
    top = [v.decode().split(":") for v in result.as_numpy("PROBS")]
    assert [(idx, label) for _, idx, label in top] == [("1", "180"), ("0", "0")]
    assert float(top[0][0]) > 0.9


def test_text_recognition_reads_the_rendered_words(vision):
    data = text_image(WORDS)
    got = served(vision, "text_recognition", data, "grpc")
    assert_same(got, in_process(vision, "text_recognition", data))
    assert got["TEXT"][0].decode().strip() == WORDS and got["SCORES"][0] > 0.8


def test_text_detection_boxes_each_rendered_line(vision):
    data, drawn = page()
    got = served(vision, "text_detection", data)
    assert_same(got, in_process(vision, "text_detection", data))
    assert got["BOXES"].shape == (len(drawn), 4, 2) and (got["SCORES"] > 0.5).all()
    for box, (x0, y0, x1, y1) in zip(got["BOXES"], drawn):  # reading order
        assert box[:, 0].min() <= x0 + 4 and box[:, 0].max() >= x1 - 4
        assert box[:, 1].min() <= y0 + 4 and box[:, 1].max() >= y1 - 4
    np.testing.assert_allclose(got["DETS"][:, :8], got["BOXES"].reshape(-1, 8))


def test_ocr_made_by_naiad_import_reads_the_words(vision):
    data = text_image(WORDS, size=(460, 90))
    got = served(vision, "ocr", data)
    assert_same(got, in_process(vision, "ocr", data))
    assert [t.decode() for t in got["TEXT"]] == [WORDS]


def test_a_file_that_is_not_an_image_is_a_client_error(vision):
    with pytest.raises(InferenceServerException) as info:
        served(vision, "shapes_detection", b"certainly not a picture")
    assert info.value.status() == "400"
    assert "not an image file" in info.value.message()


def test_the_client_script_prints_and_draws_the_detections(vision, tmp_path):
    data, drawn = scene()
    picture = tmp_path / "scene.png"
    picture.write_bytes(data)
    out = tmp_path / "annotated.png"
    r = subprocess.run(
        [sys.executable, str(VISION / "client.py"), "shapes_instances", str(picture),
         "--url", vision.http_url, "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    records = json.loads(r.stdout)
    assert sorted(rec["label"] for rec in records) == sorted(s["label"] for s in drawn)
    annotated = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    original = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    assert annotated.shape == original.shape
    # the masks are painted over the shapes, not over the background
    changed = np.abs(annotated - original).sum(axis=2) > 30
    inside = np.any([s["mask"] for s in drawn], axis=0)
    assert changed[inside].mean() > 0.6
