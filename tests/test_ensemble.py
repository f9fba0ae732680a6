"""Ensembles: step graphs run with correct data flow, errors and Triton's load-time checks."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from naiad import Server
from naiad.core.errors import NaiadError
from naiad.server import make_request
from tests.conftest import NaiadProcess, copy_example, write_model
from tests.models import (
    AFFINE_CONFIG,
    AFFINE_PY,
    step,
    write_affine,
    write_cast,
    write_ensemble,
    write_repeat,
    write_sum,
)

F = "TYPE_FP32"


def run(repo, coro_fn, **opts):
    async def main():
        async with Server(model_repository=str(repo), exit_timeout_secs=10, **opts) as server:
            return await coro_fn(server)

    return asyncio.run(main())


@pytest.fixture
def dag_repo(repo):
    write_affine(repo, "double", mul=2)
    write_affine(repo, "inc", add=1)
    write_sum(repo)
    write_ensemble(repo, "linear", [("IN", F, "-1")], [("OUT", F, "-1")], [
        step("double", {"X": "IN"}, {"Y": "t1"}),
        step("inc", {"X": "t1"}, {"Y": "OUT"}),
    ])
    # IN -> double -> a ; IN -> inc -> b ; (a, b) -> sum -> OUT ; a is also an output
    write_ensemble(repo, "diamond", [("IN", F, "-1")], [("OUT", F, "-1"), ("A", F, "-1")], [
        step("double", {"X": "IN"}, {"Y": "A"}),
        step("inc", {"X": "IN"}, {"Y": "b"}),
        step("sum", {"A": "A", "B": "b"}, {"C": "OUT"}),
    ])
    write_ensemble(repo, "nested", [("IN", F, "-1")], [("OUT", F, "-1")], [
        step("linear", {"IN": "IN"}, {"OUT": "x"}),
        step("diamond", {"IN": "x"}, {"OUT": "OUT"}),
    ])
    return repo


def test_linear_branching_and_nested_ensembles_compute_the_right_values(dag_repo):
    x = np.array([1, 2, 3], np.float32)

    async def go(server):
        lin = await server.infer_numpy("linear", {"IN": x})
        dia = await server.infer_numpy("diamond", {"IN": x})
        nest = await server.infer_numpy("nested", {"IN": x})
        only_a = await server.infer_numpy("diamond", {"IN": x}, outputs=["A"])
        return lin, dia, nest, only_a

    lin, dia, nest, only_a = run(dag_repo, go)
    np.testing.assert_array_equal(lin["OUT"], x * 2 + 1)
    np.testing.assert_array_equal(dia["OUT"], x * 2 + (x + 1))
    np.testing.assert_array_equal(dia["A"], x * 2)
    y = x * 2 + 1
    np.testing.assert_array_equal(nest["OUT"], y * 2 + (y + 1))
    assert list(only_a) == ["A"]


STAMP_PY = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        start = time.monotonic()
        time.sleep(0.2)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "T", np.array([start, time.monotonic()], np.float64))]) for _ in requests]
"""

STAMP_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "T" data_type: TYPE_FP64 dims: [ 2 ] }} ]
"""


def test_independent_branches_run_in_parallel(repo):
    # two branches that each sleep 200 ms and report when they ran
    for name in ("stamp_a", "stamp_b"):
        write_model(repo, name, STAMP_CONFIG.format(name=name), {"model.py": STAMP_PY})
    write_ensemble(repo, "fork", [("IN", F, "-1")], [("TA", "TYPE_FP64", "2"),
                                                     ("TB", "TYPE_FP64", "2")], [
        step("stamp_a", {"X": "IN"}, {"T": "TA"}),
        step("stamp_b", {"X": "IN"}, {"T": "TB"}),
    ])
    x = np.array([1.0], np.float32)

    async def go(server):
        # the first runs of an idle python model may run inline on the submitting
        # thread; slow ones move to their worker threads, where branches overlap
        return [await server.infer_numpy("fork", {"IN": x}) for _ in range(8)]

    def overlapped(out) -> bool:
        (a0, a1), (b0, b1) = out["TA"], out["TB"]
        return max(a0, b0) < min(a1, b1)

    # once on their worker threads the branches overlap (a stalled thread may miss one)
    outs = run(repo, go)
    assert any(overlapped(out) for out in outs[-4:]), f"branches ran one after the other: {outs}"


def test_a_step_error_fails_the_request_with_that_error(dag_repo):
    async def go(server):
        errors = []
        for model, value in (("linear", -1.0), ("nested", -1.0), ("nested", np.nan)):
            with pytest.raises(NaiadError) as info:
                await server.infer_numpy(model, {"IN": np.array([value], np.float32)})
            errors.append(info.value)
        # the server keeps serving after failures
        ok = await server.infer_numpy("linear", {"IN": np.array([1.0], np.float32)})
        return errors, ok

    errors, ok = run(dag_repo, go)
    assert errors[0].message == "in ensemble 'linear', double refuses negative input"
    assert errors[0].kind.value == "INTERNAL"
    assert errors[1].message == ("in ensemble 'nested', in ensemble 'linear', double refuses "
                                 "negative input")
    assert "double cannot take NaN" in errors[2].message
    np.testing.assert_array_equal(ok["OUT"], [3.0])


def test_a_step_refusing_its_input_fails_with_a_client_error(repo):
    write_affine(repo, "fixed", extra="")
    write_model(repo, "four", """
        name: "four"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """, {"model.py": AFFINE_PY})
    write_ensemble(repo, "ens", [("IN", F, "-1")], [("OUT", F, "-1")], [
        step("fixed", {"X": "IN"}, {"Y": "t"}),
        step("four", {"X": "t"}, {"Y": "OUT"}),
    ])

    async def go(server):
        with pytest.raises(NaiadError) as info:
            await server.infer_numpy("ens", {"IN": np.ones(3, np.float32)})
        return info.value

    err = run(repo, go)
    assert err.kind.value == "INVALID_ARG"
    assert err.message.startswith("in ensemble 'ens', ")
    assert "unexpected shape for input 'X' for model 'four'" in err.message


@pytest.mark.parametrize("case, message", [
    ("unknown", "ensemble bad contains models that are not available or ambiguous: nosuch"),
    ("unused_input", "ensemble input 'IN' for ensemble bad' is not used"),
    ("unwritten", "output 'OUT' for ensemble 'bad' is not written"),
    ("cycle", "is unused in ensemble 'bad'"),
    ("dtype", "in ensemble bad, ensemble tensor IN: inconsistent data type: TYPE_INT32 is "
              "inferred from model bad while TYPE_FP32 is inferred from model double"),
    ("shape", "in ensemble bad, ensemble tensor IN: inconsistent shape: [3] is inferred from "
              "model bad while [4] is inferred from model four"),
    ("unmapped", "in ensemble bad, input B in model sum is not mapped to any ensemble tensors"),
    ("bad_input", "in ensemble bad, ensemble tensor IN is mapping to non-existing input Z in "
                  "model double"),
    ("bad_output", "in ensemble bad, ensemble tensor OUT is mapped from non-existing output Z "
                   "in model double"),
    ("twice", "ensemble tensor 'OUT' can appear in an output map only once for ensemble 'bad' "
              "step 1"),
    ("batch", "ensemble bad allows maximum batch size 8, but it contains model small_batch "
              "which only allows maximum batch size to be 2"),
    ("no_steps", "must specify 'step' for ensemble 'bad'"),
    ("instances", "instance group should not be specified for ensemble 'bad'"),
    ("decoupled_mix", "in ensemble bad, step of model 'sum' receives inputs originated from "
                      "different decoupled models"),
])
def test_invalid_ensembles_are_refused_at_load_with_tritons_message(repo, case, message):
    write_affine(repo, "double", mul=2)
    write_affine(repo, "small_batch", mbs=2)
    write_sum(repo)
    write_repeat(repo)
    write_cast(repo)
    write_model(repo, "four", """
        name: "four"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """, {"model.py": "class TritonPythonModel:\n    def execute(self, r):\n        return []\n"})
    ins, outs = [("IN", F, "-1")], [("OUT", F, "-1")]
    one = [step("double", {"X": "IN"}, {"Y": "OUT"})]
    extra, mbs = "", 0
    if case == "unknown":
        steps = [step("nosuch", {"X": "IN"}, {"Y": "OUT"})]
    elif case == "unused_input":
        steps = [step("double", {"X": "t0"}, {"Y": "OUT"})]
    elif case == "unwritten":
        ins = [("IN", F, "-1"), ("IN2", F, "-1")]
        steps = [step("double", {"X": "IN"}, {"Y": "t"}),
                 step("sum", {"A": "IN2", "B": "u"}, {"C": "OUT"})]
    elif case == "cycle":
        steps = [step("double", {"X": "t2"}, {"Y": "t1"}), step("double", {"X": "t1"}, {"Y": "t2"}),
                 step("double", {"X": "IN"}, {"Y": "OUT"})]
    elif case == "dtype":
        ins = [("IN", "TYPE_INT32", "-1")]
        steps = one
    elif case == "shape":
        ins = [("IN", F, "3")]
        steps = [step("four", {"X": "IN"}, {"Y": "OUT"})]
    elif case == "unmapped":
        steps = [step("sum", {"A": "IN"}, {"C": "OUT"})]
    elif case == "bad_input":
        steps = [step("double", {"Z": "IN"}, {"Y": "OUT"})]
    elif case == "bad_output":
        steps = [step("double", {"X": "IN"}, {"Z": "OUT"})]
    elif case == "twice":
        steps = [step("double", {"X": "IN"}, {"Y": "OUT"}), step("double", {"X": "IN"}, {"Y": "OUT"})]
    elif case == "batch":
        mbs = 8
        steps = [step("small_batch", {"X": "IN"}, {"Y": "OUT"})]
    elif case == "no_steps":
        steps = []
    elif case == "instances":
        steps = one
    elif case == "decoupled_mix":
        ins = [("N", "TYPE_INT32", "1"), ("IN", F, "1")]
        outs = [("OUT", F, "1")]
        steps = [step("repeat", {"IN": "N"}, {"OUT": "i"}), step("cast", {"I": "i"}, {"F": "f"}),
                 step("sum", {"A": "f", "B": "IN"}, {"C": "OUT"})]
    write_ensemble(repo, "bad", ins, outs, steps, mbs=mbs, extra=extra)
    if case == "instances":
        cfg = repo / "bad" / "config.pbtxt"
        cfg.write_text(cfg.read_text() + "instance_group [ { count: 1 } ]\n")

    async def go(server):
        index = {m["name"]: m for m in server.repository_index()}
        return index["bad"], index["double"]

    bad, double = run(repo, go)
    assert double["state"] == "READY"
    assert bad.get("state") == "UNAVAILABLE"
    assert message in bad["reason"]


def test_ensemble_of_a_failed_model_reports_why(repo):
    write_model(repo, "broken", """
        name: "broken"
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
    """, {"model.py": "raise RuntimeError('cannot import me')\n"})
    write_ensemble(repo, "ens", [("IN", F, "-1")], [("OUT", F, "-1")],
                   [step("broken", {"X": "IN"}, {"Y": "OUT"})])

    async def go(server):
        return {m["name"]: m for m in server.repository_index()}["ens"]

    ens = run(repo, go)
    assert ens["state"] == "UNAVAILABLE"
    assert ens["reason"].startswith("ensemble 'ens' depends on 'broken' which has no loaded "
                                    "version. Model 'broken' loading failed with error: ")
    assert "cannot import me" in ens["reason"]


def test_ensembles_that_use_each_other_are_refused(repo):
    write_ensemble(repo, "ping", [("IN", F, "-1")], [("OUT", F, "-1")],
                   [step("pong", {"IN": "IN"}, {"OUT": "OUT"})])
    write_ensemble(repo, "pong", [("IN", F, "-1")], [("OUT", F, "-1")],
                   [step("ping", {"IN": "IN"}, {"OUT": "OUT"})])

    async def go(server):
        return {m["name"]: m for m in server.repository_index()}

    index = run(repo, go)  # finishes: no deadlock
    assert index["ping"]["state"] == index["pong"]["state"] == "UNAVAILABLE"
    assert any("circular dependency" in index[n]["reason"] for n in ("ping", "pong"))


def test_decoupled_step_makes_a_streaming_ensemble(repo):
    write_repeat(repo)
    write_cast(repo)
    write_affine(repo, "double", mul=2)
    write_ensemble(repo, "stream", [("N", "TYPE_INT32", "1")], [("R", F, "1")], [
        step("repeat", {"IN": "N"}, {"OUT": "i"}),
        step("cast", {"I": "i"}, {"F": "f"}),
        step("double", {"X": "f"}, {"Y": "R"}),
    ])

    async def go(server):
        config = server.model_config_dict("stream")
        got = []
        finals = 0
        async for r in server.infer_stream(make_request("stream", {"N": np.array([5], np.int32)})):
            assert r.error is None
            got.append(float(r.outputs[0].data[0]))
        with pytest.raises(NaiadError, match="decoupled transaction policy"):
            await server.infer_numpy("stream", {"N": np.array([1], np.int32)})
        errors = [r async for r in server.infer_stream(
            make_request("stream", {"N": np.array([-1], np.int32)}))]
        empty = [r async for r in server.infer_stream(
            make_request("stream", {"N": np.array([0], np.int32)}))]
        return config, got, finals, errors, empty

    config, got, _, errors, empty = run(repo, go)
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert sorted(got) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert len(errors) == 1
    assert errors[0].error.message == "in ensemble 'stream', repeat count must not be negative"
    assert empty == []  # only the final flag


def test_max_inflight_requests_bounds_a_steps_concurrency(repo):
    # repeat streams 30 responses at once into a slow consumer limited to 2 in flight
    write_repeat(repo)
    write_cast(repo)
    write_model(repo, "slowf", AFFINE_CONFIG.format(
        name="slowf", mul=1, add=0, mbs=0, extra='instance_group [ { kind: KIND_CPU count: 4 } ]'),
        {"model.py": AFFINE_PY.replace("            y = (x", "            time.sleep(0.01)\n"
                                       "            y = (x")})
    write_ensemble(repo, "bounded", [("N", "TYPE_INT32", "1")], [("R", F, "1")], [
        step("repeat", {"IN": "N"}, {"OUT": "i"}),
        step("cast", {"I": "i"}, {"F": "f"}),
        step("slowf", {"X": "f"}, {"Y": "R"}),
    ], extra="max_inflight_requests: 2")

    async def go(server):
        sched = server.get_model("bounded").scheduler
        peak = 0
        stop = threading.Event()

        def watch():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, max(s.inflight for s in sched.steps))
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            n = 0
            async for r in server.infer_stream(make_request("bounded",
                                                            {"N": np.array([30], np.int32)})):
                assert r.error is None
                n += 1
        finally:
            stop.set()
            watcher.join()
        return n, peak, server.model_config_dict("bounded")

    n, peak, cfg = run(repo, go)
    assert n == 30
    assert peak == 2  # 4 instances could take more; the cap holds them to 2
    assert cfg["ensemble_scheduling"]["max_inflight_requests"] == 2


def test_ensemble_composes_with_a_steps_dynamic_batcher(repo):
    copy_example(repo, "simple_onnx")
    write_ensemble(repo, "onnx_ens", [("IN", F, "16")], [("OUT", F, "4")],
                   [step("simple_onnx", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], mbs=8)
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)

    async def go(server):
        direct = await server.infer_numpy("simple_onnx", {"INPUT0": x})
        outs = await asyncio.gather(*[server.infer_numpy("onnx_ens", {"IN": x})
                                      for _ in range(32)])
        for _ in range(100):  # statistics are recorded just after the response is delivered
            ens = server.model_statistics("onnx_ens")["model_stats"][0]
            if ens["inference_stats"]["success"]["count"] == 32:
                break
            await asyncio.sleep(0.01)
        stats = server.model_statistics("simple_onnx")["model_stats"][0]
        return direct, outs, stats, ens

    direct, outs, stats, ens = run(repo, go)
    for out in outs:
        np.testing.assert_allclose(out["OUT"], direct["OUTPUT0"], rtol=1e-6)
    assert stats["inference_count"] == 33
    assert ens["inference_stats"]["success"]["count"] == 32


def test_explicit_mode_loads_dependencies_and_unloads_them_with_the_ensemble(dag_repo):
    async def go(server):
        await server.load_model("nested")
        ready = {n: server.model_ready(n) for n in ("double", "inc", "sum", "linear", "diamond",
                                                    "nested")}
        out = await server.infer_numpy("nested", {"IN": np.array([1.0], np.float32)})
        await server.unload_model("linear", unload_dependents=False)
        after_plain = {n: server.model_ready(n) for n in ("double", "inc", "linear")}
        await server.load_model("linear")
        await server.unload_model("nested", unload_dependents=True)
        after_dependents = {n: server.model_ready(n) for n in ("double", "inc", "sum", "linear",
                                                               "diamond", "nested")}
        return ready, out, after_plain, after_dependents

    ready, out, after_plain, after = run(dag_repo, go, model_control_mode="explicit")
    assert all(ready.values())
    np.testing.assert_array_equal(out["OUT"], [3 * 2 + 4])
    assert after_plain == {"double": True, "inc": True, "linear": False}
    assert not any(after.values()), after


def test_ensemble_metadata_config_and_statistics_over_http(dag_repo):
    with NaiadProcess(dag_repo) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        meta = client.get_model_metadata("diamond")
        assert meta["platform"] == "ensemble"
        assert {o["name"] for o in meta["outputs"]} == {"OUT", "A"}
        config = client.get_model_config("diamond")
        assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == [
            "double", "inc", "sum"]
        x = np.array([1, 2], np.float32)
        inp = httpclient.InferInput("IN", [2], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("diamond", [inp], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("OUT"), x * 2 + x + 1)
        assert result.get_response()["model_name"] == "diamond"
        assert result.get_response()["id"] == "r1"
        bad = httpclient.InferInput("IN", [1], "FP32")
        bad.set_data_from_numpy(np.array([-1], np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("diamond", [bad])
        assert info.value.status() == "500"
        # both branches refuse it; whichever fails first fails the request
        assert info.value.message() in (
            "in ensemble 'diamond', double refuses negative input",
            "in ensemble 'diamond', inc refuses negative input")
        for _ in range(100):  # recorded just after the response went out
            stats = client.get_inference_statistics("diamond")["model_stats"][0]
            if stats["inference_stats"]["fail"]["count"] == 1:
                break
            time.sleep(0.01)
        assert stats["inference_stats"]["success"]["count"] == 1
        assert stats["inference_stats"]["fail"]["count"] == 1
        double = client.get_inference_statistics("double")["model_stats"][0]
        assert double["inference_stats"]["success"]["count"] == 1
        client.close()


def test_ensemble_statistics_sum_the_steps_compute_times(dag_repo):
    """As Triton 2.51 reports them: one execution (batch size 1) per ensemble request,
    whose compute input / infer / output times are the sums of its steps'."""
    x = np.array([1, 2, 3], np.float32)

    async def go(server):
        for _ in range(3):
            await server.infer_numpy("linear", {"IN": x})
        return {m: server.model_statistics(m)["model_stats"][0]
                for m in ("linear", "double", "inc")}

    stats = run(dag_repo, go)
    ens = stats["linear"]
    assert ens["inference_count"] == 3 and ens["execution_count"] == 3
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in ens["batch_stats"]] == \
        [(1, 3)]
    inf = ens["inference_stats"]
    for field in ("compute_input", "compute_infer", "compute_output"):
        steps = stats["double"]["inference_stats"][field]["ns"] + \
            stats["inc"]["inference_stats"][field]["ns"]
        assert inf[field]["count"] == 3
        assert inf[field]["ns"] == steps, field
    assert inf["compute_infer"]["ns"] > 0
    # the parts still fit in the requests' total time
    parts = sum(inf[f]["ns"] for f in ("queue", "compute_input", "compute_infer",
                                       "compute_output"))
    assert parts <= inf["success"]["ns"]
