"""The system shared-memory extension with tritonclient's own helpers (inference through
regions over HTTP and gRPC; each protocol's error codes), the registry's bounds checks, and
CUDA shared memory answering clearly without a GPU."""

from __future__ import annotations

import mmap
import os
import uuid

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    serialize_byte_tensor,
    serialized_byte_size,
)

from naiad.core.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported
from naiad.core.shared_memory import (
    PRIVATE_MAP_MIN_BYTES,
    CudaSharedMemoryManager,
    SystemSharedMemoryManager,
)
from naiad.core.types import Tensor
from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, copy_example
from tests.models import write_simple


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("shm") / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    copy_example(repo, "string_upper")
    write_simple(repo)
    with NaiadProcess(repo) as proc:
        yield proc


@pytest.fixture
def regions():
    """Creates POSIX shared memory regions with tritonclient; destroys them afterwards."""
    made = []

    def make(size: int):
        key = f"/naiad_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.http_url)
    c.unregister_system_shared_memory()
    yield c
    c.unregister_system_shared_memory()
    c.close()


def _add_sub(client, in_region, out_region, in_offsets=(0, 16), in_sizes=(16, 16),
             out_offsets=(0, 16), out_sizes=(16, 16), module=httpclient):
    inputs = []
    for name, off, size in zip(("INPUT0", "INPUT1"), in_offsets, in_sizes):
        i = module.InferInput(name, [4], "FP32")
        i.set_shared_memory(in_region, size, off)
        inputs.append(i)
    outputs = []
    for name, off, size in zip(("OUTPUT0", "OUTPUT1"), out_offsets, out_sizes):
        o = module.InferRequestedOutput(name)
        o.set_shared_memory(out_region, size, off)
        outputs.append(o)
    return client.infer("add_sub", inputs, outputs=outputs)


@pytest.fixture(params=PROTOCOLS)
def protocol_client(request, server):
    """(protocol, tritonclient module, client) for each protocol; no region registered."""
    module, c = triton_client(request.param, server)
    c.unregister_system_shared_memory()
    yield request.param, module, c
    c.unregister_system_shared_memory()
    c.close()


def _status(protocol: str, client, *name: str):
    """The status reply as each protocol writes it (Triton's shapes)."""
    if protocol == "http":
        return client.get_system_shared_memory_status(*name)
    return client.get_system_shared_memory_status(*name, as_json=True)


def _wire_status(protocol: str, regions: list[tuple[str, str, int]]):
    if protocol == "http":
        return [{"name": n, "key": k, "offset": 0, "byte_size": size} for n, k, size in regions]
    return {"regions": {n: {"name": n, "key": k, "byte_size": str(size)}
                        for n, k, size in regions}} if regions else {}


def _body_has_no_output_data(protocol: str, result) -> bool:
    if protocol == "http":
        return all("data" not in o and "parameters" not in o
                   for o in result.get_response()["outputs"])
    # empty raw contents, as Triton sends: the data is in the region
    return all(not raw for raw in result.get_response().raw_output_contents)


def test_inference_through_shared_memory_with_tritonclient(protocol_client, regions):
    protocol, module, client = protocol_client
    in_key, in_handle = regions(32)
    out_key, out_handle = regions(32)
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("input_data", in_key, 32)
    client.register_system_shared_memory("output_data", out_key, 32)
    assert _status(protocol, client) == _wire_status(
        protocol, [("input_data", in_key, 32), ("output_data", out_key, 32)])
    assert _status(protocol, client, "input_data") == _wire_status(
        protocol, [("input_data", in_key, 32)])

    result = _add_sub(client, "input_data", "output_data", module=module)
    # outputs came through the region, not the body
    assert _body_has_no_output_data(protocol, result)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [4]), a + b)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_handle, np.float32, [4], offset=16), a - b)

    # a new request sees new data in the same region
    shm.set_shared_memory_region(in_handle, [b, a])
    _add_sub(client, "input_data", "output_data", module=module)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_handle, np.float32, [4], offset=16), b - a)

    client.unregister_system_shared_memory("input_data")
    assert _status(protocol, client) == _wire_status(protocol, [("output_data", out_key, 32)])
    client.unregister_system_shared_memory()
    assert _status(protocol, client) == _wire_status(protocol, [])


def test_the_tritonclient_shm_example_flow(client, regions):
    """The steps of tritonclient's simple_http_shm_client example, against its 'simple' model."""
    client.unregister_cuda_shared_memory()
    a = np.arange(16, dtype=np.int32)
    b = np.ones(16, dtype=np.int32)
    size = a.size * a.itemsize
    out_key, out_handle = regions(size * 2)
    client.register_system_shared_memory("output_data", out_key, size * 2)
    in_key, in_handle = regions(size * 2)
    shm.set_shared_memory_region(in_handle, [a])
    shm.set_shared_memory_region(in_handle, [b], offset=size)
    client.register_system_shared_memory("input_data", in_key, size * 2)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"),
              httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", size)
    inputs[1].set_shared_memory("input_data", size, offset=size)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)]
    outputs[0].set_shared_memory("output_data", size)
    outputs[1].set_shared_memory("output_data", size, offset=size)
    results = client.infer("simple", inputs, outputs=outputs)
    out0, out1 = results.get_output("OUTPUT0"), results.get_output("OUTPUT1")
    assert out0["datatype"] == "INT32" and out0["shape"] == [1, 16]
    got0 = shm.get_contents_as_numpy(out_handle, np.int32, out0["shape"])
    got1 = shm.get_contents_as_numpy(out_handle, np.int32, out1["shape"], offset=size)
    np.testing.assert_array_equal(got0[0], a + b)
    np.testing.assert_array_equal(got1[0], a - b)
    assert len(client.get_system_shared_memory_status()) == 2
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_registration_with_an_offset_into_the_object(client, regions):
    key, handle = regions(4096 + 48)
    data = np.arange(12, dtype=np.float32)
    shm.set_shared_memory_region(handle, [data], offset=4096)
    # the region starts 4096 + 8 bytes into the object: inputs are offsets into the region
    client.register_system_shared_memory("windowed", key, 40, offset=4096 + 8)
    result = client.infer("add_sub", [
        _shm_input("INPUT0", "windowed", 16, 0), _shm_input("INPUT1", "windowed", 16, 16)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data[2:6] + data[6:10])


def _shm_input(name, region, size, offset):
    i = httpclient.InferInput(name, [4], "FP32")
    i.set_shared_memory(region, size, offset)
    return i


def test_out_of_bounds_and_unknown_regions_are_refused(client, regions):
    in_key, in_handle = regions(32)
    out_key, _ = regions(32)
    shm.set_shared_memory_region(in_handle, [np.ones(8, np.float32)])

    def refused(fn, status, text):
        with pytest.raises(InferenceServerException) as e:
            fn()
        assert e.value.status() == str(status), e.value
        assert text in e.value.message(), e.value.message()

    refused(lambda: client.register_system_shared_memory("big", in_key, 64), 400,
            "exceeds the 32 bytes")
    refused(lambda: client.register_system_shared_memory("off", in_key, 16, 24), 400,
            "exceeds the 32 bytes")
    refused(lambda: client.register_system_shared_memory("nokey", "/naiad_no_such_key", 16),
            400, "Unable to open shared memory region: '/naiad_no_such_key'")
    client.register_system_shared_memory("in", in_key, 32)
    client.register_system_shared_memory("out", out_key, 32)
    refused(lambda: client.register_system_shared_memory("in", in_key, 32), 400,
            "shared memory region 'in' already in manager")
    refused(lambda: _add_sub(client, "in", "out", in_offsets=(0, 24)), 400,
            "Invalid offset + byte size for shared memory region: 'in'")
    refused(lambda: _add_sub(client, "in", "out", in_sizes=(16, 8)), 400,
            "input byte size mismatch for input 'INPUT1'. Expected 16, got 8")
    refused(lambda: _add_sub(client, "in", "out", out_offsets=(0, 24)), 400,
            "Invalid offset + byte size for shared memory region: 'out'")
    refused(lambda: _add_sub(client, "in", "out", out_sizes=(16, 8)), 400,
            "shared memory size specified with the request for output 'OUTPUT1' (8 bytes) "
            "should be at least 16 bytes to hold the results")
    refused(lambda: _add_sub(client, "nowhere", "out"), 404,
            "Unable to find shared memory region: 'nowhere'")
    refused(lambda: _add_sub(client, "in", "nowhere"), 404,
            "Unable to find shared memory region: 'nowhere'")
    refused(lambda: client.get_system_shared_memory_status("nowhere"), 404,
            "Unable to find system shared memory region: 'nowhere'")
    # unregistering an unknown region is not an error, as in Triton
    client.unregister_system_shared_memory("nowhere")


def test_hostile_register_bodies_are_refused(server, client):
    base = server.base + "/v2/systemsharedmemory"
    for name, body, text in [
        ("a", {"key": "/../../etc/passwd", "offset": 0, "byte_size": 16}, "invalid shared memory key"),
        ("b", {"key": "/x/y", "offset": 0, "byte_size": 16}, "invalid shared memory key"),
        ("c", {"key": "/k", "offset": -1, "byte_size": 16}, "non-negative integer"),
        ("d", {"key": "/k", "offset": 0, "byte_size": "16"}, "non-negative integer"),
        ("e", {"offset": 0, "byte_size": 16}, "no 'key' field"),
        ("f", {"key": "/k", "offset": 0}, "no 'byte_size' field"),
        ("g", {"key": "/k", "offset": 0, "byte_size": 0}, "byte_size must be > 0"),
    ]:
        r = requests.post(f"{base}/region/{name}/register", json=body, timeout=10)
        assert r.status_code == 400, (name, r.text)
        assert text in r.json()["error"], (name, r.text)
    r = requests.post(f"{base}/register", json={"key": "/k", "byte_size": 8}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == \
        "'region name' is necessary to register system shared memory region"
    assert requests.get(f"{base}/status", timeout=10).json() == []


def test_output_cannot_ask_for_both_shared_memory_and_binary_data(server, client, regions):
    key, _ = regions(32)
    client.register_system_shared_memory("out", key, 32)
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}
                       for n in ("INPUT0", "INPUT1")],
            "outputs": [{"name": "OUTPUT0", "parameters": {
                "shared_memory_region": "out", "shared_memory_byte_size": 16,
                "binary_data": True}}]}
    r = requests.post(server.base + "/v2/models/add_sub/infer", json=body, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == "Output can't set both 'shared_memory_region' and 'binary_data'"


def test_bytes_tensors_through_shared_memory(client, regions):
    words = np.array([b"hello", b"shared", b"memory"], dtype=np.object_)
    data = serialize_byte_tensor(words)
    size = serialized_byte_size(data)
    in_key, in_handle = regions(size)
    out_key, out_handle = regions(256)
    shm.set_shared_memory_region(in_handle, [data])
    client.register_system_shared_memory("words", in_key, size)
    client.register_system_shared_memory("upper", out_key, 256)
    i = httpclient.InferInput("INPUT0", [3], "BYTES")
    i.set_shared_memory("words", size)
    o = httpclient.InferRequestedOutput("OUTPUT0")
    o.set_shared_memory("upper", 256)
    result = client.infer("string_upper", [i], outputs=[o, httpclient.InferRequestedOutput(
        "LENGTH")])
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [5, 6, 6])
    raw = shm.get_contents_as_numpy(out_handle, np.uint8, [256])
    got = deserialize_bytes_tensor(raw.tobytes()[:4 * 3 + 17])
    assert list(got) == [b"HELLO", b"SHARED", b"MEMORY"]


def test_cuda_shared_memory_answers_clearly_without_a_gpu(server):
    base = server.base + "/v2/cudasharedmemory"
    assert requests.get(f"{base}/status", timeout=10).json() == []
    r = requests.get(f"{base}/region/x/status", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"] == "Unable to find cuda shared memory region: 'x'"
    r = requests.post(f"{base}/region/x/register",
                      json={"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 16},
                      timeout=10)
    assert r.status_code == 501
    assert "CUDA shared memory is not supported" in r.json()["error"]
    r = requests.post(f"{base}/region/x/register", json={"device_id": 0}, timeout=10)
    assert r.status_code == 400 and "raw_handle" in r.json()["error"]
    assert requests.post(f"{base}/region/x/unregister", timeout=10).status_code == 200
    assert requests.post(f"{base}/unregister", timeout=10).status_code == 200
    meta = requests.get(server.base + "/v2", timeout=10).json()
    assert "system_shared_memory" in meta["extensions"]
    assert "cuda_shared_memory" in meta["extensions"]


# -- gRPC's own status codes ------------------------------------------------------------------


@pytest.fixture
def grpc_client(server):
    _, c = triton_client("grpc", server)
    c.unregister_system_shared_memory()
    yield c
    c.unregister_system_shared_memory()
    c.close()


def _grpc_add_sub(client, in_region="in", out_region="out", in_off=16, out_size=16):
    import tritonclient.grpc as grpcclient

    return _add_sub(client, in_region, out_region, in_offsets=(0, in_off),
                    out_sizes=(16, out_size), module=grpcclient)


def test_grpc_shared_memory_errors(grpc_client, regions):
    client = grpc_client
    in_key, _ = regions(32)
    out_key, _ = regions(32)

    def code(fn):
        with pytest.raises(InferenceServerException) as e:
            fn()
        return e.value.status(), e.value.message()

    client.register_system_shared_memory("in", in_key, 32)
    client.register_system_shared_memory("out", out_key, 32)
    assert code(lambda: client.register_system_shared_memory("in", in_key, 32)) == \
        ("StatusCode.ALREADY_EXISTS", "shared memory region 'in' already in manager")
    status, _ = code(lambda: client.register_system_shared_memory("big", in_key, 64))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert code(lambda: client.get_system_shared_memory_status("x")) == \
        ("StatusCode.NOT_FOUND", "Unable to find system shared memory region: 'x'")
    assert code(lambda: _grpc_add_sub(client, in_off=24)) == \
        ("StatusCode.INVALID_ARGUMENT",
         "Invalid offset + byte size for shared memory region: 'in'")
    status, message = code(lambda: _grpc_add_sub(client, out_size=8))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "should be at least 16 bytes to hold the results" in message
    assert code(lambda: _grpc_add_sub(client, in_region="nowhere"))[0] == "StatusCode.NOT_FOUND"


def test_grpc_cuda_shared_memory_without_a_gpu(grpc_client):
    client = grpc_client
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    with pytest.raises(InferenceServerException) as e:
        client.get_cuda_shared_memory_status("x")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        client.register_cuda_shared_memory("x", b"\0" * 64, 0, 16)
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    client.unregister_cuda_shared_memory("x")
    client.unregister_cuda_shared_memory()


# -- the registry itself -------------------------------------------------------------------


@pytest.fixture
def raw_region():
    made = []

    def make(size: int):
        key = f"/naiad_unit_{uuid.uuid4().hex[:12]}"
        fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
        os.close(fd)
        made.append((key, mm))
        return key, mm

    yield make
    for key, mm in made:
        mm.close()
        os.unlink(f"/dev/shm{key}")


def test_large_inputs_are_private_views_that_survive_unregister(raw_region):
    size = PRIVATE_MAP_MIN_BYTES * 2
    key, mm = raw_region(size)
    src = np.arange(size // 4, dtype=np.float32)
    mm[:] = src.tobytes()
    mgr = SystemSharedMemoryManager()
    mgr.register("big", key, 0, size)
    arr = mgr.read_input("big", 0, size, "FP32", (size // 4,), "X")
    np.testing.assert_array_equal(arr, src)
    arr[0] = -1.0  # the model may write into its input: the client's memory is untouched
    assert np.frombuffer(mm, np.float32, count=1)[0] == 0.0
    small = mgr.read_input("big", 16, 16, "FP32", (4,), "Y")
    small[:] = 7.0
    assert np.frombuffer(mm, np.float32, count=4, offset=16).tolist() == [4.0, 5.0, 6.0, 7.0]
    mgr.unregister("big")
    assert arr[1] == 1.0 and arr[-1] == src[-1]  # still readable after unregistering
    with pytest.raises(NotFound):
        mgr.read_input("big", 0, 16, "FP32", (4,), "X")


def test_registry_checks_sizes_before_touching_memory(raw_region):
    key, mm = raw_region(64)
    mgr = SystemSharedMemoryManager()
    mgr.register("r", key, 0, 64)
    with pytest.raises(AlreadyExists):
        mgr.register("r", key, 0, 64)
    with pytest.raises(InvalidArgument, match="input byte size mismatch"):
        mgr.read_input("r", 0, 64, "FP32", (1 << 40,), "X")  # a huge shape over 64 bytes
    with pytest.raises(InvalidArgument, match="Invalid offset"):
        mgr.read_input("r", 60, 8, "FP32", (2,), "X")
    with pytest.raises(InvalidArgument, match="non-negative"):
        mgr.read_input("r", -4, 8, "FP32", (2,), "X")
    with pytest.raises(InvalidArgument, match="cannot hold"):
        mgr.read_input("r", 0, 8, "BYTES", (5,), "S")
    out = Tensor("O", "INT32", np.array([1, 2, 3], dtype=np.int32))
    assert mgr.write_output(out, {"shared_memory_region": "r", "shared_memory_byte_size": 12,
                                  "shared_memory_offset": 52}) == {}
    assert np.frombuffer(mm, np.int32, count=3, offset=52).tolist() == [1, 2, 3]
    with pytest.raises(InvalidArgument, match="Invalid offset"):
        mgr.write_output(out, {"shared_memory_region": "r", "shared_memory_byte_size": 12,
                               "shared_memory_offset": 56})
    mgr.close()
    assert mgr.status() == []


def test_cuda_registry_never_registers():
    cuda = CudaSharedMemoryManager()
    assert cuda.status() == []
    with pytest.raises(Unsupported):
        cuda.register("x", b"\0" * 64, 0, 16)
    cuda.unregister("x")
    cuda.unregister()
