"""Iterative sequences: a python model reschedules a request until it is done.

``sequence_batching { iterative_sequence: true }`` with
``request.set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``, as
iterative generation models use it: each request is its own sequence, runs
again in a later batch beside the others (continuous batching), keeps its
implicit state and its response sender; the model answers once done. Elsewhere
a reschedule is answered with Triton's error instead of leaving the client
waiting.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, write_model
from tests.models import PROCESS_PARAMETER as PROCESS

# Decoupled countdown (NVIDIA's iterative_sequence qa model does this with one
# sequence at a time): IN = n sends n responses n-1, ..., 0, one per execution,
# rescheduling the request until the last. The remaining count is the
# sequence's implicit state; BATCH reports how many requests ran together.
COUNTDOWN_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
         {{ name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] }} ]
sequence_batching {{
  iterative_sequence: true
  oldest {{ max_candidate_sequences: 4 max_queue_delay_microseconds: 20000 }}
  control_input [ {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START
                                                 int32_false_true: [ 0, 1 ] }} ] }} ]
  state [ {{ input_name: "LEFT_IN" output_name: "LEFT_OUT" data_type: TYPE_INT32
            dims: [ 1 ] }} ]
}}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{extra}
"""

COUNTDOWN_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        batch = len(requests)
        for r in requests:
            start = int(pb_utils.get_input_tensor_by_name(r, "START").as_numpy().sum())
            left = pb_utils.get_input_tensor_by_name(r, "LEFT_IN").as_numpy().reshape(-1)
            if start:
                left = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().reshape(-1)
            left = left - 1
            sender = r.get_response_sender()
            response = pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", left.reshape(1, 1).astype(np.int32)),
                pb_utils.Tensor("BATCH", np.full((1, 1), batch, np.int32)),
                pb_utils.Tensor("LEFT_OUT", left.reshape(1, 1).astype(np.int32))])
            if left[0] <= 0:
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(response)
        return None
"""

# Not decoupled (NVIDIA's request_rescheduling_addsub does this): every request
# runs twice; the first run returns None for it and reschedules it.
ADDSUB_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
        {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
         {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }},
         {{ name: "RUNS" data_type: TYPE_INT32 dims: [ 1 ] }} ]
{sequence}
instance_group [ {{ kind: KIND_CPU }} ]
{extra}
"""

ADDSUB_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = {}

    def execute(self, requests):
        responses = []
        for r in requests:
            key = (r.correlation_id(), r.request_id())
            self.runs[key] = self.runs.get(key, 0) + 1
            if self.runs[key] == 1:
                r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                # 'WRONG' asks for Triton's check: a rescheduled request must return None
                wrong = r.request_id() == "WRONG"
                responses.append(pb_utils.InferenceResponse([]) if wrong else None)
                continue
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b),
                pb_utils.Tensor("RUNS", np.array([self.runs.pop(key)], np.int32))]))
        return responses
"""

ITERATIVE = "sequence_batching { iterative_sequence: true }"

BLS_CONFIG = """
name: "bls_countdown"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "VALUES" data_type: TYPE_INT32 dims: [ -1 ] } ]
"""

BLS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            n = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().reshape(1, 1)
            call = pb_utils.InferenceRequest(
                model_name="countdown", inputs=[pb_utils.Tensor("IN", n)],
                requested_output_names=["OUT"])
            values = []
            for response in call.exec(decoupled=True):
                if response.has_error():
                    raise pb_utils.TritonModelException(response.error().message())
                t = pb_utils.get_output_tensor_by_name(response, "OUT")
                if t is not None:
                    values.append(int(t.as_numpy().reshape(-1)[0]))
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("VALUES", np.array(values, np.int32))]))
        return out
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("iterative") / "models"
    repo.mkdir()
    write_model(repo, "countdown", COUNTDOWN_CONFIG.format(name="countdown", extra=""),
                {"model.py": COUNTDOWN_PY})
    write_model(repo, "countdown_worker", COUNTDOWN_CONFIG.format(name="countdown_worker",
                                                                  extra=PROCESS),
                {"model.py": COUNTDOWN_PY})
    write_model(repo, "addsub", ADDSUB_CONFIG.format(name="addsub", sequence=ITERATIVE,
                                                     extra=""), {"model.py": ADDSUB_PY})
    write_model(repo, "addsub_worker", ADDSUB_CONFIG.format(name="addsub_worker",
                                                            sequence=ITERATIVE, extra=PROCESS),
                {"model.py": ADDSUB_PY})
    # rescheduling where the model is not configured for it
    write_model(repo, "addsub_plain", ADDSUB_CONFIG.format(name="addsub_plain", sequence="",
                                                           extra=""), {"model.py": ADDSUB_PY})
    write_model(repo, "bls_countdown", BLS_CONFIG, {"model.py": BLS_PY})
    # explicit mode with every model loaded at start: an iterative model loads
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=*") as srv:
        yield srv


def _countdowns(server, model: str, starts: list[int]) -> dict[int, list]:
    """Start one countdown per value on one gRPC stream; the responses of each."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    for i, n in enumerate(starts):
        inp = grpcclient.InferInput("IN", [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[n]], np.int32))
        client.async_stream_infer(model, [inp], request_id=str(i))
    client.stop_stream()
    out: dict[int, list] = {i: [] for i in range(len(starts))}
    while not responses.empty():
        result, error = responses.get()
        assert error is None, error
        rid = int(result.get_response().id)
        out[rid].append((int(result.as_numpy("OUT")[0][0]), int(result.as_numpy("BATCH")[0][0])))
    return out


@pytest.mark.parametrize("model", ["countdown", "countdown_worker"])
def test_rescheduled_requests_count_down_and_run_together(server, model):
    starts = [3, 5, 2, 4]
    got = _countdowns(server, model, starts)
    for i, n in enumerate(starts):
        assert [v for v, _ in got[i]] == list(range(n - 1, -1, -1))
    # the four sequences shared executions: continuous batching
    assert max(b for responses in got.values() for _, b in responses) > 1


def test_many_countdowns_from_several_clients(server):
    results: dict[int, dict] = {}

    def client_thread(k: int) -> None:
        results[k] = _countdowns(server, "countdown", [2 + k % 3, 1 + k % 2])

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4
    for k, got in results.items():
        assert [v for v, _ in got[0]] == list(range(1 + k % 3, -1, -1))
        assert [v for v, _ in got[1]] == list(range(k % 2, -1, -1))


@pytest.mark.parametrize("model", ["addsub", "addsub_worker"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_that_is_not_decoupled_answers_after_its_rescheduled_run(
        server, model, protocol):
    module, client = triton_client(protocol, server)
    a = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    b = np.random.default_rng(2).standard_normal(16).astype(np.float32)
    inputs = [module.InferInput("INPUT0", [16], "FP32"), module.InferInput("INPUT1", [16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer(model, inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert int(result.as_numpy("RUNS")[0]) == 2
    with pytest.raises(InferenceServerException) as info:  # a response for it: refused
        client.infer(model, inputs, request_id="WRONG")
    assert "Expected a None object in the execute function return list for reschduled " \
        "request" in info.value.message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rescheduling_without_iterative_sequences_is_an_error_not_a_hang(server, protocol):
    module, client = triton_client(protocol, server)
    inputs = [module.InferInput("INPUT0", [16], "FP32"), module.InferInput("INPUT1", [16], "FP32")]
    inputs[0].set_data_from_numpy(np.zeros(16, np.float32))
    inputs[1].set_data_from_numpy(np.ones(16, np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("addsub_plain", inputs, request_id=f"plain-{protocol}")
    assert "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the " \
        "model is not configured to handle such a flag." in info.value.message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_to_an_iterative_model(server, protocol):
    module, client = triton_client(protocol, server)
    inp = module.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([4], np.int32))
    values = client.infer("bls_countdown", [inp]).as_numpy("VALUES").tolist()
    assert values == [3, 2, 1, 0]


def test_reload_of_an_iterative_model(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.unload_model("countdown")
    client.load_model("countdown")
    assert client.is_model_ready("countdown")
    assert [v for v, _ in _countdowns(server, "countdown", [2])[0]] == [1, 0]
