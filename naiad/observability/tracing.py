"""Request tracing: Triton's trace files, OpenTelemetry spans, and the trace extension.

Frontends start traces: when ``Tracer.active`` (one attribute read; False
unless some trace level is on, so an untraced server pays nothing more), a
frontend stamps when it began receiving, calls ``Tracer.sample`` once the
request is decoded (the rate/count decision), and finishes the trace after it
sent the response. Everything between comes from the timestamps the core
stamps on every request anyway (``arrival_ns`` ... ``compute_end_ns``), so the
core has no tracing code at all.

Two outputs, as in Triton (``--trace-config mode=triton|opentelemetry``):

- ``triton``: Triton's JSON trace file, an array of small objects per trace
  (``{"id", "model_name", "model_version"}``, ``{"id", "timestamps": [{"name",
  "ns"}]}`` and, at level TENSORS, ``{"id", "activity", "tensor"}``). With
  ``log_frequency`` 0 the traces stream into ``trace_file`` (the array is
  closed at shutdown); with N > 0 every N traces go to ``trace_file.<k>``.
  Timestamps are the monotonic clock in ns, like Triton's steady clock.
- ``opentelemetry``: spans exported over OTLP/HTTP by the OpenTelemetry SDK
  (the ``tracing`` extra): a root ``InferRequest`` span carrying the
  frontend's events, a span named after the model (``REQUEST_START``,
  ``QUEUE_START``, ``REQUEST_END``) and its ``compute`` child span, with
  Triton's attribute names.

The trace extension (GET/POST ``/v2[/models/{m}]/trace/setting``, gRPC
TraceSetting) reads and changes the settings at run time: a model's settings
override the global ones field by field, a ``null`` clears an override.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from naiad.core.errors import InvalidArgument, Unsupported
from naiad.core.extras import install_hint

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest, InferenceResponse, Tensor

log = logging.getLogger("naiad.trace")

MODE_TRITON = "triton"
MODE_OPENTELEMETRY = "opentelemetry"
LEVEL_TIMESTAMPS = "TIMESTAMPS"
LEVEL_TENSORS = "TENSORS"
_LEVELS = (LEVEL_TIMESTAMPS, LEVEL_TENSORS)

# The frontend stamps each protocol records, as Triton names them.
FRONTEND_STAMPS = {
    "HTTP": ("HTTP_RECV_START", "HTTP_RECV_END", "HTTP_SEND_START", "HTTP_SEND_END"),
    "GRPC": ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "GRPC_SEND_START", "GRPC_SEND_END"),
}

_SETTING_KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file",
                 "trace_mode")

OTEL_DEFAULT_URL = "http://localhost:4318/v1/traces"


# -- settings -----------------------------------------------------------------------


class _Scope:
    """The effective settings of the global scope or one model, with its sampling state."""

    __slots__ = ("level", "rate", "count", "log_frequency", "file", "mode", "_seen", "_lock")

    def __init__(self, values: dict):
        self.level: tuple[str, ...] = tuple(values["level"])
        self.rate: int = values["rate"]
        self.count: int = values["count"]
        self.log_frequency: int = values["log_frequency"]
        self.file: str = values["file"]
        self.mode: str = values["mode"]
        self._seen = 0
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return bool(self.level) and self.count != 0 and self.rate > 0

    def take(self) -> bool:
        """The sampling decision for one request (rate, then the remaining count)."""
        with self._lock:
            if not self.level or self.count == 0 or self.rate <= 0:
                return False
            self._seen += 1
            if self._seen % self.rate:
                return False
            if self.count > 0:
                self.count -= 1
            return True

    def as_dict(self) -> dict:
        return {
            "trace_level": list(self.level) or ["OFF"],
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.file,
            "trace_mode": self.mode,
        }


def _json_type(value: Any) -> str:
    """How JSON names the type of a parsed value (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _parse_int(key: str, text: Any, minimum: int) -> int:
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidArgument(f"'{key}' must be a string holding an integer")
    try:
        value = int(str(text).strip())
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {text}") from None
    if value < minimum:
        raise InvalidArgument(
            f"Unable to parse '{key}'. Expecting value >= {minimum}, got:{value}")
    return value


def _parse_levels(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("'trace_level' must be an array of strings")
    levels = [v.strip().upper() for v in value]
    if "OFF" in levels:
        if len(levels) > 1:
            raise InvalidArgument("Expect only one trace level 'OFF' is specified")
        return ()
    out: list[str] = []
    for lv in levels:
        if lv not in _LEVELS:
            raise InvalidArgument(
                f"Unable to parse 'trace_level', got: {lv} (expected OFF, TIMESTAMPS or "
                "TENSORS)")
        if lv not in out:
            out.append(lv)
    return tuple(out)


def parse_trace_config(config: dict[str, dict[str, str]]) -> tuple[dict, dict]:
    """``--trace-config`` groups -> (the global settings, the OpenTelemetry options).

    Raises InvalidArgument with a message fit for the command line.
    """
    values: dict[str, Any] = {"level": (), "rate": 1000, "count": -1, "log_frequency": 0,
                              "file": "", "mode": MODE_TRITON}
    otel: dict[str, str] = {}
    for group, settings in config.items():
        for key, raw in settings.items():
            text = str(raw).strip()
            k = key.replace("_", "-")
            if group == "" and k == "mode":
                if text not in (MODE_TRITON, MODE_OPENTELEMETRY):
                    raise InvalidArgument(
                        f"unknown trace mode '{text}': expected triton or opentelemetry")
                values["mode"] = text
            elif group == "" and k == "level":
                values["level"] = _parse_levels(text.split(",") if text else ["OFF"])
            elif group == "" and k == "rate":
                values["rate"] = _parse_int("rate", text, 0)
            elif group == "" and k == "count":
                values["count"] = _parse_int("count", text, -1)
            elif group in ("", MODE_TRITON) and k == "log-frequency":
                values["log_frequency"] = _parse_int("log-frequency", text, 0)
            elif group in ("", MODE_TRITON) and k == "file":
                values["file"] = text
            elif group == MODE_OPENTELEMETRY and k in ("url", "resource", "bsp-max-queue-size",
                                                        "bsp-schedule-delay",
                                                        "bsp-max-export-batch-size"):
                otel[k] = text
            else:
                where = f"{group}," if group else ""
                raise InvalidArgument(f"unknown --trace-config setting '{where}{key}'")
    if values["level"] and values["rate"] == 0:
        raise InvalidArgument("--trace-config rate must be non-zero when tracing is on")
    if values["level"] and values["mode"] == MODE_TRITON and not values["file"]:
        raise InvalidArgument(
            "--trace-config triton,file=<path> is required to trace in the triton mode")
    return values, otel


# -- traces ----------------------------------------------------------------------


def _tensor_text(t: "Tensor") -> dict:
    arr = t.data
    flat = arr.reshape(-1)
    if t.datatype == "BYTES":
        items = [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)
                 for x in flat]
    elif t.datatype == "BOOL":
        items = ["1" if x else "0" for x in flat]
    elif t.datatype == "BF16":
        from naiad.core.tensor_bytes import bf16_bits_to_float

        items = [format(float(x), "g") for x in bf16_bits_to_float(flat)]
    elif np.issubdtype(arr.dtype, np.floating):
        items = [format(float(x), "g") for x in flat]
    else:
        items = [str(int(x)) for x in flat]
    return {"name": t.name, "data": ",".join(items),
            "shape": ",".join(str(d) for d in arr.shape), "dtype": t.datatype}


class Trace:
    """One sampled request's trace, filled in by its frontend and the core's stamps."""

    __slots__ = ("id", "protocol", "scope", "stamps", "inputs", "outputs", "parent_id",
                 "ensemble")

    def __init__(self, trace_id: int, protocol: str, scope: _Scope):
        self.id = trace_id
        self.protocol = protocol
        self.scope = scope
        self.stamps: list[tuple[str, int]] = []
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []
        self.parent_id = 0
        self.ensemble = False  # an ensemble's trace has no compute events (as Triton's)

    @property
    def tensors(self) -> bool:
        return LEVEL_TENSORS in self.scope.level

    def stamp(self, name: str, ns: int | None = None) -> None:
        self.stamps.append((name, time.monotonic_ns() if ns is None else ns))

    def response(self, response: "InferenceResponse | None", ns: int | None = None) -> None:
        """A response was produced (several for decoupled models)."""
        self.stamp("INFER_RESPONSE_COMPLETE", ns)
        if response is not None and response.error is None and self.tensors:
            self.outputs.extend(_tensor_text(t) for t in response.outputs)


# -- outputs -----------------------------------------------------------------------------


class TraceFile:
    """Triton's trace file(s): one streamed JSON array, or indexed files every N traces."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stream = None
        self._first = True
        self._pending: list[str] = []
        self._index = 0

    def add(self, trace_json: str, log_frequency: int) -> None:
        with self._lock:
            try:
                if log_frequency <= 0:
                    if self._stream is None:
                        self._stream = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
                        self._stream.write("[")
                    if not self._first:
                        self._stream.write(",")
                    self._stream.write(trace_json)
                    self._first = False
                    return
                self._pending.append(trace_json)
                if len(self._pending) >= log_frequency:
                    self._write_indexed()
            except OSError as exc:
                log.error("unable to write trace file '%s': %s", self.path, exc)

    def _write_indexed(self) -> None:
        path = f"{self.path}.{self._index}"
        self._index += 1
        data = "[" + ",".join(self._pending) + "]"
        self._pending = []
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)

    def flush(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.flush()

    def close(self) -> None:
        with self._lock:
            try:
                if self._pending:
                    self._write_indexed()
                if self._stream is not None:
                    self._stream.write("]")
                    self._stream.close()
                    self._stream = None
            except OSError as exc:
                log.error("unable to write trace file '%s': %s", self.path, exc)


def _triton_json(trace: Trace, request: "InferenceRequest") -> str:
    """One trace as Triton's array items (joined with commas, no brackets)."""
    tid = trace.id
    head: dict[str, Any] = {"id": tid, "model_name": request.model_name,
                            "model_version": int(request.model_version)}
    if request.id:
        head["request_id"] = request.id
    if trace.parent_id:
        head["parent_id"] = trace.parent_id
    items: list[str] = []
    dumps = json.dumps
    emitted_head = False
    stamps = sorted(trace.stamps, key=lambda s: s[1])
    for name, ns in stamps:
        if name == "REQUEST_START":
            items.append(dumps(head, separators=(",", ":")))
            emitted_head = True
        if name == "INFER_RESPONSE_COMPLETE" and trace.outputs:
            for t in trace.outputs:
                items.append(dumps({"id": tid, "activity": "TENSOR_BACKEND_OUTPUT",
                                    "tensor": t}, separators=(",", ":")))
            trace.outputs = []
        items.append(f'{{"id":{tid},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}')
        if name == "QUEUE_START":
            for t in trace.inputs:
                items.append(dumps({"id": tid, "activity": "TENSOR_QUEUE_INPUT",
                                    "tensor": t}, separators=(",", ":")))
    for t in trace.outputs:  # a child trace's outputs (it has no response stamp)
        items.append(dumps({"id": tid, "activity": "TENSOR_BACKEND_OUTPUT", "tensor": t},
                           separators=(",", ":")))
    if not emitted_head:
        items.insert(0, dumps(head, separators=(",", ":")))
    return ",".join(items)


class _OtelExporter:
    """Spans through the OpenTelemetry SDK, shaped as Triton's opentelemetry mode shapes them."""

    def __init__(self, options: dict[str, str]):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, set_span_in_context
        except ImportError:
            raise InvalidArgument(
                "--trace-config mode=opentelemetry needs the OpenTelemetry SDK and OTLP "
                f"exporter: {install_hint('tracing')}") from None
        attrs: dict[str, str] = {"service.name": "triton-inference-server"}
        resource = options.get("resource", "")
        if resource:
            key, eq, value = resource.partition("=")
            if not eq or not key:
                raise InvalidArgument(
                    f"--trace-config opentelemetry,resource expects <key>=<value>, got "
                    f"'{resource}'")
            attrs[key] = value
        bsp: dict[str, int] = {}
        for opt, arg in (("bsp-max-queue-size", "max_queue_size"),
                         ("bsp-schedule-delay", "schedule_delay_millis"),
                         ("bsp-max-export-batch-size", "max_export_batch_size")):
            if opt in options:
                bsp[arg] = _parse_int(opt, options[opt], 1)
        self.url = options.get("url") or OTEL_DEFAULT_URL
        self._provider = TracerProvider(resource=Resource.create(attrs))
        try:
            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url), **bsp)
        except ValueError as exc:
            raise InvalidArgument(f"invalid OpenTelemetry batch span processor setting: {exc}"
                                  ) from None
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("triton-server")
        self._kind = SpanKind.SERVER
        self._in_context = set_span_in_context

    def export(self, trace: Trace, request: "InferenceRequest") -> None:
        offset = time.time_ns() - time.monotonic_ns()
        stamps = sorted(trace.stamps, key=lambda s: s[1])
        if not stamps:
            return
        by_name = {}
        for name, ns in stamps:
            by_name.setdefault(name, ns)
        core = ("REQUEST_START", "QUEUE_START", "REQUEST_END")
        compute = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")
        tracer = self._tracer
        root = tracer.start_span("InferRequest", kind=self._kind,
                                 start_time=stamps[0][1] + offset)
        for name, ns in stamps:
            if name not in core and name not in compute:
                root.add_event(name, timestamp=ns + offset)
        if "REQUEST_START" in by_name:
            start = by_name["REQUEST_START"]
            span = tracer.start_span(
                request.model_name, context=self._in_context(root), kind=self._kind,
                start_time=start + offset,
                attributes={"triton.model_name": request.model_name,
                            "triton.model_version": int(request.model_version),
                            "triton.trace_id": trace.id,
                            "triton.trace_parent_id": trace.parent_id,
                            **({"triton.request_id": request.id} if request.id else {})})
            for name in ("REQUEST_START", "QUEUE_START"):
                if name in by_name:
                    span.add_event(name, timestamp=by_name[name] + offset)
            if "COMPUTE_START" in by_name:
                cspan = tracer.start_span("compute", context=self._in_context(span),
                                          kind=self._kind,
                                          start_time=by_name["COMPUTE_START"] + offset)
                for name in compute:
                    if name in by_name:
                        cspan.add_event(name, timestamp=by_name[name] + offset)
                cspan.end(end_time=by_name.get("COMPUTE_END", by_name["COMPUTE_START"]) + offset)
            end = by_name.get("REQUEST_END", stamps[-1][1])
            span.add_event("REQUEST_END", timestamp=end + offset)
            span.end(end_time=end + offset)
        root.end(end_time=stamps[-1][1] + offset)

    def shutdown(self) -> None:
        try:
            self._provider.shutdown()
        except Exception:  # pragma: no cover - exporter trouble at exit
            log.exception("shutting down the OpenTelemetry exporter failed")


# -- the tracer -------------------------------------------------------------------------------


class Tracer:
    """The trace settings (global and per model), the sampling, and the trace output."""

    def __init__(self, config: dict[str, dict[str, str]] | None = None,
                 model_exists: Callable[[str], bool] | None = None):
        values, otel = parse_trace_config(config or {})
        self._default = dict(values)
        self._global_values = dict(values)
        self._overrides: dict[str, dict] = {}
        self._global = _Scope(values)
        self._models: dict[str, _Scope] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._model_exists = model_exists
        self._files: dict[str, TraceFile] = {}
        self._otel = _OtelExporter(otel) if values["mode"] == MODE_OPENTELEMETRY else None
        self.active = False
        self._refresh_active()

    @property
    def mode(self) -> str:
        return self._global_values["mode"]

    def _refresh_active(self) -> None:
        self.active = self._global.on or any(s.on for s in self._models.values())

    # -- sampling (frontends) ------------------------------------------------------------

    def sample(self, request: "InferenceRequest", protocol: str = "HTTP",
               recv_start_ns: int = 0, recv_end_ns: int | None = None) -> Trace | None:
        """Decide whether to trace ``request``; when yes, attach and return its Trace.

        ``recv_start_ns``/``recv_end_ns`` are when the frontend began and finished
        receiving it (GRPC_WAITREAD_*/HTTP_RECV_*); the end defaults to now.
        """
        scope = self._models.get(request.model_name) or self._global
        if not scope.take():
            if not scope.on:
                with self._lock:
                    self._refresh_active()
            return None
        trace = Trace(next(self._ids), protocol, scope)
        names = FRONTEND_STAMPS.get(protocol)
        if names is not None and recv_start_ns:
            trace.stamps.append((names[0], recv_start_ns))
            trace.stamp(names[1], recv_end_ns)
        if trace.tensors:
            trace.inputs = [_tensor_text(t) for t in request.inputs.values()]
        request.trace = trace
        return trace

    def child(self, parent: Trace | None, request: "InferenceRequest") -> Trace | None:
        """Trace ``request``, made on behalf of the traced request ``parent`` (an
        ensemble step, a BLS call), as Triton does: a trace of its own whose
        ``parent_id`` is the parent's id, with the parent's settings. Call it after
        the request's response callback is set: the trace records each response
        and is written when the final one is delivered.
        """
        if parent is None:
            return None
        trace = Trace(next(self._ids), parent.protocol, parent.scope)
        trace.parent_id = parent.id
        if trace.tensors:
            trace.inputs = [_tensor_text(t) for t in request.inputs.values()]
        request.trace = trace
        deliver = request._callback
        finish = self.finish

        def traced(response: "InferenceResponse | None", final: bool) -> None:
            # Triton's child traces have no INFER_RESPONSE_COMPLETE: keep only the tensors
            if response is not None and response.error is None and trace.tensors:
                trace.outputs.extend(_tensor_text(t) for t in response.outputs)
            if final:
                finish(trace, request)
            if deliver is not None:
                deliver(response, final)

        request._callback = traced
        return trace

    def finish(self, trace: Trace, request: "InferenceRequest") -> None:
        """The trace is complete (response sent, or the request failed): write it out."""
        try:
            stamps = trace.stamps
            core = ((("REQUEST_START", request.arrival_ns),
                     ("QUEUE_START", request.queue_start_ns)) if trace.ensemble else
                    (("REQUEST_START", request.arrival_ns),
                     ("QUEUE_START", request.queue_start_ns),
                     ("COMPUTE_START", request.compute_start_ns),
                     ("COMPUTE_INPUT_END", request.compute_input_end_ns),
                     ("COMPUTE_OUTPUT_START", request.compute_output_start_ns),
                     ("COMPUTE_END", request.compute_end_ns)))
            for name, ns in core:
                if ns:
                    stamps.append((name, ns))
            if request.queue_start_ns and not any(n == "REQUEST_END" for n, _ in stamps):
                done = [ns for n, ns in stamps if n == "INFER_RESPONSE_COMPLETE"]
                stamps.append(("REQUEST_END", max(done) if done else time.monotonic_ns()))
            scope = trace.scope
            if scope.mode == MODE_OPENTELEMETRY:
                if self._otel is not None:
                    self._otel.export(trace, request)
                return
            if not scope.file:
                return
            out = self._files.get(scope.file)
            if out is None:
                with self._lock:
                    out = self._files.setdefault(scope.file, TraceFile(scope.file))
            out.add(_triton_json(trace, request), scope.log_frequency)
        except Exception:  # tracing must never break serving
            log.exception("recording trace %d failed", trace.id)

    def close(self) -> None:
        """Flush and close the trace output (server shutdown)."""
        with self._lock:
            files = list(self._files.values())
        for f in files:
            f.close()
        if self._otel is not None:
            self._otel.shutdown()

    def flush(self) -> None:
        for f in list(self._files.values()):
            f.flush()

    # -- the trace extension ---------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model and self._model_exists is not None and not self._model_exists(model):
            raise InvalidArgument(f"Request for unknown model : {model}")

    def get_settings(self, model: str = "") -> dict:
        self._check_model(model)
        scope = self._models.get(model) if model else None
        return (scope or self._global).as_dict()

    def update_settings(self, model: str, changes: dict) -> dict:
        """Apply a partial update (HTTP JSON or gRPC values); returns the new settings.

        Values have Triton's JSON types: a string, an array of strings for
        ``trace_level``; ``null`` (or an empty ``trace_level``) clears the
        setting (back to the global value for a model, to the startup value
        globally). A value of another type is refused and nothing changes
        (Triton answers 500 "attempt to access JSON non-string as string").
        gRPC's lists of strings are turned into these shapes by the codec.
        """
        self._check_model(model)
        if not isinstance(changes, dict):
            raise InvalidArgument("the trace setting request must be a JSON object")
        parsed: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in _SETTING_KEYS:
                raise InvalidArgument(
                    f"unknown trace setting '{key}': expected one of {', '.join(_SETTING_KEYS)}")
            if key == "trace_level":
                if value is not None and not (
                        isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise InvalidArgument(
                        f"'trace_level' must be an array of strings, got {_json_type(value)}")
                if value == []:
                    value = None
            elif value is not None and not isinstance(value, str):
                raise InvalidArgument(f"'{key}' must be a string, got {_json_type(value)}")
            if key == "trace_file":
                if value is not None and value != self._global_values["file"]:
                    raise Unsupported(
                        "trace file location can not be updated through network protocol")
                continue
            if key == "trace_mode":
                if value is not None and value != self._global_values["mode"]:
                    raise Unsupported(
                        "trace mode can not be updated through network protocol")
                continue
            if value is None:
                parsed[key] = None
            elif key == "trace_level":
                parsed["level"] = _parse_levels(value)
            elif key == "trace_rate":
                parsed["rate"] = _parse_int("trace_rate", value, 0)
            elif key == "trace_count":
                parsed["count"] = _parse_int("trace_count", value, -1)
            elif key == "log_frequency":
                parsed["log_frequency"] = _parse_int("log_frequency", value, 0)
        names = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count",
                 "log_frequency": "log_frequency"}
        with self._lock:
            if model:
                overrides = dict(self._overrides.get(model, {}))
                base = self._global_values
            else:
                overrides = dict(self._global_values)
                base = self._default
            for key, value in parsed.items():
                field = names.get(key, key)
                if value is None:
                    if model:
                        overrides.pop(field, None)
                    else:
                        overrides[field] = base[field]
                else:
                    overrides[field] = value
            effective = {**base, **overrides} if model else overrides
            if effective["level"]:
                if effective["rate"] == 0:
                    raise InvalidArgument(
                        "Attempting to set invalid trace setting :sample rate must be non-zero")
                if effective["mode"] == MODE_TRITON and not effective["file"]:
                    raise InvalidArgument(
                        "Attempting to set invalid trace setting :trace file name is not given")
            if model:
                if overrides:
                    self._overrides[model] = overrides
                    self._models[model] = _Scope(effective)
                else:
                    self._overrides.pop(model, None)
                    self._models.pop(model, None)
            else:
                self._global_values = effective
                self._global = _Scope(effective)
                # models mirror the global values they do not override
                for name, ov in self._overrides.items():
                    self._models[name] = _Scope({**effective, **ov})
            self._refresh_active()
            scope = self._models.get(model) if model else self._global
            return (scope or self._global).as_dict()
