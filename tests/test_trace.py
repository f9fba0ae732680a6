"""The trace extension: Triton's trace files with the TIMESTAMPS (and TENSORS) events, trace
settings changed at run time, and OpenTelemetry spans sent to a collector."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from naiad.core.errors import InvalidArgument
from naiad.core.types import InferenceRequest
from naiad.observability.tracing import Tracer
from tests.conftest import NaiadProcess, copy_example, write_model
from tests.models import write_echo

CORE_EVENTS = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
               "COMPUTE_OUTPUT_START", "COMPUTE_END", "INFER_RESPONSE_COMPLETE", "REQUEST_END"]
HTTP_EVENTS = ["HTTP_RECV_START", "HTTP_RECV_END", "HTTP_SEND_START", "HTTP_SEND_END"]
CHILD_EVENTS = [e for e in CORE_EVENTS if e != "INFER_RESPONSE_COMPLETE"]


def _add_sub(client, a, b, request_id=""):
    i0 = httpclient.InferInput("INPUT0", [4], "FP32")
    i0.set_data_from_numpy(a)
    i1 = httpclient.InferInput("INPUT1", [4], "FP32")
    i1.set_data_from_numpy(b)
    return client.infer("add_sub", [i0, i1], request_id=request_id)


def _traces(items: list) -> dict:
    """{id: {"meta": {...}, "events": [(name, ns)], "tensors": [...]}} from Triton's array."""
    out: dict = {}
    for item in items:
        t = out.setdefault(item["id"], {"meta": None, "events": [], "tensors": []})
        if "model_name" in item:
            t["meta"] = item
        elif "timestamps" in item:
            t["events"] += [(s["name"], s["ns"]) for s in item["timestamps"]]
        elif "activity" in item:
            t["tensors"].append((item["activity"], item["tensor"]))
        else:
            raise AssertionError(f"unexpected trace item {item}")
    return out


def test_trace_file_has_the_timestamps_of_every_request(tmp_path):
    copy_example(tmp_path, "add_sub")
    trace_file = tmp_path / "trace.json"
    proc = NaiadProcess(tmp_path, "--trace-config", f"triton,file={trace_file}",
                        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1")
    with proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        a = np.arange(4, dtype=np.float32)
        for i in range(3):
            _add_sub(client, a, a, request_id=f"req-{i}")
        settings = client.get_trace_settings()
        assert settings == {"trace_level": ["TIMESTAMPS"], "trace_rate": "1",
                            "trace_count": "-1", "log_frequency": "0",
                            "trace_file": str(trace_file), "trace_mode": "triton"}
        assert proc.stop() == 0  # the trace array is closed at shutdown
    traces = _traces(json.loads(trace_file.read_text()))
    assert sorted(traces) == [1, 2, 3]
    for tid, t in traces.items():
        assert t["meta"] == {"id": tid, "model_name": "add_sub", "model_version": 1,
                             "request_id": f"req-{tid - 1}"}
        names = [n for n, _ in t["events"]]
        assert sorted(names) == sorted(CORE_EVENTS + HTTP_EVENTS)
        ns = dict(t["events"])
        # the request's life in order
        order = ["HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START",
                 "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END",
                 "REQUEST_END", "HTTP_SEND_START", "HTTP_SEND_END"]
        stamps = [ns[n] for n in order]
        assert stamps == sorted(stamps), t["events"]
        assert ns["COMPUTE_END"] <= ns["INFER_RESPONSE_COMPLETE"] <= ns["REQUEST_END"]
        assert t["tensors"] == []  # TIMESTAMPS only


def test_tensors_level_and_log_frequency_files(tmp_path):
    write_echo(tmp_path)
    base = tmp_path / "t.json"
    with NaiadProcess(tmp_path, "--trace-config", f"triton,file={base}",
                      "--trace-config", "triton,log-frequency=2",
                      "--trace-config", "level=TIMESTAMPS", "--trace-config", "level=TENSORS",
                      "--trace-config", "rate=1") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        for v in (1.5, 2.0, 3.0):
            x = np.full((1, 4), v, np.float32)
            inp = httpclient.InferInput("IN", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            client.infer("echo", [inp])
        # every 2 traces go to <file>.<k> right away
        first = json.loads((tmp_path / "t.json.0").read_text())
        assert sorted(_traces(first)) == [1, 2]
        assert not (tmp_path / "t.json.1").exists()
        proc.stop()
    rest = _traces(json.loads((tmp_path / "t.json.1").read_text()))
    assert sorted(rest) == [3]
    tensors = rest[3]["tensors"]
    assert tensors == [
        ("TENSOR_QUEUE_INPUT", {"name": "IN", "data": "3,3,3,3", "shape": "1,4",
                                "dtype": "FP32"}),
        ("TENSOR_BACKEND_OUTPUT", {"name": "OUT", "data": "3,3,3,3", "shape": "1,4",
                                   "dtype": "FP32"}),
    ]
    first_tensors = _traces(first)[1]["tensors"]
    assert first_tensors[0][1]["data"] == "1.5,1.5,1.5,1.5"


def test_trace_settings_change_at_run_time(tmp_path):
    copy_example(tmp_path, "add_sub")
    write_echo(tmp_path)
    trace_file = tmp_path / "trace.json"
    with NaiadProcess(tmp_path, "--trace-config", f"triton,file={trace_file}") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        base = proc.base
        default = client.get_trace_settings()
        assert default["trace_level"] == ["OFF"] and default["trace_rate"] == "1000"
        # trace only echo, every request, two of them
        s = client.update_trace_settings("echo", {"trace_level": ["TIMESTAMPS"],
                                                  "trace_rate": "1", "trace_count": "2"})
        assert s["trace_level"] == ["TIMESTAMPS"] and s["trace_count"] == "2"
        assert client.get_trace_settings()["trace_level"] == ["OFF"]  # global unchanged
        x = np.ones((1, 4), np.float32)
        for _ in range(4):
            inp = httpclient.InferInput("IN", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            client.infer("echo", [inp])
            _add_sub(client, x[0], x[0])
        assert client.get_trace_settings("echo")["trace_count"] == "0"  # remaining
        # a model setting mirrors global values it does not override
        client.update_trace_settings(settings={"log_frequency": "7"})
        assert client.get_trace_settings("echo")["log_frequency"] == "7"
        # null clears a model's override: back to the global value
        r = requests.post(base + "/v2/models/echo/trace/setting",
                          json={"trace_level": None, "trace_rate": None, "trace_count": None},
                          timeout=10)
        assert r.status_code == 200 and r.json()["trace_level"] == ["OFF"]
        assert r.json()["trace_rate"] == "1000"
        # errors, with Triton's messages
        for body, status, text in [
            ({"trace_rate": "abc"}, 400, "Unable to parse 'trace_rate', got: abc"),
            ({"trace_count": "-5"}, 400,
             "Unable to parse 'trace_count'. Expecting value >= -1, got:-5"),
            ({"trace_level": ["OFF", "TENSORS"]}, 400,
             "Expect only one trace level 'OFF' is specified"),
            ({"trace_level": ["LOUD"]}, 400, "Unable to parse 'trace_level'"),
            ({"trace_file": "/tmp/elsewhere.json"}, 501,
             "trace file location can not be updated through network protocol"),
            ({"bogus": "1"}, 400, "unknown trace setting 'bogus'"),
        ]:
            r = requests.post(base + "/v2/trace/setting", json=body, timeout=10)
            assert r.status_code == status, (body, r.text)
            assert text in r.json()["error"], (body, r.text)
        r = requests.post(base + "/v2/trace/setting",
                          json={"trace_rate": "0", "trace_level": ["TIMESTAMPS"]}, timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] == \
            "Attempting to set invalid trace setting :sample rate must be non-zero"
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            client.get_trace_settings("nope")
        assert requests.put(base + "/v2/trace/setting", timeout=10).status_code == 405
        proc.stop()
    traces = _traces(json.loads(trace_file.read_text()))
    assert len(traces) == 2
    assert {t["meta"]["model_name"] for t in traces.values()} == {"echo"}


def test_tracing_needs_a_file_in_triton_mode(tmp_path):
    copy_example(tmp_path, "add_sub")
    proc = NaiadProcess(tmp_path, "--trace-config", "level=TIMESTAMPS", wait="none").start()
    assert proc.proc.wait(timeout=60) == 2
    assert "triton,file=" in proc.output()
    proc.stop()
    with NaiadProcess(tmp_path) as proc:
        r = requests.post(proc.base + "/v2/trace/setting",
                          json={"trace_level": ["TIMESTAMPS"]}, timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] == \
            "Attempting to set invalid trace setting :trace file name is not given"


def test_sampling_follows_rate_and_count():
    tracer = Tracer({"": {"level": "TIMESTAMPS", "rate": "3", "count": "2"},
                     "triton": {"file": "/dev/null"}})
    sampled = [tracer.sample(InferenceRequest("m", {})) is not None for _ in range(12)]
    # every 3rd request, and only 2 of them
    assert sampled == [False, False, True, False, False, True] + [False] * 6
    assert tracer.get_settings()["trace_count"] == "0"
    assert tracer.active is False  # nothing left to trace: the frontends skip tracing
    off = Tracer({})
    assert off.active is False
    with pytest.raises(InvalidArgument, match="unknown trace mode"):
        Tracer({"": {"mode": "zipkin"}})


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        n = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append((self.path, self.headers.get("Content-Type"),
                                  self.rfile.read(n)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_opentelemetry_spans_reach_the_collector(tmp_path):
    pytest.importorskip("opentelemetry.sdk")  # the 'tracing' extra; in the test extra too
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    copy_example(tmp_path, "add_sub")
    _Collector.bodies = []
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    try:
        with NaiadProcess(tmp_path, "--trace-config", "mode=opentelemetry",
                          "--trace-config", f"opentelemetry,url={url}",
                          "--trace-config", "opentelemetry,bsp_schedule_delay=100",
                          "--trace-config", "opentelemetry,resource=deployment=test",
                          "--trace-config", "level=TIMESTAMPS",
                          "--trace-config", "rate=1") as proc:
            client = httpclient.InferenceServerClient(proc.http_url)
            assert client.get_trace_settings()["trace_mode"] == "opentelemetry"
            a = np.ones(4, np.float32)
            _add_sub(client, a, a, request_id="otel-1")
            deadline = time.monotonic() + 20
            while not _Collector.bodies and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.stop()
    finally:
        collector.shutdown()
    assert _Collector.bodies, "no spans were exported"
    spans = []
    resources = []
    for path, ctype, body in _Collector.bodies:
        assert path == "/v1/traces" and ctype == "application/x-protobuf"
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            resources.append({kv.key: kv.value.string_value for kv in rs.resource.attributes})
            for ss in rs.scope_spans:
                spans += list(ss.spans)
    assert resources[0]["service.name"] == "triton-inference-server"
    assert resources[0]["deployment"] == "test"
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"InferRequest", "add_sub", "compute"}
    root, model, compute = by_name["InferRequest"], by_name["add_sub"], by_name["compute"]
    assert model.parent_span_id == root.span_id and compute.parent_span_id == model.span_id
    assert root.trace_id == model.trace_id == compute.trace_id
    # the frontend's stamps (INFER_RESPONSE_COMPLETE is one, as in Triton) go on the root span
    assert [e.name for e in root.events] == ["HTTP_RECV_START", "HTTP_RECV_END",
                                             "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START",
                                             "HTTP_SEND_END"]
    assert [e.name for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [e.name for e in compute.events] == ["COMPUTE_START", "COMPUTE_INPUT_END",
                                                "COMPUTE_OUTPUT_START", "COMPUTE_END"]
    attrs = {kv.key: kv.value for kv in model.attributes}
    assert attrs["triton.model_name"].string_value == "add_sub"
    assert attrs["triton.model_version"].int_value == 1
    assert attrs["triton.request_id"].string_value == "otel-1"
    assert root.start_time_unix_nano <= model.start_time_unix_nano <= \
        compute.start_time_unix_nano <= compute.end_time_unix_nano <= model.end_time_unix_nano
    assert abs(root.start_time_unix_nano / 1e9 - time.time()) < 120  # wall clock, not monotonic


BLS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            child = pb_utils.InferenceRequest(
                model_name="add_sub", requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)],
                trace=r.trace())
            assert r.trace().get_context() is None
            res = child.exec()
            if res.has_error():
                raise pb_utils.TritonModelException(res.error().message())
            out.append(pb_utils.InferenceResponse(
                [pb_utils.get_output_tensor_by_name(res, "OUTPUT0")]))
        return out
"""

BLS_CONFIG = """
name: "bls_caller"
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def test_python_models_can_hand_their_trace_to_bls_requests(tmp_path):
    copy_example(tmp_path, "add_sub")
    write_model(tmp_path, "bls_caller", BLS_CONFIG, {"model.py": BLS_PY})
    trace_file = tmp_path / "trace.json"
    with NaiadProcess(tmp_path, "--trace-config", f"triton,file={trace_file}",
                      "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        inp = httpclient.InferInput("IN", [4], "FP32")
        inp.set_data_from_numpy(np.arange(4, dtype=np.float32))
        out = client.infer("bls_caller", [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32) * 2)
        proc.stop()
    traces = _traces(json.loads(trace_file.read_text()))
    # the BLS call is traced as a child of the request that made it, as Triton does
    metas = sorted((t["meta"] for t in traces.values()), key=lambda m: m["id"])
    assert [m["model_name"] for m in metas] == ["bls_caller", "add_sub"]
    parent, child = metas
    assert "parent_id" not in parent and child["parent_id"] == parent["id"]
    child_events = dict(traces[child["id"]]["events"])
    parent_events = dict(traces[parent["id"]]["events"])
    # as Triton 2.51 writes a child: the core events, no response or frontend events
    assert set(child_events) == set(CHILD_EVENTS)
    # the call happens inside the caller's execution
    assert parent_events["COMPUTE_START"] <= child_events["REQUEST_START"]
    assert child_events["REQUEST_END"] <= parent_events["COMPUTE_END"]


def test_ensemble_steps_are_traced_as_children(tmp_path):
    from tests.models import step, write_affine, write_ensemble

    write_affine(tmp_path, "double", mul=2.0)
    write_affine(tmp_path, "inc", add=1.0)
    write_ensemble(tmp_path, "pipe", [("X", "TYPE_FP32", "1")], [("Y", "TYPE_FP32", "1")],
                   [step("double", {"X": "X"}, {"Y": "mid"}),
                    step("inc", {"X": "mid"}, {"Y": "Y"})])
    trace_file = tmp_path / "trace.json"
    with NaiadProcess(tmp_path, "--trace-config", f"triton,file={trace_file}",
                      "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        inp = httpclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.array([3], dtype=np.float32))
        assert client.infer("pipe", [inp]).as_numpy("Y").tolist() == [7.0]
        proc.stop()
    traces = _traces(json.loads(trace_file.read_text()))
    metas = {t["meta"]["model_name"]: t["meta"] for t in traces.values()}
    assert sorted(metas) == ["double", "inc", "pipe"]
    root = metas["pipe"]
    assert "parent_id" not in root
    assert metas["double"]["parent_id"] == root["id"] == metas["inc"]["parent_id"]
    ev = {name: dict(traces[m["id"]]["events"]) for name, m in metas.items()}
    # checked against Triton 2.51: steps have the core events but no response event,
    # the ensemble has no compute events (no backend executes it)
    assert set(ev["double"]) == set(ev["inc"]) == set(CHILD_EVENTS)
    assert set(ev["pipe"]) == {"REQUEST_START", "QUEUE_START", "INFER_RESPONSE_COMPLETE",
                               "REQUEST_END"} | set(HTTP_EVENTS)
    # the second step starts after the first one ends, inside the ensemble request
    assert ev["double"]["COMPUTE_END"] <= ev["inc"]["COMPUTE_START"]
    assert ev["pipe"]["REQUEST_START"] <= ev["double"]["REQUEST_START"]
    assert ev["inc"]["COMPUTE_END"] <= ev["pipe"]["INFER_RESPONSE_COMPLETE"]


def test_trace_flags_old_and_new_spellings():
    from naiad.cli import options_from_args
    from naiad.observability.tracing import parse_trace_config

    opts = options_from_args(["--model-repository=/m", "--trace-file=/tmp/t.json",
                              "--trace-level=TIMESTAMPS", "--trace-rate=5",
                              "--trace-count=9", "--trace-log-frequency=3"])
    values, _ = parse_trace_config(opts.trace_config)
    assert values == {"level": ("TIMESTAMPS",), "rate": 5, "count": 9, "log_frequency": 3,
                      "file": "/tmp/t.json", "mode": "triton"}
    opts = options_from_args(["--model-repository=/m", "--trace-config=triton,file=/tmp/x",
                              "--trace-config", "level=TIMESTAMPS",
                              "--trace-config", "level=TENSORS",
                              "--trace-config", "triton,log-frequency=7"])
    values, _ = parse_trace_config(opts.trace_config)
    assert values["level"] == ("TIMESTAMPS", "TENSORS") and values["log_frequency"] == 7
    with pytest.raises(InvalidArgument, match="unknown --trace-config setting 'triton,bogus'"):
        parse_trace_config({"triton": {"bogus": "1"}})
