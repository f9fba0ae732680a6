"""The pytorch backend: TorchScript, torch.export, AOTInductor and the python runtime,
served by a real naiad process (tritonclient HTTP and gRPC) and checked against torch
run in-process."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import framework_models as fm  # noqa: E402
from conftest import NaiadProcess  # noqa: E402

from naiad.backends import registry  # noqa: E402
from naiad.embedded import EmbeddedServer  # noqa: E402

# wire type -> (torch dtype, numpy dtype) for the all-types model
TYPES = [
    ("BOOL", torch.bool, np.bool_), ("UINT8", torch.uint8, np.uint8),
    ("UINT16", torch.uint16, np.uint16), ("UINT32", torch.uint32, np.uint32),
    ("UINT64", torch.uint64, np.uint64), ("INT8", torch.int8, np.int8),
    ("INT16", torch.int16, np.int16), ("INT32", torch.int32, np.int32),
    ("INT64", torch.int64, np.int64), ("FP16", torch.float16, np.float16),
    ("FP32", torch.float32, np.float32), ("FP64", torch.float64, np.float64),
]


class AllTypes(torch.nn.Module):
    def forward(self, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11):
        return a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11


class Named(torch.nn.Module):
    def forward(self, left, right):
        return left + right, left - right


class DictIO(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sum": inputs["a"] + inputs["b"], "prod": inputs["a"] * inputs["b"]}


class Strings(torch.nn.Module):
    def forward(self, words: list[str]) -> list[str]:
        return [w.upper() + "!" for w in words]


class Accumulate(torch.nn.Module):
    """Sequence model with implicit state: STATE_OUT = STATE_IN + x; OUTPUT = the sum."""

    def forward(self, x, state):
        total = state + x
        return total, total


class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2


class Fails(torch.nn.Module):
    def forward(self, x):
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x * 2


def _types_config() -> str:
    ins = "\n".join(
        f'  {{ name: "INPUT__{i}" data_type: TYPE_{w} dims: [ 3 ] }}' for i, (w, _, _) in
        enumerate(TYPES))
    outs = "\n".join(
        f'  {{ name: "OUTPUT__{i}" data_type: TYPE_{w} dims: [ 3 ] }}' for i, (w, _, _) in
        enumerate(TYPES))
    return ('backend: "pytorch"\nmax_batch_size: 4\ninput [\n' + ins.replace("}\n", "},\n")
            + '\n]\noutput [\n' + outs.replace("}\n", "},\n") + "\n]\n")


@pytest.fixture(scope="module")
def torch_repo(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("torch_models")
    built: dict = {"repo": repo}
    built["cnn"] = fm.torchscript_cnn(repo / "ts_cnn" / "1")
    fm.write_config(repo / "ts_cnn", """
        platform: "pytorch_libtorch"
        max_batch_size: 8
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, 16, 16 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }
        parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value { string_value: "true" } }
        parameters { key: "ENABLE_CACHE_CLEANING" value { string_value: "false" } }
    """)
    fm.torchscript_module(repo / "ts_types" / "1", AllTypes())
    fm.write_config(repo / "ts_types", _types_config())
    fm.torchscript_module(repo / "ts_named" / "1", Named())
    fm.write_config(repo / "ts_named", """
        backend: "pytorch"
        max_batch_size: 0
        input [ { name: "right" data_type: TYPE_INT32 dims: [ 2 ] },
                { name: "left" data_type: TYPE_INT32 dims: [ 2 ] } ]
        output [ { name: "SUM__0" data_type: TYPE_INT32 dims: [ 2 ] },
                 { name: "DIFF__1" data_type: TYPE_INT32 dims: [ 2 ] } ]
    """)
    fm.torchscript_module(repo / "ts_dict" / "1", DictIO())
    fm.write_config(repo / "ts_dict", """
        backend: "pytorch"
        max_batch_size: 4
        input [ { name: "a" data_type: TYPE_FP32 dims: [ 2 ] },
                { name: "b" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "RESULT[prod]" data_type: TYPE_FP32 dims: [ 2 ] },
                 { name: "RESULT[sum]" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """)
    fm.write_config(repo / "ts_strings", """
        backend: "pytorch"
        input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] } ]
    """)
    fm.torchscript_module(repo / "ts_state" / "1", Accumulate())
    fm.write_config(repo / "ts_state", """
        backend: "pytorch"
        max_batch_size: 2
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
        sequence_batching {
          state [ { input_name: "STATE_IN__1" output_name: "STATE_OUT__1"
                    data_type: TYPE_FP32 dims: [ 1 ] } ]
        }
    """)
    fm.torchscript_module(repo / "ts_bf16" / "1", Double())
    fm.write_config(repo / "ts_bf16", """
        backend: "pytorch"
        max_batch_size: 2
        input [ { name: "INPUT__0" data_type: TYPE_BF16 dims: [ 3 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_BF16 dims: [ 3 ] } ]
    """)
    built["strings"] = fm.torchscript_module(repo / "ts_strings" / "1", Strings())
    fm.torchscript_module(repo / "ts_fails" / "1", Fails())
    fm.write_config(repo / "ts_fails", """
        backend: "pytorch"
        max_batch_size: 4
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """)
    # torch.export program with no config at all: auto-complete writes it
    built["export"] = fm.exported_program(repo / "export_auto" / "1")
    # the same program under forward-based names, with a config
    fm.exported_program(repo / "export_named" / "1")
    fm.write_config(repo / "export_named", """
        backend: "pytorch"
        max_batch_size: 16
        input [ { name: "ARGS[1]" data_type: TYPE_INT64 dims: [ 2 ] },
                { name: "ARGS[0]" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "RESULT[1]" data_type: TYPE_INT64 dims: [ 2 ] },
                 { name: "RESULT[0]" data_type: TYPE_FP32 dims: [ 3 ] } ]
        dynamic_batching { }
    """)
    built["runtime"] = fm.python_runtime(repo / "py_runtime" / "1")
    fm.write_config(repo / "py_runtime", """
        backend: "pytorch"
        runtime: "model.py"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
                { name: "INPUT1" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] },
                 { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 1 ] } ]
        parameters { key: "NUM_THREADS" value { string_value: "1" } }
    """)
    # a config that does not match the model: the version must be UNAVAILABLE
    fm.torchscript_module(repo / "ts_bad" / "1", Named())
    fm.write_config(repo / "ts_bad", """
        backend: "pytorch"
        input [ { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 2 ] } ]
    """)
    return built


@pytest.fixture(scope="module")
def torch_server(torch_repo):
    with NaiadProcess(torch_repo["repo"], "--exit-on-error=false", wait="live") as server:
        yield server


def _get(server, path: str) -> dict:
    with urllib.request.urlopen(server.base + path, timeout=10) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------
# answers against torch in-process
# ---------------------------------------------------------------------------


def test_torchscript_cnn_matches_torch(torch_server, torch_repo):
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch_repo["cnn"](torch.from_numpy(x)).numpy()
    for answer in fm.infer_both(torch_server, "ts_cnn", {"INPUT__0": x}):
        np.testing.assert_allclose(answer["OUTPUT__0"], expected, rtol=1e-4, atol=1e-5)


def test_dynamic_batching_batches_concurrent_requests(torch_server, torch_repo):
    import tritonclient.http as httpclient

    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(16)]
    before = _get(torch_server, "/v2/models/ts_cnn/stats")["model_stats"][0]

    def one(x):
        client = httpclient.InferenceServerClient(url=torch_server.http_url)
        try:
            inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("ts_cnn", [inp]).as_numpy("OUTPUT__0")
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, xs))
    with torch.no_grad():
        for x, got in zip(xs, results):
            np.testing.assert_allclose(got, torch_repo["cnn"](torch.from_numpy(x)).numpy(),
                                       rtol=1e-4, atol=1e-5)
    after = _get(torch_server, "/v2/models/ts_cnn/stats")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 16
    assert executions < 16  # some requests ran together
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert max(sizes) > 1


def test_all_torch_types_round_trip(torch_server):
    rng = np.random.default_rng(2)
    inputs = {}
    for i, (_wire, _, npt) in enumerate(TYPES):
        if npt is np.bool_:
            arr = rng.integers(0, 2, (2, 3)).astype(np.bool_)
        elif np.issubdtype(npt, np.integer):
            arr = rng.integers(0, 100, (2, 3)).astype(npt)
        else:
            arr = rng.standard_normal((2, 3)).astype(npt)
        inputs[f"INPUT__{i}"] = arr
    for answer in fm.infer_both(torch_server, "ts_types", inputs):
        for i in range(len(TYPES)):
            got = answer[f"OUTPUT__{i}"]
            assert got.dtype == inputs[f"INPUT__{i}"].dtype
            np.testing.assert_array_equal(got, inputs[f"INPUT__{i}"])


def test_bf16_tensors(torch_server):
    ml_dtypes = pytest.importorskip("ml_dtypes")  # what tritonclient uses for BF16
    x = np.array([[1.5, -2.0, 3.25]], dtype=ml_dtypes.bfloat16)
    expected = (torch.tensor([[1.5, -2.0, 3.25]], dtype=torch.bfloat16) * 2).float().numpy()
    for answer in fm.infer_both(torch_server, "ts_bf16", {"INPUT__0": x},
                                datatypes={"INPUT__0": "BF16"}):
        np.testing.assert_array_equal(answer["OUTPUT__0"].astype(np.float32), expected)


def test_forward_argument_names_bind_by_name(torch_server):
    left = np.array([10, 20], dtype=np.int32)
    right = np.array([1, 2], dtype=np.int32)
    for answer in fm.infer_both(torch_server, "ts_named", {"right": right, "left": left}):
        np.testing.assert_array_equal(answer["SUM__0"], left + right)
        np.testing.assert_array_equal(answer["DIFF__1"], left - right)


def test_dict_input_and_dict_output(torch_server):
    a = np.array([[1, 2], [3, 4]], dtype=np.float32)
    b = np.array([[5, 6], [7, 8]], dtype=np.float32)
    for answer in fm.infer_both(torch_server, "ts_dict", {"a": a, "b": b}):
        np.testing.assert_array_equal(answer["RESULT[sum]"], a + b)
        np.testing.assert_array_equal(answer["RESULT[prod]"], a * b)


def test_string_lists(torch_server, torch_repo):
    words = ["alpha", "beta", "gr\u00fcn"]
    expected = [w.encode() for w in torch_repo["strings"](words)]
    assert expected[0] == b"ALPHA!"
    arr = np.array([w.encode() for w in words], dtype=np.object_)
    for answer in fm.infer_both(torch_server, "ts_strings", {"INPUT__0": arr}):
        assert list(answer["OUTPUT__0"]) == expected


def test_sequence_with_implicit_state(torch_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=torch_server.grpc_url)
    try:
        totals = {}
        for seq in (101, 202):
            running = 0.0
            for step, value in enumerate((1.0, 2.5, 4.0)):
                inp = grpcclient.InferInput("INPUT__0", [1, 1], "FP32")
                inp.set_data_from_numpy(np.array([[value * (seq // 100)]], dtype=np.float32))
                result = client.infer("ts_state", [inp], sequence_id=seq,
                                      sequence_start=step == 0, sequence_end=step == 2)
                running += value * (seq // 100)
                assert result.as_numpy("OUTPUT__0")[0, 0] == pytest.approx(running)
                # the state output is not part of the answer
                assert result.as_numpy("STATE_OUT__1") is None
            totals[seq] = running
        assert totals == {101: 7.5, 202: 15.0}
    finally:
        client.close()


def test_exported_program_is_auto_completed_and_served(torch_server, torch_repo):
    config = _get(torch_server, "/v2/models/export_auto/config")
    assert config["backend"] == "pytorch"
    assert config["default_model_filename"] == "model.pt2"
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("INPUT__0", "TYPE_FP32", [4]), ("INPUT__1", "TYPE_INT64", [2])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("OUTPUT__0", "TYPE_FP32", [3]), ("OUTPUT__1", "TYPE_INT64", [2])]
    meta = _get(torch_server, "/v2/models/export_auto")
    assert meta["inputs"][0] == {"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}

    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    ids = np.arange(6, dtype=np.int64).reshape(3, 2)
    with torch.no_grad():
        e0, e1 = torch_repo["export"](torch.from_numpy(x), torch.from_numpy(ids))
    for answer in fm.infer_both(torch_server, "export_auto", {"INPUT__0": x, "INPUT__1": ids}):
        np.testing.assert_allclose(answer["OUTPUT__0"], e0.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(answer["OUTPUT__1"], e1.numpy())
    for answer in fm.infer_both(torch_server, "export_named", {"ARGS[0]": x, "ARGS[1]": ids}):
        np.testing.assert_allclose(answer["RESULT[0]"], e0.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(answer["RESULT[1]"], e1.numpy())


def test_python_runtime_module_and_state_dict(torch_server, torch_repo):
    x = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    y = np.ones((5, 2), dtype=np.float32)
    with torch.no_grad():
        e0, e1 = torch_repo["runtime"](torch.from_numpy(x), torch.from_numpy(y))
    for answer in fm.infer_both(torch_server, "py_runtime", {"INPUT0": x, "INPUT1": y}):
        np.testing.assert_allclose(answer["OUTPUT0"], e0.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(answer["OUTPUT1"], e1.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# metadata, config, statistics, errors
# ---------------------------------------------------------------------------


def test_metadata_config_and_statistics(torch_server):
    import tritonclient.grpc as grpcclient

    meta = _get(torch_server, "/v2/models/ts_cnn")
    assert meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 10]}]
    config = _get(torch_server, "/v2/models/ts_cnn/config")
    assert config["parameters"]["INTRA_OP_THREAD_COUNT"] == {"string_value": "1"}
    client = grpcclient.InferenceServerClient(url=torch_server.grpc_url)
    try:
        gmeta = client.get_model_metadata("ts_cnn")
        assert gmeta.platform == "pytorch_libtorch"
        assert list(gmeta.inputs[0].shape) == [-1, 3, 16, 16]
        x = np.zeros((1, 3, 16, 16), dtype=np.float32)
        inp = grpcclient.InferInput("INPUT__0", [1, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(x)
        before = client.get_inference_statistics("ts_cnn").model_stats[0]
        client.infer("ts_cnn", [inp])
        after = client.get_inference_statistics("ts_cnn").model_stats[0]
        assert after.inference_count == before.inference_count + 1
        assert after.inference_stats.success.count == before.inference_stats.success.count + 1
        assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    finally:
        client.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{torch_server.metrics_port}/metrics",
                                timeout=10) as r:
        metrics = r.read().decode()
    line = next(x for x in metrics.splitlines()
                if x.startswith("nv_inference_request_success{") and 'model="ts_cnn"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 1


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_errors_read_as_triton_writes_them(torch_server, protocol):
    good = np.zeros((1, 3, 16, 16), dtype=np.float32)
    msg = fm.infer_error(torch_server, "ts_cnn", {"WRONG": ("FP32", [1, 3, 16, 16], good)},
                         protocol)
    assert "unexpected inference input 'WRONG' for model 'ts_cnn'" in msg
    msg = fm.infer_error(torch_server, "ts_cnn",
                         {"INPUT__0": ("INT32", [1, 3, 16, 16], good.astype(np.int32))},
                         protocol)
    assert "inference input 'INPUT__0' data-type is 'INT32', but model 'ts_cnn' expects " \
           "'FP32'" in msg
    msg = fm.infer_error(torch_server, "ts_cnn",
                         {"INPUT__0": ("FP32", [1, 3, 8, 8], np.zeros((1, 3, 8, 8), np.float32))},
                         protocol)
    assert "unexpected shape for input 'INPUT__0' for model 'ts_cnn'" in msg


def test_model_exception_is_an_internal_error_and_the_model_keeps_serving(torch_server):
    msg = fm.infer_error(torch_server, "ts_fails",
                         {"INPUT__0": ("FP32", [1, 2], np.array([[-1, 1]], np.float32))})
    assert "PyTorch execute failure" in msg and "negative input" in msg
    answer = fm.infer_both(torch_server, "ts_fails", {"INPUT__0": np.ones((1, 2), np.float32)})
    assert all(np.array_equal(a["OUTPUT__0"], np.full((1, 2), 2, np.float32)) for a in answer)


def test_a_config_that_does_not_match_the_model_is_unavailable(torch_server):
    req = urllib.request.Request(torch_server.base + "/v2/repository/index", data=b"{}",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        index = {m["name"]: m for m in json.loads(r.read())}
    assert index["ts_bad"]["state"] == "UNAVAILABLE"
    assert "configuration expects 1 inputs, model provides 2" in index["ts_bad"]["reason"]
    for name in ("ts_cnn", "ts_types", "ts_bf16", "ts_named", "ts_dict", "ts_strings", "ts_state",
                 "export_auto", "export_named", "py_runtime"):
        assert index[name]["state"] == "READY", index[name]


# ---------------------------------------------------------------------------
# in-process: parameters and formats
# ---------------------------------------------------------------------------


def _serve_one(tmp_path: Path, name: str, config: str, build) -> EmbeddedServer:
    build(tmp_path / name / "1")
    fm.write_config(tmp_path / name, config)
    return EmbeddedServer(model_repository=str(tmp_path))


def test_bad_parameter_value_fails_the_load(tmp_path):
    server = _serve_one(tmp_path, "m", """
        backend: "pytorch"
        max_batch_size: 2
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        parameters { key: "INFERENCE_MODE" value { string_value: "maybe" } }
    """, lambda d: fm.torchscript_module(d, Fails()))
    with server:
        assert not server.model_ready("m")
        index = server.server.repository_index()
    reason = next(m for m in index if m["name"] == "m").get("reason", "")
    assert "failed to convert 'maybe' to boolean for 'INFERENCE_MODE'" in reason


def test_weight_sharing_and_inference_mode_off(tmp_path):
    server = _serve_one(tmp_path, "m", """
        backend: "pytorch"
        max_batch_size: 2
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        instance_group [ { count: 3 kind: KIND_CPU } ]
        parameters { key: "ENABLE_WEIGHT_SHARING" value { string_value: "true" } }
        parameters { key: "INFERENCE_MODE" value { string_value: "false" } }
        parameters { key: "INTER_OP_THREAD_COUNT" value { string_value: "1" } }
    """, lambda d: fm.torchscript_module(d, Fails()))
    with server:
        out = server.infer("m", {"INPUT__0": np.array([[1, 2]], np.float32)})
        np.testing.assert_array_equal(out["OUTPUT__0"], [[2, 4]])


def test_export_program_config_mismatch_names_the_tensor(tmp_path):
    server = _serve_one(tmp_path, "m", """
        backend: "pytorch"
        max_batch_size: 4
        input [ { name: "INPUT__0" data_type: TYPE_FP64 dims: [ 4 ] },
                { name: "INPUT__1" data_type: TYPE_INT64 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
                 { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 2 ] } ]
    """, fm.exported_program)
    with server:
        assert not server.model_ready("m")
        index = server.server.repository_index()
    reason = next(m for m in index if m["name"] == "m").get("reason", "")
    assert "configuration expects datatype TYPE_FP64 for input 'INPUT__0', model provides " \
           "TYPE_FP32" in reason


def test_registry_knows_the_platforms():
    assert registry.PLATFORM_TO_BACKEND["pytorch_libtorch"] == "pytorch"
    assert registry.PLATFORM_TO_BACKEND["torch_aoti"] == "pytorch"
    assert registry.get_backend("pytorch").name == "pytorch"


def test_aoti_package_with_forward_based_names(tmp_path):
    """An AOTInductor package (compiled here with the C++ toolchain: the slowest test)."""
    model = fm.aoti_package(tmp_path / "aoti" / "1")
    fm.write_config(tmp_path / "aoti", """
        backend: "pytorch"
        platform: "torch_aoti"
        input [ { name: "ARGS[0]" data_type: TYPE_FP32 dims: [ 2, 3 ] },
                { name: "ARGS[1]" data_type: TYPE_FP32 dims: [ 2, 3 ] },
                { name: "ARGS[2][scale]" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
        output [ { name: "RESULT[scaled]" data_type: TYPE_FP32 dims: [ 2, 3 ] },
                 { name: "RESULT[sum]" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
    """)
    # the same package addressed by ordinals (OUTPUT__0 is "sum": the dict's first key)
    ordinal = tmp_path / "aoti_ordinal"
    (ordinal / "1").mkdir(parents=True)
    (ordinal / "1" / "model.pt2").write_bytes((tmp_path / "aoti" / "1" / "model.pt2").read_bytes())
    fm.write_config(ordinal, """
        backend: "pytorch"
        platform: "torch_aoti"
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] },
                { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 2, 3 ] },
                { name: "INPUT__2" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
    """)
    rng = np.random.default_rng(5)
    a, b, s = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(3))
    expected = model(torch.from_numpy(a), torch.from_numpy(b), {"scale": torch.from_numpy(s)})
    with NaiadProcess(tmp_path) as server:
        for answer in fm.infer_both(server, "aoti",
                                    {"ARGS[0]": a, "ARGS[1]": b, "ARGS[2][scale]": s}):
            np.testing.assert_allclose(answer["RESULT[sum]"], expected["sum"].numpy(),
                                       rtol=1e-6)
            np.testing.assert_allclose(answer["RESULT[scaled]"], expected["scaled"].numpy(),
                                       rtol=1e-6)
        for answer in fm.infer_both(server, "aoti_ordinal",
                                    {"INPUT__0": a, "INPUT__1": b, "INPUT__2": s}):
            np.testing.assert_allclose(answer["OUTPUT__0"], expected["sum"].numpy(), rtol=1e-6)


def test_missing_torch_makes_the_model_unavailable_naming_the_extra(tmp_path):
    """Without torch installed (blocked in a child process) the model is UNAVAILABLE."""
    fm.torchscript_module(tmp_path / "m" / "1", Fails())
    fm.write_config(tmp_path / "m", """
        backend: "pytorch"
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """)
    ready, reason = fm.load_without("torch", tmp_path, "m")
    assert not ready
    assert "backend 'pytorch' is not available" in reason
    assert "pip install -e '.[torch]'" in reason
