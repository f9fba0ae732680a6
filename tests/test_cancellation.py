"""Request cancellation: a client that disconnects gives up its queued request."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import numpy as np
import pytest
from conftest import NaiadProcess, write_model

from tests.clients import http_infer, wait_for
from tests.models import gate_parameter, write_probe

NO_INLINE = 'parameters { key: "NAIAD_INLINE_EXECUTION" value: { string_value: "off" } }'

WATCHER = '''
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.log = config["parameters"]["log"]["string_value"]

    def execute(self, requests):
        out = []
        for r in requests:
            start = time.monotonic()
            while time.monotonic() - start < 5.0 and not r.is_cancelled():
                time.sleep(0.01)
            with open(self.log, "a") as f:
                f.write(json.dumps({"cancelled": r.is_cancelled(),
                                    "after": time.monotonic() - start}) + "\\n")
            out.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
                if r.is_cancelled() else None,
                output_tensors=[] if r.is_cancelled() else
                [pb_utils.Tensor("Y", np.zeros(1, np.float32))]))
        return out
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cancel")
    log = repo.parent / "watch.log"
    gates = tmp_path_factory.mktemp("gates")
    write_probe(repo, "batched", max_batch_size=1, extra=NO_INLINE + "\n" + gate_parameter(gates))
    write_probe(repo, "default_sched", max_batch_size=1, scheduling="",
                extra=NO_INLINE + "\n" + gate_parameter(gates))
    write_model(repo, "watcher", f"""
        name: "watcher"
        backend: "python"
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "log" value: {{ string_value: "{log}" }} }}
        {NO_INLINE}
        """, {"model.py": WATCHER})
    with NaiadProcess(repo) as s:
        s.watch_log = log
        s.gates = gates
        yield s


def _body(value, name="IN", shape=(1, 1)):
    return json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": "FP32",
                                   "data": [value]}]}).encode()


def _send_and_hang_up(server, model, body, after):
    """POST an infer request on a raw socket and close it ``after`` seconds later."""
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    time.sleep(after)
    sock.close()


def _infer(server, model, value):
    result = http_infer(server.http_url, model, {"IN": np.array([[value]], np.float32)},
                        timeout=30)
    return int(result.as_numpy("EXEC")[0][0])


def _stats(server, model):
    with urllib.request.urlopen(f"{server.base}/v2/models/{model}/stats") as r:
        return json.load(r)["model_stats"][0]


@pytest.mark.parametrize("model", ["batched", "default_sched"])
def test_a_disconnected_clients_queued_request_never_executes(server, model):
    import threading

    before = _stats(server, model)
    started = server.gates / model
    started.unlink(missing_ok=True)
    gate = threading.Thread(target=_infer, args=(server, model, -2.0))
    gate.start()  # holds the only instance for 2 s
    wait_for(started.exists, what="the gate executing")
    _send_and_hang_up(server, model, _body(5.0), after=0.3)  # queued, then the client leaves
    gate.join()
    executions = before["execution_count"]
    after_gate = _infer(server, model, 1.0)
    stats = _stats(server, model)
    # gate and the last request ran; the abandoned one did not
    assert stats["execution_count"] == executions + 2
    assert stats["inference_count"] == before["inference_count"] + 2
    assert stats["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert after_gate > 0


def test_a_python_model_sees_is_cancelled_when_the_client_leaves(server):
    _send_and_hang_up(server, "watcher", _body(1.0, name="X", shape=(1,)), after=0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.watch_log.exists() and server.watch_log.read_text().strip():
            break
        time.sleep(0.05)
    record = json.loads(server.watch_log.read_text().splitlines()[0])
    assert record["cancelled"] is True
    assert record["after"] < 2.0  # noticed soon after the disconnect, not after its 5 s


def test_requests_that_finish_normally_are_not_cancelled(server):
    assert _infer(server, "batched", 2.0) > 0
