"""Python models in worker processes: same results, several processes, crashes contained."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from naiad import Server
from naiad.server import make_request
from tests.conftest import NaiadProcess, write_model
from tests.models import REPEAT_CONFIG, REPEAT_PY

PROCESS = 'parameters { key: "EXECUTION_MODE" value: { string_value: "process" } }'

# Y = 2X, PID = the worker's pid, S = a BYTES output; X[0] == 666 segfaults,
# X[0] == 667 exits, X[0] < 0 is an error response, X[0] == 668 raises.
ISO_PY = """
import ctypes, os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.instance = args["model_instance_name"]

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x.size and x[0] == 666:
                ctypes.string_at(0)
            if x.size and x[0] == 667:
                os._exit(3)
            if x.size and x[0] == 668:
                raise RuntimeError("model bug")
            if x.size and x[0] < 0:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "negative input", pb_utils.TritonError.INVALID_ARG)))
                continue
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x * 2),
                pb_utils.Tensor("PID", np.array([os.getpid()], np.int64)),
                pb_utils.Tensor("S", np.array([self.instance.encode()], dtype=np.object_)),
            ]))
        return out
"""

ISO_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }},
         {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }},
         {{ name: "S" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
{extra}
"""


def write_iso(repo, name="iso", count=2, extra=PROCESS):
    write_model(repo, name, ISO_CONFIG.format(name=name, count=count, extra=extra),
                {"model.py": ISO_PY})


def run(repo, fn):
    async def main():
        async with Server(model_repository=str(repo), exit_timeout_secs=10) as server:
            return await fn(server)

    return asyncio.run(main())


def test_isolated_instances_run_in_their_own_processes_with_the_same_results(repo):
    write_iso(repo)

    async def go(server):
        xs = [np.arange(6, dtype=np.float32) * i for i in range(12)]
        outs = await asyncio.gather(*[server.infer_numpy("iso", {"X": x}) for x in xs])
        big = np.random.default_rng(1).standard_normal(3_000_000).astype(np.float32)
        big_out = await server.infer_numpy("iso", {"X": big})  # grows the shared regions
        small = await server.infer_numpy("iso", {"X": xs[1]})
        with pytest.raises(Exception) as info:
            await server.infer_numpy("iso", {"X": np.array([-1], np.float32)})
        with pytest.raises(Exception) as raised:
            await server.infer_numpy("iso", {"X": np.array([668], np.float32)})
        return xs, outs, big, big_out, small, info.value, raised.value

    xs, outs, big, big_out, small, err, raised = run(repo, go)
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["Y"], x * 2)
        assert out["S"][0].decode().startswith("iso_0_")
    pids = {int(o["PID"][0]) for o in outs}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2
    np.testing.assert_array_equal(big_out["Y"], big * 2)
    np.testing.assert_array_equal(small["Y"], xs[1] * 2)
    assert err.message == "negative input" and err.kind.value == "INVALID_ARG"
    assert "RuntimeError: model bug" in raised.message


def test_a_crashing_worker_fails_only_its_request_and_is_restarted(repo):
    write_iso(repo, count=1)
    write_iso(repo, "inproc", count=1, extra="")
    with NaiadProcess(repo) as server:
        client = httpclient.InferenceServerClient(server.http_url)

        def call(model, value):
            inp = httpclient.InferInput("X", [1], "FP32")
            inp.set_data_from_numpy(np.array([value], np.float32))
            return client.infer(model, [inp])

        first_pid = int(call("iso", 1).as_numpy("PID")[0])
        assert first_pid != server.proc.pid
        for value, how in ((666, "was killed by signal 11"), (667, "exited with code 3")):
            with pytest.raises(InferenceServerException) as info:
                call("iso", value)
            assert info.value.status() == "503"
            assert how in info.value.message()
            assert "a new worker is being started" in info.value.message()
            # the server and its other models never noticed
            assert int(call("inproc", 2).as_numpy("PID")[0]) == server.proc.pid
            result = call("iso", 3)
            np.testing.assert_array_equal(result.as_numpy("Y"), [6.0])
            new_pid = int(result.as_numpy("PID")[0])
            assert new_pid not in (first_pid, server.proc.pid)
            first_pid = new_pid
        assert client.is_server_live() and client.is_model_ready("iso")
        client.close()
        assert "restarting its worker process" in server.output()


def test_a_worker_failing_in_initialize_fails_the_load_only(repo):
    write_model(repo, "bad_init", ISO_CONFIG.format(name="bad_init", count=1, extra=PROCESS),
                {"model.py": "import os\nclass TritonPythonModel:\n"
                             "    def initialize(self, args):\n        os._exit(9)\n"
                             "    def execute(self, requests):\n        return []\n"})
    write_model(repo, "raises_init", ISO_CONFIG.format(name="raises_init", count=1,
                                                       extra=PROCESS),
                {"model.py": "class TritonPythonModel:\n"
                             "    def initialize(self, args):\n        raise ValueError('nope')\n"
                             "    def execute(self, requests):\n        return []\n"})
    write_iso(repo, count=1)

    async def go(server):
        index = {m["name"]: m for m in server.repository_index()}
        out = await server.infer_numpy("iso", {"X": np.array([1], np.float32)})
        return index, out

    index, out = run(repo, go)
    assert index["iso"]["state"] == "READY"
    assert index["bad_init"]["state"] == "UNAVAILABLE"
    assert "exited with code 9 while initializing" in index["bad_init"]["reason"]
    assert "ValueError: nope" in index["raises_init"]["reason"]
    np.testing.assert_array_equal(out["Y"], [2.0])


def test_a_decoupled_model_streams_from_its_worker_process(repo):
    write_model(repo, "repeat", REPEAT_CONFIG.format(name="repeat") + PROCESS,
                {"model.py": REPEAT_PY})

    async def go(server):
        results = {}
        for n in (0, 1, 6, -1):
            got = []
            async for r in server.infer_stream(make_request("repeat",
                                                            {"IN": np.array([n], np.int32)})):
                got.append(r.error.message if r.error else int(r.outputs[0].data[0]))
            results[n] = got
        return results

    results = run(repo, go)
    assert results[0] == []
    assert results[1] == [0]
    assert results[6] == list(range(6))
    assert results[-1] == ["repeat count must not be negative"]


def test_an_unknown_execution_mode_is_refused(repo):
    write_iso(repo, "odd", count=1,
              extra='parameters { key: "EXECUTION_MODE" value: { string_value: "cluster" } }')

    async def go(server):
        return {m["name"]: m for m in server.repository_index()}["odd"]

    odd = run(repo, go)
    assert odd["state"] == "UNAVAILABLE"
    assert "unexpected value 'cluster' for parameter EXECUTION_MODE" in odd["reason"]
