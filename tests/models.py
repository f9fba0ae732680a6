"""The one library of test models: python models written against Triton's API, and the
functions that write them (and ensembles of them) into a model repository.

Each ``write_*``/``add_*`` function writes one model folder with
``tests.conftest.write_model``; the ``*_PY`` strings are the model.py sources and
the ``*_CONFIG`` strings their configs. The client helpers that talk to a
served model are ``tests/clients.py``.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import copy_example, write_model

# ------------------------------------------------------------------------------------------
# model management: OUT = IN + OFFSET, with slow or failing initialize
# ------------------------------------------------------------------------------------------

# A python model: OUT = IN + OFFSET. It sleeps IN[1] seconds in execute when
# given, sleeps INIT_SLEEP in initialize, and can fail to initialize. It logs
# initialize/finalize calls (with the instance name) to EVENTS when set.
OFFSET_PY = '''
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}
INIT_SLEEP = {init_sleep}
FAIL = {fail}
EVENTS = {events!r}
HOLD_UNTIL = {hold_until!r}
MEET = {meet!r}


def _event(text):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(text + "\\n")


class TritonPythonModel:
    def initialize(self, args):
        if INIT_SLEEP:
            time.sleep(INIT_SLEEP)
        deadline = time.monotonic() + 60
        while HOLD_UNTIL and not os.path.exists(HOLD_UNTIL) and time.monotonic() < deadline:
            time.sleep(0.01)
        if MEET:  # (folder, n): wait until n initializes run at once, or fail
            folder, n = MEET
            open(os.path.join(folder, args["model_instance_name"]), "w").close()
            while len(os.listdir(folder)) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError("the other initializes did not run at the same time")
                time.sleep(0.01)
        if FAIL:
            raise RuntimeError("initialize failed on purpose")
        self.instance = args["model_instance_name"]
        _event("init " + self.instance + " " + args["model_version"])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            if x.shape[0] > 1 and x[1] > 0:
                _event("busy " + self.instance)
                time.sleep(float(x[1]))
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", (x + OFFSET).astype(np.float32))]))
        return out

    def finalize(self):
        _event("fini " + self.instance)
'''

OFFSET_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
{extra}
'''

def model_py(offset: float = 0.0, init_sleep: float = 0.0, fail: bool = False,
             events: str = "", hold_until: str = "", meet: tuple[str, int] | None = None) -> str:
    """OFFSET_PY; its initialize waits until the file ``hold_until`` exists, and with
    ``meet=(folder, n)`` until n initializes (this one among them) run at once."""
    return OFFSET_PY.format(offset=offset, init_sleep=init_sleep, fail=fail, events=events,
                            hold_until=hold_until, meet=meet)

def config_text(name: str, count: int = 1, extra: str = "") -> str:
    return OFFSET_CONFIG.format(name=name, count=count, extra=extra)

NO_INLINE = 'parameters { key: "NAIAD_INLINE_EXECUTION" value: { string_value: "off" } }'

def add_model(repo: Path, name: str, offset: float = 0.0, versions=(1,), count: int = 1,
              init_sleep: float = 0.0, fail: bool = False, events: str = "",
              extra: str = "", inline: bool = True, hold_until: str = "",
              meet: tuple[str, int] | None = None) -> Path:
    """A test model; ``inline=False`` keeps its executions on its worker threads
    (models that sleep must not run on the submitting thread)."""
    if not inline:
        extra = f"{extra}\n{NO_INLINE}"
    source = model_py(offset, init_sleep, fail, events, hold_until, meet)
    return write_model(repo, name, config_text(name, count, extra), {"model.py": source},
                       versions)

# ------------------------------------------------------------------------------------------
# observability, shared memory, protocol extensions
# ------------------------------------------------------------------------------------------

# IN (FP32, batched) -> OUT = IN. A request whose sum is negative gets an error
# response; above 1000 the model raises; "sleep_ms" in the request parameters
# makes it sleep first. Request parameters come back as response parameters.
ECHO_PY = """
import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            params = json.loads(r.parameters())
            if "sleep_ms" in params:
                time.sleep(params["sleep_ms"] / 1000.0)
            if x.sum() > 1000:
                raise pb_utils.TritonModelException("too large")
            if x.sum() < 0:
                out.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("negative input")))
                continue
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", x)], parameters={"echo": json.dumps(params, sort_keys=True),
                                                         "count": len(params), "ok": True}))
        return out
"""

ECHO_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] {labels} }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{extra}
"""

def write_echo(repo: Path, name: str = "echo", labels: list[str] | None = None,
               inline: bool = True) -> Path:
    """``inline=False``: always run on the instance's thread, never on the submitting one."""
    label_line = 'label_filename: "labels.txt"' if labels is not None else ""
    extra = "" if inline else (
        'parameters { key: "NAIAD_INLINE_EXECUTION" value: { string_value: "off" } }')
    d = write_model(repo, name, ECHO_CONFIG.format(name=name, labels=label_line, extra=extra),
                    {"model.py": ECHO_PY})
    if labels is not None:
        (d / "labels.txt").write_text("".join(f"{lb}\n" for lb in labels))
    return d

# decoupled: IN (INT32 [1]) = n -> n responses OUT = 0..n-1, then a final flag
REPEAT_INLINE_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            sender = r.get_response_sender()
            for i in range(n):
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", np.array([i], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

REPEAT_INLINE_CONFIG = """
name: "repeat"
backend: "python"
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
"""

def write_repeat_inline(repo: Path) -> Path:
    return write_model(repo, "repeat", REPEAT_INLINE_CONFIG, {"model.py": REPEAT_INLINE_PY})

# custom metrics: every request increments a counter, sets a gauge and feeds a
# histogram with the value of IN
CUSTOM_METRICS_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.requests = pb_utils.MetricFamily(
            name="custom_requests_seen", description="Requests this model saw",
            kind=pb_utils.MetricFamily.COUNTER)
        self.last = pb_utils.MetricFamily(
            name="custom_last_value", description="The last value seen",
            kind=pb_utils.MetricFamily.GAUGE)
        self.values = pb_utils.MetricFamily(
            name="custom_value_histogram", description="Values seen",
            kind=pb_utils.MetricFamily.HISTOGRAM)
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.requests_metric = self.requests.Metric(labels=labels)
        self.last_metric = self.last.Metric(labels=labels)
        self.values_metric = self.values.Metric(labels=labels, buckets=[1.0, 10.0, 100.0])
        # misuse is refused the way Triton refuses it
        self.errors = []
        for bad in (lambda: self.requests_metric.increment(-1),
                    lambda: self.requests_metric.set(3),
                    lambda: self.last_metric.observe(1.0),
                    lambda: self.values.Metric(labels={}),
                    lambda: self.values.Metric(labels={}, buckets=[2.0, 1.0]),
                    lambda: pb_utils.MetricFamily(name="custom_requests_seen", description="x",
                                                  kind=pb_utils.MetricFamily.GAUGE)):
            try:
                bad()
            except pb_utils.TritonModelException as exc:
                self.errors.append(str(exc))

    def execute(self, requests):
        out = []
        for r in requests:
            x = float(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            self.requests_metric.increment(1)
            self.last_metric.set(x)
            self.values_metric.observe(x)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", __import__("numpy").array(
                    [self.requests_metric.value(), len(self.errors)], dtype="float32"))]))
        return out
"""

CUSTOM_METRICS_CONFIG = """
name: "custom_metrics"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""

def write_custom_metrics(repo: Path) -> Path:
    return write_model(repo, "custom_metrics", CUSTOM_METRICS_CONFIG,
                       {"model.py": CUSTOM_METRICS_PY})

# logs one line per severity through pb_utils.Logger, tagged with the request's TAG input
LOGGER_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        logger = pb_utils.Logger
        out = []
        for r in requests:
            tag = pb_utils.get_input_tensor_by_name(r, "TAG").as_numpy()[0].decode()
            logger.log_info(f"info-{tag}")
            logger.log_warn(f"warn-{tag}")
            logger.log_error(f"error-{tag}")
            logger.log_verbose(f"verbose-{tag}")
            logger.log(f"leveled-{tag}", pb_utils.LogLevel.INFO)
            logger.log(f"end-{tag}", pb_utils.LogLevel.WARNING)  # the last line, always on
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", np.array([len(tag)], dtype=np.int32))]))
        return out
"""

LOGGER_CONFIG = """
name: "logger"
backend: "python"
input [ { name: "TAG" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

def write_logger(repo: Path) -> Path:
    return write_model(repo, "logger", LOGGER_CONFIG, {"model.py": LOGGER_PY})

# Triton's "simple" example model's interface (INT32 [16], batched) as a python model
SIMPLE_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b),
                                                   pb_utils.Tensor("OUTPUT1", a - b)]))
        return out
"""

SIMPLE_CONFIG = """
name: "simple"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""

def write_simple(repo: Path) -> Path:
    return write_model(repo, "simple", SIMPLE_CONFIG, {"model.py": SIMPLE_PY})

# ------------------------------------------------------------------------------------------
# pipelines: ensembles and BLS
# ------------------------------------------------------------------------------------------

# Y = X * MUL + ADD (FP32, any length); a negative first element fails the request
# with a model error, NaN raises inside execute, +inf makes it sleep a little.
AFFINE_PY = """
import json, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = cfg.get("parameters", {})
        self.mul = float(p.get("MUL", {}).get("string_value", "1"))
        self.add = float(p.get("ADD", {}).get("string_value", "0"))
        self.name = args["model_name"]

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x.size and np.isnan(x[0]):
                raise ValueError(f"{self.name} cannot take NaN")
            if x.size and x[0] < 0:
                out.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name} refuses negative input")))
                continue
            if x.size and np.isinf(x[0]):
                time.sleep(0.05)
                x = np.zeros_like(x)
            y = (x * self.mul + self.add).astype(np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

AFFINE_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {mbs}
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
parameters {{ key: "MUL" value: {{ string_value: "{mul}" }} }}
parameters {{ key: "ADD" value: {{ string_value: "{add}" }} }}
{extra}
"""

# C = A + B
SUM_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "B").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("C", (a + b).astype(np.float32))]))
        return out
"""

SUM_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "A" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: "B" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "C" data_type: TYPE_FP32 dims: [ -1 ] }} ]
"""

# Decoupled: N = IN[0] responses, each OUT = [i]; IN < 0: an error response.
# Responses after the first come from a thread that outlives execute().
REPEAT_PY = """
import threading, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            sender = r.get_response_sender()
            if n < 0:
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("repeat count must not be negative")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            if n == 0:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([0], np.int32))]))

            def rest(sender=sender, n=n):
                for i in range(1, n):
                    time.sleep(0.001)
                    sender.send(pb_utils.InferenceResponse(
                        [pb_utils.Tensor("OUT", np.array([i], np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

            threading.Thread(target=rest).start()
        return None
"""

REPEAT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""

# Decoupled with an async execute: N = IN[0] responses produced concurrently
ASYNC_REPEAT_PY = """
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            sender = r.get_response_sender()
            for i in range(n):
                await asyncio.sleep(0.01)
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# int32 -> float32 cast, to join a decoupled producer to float steps
CAST_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "F", pb_utils.get_input_tensor_by_name(r, "I").as_numpy().astype(np.float32))])
            for r in requests]
"""

CAST_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ { name: "I" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "F" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

def write_affine(repo: Path, name: str, mul: float = 1.0, add: float = 0.0, mbs: int = 0,
                 extra: str = "") -> None:
    write_model(repo, name, AFFINE_CONFIG.format(name=name, mul=mul, add=add, mbs=mbs,
                                                 extra=extra), {"model.py": AFFINE_PY})

def write_sum(repo: Path, name: str = "sum") -> None:
    write_model(repo, name, SUM_CONFIG.format(name=name), {"model.py": SUM_PY})

def write_repeat(repo: Path, name: str = "repeat", asynchronous: bool = False) -> None:
    write_model(repo, name, REPEAT_CONFIG.format(name=name),
                {"model.py": ASYNC_REPEAT_PY if asynchronous else REPEAT_PY})

def write_cast(repo: Path, name: str = "cast") -> None:
    write_model(repo, name, CAST_CONFIG.replace("{name}", name), {"model.py": CAST_PY})

def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {ins} {outs} }}'

def write_ensemble(repo: Path, name: str, inputs: list[tuple[str, str, str]],
                   outputs: list[tuple[str, str, str]], steps: list[str], mbs: int = 0,
                   extra: str = "") -> None:
    """inputs/outputs: (name, TYPE_x, dims text like "-1" or "1")."""
    ins = ", ".join(f'{{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in inputs)
    outs = ", ".join(f'{{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in outputs)
    config = (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {mbs}\n'
              f"input [ {ins} ]\noutput [ {outs} ]\n"
              f"ensemble_scheduling {{ {extra} step [ {', '.join(steps)} ] }}\n")
    write_model(repo, name, config, {})

# ------------------------------------------------------------------------------------------
# gRPC
# ------------------------------------------------------------------------------------------

WIRE_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "FP32", "FP64", "BYTES"]

def _identity_config() -> str:
    ins, outs = [], []
    for t in WIRE_TYPES:
        ct = "TYPE_STRING" if t == "BYTES" else f"TYPE_{t}"
        ins.append(f'{{ name: "IN_{t}" data_type: {ct} dims: [ -1 ] optional: true }}')
        outs.append(f'{{ name: "OUT_{t}" data_type: {ct} dims: [ -1 ] }}')
    return (
        'name: "identity"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input [\n  {(',' + chr(10) + '  ').join(ins)}\n]\n"
        f"output [\n  {(',' + chr(10) + '  ').join(outs)}\n]\n"
        "instance_group [ { kind: KIND_CPU } ]\n"
    )

IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outs = [pb_utils.Tensor("OUT_" + t.name()[3:], t.as_numpy())
                    for t in request.inputs()]
            responses.append(pb_utils.InferenceResponse(outs))
        return responses
"""

# N responses (OUT = 0..N-1), each 10 ms apart from a thread, then the final
# flag alone; N < 0: one error response with the final flag; N >= 100: N-100
# responses, the last carrying the final flag.
REPEAT_N_CONFIG = """
name: "repeat"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

REPEAT_N_PY = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            sender = request.get_response_sender()
            threading.Thread(target=self.run, args=(n, sender)).start()
        return None

    def run(self, n, sender):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def out(i):
            return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))])

        if n < 0:
            error = pb_utils.TritonError("negative n")
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        if n >= 100:
            k = n - 100
            for i in range(k):
                sender.send(out(i), flags=final if i == k - 1 else 0)
            return
        for i in range(n):
            time.sleep(0.01)
            sender.send(out(i))
        sender.send(flags=final)
"""

# Every execution waits until 8 requests are inside execute at once: it can
# only finish if the server keeps 8 requests in flight.
BARRIER_CONFIG = """
name: "barrier"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 8 } ]
"""

BARRIER_MODEL = """
import threading

import triton_python_backend_utils as pb_utils

BARRIER = threading.Barrier(8, timeout=20)


class TritonPythonModel:
    def execute(self, requests):
        BARRIER.wait()
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
"""

# Returns its request's parameters as JSON (forwarded headers land there).
PARAMS_CONFIG = """
name: "params"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

PARAMS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "PARAMS", np.array([r.parameters().encode()], dtype=np.object_))])
            for r in requests]
"""

SLOW_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

SLOW_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(float(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0]))
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
"""

def bf16_identity(repo: Path) -> None:
    """An ONNX model: y = x (BF16) and f = float(x), batched."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]),
         helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT)], "bf16_identity",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 3]),
         helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = repo / "bf16_identity" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    (repo / "bf16_identity" / "config.pbtxt").write_text(
        'name: "bf16_identity"\nbackend: "onnxruntime"\nmax_batch_size: 4\n')

def build_repository(repo: Path) -> Path:
    """add_sub, string_upper, tiny_classifier (examples) plus the models above."""
    for name in ("add_sub", "string_upper", "tiny_classifier"):
        copy_example(repo, name)
    write_model(repo, "identity", _identity_config(), {"model.py": IDENTITY_MODEL})
    write_model(repo, "repeat", REPEAT_N_CONFIG, {"model.py": REPEAT_N_PY})
    write_model(repo, "barrier", BARRIER_CONFIG, {"model.py": BARRIER_MODEL})
    write_model(repo, "params", PARAMS_CONFIG, {"model.py": PARAMS_MODEL})
    write_model(repo, "slow", SLOW_CONFIG, {"model.py": SLOW_MODEL})
    bf16_identity(repo)
    return repo

# ------------------------------------------------------------------------------------------
# scheduling: the probe model reports how each request was executed
# ------------------------------------------------------------------------------------------

# For every request OUT echoes IN, BATCH is the total batch size of the execution
# the request was part of, EXEC numbers the executions (one counter per model
# version, across its instances) and INSTANCE names the instance. A request whose
# first IN element is negative makes the execution sleep that many seconds, which
# holds the instance busy while a test queues requests behind it; the ``busy_ms``
# config parameter makes every execution spend that much CPU time.

PROBE_MODEL = '''
import itertools
import os
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
        # a gate (negative input) writes <gate_dir>/<model> as it starts: tests wait for it
        self.gate_file = None
        gate_dir = params.get("gate_dir", {}).get("string_value")
        if gate_dir:
            self.gate_file = os.path.join(gate_dir, args["model_name"])

    def execute(self, requests):
        with _LOCK:
            exec_id = next(_EXEC)
        if self.busy_s:  # CPU work per execution, like a real model
            end = time.thread_time() + self.busy_s
            while time.thread_time() < end:
                pass
        first = pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()
        if first.size and first.flat[0] < 0:
            if self.gate_file:  # written whole, under a name of this execution's own first
                part = f"{self.gate_file}.{self.instance}.{exec_id}.part"
                with open(part, "w") as f:
                    f.write(str(exec_id))
                os.replace(part, self.gate_file)
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


def gate_parameter(folder: Path) -> str:
    """The probe model's ``gate_dir`` parameter (for ``extra``): a gate (negative input)
    writes ``folder/<model>`` as it starts executing, so a test can wait for that."""
    return f'parameters {{ key: "gate_dir" value: {{ string_value: "{folder}" }} }}'


# a python model's instances in worker processes (append to a config)
PROCESS_PARAMETER = 'parameters { key: "EXECUTION_MODE" value: { string_value: "process" } }'
