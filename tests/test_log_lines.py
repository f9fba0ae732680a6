"""Triton's log lines: what a user greps for, in Triton 2.51's format; --log-format=json;
onnxruntime's own log following --log-verbose.

The lines checked are those the reference Triton 2.51 prints (see the issue-13 notes):
``I1206 19:22:10.000970 19209 model_lifecycle.cc:472] "loading: add_sub:1"``,
``... model_lifecycle.cc:839] "successfully loaded 'add_sub'"``,
``... model_lifecycle.cc:624] "successfully unloaded 'add_sub' version 1"``,
``E... model_lifecycle.cc:642] "failed to load 'bad' version 1: ..."`` and, at
--log-verbose=1, ``"HTTP request: 2 /v2/models/add_sub/infer"``,
``"add response output: output: OUTPUT0, type: FP32, shape: [4]"``,
``"Process for ModelInferHandler, rpc_ok=1, 0 step START"``.
"""

from __future__ import annotations

import json
import queue
import re
import time

import numpy as np
import onnx
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import NaiadProcess, copy_example, write_model
from onnx import TensorProto, helper, numpy_helper

BAD_PY = """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("boom at init")

    def execute(self, requests):
        return []
"""

# "<level><mmdd> <hh:mm:ss.us> <pid> <file>:<line>] <message as a JSON string>"
LINE = r"^{L}\d{{4}} \d\d:\d\d:\d\d\.\d{{6}} \d+ [\w.]+\.py:\d+\] {msg}$"


def _line(level: str, message: str) -> re.Pattern:
    return re.compile(LINE.format(L=level, msg=re.escape(json.dumps(message))), re.M)


def _wait_for(proc: NaiadProcess, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = proc.output()
        if needle in out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def _add_sub_inputs(module):
    a = np.arange(4, dtype=np.float32)
    inputs = [module.InferInput("INPUT0", [4], "FP32"), module.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs


def _repo(repo):
    copy_example(repo, "add_sub")
    write_model(repo, "bad", 'name: "bad"\nbackend: "python"\n', {"model.py": BAD_PY})
    return repo


def test_model_lifecycle_lines(repo):
    _repo(repo)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=add_sub") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        out = proc.output()
        assert _line("I", "loading: add_sub:1").search(out), out
        assert _line("I", "successfully loaded 'add_sub'").search(out), out
        # a failed load: the version's reason at error level, then the model at info
        r = requests.post(proc.base + "/v2/repository/models/bad/load", timeout=30)
        assert r.status_code == 400
        out = _wait_for(proc, "failed to load 'bad'\"")
        assert _line("I", "loading: bad:1").search(out), out
        assert re.search(r"^E\d{4} .*\] \"failed to load 'bad' version 1: .*boom at init.*\"$",
                         out, re.M), out
        assert _line("I", "failed to load 'bad'").search(out), out
        client.unload_model("add_sub")
        out = _wait_for(proc, "successfully unloaded")
        assert _line("I", "successfully unloaded 'add_sub' version 1").search(out), out
        # nothing per request at the default verbosity
        client.load_model("add_sub")
        client.infer("add_sub", _add_sub_inputs(httpclient))
        out = proc.output()
        assert "HTTP request:" not in out and "add response output" not in out


def test_verbose_request_and_response_lines(repo):
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, "--log-verbose=1") as proc:
        httpclient.InferenceServerClient(proc.http_url).infer(
            "add_sub", _add_sub_inputs(httpclient))
        out = _wait_for(proc, "add response output")
        assert _line("I", "HTTP request: 2 /v2/models/add_sub/infer").search(out), out
        assert _line("I", "add response output: output: OUTPUT0, type: FP32, shape: [4]"
                     ).search(out), out
        assert _line("I", "add response output: output: OUTPUT1, type: FP32, shape: [4]"
                     ).search(out), out
        requests.get(proc.base + "/v2/health/ready", timeout=10)
        assert _line("I", "HTTP request: 0 /v2/health/ready").search(
            _wait_for(proc, "/v2/health/ready\""))
        before = proc.output().count("add response output")
        grpcclient.InferenceServerClient(proc.grpc_url).infer(
            "add_sub", _add_sub_inputs(grpcclient))
        deadline = time.monotonic() + 15
        while proc.output().count("add response output") < before + 2:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
        out = proc.output()
        assert re.search(r'\] "Process for ModelInferHandler, rpc_ok=1, \d+ step START"$',
                         out, re.M), out


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_verbose_response_lines_on_grpc(repo, transport):
    """ModelInfer and ModelStreamInfer log a line per output sent, on both gRPC transports."""
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, "--log-verbose=1", env={"NAIAD_GRPC_SERVER": transport}) as proc:
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        client.infer("add_sub", _add_sub_inputs(grpcclient))
        _wait_count(proc, 2)
        received = queue.Queue()
        client.start_stream(callback=lambda result, error: received.put((result, error)))
        try:
            for _ in range(3):
                client.async_stream_infer("add_sub", _add_sub_inputs(grpcclient))
            for _ in range(3):
                result, error = received.get(timeout=30)
                assert error is None, error
                assert result.as_numpy("OUTPUT0").tolist() == [0.0, 2.0, 4.0, 6.0]
        finally:
            client.stop_stream()
        out = _wait_count(proc, 8)  # 2 outputs per response: 1 unary + 3 streamed
    for name in ("OUTPUT0", "OUTPUT1"):
        line = _line("I", f"add response output: output: {name}, type: FP32, shape: [4]")
        assert len(line.findall(out)) == 4, out


def _wait_count(proc: NaiadProcess, count: int, timeout: float = 15.0) -> str:
    """The log once it holds ``count`` response-output lines (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        out = proc.output()
        if out.count("add response output") >= count:
            return out
        assert time.monotonic() < deadline, out
        time.sleep(0.05)


def test_json_log_format(repo):
    _repo(repo)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=add_sub",
                      "--log-format=json", "--log-verbose=1") as proc:
        requests.post(proc.base + "/v2/repository/models/bad/load", timeout=30)
        httpclient.InferenceServerClient(proc.http_url).infer(
            "add_sub", _add_sub_inputs(httpclient))
        out = _wait_for(proc, "add response output")
    entries = []
    for text in out.splitlines():
        if not text.strip():
            continue
        entry = json.loads(text)  # every line is one JSON object
        assert set(entry) >= {"time", "level", "pid", "file", "message"}, entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["time"])
        assert re.fullmatch(r"[\w.]+\.py:\d+", entry["file"]), entry
        entries.append(entry)
    by_message = {e["message"]: e for e in entries}
    loaded = by_message["successfully loaded 'add_sub'"]
    assert loaded["level"] == "INFO" and loaded["model"] == "add_sub"
    failed = [e for e in entries if e["message"].startswith("failed to load 'bad' version 1")]
    assert failed and failed[0]["level"] == "ERROR" and failed[0]["model"] == "bad"
    request = by_message["HTTP request: 2 /v2/models/add_sub/infer"]
    assert request["level"] == "VERBOSE"
    assert by_message["add response output: output: OUTPUT0, type: FP32, shape: [4]"][
        "model"] == "add_sub"
    # the model table is one entry too, its text intact
    table = [e for e in entries if "| Model" in e["message"]]
    assert table and "| add_sub | 1       | READY  |" in table[0]["message"]


def test_unescaped_messages_when_asked(repo):
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, env={"TRITON_SERVER_ESCAPE_LOG_MESSAGES": "0"}) as proc:
        out = proc.output()
    assert re.search(r"^I\d{4} .*\] successfully loaded 'add_sub'$", out, re.M), out


def _chatty_onnx(path):
    """Identity with an unused initializer: onnxruntime warns that it removes it."""
    unused = numpy_helper.from_array(np.ones(3, np.float32), "never_used")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
        initializer=[unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_onnxruntime_log_follows_log_verbose(repo):
    _chatty_onnx(repo / "chatty" / "1" / "model.onnx")
    (repo / "chatty" / "config.pbtxt").write_text(
        'name: "chatty"\nbackend: "onnxruntime"\nmax_batch_size: 0\n')
    with NaiadProcess(repo) as proc:
        quiet = proc.output()
    assert "successfully loaded 'chatty'" in quiet
    assert "never_used" not in quiet and "onnxruntime:" not in quiet, quiet
    with NaiadProcess(repo, "--log-verbose=1") as proc:
        chatty = proc.output()
    # at --log-verbose=1 onnxruntime's warnings come through (its own format)
    assert "never_used" in chatty, chatty


def test_poll_mode_changes_are_logged(repo, tmp_path):
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, "--model-control-mode=poll", "--repository-poll-secs=0.2") as proc:
        staged = copy_example(tmp_path, "string_upper")
        staged.rename(repo / "string_upper")  # appears at once, whole
        out = _wait_for(proc, "successfully loaded 'string_upper'")
        assert _line("I", "loading: string_upper:1").search(out), out
        assert _line("I", "successfully loaded 'string_upper'").search(out), out
        (repo / "string_upper").rename(tmp_path / "gone")
        out = _wait_for(proc, "successfully unloaded 'string_upper'")
        assert _line("I", "successfully unloaded 'string_upper' version 1").search(out), out
