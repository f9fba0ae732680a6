"""``naiad perf`` against a real server: perf_analyzer's output, CSV, export, load modes.

Each run is the real command (``python -m naiad perf``) with short windows and
a loose stability percentage, so a level settles in three windows; figures
are checked against the server's own statistics (counts, not timings).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import requests

from tests.conftest import ROOT, NaiadProcess, copy_example, write_model
from tests.models import step, write_ensemble, write_repeat

FAST = ["-p", "150", "-s", "1000"]  # 180 ms windows; any three windows count as stable

DOUBLE_PY = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)]) for r in requests]
'''

DOUBLE_CONFIG = """
name: "batch_double"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { }
"""

# Fails a request that continues a sequence it never saw start, or restarts a live one:
# perf's sequence flags and ids must be right for every request.
SEQ_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils

LIVE = set()

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            start = bool(pb_utils.get_input_tensor_by_name(r, "START").as_numpy().reshape(-1)[0])
            end = bool(pb_utils.get_input_tensor_by_name(r, "END").as_numpy().reshape(-1)[0])
            cid = int(pb_utils.get_input_tensor_by_name(r, "CORRID").as_numpy().reshape(-1)[0])
            if start == (cid in LIVE):
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"sequence {cid}: start={start} but live={cid in LIVE}")))
                continue
            LIVE.add(cid)
            if end:
                LIVE.discard(cid)
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
        return out
'''

SEQ_CONFIG = """
name: "seq"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 20000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
"""

FAIL_PY = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("no good input"))
                for _ in requests]
'''

FAIL_CONFIG = """
name: "fail"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("perf_models")
    copy_example(repo, "add_sub")
    write_model(repo, "batch_double", DOUBLE_CONFIG, {"model.py": DOUBLE_PY})
    write_model(repo, "seq", SEQ_CONFIG, {"model.py": SEQ_PY})
    write_repeat(repo)  # decoupled: IN[0] responses, then the final flag
    write_model(repo, "fail", FAIL_CONFIG, {"model.py": FAIL_PY})
    write_ensemble(repo, "pipe", [("A", "TYPE_FP32", "4"), ("B", "TYPE_FP32", "4")],
                   [("SUM", "TYPE_FP32", "4"), ("DIFF", "TYPE_FP32", "4")],
                   [step("add_sub", {"INPUT0": "A", "INPUT1": "B"},
                         {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"})])
    with NaiadProcess(repo) as s:
        yield s


def perf(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "naiad", "perf", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=str(ROOT))
    if check and r.returncode != 0:
        raise AssertionError(f"naiad perf failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def levels(stdout: str) -> list[dict]:
    """The per-level numbers perf printed."""
    out = []
    for block in re.split(r"^Request (?:concurrency|Rate): ", stdout, flags=re.M)[1:]:
        d = {"client_count": int(re.search(r"Client: \n    Request count: (\d+)", block)[1]),
             "throughput": float(re.search(r"Throughput: ([\d.e+]+) infer/sec", block)[1])}
        m = re.search(r"Successful request count: (\d+)", block)
        if m:
            d["server_count"] = int(m[1])
            d["inference_count"] = int(re.search(r"Inference count: (\d+)", block)[1])
        out.append(d)
    return out


def assert_counts_agree(level: dict, concurrency: int) -> None:
    """The server counted what perf's client counted, give or take the requests in flight
    at the two edges of each of the three windows, and those that finish while the
    statistics are read at an edge (with --workers, also while the parent's message reaches
    the worker processes): at ~1-3k requests/s, some 1 % of the count."""
    assert abs(level["server_count"] - level["client_count"]) <= \
        2 * 3 * concurrency + 0.01 * level["client_count"], level


def server_success(server, model: str) -> int:
    stats = requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()
    return sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])


PA_COLUMNS = ["Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
              "Server Queue", "Server Compute Input", "Server Compute Infer",
              "Server Compute Output", "Client Recv", "p50 latency", "p90 latency",
              "p95 latency", "p99 latency"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrency_range_prints_what_perf_analyzer_prints(server, tmp_path, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    csv_path = tmp_path / "out.csv"
    r = perf("-m", "add_sub", "-u", url, "-i", protocol, "--concurrency-range", "1:3:2",
             *FAST, "-f", str(csv_path))
    out = r.stdout
    assert out.startswith("*** Measurement Settings ***\n  Batch size: 1\n"
                          "  Service Kind: TRITON\n")
    assert "  Measurement window: 150 msec\n" in out
    assert "  Concurrency limit: 3 concurrent requests\n" in out
    assert "Request concurrency: 1\n  Client: \n    Request count: " in out
    assert "Request concurrency: 3\n" in out
    wire = "Avg HTTP time: " if protocol == "http" else "Avg gRPC time: "
    assert out.count(wire) == 2
    assert re.search(r"Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ "
                     r"compute input \d+ usec \+ compute infer \d+ usec \+ compute output \d+ "
                     r"usec\)", out)
    assert "Inferences/Second vs. Client Average Batch Latency\n" in out
    summary = re.findall(r"^Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) "
                         r"usec$", out, re.M)
    assert [s[0] for s in summary] == ["1", "3"]
    found = levels(out)
    for level, conc in zip(found, (1, 3)):
        assert_counts_agree(level, conc)
        assert level["inference_count"] == level["server_count"]
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == PA_COLUMNS
    assert sorted(int(row[0]) for row in rows[1:]) == [1, 3]
    throughputs = [float(row[1]) for row in rows[1:]]
    assert throughputs == sorted(throughputs)  # perf_analyzer sorts rows by throughput
    for row in rows[1:]:
        assert all(v.lstrip("-").replace(".", "").isdigit() for v in row)


def test_request_count_sends_exactly_that_many(server):
    before = server_success(server, "add_sub")
    r = perf("-m", "add_sub", "-u", server.http_url, "--request-count", "37",
             "--concurrency-range", "4")
    after = server_success(server, "add_sub")
    assert "  Sending 37 benchmark requests\n" in r.stdout
    assert after - before == 37
    assert levels(r.stdout)[0]["client_count"] == 37
    assert levels(r.stdout)[0]["server_count"] == 37


def test_warmup_requests_are_sent_and_not_counted(server):
    before = server_success(server, "add_sub")
    r = perf("-m", "add_sub", "-u", server.http_url, "--warmup-request-count", "11",
             "--request-count", "20")
    assert "  Sending 11 warmup requests\n" in r.stdout
    assert server_success(server, "add_sub") - before == 31
    assert levels(r.stdout)[0]["client_count"] == 20


def test_batching_model_with_shape_and_batch_size(server):
    r = perf("-m", "batch_double", "-u", server.http_url, "-b", "4", "--shape", "X:3",
             "--request-count", "10")
    level = levels(r.stdout)[0]
    assert level["client_count"] == 10
    # inference count is requests x batch size, as the server counts it
    assert level["inference_count"] == 40
    assert "  Batch size: 4\n" in r.stdout


def test_variable_input_without_shape_is_refused(server):
    r = perf("-m", "batch_double", "-u", server.http_url, "--request-count", "5", check=False)
    assert r.returncode == 1
    assert "input X contains dynamic shape, provide shapes to send along with the request" \
        in r.stderr


def test_json_input_data_is_sent_as_given(server, tmp_path):
    data = {"data": [{"INPUT0": [1, 2, 3, 4], "INPUT1": [10, 20, 30, 40]},
                     {"INPUT0": {"content": [5, 5, 5, 5], "shape": [4]},
                      "INPUT1": {"b64": "AACAPwAAgD8AAIA/AACAPw=="}}]}  # four 1.0f
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    export = tmp_path / "export.json"
    perf("-m", "add_sub", "-u", server.http_url, "--input-data", str(path),
         "--request-count", "6", "--profile-export-file", str(export))
    doc = json.loads(export.read_text())
    assert doc["service_kind"] == "triton"
    (exp,) = doc["experiments"]
    assert exp["experiment"] == {"mode": "concurrency", "value": 1}
    reqs = exp["requests"]
    assert len(reqs) == 6
    assert len(exp["window_boundaries"]) == 2
    seen = {tuple(r["request_inputs"]["INPUT0"]): r for r in reqs}
    assert set(seen) == {(1.0, 2.0, 3.0, 4.0), (5.0, 5.0, 5.0, 5.0)}
    first = seen[(1.0, 2.0, 3.0, 4.0)]
    assert first["response_outputs"][0]["OUTPUT0"] == [11.0, 22.0, 33.0, 44.0]
    second = seen[(5.0, 5.0, 5.0, 5.0)]
    assert second["response_outputs"][0]["OUTPUT1"] == [4.0, 4.0, 4.0, 4.0]
    for r in reqs:
        assert r["response_timestamps"][0] >= r["timestamp"]


def test_grpc_profile_export_decodes_outputs(server, tmp_path):
    export = tmp_path / "export.json"
    perf("-m", "add_sub", "-i", "grpc", "-u", server.grpc_url, "--input-data", "zero",
         "--request-count", "3", "--profile-export-file", str(export))
    reqs = json.loads(export.read_text())["experiments"][0]["requests"]
    assert [r["response_outputs"][0]["OUTPUT0"] for r in reqs] == [[0.0] * 4] * 3


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sequences_start_and_end_correctly(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    r = perf("-m", "seq", "-u", url, "-i", protocol, "--concurrency-range", "3",
             "--sequence-length", "4", "--sequence-length-variation", "0", *FAST)
    out = r.stdout
    assert "  Using asynchronous calls for inference\n" in out  # sequence models default
    m = re.search(r"Sequence count: (\d+) \(([\d.e+]+) seq/sec\)", out)
    assert m and int(m[1]) > 0
    level = levels(out)[0]
    # 4 requests per sequence: the sequences ended in the windows are about a quarter
    assert int(m[1]) * 4 <= level["client_count"] + 4 * 3


def test_sequence_streams_from_json_play_in_order(server, tmp_path):
    streams = {"data": [[{"IN": [1]}, {"IN": [2]}, {"IN": [3]}], [{"IN": [7]}, {"IN": [8]}]]}
    path = tmp_path / "streams.json"
    path.write_text(json.dumps(streams))
    export = tmp_path / "export.json"
    perf("-m", "seq", "-u", server.http_url, "--input-data", str(path), "--request-count", "10",
         "--profile-export-file", str(export))
    reqs = json.loads(export.read_text())["experiments"][0]["requests"]
    by_seq: dict[int, list[int]] = {}
    for r in sorted(reqs, key=lambda r: r["timestamp"]):
        by_seq.setdefault(r["sequence_id"], []).append(r["request_inputs"]["IN"])
    assert sorted(by_seq.values()) == [[1, 2, 3], [1, 2, 3], [7, 8], [7, 8]]
    assert sorted(by_seq) == [1, 2, 3, 4]  # ids from --sequence-id-range's default start 1


def test_decoupled_model_over_grpc_stream(server, tmp_path):
    path = tmp_path / "three.json"
    path.write_text(json.dumps({"data": [{"IN": [3]}]}))
    r = perf("-m", "repeat", "-i", "grpc", "-u", server.grpc_url, "--streaming",
             "--input-data", str(path), *FAST, "--concurrency-range", "2")
    out = r.stdout
    assert "  Detected decoupled model, using the first response for measuring latency\n" in out
    m = re.search(r"Throughput: ([\d.e+]+) infer/sec\n    Response Throughput: ([\d.e+]+) "
                  r"infer/sec", out)
    assert m
    # three responses per request (the empty final one does not count)
    assert float(m[2]) == pytest.approx(3 * float(m[1]), rel=0.05)


def test_decoupled_model_needs_streaming(server):
    r = perf("-m", "repeat", "-i", "grpc", "-u", server.grpc_url, "--request-count", "2",
             check=False)
    assert r.returncode == 1
    assert "is decoupled: measure it with -i grpc --streaming" in r.stderr


def test_ensemble_reports_composing_models(server, tmp_path):
    csv_path = tmp_path / "pipe.csv"
    r = perf("-m", "pipe", "-u", server.http_url, *FAST, "-f", str(csv_path))
    out = r.stdout
    assert "  Composing models: \n  add_sub, version: 1\n" in out
    assert re.search(r"Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ "
                     r"compute \d+ usec\)", out)
    composing = tmp_path / "add_sub_v1.pipe.csv"
    rows = list(csv.reader(composing.open()))
    assert rows[0] == ["Concurrency", "Inferences/Second", "Client Send",
                       "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
                       "Server Compute Infer", "Server Compute Output", "Client Recv"]
    assert len(rows) == 2


def test_request_rate_mode(server, tmp_path):
    csv_path = tmp_path / "rate.csv"
    r = perf("-m", "add_sub", "-u", server.http_url, "--request-rate-range", "100:200:100",
             "--request-distribution", "poisson", *FAST, "-f", str(csv_path))
    out = r.stdout
    assert "  Using poisson distribution on request generation\n" in out
    assert "  Request Rate limit: 200 requests per seconds\n" in out
    assert "Request Rate: 100 inference requests per second\n" in out
    assert "Request Rate: 200 inference requests per second\n" in out
    assert re.search(r"^Request Rate: 200, throughput: [\d.]+ infer/sec", out, re.M)
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][0] == "Request Rate"
    assert sorted(row[0] for row in rows[1:]) == ["100", "200"]


def test_shared_memory_system(server):
    r = perf("-m", "add_sub", "-u", server.http_url, "--shared-memory", "system",
             "--request-count", "8")
    assert levels(r.stdout)[0]["server_count"] == 8
    status = requests.get(f"{server.base}/v2/systemsharedmemory/status", timeout=10).json()
    assert status == []  # every region perf registered is gone again


def test_workers_split_the_load(server):
    r = perf("-m", "add_sub", "-u", server.http_url, "--workers", "2",
             "--concurrency-range", "2", *FAST)
    assert "  Using 2 load-generating processes\n" in r.stdout
    # a worker whose requests went uncounted (or counted twice) would be ~50 % off
    assert_counts_agree(levels(r.stdout)[0], 2)


def test_model_errors_stop_the_run(server):
    r = perf("-m", "fail", "-u", server.http_url, "--request-count", "3", check=False)
    assert r.returncode == 1
    assert "Thread [0] had error: no good input" in r.stderr
    r = perf("-m", "fail", "-i", "grpc", "-u", server.grpc_url, "--request-count", "3",
             check=False)
    assert r.returncode == 1
    assert "Thread [0] had error: no good input" in r.stderr


def test_unknown_model_and_bad_options(server):
    r = perf("-m", "nope", "-u", server.http_url, check=False)
    assert r.returncode == 1
    assert "failed to get model information for 'nope'" in r.stderr
    r = perf("-m", "add_sub", "--concurrency-range", "0:0", "-u", server.http_url, check=False)
    assert r.returncode == 2
    r = perf("-m", "add_sub", "--concurrency-range", "1:0", "-u", server.http_url, check=False)
    assert r.returncode == 2
    assert "The end of the search range and the latency limit can not be both 0" in r.stderr
    r = perf("-m", "add_sub", "--streaming", check=False)
    assert r.returncode == 2 and "Streaming is only allowed with gRPC protocol." in r.stderr
    r = perf("-m", "add_sub", "-u", "127.0.0.1:1", "--request-count", "1", check=False)
    assert r.returncode == 1


def test_plot_and_help(server, tmp_path):
    png = tmp_path / "plot.png"
    perf("-m", "add_sub", "-u", server.http_url, "--concurrency-range", "1:2", *FAST,
         "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = perf("--help")
    for flag in ("--concurrency-range", "--request-rate-range", "--measurement-interval",
                 "--percentile", "--shared-memory", "--profile-export-file", "--workers",
                 "--streaming", "--ssl-grpc-use-ssl", "-H"):
        assert flag in r.stdout


def test_percentile_stabilization(server):
    r = perf("-m", "add_sub", "-u", server.http_url, "--percentile", "95", *FAST)
    out = r.stdout
    assert "  Stabilizing using p95 latency and throughput\n" in out
    assert "Avg latency:" not in out
    assert "Inferences/Second vs. Client p95 Batch Latency\n" in out
    p95 = int(re.search(r"p95 latency: (\d+) usec", out)[1])
    assert re.search(rf"^Concurrency: 1, throughput: [\d.]+ infer/sec, latency {p95} usec$",
                     out, re.M)


def test_outputs_equal_for_random_data(server):
    """Random data is made once per input: every request of a run sends the same tensor."""
    from naiad.tools.perf import data
    from naiad.tools.perf.model import ModelInfo, TensorSpec

    info = ModelInfo("m", "1", "", [TensorSpec("X", "FP32", [3]), TensorSpec("S", "BYTES", [2])],
                     [], 0, False, False, False, False, False)
    (stream,) = data.load(["random"], info, {}, string_length=5)
    step = stream[0]
    assert step["X"].array.dtype == np.float32 and step["X"].array.shape == (3,)
    assert all(len(s) == 5 for s in step["S"].array)
    (zero,) = data.load(["zero"], info, {}, string_length=3)
    assert not zero[0]["X"].array.any()


def test_grpc_over_mutual_tls(tmp_path):
    """The raw HTTP/2 path over TLS (ALPN h2) with a client certificate."""
    from tests.test_grpc_options import _certificates

    certs = _certificates(tmp_path)
    with NaiadProcess(ROOT / "examples" / "model_repository", "--grpc-use-ssl-mutual=true",
                      f"--grpc-server-cert={certs['server_cert']}",
                      f"--grpc-server-key={certs['server_key']}",
                      f"--grpc-root-cert={certs['ca']}") as server:
        r = perf("-m", "add_sub", "-i", "grpc", "-u", server.grpc_url, "--ssl-grpc-use-ssl",
                 "--ssl-grpc-root-certifications-file", certs["ca"],
                 "--ssl-grpc-private-key-file", certs["client_key"],
                 "--ssl-grpc-certificate-chain-file", certs["client_cert"],
                 "--request-count", "9")
        assert levels(r.stdout)[0]["server_count"] == 9
        # without the client certificate the server refuses the connection
        r = perf("-m", "add_sub", "-i", "grpc", "-u", server.grpc_url, "--ssl-grpc-use-ssl",
                 "--ssl-grpc-root-certifications-file", certs["ca"], "--request-count", "2",
                 check=False)
        assert r.returncode == 1


def test_client_bound_levels_are_flagged():
    """A level whose load process used >= 0.85 core prints perf_analyzer's warning."""
    import io

    from naiad.tools.perf import report
    from naiad.tools.perf.model import ModelInfo
    from naiad.tools.perf.options import PerfOptions
    from naiad.tools.perf.stats import PerfStatus, summarize_latency

    info = ModelInfo("m", "1", "", [], [], 0, False, False, False, False, False)
    for cores, flagged in (([0.4, 0.91], True), ([0.84], False)):
        s = PerfStatus(concurrency=8, client_cores=cores)
        summarize_latency([1000, 2000, 3000], s.client, -1)
        out = io.StringIO()
        report.print_level(s, PerfOptions(), info, False, out)
        text = out.getvalue()
        assert ("[WARNING] Perf Analyzer is not able to keep up with the desired load. The "
                "results may not be accurate." in text) == flagged
        if flagged:
            assert "the load generator used 0.40, 0.91 CPU cores per process" in text
            assert "add --workers" in text


def test_headers_json_tensors_and_a_data_directory(tmp_path):
    """-H reaches the server (a restricted inference API), JSON tensors both ways, and
    --input-data DIR (one raw file per input)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "INPUT0").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (data / "INPUT1").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    export = tmp_path / "export.json"
    with NaiadProcess(ROOT / "examples" / "model_repository",
                      "--http-restricted-api=inference:x-perf-key=letmein") as server:
        r = perf("-m", "add_sub", "-u", server.http_url, "--request-count", "4", check=False)
        assert r.returncode == 1 and "Thread [0] had error" in r.stderr
        r = perf("-m", "add_sub", "-u", server.http_url, "-H", "x-perf-key:letmein",
                 "--input-data", str(data), "--input-tensor-format", "json",
                 "--output-tensor-format", "json", "--request-count", "5",
                 "--profile-export-file", str(export))
        assert levels(r.stdout)[0]["server_count"] == 5
    reqs = json.loads(export.read_text())["experiments"][0]["requests"]
    assert {tuple(q["request_inputs"]["INPUT0"]) for q in reqs} == {(0.0, 1.0, 2.0, 3.0)}
    assert reqs[0]["response_outputs"][0]["OUTPUT0"] == [1.0, 2.0, 3.0, 4.0]
