"""Small python models for the observability, shared-memory and protocol-extension tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_model

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
REPEAT_PY = """
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

REPEAT_CONFIG = """
name: "repeat"
backend: "python"
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
"""


def write_repeat(repo: Path) -> Path:
    return write_model(repo, "repeat", REPEAT_CONFIG, {"model.py": REPEAT_PY})


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
