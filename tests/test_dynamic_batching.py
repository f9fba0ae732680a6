"""The dynamic batcher, observed from inside the model through a real server.

The probe model (tests/models.py) reports the batch each request
ran in; a negative input holds the instance busy so that requests queue
behind it in a known order. Gated models turn inline execution off
(NAIAD_INLINE_EXECUTION), so a slow gate never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from conftest import NaiadProcess, write_model
from onnx import TensorProto, helper, numpy_helper

from tests.clients import infer_probe, metric, pending_requests, run, scrape, staggered
from tests.models import gate_parameter, write_probe

NO_INLINE = 'parameters { key: "NAIAD_INLINE_EXECUTION" value: { string_value: "off" } }'
BUSY = 'parameters { key: "busy_ms" value: { string_value: "3" } }'

MODELS = {
    # name: (max_batch_size, scheduling, dims, instance count, inline)
    "preferred": (8, "dynamic_batching { preferred_batch_size: [ 4 ] "
                     "max_queue_delay_microseconds: 3000000 }", "[ 1 ]", 1, False),
    "delayed": (8, "dynamic_batching { max_queue_delay_microseconds: 3000000 }", "[ 1 ]", 1,
                False),
    "nodelay": (8, "dynamic_batching { }", "[ 1 ]", 1, False),
    "bounded": (3, "dynamic_batching { }", "[ 1 ]", 1, False),
    "shapes": (8, "dynamic_batching { }", "[ -1 ]", 1, False),
    "full": (8, "dynamic_batching { default_queue_policy { max_queue_size: 2 } }", "[ 1 ]", 1,
             False),
    "timeout": (1, "dynamic_batching { default_queue_policy { default_timeout_microseconds: "
                   "1000000 } }", "[ 1 ]", 1, False),
    "override": (1, "dynamic_batching { default_queue_policy { allow_timeout_override: true } "
                    "}", "[ 1 ]", 1, False),
    "no_override": (1, "dynamic_batching { default_queue_policy { "
                       "default_timeout_microseconds: 5000000 } }", "[ 1 ]", 1, False),
    "delay_action": (1, "dynamic_batching { default_queue_policy { timeout_action: DELAY "
                        "allow_timeout_override: true } }", "[ 1 ]", 1, False),
    "priority": (1, "dynamic_batching { priority_levels: 3 default_priority_level: 3 }",
                 "[ 1 ]", 1, False),
    "prio_policy": (8, "dynamic_batching { priority_levels: 2 default_priority_level: 2 "
                       "priority_queue_policy { key: 1 value: { max_queue_size: 1 } } }",
                    "[ 1 ]", 1, False),
    "ordered": (1, "dynamic_batching { preserve_ordering: true }", "[ 1 ]", 2, False),
    "unordered": (1, "dynamic_batching { }", "[ 1 ]", 2, False),
    "two_instances": (1, "dynamic_batching { }", "[ 1 ]", 2, False),
    "slow": (1, "dynamic_batching { }", "[ 1 ]", 1, False),
    "fast": (1, "dynamic_batching { }", "[ 1 ]", 1, True),
}


def _linear_onnx(path):
    w = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dynbatch")
    gates = tmp_path_factory.mktemp("gates")
    gate_dir = gate_parameter(gates)
    for name, (mbs, sched, dims, count, inline) in MODELS.items():
        write_probe(repo, name, max_batch_size=mbs, scheduling=sched, dims=dims, count=count,
                    extra=gate_dir + ("" if inline else "\n" + NO_INLINE))
    # a model whose executions cost CPU time (inline execution stays allowed: it backs off)
    write_probe(repo, "load", max_batch_size=16, extra=BUSY)
    write_model(repo, "linear", """
        name: "linear"
        backend: "onnxruntime"
        max_batch_size: 16
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 300000 }
        """)
    _linear_onnx(repo / "linear" / "1" / "model.onnx")
    with NaiadProcess(repo) as s:
        s.gates = gates
        yield s


def _stats(server, model):
    with urllib.request.urlopen(f"{server.base}/v2/models/{model}/stats") as r:
        return json.load(r)["model_stats"][0]


def _client(server):
    return aioclient.InferenceServerClient(server.http_url)


def _behind_gate(server, model: str, ordered: bool = True) -> dict:
    """``staggered``'s keywords for calls led by a gate request to ``model``: the others go
    once the gate executes and (``ordered``) each once the one before it is queued or
    answered, so that the test sees the order it sent whatever the machine's load."""
    return {"gate_started": server.gates / model,
            "pending": (lambda: pending_requests(server, model)) if ordered else None}


def test_concurrent_requests_are_batched_and_split_back(server):
    async def go():
        client = _client(server)

        async def worker(w):
            out = []
            for i in range(8):
                value = [[w * 100 + i + 0.5]]
                out.append(await infer_probe(client, "load", value, tag=(w, i)))
            return out

        try:
            results = await asyncio.gather(*[worker(w) for w in range(16)])
        finally:
            await client.close()
        return [r for rs in results for r in rs]

    results = run(go())
    assert len(results) == 128 and all(r.ok for r in results), results
    for r in results:  # each request gets its own rows back
        w, i = r.tag
        assert r.value.tolist() == [[w * 100 + i + 0.5]]
    by_exec: dict[int, list] = {}
    for r in results:
        by_exec.setdefault(r.exec_id, []).append(r)
    for members in by_exec.values():  # the batch size the model saw is the batch it was in
        assert all(m.batch == len(members) for m in members)
    assert max(len(m) for m in by_exec.values()) > 1, "no request was batched under load"
    stats = _stats(server, "load")
    assert stats["inference_count"] == 128
    assert stats["execution_count"] == len(by_exec)
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"]) == 128
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1


def test_preferred_batch_size_is_sent_at_once_and_the_rest_after_the_delay(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "preferred", float(i)) for i in range(6)],
                                   gap=0.02)
        finally:
            await client.close()

    results = run(go())
    assert all(r.ok for r in results), results
    assert sorted(r.batch for r in results) == [2, 2, 4, 4, 4, 4], results
    four = [r for r in results if r.batch == 4]
    two = [r for r in results if r.batch == 2]
    # the preferred size went as soon as it was reached; the rest waited out the delay (3 s)
    assert max(r.latency for r in four) < 1.5
    assert min(r.latency for r in two) > 2.5
    assert max(r.done for r in four) + 1.0 < min(r.done for r in two)


def test_queue_delay_lets_a_batch_grow_until_it_expires(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "delayed", float(i)) for i in range(3)],
                                   gap=0.1)
        finally:
            await client.close()

    results = run(go())
    assert all(r.ok and r.batch == 3 for r in results), results
    assert len({r.exec_id for r in results}) == 1
    # the first request waited for the delay (3 s) before the batch went
    assert results[0].latency > 2.5


def test_full_batch_goes_without_waiting_for_the_delay(server):
    async def go():
        client = _client(server)
        try:
            return await asyncio.gather(*[infer_probe(client, "delayed", float(i))
                                          for i in range(8)])
        finally:
            await client.close()

    results = run(go())
    assert all(r.ok and r.batch == 8 for r in results), results
    assert max(r.latency for r in results) < 1.5


def test_without_delay_the_waiting_requests_go_as_one_batch(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "nodelay", -0.5, tag="gate")] +
                                   [infer_probe(client, "nodelay", float(i)) for i in range(5)],
                                   **_behind_gate(server, "nodelay"))
        finally:
            await client.close()

    gate, *rest = run(go())
    assert gate.batch == 1
    assert all(r.ok and r.batch == 5 for r in rest), rest
    assert len({r.exec_id for r in rest}) == 1


def test_batches_never_exceed_max_batch_size(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "bounded", -0.5, tag="gate")] +
                                   [infer_probe(client, "bounded", [[1.0], [2.0]], tag=i)
                                    for i in range(4)] +
                                   [infer_probe(client, "bounded", float(i)) for i in range(3)],
                                   **_behind_gate(server, "bounded"))
        finally:
            await client.close()

    gate, *rest = run(go())
    assert all(r.ok for r in rest), rest
    assert all(r.batch <= 3 for r in rest)
    stats = _stats(server, "bounded")
    assert stats["inference_count"] == 1 + 4 * 2 + 3
    assert max(b["batch_size"] for b in stats["batch_stats"]) <= 3


def test_requests_with_different_shapes_run_in_separate_batches(server):
    async def go():
        client = _client(server)
        calls = [infer_probe(client, "shapes", [[-0.5]], tag="gate")]
        for i in range(6):
            width = 2 if i % 2 == 0 else 3
            calls.append(infer_probe(client, "shapes", [[float(i)] * width], tag=(i, width)))
        try:
            return await staggered(calls, **_behind_gate(server, "shapes"))
        finally:
            await client.close()

    gate, *rest = run(go())
    assert all(r.ok for r in rest), rest
    by_exec: dict[int, set] = {}
    for r in rest:
        i, width = r.tag
        assert r.value.tolist() == [[float(i)] * width]
        by_exec.setdefault(r.exec_id, set()).add(width)
    assert all(len(widths) == 1 for widths in by_exec.values()), by_exec
    # the first waiting shape closes a batch at the first request of the other shape
    assert len(by_exec) >= 2


def test_full_queue_rejects_at_once_with_unavailable(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "full", -0.6, tag="gate")] +
                                   [infer_probe(client, "full", float(i)) for i in range(4)],
                                   **_behind_gate(server, "full"))
        finally:
            await client.close()

    gate, *rest = run(go())
    assert gate.ok
    accepted = [r for r in rest if r.ok]
    refused = [r for r in rest if not r.ok]
    assert len(accepted) == 2 and len(refused) == 2, rest
    for r in refused:
        assert r.status == "503"
        assert r.error == "[request id: <id_unknown>] Exceeds maximum queue size"
        assert r.done < gate.done  # refused at the door, not after the gate
    assert all(r.batch == 2 for r in accepted)


def test_queue_timeout_rejects_the_request_at_its_deadline(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "timeout", -4.0, tag="gate"),
                                    infer_probe(client, "timeout", 1.0)],
                                   **_behind_gate(server, "timeout", ordered=False))
        finally:
            await client.close()

    before = _stats(server, "timeout")["inference_stats"]["fail"]["count"]
    gate, late = run(go())
    assert gate.ok
    assert not late.ok and late.status == "503" and late.error == "Request timeout expired"
    # answered when its 1 s ran out, not when the busy instance freed up (4 s)
    assert 0.9 < late.latency < 3.0
    assert _stats(server, "timeout")["inference_stats"]["fail"]["count"] == before + 1
    assert metric(scrape(server), "nv_inference_request_failure", model="timeout",
                  reason="REJECTED", version="1") >= 1


def test_request_timeout_applies_only_where_the_policy_allows_overrides(server):
    async def go():
        client = _client(server)
        try:
            allowed = await staggered([infer_probe(client, "override", -3.0, tag="gate"),
                                       infer_probe(client, "override", 1.0, timeout=100000),
                                       infer_probe(client, "override", 2.0)],
                                      **_behind_gate(server, "override"))
            refused = await staggered([infer_probe(client, "no_override", -0.8, tag="gate"),
                                       infer_probe(client, "no_override", 1.0, timeout=100000)],
                                      **_behind_gate(server, "no_override"))
            return allowed, refused
        finally:
            await client.close()

    (g1, short, untimed), (g2, ignored) = run(go())
    assert not short.ok and short.error == "Request timeout expired" and short.latency < 2.0
    assert untimed.ok
    assert ignored.ok  # allow_timeout_override is false: the request's own timeout is ignored


def test_delay_action_moves_an_expired_request_behind_the_others(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([infer_probe(client, "delay_action", -0.6, tag="gate"),
                                    infer_probe(client, "delay_action", 1.0, timeout=50000,
                                                tag="expired"),
                                    infer_probe(client, "delay_action", 2.0, tag="b"),
                                    infer_probe(client, "delay_action", 3.0, tag="c")],
                                   **_behind_gate(server, "delay_action"))
        finally:
            await client.close()

    gate, expired, b, c = run(go())
    assert all(r.ok for r in (gate, expired, b, c))  # DELAY never rejects
    assert b.exec_id < c.exec_id < expired.exec_id


def test_higher_priority_requests_bypass_lower_ones(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([
                infer_probe(client, "priority", -0.6, tag="gate"),
                infer_probe(client, "priority", 1.0, tag="low1", priority=3),
                infer_probe(client, "priority", 2.0, tag="default"),  # priority 0: level 3
                infer_probe(client, "priority", 3.0, tag="mid", priority=2),
                infer_probe(client, "priority", 4.0, tag="high", priority=1),
                infer_probe(client, "priority", 5.0, tag="unknown", priority=9),  # -> level 3
                infer_probe(client, "priority", 6.0, tag="high2", priority=1),
            ], **_behind_gate(server, "priority"))
        finally:
            await client.close()

    results = run(go())
    assert all(r.ok for r in results), results
    order = [r.tag for r in sorted(results, key=lambda r: r.exec_id)]
    assert order == ["gate", "high", "high2", "mid", "low1", "default", "unknown"]


def test_each_priority_level_has_its_own_queue_policy(server):
    async def go():
        client = _client(server)
        try:
            return await staggered([
                infer_probe(client, "prio_policy", -0.5, tag="gate"),
                infer_probe(client, "prio_policy", 1.0, tag="high1", priority=1),
                infer_probe(client, "prio_policy", 2.0, tag="high2", priority=1),
                infer_probe(client, "prio_policy", 3.0, tag="low1"),
                infer_probe(client, "prio_policy", 4.0, tag="low2"),
            ], **_behind_gate(server, "prio_policy"))
        finally:
            await client.close()

    gate, high1, high2, low1, low2 = run(go())
    assert high1.ok and low1.ok and low2.ok
    assert not high2.ok and high2.status == "503"  # level 1 holds one request at most


def test_preserve_ordering_returns_responses_in_request_order(server):
    async def go(model):
        client = _client(server)
        try:
            return await staggered([infer_probe(client, model, -0.6, tag="slow"),
                                    infer_probe(client, model, 1.0, tag="quick")],
                                   **_behind_gate(server, model, ordered=False))
        finally:
            await client.close()

    slow, quick = run(go("unordered"))
    assert quick.done < slow.done  # two instances: the quick one finishes first
    slow, quick = run(go("ordered"))
    assert slow.ok and quick.ok and slow.instance != quick.instance
    assert quick.done >= slow.done  # but its response waits for the earlier request's


def test_instances_execute_batches_concurrently(server):
    async def go():
        client = _client(server)
        try:
            return await asyncio.gather(*[infer_probe(client, "two_instances", -2.0, tag=i)
                                          for i in range(2)])
        finally:
            await client.close()

    a, b = run(go())
    assert a.ok and b.ok and a.instance != b.instance
    assert max(a.latency, b.latency) < 3.5  # not 4 s back to back


def test_a_slow_model_does_not_delay_another_models_requests(server):
    async def go():
        client = _client(server)
        try:
            slow = [asyncio.ensure_future(infer_probe(client, "slow", -2.0, tag=i))
                    for i in range(3)]
            await asyncio.sleep(0.1)
            fast = [await infer_probe(client, "fast", float(i)) for i in range(5)]
            return fast, await asyncio.gather(*slow)
        finally:
            await client.close()

    fast, slow = run(go())
    assert all(r.ok for r in fast + slow)
    assert max(r.latency for r in fast) < 1.5  # not behind 2 s of "slow"


def test_onnxruntime_batches_are_concatenated_and_split(server):
    x = np.arange(24, dtype=np.float32).reshape(8, 1, 3)
    w = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)

    async def go():
        client = _client(server)

        async def one(i):
            inp = aioclient.InferInput("x", [1, 3], "FP32")
            inp.set_data_from_numpy(x[i])
            return (await client.infer("linear", [inp])).as_numpy("y")

        try:
            return await asyncio.gather(*[one(i) for i in range(8)])
        finally:
            await client.close()

    outs = run(go())
    for i, y in enumerate(outs):
        np.testing.assert_allclose(y, x[i] @ w)
    stats = _stats(server, "linear")
    assert stats["inference_count"] == 8
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1


def test_sync_client_request_with_priority_and_timeout_parameters(server):
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("IN", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[7.0]], dtype=np.float32))
    r = client.infer("priority", [inp], priority=1, timeout=1000000)
    assert r.as_numpy("OUT").tolist() == [[7.0]]
    client.close()


def test_config_endpoint_shows_the_default_preferred_batch_size(server):
    with urllib.request.urlopen(f"{server.base}/v2/models/nodelay/config") as r:
        config = json.load(r)
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
