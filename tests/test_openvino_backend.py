"""The openvino backend: an IR converted from ONNX by openvino.convert_model, served by a
real naiad process (tritonclient HTTP and gRPC) and checked against OpenVINO in-process."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.request

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

import framework_models as fm  # noqa: E402
from conftest import NaiadProcess  # noqa: E402

from naiad.embedded import EmbeddedServer  # noqa: E402

CONFIG_IO = """
    input [ { name: "input" data_type: TYPE_FP32 dims: [ 6 ] } ]
    output [ { name: "logits" data_type: TYPE_FP32 dims: [ 3 ] },
             { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def _reference(onnx_path, x: np.ndarray) -> dict[str, np.ndarray]:
    compiled = ov.Core().compile_model(str(onnx_path), "CPU")
    result = compiled.create_infer_request().infer({"input": x})
    return {p.get_any_name(): np.array(v) for p, v in result.items()}


@pytest.fixture(scope="module")
def ov_repo(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("ov_models")
    onnx_path = repo.parent / f"{repo.name}_mlp.onnx"
    fm.onnx_mlp(onnx_path)
    # IR with no config.pbtxt: auto-complete fills everything
    fm.openvino_ir(repo / "ir_auto" / "1", onnx_path)
    # IR with Triton's parameters, throughput streams, dynamic batching
    fm.openvino_ir(repo / "ir_streams" / "1", onnx_path)
    fm.write_config(repo / "ir_streams", """
        backend: "openvino"
        max_batch_size: 8
    """ + CONFIG_IO + """
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        parameters { key: "PERFORMANCE_HINT" value { string_value: "THROUGHPUT" } }
        parameters { key: "NUM_STREAMS" value { string_value: "2" } }
        parameters { key: "INFERENCE_NUM_THREADS" value { string_value: "2" } }
    """)
    # the ONNX file read by OpenVINO directly
    (repo / "onnx_direct" / "1").mkdir(parents=True)
    (repo / "onnx_direct" / "1" / "model.onnx").write_bytes(onnx_path.read_bytes())
    fm.write_config(repo / "onnx_direct", """
        backend: "openvino"
        default_model_filename: "model.onnx"
        max_batch_size: 4
    """ + CONFIG_IO)
    # a static batch-4 IR served with SKIP_OV_DYNAMIC_BATCHSIZE + ENABLE_BATCH_PADDING
    fm.openvino_ir(repo / "ir_padded" / "1", onnx_path, static_batch=4)
    fm.write_config(repo / "ir_padded", """
        backend: "openvino"
        max_batch_size: 4
    """ + CONFIG_IO + """
        parameters { key: "SKIP_OV_DYNAMIC_BATCHSIZE" value { string_value: "YES" } }
        parameters { key: "ENABLE_BATCH_PADDING" value { string_value: "YES" } }
    """)
    fm.openvino_ir(repo / "ir_unpadded" / "1", onnx_path, static_batch=4)
    fm.write_config(repo / "ir_unpadded", """
        backend: "openvino"
        max_batch_size: 4
    """ + CONFIG_IO + """
        parameters { key: "SKIP_OV_DYNAMIC_BATCHSIZE" value { string_value: "YES" } }
    """)
    # a static batch-1 IR made dynamic by RESHAPE_IO_LAYERS
    fm.openvino_ir(repo / "ir_reshaped" / "1", onnx_path, static_batch=1)
    fm.write_config(repo / "ir_reshaped", """
        backend: "openvino"
        max_batch_size: 8
    """ + CONFIG_IO + """
        parameters { key: "RESHAPE_IO_LAYERS" value { string_value: "YES" } }
    """)
    # a config naming an output the model does not have
    fm.openvino_ir(repo / "ir_bad" / "1", onnx_path)
    fm.write_config(repo / "ir_bad", """
        backend: "openvino"
        max_batch_size: 4
        input [ { name: "input" data_type: TYPE_FP32 dims: [ 6 ] } ]
        output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] } ]
    """)
    return {"repo": repo, "onnx": onnx_path}


@pytest.fixture(scope="module")
def ov_server(ov_repo):
    with NaiadProcess(ov_repo["repo"], "--exit-on-error=false", wait="live") as server:
        yield server


def _get(server, path: str) -> dict:
    with urllib.request.urlopen(server.base + path, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("model", ["ir_auto", "ir_streams", "onnx_direct", "ir_reshaped"])
def test_answers_match_openvino_in_process(ov_server, ov_repo, model):
    x = np.random.default_rng(7).standard_normal((3, 6)).astype(np.float32)
    expected = _reference(ov_repo["onnx"], x)
    for answer in fm.infer_both(ov_server, model, {"input": x}, ["logits", "probs"]):
        np.testing.assert_allclose(answer["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(answer["probs"], expected["probs"], rtol=1e-5, atol=1e-6)


def test_auto_complete_fills_the_config_from_the_ir(ov_server):
    config = _get(ov_server, "/v2/models/ir_auto/config")
    assert config["backend"] == "openvino"
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("input", "TYPE_FP32", [6])]
    assert sorted((o["name"], o["data_type"], o["dims"]) for o in config["output"]) == [
        ("logits", "TYPE_FP32", [3]), ("probs", "TYPE_FP32", [3])]
    meta = _get(ov_server, "/v2/models/ir_auto")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}]


def test_streams_and_dynamic_batching_under_concurrency(ov_server, ov_repo):
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((1, 6)).astype(np.float32) for _ in range(24)]
    before = _get(ov_server, "/v2/models/ir_streams/stats")["model_stats"][0]

    def one(x):
        client = grpcclient.InferenceServerClient(url=ov_server.grpc_url)
        try:
            inp = grpcclient.InferInput("input", [1, 6], "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("ir_streams", [inp]).as_numpy("probs")
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, xs))
    for x, got in zip(xs, results):
        np.testing.assert_allclose(got, _reference(ov_repo["onnx"], x)["probs"], rtol=1e-5,
                                   atol=1e-6)
    after = _get(ov_server, "/v2/models/ir_streams/stats")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 24
    assert after["execution_count"] - before["execution_count"] < 24
    config = _get(ov_server, "/v2/models/ir_streams/config")
    assert config["parameters"]["NUM_STREAMS"] == {"string_value": "2"}
    # two streams: each instance keeps two infer requests and splits batches across them
    assert "model 'ir_streams': compiled for CPU" in ov_server.output()
    assert "2 infer request(s) per instance" in ov_server.output()


def test_batch_padding_for_a_static_batch_model(ov_server, ov_repo):
    x = np.random.default_rng(9).standard_normal((2, 6)).astype(np.float32)
    expected = _reference(ov_repo["onnx"], x)
    for answer in fm.infer_both(ov_server, "ir_padded", {"input": x}, ["probs"]):
        assert answer["probs"].shape == (2, 3)
        np.testing.assert_allclose(answer["probs"], expected["probs"], rtol=1e-5, atol=1e-6)
    for protocol in ("http", "grpc"):
        msg = fm.infer_error(ov_server, "ir_unpadded", {"input": ("FP32", [2, 6], x)}, protocol)
        assert "batch-size must be 4" in msg and "ENABLE_BATCH_PADDING" in msg
    full = np.random.default_rng(10).standard_normal((4, 6)).astype(np.float32)
    for answer in fm.infer_both(ov_server, "ir_unpadded", {"input": full}, ["logits"]):
        np.testing.assert_allclose(answer["logits"], _reference(ov_repo["onnx"], full)["logits"],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_errors_read_as_triton_writes_them(ov_server, protocol):
    x = np.zeros((1, 6), np.float32)
    msg = fm.infer_error(ov_server, "ir_streams", {"inputs": ("FP32", [1, 6], x)}, protocol)
    assert "unexpected inference input 'inputs' for model 'ir_streams'" in msg
    msg = fm.infer_error(ov_server, "ir_streams",
                         {"input": ("FP64", [1, 6], x.astype(np.float64))}, protocol)
    assert "data-type is 'FP64', but model 'ir_streams' expects 'FP32'" in msg
    msg = fm.infer_error(ov_server, "ir_streams",
                         {"input": ("FP32", [1, 5], np.zeros((1, 5), np.float32))}, protocol)
    assert "unexpected shape for input 'input' for model 'ir_streams'" in msg


def test_statistics_and_unavailable_model(ov_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=ov_server.http_url)
    try:
        inp = httpclient.InferInput("input", [1, 6], "FP32")
        inp.set_data_from_numpy(np.ones((1, 6), np.float32))
        before = client.get_inference_statistics("onnx_direct")["model_stats"][0]
        client.infer("onnx_direct", [inp])
        after = client.get_inference_statistics("onnx_direct")["model_stats"][0]
        assert after["inference_count"] == before["inference_count"] + 1
        assert after["inference_stats"]["success"]["count"] == \
            before["inference_stats"]["success"]["count"] + 1
        index = {m["name"]: m for m in client.get_model_repository_index()}
    finally:
        client.close()
    assert index["ir_bad"]["state"] == "UNAVAILABLE"
    assert "unexpected inference output 'scores'" in index["ir_bad"]["reason"]
    assert "logits" in index["ir_bad"]["reason"]


def test_bad_parameters_fail_the_load(tmp_path, ov_repo):
    fm.openvino_ir(tmp_path / "m" / "1", ov_repo["onnx"])
    fm.write_config(tmp_path / "m", """
        backend: "openvino"
        max_batch_size: 4
    """ + CONFIG_IO + """
        parameters { key: "PERFORMANCE_HINT" value { string_value: "FASTEST" } }
    """)
    with EmbeddedServer(model_repository=str(tmp_path)) as server:
        assert not server.model_ready("m")
        reason = next(m for m in server.server.repository_index() if m["name"] == "m")["reason"]
    assert "PERFORMANCE_HINT must be one of LATENCY, THROUGHPUT" in reason


def test_switches_take_openvino_yes_no_and_the_backends_spellings():
    """OpenVINO's switches are written YES/NO in Triton's configs; the other backends read
    booleans as Triton's common parser does (true/on/1, false/off/0), so 'yes' is refused
    there with the parameter named."""
    from naiad.backends.framework import parse_bool
    from naiad.core.errors import InvalidArgument

    assert parse_bool("YES", "SKIP_OV_DYNAMIC_BATCHSIZE", yes_no=True) is True
    assert parse_bool(" no ", "SKIP_OV_DYNAMIC_BATCHSIZE", yes_no=True) is False
    assert parse_bool("On", "SKIP_OV_DYNAMIC_BATCHSIZE", yes_no=True) is True
    assert parse_bool("0", "enable_mem_arena") is False
    with pytest.raises(InvalidArgument, match="failed to convert 'yes' to boolean for 'k'"):
        parse_bool("yes", "k")
    with pytest.raises(InvalidArgument, match="failed to convert 'maybe' to boolean for 'k'"):
        parse_bool("maybe", "k", yes_no=True)
