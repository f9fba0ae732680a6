"""A python model that exits: sys.exit(), argparse's SystemExit, KeyboardInterrupt.

The request gets an error naming the model and the exception, the instance
keeps serving, the event is logged, the server still stops at once on
SIGTERM; in initialize (or at import) the model is UNAVAILABLE with the
exception's text.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, write_model
from tests.models import PROCESS_PARAMETER as PROCESS

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT64 dims: [ 1 ] }} ]
{extra}
"""

# X: 1 sys.exit(3), 2 KeyboardInterrupt, 3 argparse error (SystemExit(2)),
# 4 SystemExit with a text, 5 sys.exit() without a code; else Y = X + 1.
EXITING_PY = """
import argparse
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            v = int(x[0])
            if v == 1:
                sys.exit(3)
            if v == 2:
                raise KeyboardInterrupt()
            if v == 3:
                parser = argparse.ArgumentParser(prog="tool")
                parser.add_argument("--size", type=int, required=True)
                parser.parse_args(["--bad"])
            if v == 4:
                raise SystemExit("stopping: out of coffee")
            if v == 5:
                sys.exit()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return out
"""

ASYNC_DECOUPLED_PY = """
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if int(x[0]) == 1:
                sys.exit(7)
            r.get_response_sender().send(
                pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

EXPECTED = {
    1: "SystemExit: sys.exit(3) was called (exit code 3)",
    2: "KeyboardInterrupt",
    3: "SystemExit: sys.exit(2) was called (exit code 2)",
    4: "SystemExit: stopping: out of coffee",
    5: "SystemExit: sys.exit() was called",
}


def _infer(client, module, name: str, x: int) -> int:
    inp = module.InferInput("X", [1], "INT64")
    inp.set_data_from_numpy(np.array([x], dtype=np.int64))
    return int(client.infer(name, [inp]).as_numpy("Y")[0])


@pytest.fixture(scope="module")
def exiting(tmp_path_factory):
    repo = tmp_path_factory.mktemp("exits") / "models"
    repo.mkdir()
    write_model(repo, "exiting", CONFIG.format(name="exiting", extra=""),
                {"model.py": EXITING_PY})
    write_model(repo, "exiting_worker", CONFIG.format(name="exiting_worker", extra=PROCESS),
                {"model.py": EXITING_PY})
    write_model(repo, "exiting_async", CONFIG.format(
        name="exiting_async", extra="model_transaction_policy { decoupled: true }"),
        {"model.py": ASYNC_DECOUPLED_PY})
    server = NaiadProcess(repo, "--exit-timeout-secs=120").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["exiting", "exiting_worker"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_exit_in_execute_fails_only_that_request_and_the_instance_keeps_serving(
        exiting, name, protocol):
    module, client = triton_client(protocol, exiting)
    for x, text in EXPECTED.items():
        with pytest.raises(InferenceServerException) as info:
            _infer(client, module, name, x)
        message = info.value.message()
        assert f"model '{name}'" in message
        assert text in message
        assert _infer(client, module, name, 10) == 11  # the same instance, still serving
    assert client.is_model_ready(name)


def test_an_exit_in_a_concurrent_async_execute_answers_the_stream(exiting):
    responses = []
    client = grpcclient.InferenceServerClient(exiting.grpc_url)
    client.start_stream(callback=lambda result, error: responses.append((result, error)))
    for x in (1, 10):
        inp = grpcclient.InferInput("X", [1], "INT64")
        inp.set_data_from_numpy(np.array([x], dtype=np.int64))
        client.async_stream_infer("exiting_async", [inp])
    client.stop_stream()  # waits for both streams' final responses
    errors = [e for _, e in responses if e is not None]
    results = [int(r.as_numpy("Y")[0]) for r, e in responses if e is None]
    assert len(errors) == 1 and "sys.exit(7)" in errors[0].message()
    assert results == [11]


def test_exits_are_logged_and_sigterm_still_stops_at_once(exiting):
    client = httpclient.InferenceServerClient(exiting.http_url)
    with pytest.raises(InferenceServerException):
        _infer(client, httpclient, "exiting", 1)
    assert _infer(client, httpclient, "exiting", 1000) == 1001
    log = exiting.output()
    assert "execute failed" in log and "sys.exit(3) was called" in log
    # the exit timeout is 120 s: a request stuck on a dead instance would hold the
    # shutdown past stop()'s 20 s, after which it is SIGKILLed (-9)
    assert exiting.stop(timeout=20) == 0


INIT_EXIT_PY = """
import sys

class TritonPythonModel:
    def initialize(self, args):
        sys.exit(4)

    def execute(self, requests):
        return []
"""

IMPORT_EXIT_PY = """
import argparse

parser = argparse.ArgumentParser(prog="model")
parser.add_argument("--weights", required=True)
ARGS = parser.parse_args()  # reused training code: exits under the server


class TritonPythonModel:
    def execute(self, requests):
        return []
"""


@pytest.mark.parametrize("extra", ["", PROCESS], ids=["in-process", "worker-process"])
def test_an_exit_in_initialize_or_at_import_makes_the_model_unavailable_with_its_text(
        repo, extra):
    write_model(repo, "init_exit", CONFIG.format(name="init_exit", extra=extra),
                {"model.py": INIT_EXIT_PY})
    write_model(repo, "import_exit", CONFIG.format(name="import_exit", extra=extra),
                {"model.py": IMPORT_EXIT_PY})
    write_model(repo, "fine", CONFIG.format(name="fine", extra=""), {"model.py": EXITING_PY})
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=fine") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for name, text in (("init_exit", "SystemExit: sys.exit(4) was called"),
                           ("import_exit", "SystemExit: sys.exit(2) was called")):
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert text in info.value.message()
            index = {m["name"]: m for m in client.get_model_repository_index()}
            assert index[name]["state"] == "UNAVAILABLE"
            assert text in index[name]["reason"]
            assert not client.is_model_ready(name)
        assert _infer(client, httpclient, "fine", 10) == 11
        assert client.is_server_live()
