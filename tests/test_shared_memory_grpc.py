"""System shared memory over gRPC with tritonclient.grpc (shapes and codes as Triton 2.51).

Runs once the gRPC frontend (naiad.frontends.grpc) is part of the build; until then pytest
reports these as skipped, by that reason.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

pytest.importorskip("naiad.frontends.grpc", reason="the gRPC frontend is not in this build")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.conftest import NaiadProcess, copy_example  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("shm_grpc") / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    with NaiadProcess(repo) as proc:
        yield proc


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    c.unregister_system_shared_memory()
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions():
    made = []

    def make(size):
        key = f"/naiad_grpc_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, size)
        made.append(handle)
        return key, handle

    yield make
    for h in made:
        shm.destroy_shared_memory_region(h)


def _add_sub(client, in_region="in", out_region="out", in_off=16, out_size=16):
    inputs = []
    for name, off in (("INPUT0", 0), ("INPUT1", in_off)):
        i = grpcclient.InferInput(name, [4], "FP32")
        i.set_shared_memory(in_region, 16, off)
        inputs.append(i)
    outputs = []
    for name, off, size in (("OUTPUT0", 0, 16), ("OUTPUT1", 16, out_size)):
        o = grpcclient.InferRequestedOutput(name)
        o.set_shared_memory(out_region, size, off)
        outputs.append(o)
    return client.infer("add_sub", inputs, outputs=outputs)


def test_grpc_inference_through_shared_memory(client, regions):
    in_key, in_handle = regions(32)
    out_key, out_handle = regions(32)
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([5, 6, 7, 8], np.float32)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("in", in_key, 32)
    client.register_system_shared_memory("out", out_key, 32)
    status = client.get_system_shared_memory_status(as_json=True)
    assert status == {"regions": {
        "in": {"name": "in", "key": in_key, "byte_size": "32"},
        "out": {"name": "out", "key": out_key, "byte_size": "32"}}}
    result = _add_sub(client)
    # no data in the response (empty raw contents, as Triton sends): it is in the region
    assert all(not raw for raw in result.get_response().raw_output_contents)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [4]), a + b)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_handle, np.float32, [4], offset=16), a - b)
    client.unregister_system_shared_memory("in")
    assert list(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["out"]


def test_grpc_shared_memory_errors(client, regions):
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
    assert code(lambda: _add_sub(client, in_off=24)) == \
        ("StatusCode.INVALID_ARGUMENT",
         "Invalid offset + byte size for shared memory region: 'in'")
    status, message = code(lambda: _add_sub(client, out_size=8))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "should be at least 16 bytes to hold the results" in message
    assert code(lambda: _add_sub(client, in_region="nowhere"))[0] == "StatusCode.NOT_FOUND"


def test_grpc_cuda_shared_memory_without_a_gpu(client):
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    with pytest.raises(InferenceServerException) as e:
        client.get_cuda_shared_memory_status("x")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        client.register_cuda_shared_memory("x", b"\0" * 64, 0, 16)
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    client.unregister_cuda_shared_memory("x")
    client.unregister_cuda_shared_memory()
