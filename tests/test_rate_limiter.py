"""The rate limiter: instances execute only while they hold their resources."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http.aio as aioclient
from conftest import NaiadProcess, write_model

from naiad.protocol import model_config_pb2 as mc
from naiad.scheduling.rate_limiter import RateLimiter, parse_resource_flags

TIMED_MODEL = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        t0 = time.monotonic()
        seconds = float(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])
        time.sleep(seconds)
        t1 = time.monotonic()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("T", np.array([t0, t1]))])
                for _ in requests]
'''


def timed_config(name: str, count: int = 2, resources: str = "", priority: int = 0) -> str:
    limiter = ""
    if resources:
        limiter = f"rate_limiter {{ resources [ {{ {resources} }} ] priority: {priority} }}"
    return f"""
name: "{name}"
backend: "python"
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "T" data_type: TYPE_FP64 dims: [ 2 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU {limiter} }} ]
parameters {{ key: "NAIAD_INLINE_EXECUTION" value: {{ string_value: "off" }} }}
"""


def _repo(repo, models):
    for name, kw in models.items():
        write_model(repo, name, timed_config(name, **kw), {"model.py": TIMED_MODEL})
    return repo


async def _intervals(server, calls):
    client = aioclient.InferenceServerClient(server.http_url)

    async def one(model, seconds):
        inp = aioclient.InferInput("IN", [1], "FP32")
        inp.set_data_from_numpy(np.array([seconds], dtype=np.float32))
        return model, (await client.infer(model, [inp])).as_numpy("T").tolist()

    try:
        return await asyncio.gather(*[one(m, s) for m, s in calls])
    finally:
        await client.close()


def _max_overlap(intervals) -> int:
    events = []
    for _, (t0, t1) in intervals:
        events += [(t0, 1), (t1, -1)]
    best = cur = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        cur += delta
        best = max(best, cur)
    return best


SHARED = 'name: "R" count: 1'
# executions that may overlap sleep 1.5 s: long enough that they start together even when a
# loaded machine delays a request's arrival or an instance thread's wake-up


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    repo = _repo(tmp_path_factory.mktemp("ratelimit"), {
        "a": {"resources": SHARED}, "b": {"resources": SHARED}, "free": {}})
    with NaiadProcess(repo, "--rate-limit=execution_count") as s:
        yield s


def test_instances_sharing_a_resource_never_execute_at_once(limited):
    calls = [("a", 0.2)] * 3 + [("b", 0.2)] * 3
    intervals = asyncio.run(_intervals(limited, calls))
    assert _max_overlap(intervals) == 1  # four instances, one copy of R


def test_instances_without_resources_are_not_held_back(limited):
    intervals = asyncio.run(_intervals(limited, [("free", 1.5)] * 2))
    assert _max_overlap(intervals) == 2


def test_rate_limit_off_runs_the_same_instances_in_parallel(tmp_path):
    repo = _repo(tmp_path / "models", {"a": {"resources": SHARED}, "b": {"resources": SHARED}})
    with NaiadProcess(repo) as s:
        intervals = asyncio.run(_intervals(s, [("a", 1.5)] * 2 + [("b", 1.5)] * 2))
    assert _max_overlap(intervals) == 4


def test_rate_limit_resource_flag_sets_the_copies(tmp_path):
    repo = _repo(tmp_path / "models", {"a": {"resources": SHARED, "count": 3}})
    with NaiadProcess(repo, "--rate-limit=execution_count", "--rate-limit-resource=R:2") as s:
        intervals = asyncio.run(_intervals(s, [("a", 1.5)] * 3))
    assert _max_overlap(intervals) == 2


def test_too_few_explicit_copies_fail_the_models_load(tmp_path):
    repo = _repo(tmp_path / "models", {"big": {"resources": 'name: "R" count: 3'},
                                       "ok": {}})
    with NaiadProcess(repo, "--rate-limit=execution_count", "--rate-limit-resource=R:2",
                      "--exit-on-error=false", "--strict-readiness=false") as s:
        req = urllib.request.Request(f"{s.base}/v2/repository/index", data=b"{}",
                                     method="POST")
        with urllib.request.urlopen(req) as r:
            index = {m["name"]: m for m in json.load(r)}
    assert index["ok"]["state"] == "READY"
    assert index["big"]["state"] == "UNAVAILABLE"
    assert index["big"]["reason"] == (
        'Resource count for "R" is limited to 2 which will prevent scheduling of one or more '
        "model instances, the minimum required count is 3")


@pytest.mark.parametrize("flag", ["--rate-limit=sometimes", "--rate-limit-resource=R",
                                  "--rate-limit-resource=R:x"])
def test_malformed_rate_limit_flags_are_refused_at_startup(tmp_path, flag):
    (tmp_path / "models").mkdir()
    server = NaiadProcess(tmp_path / "models", flag, wait="none")
    server.start()
    try:
        assert server.proc.wait(timeout=30) != 0
        assert "rate-limit" in server.output()
    finally:
        server.stop()


def test_priority_weights_the_share_of_executions():
    """Two instances always waiting on one resource: priority 1 runs twice as often as 2."""
    limiter = RateLimiter(parse_resource_flags(["R:1"]))
    cfg1 = mc.ModelRateLimiter()
    cfg1.resources.add(name="R", count=1)
    cfg1.priority = 1
    cfg2 = mc.ModelRateLimiter()
    cfg2.CopyFrom(cfg1)
    cfg2.priority = 2
    one = limiter.register("one", cfg1)
    two = limiter.register("two", cfg2)
    order = []
    for _ in range(30):
        # both want to run next: the limiter's choice is the order they get it in
        limiter._waiting.extend([one, two])
        chosen = limiter._next_in_line()
        limiter._waiting.clear()
        assert chosen.try_acquire()
        order.append(chosen.name)
        chosen.release()
    assert order.count("one") == 20 and order.count("two") == 10


def test_global_resources_are_shared_across_devices():
    limiter = RateLimiter()
    cfg = mc.ModelRateLimiter()
    res = cfg.resources.add(name="G", count=1)
    setattr(res, "global", True)
    a = limiter.register("a", cfg, device_id=0)
    b = limiter.register("b", cfg, device_id=1)
    assert a.try_acquire()
    assert not b.try_acquire()  # one global copy, held by a
    a.release()
    assert b.try_acquire()
    b.release()
    per_device = mc.ModelRateLimiter()
    per_device.resources.add(name="D", count=1)
    c = limiter.register("c", per_device, device_id=0)
    d = limiter.register("d", per_device, device_id=1)
    assert c.try_acquire() and d.try_acquire()  # one copy per device
