"""``naiad import``: model files and python callables into repositories that a real server
serves, and the task pipelines (classification, detection, segmentation, OCR) end to end on
small ONNX networks the tests build (and PP-OCR's, shipped in rapidocr-onnxruntime).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

from tests.clients import naiad_tool
from tests.conftest import EXAMPLES, NaiadProcess

SIMPLE_ONNX = EXAMPLES / "simple_onnx" / "1" / "model.onnx"


def naiad_import(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return naiad_tool("import", *args, check=check)


def validate(repo: Path) -> subprocess.CompletedProcess:
    return naiad_tool("validate", str(repo), timeout=120)


def save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def colors_classifier(path: Path) -> Path:
    """Class = the image's dominant colour channel (red, green, blue): [-1,3,32,32] -> [-1,3]."""
    w = np.eye(3, dtype=np.float32) * 10
    return save(helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W"], ["logits"])],
        "colors", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(w, "W")]), path)


def grid_detector(path: Path) -> Path:
    """A YOLO-format detector over a 4x4 grid of 16-pixel cells of a 64x64 input.

    Output [1, 16, 6]: each cell's box (centre x, centre y, 16, 16), class 0 score = the
    cell's mean brightness, class 1 score = a tenth of it.
    """
    cells = [(8 + 16 * c, 8 + 16 * r) for r in range(4) for c in range(4)]
    boxes = np.array([[[cx, cy, 16, 16] for cx, cy in cells]], dtype=np.float32)
    return save(helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["gray"], axes=[1], keepdims=1),
         helper.make_node("AveragePool", ["gray"], ["cells"], kernel_shape=[16, 16],
                          strides=[16, 16]),
         helper.make_node("Reshape", ["cells", "shape"], ["b"]),
         helper.make_node("Mul", ["b", "tenth"], ["b2"]),
         helper.make_node("Concat", ["boxes", "b", "b2"], ["output0"], axis=2)],
        "grid", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 16, 6])],
        initializer=[numpy_helper.from_array(np.array([1, 16, 1], np.int64), "shape"),
                     numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
                     numpy_helper.from_array(boxes, "boxes")]), path)


def brightness_segmenter(path: Path) -> Path:
    """Per-pixel logits [background, foreground] = [0.5 - b, b - 0.5], b = pixel brightness."""
    return save(helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["gray"], axes=[1], keepdims=1),
         helper.make_node("Sub", ["gray", "half"], ["fg"]),
         helper.make_node("Neg", ["fg"], ["bg"]),
         helper.make_node("Concat", ["bg", "fg"], ["logits"], axis=1)],
        "bright", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, 32, 32])],
        initializer=[numpy_helper.from_array(np.array(0.5, np.float32), "half")]), path)


def png(img: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def send_image(server, model: str, img: Image.Image, outputs: list[str]) -> list[np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    data = png(img)
    image = httpclient.InferInput("IMAGE", list(data.shape), "UINT8")
    image.set_data_from_numpy(data)
    result = client.infer(model, [image])
    return [result.as_numpy(o) for o in outputs]


# ---------------------------------------------------------------------------
# model files and callables
# ---------------------------------------------------------------------------

FUNCS = '''
import numpy as np

def affine(x, scale):
    return {"Y": x * scale + 1.0, "NORM": np.linalg.norm(x, axis=-1).astype(np.float32)}

def shout(text):
    if text.reshape(-1)[0] == b"boom":
        raise ValueError("no booms")
    return np.array([t.upper() for t in text.reshape(-1)], dtype=object)
'''


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """One repository with every non-task import, served by one server."""
    work = tmp_path_factory.mktemp("import")
    repo = work / "models"
    (work / "funcs.py").write_text(FUNCS)
    labels = work / "labels.txt"
    labels.write_text("".join(f"class{i}\n" for i in range(4)))
    naiad_import(str(SIMPLE_ONNX), "-r", str(repo), "--name", "linear", "--labels", str(labels))
    naiad_import(str(SIMPLE_ONNX), "-r", str(repo), "--name", "linear_unbatched",
                 "--max-batch-size", "0", "--instances", "2")
    naiad_import(f"{work}/funcs.py:affine", "-r", str(repo), "--input", "X:FP32:3",
                 "--input", "SCALE:FP32:1", "--output", "Y:FP32:3", "--output", "NORM:FP32:1",
                 "--max-batch-size", "8")
    naiad_import(f"{work}/funcs.py:shout", "-r", str(repo), "--input", "TEXT:BYTES:-1",
                 "--output", "LOUD:BYTES:-1")
    naiad_import("numpy:negative", "-r", str(repo), "--name", "negate",
                 "--input", "A:INT64:-1", "--output", "B:INT64:-1")
    with NaiadProcess(repo) as server:
        yield repo, server, work


def test_onnx_import_completes_the_config_from_the_file(imported):
    repo, server, _ = imported
    text = (repo / "linear" / "config.pbtxt").read_text()
    assert text.startswith("# Written by naiad import from ")
    assert 'backend: "onnxruntime"' in text and "max_batch_size: 4" in text
    assert "dims: [16]" in text and "dims: [4]" in text and "dynamic_batching" in text
    assert 'label_filename: "labels.txt"' in text
    assert (repo / "linear" / "1" / "model.onnx").read_bytes() == SIMPLE_ONNX.read_bytes()
    assert (repo / "linear" / "labels.txt").read_text().startswith("class0\n")
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    expected = ort.InferenceSession(str(SIMPLE_ONNX)).run(None, {"INPUT0": x})[0]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("linear", [inp]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # the labels serve Triton's classification extension
    top = client.infer("linear", [inp], outputs=[grpcclient.InferRequestedOutput(
        "OUTPUT0", class_count=1)]).as_numpy("OUTPUT0")
    assert top.reshape(-1)[0].decode().split(":")[2] == f"class{int(expected[0].argmax())}"


def test_max_batch_size_zero_keeps_the_batch_dimension(imported):
    repo, server, _ = imported
    text = (repo / "linear_unbatched" / "config.pbtxt").read_text()
    assert "max_batch_size" not in text  # 0, the default
    assert "dims: [-1, 16]" in text and "dynamic_batching" not in text
    assert "count: 2" in text
    meta = httpclient.InferenceServerClient(server.http_url).get_model_metadata(
        "linear_unbatched")
    assert meta["inputs"][0]["shape"] == [-1, 16]


def test_python_callable_from_a_file(imported):
    repo, server, work = imported
    assert (repo / "affine" / "1" / "funcs.py").read_text() == FUNCS
    assert 'string_value: "funcs:affine"' in (repo / "affine" / "config.pbtxt").read_text()
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.array([[3, 4, 0], [1, 0, 0]], dtype=np.float32)
    a = httpclient.InferInput("X", [2, 3], "FP32")
    a.set_data_from_numpy(x)
    s = httpclient.InferInput("SCALE", [2, 1], "FP32")
    s.set_data_from_numpy(np.array([[2], [10]], dtype=np.float32))
    r = client.infer("affine", [a, s])
    np.testing.assert_allclose(r.as_numpy("Y"), x * np.array([[2], [10]]) + 1)
    np.testing.assert_allclose(r.as_numpy("NORM"), [5, 1])


def test_python_callable_strings_and_errors(imported):
    _, server, _ = imported
    client = httpclient.InferenceServerClient(server.http_url)
    t = httpclient.InferInput("TEXT", [2], "BYTES")
    t.set_data_from_numpy(np.array([b"hi", b"there"], dtype=object))
    assert client.infer("shout", [t]).as_numpy("LOUD").tolist() == [b"HI", b"THERE"]
    t = httpclient.InferInput("TEXT", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"boom"], dtype=object))
    with pytest.raises(Exception, match="ValueError: no booms"):
        client.infer("shout", [t])


def test_python_callable_from_an_installed_module(imported):
    _, server, _ = imported
    client = httpclient.InferenceServerClient(server.http_url)
    a = httpclient.InferInput("A", [3], "INT64")
    a.set_data_from_numpy(np.array([1, -2, 3], dtype=np.int64))
    assert client.infer("negate", [a]).as_numpy("B").tolist() == [-1, 2, -3]


def test_imported_repository_validates(imported):
    repo, _, _ = imported
    r = validate(repo)
    assert r.returncode == 0, r.stdout


def test_refusals(tmp_path):
    repo = tmp_path / "r"
    naiad_import(str(SIMPLE_ONNX), "-r", str(repo))
    r = naiad_import(str(SIMPLE_ONNX), "-r", str(repo), check=False)
    assert r.returncode == 1 and "exists: choose another --name or use --force" in r.stderr
    naiad_import(str(SIMPLE_ONNX), "-r", str(repo), "--force", "--max-batch-size", "2")
    assert "max_batch_size: 2" in (repo / "model" / "config.pbtxt").read_text()
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"\0")
    r = naiad_import(str(odd), "-r", str(repo), check=False)
    assert r.returncode == 1 and "cannot tell the format" in r.stderr
    ts = tmp_path / "net.pt"
    ts.write_bytes(b"\0")
    r = naiad_import(str(ts), "-r", str(repo), check=False)
    assert r.returncode == 1 and "TorchScript records no tensor types" in r.stderr
    assert not (repo / "net").exists()  # nothing left behind
    r = naiad_import("funcs:nothing", "-r", str(repo), check=False)
    assert r.returncode == 1 and "cannot tell its tensors" in r.stderr
    r = naiad_import(str(SIMPLE_ONNX), "-r", str(repo), "-n", "x", "--input", "bad", check=False)
    assert r.returncode == 2 and "expected NAME:TYPE:DIMS" in r.stderr
    # a non-batching ONNX file asked to batch: the backend's auto-complete refuses it
    seg = brightness_segmenter(tmp_path / "b.onnx")
    fixed = tmp_path / "fixed.onnx"
    m = onnx.load(str(seg))
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(fixed))
    r = naiad_import(str(fixed), "-r", str(repo), "--max-batch-size", "8", check=False)
    assert r.returncode == 1 and "does not support batching" in r.stderr


# ---------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    work = tmp_path_factory.mktemp("tasks")
    repo = work / "models"
    (work / "colors.txt").write_text("red\ngreen\nblue\n")
    (work / "det.txt").write_text("bright\ndim\n")
    naiad_import(str(colors_classifier(work / "colors.onnx")), "-r", str(repo), "--task",
                 "classification", "--labels", str(work / "colors.txt"), "--task-option",
                 "mean=0", "--task-option", "std=1", "--task-option", "topk=2")
    naiad_import(str(grid_detector(work / "grid.onnx")), "-r", str(repo), "--task",
                 "detection", "--labels", str(work / "det.txt"), "--task-option",
                 "score_threshold=0.5")
    naiad_import(str(brightness_segmenter(work / "bright.onnx")), "-r", str(repo), "--task",
                 "segmentation", "--task-option", "mean=0", "--task-option", "std=1")
    with NaiadProcess(repo) as server:
        yield repo, server


def test_classification_pipeline(pipelines):
    repo, server = pipelines
    assert {p.name for p in repo.iterdir()} >= {"colors", "colors_model", "colors_preprocess",
                                                "colors_postprocess"}
    for colour, label in (((220, 20, 30), "red"), ((10, 200, 40), "green"),
                          ((0, 30, 240), "blue")):
        labels, scores, ids = send_image(server, "colors", Image.new("RGB", (50, 37), colour),
                                         ["LABELS", "SCORES", "CLASS_IDS"])
        assert labels[0].decode() == label and len(labels) == 2
        assert ids[0] == ["red", "green", "blue"].index(label)
        assert scores[0] > 0.9 and scores[0] >= scores[1]
    with pytest.raises(Exception, match="not an image file"):
        client = httpclient.InferenceServerClient(server.http_url)
        bad = httpclient.InferInput("IMAGE", [3], "UINT8")
        bad.set_data_from_numpy(np.array([1, 2, 3], dtype=np.uint8))
        client.infer("colors", [bad])


def test_detection_pipeline_maps_boxes_back_to_the_image(pipelines):
    _, server = pipelines
    # 128x96 image: letterboxed to 64x48 (scale 0.5) with 8 rows of padding above; the
    # white square fills grid cell (1, 1) of the network input exactly
    img = Image.new("RGB", (128, 96))
    ImageDraw.Draw(img).rectangle([32, 16, 63, 47], fill=(255, 255, 255))
    boxes, scores, ids, labels = send_image(server, "grid", img,
                                            ["BOXES", "SCORES", "CLASS_IDS", "LABELS"])
    assert boxes.shape == (1, 4)
    np.testing.assert_allclose(boxes[0], [32, 16, 64, 48], atol=0.5)
    assert ids.tolist() == [0] and labels.tolist() == [b"bright"] and scores[0] > 0.9
    # a dimmer square filling cell (2, 3): two detections, the brighter first
    ImageDraw.Draw(img).rectangle([96, 48, 127, 79], fill=(200, 200, 200))
    boxes, scores, ids, _ = send_image(server, "grid", img, ["BOXES", "SCORES", "CLASS_IDS",
                                                             "LABELS"])
    assert len(boxes) == 2 and scores[0] > scores[1] > 0.5
    np.testing.assert_allclose(boxes, [[32, 16, 64, 48], [96, 48, 128, 80]], atol=0.5)


def test_segmentation_pipeline_returns_a_mask_at_image_size(pipelines):
    _, server = pipelines
    img = Image.new("RGB", (100, 60))
    ImageDraw.Draw(img).rectangle([20, 10, 69, 39], fill=(255, 255, 255))
    mask, ids, labels = send_image(server, "bright", img, ["MASK", "CLASS_IDS", "LABELS"])
    assert mask.shape == (60, 100)
    want = np.zeros((60, 100), np.int32)
    want[10:40, 20:70] = 1
    assert (mask == want).mean() > 0.97  # resizing blurs the edges by a pixel or two
    assert mask[25, 45] == 1 and mask[0, 0] == 0 and mask[59, 99] == 0
    assert ids.tolist() == [0, 1] and labels.tolist() == [b"0", b"1"]  # no labels given


def test_pipelines_validate_and_run_on_the_wire_protocols(pipelines):
    repo, _ = pipelines
    assert validate(repo).returncode == 0


def test_task_refusals_leave_nothing_behind(tmp_path):
    repo = tmp_path / "r"
    net = colors_classifier(tmp_path / "c.onnx")
    r = naiad_import(str(net), "-r", str(repo), "--task", "classification", "--task-option",
                     "colour=blue", check=False)
    assert r.returncode == 1 and "unknown option(s) colour" in r.stderr
    assert not repo.exists() or not any(repo.iterdir())
    # a variable-size image input needs size=
    m = onnx.load(str(net))
    for d in (2, 3):
        m.graph.input[0].type.tensor_type.shape.dim[d].dim_param = "s"
    onnx.save(m, str(tmp_path / "var.onnx"))
    r = naiad_import(str(tmp_path / "var.onnx"), "-r", str(repo), "--task", "classification",
                     check=False)
    assert r.returncode == 1 and "give --task-option size=HEIGHTxWIDTH" in r.stderr
    naiad_import(str(tmp_path / "var.onnx"), "-r", str(repo), "--task", "classification",
                 "--task-option", "size=32x32", "--name", "sized")
    assert "dims: [-1, 3, 32, 32]" in (repo / "sized_preprocess" / "config.pbtxt").read_text()


def test_ocr_pipeline_reads_text(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    import rapidocr_onnxruntime

    from tests.test_ocr import render

    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    repo = tmp_path / "models"
    naiad_import(str(models / "ch_PP-OCRv4_det_infer.onnx"), "-r", str(repo), "-n", "reader",
                 "--task", "ocr", "--task-model", f"rec={models / 'ch_PP-OCRv4_rec_infer.onnx'}",
                 "--task-model", f"cls={models / 'ch_ppocr_mobile_v2.0_cls_infer.onnx'}")
    data, _ = render()
    with NaiadProcess(repo, startup_timeout=120) as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        arr = np.frombuffer(data, dtype=np.uint8)
        image = httpclient.InferInput("IMAGE", [len(arr)], "UINT8")
        image.set_data_from_numpy(arr)
        result = client.infer("reader", [image])
    assert [t.decode() for t in result.as_numpy("TEXT")] == ["HELLO NAIAD", "inference 2024",
                                                            "Triton"]
    assert result.as_numpy("BOXES").shape == (3, 4, 2)
    shutil.rmtree(repo)


def test_help_lists_formats_and_tasks():
    r = naiad_import("--help")
    assert r.returncode == 0
    for word in ("onnx (onnxruntime)", "torchscript (pytorch)", "openvino (openvino)",
                 "xgboost (fil)", "lightgbm (fil)", "python (python)", "classification",
                 "detection", "segmentation", "ocr", "--task-option", "--labels"):
        assert word in r.stdout
