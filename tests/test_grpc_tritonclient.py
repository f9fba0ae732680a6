"""The official tritonclient.grpc (sync and aio) talks to naiad's gRPC endpoint unchanged.

Every RPC of inference.GRPCInferenceService is driven through the official
client against a real server process; raw requests the client never builds
(typed ``contents``, malformed messages) go through tritonclient's own
generated stub, so the bytes on the wire are the official package's.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from concurrent import futures
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from conftest import NaiadProcess
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc
from tritonclient.utils import InferenceServerException

from tests.models import WIRE_TYPES, build_repository

NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
         "BYTES": np.object_}


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request, tmp_path_factory):
    """naiad on both gRPC transports: its own core on grpcio's C layer, and grpcio's server."""
    repo = build_repository(tmp_path_factory.mktemp("grpc") / "models")
    with NaiadProcess(repo, env={"NAIAD_GRPC_SERVER": request.param}) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(url=server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield tpb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def add_sub_inputs(a: np.ndarray, b: np.ndarray, module=grpcclient) -> list:
    i0 = module.InferInput("INPUT0", list(a.shape), "FP32")
    i0.set_data_from_numpy(a)
    i1 = module.InferInput("INPUT1", list(b.shape), "FP32")
    i1.set_data_from_numpy(b)
    return [i0, i1]


def code_of(exc: InferenceServerException) -> str:
    return exc.status().split(".")[-1]


def raw_add_sub(**kw) -> tpb.ModelInferRequest:
    req = tpb.ModelInferRequest(model_name=kw.get("model", "add_sub"),
                                model_version=kw.get("version", ""), id=kw.get("id", ""))
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype=kw.get("datatype", "FP32"),
                       shape=kw.get("shape", [4]))
    for _ in range(kw.get("nraw", 2)):
        req.raw_input_contents.append(kw.get("raw", np.arange(4, dtype=np.float32).tobytes()))
    return req


def assert_healthy(client) -> None:
    """The server still answers correctly after a refused request."""
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    result = client.infer("add_sub", add_sub_inputs(a, a))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


# ---------------------------------------------------------------------------
# health, metadata, configuration, statistics, repository index
# ---------------------------------------------------------------------------


def test_health_rpcs(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "2")
    assert not client.is_model_ready("no_such_model")


def test_bad_version_string_is_invalid_argument(client):
    with pytest.raises(InferenceServerException) as e:
        client.is_model_ready("add_sub", "abc")
    assert code_of(e.value) == "INVALID_ARGUMENT"
    assert "version string 'abc'" in e.value.message()


def test_server_and_model_metadata(client):
    meta = client.get_server_metadata()
    assert meta.name == "triton"
    assert "model_repository" in meta.extensions
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["extensions"] == list(meta.extensions)
    mm = client.get_model_metadata("add_sub", as_json=True)
    assert mm["name"] == "add_sub" and mm["versions"] == ["1"] and mm["platform"] == "python"
    assert mm["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["4"]}
    batched = client.get_model_metadata("tiny_classifier")
    assert list(batched.inputs[0].shape) == [-1, 4]
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert code_of(e.value) == "NOT_FOUND"
    assert e.value.message() == "Request for unknown model: 'no_such_model' is not found"


def test_model_config_is_the_completed_config(client):
    cfg = client.get_model_config("add_sub").config
    assert cfg.name == "add_sub" and cfg.backend == "python"
    assert cfg.instance_group[0].name == "add_sub_0"
    assert list(cfg.input[0].dims) == [4]
    as_json = client.get_model_config("tiny_classifier", as_json=True)["config"]
    assert as_json["max_batch_size"] == 8
    assert as_json["output"][0]["label_filename"] == "labels.txt"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("no_such_model")
    assert code_of(e.value) == "NOT_FOUND"


def test_statistics_count_grpc_requests(client):
    before = client.get_inference_statistics("string_upper").model_stats[0]
    data = np.array([b"ab"], dtype=np.object_)
    inp = grpcclient.InferInput("INPUT0", [1], "BYTES")
    inp.set_data_from_numpy(data)
    client.infer("string_upper", [inp])
    after = client.get_inference_statistics("string_upper", "1", as_json=True)["model_stats"][0]
    assert after["name"] == "string_upper" and after["version"] == "1"
    assert int(after["inference_count"]) == before.inference_count + 1
    assert int(after["inference_stats"]["success"]["count"]) == \
        before.inference_stats.success.count + 1
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} >= {"add_sub", "string_upper"}


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    by_name = {m["name"]: m for m in index}
    assert by_name["add_sub"] == {"name": "add_sub", "version": "1", "state": "READY"}
    assert "repeat" in by_name
    assert client.get_model_repository_index().models[0].name == index[0]["name"]


def test_repository_index_named_repository_is_unimplemented(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.RepositoryIndex(tpb.RepositoryIndexRequest(repository_name="other"))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert e.value.details() == "'repository_name' specification is not supported"


def test_repository_control_refused_when_not_explicit(client):
    with pytest.raises(InferenceServerException) as e:
        client.load_model("add_sub")
    assert code_of(e.value) == "UNAVAILABLE"
    assert "explicit model load / unload is not allowed" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("add_sub")
    assert code_of(e.value) == "UNAVAILABLE"


def test_grpc_health_service(server):
    from naiad.protocol import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            next(iter(health.Watch(health_pb2.HealthCheckRequest(), timeout=5)))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------------
# ModelInfer
# ---------------------------------------------------------------------------


def test_add_sub_infer(client):
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    result = client.infer("add_sub", add_sub_inputs(a, b), request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    resp = result.get_response()
    assert resp.id == "r-1" and resp.model_name == "add_sub" and resp.model_version == "1"
    assert result.get_output("OUTPUT0").datatype == "FP32"
    assert list(result.get_output("OUTPUT0").shape) == [4]


def test_requested_output_subset_and_version(client):
    a = np.arange(4, dtype=np.float32)
    result = client.infer("add_sub", add_sub_inputs(a, a), model_version="1",
                          outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros(4, np.float32))
    assert len(result.get_response().raw_output_contents) == 1


def test_request_compression(client):
    a = np.arange(4, dtype=np.float32)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("add_sub", add_sub_inputs(a, a), compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


@pytest.mark.parametrize("datatype", WIRE_TYPES)
def test_every_datatype_round_trips_raw(client, datatype):
    if datatype == "BYTES":
        data = np.array([b"a", b"", b"\x00\xffz", "é".encode()], dtype=np.object_)
    elif datatype == "BOOL":
        data = np.array([True, False, True], dtype=np.bool_)
    else:
        info = np.finfo if datatype.startswith("FP") else np.iinfo
        dt = NUMPY[datatype]
        data = np.array([info(dt).min, 0, 1, info(dt).max], dtype=dt)
    inp = grpcclient.InferInput(f"IN_{datatype}", list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    result = client.infer("identity", [inp],
                          outputs=[grpcclient.InferRequestedOutput(f"OUT_{datatype}")])
    out = result.as_numpy(f"OUT_{datatype}")
    assert result.get_output(f"OUT_{datatype}").datatype == datatype
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        assert out.dtype == data.dtype
        np.testing.assert_array_equal(out, data)


def test_bf16_round_trips(client):
    import ml_dtypes  # tritonclient's own dependency for BF16

    values = np.array([[1.0, 2.0, -3.0], [0.5, 256.0, -0.125]], dtype=np.float32)
    inp = grpcclient.InferInput("x", [2, 3], "BF16")
    inp.set_data_from_numpy(values.astype(ml_dtypes.bfloat16))
    result = client.infer("bf16_identity", [inp])
    assert result.get_output("y").datatype == "BF16"
    np.testing.assert_array_equal(result.as_numpy("y").astype(np.float32), values)
    np.testing.assert_array_equal(result.as_numpy("f"), values)


def test_empty_and_multidimensional_tensors(client):
    empty = grpcclient.InferInput("IN_FP32", [0], "FP32")
    empty.set_data_from_numpy(np.zeros(0, np.float32))
    result = client.infer("identity", [empty])
    assert result.as_numpy("OUT_FP32").shape == (0,)
    strings = grpcclient.InferInput("INPUT0", [3], "BYTES")
    strings.set_data_from_numpy(np.array(["abc", "Ünï", ""], dtype=np.object_))
    result = client.infer("string_upper", [strings])
    assert result.as_numpy("OUTPUT0").tolist() == [b"ABC", "ÜNÏ".encode(), b""]
    assert result.as_numpy("LENGTH").tolist() == [3, 3, 0]


def test_classification_extension(client):
    x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    full = client.infer("tiny_classifier", [inp]).as_numpy("PROBS")[0]
    top = client.infer("tiny_classifier", [inp],
                       outputs=[grpcclient.InferRequestedOutput("PROBS", class_count=3)])
    out = top.get_output("PROBS")
    assert out.datatype == "BYTES" and list(out.shape) == [1, 3]
    entries = [e.decode().split(":") for e in top.as_numpy("PROBS")[0]]
    order = np.argsort(-full, kind="stable")[:3]
    assert [int(e[1]) for e in entries] == order.tolist()
    assert all(len(e) == 3 and e[2] for e in entries)  # score:index:label
    assert float(entries[0][0]) == pytest.approx(full[order[0]], abs=1e-6)


def test_parameters_reach_the_model(client):
    inp = grpcclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], np.int32))
    result = client.infer("params", [inp], parameters={"alpha": "x", "beta": 3, "gamma": True},
                          priority=0)
    params = json.loads(result.as_numpy("PARAMS")[0])
    assert params == {"alpha": "x", "beta": 3, "gamma": True}


def test_typed_contents_for_every_typed_field(stub):
    cases = [
        ("BOOL", "bool_contents", [True, False], np.bool_),
        ("INT8", "int_contents", [-128, 127], np.int8),
        ("INT16", "int_contents", [-5, 30000], np.int16),
        ("INT32", "int_contents", [-7, 8], np.int32),
        ("INT64", "int64_contents", [-(2 ** 40), 9], np.int64),
        ("UINT8", "uint_contents", [0, 255], np.uint8),
        ("UINT16", "uint_contents", [1, 65535], np.uint16),
        ("UINT32", "uint_contents", [1, 2 ** 32 - 1], np.uint32),
        ("UINT64", "uint64_contents", [1, 2 ** 64 - 1], np.uint64),
        ("FP32", "fp32_contents", [1.5, -2.25], np.float32),
        ("FP64", "fp64_contents", [1e300, -2.5], np.float64),
    ]
    for datatype, field, values, dt in cases:
        req = tpb.ModelInferRequest(model_name="identity")
        t = req.inputs.add(name=f"IN_{datatype}", datatype=datatype, shape=[len(values)])
        getattr(t.contents, field).extend(values)
        resp = stub.ModelInfer(req)
        assert resp.outputs[0].datatype == datatype
        got = np.frombuffer(resp.raw_output_contents[0], dtype=dt)
        np.testing.assert_array_equal(got, np.array(values, dtype=dt))
    req = tpb.ModelInferRequest(model_name="string_upper", id="typed")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[2],
                   contents=tpb.InferTensorContents(bytes_contents=[b"abc", b"d"]))
    resp = stub.ModelInfer(req)
    assert resp.id == "typed"
    assert resp.raw_output_contents[0] == b"\x03\x00\x00\x00ABC\x01\x00\x00\x00D"


def test_leftover_raw_contents_are_ignored_like_triton(stub):
    resp = stub.ModelInfer(raw_add_sub(nraw=3))
    assert np.frombuffer(resp.raw_output_contents[0], np.float32).tolist() == [0, 2, 4, 6]


def test_decoupled_model_refused_on_model_infer(client):
    inp = grpcclient.InferInput("N", [1], "INT32")
    inp.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("repeat", [inp])
    assert code_of(e.value) == "UNIMPLEMENTED"
    assert e.value.message() == ("ModelInfer RPC doesn't support models with decoupled "
                                 "transaction policy")


# (request, expected status code, text the message must contain)
BAD_REQUESTS = {
    "wrong datatype": (raw_add_sub(datatype="INT32"), "INVALID_ARGUMENT",
                       "data-type is 'INT32', but model 'add_sub' expects 'FP32'"),
    "unknown datatype": (raw_add_sub(datatype="FP8"), "INVALID_ARGUMENT",
                         "invalid datatype for input INPUT0"),
    "wrong byte size": (raw_add_sub(raw=b"\x00" * 12), "INVALID_ARGUMENT",
                        "expected 16 bytes for shape [4] of FP32, got 12"),
    "missing raw contents": (raw_add_sub(nraw=1), "INVALID_ARGUMENT",
                             "unable to find data for input tensor 'INPUT1' for model "
                             "'add_sub' in request."),
    "wrong shape": (raw_add_sub(shape=[5], raw=b"\x00" * 20), "INVALID_ARGUMENT",
                    "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [4], "
                    "got [5]"),
    "negative dimension": (raw_add_sub(shape=[-4]), "INVALID_ARGUMENT",
                           "must contain non-negative integers"),
    "huge declared shape": (raw_add_sub(shape=[2 ** 40, 2 ** 40]), "INVALID_ARGUMENT",
                            "unexpected byte size for input 'INPUT0'"),
    "unknown model": (raw_add_sub(model="no_such_model"), "NOT_FOUND",
                      "Request for unknown model: 'no_such_model' is not found"),
    "unknown version": (raw_add_sub(version="7"), "NOT_FOUND",
                        "Request for unknown model: 'add_sub' version 7 is not found"),
    "bad version": (raw_add_sub(version="abc"), "INVALID_ARGUMENT",
                    "failed to get model version from specified version string 'abc'"),
    "negative version": (raw_add_sub(version="-1"), "INVALID_ARGUMENT",
                         "invalid model version specified '-1'"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_the_right_status(stub, client, case):
    req, code, text = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code().name == code, e.value.details()
    assert text in e.value.details()
    assert_healthy(client)


def test_contents_mixed_with_raw_is_refused(stub, client):
    req = raw_add_sub()
    req.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == ("contents field must not be specified when using "
                                 "raw_input_contents for 'INPUT0' for model 'add_sub'")
    assert_healthy(client)


@pytest.mark.parametrize("field,values,message", [
    ("int_contents", [1, 2, 3, 4],
     "unexpected explicit tensor data for input tensor 'INPUT0' for model 'add_sub' of type "
     "'INT32', expected datatype 'FP32'"),
    ("fp32_contents", [1, 2, 3], "expected 16 bytes for shape [4] of FP32, got 12"),
])
def test_typed_contents_errors(stub, client, field, values, message):
    req = raw_add_sub(nraw=0)
    for t in req.inputs:
        getattr(t.contents, field).extend(values)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    assert_healthy(client)


def test_bad_parameters_are_invalid_argument(stub):
    for key, setter, text in [
        ("triton_unknown", lambda p: setattr(p, "bool_param", True), "reserved for Triton"),
        ("sequence_start", lambda p: setattr(p, "int64_param", 1), "sequence_start"),
        ("priority", lambda p: setattr(p, "int64_param", -1), "priority"),
        ("anything", lambda p: p.SetInParent(), "invalid value type for 'anything'"),
    ]:
        req = raw_add_sub()
        setter(req.parameters[key])
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in e.value.details()
    req = tpb.ModelInferRequest(model_name="tiny_classifier")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    req.outputs.add(name="PROBS").parameters["classification"].string_param = "2"
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected int64_param" in e.value.details()


def test_messages_beyond_the_4mb_default(client):
    data = (np.arange(24 << 20, dtype=np.uint32) % 251).astype(np.uint8)  # 24 MB
    inp = grpcclient.InferInput("IN_UINT8", [data.size], "UINT8")
    inp.set_data_from_numpy(data)
    result = client.infer("identity", [inp])
    out = result.as_numpy("OUT_UINT8")
    assert out.size == data.size and np.array_equal(out, data)


def test_many_requests_in_flight_at_once(client):
    """8 requests must be inside the model at the same time (a barrier) to finish."""
    results: list = []
    errors: list = []

    def call(i: int) -> None:
        inp = grpcclient.InferInput("IN", [1], "INT32")
        inp.set_data_from_numpy(np.array([i], np.int32))
        try:
            results.append(int(client.infer("barrier", [inp], client_timeout=60)
                               .as_numpy("OUT")[0]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert sorted(results) == list(range(8))


def test_client_deadline_leaves_server_healthy(client):
    inp = grpcclient.InferInput("IN", [1], "FP32")
    inp.set_data_from_numpy(np.array([1.5], np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("slow", [inp], client_timeout=0.2)
    assert code_of(e.value) == "DEADLINE_EXCEEDED"
    assert_healthy(client)


def test_async_infer_callbacks(client):
    done: queue.Queue = queue.Queue()
    for i in range(16):
        a = np.full(4, i, dtype=np.float32)
        client.async_infer("add_sub", add_sub_inputs(a, a), request_id=str(i),
                           callback=lambda result, error: done.put((result, error)))
    seen = {}
    for _ in range(16):
        result, error = done.get(timeout=30)
        assert error is None
        seen[result.get_response().id] = result.as_numpy("OUTPUT0")
    for i in range(16):
        np.testing.assert_array_equal(seen[str(i)], np.full(4, 2 * i, np.float32))


# ---------------------------------------------------------------------------
# ModelStreamInfer
# ---------------------------------------------------------------------------


def _collect_stream(server, send, expect: int, timeout: float = 30.0) -> list:
    """Open a stream, run send(client), gather ``expect`` callbacks."""
    got: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        c.start_stream(callback=lambda result, error: got.put((result, error)))
        send(c)
        out = [got.get(timeout=timeout) for _ in range(expect)]
        c.stop_stream()
        time.sleep(0.05)
        assert got.empty(), "more responses than expected"
        return out
    finally:
        c.close()


def _n_input(n: int) -> list:
    inp = grpcclient.InferInput("N", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], np.int32))
    return [inp]


def _final(result) -> bool | None:
    params = result.get_response().parameters
    return params["triton_final_response"].bool_param if "triton_final_response" in params \
        else None


def test_stream_decoupled_responses_and_final_flags(server):
    events = _collect_stream(
        server, lambda c: c.async_stream_infer("repeat", _n_input(3), request_id="d1"), 3)
    assert [e for _, e in events] == [None] * 3
    assert [int(r.as_numpy("OUT")[0]) for r, _ in events] == [0, 1, 2]
    assert {r.get_response().id for r, _ in events} == {"d1"}
    assert [_final(r) for r, _ in events] == [False, False, False]


def test_stream_empty_final_response_on_request(server):
    events = _collect_stream(server, lambda c: c.async_stream_infer(
        "repeat", _n_input(2), request_id="d2", enable_empty_final_response=True), 3)
    results = [r for r, _ in events]
    assert [_final(r) for r in results] == [False, False, True]
    last = results[-1].get_response()
    assert last.id == "d2" and last.model_name == "repeat" and not last.outputs
    assert last.model_version == ""  # the request's version string, as Triton sends it
    # a last response sent with the final flag carries triton_final_response itself
    events = _collect_stream(server, lambda c: c.async_stream_infer(
        "repeat", _n_input(102), request_id="d3", enable_empty_final_response=True), 2)
    assert [_final(r) for r, _ in events] == [False, True]
    assert [int(r.as_numpy("OUT")[0]) for r, _ in events] == [0, 1]


def test_stream_model_error_keeps_stream_open(server):
    def send(c):
        c.async_stream_infer("repeat", _n_input(-1), request_id="bad")
        c.async_stream_infer("no_such_model", _n_input(1), request_id="unknown")
        a = np.ones(4, np.float32)
        c.async_stream_infer("add_sub", add_sub_inputs(a, a), request_id="fine")

    events = _collect_stream(server, send, 3)
    errors = sorted(str(e.message()) for _, e in events if e is not None)
    assert errors == ["Request for unknown model: 'no_such_model' is not found", "negative n"]
    ok = [r for r, e in events if e is None]
    assert len(ok) == 1 and ok[0].get_response().id == "fine"
    np.testing.assert_array_equal(ok[0].as_numpy("OUTPUT0"), np.full(4, 2, np.float32))


def test_stream_interleaved_requests(server):
    """Decoupled and ordinary requests in flight together on one stream."""
    def send(c):
        c.async_stream_infer("repeat", _n_input(5), request_id="long")
        for i in range(10):
            a = np.full(4, i, np.float32)
            c.async_stream_infer("add_sub", add_sub_inputs(a, a), request_id=f"as{i}")
        c.async_stream_infer("repeat", _n_input(2), request_id="short")

    events = _collect_stream(server, send, 5 + 10 + 2)
    assert all(e is None for _, e in events)
    by_id: dict[str, list] = {}
    for r, _ in events:
        by_id.setdefault(r.get_response().id, []).append(r)
    assert [int(r.as_numpy("OUT")[0]) for r in by_id["long"]] == list(range(5))
    assert [int(r.as_numpy("OUT")[0]) for r in by_id["short"]] == [0, 1]
    # non-decoupled responses come back in request order, each marked final
    order = [r.get_response().id for r, _ in events if r.get_response().id.startswith("as")]
    assert order == [f"as{i}" for i in range(10)]
    for i in range(10):
        (r,) = by_id[f"as{i}"]
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), np.full(4, 2 * i, np.float32))
        assert _final(r) is True


def test_stream_refused_request_carries_its_id(server, stub):
    req = raw_add_sub(nraw=1, id="half")
    ok = raw_add_sub(id="whole")
    responses = list(stub.ModelStreamInfer(iter([req, ok]), timeout=30))
    assert len(responses) == 2
    assert responses[0].error_message == ("unable to find data for input tensor 'INPUT1' for "
                                          "model 'add_sub' in request.")
    assert responses[0].infer_response.id == "half"
    assert not responses[1].error_message and responses[1].infer_response.id == "whole"


def test_stream_client_cancel_leaves_server_healthy(server, client):
    c = grpcclient.InferenceServerClient(url=server.grpc_url)
    got: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    c.async_stream_infer("repeat", _n_input(50), request_id="cancelled")
    got.get(timeout=30)
    c.stop_stream(cancel_requests=True)
    c.close()
    assert_healthy(client)


# ---------------------------------------------------------------------------
# the aio client
# ---------------------------------------------------------------------------


def test_aio_client_every_call(server):
    async def main():
        c = aioclient.InferenceServerClient(url=server.grpc_url)
        try:
            assert await c.is_server_live()
            assert await c.is_server_ready()
            assert await c.is_model_ready("add_sub")
            meta = await c.get_server_metadata(as_json=True)
            assert meta["name"] == "triton"
            assert (await c.get_model_metadata("add_sub")).name == "add_sub"
            assert (await c.get_model_config("add_sub")).config.name == "add_sub"
            assert (await c.get_model_repository_index()).models
            assert (await c.get_inference_statistics("add_sub")).model_stats
            a = np.array([1, 2, 3, 4], np.float32)
            results = await asyncio.gather(*[
                c.infer("add_sub", add_sub_inputs(a * i, a, aioclient), request_id=str(i))
                for i in range(8)])
            for i, r in enumerate(results):
                assert r.get_response().id == str(i)
                np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a * i - a)
            with pytest.raises(InferenceServerException) as e:
                await c.infer("no_such_model", add_sub_inputs(a, a, aioclient))
            assert code_of(e.value) == "NOT_FOUND"

            async def requests():
                yield {"model_name": "repeat", "inputs": _aio_n(3), "request_id": "s1"}
                yield {"model_name": "add_sub", "inputs": add_sub_inputs(a, a, aioclient),
                       "request_id": "s2"}

            seen = []
            async for result, error in c.stream_infer(requests()):
                assert error is None
                seen.append((result.get_response().id, _final(result)))
                if len(seen) == 4:
                    break
            assert sorted(seen, key=str) == sorted(
                [("s1", False), ("s1", False), ("s1", False), ("s2", True)], key=str)
        finally:
            await c.close()

    asyncio.run(main())


def _aio_n(n: int) -> list:
    inp = aioclient.InferInput("N", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], np.int32))
    return [inp]


# ---------------------------------------------------------------------------
# extensions: shared memory, trace, logging
# ---------------------------------------------------------------------------


def test_log_settings(client, stub):
    settings = client.get_log_settings(as_json=True)["settings"]
    assert settings["log_info"]["bool_param"] is True
    assert settings["log_format"]["string_param"] == "default"
    updated = client.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]
    assert updated["log_verbose_level"]["uint32_param"] == 1
    back = client.update_log_settings({"log_verbose_level": 0}, as_json=True)["settings"]
    assert back["log_verbose_level"].get("uint32_param", 0) == 0
    req = tpb.LogSettingsRequest()
    req.settings["log_info"].string_param = "yes"
    with pytest.raises(grpc.RpcError) as e:
        stub.LogSettings(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "log_info" in e.value.details()


def test_trace_settings_follow_the_core(client):
    extensions = client.get_server_metadata().extensions
    if "trace" in extensions:  # the tracing subsystem is plugged in
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert "trace_level" in settings
        client.update_trace_settings(settings={"trace_rate": "7"})
        assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["7"]
    else:
        with pytest.raises(InferenceServerException) as e:
            client.get_trace_settings()
        assert code_of(e.value) == "UNIMPLEMENTED"
        assert e.value.message() == "the trace extension is not available"


def test_system_shared_memory_follows_the_core(client):
    extensions = client.get_server_metadata().extensions
    if "system_shared_memory" in extensions:  # the shared-memory subsystem is plugged in
        import tritonclient.utils.shared_memory as shm

        a = np.arange(4, dtype=np.float32)
        region = shm.create_shared_memory_region("grpc_in", "/naiad_grpc_test", 32)
        try:
            shm.set_shared_memory_region(region, [a, a])
            client.register_system_shared_memory("grpc_in", "/naiad_grpc_test", 32)
            status = client.get_system_shared_memory_status(as_json=True)
            assert "grpc_in" in status["regions"]
            inputs = add_sub_inputs(a, a)
            inputs[0].set_shared_memory("grpc_in", 16, 0)
            inputs[1].set_shared_memory("grpc_in", 16, 16)
            result = client.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
            client.unregister_system_shared_memory("grpc_in")
        finally:
            shm.destroy_shared_memory_region(region)
    else:
        for call in (client.get_system_shared_memory_status,
                     partial(client.register_system_shared_memory, "r", "/k", 16),
                     client.unregister_system_shared_memory):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert code_of(e.value) == "UNIMPLEMENTED"
            assert "system shared memory" in e.value.message()
    assert_healthy(client)


def test_cuda_shared_memory_without_gpu(client):
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    with pytest.raises(InferenceServerException) as e:
        client.get_cuda_shared_memory_status("region0")
    assert code_of(e.value) == "NOT_FOUND"
    assert e.value.message() == "Unable to find cuda shared memory region: 'region0'"
    with pytest.raises(InferenceServerException) as e:
        client.register_cuda_shared_memory("region0", b"\x00" * 64, 0, 16)
    assert code_of(e.value) == "UNIMPLEMENTED"
    assert "CUDA shared memory is not supported" in e.value.message()
    client.unregister_cuda_shared_memory("region0")  # nothing registered: nothing to remove
    client.unregister_cuda_shared_memory()


# ---------------------------------------------------------------------------
# concurrency between the two frontends
# ---------------------------------------------------------------------------


def test_http_and_grpc_served_together(server):
    """Clients of both protocols at once, each on its own thread, all answered right."""
    import tritonclient.http as httpclient

    a = np.arange(4, dtype=np.float32)

    def over_http(k: int) -> None:
        http = httpclient.InferenceServerClient(url=server.http_url)  # gevent: one per thread
        try:
            for i in range(25):
                i0 = httpclient.InferInput("INPUT0", [4], "FP32")
                i0.set_data_from_numpy(a * i)
                i1 = httpclient.InferInput("INPUT1", [4], "FP32")
                i1.set_data_from_numpy(a)
                out = http.infer("add_sub", [i0, i1]).as_numpy("OUTPUT0")
                np.testing.assert_array_equal(out, a * i + a)
        finally:
            http.close()

    def over_grpc(k: int) -> None:
        c = grpcclient.InferenceServerClient(url=server.grpc_url)
        try:
            for i in range(25):
                out = c.infer("add_sub", add_sub_inputs(a * i, a)).as_numpy("OUTPUT0")
                np.testing.assert_array_equal(out, a * i + a)
        finally:
            c.close()

    with futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(over_http if k % 2 else over_grpc, k) for k in range(8)]
        for job in jobs:
            job.result(timeout=120)
