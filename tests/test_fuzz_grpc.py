"""Seeded random-mutation fuzzing of the gRPC frontend: never INTERNAL/UNKNOWN, never a hang.

Real requests built with tritonclient's own protobuf classes (ModelInfer with
raw and typed contents, BYTES, parameters, every metadata, repository,
statistics, trace and shared-memory RPC, health) are serialized, mutated —
protobuf fields set to odd values through their descriptors, and the bytes
themselves — and sent to each RPC over a raw grpcio channel (identity
serializers), on both of naiad's gRPC transports. Streams get sequences of
mutated messages. Every call must end within its deadline with OK or a client
status (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL, UNKNOWN or
DEADLINE_EXCEEDED; afterwards the server still serves and logged no unhandled
error.

``NAIAD_FUZZ_SEED`` and ``NAIAD_FUZZ_ROUNDS`` change the seed and the number of calls.
"""

from __future__ import annotations

import math
import os
import random
import struct
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import service_pb2 as pb

from tests.conftest import EXAMPLES, NaiadProcess
from tests.fuzzing import ODD_SCALARS, mutate_bytes

SEED = int(os.environ.get("NAIAD_FUZZ_SEED", "1313"))
ROUNDS = int(os.environ.get("NAIAD_FUZZ_ROUNDS", "2000"))
DEADLINE_S = 20.0
SERVICE = "/inference.GRPCInferenceService/"
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS}


def _infer(model: str, inputs: list[tuple], outputs=(), **fields) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id="fuzz", **fields)
    for name, datatype, shape, raw in inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(raw)
    for name in outputs:
        req.outputs.add(name=name)
    return req


def seeds(shm_key: str) -> list[tuple[str, object]]:
    """(rpc, message) pairs that an unmutated server answers OK."""
    a = np.arange(4, dtype=np.float32).tobytes()
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"hello", b"world"))
    typed = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        t = typed.inputs.add(name=name, datatype="FP32", shape=[4])
        t.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    typed.parameters["custom"].string_param = "x"
    typed.parameters["priority"].uint64_param = 0
    classify = _infer("tiny_classifier", [("INPUT0", "FP32", [1, 4],
                                           np.ones((1, 4), np.float32).tobytes())])
    classify.outputs.add(name="PROBS").parameters["classification"].int64_param = 3
    load = pb.RepositoryModelLoadRequest(model_name="string_upper")
    trace = pb.TraceSettingRequest()
    trace.settings["trace_rate"].value.append("10")
    model_trace = pb.TraceSettingRequest(model_name="add_sub")
    model_trace.settings["trace_level"].value.append("OFF")
    return [
        ("ModelInfer", _infer("add_sub", [("INPUT0", "FP32", [4], a), ("INPUT1", "FP32", [4], a)],
                              outputs=["OUTPUT0"])),
        ("ModelInfer", typed),
        ("ModelInfer", _infer("string_upper", [("INPUT0", "BYTES", [2], words)])),
        ("ModelInfer", _infer("simple_onnx", [("INPUT0", "FP32", [1, 16],
                                               np.ones((1, 16), np.float32).tobytes())])),
        ("ModelInfer", classify),
        ("ServerLive", pb.ServerLiveRequest()),
        ("ServerReady", pb.ServerReadyRequest()),
        ("ModelReady", pb.ModelReadyRequest(name="add_sub", version="1")),
        ("ServerMetadata", pb.ServerMetadataRequest()),
        ("ModelMetadata", pb.ModelMetadataRequest(name="add_sub")),
        ("ModelConfig", pb.ModelConfigRequest(name="tiny_classifier", version="")),
        ("ModelStatistics", pb.ModelStatisticsRequest(name="add_sub")),
        ("RepositoryIndex", pb.RepositoryIndexRequest(ready=True)),
        ("RepositoryModelLoad", load),
        ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="no_such_model")),
        ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest()),
        ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
            name="fuzz_region", key=shm_key, offset=0, byte_size=16)),
        ("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(
            name="fuzz_region")),
        ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest()),
        ("CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest(name="x")),
        ("TraceSetting", trace),
        ("TraceSetting", model_trace),
    ]


# -- mutation of protobuf messages through their descriptors ---------------------------------

_INTS = {FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32:
         (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
         FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
         FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
         FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED64:
         (0, 2**64 - 1), FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
         FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1)}


def _scalar(rng: random.Random, field: FieldDescriptor):
    t = field.type
    if t in _INTS:
        lo, hi = _INTS[t]
        return rng.choice([lo, hi, 0, -1 if lo < 0 else 1, 1, 3, 4, 16, rng.randint(lo, hi)])
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, math.nan, math.inf, -math.inf, 1e30, 3.5])
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice([s for s in ODD_SCALARS if isinstance(s, str)]
                          + ["add_sub", "INPUT0", "OUTPUT0", "binary_data", "classification",
                             "sequence_id", "priority", "timeout", "shared_memory_region",
                             "-1", "1", "2"])
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 3, 4, 15, 16, 17, 64])))
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    raise AssertionError(t)


def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf 6 (label is deprecated there)
    if flag is not None:
        return flag if isinstance(flag, bool) else flag()
    return field.label == FieldDescriptor.LABEL_REPEATED


def mutate_message(rng: random.Random, msg, depth: int = 0) -> None:
    fields = msg.DESCRIPTOR.fields
    if not fields:
        return
    field = rng.choice(fields)
    value = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        val_field = field.message_type.fields_by_name["value"]
        key = _scalar(rng, key_field)
        if val_field.message_type is None:
            value[key] = _scalar(rng, val_field)
        elif rng.random() < 0.2 and len(value):
            del value[rng.choice(list(value))]
        else:
            mutate_message(rng, value[key], depth + 1)
    elif _repeated(field):
        action = rng.random()
        if action < 0.2:
            del value[:]
        elif field.message_type is not None:
            if len(value) and action < 0.5:
                value.add().CopyFrom(rng.choice(list(value)))  # a duplicate entry
            elif len(value) and depth < 4:
                mutate_message(rng, rng.choice(list(value)), depth + 1)
            else:
                mutate_message(rng, value.add(), depth + 1)
        else:
            for _ in range(rng.choice([1, 1, 2, 5])):
                value.append(_scalar(rng, field))
    elif field.message_type is not None:
        if depth < 4:
            mutate_message(rng, value, depth + 1)
    else:
        setattr(msg, field.name, _scalar(rng, field))


def mutated(rng: random.Random, msg) -> bytes:
    copy = type(msg)()
    copy.CopyFrom(msg)
    if rng.random() < 0.7:
        for _ in range(rng.randint(1, 3)):
            mutate_message(rng, copy)
    data = copy.SerializeToString()
    if rng.random() < 0.35:
        data = mutate_bytes(rng, data)
    return data


# -- the tests -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shm_key():
    region = shared_memory.SharedMemory(name=f"naiad_gfuzz_{os.getpid() % 10**8:08d}",
                                        create=True, size=64)
    try:
        yield "/" + region.name.lstrip("/")
    finally:
        region.close()
        region.unlink()


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request):
    with NaiadProcess(EXAMPLES, "--model-control-mode=explicit", "--load-model=*",
                      env={"NAIAD_GRPC_SERVER": request.param}) as proc:
        yield proc


@pytest.fixture
def channel(server):
    ch = grpc.insecure_channel(server.grpc_url, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    yield ch
    ch.close()


def _unary(channel, rpc: str):
    return channel.unary_unary(SERVICE + rpc, request_serializer=None,
                               response_deserializer=None)


def test_seeds_are_answered_ok(channel, shm_key):
    for rpc, msg in seeds(shm_key):
        _unary(channel, rpc)(msg.SerializeToString(), timeout=DEADLINE_S)


def test_mutated_messages_never_get_internal(channel, shm_key):
    rng = random.Random(SEED)
    pool = seeds(shm_key)
    rpcs = sorted({rpc for rpc, _ in pool})
    codes: dict[str, int] = {}
    for i in range(ROUNDS):
        rpc, msg = rng.choice(pool)
        data = mutated(rng, msg)
        if rng.random() < 0.05:  # a message sent to another RPC than its own
            rpc = rng.choice(rpcs)
        where = f"seed {SEED} round {i}: {rpc} {data[:200]!r}"
        try:
            _unary(channel, rpc)(data, timeout=DEADLINE_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            assert code not in FORBIDDEN, (code, err.details(), where)
        codes[code.name] = codes.get(code.name, 0) + 1
    assert codes.get("OK", 0) > ROUNDS // 10, codes
    assert codes.get("INVALID_ARGUMENT", 0) > ROUNDS // 10, codes


def test_mutated_streams(channel, shm_key):
    """ModelStreamInfer: each bad message gets its error in the stream; the stream ends OK."""
    rng = random.Random(SEED + 1)
    infers = [m for rpc, m in seeds(shm_key) if rpc == "ModelInfer"]
    stream = channel.stream_stream(SERVICE + "ModelStreamInfer", request_serializer=None,
                                   response_deserializer=pb.ModelStreamInferResponse.FromString)
    for i in range(max(4, ROUNDS // 20)):
        sent = [mutated(rng, rng.choice(infers)) if rng.random() < 0.8
                else rng.choice(infers).SerializeToString() for _ in range(rng.randint(1, 8))]
        try:
            answers = list(stream(iter(sent), timeout=DEADLINE_S))
        except grpc.RpcError as err:
            assert err.code() not in FORBIDDEN, (err.code(), err.details(), i, sent)
            continue
        assert len(answers) == len(sent), (i, sent, answers)
        for answer in answers:
            if answer.error_message:
                assert "Internal" not in answer.error_message


def test_server_serves_after_fuzzing(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live()
    client.load_model("add_sub")
    a = np.arange(4, dtype=np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [4], "FP32"),
              grpcclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist() == [0, 2, 4, 6]
    log = server.output()
    assert "unhandled error" not in log, log[-3000:]
