"""Prometheus metrics on the metrics port: Triton's names, types, labels, and values that move
by the right amount after known traffic."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import urllib.request

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from naiad import Server
from naiad.core.errors import InvalidArgument
from naiad.core.statistics import REJECTED
from naiad.observability.metrics import MetricsConfig, ServerMetrics
from naiad.options import ServerOptions
from naiad.server import make_request
from tests.conftest import NaiadProcess, copy_example
from tests.models import write_custom_metrics, write_echo, write_repeat_inline

COUNTERS = ["nv_inference_request_success", "nv_inference_request_failure",
            "nv_inference_count", "nv_inference_exec_count",
            "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us"]
GAUGES = ["nv_inference_pending_request_count", "nv_cpu_utilization",
          "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"]
REASONS = ["REJECTED", "CANCELED", "BACKEND", "OTHER"]


def scrape(proc: NaiadProcess) -> str:
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def parse(text: str) -> dict:
    """{family: {"type", "help", "samples": {(sample name, frozenset(labels)): value}}}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {"type": fam.type, "help": fam.documentation,
                         "samples": {(s.name, frozenset(s.labels.items())): s.value
                                     for s in fam.samples}}
    return out


def value(text: str, name: str, **labels) -> float:
    """A sample's value by its exact name in the text (Triton's counters have no _total)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    raise AssertionError(f"no sample {prefix!r} in:\n{text}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("metrics") / "models"
    repo.mkdir()
    write_echo(repo)
    write_custom_metrics(repo)
    copy_example(repo, "add_sub")
    with NaiadProcess(repo) as proc:
        yield proc


def _echo(client, batch=1, v=1.0):
    x = np.full((batch, 4), v, dtype=np.float32)
    inp = httpclient.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("echo", [inp])


def test_metrics_page_parses_with_tritons_families(server):
    text = scrape(server)
    fams = parse(text)
    for name in COUNTERS:
        assert fams[name]["type"] == "counter", name
    for name in GAUGES:
        assert fams[name]["type"] == "gauge", name
    # exact help texts dashboards and docs quote
    assert fams["nv_inference_request_success"]["help"] == \
        "Number of successful inference requests, all batch sizes"
    assert fams["nv_inference_queue_duration_us"]["help"] == \
        "Cumulative inference queuing duration in microseconds (includes cached requests)"
    assert fams["nv_cpu_utilization"]["help"] == "CPU utilization rate [0.0 - 1.0]"
    # Triton's counters carry no _total suffix on the wire
    assert "# TYPE nv_inference_request_success counter" in text
    assert 'nv_inference_request_success{model="echo",version="1"} ' in text
    assert not re.search(r"^\w+_total[{ ]", text, re.M)
    # one failure series per reason, labels in Triton's order
    for reason in REASONS:
        assert f'nv_inference_request_failure{{model="echo",reason="{reason}",version="1"}} ' \
            in text
    assert 0.0 <= value(text, "nv_cpu_utilization") <= 1.0
    assert value(text, "nv_cpu_memory_total_bytes") >= value(text, "nv_cpu_memory_used_bytes") > 0
    assert value(text, "nv_pinned_memory_pool_total_bytes") == 268435456
    assert "nv_inference_request_summary_us" not in text  # opt-in


def test_counters_move_by_the_traffic_sent(server):
    client = httpclient.InferenceServerClient(server.http_url)
    lbl = {"model": "echo", "version": "1"}
    before = scrape(server)
    for b in (1, 4, 2):
        _echo(client, b)
    for v in (-5.0, 5000.0):  # error response, model exception: BACKEND failures
        with pytest.raises(InferenceServerException):
            _echo(client, 1, v)
    after = scrape(server)

    def d(name, **extra):
        return value(after, name, **{**lbl, **extra}) - value(before, name, **{**lbl, **extra})

    def d_reason(reason):
        labels = {"model": "echo", "reason": reason, "version": "1"}
        return value(after, "nv_inference_request_failure", **labels) - \
            value(before, "nv_inference_request_failure", **labels)

    assert d("nv_inference_request_success") == 3
    assert d_reason("BACKEND") == 2
    assert d_reason("REJECTED") == d_reason("CANCELED") == d_reason("OTHER") == 0
    assert d("nv_inference_count") == 7
    assert d("nv_inference_exec_count") == 5
    assert d("nv_inference_request_duration_us") > 0
    assert d("nv_inference_compute_infer_duration_us") > 0
    total = value(after, "nv_inference_request_duration_us", **lbl)
    parts = sum(value(after, f"nv_inference_{p}_duration_us", **lbl)
                for p in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert parts <= total + 4  # per-part rounding to microseconds
    assert value(after, "nv_inference_pending_request_count", **lbl) == 0
    # the statistics extension agrees with the metrics
    stats = client.get_inference_statistics("echo")["model_stats"][0]
    assert value(after, "nv_inference_request_success", **lbl) == \
        stats["inference_stats"]["success"]["count"]
    assert value(after, "nv_inference_count", **lbl) == stats["inference_count"]
    assert value(after, "nv_inference_request_duration_us", **lbl) == \
        stats["inference_stats"]["success"]["ns"] // 1000


def test_custom_metrics_from_python_models(server):
    client = httpclient.InferenceServerClient(server.http_url)
    lbl = {"model": "custom_metrics", "version": "1"}
    outs = []
    for v in (0.5, 5.0, 50.0, 500.0):
        inp = httpclient.InferInput("IN", [1], "FP32")
        inp.set_data_from_numpy(np.array([v], np.float32))
        outs.append(client.infer("custom_metrics", [inp]).as_numpy("OUT"))
    # value() reads back the counter; all six misuses were refused with TritonModelException
    assert [o[0] for o in outs] == [1, 2, 3, 4]
    assert all(o[1] == 6 for o in outs)
    text = scrape(server)
    fams = parse(text)
    assert fams["custom_requests_seen"]["type"] == "counter"
    assert fams["custom_requests_seen"]["help"] == "Requests this model saw"
    assert value(text, "custom_requests_seen", **lbl) == 4
    assert value(text, "custom_last_value", **lbl) == 500
    assert fams["custom_value_histogram"]["type"] == "histogram"
    assert value(text, "custom_value_histogram_count", **lbl) == 4
    assert value(text, "custom_value_histogram_sum", **lbl) == 555.5
    for le, n in (("1", 1), ("10", 2), ("100", 3), ("+Inf", 4)):
        assert value(text, "custom_value_histogram_bucket", **lbl, le=le) == n


def test_metrics_endpoint_only_serves_metrics(server):
    base = f"http://127.0.0.1:{server.metrics_port}"
    assert requests.get(base + "/", timeout=5).status_code == 404
    assert requests.post(base + "/metrics", timeout=5).status_code == 405


def test_allow_metrics_false_serves_no_metrics(tmp_path):
    copy_example(tmp_path, "add_sub")
    with NaiadProcess(tmp_path, "--allow-metrics=false") as proc:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", proc.metrics_port)) != 0
        assert "Metrics Service" not in proc.output()
        # statistics still work
        client = httpclient.InferenceServerClient(proc.http_url)
        a = np.ones(4, np.float32)
        i0 = httpclient.InferInput("INPUT0", [4], "FP32")
        i0.set_data_from_numpy(a)
        i1 = httpclient.InferInput("INPUT1", [4], "FP32")
        i1.set_data_from_numpy(a)
        client.infer("add_sub", [i0, i1])
        assert client.get_inference_statistics("add_sub")["model_stats"][0][
            "inference_count"] == 1


def test_cpu_metrics_can_be_turned_off_and_summaries_on(tmp_path):
    write_echo(tmp_path)
    copy_example(tmp_path, "add_sub")  # no traffic: its quantiles are NaN
    with NaiadProcess(tmp_path, "--allow-cpu-metrics=false",
                      "--metrics-config", "summary_latencies=true",
                      "--metrics-config", "counter_latencies=false",
                      "--metrics-config", "summary_quantiles=0.5:0.05,0.99:0.001") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        for _ in range(5):
            _echo(client)
        text = scrape(proc)
        fams = parse(text)
        assert "nv_cpu_utilization" not in fams
        assert "nv_inference_request_duration_us" not in fams  # counter_latencies=false
        assert "nv_inference_request_success" in fams  # counts stay
        lbl = {"model": "echo", "version": "1"}
        for name in ("nv_inference_request_summary_us", "nv_inference_queue_summary_us",
                     "nv_inference_compute_input_summary_us",
                     "nv_inference_compute_infer_summary_us",
                     "nv_inference_compute_output_summary_us"):
            assert fams[name]["type"] == "summary"
            assert value(text, name + "_count", **lbl) == 5
            q50 = value(text, name, **lbl, quantile="0.5")
            q99 = value(text, name, **lbl, quantile="0.99")
            assert 0 <= q50 <= q99 <= value(text, name + "_sum", **lbl)
        assert 'quantile="0.9"' not in text
        idle = {"model": "add_sub", "version": "1"}
        assert value(text, "nv_inference_queue_summary_us_count", **idle) == 0
        assert math.isnan(value(text, "nv_inference_queue_summary_us", **idle, quantile="0.5"))


def test_bad_metrics_config_is_refused_at_startup(tmp_path):
    copy_example(tmp_path, "add_sub")
    proc = NaiadProcess(tmp_path, "--metrics-config", "bogus=1", wait="none").start()
    assert proc.proc.wait(timeout=60) == 2
    assert "bogus" in proc.output()
    with pytest.raises(InvalidArgument, match="summary_quantiles"):
        MetricsConfig({"summary_quantiles": "0.5"})


def test_cancelled_and_rejected_requests_are_counted_by_reason(tmp_path):
    """A request cancelled while it waits is CANCELED; scheduler rejections are REJECTED."""
    write_echo(tmp_path, inline=False)  # the slow request must not run on the event loop

    async def main():
        async with Server(model_repository=str(tmp_path), exit_timeout_secs=5) as srv:
            x = np.ones((1, 4), np.float32)
            slow = asyncio.ensure_future(
                srv.infer(make_request("echo", {"IN": x}, parameters={"sleep_ms": 2000})))
            await asyncio.sleep(0.5)  # the slow request holds the only instance
            waiting = asyncio.ensure_future(srv.infer(make_request("echo", {"IN": x})))
            for _ in range(500):  # until the waiting one is in the queue (at most 5 s)
                text = srv.metrics.render().decode()
                pending = value(text, "nv_inference_pending_request_count",
                                model="echo", version="1")
                if pending:
                    break
                await asyncio.sleep(0.01)
            waiting.cancel()
            await slow
            with pytest.raises(asyncio.CancelledError):
                await waiting
            for _ in range(100):  # the instance drops the cancelled request when it gets to it
                if srv.model_statistics("echo")["model_stats"][0][
                        "inference_stats"]["fail"]["count"]:
                    break
                await asyncio.sleep(0.02)
            # what a scheduler does when a queued request times out
            model = srv.get_model("echo")
            late = make_request("echo", {"IN": x})
            model.stats.record_request(late, False, late.arrival_ns + 1000, reason=REJECTED)
            return pending, srv.metrics.render().decode()

    pending, text = asyncio.run(main())
    assert pending == 1

    def failures(reason):
        return value(text, "nv_inference_request_failure", model="echo", reason=reason,
                     version="1")

    assert failures("CANCELED") == 1
    assert failures("REJECTED") == 1
    assert failures("BACKEND") == failures("OTHER") == 0
    assert value(text, "nv_inference_request_success", model="echo", version="1") == 1


def test_first_response_histogram_for_decoupled_models(tmp_path):
    write_repeat_inline(tmp_path)
    cfg = (tmp_path / "repeat" / "config.pbtxt")
    cfg.write_text(cfg.read_text() + """
model_metrics { metric_control: [ { metric_identifier: {
  family: "nv_inference_first_response_histogram_ms" }
  histogram_options: { buckets: [ 1, 50000 ] } } ] }
""")

    async def main():
        opts = ServerOptions(model_repositories=[str(tmp_path)], exit_timeout_secs=5,
                             metrics_config={"histogram_latencies": "true"})
        async with Server(opts) as srv:
            srv.metrics.start()
            for n in (2, 3, 0):
                req = make_request("repeat", {"IN": np.array([n], dtype=np.int32)})
                _ = [r async for r in srv.infer_stream(req)]
            # statistics are recorded just after a response is delivered: wait for the last
            stats = srv.get_model("repeat").stats
            for _ in range(200):
                if stats.snapshot()["success_count"] == 3:
                    break
                await asyncio.sleep(0.01)
            return srv.metrics.render().decode()

    text = asyncio.run(main())
    lbl = {"model": "repeat", "version": "1"}
    fams = parse(text)
    assert fams["nv_inference_first_response_histogram_ms"]["type"] == "histogram"
    assert value(text, "nv_inference_first_response_histogram_ms_count", **lbl) == 3
    assert value(text, "nv_inference_first_response_histogram_ms_bucket", **lbl,
                 le="50000") == 3
    assert value(text, "nv_inference_first_response_histogram_ms_bucket", **lbl,
                 le="+Inf") == 3
    assert value(text, "nv_inference_first_response_histogram_ms_sum", **lbl) > 0


class _FakeNvml:
    """NVML's Python API surface the GPU poller uses, with one fixed GPU."""

    class _Mem:
        total, used = 80 * 2**30, 2**30

    class _Util:
        gpu = 37

    def __init__(self):
        self.energy = 1_000_000

    def nvmlInit(self):  # noqa: N802 - NVML's names
        pass

    def nvmlDeviceGetCount(self):  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return ("gpu", i)

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return b"GPU-1234"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # noqa: N802
        self.energy += 5000
        return self.energy

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return self._Util()

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return self._Mem()

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        return 123_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):  # noqa: N802
        raise RuntimeError("not supported on this GPU")


def test_gpu_metrics_through_nvml(tmp_path):
    class FakeServer:
        options = ServerOptions(model_repositories=[str(tmp_path)], metrics_interval_ms=0)

        class manager:  # noqa: N801
            models: dict = {}

            @staticmethod
            def add_listener(fn):
                pass

    metrics = ServerMetrics(FakeServer(), gpu_nvml=_FakeNvml())
    metrics.start()
    text = metrics.render().decode()
    lbl = {"gpu_uuid": "GPU-1234"}
    assert value(text, "nv_gpu_utilization", **lbl) == 0.37
    assert value(text, "nv_gpu_memory_total_bytes", **lbl) == 80 * 2**30
    assert value(text, "nv_gpu_memory_used_bytes", **lbl) == 2**30
    assert value(text, "nv_gpu_power_usage", **lbl) == 123
    assert value(text, "nv_energy_consumption", **lbl) == 5  # joules since start
    assert "nv_gpu_power_limit" not in text  # a reading the GPU does not offer is left out
    assert parse(text)["nv_energy_consumption"]["type"] == "counter"


def test_metrics_follow_models_as_they_load_and_unload(tmp_path):
    write_echo(tmp_path)
    with NaiadProcess(tmp_path, "--model-control-mode=explicit",
                      "--metrics-config", "summary_latencies=true") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        assert 'model="echo"' not in scrape(proc)
        client.load_model("echo")
        _echo(client)
        text = scrape(proc)
        assert value(text, "nv_inference_request_success", model="echo", version="1") == 1
        # summaries observe models loaded after startup too
        assert value(text, "nv_inference_request_summary_us_count", model="echo",
                     version="1") == 1
        client.unload_model("echo")
        assert 'model="echo"' not in scrape(proc)
