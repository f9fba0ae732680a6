"""Python-backend API behaviours that NVIDIA's examples and qa models rely on.

BLS with a bytes model name, ``await async_exec(decoupled=True)`` looped with
a plain ``for``, the response sender on models that are not decoupled, a
decoupled model returning responses from execute, ``TritonError(message=...)``
and the checks on response parameters: each over the wire with tritonclient,
with Triton's messages.
"""

from __future__ import annotations

import json
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, copy_example, write_model

BLS_BYTES_CONFIG = """
name: "bls_bytes"
backend: "python"
max_batch_size: 0
input [ { name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

# as NVIDIA's bls example: the model name comes from a BYTES input, as bytes
BLS_BYTES_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            name = pb_utils.get_input_tensor_by_name(r, "MODEL_NAME").as_numpy()[0]
            assert isinstance(name, bytes)
            call = pb_utils.InferenceRequest(
                model_name=name,
                inputs=[pb_utils.get_input_tensor_by_name(r, "INPUT0"),
                        pb_utils.get_input_tensor_by_name(r, "INPUT1")],
                requested_output_names=[b"OUTPUT0", "OUTPUT1"])
            response = call.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            out.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(response, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(response, "OUTPUT1")]))
        return out
"""

BLS_THREAD_CONFIG = """
name: "bls_thread"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

# the BLS call is made from a thread the model started (as NVIDIA's decoupled
# BLS models do), after execute returned
BLS_THREAD_PY = """
import threading

import triton_python_backend_utils as pb_utils


def answer(request, sender):
    call = pb_utils.InferenceRequest(
        model_name="add_sub", requested_output_names=["OUTPUT0"],
        inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                pb_utils.get_input_tensor_by_name(request, "INPUT1")])
    response = call.exec()
    if response.has_error():
        response = pb_utils.InferenceResponse(error=response.error())
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            threading.Thread(target=answer, args=(r, r.get_response_sender()),
                             daemon=True).start()
        return None
"""

REPEAT_CONFIG = """
name: "repeat"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "V" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

REPEAT_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "N").as_numpy()[0])
            sender = r.get_response_sender()
            for i in range(n):
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("V", np.array([i + 1], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

ASYNC_BLS_CONFIG = """
name: "async_bls"
backend: "python"
max_batch_size: 0
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] },
        { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

# MODE 0: `for` over await async_exec(decoupled=True), as NVIDIA's examples;
# MODE 1: `async for`; MODE 2: `for` over exec(decoupled=True)
ASYNC_BLS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            n = pb_utils.get_input_tensor_by_name(r, "N")
            mode = int(pb_utils.get_input_tensor_by_name(r, "MODE").as_numpy()[0])
            call = pb_utils.InferenceRequest(model_name="repeat", inputs=[n],
                                             requested_output_names=["V"])
            values = []
            if mode == 0:
                for response in await call.async_exec(decoupled=True):
                    values.append(response)
            elif mode == 1:
                async for response in await call.async_exec(decoupled=True):
                    values.append(response)
            else:
                for response in call.exec(decoupled=True):
                    values.append(response)
            total = 0
            count = 0
            for response in values:
                if response.has_error():
                    raise pb_utils.TritonModelException(response.error().message())
                v = pb_utils.get_output_tensor_by_name(response, "V")
                if v is not None:
                    total += int(v.as_numpy()[0])
                    count += 1
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", np.array([total], np.int32)),
                pb_utils.Tensor("COUNT", np.array([count], np.int32))]))
        return out
"""

SENDER_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {mbs}
{policy}
{batching}
input [ {{ name: "PRE" data_type: TYPE_UINT8 dims: [ 1 ] }},
        {{ name: "PRE_FINAL" data_type: TYPE_BOOL dims: [ 1 ] }},
        {{ name: "RETURN" data_type: TYPE_BOOL dims: [ 1 ] }},
        {{ name: "POST" data_type: TYPE_UINT8 dims: [ 1 ] }},
        {{ name: "POST_FINAL" data_type: TYPE_BOOL dims: [ 1 ] }},
        {{ name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] optional: true }} ]
output [ {{ name: "INDEX" data_type: TYPE_UINT16 dims: [ 1 ] }} ]
"""

# Responses sent before execute returns are numbered 1000+, the returned one 0,
# the ones a thread sends after execute returned 2000+. FLAGS: the flags of the
# first response sent before return (to try flags Triton refuses).
SENDER_PY = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().sum()


def response(shape, index):
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor("INDEX", np.full(shape, index, np.uint16))])


def send_all(sender, batch, count, final, offset, flags=0):
    for i in range(count):
        sender.send(response(batch, offset + i), flags=flags if i == 0 else 0)
    if final:
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    def execute(self, requests):
        returned = []
        later = []
        for r in requests:
            batch = pb_utils.get_input_tensor_by_name(r, "RETURN").as_numpy().shape
            pre, post = int(value(r, "PRE")), int(value(r, "POST"))
            pre_final, post_final = bool(value(r, "PRE_FINAL")), bool(value(r, "POST_FINAL"))
            flags_in = pb_utils.get_input_tensor_by_name(r, "FLAGS")
            flags = int(flags_in.as_numpy().sum()) if flags_in is not None else 0
            sender = None
            if pre or post or pre_final or post_final:
                sender = r.get_response_sender()
                send_all(sender, batch, pre, pre_final, 1000, flags)
                later.append((sender, batch, post, post_final))
            returned.append(response(batch, 0) if value(r, "RETURN") else None)

        def after_return():
            time.sleep(0.2)
            for sender, batch, post, post_final in later:
                try:
                    send_all(sender, batch, post, post_final, 2000)
                except pb_utils.TritonModelException:
                    pass  # Triton: raised in the model's thread, nothing else happens

        threading.Thread(target=after_return, daemon=True).start()
        if all(x is None for x in returned):
            return None
        return returned
"""


# The same, async: the responses after return come from a task on the model's event
# loop, which keeps running after execute returned (as in Triton's stub)
SENDER_ASYNC_PY = SENDER_PY.replace("import threading\n", "import asyncio\nimport threading\n").replace(
    "    def execute(self, requests):", "    async def execute(self, requests):").replace(
    """        def after_return():
            time.sleep(0.2)""", """        async def after_return():
            await asyncio.sleep(0.2)""").replace(
    "        threading.Thread(target=after_return, daemon=True).start()",
    "        self.task = asyncio.get_running_loop().create_task(after_return())")


def _sender_inputs(module, pre=0, pre_final=False, ret=False, post=0, post_final=False,
                   flags=None, batch=False):
    shape = [1, 1] if batch else [1]
    values = [("PRE", "UINT8", np.uint8, pre), ("PRE_FINAL", "BOOL", bool, pre_final),
              ("RETURN", "BOOL", bool, ret), ("POST", "UINT8", np.uint8, post),
              ("POST_FINAL", "BOOL", bool, post_final)]
    if flags is not None:
        values.append(("FLAGS", "INT32", np.int32, flags))
    out = []
    for name, dtype, np_type, v in values:
        inp = module.InferInput(name, shape, dtype)
        inp.set_data_from_numpy(np.array(v, dtype=np_type).reshape(shape))
        out.append(inp)
    return out


ERRORS_CONFIG = """
name: "errors"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

ERRORS_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = int(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()[0])
            if x == 1:
                err = pb_utils.TritonError(message="bad input, by keyword",
                                           code=pb_utils.TritonError.INVALID_ARG)
            elif x == 2:
                err = pb_utils.TritonError(msg="the older keyword")
            else:
                err = pb_utils.TritonError("positional", pb_utils.TritonError.NOT_FOUND)
            assert err.message() in ("bad input, by keyword", "the older keyword", "positional")
            out.append(pb_utils.InferenceResponse(error=err))
        return out
"""

PARAMS_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
{policy}
input [ {{ name: "RESPONSE_PARAMETERS" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
"""

# the parameters to set come as JSON; keys made of digits become ints (to try a
# key type Triton refuses); a refused value is answered as an INVALID_ARG error
PARAMS_PY = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def build(params, text):
    if isinstance(params, dict):
        params = {int(k) if k.isdigit() else k: v for k, v in params.items()}
    response = pb_utils.InferenceResponse(
        [pb_utils.Tensor("OUTPUT", np.array([text.encode()], dtype=np.object_))],
        parameters=params)
    assert json.loads(response.parameters()) == params
    return response


class TritonPythonModel:
    def initialize(self, args):
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(
            json.loads(args["model_config"]))

    def execute(self, requests):
        out = []
        for r in requests:
            text = pb_utils.get_input_tensor_by_name(r, "RESPONSE_PARAMETERS").as_numpy()[0]
            text = text.decode()
            if self.decoupled:
                sender = r.get_response_sender()
                for params in json.loads(text):
                    sender.send(build(params, json.dumps(params)))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            try:
                out.append(build(json.loads(text), text))
            except Exception as e:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    message=str(e), code=pb_utils.TritonError.INVALID_ARG)))
        return None if self.decoupled else out
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("api") / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    write_model(repo, "bls_bytes", BLS_BYTES_CONFIG, {"model.py": BLS_BYTES_PY})
    write_model(repo, "repeat", REPEAT_CONFIG, {"model.py": REPEAT_PY})
    write_model(repo, "bls_thread", BLS_THREAD_CONFIG, {"model.py": BLS_THREAD_PY})
    write_model(repo, "async_bls", ASYNC_BLS_CONFIG, {"model.py": ASYNC_BLS_PY})
    decoupled = "model_transaction_policy { decoupled: true }"
    batching = "dynamic_batching { max_queue_delay_microseconds: 200000 }"
    for name, mbs, policy, dyn in (("sender", 0, "", ""),
                                   ("sender_decoupled", 0, decoupled, ""),
                                   ("sender_batching", 8, "", batching),
                                   ("sender_decoupled_batching", 8, decoupled, batching)):
        write_model(repo, name, SENDER_CONFIG.format(name=name, mbs=mbs, policy=policy,
                                                     batching=dyn), {"model.py": SENDER_PY})
    for name, policy in (("sender_async", ""), ("sender_decoupled_async", decoupled)):
        write_model(repo, name, SENDER_CONFIG.format(name=name, mbs=0, policy=policy,
                                                     batching=""), {"model.py": SENDER_ASYNC_PY})
    write_model(repo, "errors", ERRORS_CONFIG, {"model.py": ERRORS_PY})
    write_model(repo, "params", PARAMS_CONFIG.format(name="params", policy=""),
                {"model.py": PARAMS_PY})
    write_model(repo, "params_decoupled", PARAMS_CONFIG.format(name="params_decoupled",
                                                               policy=decoupled),
                {"model.py": PARAMS_PY})
    with NaiadProcess(repo) as srv:
        yield srv


# -- BLS --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_takes_the_model_name_as_bytes(server, protocol):
    module, client = triton_client(protocol, server)
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([10, 20, 30, 40], np.float32)

    def call(name: bytes):
        inputs = [module.InferInput("MODEL_NAME", [1], "BYTES"),
                  module.InferInput("INPUT0", [4], "FP32"),
                  module.InferInput("INPUT1", [4], "FP32")]
        inputs[0].set_data_from_numpy(np.array([name], dtype=np.object_))
        inputs[1].set_data_from_numpy(a)
        inputs[2].set_data_from_numpy(b)
        return client.infer("bls_bytes", inputs)

    result = call(b"add_sub")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    with pytest.raises(InferenceServerException) as info:
        call(b"no_such_model")
    assert "Model 'no_such_model' is not ready" in info.value.message()


def test_bls_from_a_thread_the_model_started(server):
    a = np.array([1, 2, 3, 4], np.float32)
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inputs = [grpcclient.InferInput("INPUT0", [4], "FP32"),
              grpcclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a * 10)
    client.async_stream_infer("bls_thread", inputs)
    result, error = responses.get(timeout=30)
    client.stop_stream()
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 11)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", [0, 1, 2], ids=["for-over-async_exec", "async-for",
                                                 "for-over-exec"])
def test_decoupled_bls_responses_from_async_exec_iterate_with_for_and_async_for(
        server, protocol, mode):
    module, client = triton_client(protocol, server)
    inputs = [module.InferInput("N", [1], "INT32"), module.InferInput("MODE", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([4], np.int32))
    inputs[1].set_data_from_numpy(np.array([mode], np.int32))
    result = client.infer("async_bls", inputs)
    assert int(result.as_numpy("SUM")[0]) == 1 + 2 + 3 + 4
    assert int(result.as_numpy("COUNT")[0]) == 4


# -- response senders -----------------------------------------------------------------------


def _stream(server, model, input_sets):
    """Each input set as a request on one gRPC stream; (index or None, error text or None)."""
    responses: list = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.append((result, error)))
    for inputs in input_sets:
        client.async_stream_infer(model, inputs)
    client.stop_stream()  # returns when every request's stream has ended
    out = []
    for result, error in responses:
        if error is not None:
            out.append((None, error.message()))
        else:
            index = result.as_numpy("INDEX")
            out.append((None if index is None else int(index.reshape(-1)[0]), None))
    return out


NON_DECOUPLED_CASES = [
    # (inputs, what the client receives)
    (dict(ret=True), [(0, None)]),
    (dict(pre=1, pre_final=True), [(1000, None)]),
    (dict(post=1, post_final=True), [(2000, None)]),
    (dict(pre=1, post_final=True), [(1000, None)]),  # the final flag alone, afterwards
    (dict(pre=2, pre_final=True), [(1000, None)]),  # the 2nd send raises: the 1st stands
    (dict(pre=1, pre_final=True, ret=True), [(1000, None)]),  # the returned one is refused
    (dict(ret=True, post=1, post_final=True), [(0, None)]),  # the thread's send raises
]


@pytest.mark.parametrize("model", ["sender", "sender_async"])
@pytest.mark.parametrize("case,expected", NON_DECOUPLED_CASES)
def test_a_model_that_is_not_decoupled_sends_its_one_response_through_the_sender(
        server, case, expected, model):
    assert _stream(server, model, [_sender_inputs(grpcclient, **case)]) == expected
    # the same over a plain HTTP infer: exactly that one response
    client = httpclient.InferenceServerClient(server.http_url)
    result = client.infer(model, _sender_inputs(httpclient, **case))
    assert int(result.as_numpy("INDEX")[0]) == expected[0][0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_final_flag_before_any_response_is_refused_with_tritons_message(server, protocol):
    module, client = triton_client(protocol, server)
    with pytest.raises(InferenceServerException) as info:
        client.infer("sender", _sender_inputs(module, pre_final=True))
    assert "Non-decoupled model cannot send complete final before sending a response" in \
        info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("sender", _sender_inputs(module, pre=1, pre_final=True, flags=4))
    assert "Unable to send response. Unsupported flag provided." in info.value.message()
    assert int(client.infer("sender", _sender_inputs(module, ret=True)).as_numpy("INDEX")[0]) \
        == 0  # and the instance carries on


def test_a_batch_of_requests_each_answered_its_own_way(server):
    sets = [dict(ret=True), dict(pre=1, pre_final=True), dict(post=1, post_final=True)]
    got = _stream(server, "sender_batching", [_sender_inputs(grpcclient, batch=True, **s)
                                              for s in sets])
    assert sorted(got) == [(0, None), (1000, None), (2000, None)]
    decoupled_sets = [dict(pre_final=True), dict(post_final=True), dict(pre=1, pre_final=True),
                      dict(post=2, post_final=True), dict(pre=1, post=3, post_final=True)]
    got = _stream(server, "sender_decoupled_batching",
                  [_sender_inputs(grpcclient, batch=True, **s) for s in decoupled_sets])
    assert sorted(i for i, e in got if i is not None) == [1000, 1000, 2000, 2000, 2001, 2001,
                                                           2002]
    assert all(e is None for _, e in got)


DECOUPLED_CASES = [
    (dict(pre=2, pre_final=True), [(1000, None), (1001, None)]),
    (dict(pre=1, post=3, post_final=True), [(1000, None), (2000, None), (2001, None),
                                             (2002, None)]),
    (dict(pre_final=True), []),
    (dict(pre=1, pre_final=True, ret=True), [(1000, None)]),  # closed: the error goes nowhere
]


@pytest.mark.parametrize("model", ["sender_decoupled", "sender_decoupled_async"])
@pytest.mark.parametrize("case,expected", DECOUPLED_CASES)
def test_decoupled_senders(server, case, expected, model):
    assert _stream(server, model, [_sender_inputs(grpcclient, **case)]) == expected


@pytest.mark.parametrize("case", [dict(ret=True), dict(ret=True, post=1, post_final=True)])
def test_a_decoupled_model_returning_responses_gets_an_error_with_the_final_flag(server, case):
    got = _stream(server, "sender_decoupled", [_sender_inputs(grpcclient, **case)])
    assert len(got) == 1
    assert got[0][0] is None
    assert "is using the decoupled mode and the execute function must return None" in got[0][1]
    # the stream ended (stop_stream returned) and the model still serves
    assert _stream(server, "sender_decoupled",
                   [_sender_inputs(grpcclient, pre=1, pre_final=True)]) == [(1000, None)]


# -- errors and parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_error_takes_message_and_code_by_keyword(server, protocol):
    module, client = triton_client(protocol, server)
    expected = {1: ("bad input, by keyword", 400, "StatusCode.INVALID_ARGUMENT"),
                2: ("the older keyword", 500, "StatusCode.INTERNAL"),
                3: ("positional", 404, "StatusCode.NOT_FOUND")}
    for x, (text, http_status, grpc_status) in expected.items():
        inp = module.InferInput("X", [1], "INT32")
        inp.set_data_from_numpy(np.array([x], np.int32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("errors", [inp])
        assert info.value.message().endswith(text)
        assert str(info.value.status()) == (str(http_status) if protocol == "http"
                                            else grpc_status)


def _params_infer(module, client, params, model="params"):
    inp = module.InferInput("RESPONSE_PARAMETERS", [1], "BYTES")
    inp.set_data_from_numpy(np.array([json.dumps(params).encode()], dtype=np.object_))
    return client.infer(model, [inp])


def _response_parameters(protocol, result) -> dict:
    if protocol == "http":
        return result.get_response().get("parameters", {})
    out = {}
    for key, value in result.get_response().parameters.items():
        out[key] = getattr(value, value.WhichOneof("parameter_choice"))
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("params", [{}, {"many_elements": False},
                                    {"bool": True, "str": "Hello World!", "int": 1024},
                                    {"a": "1", "b": "2", "c": 3, "d": False, "e": 5, "f": ""}])
def test_response_parameters_reach_the_client(server, protocol, params):
    module, client = triton_client(protocol, server)
    result = _params_infer(module, client, params)
    assert _response_parameters(protocol, result) == params
    assert result.as_numpy("OUTPUT")[0] == json.dumps(params).encode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("params,message", [
    ([], "Expect <dict>, got <class 'list'>"),
    ({"1": "int key"}, "Expect parameters keys to have type str, found type <class 'int'>"),
    ({"int": 2, "float": 0.5},
     "Expect parameters values to have type bool/int/str, found type <class 'float'>"),
    ({"bool": True, "null": None},
     "Expect parameters values to have type bool/int/str, found type <class 'NoneType'>"),
    ({"str": "", "list": ["variable"]},
     "Expect parameters values to have type bool/int/str, found type <class 'list'>"),
])
def test_response_parameters_of_the_wrong_type_are_refused_with_tritons_message(
        server, protocol, params, message):
    module, client = triton_client(protocol, server)
    with pytest.raises(InferenceServerException) as info:
        _params_infer(module, client, params)
    assert message in info.value.message()
    assert str(info.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")


def test_decoupled_response_parameters(server):
    params = [{"bool": False, "int": 2048}, {"str": "Hello World!"}]
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inp = grpcclient.InferInput("RESPONSE_PARAMETERS", [1], "BYTES")
    inp.set_data_from_numpy(np.array([json.dumps(params).encode()], dtype=np.object_))
    client.async_stream_infer("params_decoupled", [inp])
    client.stop_stream()
    got = [responses.get_nowait() for _ in range(responses.qsize())]
    assert [e for _, e in got] == [None, None]
    for (result, _), expected in zip(got, params):
        assert _response_parameters("grpc", result) == {**expected,
                                                        "triton_final_response": False}


FORGETFUL_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
{extra}
input [ {{ name: "HOLD" data_type: TYPE_BOOL dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""

# takes its requests' senders and never sends the final flag; HOLD: sends a
# response first (without the final flag)
FORGETFUL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.senders = []

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            if pb_utils.get_input_tensor_by_name(r, "HOLD").as_numpy()[0]:
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", np.array([5], np.int32))]))
            self.senders.append(sender)
        return None
"""


@pytest.mark.parametrize("extra", ["", "model_transaction_policy { decoupled: true }",
                                   'parameters { key: "EXECUTION_MODE" value: '
                                   '{ string_value: "process" } }'],
                         ids=["in-process", "decoupled", "worker-process"])
def test_requests_a_model_never_completed_are_answered_when_it_unloads(repo, extra):
    write_model(repo, "forgetful", FORGETFUL_CONFIG.format(name="forgetful", extra=extra),
                {"model.py": FORGETFUL_PY})
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=forgetful") as srv:
        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for hold in (False, True):
            inp = grpcclient.InferInput("HOLD", [1], "BOOL")
            inp.set_data_from_numpy(np.array([hold]))
            client.async_stream_infer("forgetful", [inp], request_id=str(int(hold)),
                                      enable_empty_final_response=True)
        decoupled = "decoupled" in extra
        if decoupled:  # the held response went out as it was sent
            result, error = results.get(timeout=30)
            assert error is None and int(result.as_numpy("Y")[0]) == 5
        control = grpcclient.InferenceServerClient(srv.grpc_url)
        for _ in range(300):  # both requests executed (and left open)
            stats = control.get_inference_statistics("forgetful", as_json=True)
            if int(stats["model_stats"][0].get("execution_count", 0)) >= 2:
                break
            time.sleep(0.05)
        control.unload_model("forgetful")
        got = [results.get(timeout=30) for _ in range(2)]
        client.stop_stream()
        by_id = {}
        for result, error in got:
            if error is not None:
                by_id.setdefault("error", []).append(error.message())
            else:
                by_id[result.get_response().id] = result
        if decoupled:  # both streams end with an error, the flag with it
            assert len(by_id["error"]) == 2
        else:  # the one held response is the answer; the other request gets the error
            assert int(by_id["1"].as_numpy("Y")[0]) == 5
            assert len(by_id["error"]) == 1
        assert all("'forgetful' version 1 was unloaded before it completed the response" in m
                   for m in by_id["error"])
