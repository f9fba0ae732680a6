"""Models and client helpers shared by the scheduling tests.

``PROBE_MODEL`` is a python model that reports, for every request, how the
server executed it: OUT echoes IN, BATCH is the total batch size of the
execution the request was part of, EXEC numbers the executions (one counter
per model version, across its instances) and INSTANCE names the instance. A
request whose first IN element is negative makes the execution sleep that
many seconds, which holds the instance busy while a test queues requests
behind it; the ``busy_ms`` config parameter makes every execution spend that
much CPU time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import tritonclient.http.aio as aioclient
from conftest import write_model

PROBE_MODEL = '''
import itertools
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

_EXEC = itertools.count(1)
_LOCK = threading.Lock()


class TritonPythonModel:
    def initialize(self, args):
        import json

        self.instance = args["model_instance_name"]
        params = json.loads(args["model_config"]).get("parameters", {})
        self.busy_s = float(params.get("busy_ms", {}).get("string_value", "0")) / 1000.0

    def execute(self, requests):
        with _LOCK:
            exec_id = next(_EXEC)
        if self.busy_s:  # CPU work per execution, like a real model
            end = time.thread_time() + self.busy_s
            while time.thread_time() < end:
                pass
        first = pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()
        if first.size and first.flat[0] < 0:
            time.sleep(float(-first.flat[0]))
        total = 0
        for r in requests:
            total += pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().shape[0]
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            n = x.shape[0]
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", x.copy()),
                pb_utils.Tensor("BATCH", np.full((n, 1), total, np.int32)),
                pb_utils.Tensor("EXEC", np.full((n, 1), exec_id, np.int32)),
                pb_utils.Tensor("INSTANCE", np.array([[self.instance.encode()]] * n,
                                                     dtype=np.object_)),
            ]))
        return out
'''


def probe_config(name: str, max_batch_size: int = 8, scheduling: str = "dynamic_batching { }",
                 dims: str = "[ 1 ]", count: int = 1, extra: str = "") -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: {dims} }} ]
output [
  {{ name: "OUT" data_type: TYPE_FP32 dims: {dims} }},
  {{ name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "EXEC" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "INSTANCE" data_type: TYPE_STRING dims: [ 1 ] }}
]
{scheduling}
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
{extra}
"""


def write_probe(repo: Path, name: str, **kw) -> Path:
    return write_model(repo, name, probe_config(name, **kw), {"model.py": PROBE_MODEL})


class Result:
    """One request's outcome as the client saw it."""

    def __init__(self, tag, value=None, batch=None, exec_id=None, instance=None, error=None,
                 status=None, sent=0.0, done=0.0):
        self.tag = tag
        self.value = value
        self.batch = batch
        self.exec_id = exec_id
        self.instance = instance
        self.error = error
        self.status = status
        self.sent = sent
        self.done = done

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.done - self.sent

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Result({self.tag!r}, error={self.status}:{self.error!r})"
        return f"Result({self.tag!r}, batch={self.batch}, exec={self.exec_id})"


async def infer_probe(client: aioclient.InferenceServerClient, model: str, value, tag=None,
                      shape=None, **kwargs) -> Result:
    arr = np.asarray(value, dtype=np.float32)
    if shape is not None:
        arr = arr.reshape(shape)
    elif arr.ndim == 0:
        arr = arr.reshape(1, 1)
    inp = aioclient.InferInput("IN", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    sent = time.monotonic()
    try:
        r = await client.infer(model, [inp], **kwargs)
    except Exception as exc:  # InferenceServerException
        status = exc.status() if hasattr(exc, "status") else None
        message = exc.message() if hasattr(exc, "message") else str(exc)
        return Result(tag if tag is not None else value, error=message, status=status,
                      sent=sent, done=time.monotonic())
    return Result(tag if tag is not None else value, value=r.as_numpy("OUT"),
                  batch=int(r.as_numpy("BATCH").reshape(-1)[0]),
                  exec_id=int(r.as_numpy("EXEC").reshape(-1)[0]),
                  instance=r.as_numpy("INSTANCE").reshape(-1)[0].decode(),
                  sent=sent, done=time.monotonic())


async def staggered(calls, gap: float = 0.03):
    """Start the coroutines ``gap`` seconds apart (so they queue in that order); gather."""
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call))
        await asyncio.sleep(gap)
    return await asyncio.gather(*tasks)


def run(coro):
    return asyncio.run(coro)
