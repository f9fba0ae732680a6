"""Business Logic Scripting: python models calling other models in-process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as httpclient

from naiad import Server
from tests.conftest import NaiadProcess, write_model
from tests.models import write_affine, write_repeat

F = "TYPE_FP32"

BLS_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
{extra}
"""

# Y = double(X); a target error becomes this model's error response
SYNC_BLS = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X")
            req = pb_utils.InferenceRequest(model_name="double", inputs=[pb_utils.Tensor("X", x.as_numpy())],
                                            requested_output_names=["Y"])
            resp = req.exec()
            if resp.has_error():
                out.append(pb_utils.InferenceResponse(error=resp.error()))
                continue
            y = pb_utils.get_output_tensor_by_name(resp, "Y").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

# Y = double(X) + inc(X), the two calls in flight together
ASYNC_BLS = """
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            calls = [pb_utils.InferenceRequest(model_name=m, inputs=[pb_utils.Tensor("X", x)],
                                               requested_output_names=["Y"]).async_exec()
                     for m in ("double", "inc")]
            a, b = await asyncio.gather(*calls)
            y = (pb_utils.get_output_tensor_by_name(a, "Y").as_numpy()
                 + pb_utils.get_output_tensor_by_name(b, "Y").as_numpy())
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

# Y = [sum of repeat(N) responses, number of responses seen], sync and async
DECOUPLED_BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils

def request(n):
    return pb_utils.InferenceRequest(model_name="repeat",
                                     inputs=[pb_utils.Tensor("IN", np.array([n], np.int32))],
                                     requested_output_names=["OUT"])

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()[0])
            total, seen, errors = 0, 0, []
            for resp in request(n).exec(decoupled=True):
                seen += 1
                if resp.has_error():
                    errors.append(resp.error().message())
                    continue
                for t in resp.output_tensors():
                    total += int(t.as_numpy()[0])
            if errors:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[0])))
            else:
                out.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", np.array([total, seen], np.float32))]))
        return out
"""

ASYNC_DECOUPLED_BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()[0])
            req = pb_utils.InferenceRequest(model_name="repeat",
                                            inputs=[pb_utils.Tensor("IN", np.array([n], np.int32))],
                                            requested_output_names=["OUT"])
            total, seen = 0, 0
            async for resp in await req.async_exec(decoupled=True):
                seen += 1
                for t in resp.output_tensors():
                    total += int(t.as_numpy()[0])
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", np.array([total, seen], np.float32))]))
        return out
"""

# The errors a BLS call reports, as strings; and is_model_ready
ERRORS_BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils

def call(model, inputs, outputs=("OUT",)):
    resp = pb_utils.InferenceRequest(model_name=model, inputs=inputs,
                                     requested_output_names=list(outputs)).exec()
    return resp.error().message() if resp.has_error() else "ok"

class TritonPythonModel:
    def execute(self, requests):
        x = pb_utils.Tensor("X", np.array([1.0], np.float32))
        msgs = [
            call("nosuch", [x]),
            call("repeat", [pb_utils.Tensor("IN", np.array([1], np.int32))]),
            call("double", [pb_utils.Tensor("Z", np.array([1.0], np.float32))], ["Y"]),
            call("double", [x], ["Y"]),
            str(pb_utils.is_model_ready("double")),
            str(pb_utils.is_model_ready("nosuch")),
            str(pb_utils.is_model_ready("double", "1")),
            str(pb_utils.is_model_ready("double", "7")),
        ]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "MSG", np.array([m.encode() for m in msgs], dtype=np.object_))]) for _ in requests]
"""

# BLS hidden from the load-time scan (built with getattr): only the runtime guard catches it
HIDDEN_BLS = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        make = getattr(pb_utils, "Inference" + "Request")
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            req = make(model_name="double", inputs=[pb_utils.Tensor("X", x)],
                       requested_output_names=["Y"])
            resp = getattr(req, "ex" + "ec")()
            out.append(pb_utils.InferenceResponse(resp.output_tensors()))
        return out
"""

# Reports the thread it ran on and the thread its BLS target ran on
THREADS_BLS = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            req = pb_utils.InferenceRequest(model_name="whoami",
                                            inputs=[pb_utils.Tensor("X", np.array([1.0], np.float32))],
                                            requested_output_names=["T"])
            target = req.exec().output_tensors()[0].as_numpy()[0]
            mine = threading.current_thread().name.encode()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                "T", np.array([mine, target], dtype=np.object_))]))
        return out
"""

WHOAMI = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        name = threading.current_thread().name.encode()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("T", np.array([name], dtype=np.object_))])
                for _ in requests]
"""

THREAD_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "T" data_type: TYPE_STRING dims: [ -1 ] }} ]
"""

MANAGE_BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        msgs = [str(pb_utils.is_model_ready("double"))]
        pb_utils.load_model("double")
        msgs.append(str(pb_utils.is_model_ready("double")))
        resp = pb_utils.InferenceRequest(model_name="double",
                                         inputs=[pb_utils.Tensor("X", np.array([2.0], np.float32))],
                                         requested_output_names=["Y"]).exec()
        msgs.append(str(resp.output_tensors()[0].as_numpy().tolist()))
        pb_utils.unload_model("double")
        msgs.append(str(pb_utils.is_model_ready("double")))
        try:
            pb_utils.load_model("nosuch")
        except pb_utils.TritonModelException as e:
            msgs.append("load failed")
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "MSG", np.array([m.encode() for m in msgs], dtype=np.object_))]) for _ in requests]
"""

MSG_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "MSG" data_type: TYPE_STRING dims: [ -1 ] }} ]
"""


@pytest.fixture
def bls_repo(repo):
    write_affine(repo, "double", mul=2)
    write_affine(repo, "inc", add=1)
    write_repeat(repo)
    write_model(repo, "bls_sync", BLS_CONFIG.format(name="bls_sync", extra=""),
                {"model.py": SYNC_BLS})
    write_model(repo, "bls_async", BLS_CONFIG.format(name="bls_async", extra=""),
                {"model.py": ASYNC_BLS})
    write_model(repo, "bls_decoupled", BLS_CONFIG.format(name="bls_decoupled", extra=""),
                {"model.py": DECOUPLED_BLS})
    write_model(repo, "bls_async_decoupled",
                BLS_CONFIG.format(name="bls_async_decoupled", extra=""),
                {"model.py": ASYNC_DECOUPLED_BLS})
    write_model(repo, "bls_errors", MSG_CONFIG.format(name="bls_errors"),
                {"model.py": ERRORS_BLS})
    write_model(repo, "bls_hidden", BLS_CONFIG.format(name="bls_hidden", extra=""),
                {"model.py": HIDDEN_BLS})
    write_model(repo, "whoami", THREAD_CONFIG.format(name="whoami"), {"model.py": WHOAMI})
    write_model(repo, "bls_threads", THREAD_CONFIG.format(name="bls_threads"),
                {"model.py": THREADS_BLS})
    return repo


def run(repo, fn, **opts):
    async def main():
        async with Server(model_repository=str(repo), exit_timeout_secs=10, **opts) as server:
            return await fn(server)

    return asyncio.run(main())


def test_sync_and_async_bls_return_the_targets_results(bls_repo):
    x = np.array([1, 2, 3], np.float32)

    async def go(server):
        sync = await server.infer_numpy("bls_sync", {"X": x})
        many = await asyncio.gather(*[server.infer_numpy("bls_sync", {"X": x * i})
                                      for i in range(20)])
        asy = await server.infer_numpy("bls_async", {"X": x})
        return sync, many, asy

    sync, many, asy = run(bls_repo, go)
    np.testing.assert_array_equal(sync["Y"], x * 2)
    for i, out in enumerate(many):
        np.testing.assert_array_equal(out["Y"], x * i * 2)
    np.testing.assert_array_equal(asy["Y"], x * 2 + x + 1)


def test_a_targets_error_reaches_the_caller_as_an_error_response(bls_repo):
    async def go(server):
        with pytest.raises(Exception) as info:
            await server.infer_numpy("bls_sync", {"X": np.array([-1.0], np.float32)})
        return info.value

    err = run(bls_repo, go)
    assert err.message == "double refuses negative input"


def test_decoupled_bls_iterates_every_response_then_the_final_one(bls_repo):
    async def go(server):
        out = {}
        for model in ("bls_decoupled", "bls_async_decoupled"):
            for n in (0, 1, 5):
                out[model, n] = (await server.infer_numpy(
                    model, {"X": np.array([n], np.float32)}))["Y"].tolist()
        with pytest.raises(Exception) as info:
            await server.infer_numpy("bls_decoupled", {"X": np.array([-1], np.float32)})
        return out, info.value

    out, err = run(bls_repo, go)
    for model in ("bls_decoupled", "bls_async_decoupled"):
        # n responses plus the empty final one (Triton's iterator yields it too)
        assert out[model, 0] == [0, 1]
        assert out[model, 1] == [0, 2]
        assert out[model, 5] == [sum(range(5)), 6]
    assert err.message == "repeat count must not be negative"


def test_bls_errors_and_readiness_use_tritons_texts(bls_repo):
    async def go(server):
        return (await server.infer_numpy("bls_errors", {"X": np.array([1.0], np.float32)}))

    msgs = [m.decode() for m in run(bls_repo, go)["MSG"]]
    assert msgs[0] == ("Model nosuch - Error when running inference: Failed for execute the "
                       "inference request. Model 'nosuch' is not ready.")
    assert msgs[1].startswith("Model repeat - Error when running inference: Model repeat is "
                              "using the decoupled. The current BLS request call doesn't support "
                              "models using the decoupled transaction policy.")
    assert msgs[2] == ("Model double - Error when running inference: unexpected inference input "
                       "'Z' for model 'double'")
    assert msgs[3] == "ok"
    assert msgs[4:] == ["True", "False", "True", "False"]


def test_models_making_bls_calls_never_run_on_the_event_loop(bls_repo):
    async def go(server):
        sync_inst = server.get_model("bls_sync").scheduler.instances[0]
        hidden_inst = server.get_model("bls_hidden").scheduler.instances[0]
        before = (sync_inst.inline_enabled, hidden_inst.inline_enabled)
        # the hidden one proves itself on its thread first (warm-up runs), then runs
        # inline on this (loop) thread: the runtime guard still completes the call
        # and takes the instance off inline execution
        for _ in range(100):  # bounded: warm-up runs, then until its average is short
            if hidden_inst.inline_allowed():
                break
            await server.infer_numpy("bls_hidden", {"X": np.array([1.0], np.float32)})
        assert hidden_inst.inline_allowed(), (hidden_inst._avg_ns, hidden_inst.executions)
        for _ in range(20):  # a call finds the instance idle (its thread released it)
            await asyncio.sleep(0.01)
            out = await server.infer_numpy("bls_hidden", {"X": np.array([4.0], np.float32)})
            if not hidden_inst.inline_enabled:
                break
        after = hidden_inst.inline_enabled
        again = await server.infer_numpy("bls_hidden", {"X": np.array([5.0], np.float32)})
        return before, out, after, again

    before, out, after, again = run(bls_repo, go)
    assert before == (False, True)
    np.testing.assert_array_equal(out["Y"], [8.0])
    assert after is False
    np.testing.assert_array_equal(again["Y"], [10.0])


def test_an_idle_cheap_bls_target_runs_on_the_callers_thread(bls_repo):
    async def go(server):
        outs = []
        for _ in range(8):
            outs.append(await server.infer_numpy("bls_threads", {"X": np.array([1.0], np.float32)}))
        return [[t.decode() for t in o["T"]] for o in outs]

    outs = run(bls_repo, go)
    caller, target = outs[-1]
    assert caller.startswith("naiad-bls_threads")  # the caller's own worker thread
    assert target == caller  # no hand-off to the target's thread


def test_bls_can_load_and_unload_models_in_explicit_mode(repo):
    write_affine(repo, "double", mul=2)
    write_model(repo, "manager", MSG_CONFIG.format(name="manager"), {"model.py": MANAGE_BLS})
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=manager") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.array([1.0], np.float32))
        msgs = [m.decode() for m in client.infer("manager", [inp]).as_numpy("MSG")]
        client.close()
    assert msgs == ["False", "True", "[4.0]", "False", "load failed"]


def test_bls_over_http_with_concurrent_clients(bls_repo):
    with NaiadProcess(bls_repo) as server:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
        x = np.arange(4, dtype=np.float32)
        pending = []
        for i in range(40):
            inp = httpclient.InferInput("X", [4], "FP32")
            inp.set_data_from_numpy(x + i)
            pending.append((i, client.async_infer("bls_async" if i % 2 else "bls_sync", [inp])))
        for i, p in pending:
            y = p.get_result().as_numpy("Y")
            want = (x + i) * 2 + (x + i + 1) if i % 2 else (x + i) * 2
            np.testing.assert_array_equal(y, want)
        client.close()
