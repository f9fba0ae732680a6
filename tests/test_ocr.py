"""The OCR example reads real text through the server, as an ensemble and with BLS.

Words are rendered with Pillow's scalable default font, sent as a PNG file
through the official tritonclient, and the recognised text must match.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.clients import http_infer
from tests.conftest import ROOT, NaiadProcess, example_script

pytest.importorskip("rapidocr_onnxruntime")
PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

setup_models = example_script("ocr", "setup_models")

LINES = [((30, 30), "HELLO NAIAD"), ((30, 130), "inference 2024"), ((360, 200), "Triton")]


def render(lines=LINES, size=(640, 280), rotate=False) -> tuple[bytes, list]:
    font = ImageFont.load_default(size=40)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    boxes = []
    for xy, text in lines:
        draw.text(xy, text, font=font, fill="black")
        boxes.append(draw.textbbox(xy, text, font=font))
    if rotate:
        img = img.rotate(180)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), boxes


@pytest.fixture(scope="module")
def ocr_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ocr") / "model_repository"
    setup_models.build(str(repo))
    with NaiadProcess(repo, startup_timeout=120) as server:
        yield server


def infer(server, model, data: bytes):
    result = http_infer(server.http_url, model, {"IMAGE": np.frombuffer(data, dtype=np.uint8)},
                        timeout=120)
    return ([t.decode() for t in result.as_numpy("TEXT")], result.as_numpy("SCORES"),
            result.as_numpy("BOXES"))


@pytest.mark.parametrize("model", ["ocr", "ocr_bls"])
def test_the_pipeline_reads_rendered_words_and_finds_where_they_are(ocr_server, model):
    data, drawn = render()
    texts, scores, boxes = infer(ocr_server, model, data)
    assert texts == [text for _, text in LINES]
    assert all(s > 0.8 for s in scores)
    assert boxes.shape == (3, 4, 2)
    for box, (x0, y0, x1, y1) in zip(boxes, drawn):
        # the detected box covers the drawn text, give or take the DB margin
        assert box[:, 0].min() <= x0 + 4 and box[:, 0].max() >= x1 - 4
        assert box[:, 1].min() <= y0 + 4 and box[:, 1].max() >= y1 - 4
        assert box[:, 0].max() - box[:, 0].min() < (x1 - x0) + 40


@pytest.mark.parametrize("model", ["ocr", "ocr_bls"])
def test_upside_down_text_is_turned_by_the_angle_classifier(ocr_server, model):
    data, _ = render(rotate=True)
    texts, _, _ = infer(ocr_server, model, data)
    assert sorted(texts) == sorted(text for _, text in LINES)


@pytest.mark.parametrize("model", ["ocr", "ocr_bls"])
def test_an_image_without_text_reads_nothing(ocr_server, model):
    data, _ = render(lines=[])
    texts, scores, boxes = infer(ocr_server, model, data)
    assert texts == [] and scores.shape == (0,) and boxes.shape == (0, 4, 2)


@pytest.mark.parametrize("model, prefix", [("ocr", "in ensemble 'ocr', "), ("ocr_bls", "")])
def test_a_file_that_is_not_an_image_is_a_client_error(ocr_server, model, prefix):
    with pytest.raises(InferenceServerException) as info:
        infer(ocr_server, model, b"definitely not a PNG")
    assert info.value.status() == "400"
    assert info.value.message() == (prefix + "the input is not an image file OpenCV can "
                                             "decode")


def test_the_client_script_prints_text_and_boxes(ocr_server, tmp_path):
    data, _ = render()
    path = tmp_path / "words.png"
    path.write_bytes(data)
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ocr" / "client.py"), str(path),
         "--url", ocr_server.http_url],
        capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == [text for _, text in LINES]
    assert all(r[2].count("(") == 4 for r in rows)
