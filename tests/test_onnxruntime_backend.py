"""The onnxruntime backend: served through a real naiad process and called directly."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from conftest import EXAMPLES, ROOT, NaiadProcess, write_model
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from naiad.backends import onnxruntime as ortb
from naiad.backends.base import InstanceSpec, ModelLoadContext
from naiad.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeInstance
from naiad.core import types as core
from naiad.core.errors import ErrorKind, NaiadError
from naiad.repository import config as cfg

# ---------------------------------------------------------------------------
# building ONNX models
# ---------------------------------------------------------------------------

# (wire datatype, ONNX element type, numpy dtype)
DTYPES = [
    ("BOOL", TensorProto.BOOL, np.bool_),
    ("INT8", TensorProto.INT8, np.int8),
    ("INT16", TensorProto.INT16, np.int16),
    ("INT32", TensorProto.INT32, np.int32),
    ("INT64", TensorProto.INT64, np.int64),
    ("UINT8", TensorProto.UINT8, np.uint8),
    ("UINT16", TensorProto.UINT16, np.uint16),
    ("UINT32", TensorProto.UINT32, np.uint32),
    ("UINT64", TensorProto.UINT64, np.uint64),
    ("FP16", TensorProto.FLOAT16, np.float16),
    ("FP32", TensorProto.FLOAT, np.float32),
    ("FP64", TensorProto.DOUBLE, np.float64),
    ("BYTES", TensorProto.STRING, np.object_),
]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def identity_model(path: Path, types=DTYPES, shape=("batch", 3)) -> Path:
    """out_<type> = Identity(in_<type>) for every type."""
    nodes, ins, outs = [], [], []
    for wire, elem, _ in types:
        t = wire.lower()
        nodes.append(helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]))
        ins.append(_vi(f"in_{t}", elem, list(shape)))
        outs.append(_vi(f"out_{t}", elem, list(shape)))
    return _save(helper.make_graph(nodes, "identity", ins, outs), path)


def linear_model(path: Path, batch="batch") -> Path:
    """y = x @ W + b (FP32 [batch, 3] -> [batch, 2]) and z = x * 2 (FP32 [batch, 3])."""
    w = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    b = np.array([0.5, -0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"]),
         helper.make_node("Mul", ["x", "two"], ["z"])],
        "linear",
        [_vi("x", TensorProto.FLOAT, [batch, 3])],
        [_vi("y", TensorProto.FLOAT, [batch, 2]), _vi("z", TensorProto.FLOAT, [batch, 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
                     numpy_helper.from_array(np.array(2, dtype=np.float32), "two")],
    )
    return _save(graph, path)


def fixed_add_model(path: Path) -> Path:
    """c = a + b on INT32 [2, 3]: no dynamic first dimension, so no batching."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "fixed_add",
        [_vi("a", TensorProto.INT32, [2, 3]), _vi("b", TensorProto.INT32, [2, 3])],
        [_vi("c", TensorProto.INT32, [2, 3])],
    )
    return _save(graph, path)


def ragged_model(path: Path) -> Path:
    """y = x + 1 on FP32 [batch, n]: the second dimension varies."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "ragged",
        [_vi("x", TensorProto.FLOAT, ["batch", "n"])], [_vi("y", TensorProto.FLOAT, ["batch", "n"])],
        initializer=[numpy_helper.from_array(np.array(1, dtype=np.float32), "one")],
    )
    return _save(graph, path)


def scalar_model(path: Path) -> Path:
    """y = x * 3 on a rank-0 FP32 tensor."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])], "scalar",
        [_vi("x", TensorProto.FLOAT, [])], [_vi("y", TensorProto.FLOAT, [])],
        initializer=[numpy_helper.from_array(np.array(3, dtype=np.float32), "three")],
    )
    return _save(graph, path)


# ---------------------------------------------------------------------------
# in-process helpers
# ---------------------------------------------------------------------------


def load_instance(model_dir: Path, config_text: str, backend_config=None,
                  autocomplete: bool = False) -> OnnxRuntimeInstance:
    """Complete a config the way the repository does and build one instance."""
    config = cfg.parse_config_text(config_text) if config_text else cfg.ModelConfig()
    if not config.name:
        config.name = model_dir.name
    cfg.resolve_backend(config, str(model_dir), cfg.available_versions(str(model_dir)))
    backend = OnnxRuntimeBackend()
    if autocomplete:
        backend.auto_complete_config(config, str(model_dir), str(model_dir / "1"),
                                     dict(backend_config or {}))
    cfg.normalize(config)
    cfg.validate(config, config.name)
    ctx = ModelLoadContext(name=config.name, version=1, model_dir=str(model_dir),
                           version_dir=str(model_dir / "1"), config=config,
                           backend_config=dict(backend_config or {}))
    model = backend.load(ctx)
    return model.create_instance(InstanceSpec(f"{config.name}_0_0", "KIND_CPU", 0, 0, 0))


def request(inputs: dict[str, np.ndarray], batch_size: int, outputs=None) -> core.InferenceRequest:
    tensors = {}
    for name, arr in inputs.items():
        wire = "BYTES" if arr.dtype == np.object_ else {
            np.dtype(d): w for w, _, d in DTYPES if d is not np.object_}[arr.dtype]
        tensors[name] = core.Tensor(name, wire, arr)
    requested = {n: core.RequestedOutput(n) for n in outputs} if outputs else None
    r = core.InferenceRequest("m", tensors, requested_outputs=requested)
    r.batch_size = batch_size
    return r


class CountingSession:
    """Wraps an InferenceSession and records the calls to run()."""

    def __init__(self, session):
        self._session = session
        self.calls: list[tuple[list[str], dict]] = []

    def run(self, names, feed, run_options=None):
        self.calls.append((list(names), {k: np.array(v, copy=True) for k, v in feed.items()}))
        return self._session.run(names, feed, run_options)

    def __getattr__(self, name):
        return getattr(self._session, name)


def index_of(server: NaiadProcess) -> dict[str, dict]:
    with urllib.request.urlopen(urllib.request.Request(
            server.base + "/v2/repository/index", data=b"{}", method="POST")) as r:
        return {item["name"]: item for item in json.loads(r.read())}


# ---------------------------------------------------------------------------
# the example models, through tritonclient
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(example_server):
    c = httpclient.InferenceServerClient(url=example_server.http_url)
    yield c
    c.close()


def test_example_simple_onnx_matches_onnxruntime(client):
    meta = client.get_model_metadata("simple_onnx")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]}]

    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    inp = httpclient.InferInput("INPUT0", [3, 16], "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("simple_onnx", [inp]).as_numpy("OUTPUT0")

    sess = ort.InferenceSession(str(EXAMPLES / "simple_onnx" / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    want = sess.run(["OUTPUT0"], {"INPUT0": x})[0]
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # and the model is what its docstring says: x @ W + b
    init = {i.name: numpy_helper.to_array(i) for i in onnx.load(
        str(EXAMPLES / "simple_onnx" / "1" / "model.onnx")).graph.initializer}
    np.testing.assert_allclose(got, x @ init["W"] + init["B"], rtol=1e-5, atol=1e-5)


def test_example_simple_onnx_refuses_too_large_batch(client):
    inp = httpclient.InferInput("INPUT0", [9, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((9, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
        client.infer("simple_onnx", [inp])


def test_example_classification_with_labels(client):
    x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -1.0, 0.0]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("PROBS", class_count=3)
    got = client.infer("tiny_classifier", [inp], outputs=[out]).as_numpy("PROBS")
    assert got.shape == (2, 3)

    sess = ort.InferenceSession(str(EXAMPLES / "tiny_classifier" / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    probs = sess.run(["PROBS"], {"INPUT0": x})[0]
    labels = (EXAMPLES / "tiny_classifier" / "labels.txt").read_text().split()
    assert len(labels) == 10
    for row, scores in zip(got, probs):
        order = np.argsort(-scores, kind="stable")[:3]
        parts = [item.decode().split(":") for item in row]
        assert [int(p[1]) for p in parts] == list(order)
        assert [p[2] for p in parts] == [labels[i] for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parts], scores[order], atol=1e-6)
    # without class_count the raw scores come back, summing to one
    plain = client.infer("tiny_classifier", [inp]).as_numpy("PROBS")
    np.testing.assert_allclose(plain, probs, rtol=1e-6)
    np.testing.assert_allclose(plain.sum(axis=1), 1.0, rtol=1e-5)


def test_example_string_upper(client):
    words = np.array(["hello", "Grüße", "", "ÿ mixed Case"], dtype=object)
    inp = httpclient.InferInput("INPUT0", [4], "BYTES")
    inp.set_data_from_numpy(np.array([w.encode() for w in words], dtype=object))
    result = client.infer("string_upper", [inp])
    upper = [b.decode() for b in result.as_numpy("OUTPUT0")]
    assert upper == [w.upper() for w in words]
    assert result.as_numpy("LENGTH").tolist() == [len(w.upper()) for w in words]
    assert result.as_numpy("LENGTH").dtype == np.int32


def test_build_script_is_reproducible(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_onnx_models.py"),
                    "--repository", str(tmp_path)], check=True, capture_output=True)
    for name in ("simple_onnx", "tiny_classifier"):
        built = tmp_path / name / "1" / "model.onnx"
        committed = EXAMPLES / name / "1" / "model.onnx"
        assert built.stat().st_size < 100_000
        assert filecmp.cmp(built, committed, shallow=False), f"{name} differs from the script"


# ---------------------------------------------------------------------------
# auto-complete, datatypes and bad configs, through a server on a test repository
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ort_models")
    # no config.pbtxt at all
    linear_model(repo / "auto_linear" / "1" / "model.onnx")
    fixed_add_model(repo / "auto_fixed" / "1" / "model.onnx")
    identity_model(repo / "all_types" / "1" / "model.onnx")
    scalar_model(repo / "auto_scalar" / "1" / "model.onnx")
    # partial configs
    linear_model(repo / "partial_dims" / "1" / "model.onnx")
    write_model(repo, "partial_dims", """
        max_batch_size: 2
        input [ { name: "x" } ]
        output [ { name: "y", data_type: TYPE_FP32 } ]
    """)
    linear_model(repo / "partial_outputs" / "1" / "model.onnx")
    write_model(repo, "partial_outputs", """
        backend: "onnxruntime"
        input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 50 }
    """)
    # configs that do not describe the model
    linear_model(repo / "wrong_input" / "1" / "model.onnx")
    write_model(repo, "wrong_input", """
        platform: "onnxruntime_onnx"
        max_batch_size: 4
        input [ { name: "WRONG", data_type: TYPE_FP32, dims: [ 3 ] } ]
        output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]
    """)
    linear_model(repo / "wrong_type" / "1" / "model.onnx")
    write_model(repo, "wrong_type", """
        backend: "onnxruntime"
        max_batch_size: 4
        input [ { name: "x", data_type: TYPE_INT32, dims: [ 3 ] } ]
        output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]
    """)
    linear_model(repo / "wrong_dims" / "1" / "model.onnx")
    write_model(repo, "wrong_dims", """
        backend: "onnxruntime"
        max_batch_size: 4
        input [ { name: "x", data_type: TYPE_FP32, dims: [ 5 ] } ]
        output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]
    """)
    fixed_add_model(repo / "cannot_batch" / "1" / "model.onnx")
    write_model(repo, "cannot_batch", """
        backend: "onnxruntime"
        max_batch_size: 8
    """)
    return repo


@pytest.fixture(scope="module")
def ort_server(ort_repo):
    server = NaiadProcess(ort_repo, "--exit-on-error=false", "--strict-readiness=false",
                          wait="live", startup_timeout=120)
    server.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {i.get("state") for i in index_of(server).values()}
        if "LOADING" not in states and None not in states:
            break
        time.sleep(0.1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ort_client(ort_server):
    c = httpclient.InferenceServerClient(url=ort_server.http_url)
    yield c
    c.close()


def test_autocomplete_without_config_batching_model(ort_client):
    cfg_ = ort_client.get_model_config("auto_linear")
    assert cfg_["backend"] == "onnxruntime"
    assert cfg_["platform"] == "onnxruntime_onnx"
    assert cfg_["default_model_filename"] == "model.onnx"
    # every input and output has a dynamic first dimension: batching, Triton's default of 4
    assert cfg_["max_batch_size"] == 4
    assert "dynamic_batching" in cfg_
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg_["input"]] == [
        ("x", "TYPE_FP32", [3])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg_["output"]] == [
        ("y", "TYPE_FP32", [2]), ("z", "TYPE_FP32", [3])]

    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    inp = httpclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(x)
    result = ort_client.infer("auto_linear", [inp])
    w = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    np.testing.assert_allclose(result.as_numpy("y"), x @ w + [0.5, -0.5])
    np.testing.assert_allclose(result.as_numpy("z"), x * 2)


def test_autocomplete_without_config_fixed_model(ort_client):
    cfg_ = ort_client.get_model_config("auto_fixed")
    assert cfg_["max_batch_size"] == 0
    assert "dynamic_batching" not in cfg_
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg_["input"]] == [
        ("a", "TYPE_INT32", [2, 3]), ("b", "TYPE_INT32", [2, 3])]
    assert [(o["name"], o["dims"]) for o in cfg_["output"]] == [("c", [2, 3])]
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    ins = []
    for name, arr in (("a", a), ("b", a * 10)):
        ins.append(httpclient.InferInput(name, [2, 3], "INT32"))
        ins[-1].set_data_from_numpy(arr)
    np.testing.assert_array_equal(ort_client.infer("auto_fixed", ins).as_numpy("c"), a * 11)


def test_autocomplete_scalar_model(ort_client):
    cfg_ = ort_client.get_model_config("auto_scalar")
    assert cfg_["max_batch_size"] == 0
    assert cfg_["input"][0]["dims"] == [1]
    inp = httpclient.InferInput("x", [1], "FP32")
    inp.set_data_from_numpy(np.array([2.5], dtype=np.float32))
    out = ort_client.infer("auto_scalar", [inp]).as_numpy("y")
    assert out.shape == (1,)
    assert out[0] == pytest.approx(7.5)


def test_autocomplete_partial_config_fills_missing_fields(ort_client):
    cfg_ = ort_client.get_model_config("partial_dims")
    assert cfg_["max_batch_size"] == 2  # the config's own value is kept
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg_["input"]] == [
        ("x", "TYPE_FP32", [3])]
    # the listed output is completed; the unlisted one is not added (outputs were given)
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg_["output"]] == [
        ("y", "TYPE_FP32", [2])]


def test_autocomplete_partial_config_adds_missing_outputs(ort_client):
    cfg_ = ort_client.get_model_config("partial_outputs")
    assert cfg_["max_batch_size"] == 4
    # the config's own scheduler is kept
    assert cfg_["dynamic_batching"]["max_queue_delay_microseconds"] == 50
    assert [i["name"] for i in cfg_["input"]] == ["x"]
    assert [(o["name"], o["dims"]) for o in cfg_["output"]] == [("y", [2]), ("z", [3])]
    inp = httpclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    out = ort_client.infer("partial_outputs", [inp], outputs=[
        httpclient.InferRequestedOutput("z")])
    np.testing.assert_allclose(out.as_numpy("z"), np.full((1, 3), 2.0))
    assert out.as_numpy("y") is None


@pytest.mark.parametrize("binary", [True, False])
def test_all_datatypes_round_trip(ort_client, binary):
    cfg_ = ort_client.get_model_config("all_types")
    assert cfg_["max_batch_size"] == 4
    assert {i["name"]: i["data_type"] for i in cfg_["input"]}["in_bytes"] == "TYPE_STRING"
    rng = np.random.default_rng(7)
    inputs, expected, outputs = [], {}, []
    for wire, _, dtype in DTYPES:
        t = wire.lower()
        if wire == "BYTES":
            arr = np.array([["a", "ß", ""], ["日本", "x y", "end"]], dtype=object)
            arr = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(arr)
        elif wire == "BOOL":
            arr = np.array([[True, False, True], [False, False, True]])
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arr = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
        else:
            arr = rng.standard_normal((2, 3)).astype(dtype)
        inp = httpclient.InferInput(f"in_{t}", [2, 3], wire)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{t}", binary_data=binary))
        expected[f"out_{t}"] = arr
    result = ort_client.infer("all_types", inputs, outputs=outputs)
    for name, arr in expected.items():
        got = result.as_numpy(name)
        assert got.shape == arr.shape, name
        if arr.dtype == np.object_:
            # tritonclient hands JSON strings back as str, binary ones as bytes
            as_bytes = [[v.encode() if isinstance(v, str) else v for v in row] for row in got]
            assert as_bytes == arr.tolist()
        else:
            assert got.dtype == arr.dtype, name
            np.testing.assert_array_equal(got, arr, err_msg=name)


@pytest.mark.parametrize("model, reason", [
    ("wrong_input", "unexpected inference input 'WRONG', allowed inputs are: x"),
    ("wrong_type", "configuration expects datatype TYPE_INT32 for input 'x', model provides "
                   "TYPE_FP32"),
    ("wrong_dims", "tensor 'x': the model expects 2 dimensions (shape [-1,3])"),
    ("cannot_batch", "model does not support batching while non-zero max_batch_size"),
])
def test_config_not_matching_the_model_is_unavailable(ort_server, ort_client, model, reason):
    item = index_of(ort_server)[model]
    assert item["state"] == "UNAVAILABLE"
    assert reason in item["reason"]
    assert not ort_client.is_model_ready(model)
    # the others still serve
    assert ort_client.is_model_ready("auto_linear")


def test_default_max_batch_size_from_backend_config(tmp_path):
    repo = tmp_path / "models"
    linear_model(repo / "auto_linear" / "1" / "model.onnx")
    fixed_add_model(repo / "auto_fixed" / "1" / "model.onnx")
    with NaiadProcess(repo, "--backend-config=onnxruntime,default-max-batch-size=16") as server:
        c = httpclient.InferenceServerClient(url=server.http_url)
        try:
            assert c.get_model_config("auto_linear")["max_batch_size"] == 16
            assert c.get_model_config("auto_fixed")["max_batch_size"] == 0
        finally:
            c.close()


def test_strict_config_disables_autocomplete(tmp_path):
    repo = tmp_path / "models"
    linear_model(repo / "auto_linear" / "1" / "model.onnx")
    server = NaiadProcess(repo, "--strict-model-config=true", "--exit-on-error=false",
                          "--strict-readiness=false", wait="live")
    with server:
        item = index_of(server)["auto_linear"]
        assert item["state"] == "UNAVAILABLE"
        assert "config" in item["reason"]


# ---------------------------------------------------------------------------
# the backend called directly
# ---------------------------------------------------------------------------

LINEAR_CONFIG = """
name: "lin"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] },
         { name: "z", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""


def test_execute_batches_several_requests_in_one_run(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG)
    counting = CountingSession(inst.session)
    inst.session = counting
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((n, 3)).astype(np.float32) for n in (1, 2, 3)]
    reqs = [request({"x": x}, len(x)) for x in xs]
    responses = inst.execute(reqs)

    assert len(counting.calls) == 1
    names, feed = counting.calls[0]
    assert feed["x"].shape == (6, 3)
    assert sorted(names) == ["y", "z"]
    direct = ort.InferenceSession(str(tmp_path / "lin" / "1" / "model.onnx"),
                                  providers=["CPUExecutionProvider"])
    assert len(responses) == 3
    for x, req, resp in zip(xs, reqs, responses):
        assert resp.error is None
        want_y, want_z = direct.run(["y", "z"], {"x": x})
        np.testing.assert_allclose(resp.as_numpy("y"), want_y, rtol=1e-6)
        np.testing.assert_allclose(resp.as_numpy("z"), want_z, rtol=1e-6)
        assert resp.output("y").datatype == "FP32"
        assert resp.as_numpy("y").shape == (len(x), 2)
        assert 0 < req.compute_input_end_ns <= req.compute_output_start_ns


def test_execute_asks_only_for_the_outputs_requested(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG)
    counting = CountingSession(inst.session)
    inst.session = counting
    x = np.ones((1, 3), dtype=np.float32)
    resp = inst.execute([request({"x": x}, 1, outputs=["z"])])[0]
    assert counting.calls[0][0] == ["z"]
    assert [t.name for t in resp.outputs] == ["z"]
    # two requests wanting different outputs: one run for the union, each gets its own
    responses = inst.execute([request({"x": x}, 1, outputs=["y"]),
                              request({"x": x * 2}, 1, outputs=["z"])])
    assert sorted(counting.calls[1][0]) == ["y", "z"]
    assert [t.name for t in responses[0].outputs] == ["y"]
    assert [t.name for t in responses[1].outputs] == ["z"]
    np.testing.assert_allclose(responses[1].as_numpy("z"), x * 4)


def test_execute_runs_requests_of_different_shapes_separately(tmp_path):
    ragged_model(tmp_path / "rag" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "rag", """
        name: "rag"
        backend: "onnxruntime"
        max_batch_size: 8
        input [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ] } ]
        output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]
    """)
    counting = CountingSession(inst.session)
    inst.session = counting
    xs = [np.full((1, 2), 1, np.float32), np.full((2, 5), 2, np.float32),
          np.full((2, 2), 3, np.float32)]
    responses = inst.execute([request({"x": x}, len(x)) for x in xs])
    assert len(counting.calls) == 2  # [1,2] and [2,2] together, [2,5] alone
    for x, resp in zip(xs, responses):
        np.testing.assert_array_equal(resp.as_numpy("y"), x + 1)


def test_execute_error_is_invalid_arg_with_ort_message(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG)
    resp = inst.execute([request({"x": np.ones((1, 4), np.float32)}, 1)])[0]
    assert resp.error is not None
    assert resp.error.kind == ErrorKind.INVALID_ARG
    assert "onnx runtime error" in resp.error.message
    assert "Got invalid dimensions for input: x" in resp.error.message


def test_string_input_must_be_utf8(tmp_path):
    identity_model(tmp_path / "ids" / "1" / "model.onnx", types=[DTYPES[-1]])
    inst = load_instance(tmp_path / "ids", "", autocomplete=True)
    ok = inst.execute([request({"in_bytes": np.array([[b"a", b"\x00b", "é".encode()]],
                                                     dtype=object)}, 1)])[0]
    assert ok.as_numpy("out_bytes").tolist() == [[b"a", b"\x00b", "é".encode()]]
    bad = inst.execute([request({"in_bytes": np.array([[b"a", b"\xff", b"c"]], dtype=object)},
                                1)])[0]
    assert bad.error is not None and bad.error.kind == ErrorKind.INVALID_ARG
    assert "UTF-8" in bad.error.message


def test_bf16_round_trip(tmp_path):
    path = tmp_path / "bf" / "1" / "model.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]),
         helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT)], "bf",
        [_vi("x", TensorProto.BFLOAT16, ["batch", 3])],
        [_vi("y", TensorProto.BFLOAT16, ["batch", 3]), _vi("f", TensorProto.FLOAT, ["batch", 3])])
    _save(graph, path)
    inst = load_instance(tmp_path / "bf", "", autocomplete=True)
    assert inst.model.config.input[0].data_type == cfg.mc.TYPE_BF16
    bits = np.array([[0x3F80, 0x4000, 0xC040]], dtype=np.uint16)  # 1.0, 2.0, -3.0
    reqs = []
    for n in (1, 2):
        r = core.InferenceRequest("bf", {"x": core.Tensor("x", "BF16", np.repeat(bits, n, 0))})
        r.batch_size = n
        reqs.append(r)
    responses = inst.execute(reqs)
    for n, resp in zip((1, 2), responses):
        assert resp.error is None
        assert resp.output("y").datatype == "BF16"
        assert resp.as_numpy("y").tolist() == [[0x3F80, 0x4000, 0xC040]] * n
        assert resp.as_numpy("f").tolist() == [[1.0, 2.0, -3.0]] * n


def test_session_options_from_parameters(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG + """
        optimization { graph { level: 2 } }
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "enable_mem_arena" value: { string_value: "0" } }
        parameters { key: "enable_mem_pattern" value: { string_value: "false" } }
    """)
    opts = inst.session.get_session_options()  # what the session was really created with
    assert opts.intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 2
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert opts.enable_cpu_mem_arena is False
    assert opts.enable_mem_pattern is False
    assert inst.session_options.intra_op_num_threads == 1
    resp = inst.execute([request({"x": np.ones((1, 3), np.float32)}, 1)])[0]
    assert resp.error is None


def test_arena_shrinkage_is_a_run_option(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    shrink = 'parameters { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } }'
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG + shrink)
    assert inst.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    resp = inst.execute([request({"x": np.ones((1, 3), np.float32)}, 1)])[0]
    assert resp.error is None
    # ORT checks it on every run: with the arena disabled there is nothing to shrink
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG + shrink + '''
        parameters { key: "enable_mem_arena" value: { string_value: "0" } }''')
    resp = inst.execute([request({"x": np.ones((1, 3), np.float32)}, 1)])[0]
    assert resp.error is not None and "arena" in resp.error.message


def test_session_options_defaults_and_levels(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG)
    opts = inst.session.get_session_options()
    assert opts.intra_op_num_threads == 0  # ORT decides, as under Triton
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for level, want in ((-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                        (1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)):
        inst = load_instance(tmp_path / "lin",
                             LINEAR_CONFIG + f"optimization {{ graph {{ level: {level} }} }}")
        assert inst.session.get_session_options().graph_optimization_level == want


@pytest.mark.parametrize("extra, message", [
    ('parameters { key: "execution_mode" value: { string_value: "2" } }',
     "execution_mode are 0 or 1 but got 2"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }',
     "failed to convert 'many' to integral number"),
    ('parameters { key: "enable_mem_arena" value: { string_value: "maybe" } }',
     "failed to convert 'maybe' to boolean"),
    ('optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "magic" } ] } }',
     "unknown Execution Accelerator 'magic' is requested"),
])
def test_bad_session_options_fail_the_load(tmp_path, extra, message):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    with pytest.raises(NaiadError, match=message):
        load_instance(tmp_path / "lin", LINEAR_CONFIG + extra)


def test_openvino_accelerator_without_openvino_is_ignored(tmp_path, monkeypatch):
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-openvino is installed")
    # the backend's own warning, caught at its logger: whether a record reaches caplog
    # depends on process-wide logging settings other tests change (--log-* flags, tools)
    warned: list[str] = []
    monkeypatch.setattr(ortb.log, "warning", lambda msg, *args: warned.append(msg % args))
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    inst = load_instance(tmp_path / "lin", LINEAR_CONFIG + """
        optimization { execution_accelerators {
          cpu_execution_accelerator: [ { name: "openvino" } ] } }
    """)
    assert inst.session.get_providers() == ["CPUExecutionProvider"]
    assert any("'openvino' execution accelerator is ignored" in w for w in warned), warned


def test_share_session_between_instances(tmp_path):
    linear_model(tmp_path / "lin" / "1" / "model.onnx")
    config = cfg.parse_config_text(LINEAR_CONFIG + """
        instance_group [ { count: 2, kind: KIND_CPU } ]
        parameters { key: "share_session_between_instances" value: { string_value: "true" } }
    """)
    cfg.normalize(config)
    ctx = ModelLoadContext(name="lin", version=1, model_dir=str(tmp_path / "lin"),
                           version_dir=str(tmp_path / "lin" / "1"), config=config)
    model = OnnxRuntimeBackend().load(ctx)
    a = model.create_instance(InstanceSpec("lin_0_0", "KIND_CPU", 0, 0, 0))
    b = model.create_instance(InstanceSpec("lin_0_1", "KIND_CPU", 0, 0, 1))
    assert a.session is b.session
    config.ClearField("parameters")
    model = OnnxRuntimeBackend().load(ctx)
    c = model.create_instance(InstanceSpec("lin_0_0", "KIND_CPU", 0, 0, 0))
    d = model.create_instance(InstanceSpec("lin_0_1", "KIND_CPU", 0, 0, 1))
    assert c.session is not d.session


def test_missing_model_file_is_unavailable(tmp_path):
    (tmp_path / "lin" / "1").mkdir(parents=True)
    with pytest.raises(NaiadError, match="unable to find") as info:
        load_instance(tmp_path / "lin", LINEAR_CONFIG)
    assert info.value.kind == ErrorKind.UNAVAILABLE
