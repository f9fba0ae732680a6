"""``naiad import`` and ``naiad validate`` on the pytorch, openvino and fil backends' files.

Every model file is built here by the backends' own test builders
(``tests/framework_models.py``): a TorchScript CNN, a torch.export program, an
OpenVINO IR, XGBoost models in JSON, UBJSON and under XGBoost's ``.model``
extension, a LightGBM text model and a scikit-learn forest as a Treelite
checkpoint. Each is imported, the repository is served by a real naiad process
and every answer is checked against the framework run in-process, over
tritonclient HTTP and gRPC. Validate must say what loading says, and a task
pipeline is built around a TorchScript network.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")
xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
pytest.importorskip("treelite")
pytest.importorskip("sklearn")

import framework_models as fm  # noqa: E402
import requests  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from clients import naiad_tool  # noqa: E402
from conftest import NaiadProcess  # noqa: E402
from PIL import Image  # noqa: E402

from naiad.backends.fil import MODEL_FILES  # noqa: E402
from naiad.tools.importer import ImportOptions, import_model  # noqa: E402
from naiad.tools.importer.core import parse_tensor  # noqa: E402
from naiad.tools.tasks._image import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

FEATURES = 8


def _import(source, repo, name: str, *flags: str):
    """``naiad import`` as a user runs it; the written config.pbtxt's text."""
    naiad_tool("import", str(source), "-r", str(repo), "-n", name, *flags, check=True)
    return (repo / name / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """One repository with every framework format imported, served by one server."""
    work = tmp_path_factory.mktemp("frameworks")
    files, repo = work / "files", work / "models"
    b: dict = {"repo": repo, "files": files}
    b["cnn"] = fm.torchscript_cnn(files / "cnn")
    b["export"] = fm.exported_program(files / "export")
    fm.onnx_mlp(files / "mlp.onnx")
    fm.openvino_ir(files / "ir", files / "mlp.onnx")
    b["xgb_json"] = fm.xgboost_model(files / "clf.json")
    b["xgb_ubj"] = fm.xgboost_model(files / "multi.ubj", objective="multi:softprob", classes=3)
    # XGBoost's own extension: save_model writes UBJSON under it
    b["xgb_model"] = fm.xgboost_model(files / "reg.model", objective="reg:squarederror")
    b["lgb"] = fm.lightgbm_model(files / "lgb.txt")
    b["forest"] = fm.treelite_forest(files / "forest.tl")
    b["configs"] = {
        "cnn": _import(files / "cnn" / "model.pt", repo, "cnn", "--input",
                       "INPUT__0:FP32:3,16,16", "--output", "OUTPUT__0:FP32:10",
                       "--max-batch-size", "8"),
        "export": _import(files / "export" / "model.pt2", repo, "export"),
        "mlp_ir": _import(files / "ir" / "model.xml", repo, "mlp_ir"),
    }
    # the tree models through the importer's python API (the CLI only parses flags into it)
    for name, source in (("xgb_json", "clf.json"), ("xgb_ubj", "multi.ubj"),
                         ("xgb_model", "reg.model"), ("lgb", "lgb.txt"),
                         ("forest", "forest.tl")):
        import_model(ImportOptions(source=str(files / source), repository=str(repo), name=name,
                                   max_batch_size=64))
        b["configs"][name] = (repo / name / "config.pbtxt").read_text()
    with NaiadProcess(repo, startup_timeout=120) as server:
        b["server"] = server
        yield b


def _rows(n: int, seed: int = 21) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


def test_torchscript_with_input_and_output_flags(imported):
    text = imported["configs"]["cnn"]
    assert 'backend: "pytorch"' in text and "max_batch_size: 8" in text
    assert "dims: [3, 16, 16]" in text and "dims: [10]" in text and "dynamic_batching" in text
    assert (imported["repo"] / "cnn" / "1" / "model.pt").read_bytes() == \
        (imported["files"] / "cnn" / "model.pt").read_bytes()
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = imported["cnn"](torch.from_numpy(x)).numpy()
    for answer in fm.infer_both(imported["server"], "cnn", {"INPUT__0": x}):
        np.testing.assert_allclose(answer["OUTPUT__0"], want, rtol=1e-4, atol=1e-5)


def test_torch_export_program_needs_no_flags(imported):
    text = imported["configs"]["export"]
    # read from the program's signature by the pytorch backend's auto-complete
    assert 'default_model_filename: "model.pt2"' in text and "max_batch_size: 4" in text
    for name, dtype, dims in (("INPUT__0", "TYPE_FP32", "[4]"), ("INPUT__1", "TYPE_INT64", "[2]"),
                              ("OUTPUT__0", "TYPE_FP32", "[3]"),
                              ("OUTPUT__1", "TYPE_INT64", "[2]")):
        assert f'name: "{name}"\n  data_type: {dtype}\n  dims: {dims}' in text, text
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    ids = np.arange(6, dtype=np.int64).reshape(3, 2)
    with torch.no_grad():
        y, z = imported["export"](torch.from_numpy(x), torch.from_numpy(ids))
    for answer in fm.infer_both(imported["server"], "export", {"INPUT__0": x, "INPUT__1": ids}):
        np.testing.assert_allclose(answer["OUTPUT__0"], y.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(answer["OUTPUT__1"], z.numpy())


def test_openvino_ir_with_its_weights(imported):
    text = imported["configs"]["mlp_ir"]
    assert 'backend: "openvino"' in text and "max_batch_size: 4" in text
    assert 'name: "input"' in text and 'name: "logits"' in text and 'name: "probs"' in text
    folder = imported["repo"] / "mlp_ir" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml"]
    assert (folder / "model.bin").read_bytes() == \
        (imported["files"] / "ir" / "model.bin").read_bytes()
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    compiled = ov.Core().compile_model(str(imported["files"] / "ir" / "model.xml"), "CPU")
    result = compiled.create_infer_request().infer({"input": x})
    want = {p.get_any_name(): np.array(v) for p, v in result.items()}
    for answer in fm.infer_both(imported["server"], "mlp_ir", {"input": x}):
        for name in ("logits", "probs"):
            np.testing.assert_allclose(answer[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, model_type", [
    ("xgb_json", "xgboost_json"), ("xgb_ubj", "xgboost_ubj"), ("xgb_model", "xgboost_ubj"),
    ("lgb", "lightgbm"), ("forest", "treelite_checkpoint")])
def test_tree_models_under_the_file_names_fil_reads(imported, name, model_type):
    text = imported["configs"][name]
    assert f'key: "model_type"\n  value {{\n    string_value: "{model_type}"' in text, text
    # the fil backend's own file name for the type, so no default_model_filename is needed
    assert "default_model_filename" not in text
    assert [p.name for p in (imported["repo"] / name / "1").iterdir()] == \
        [MODEL_FILES[model_type]]
    assert f"dims: [{FEATURES}]" in text and "dims: [1]" in text
    assert "max_batch_size: 64" in text and "dynamic_batching" in text


def test_tree_models_answer_as_the_frameworks_do(imported):
    x = _rows(40)
    p = imported["xgb_json"].predict(xgb.DMatrix(x))
    multi = imported["xgb_ubj"].predict(xgb.DMatrix(x))
    reg = imported["xgb_model"].predict(xgb.DMatrix(x))
    lp = imported["lgb"].predict(x)
    fp = imported["forest"].predict_proba(x)[:, 1]
    # classifiers answer the class (FIL's rule: threshold 0.5, or the most probable class)
    want = {"xgb_json": (p > 0.5), "xgb_ubj": multi.argmax(axis=1), "xgb_model": reg,
            "lgb": (lp > 0.5), "forest": (fp > 0.5)}
    assert 0 < want["xgb_json"].sum() < len(x) and len(set(want["xgb_ubj"])) == 3
    for name, expected in want.items():
        assert "is_classifier" in imported["configs"][name]
        for answer in fm.infer_both(imported["server"], name, {"input__0": x}):
            np.testing.assert_allclose(answer["output__0"].reshape(-1),
                                       expected.astype(np.float32), rtol=1e-5, atol=1e-5,
                                       err_msg=name)


def test_imported_repository_validates_and_initializes(imported):
    r = naiad_tool("validate", str(imported["repo"]), "--format", "json", "--initialize")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["ok"], r.stdout
    assert doc["summary"] == {"OK": 8, "WARNING": 0, "ERROR": 0}
    assert {m["backend"] for m in doc["models"]} == {"pytorch", "openvino", "fil"}


def test_import_refusals_for_framework_files(tmp_path, imported):
    files = imported["files"]
    # an IR without its weights
    (tmp_path / "lonely").mkdir()
    shutil.copy(files / "ir" / "model.xml", tmp_path / "lonely" / "net.xml")
    r = naiad_tool("import", str(tmp_path / "lonely" / "net.xml"), "-r", str(tmp_path / "r"))
    assert r.returncode == 1 and "net.bin' (the openvino model's .bin file) not found" in r.stderr
    assert not (tmp_path / "r" / "net").exists()
    # TorchScript without --input/--output; a tree model whose --input disagrees with it
    with pytest.raises(Exception, match="--input and --output"):
        import_model(ImportOptions(source=str(files / "cnn" / "model.pt"),
                                   repository=str(tmp_path / "r"), name="x"))
    opts = ImportOptions(source=str(files / "lgb.txt"), repository=str(tmp_path / "r"),
                         name="wrong", inputs=[parse_tensor("input__0:FP32:5")])
    with pytest.raises(Exception, match=r"the written configuration does not load: version 1: "
                       r"unable to load model 'wrong', input 'input__0' dims \[5\] do not "
                       r"match the model's 8 features"):
        import_model(opts)
    assert not (tmp_path / "r" / "wrong").exists()


# ---------------------------------------------------------------------------
# validate says what loading says
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(imported, tmp_path_factory):
    """Framework models broken in ways only the model files or the backends can tell."""
    src, repo = imported["repo"], tmp_path_factory.mktemp("broken_frameworks")

    def copy(model: str, name: str, edit=lambda text: text):
        shutil.copytree(src / model, repo / name)
        text = (repo / name / "config.pbtxt").read_text().replace(
            f'name: "{model}"', f'name: "{name}"')
        (repo / name / "config.pbtxt").write_text(edit(text))

    copy("mlp_ir", "ir_fine")
    copy("mlp_ir", "ir_no_weights")
    (repo / "ir_no_weights" / "1" / "model.bin").unlink()
    copy("lgb", "lgb_no_file")
    (repo / "lgb_no_file" / "1" / "model.txt").unlink()
    copy("xgb_json", "xgb_bad_type", lambda t: t.replace('"xgboost_json"', '"catboost"'))
    copy("export", "export_no_file")
    (repo / "export_no_file" / "1" / "model.pt2").unlink()
    # complete configs that disagree with the model: only loading the model tells
    copy("xgb_json", "xgb_features", lambda t: t.replace(f"dims: [{FEATURES}]", "dims: [5]"))
    copy("mlp_ir", "ir_dims", lambda t: t.replace("dims: [6]", "dims: [7]"))
    copy("mlp_ir", "ir_corrupt")
    xml = repo / "ir_corrupt" / "1" / "model.xml"
    xml.write_bytes(xml.read_bytes()[:2000])
    copy("export", "export_types", lambda t: t.replace("TYPE_INT64\n  dims: [2]\n}\noutput",
                                                       "TYPE_INT32\n  dims: [2]\n}\noutput", 1))
    return repo


def _report(repo, *flags) -> dict[str, dict]:
    r = naiad_tool("validate", str(repo), "--format", "json", *flags)
    doc = json.loads(r.stdout)
    assert r.returncode == (0 if doc["ok"] else 1)
    return {m["model"]: m for m in doc["models"]}


def test_validate_checks_each_backends_files(broken):
    models = _report(broken)
    assert models["ir_fine"]["status"] == "OK"

    def err(name):
        assert models[name]["status"] == "ERROR", models[name]
        return models[name]["errors"][0]

    assert err("ir_no_weights") == (f"unable to find '{broken}/ir_no_weights/1/model.bin' for "
                                    "model 'ir_no_weights'")
    assert err("lgb_no_file") == (f"unable to find '{broken}/lgb_no_file/1/model.txt' for "
                                  "model 'lgb_no_file'")
    assert err("xgb_bad_type") == "catboost not recognized as a valid serialization format."
    assert err("export_no_file").startswith(f"unable to find '{broken}/export_no_file/1/model.pt")
    # a complete config is not compared with the model until the model loads
    for name in ("xgb_features", "ir_dims", "export_types", "ir_corrupt"):
        assert models[name]["status"] == "OK", models[name]


def test_validate_initialize_says_what_the_server_says(broken):
    models = _report(broken, "--initialize")
    with NaiadProcess(broken, "--exit-on-error=false", "--strict-readiness=false",
                      startup_timeout=120) as server:
        index = requests.post(f"{server.base}/v2/repository/index", timeout=60).json()
    reasons = {m["name"]: m.get("reason", "") for m in index if m.get("state") != "READY"}
    assert {m["name"] for m in index if m.get("state") == "READY"} == {"ir_fine"}
    assert {n for n, m in models.items() if m["status"] == "OK"} == {"ir_fine"}
    assert set(reasons) == set(models) - {"ir_fine"}
    for name, reason in reasons.items():
        said = reason.split(";")[0].replace("version 1 is at UNAVAILABLE state: ", "").strip()
        assert said and said in models[name]["errors"][0], (name, reason, models[name])
    assert "dims" in models["xgb_features"]["errors"][0]
    assert "ir_dims" in models["ir_dims"]["errors"][0]
    assert "INPUT__1" in models["export_types"]["errors"][0]
    # OpenVINO's reason (pugixml's "Error parsing ..."), not the source line it was thrown from
    said = models["ir_corrupt"]["errors"][0]
    assert f"OpenVINO failed to read '{broken}/ir_corrupt/1/model.xml': Error parsing " in said
    assert "Exception from" not in said


# ---------------------------------------------------------------------------
# a task pipeline around a TorchScript network
# ---------------------------------------------------------------------------


class _OneImage(torch.nn.Module):
    """The CNN for one image without a batch dimension: [3, H, W] -> [classes]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.unsqueeze(0))[0]


@pytest.mark.parametrize("batching", ["batched", "one_image"])
def test_classification_pipeline_around_a_torchscript_cnn(imported, tmp_path, batching):
    cnn = imported["cnn"]
    if batching == "batched":
        source, flags, pre_dims = imported["files"] / "cnn" / "model.pt", \
            ["--max-batch-size", "4"], "[-1, 3, 16, 16]"
    else:  # max_batch_size 0 and an input without a batch dimension
        source, flags, pre_dims = tmp_path / "one" / "model.pt", [], "[3, 16, 16]"
        fm.torchscript_module(source.parent, _OneImage(cnn))
    repo = tmp_path / "models"
    labels = tmp_path / "labels.txt"
    names = [f"kind{i}" for i in range(10)]
    labels.write_text("".join(n + "\n" for n in names))
    r = naiad_tool("import", str(source), "-r", str(repo), "-n", "cnn", "--task",
                   "classification", "--labels", str(labels), "--input", "INPUT__0:FP32:3,16,16",
                   "--output", "OUTPUT__0:FP32:10", *flags, check=True)
    assert {p.name for p in repo.iterdir()} == {"cnn", "cnn_model", "cnn_preprocess",
                                                "cnn_postprocess"}, r.stdout
    assert 'backend: "pytorch"' in (repo / "cnn_model" / "config.pbtxt").read_text()
    assert f"dims: {pre_dims}" in (repo / "cnn_preprocess" / "config.pbtxt").read_text()
    # an image at the network's size: the pre-processing only normalizes it
    pixels = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    data = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    x = (pixels.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    with torch.no_grad():
        logits = cnn(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    probs = torch.softmax(logits.double(), dim=1).numpy()[0]
    top = np.argsort(-probs, kind="stable")[:5]
    with NaiadProcess(repo, startup_timeout=120) as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        image = httpclient.InferInput("IMAGE", list(data.shape), "UINT8")
        image.set_data_from_numpy(data)
        result = client.infer("cnn", [image])
    assert result.as_numpy("CLASS_IDS").tolist() == top.tolist()
    assert [v.decode() for v in result.as_numpy("LABELS")] == [names[i] for i in top]
    np.testing.assert_allclose(result.as_numpy("SCORES"), probs[top], rtol=1e-4, atol=1e-6)
