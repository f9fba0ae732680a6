"""Big gRPC tensors without copies: the split request and the hand-joined response.

``naiad.protocol.grpc_raw`` walks the wire format of a ModelInferRequest to
take its raw_input_contents as views, and appends raw_output_contents to a
serialized response by hand. Both must read and write exactly what protobuf
does; a real server must answer big tensors from tritonclient unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import NaiadProcess
from google.protobuf.message import DecodeError

from naiad.core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from naiad.protocol import grpc_codec as codec
from naiad.protocol import grpc_raw
from naiad.protocol import grpc_service_pb2 as pb
from tests.models import build_repository

BIG = grpc_raw.MIN_SPLIT_BYTES


def _request(raws: list[bytes], extra_after: bool = True) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="identity", model_version="1", id="r-7")
    for k, raw in enumerate(raws):
        t = msg.inputs.add()
        t.name, t.datatype = f"IN_{k}", "UINT8"
        t.shape.append(len(raw))
        msg.raw_input_contents.append(raw)
    msg.outputs.add().name = "OUT_0"
    msg.parameters["sequence_id"].int64_param = 5
    return msg


def test_split_request_gives_the_raw_entries_as_views_and_the_rest_parses_alike():
    rng = np.random.default_rng(3)
    raws = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (BIG, 17, 0, 3 * BIG)]
    msg = _request(raws)
    data = msg.SerializeToString()
    rest, views = grpc_raw.split_request(data)
    assert [bytes(v) for v in views] == raws
    assert all(isinstance(v, memoryview) and v.obj is data for v in views)  # no copy
    parsed = pb.ModelInferRequest.FromString(rest)
    parsed.raw_input_contents.extend(raws)
    assert parsed == msg


def test_split_request_keeps_fields_that_follow_or_interleave_the_raw_entries():
    # protobuf accepts fields in any order: raw entries first, then the header fields
    raw_first = pb.ModelInferRequest(raw_input_contents=[b"a" * BIG, b"bc"]).SerializeToString()
    header = pb.ModelInferRequest(model_name="m", id="x").SerializeToString()
    data = raw_first + header + pb.ModelInferRequest(
        raw_input_contents=[b"d"]).SerializeToString()
    rest, views = grpc_raw.split_request(data)
    assert [bytes(v) for v in views] == [b"a" * BIG, b"bc", b"d"]
    assert pb.ModelInferRequest.FromString(rest) == pb.ModelInferRequest(model_name="m", id="x")
    assert pb.ModelInferRequest.FromString(data).raw_input_contents == [b"a" * BIG, b"bc", b"d"]


@pytest.mark.parametrize("data", [
    b"\x3a\xff\xff\xff\xff\x0f" + b"x" * 10,   # raw entry longer than the message
    b"\x0a\x05ab",                             # truncated string field
    b"\x3a" + b"\xff" * 11,                     # varint that never ends
    b"\x0b\x00",                                # wire type 3 (group start)
])
def test_split_request_refuses_malformed_bytes_so_protobuf_reports_them(data):
    assert grpc_raw.split_request(data) is None
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)


def test_parse_infer_request_decodes_big_inputs_without_copying_them():
    arr = np.arange(BIG, dtype=np.float32)
    msg = pb.ModelInferRequest(model_name="identity")
    t = msg.inputs.add()
    t.name, t.datatype = "IN_FP32", "FP32"
    t.shape.append(arr.size)
    msg.raw_input_contents.append(arr.tobytes())
    data = msg.SerializeToString()
    parsed, raw = codec.parse_infer_request(data)
    request, _ = codec.decode_infer_request(parsed, None, raw)
    got = request.inputs["IN_FP32"].data
    np.testing.assert_array_equal(got, arr)
    assert np.shares_memory(got, np.frombuffer(data, dtype=np.uint8))
    # a small message takes protobuf's own path, with the same result
    small, small_raw = codec.parse_infer_request(_request([b"\x01\x02"]).SerializeToString())
    assert list(small_raw) == [b"\x01\x02"]


@pytest.mark.parametrize("n", [4, BIG // 4, BIG])
def test_serialized_response_is_byte_for_byte_what_protobuf_writes(n):
    out0 = np.arange(n, dtype=np.float32)
    out1 = np.arange(3, dtype=np.int64)
    request = InferenceRequest("identity", {}, id="q",
                               requested_outputs={"OUT_A": RequestedOutput("OUT_A"),
                                                  "OUT_B": RequestedOutput("OUT_B")})
    response = InferenceResponse([Tensor("OUT_A", "FP32", out0), Tensor("OUT_B", "INT64", out1)],
                                 parameters={"note": "x"}, model_name="identity",
                                 model_version=1, id="q")
    want = codec.encode_infer_response(response, request).SerializeToString()
    got = codec.serialize_infer_response(response, request)
    assert got == want
    back = pb.ModelInferResponse.FromString(got)
    assert back.raw_output_contents[0] == out0.tobytes()
    assert back.raw_output_contents[1] == out1.tobytes()


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request, tmp_path_factory):
    repo = build_repository(tmp_path_factory.mktemp("grpc_raw") / "models")
    with NaiadProcess(repo, env={"NAIAD_GRPC_SERVER": request.param}) as proc:
        yield proc


def test_big_tensors_round_trip_through_tritonclient(server):
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        rng = np.random.default_rng(11)
        data = {"FP32": rng.standard_normal(2 * BIG).astype(np.float32),
                "UINT8": rng.integers(0, 256, BIG + 3, dtype=np.uint8),
                "INT64": np.arange(5, dtype=np.int64)}
        inputs = []
        for t, arr in data.items():
            i = grpcclient.InferInput(f"IN_{t}", list(arr.shape), t)
            i.set_data_from_numpy(arr)
            inputs.append(i)
        outputs = [grpcclient.InferRequestedOutput(f"OUT_{t}") for t in data]
        for _ in range(3):
            result = client.infer("identity", inputs, outputs=outputs)
            for t, arr in data.items():
                np.testing.assert_array_equal(result.as_numpy(f"OUT_{t}"), arr)
    finally:
        client.close()


@pytest.mark.parametrize("version,rid", [(1, ""), (-1, "req-é-42"), (12345, "x" * 300)])
def test_plain_responses_are_written_byte_for_byte_as_protobuf_does(version, rid):
    outputs = [Tensor("OUT_FP32", "FP32", np.arange(6, dtype=np.float32).reshape(2, 3)),
               Tensor("OUT_EMPTY", "INT64", np.zeros((0, 4), dtype=np.int64)),
               Tensor("OUT_BYTES", "BYTES", np.array([b"ab", b"", "ü".encode()], dtype=object)),
               Tensor("OUT_SCALAR", "UINT8", np.array(7, dtype=np.uint8)),
               Tensor("OUT_BIG_DIM", "BOOL", np.ones((1, 300), dtype=np.bool_)),
               Tensor("ÜNICODE", "FP16", np.ones(2, dtype=np.float16))]
    request = InferenceRequest("m-ü", {}, id=rid)
    response = InferenceResponse(outputs, model_name="m-ü", model_version=version, id=rid)
    want = codec.encode_infer_response(response, request).SerializeToString()
    for _ in range(2):  # the second time from the cached output descriptions
        assert codec.serialize_infer_response(response, request) == want
