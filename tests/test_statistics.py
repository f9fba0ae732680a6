"""The statistics extension: Triton's fields, and numbers that add up after known traffic."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from naiad import Server
from naiad.core.statistics import (
    BACKEND,
    CANCELED,
    OTHER,
    REJECTED,
    ModelStatistics,
)
from naiad.core.types import InferenceRequest
from naiad.server import make_request
from tests.clients import PROTOCOLS, number, triton_client
from tests.conftest import NaiadProcess, copy_example
from tests.models import write_echo, write_repeat_inline

INFER_FIELDS = ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                "cache_hit", "cache_miss"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("stats") / "models"
    repo.mkdir()
    write_echo(repo)
    copy_example(repo, "add_sub")
    with NaiadProcess(repo) as proc:
        yield proc


def _stats(client, model: str) -> dict:
    return client.get_inference_statistics(model)["model_stats"][0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_statistics_add_up_after_known_traffic(server, protocol):
    module, client = triton_client(protocol, server)
    as_json = {"as_json": True} if protocol == "grpc" else {}

    def stats() -> dict:
        return client.get_inference_statistics("echo", **as_json)["model_stats"][0]

    def echo(batch: int, value: float = 1.0):
        x = np.full((batch, 4), value, dtype=np.float32)
        inp = module.InferInput("IN", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("echo", [inp])

    def executed(s: dict) -> int:  # requests in the executed batches, failed ones included
        return sum(number(e, "batch_size") * number(e, "compute_infer", "count")
                   for e in s.get("batch_stats", []))

    before = stats()
    batches = [1, 3, 2, 3, 1]
    for b in batches:
        echo(b)
    for value in (-1.0, 2000.0):  # an error response, then a model exception
        with pytest.raises(InferenceServerException):
            echo(2, value)
    after = stats()

    def delta(*path):
        return number(after, *path) - number(before, *path)

    # requests count once, whatever their batch size; inferences are batch-weighted
    assert delta("inference_stats", "success", "count") == len(batches)
    assert delta("inference_stats", "fail", "count") == 2
    assert delta("inference_count") == sum(batches)
    assert delta("execution_count") == len(batches) + 2  # failed executions count too
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta("inference_stats", field, "count") == len(batches)
    assert delta("inference_stats", "success", "ns") > 0
    assert delta("inference_stats", "fail", "ns") > 0
    # the parts of a request's time fit inside its total
    parts = sum(number(after, "inference_stats", f, "ns")
                for f in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert parts <= number(after, "inference_stats", "success", "ns")
    # batch_stats: one entry per executed batch size, executions add up
    sizes = {number(e, "batch_size"): e for e in after["batch_stats"]}
    assert number(sizes[3], "compute_infer", "count") >= 2
    assert sum(number(e, "compute_infer", "count") for e in after["batch_stats"]) == \
        number(after, "execution_count")
    assert executed(after) - executed(before) - 2 * 2 == delta("inference_count")
    assert number(after, "last_inference") >= number(before, "last_inference")
    assert abs(number(after, "last_inference") / 1000 - time.time()) < 60
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert "nope" in e.value.message()
    client.close()


def test_statistics_shape_matches_triton(server):
    body = requests.get(server.base + "/v2/models/add_sub/stats", timeout=10).json()
    (entry,) = body["model_stats"]
    assert list(entry) == ["name", "version", "last_inference", "inference_count",
                           "execution_count", "inference_stats", "response_stats",
                           "batch_stats", "memory_usage"]
    assert entry["name"] == "add_sub" and entry["version"] == "1"
    assert list(entry["inference_stats"]) == INFER_FIELDS
    for field in INFER_FIELDS:
        assert set(entry["inference_stats"][field]) == {"count", "ns"}
    assert entry["response_stats"] == {}
    # the load's memory growth when it can be attributed (test_memory_usage.py), else []
    assert all(set(u) == {"type", "id", "byte_size"} and u["type"] == "CPU"
               for u in entry["memory_usage"]), entry["memory_usage"]


def test_statistics_endpoints_select_models_and_versions(server):
    client = httpclient.InferenceServerClient(server.http_url)
    names = [m["name"] for m in client.get_inference_statistics()["model_stats"]]
    assert names == sorted(names) and {"add_sub", "echo"} <= set(names)
    by_version = client.get_inference_statistics("add_sub", "1")["model_stats"]
    assert [(m["name"], m["version"]) for m in by_version] == [("add_sub", "1")]
    # Triton's answers (400, INVALID_ARG)
    r = requests.get(server.base + "/v2/models/missing/stats", timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == "requested model 'missing' is not available"
    r = requests.get(server.base + "/v2/models/add_sub/versions/7/stats", timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == "requested model version is not available for model 'add_sub'"


def test_refused_requests_are_not_counted(server):
    """Like Triton, a request refused before it reaches the scheduler leaves no trace."""
    client = httpclient.InferenceServerClient(server.http_url)
    before = _stats(client, "echo")
    bad = httpclient.InferInput("IN", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.infer("echo", [bad])
    after = _stats(client, "echo")
    assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
    assert after["execution_count"] == before["execution_count"]


def test_concurrent_traffic_loses_no_count(server):
    client_count, per_client = 4, 25
    before = _stats(httpclient.InferenceServerClient(server.http_url), "add_sub")

    def worker():
        c = httpclient.InferenceServerClient(server.http_url)
        a = np.ones(4, np.float32)
        for _ in range(per_client):
            i0 = httpclient.InferInput("INPUT0", [4], "FP32")
            i0.set_data_from_numpy(a)
            i1 = httpclient.InferInput("INPUT1", [4], "FP32")
            i1.set_data_from_numpy(a)
            c.infer("add_sub", [i0, i1])

    threads = [threading.Thread(target=worker) for _ in range(client_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = _stats(httpclient.InferenceServerClient(server.http_url), "add_sub")
    n = client_count * per_client
    assert after["inference_count"] - before["inference_count"] == n
    assert after["execution_count"] - before["execution_count"] == n
    assert (after["inference_stats"]["success"]["count"]
            - before["inference_stats"]["success"]["count"]) == n


def test_decoupled_models_report_response_stats(tmp_path):
    write_repeat_inline(tmp_path)

    async def main():
        async with Server(model_repository=str(tmp_path), exit_timeout_secs=5) as srv:
            for n in (3, 1):
                req = make_request("repeat", {"IN": np.array([n], dtype=np.int32)})
                got = [r async for r in srv.infer_stream(req)]
                assert [int(r.outputs[0].data[0]) for r in got] == list(range(n))
            # statistics are recorded just after a response is delivered: wait for the last
            for _ in range(200):
                stats = srv.model_statistics("repeat")["model_stats"][0]
                if stats["inference_stats"]["success"]["count"] == 2:
                    break
                await asyncio.sleep(0.01)
            return stats

    stats = asyncio.run(main())
    rs = stats["response_stats"]
    # responses by index: index 0 came twice, 1 and 2 once; the final flag-only
    # "responses" (after 3 and after 1) are empty responses at indexes 3 and 1
    assert sorted(rs, key=int) == ["0", "1", "2", "3"]
    assert rs["0"]["success"]["count"] == 2
    assert rs["1"]["success"]["count"] == 1 and rs["1"]["empty_response"]["count"] == 1
    assert rs["2"]["success"]["count"] == 1
    assert rs["3"]["empty_response"]["count"] == 1
    for entry in rs.values():
        assert set(entry) == {"compute_infer", "compute_output", "success", "fail",
                              "empty_response", "cancel"}
        assert entry["compute_infer"]["count"] == entry["compute_output"]["count"]
    assert stats["inference_stats"]["success"]["count"] == 2
    assert stats["inference_count"] == 2 and stats["execution_count"] == 2


def _request(model="m") -> InferenceRequest:
    r = InferenceRequest(model, {})
    r.batch_size = 1
    return r


def test_failures_are_classified_by_reason():
    stats = ModelStatistics("m", 1)
    cancelled = _request()
    cancelled.cancelled = True
    stats.record_request(cancelled, False, cancelled.arrival_ns + 10)
    ran = _request()
    ran.compute_start_ns = ran.arrival_ns + 1
    stats.record_request(ran, False, ran.arrival_ns + 10)
    never_ran = _request()
    stats.record_request(never_ran, False, never_ran.arrival_ns + 10)
    timed_out = _request()
    stats.record_request(timed_out, False, timed_out.arrival_ns + 10, reason=REJECTED)
    snap = stats.snapshot()
    assert snap["fail_reasons"] == {REJECTED: 1, CANCELED: 1, BACKEND: 1, OTHER: 1}
    assert snap["fail_count"] == 4
    assert stats.as_dict()["inference_stats"]["fail"]["count"] == 4
    assert stats.as_dict()["inference_count"] == 0


def test_cache_statistics_count_hits_and_misses():
    stats = ModelStatistics("m", 1)
    stats.record_cache(True, 1500)
    stats.record_cache(False, 700)
    stats.record_cache(False, 300)
    d = stats.as_dict()["inference_stats"]
    assert d["cache_hit"] == {"count": 1, "ns": 1500}
    assert d["cache_miss"] == {"count": 2, "ns": 1000}
    assert stats.as_dict()["last_inference"] > 0
