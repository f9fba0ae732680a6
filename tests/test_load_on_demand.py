"""Many models on one server: load on first request, memory budget, idle unloads.

Servers run with ``--model-load-on-demand=true``; clients are tritonclient's
HTTP and gRPC clients (and raw HTTP for the repository index and health).
The models (``tests/many_models.py``) each hold an 8 MiB ballast, so a budget
of N models' worth decides how many stay loaded.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from tritonclient.utils import InferenceServerException

from tests.clients import PROTOCOLS, call, index, metric, scrape, triton_client, wait_for
from tests.conftest import NaiadProcess
from tests.many_models import MIB, PIN, add_onnx, add_python
from tests.models import step, write_ensemble

ON_DEMAND = ("--model-control-mode=explicit", "--model-load-on-demand=true")


def infer(protocol: str, server: NaiadProcess, model: str, x: np.ndarray) -> np.ndarray:
    module, client = triton_client(protocol, server)
    inp = module.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        return client.infer(model, [inp]).as_numpy("OUT")
    finally:
        client.close()


def entry(server: NaiadProcess, name: str) -> list[dict]:
    return [item for item in index(server.base) if item["name"] == name]


def ready(server: NaiadProcess, name: str) -> bool:
    return call(server.base, "GET", f"/v2/models/{name}/ready")[0] == 200


def server_rss(server: NaiadProcess) -> int:
    proc = psutil.Process(server.proc.pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


# -- flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (("--model-control-mode=poll", "--model-load-on-demand=true"),
     "--model-load-on-demand=true needs --model-control-mode=explicit or none"),
    (("--model-memory-limit=1000000",), "--model-memory-limit needs --model-load-on-demand"),
    (("--model-idle-unload-secs=5",), "--model-idle-unload-secs needs --model-load-on-demand"),
    ((*ON_DEMAND, "--model-memory-limit=lots"), "invalid value for --model-memory-limit: 'lots'"),
    ((*ON_DEMAND, "--model-memory-limit=150%"), "invalid value for --model-memory-limit"),
    ((*ON_DEMAND, "--model-load-on-demand-timeout-secs=0"),
     "--model-load-on-demand-timeout-secs must be positive"),
])
def test_flags_that_cannot_work_are_refused_at_startup(repo, flags, message):
    server = NaiadProcess(repo, *flags, wait="none").start()
    try:
        assert server.proc.wait(timeout=30) != 0
        assert message in server.output()
    finally:
        server.stop()


def test_memory_limit_in_bytes_or_percent():
    from naiad.repository.residency import machine_memory, parse_memory_limit

    assert parse_memory_limit("") == 0
    assert parse_memory_limit("123456789") == 123456789
    total = machine_memory()
    assert 0 < total <= psutil.virtual_memory().total
    assert parse_memory_limit("25%") == int(total * 0.25)
    assert parse_memory_limit(" 12.5% ") == int(total * 0.125)


# -- readiness and the index ------------------------------------------------------------------


def test_ready_with_nothing_loaded_and_the_index_says_what_loads_on_demand(repo):
    add_python(repo, "slow", 1.0, init_sleep=1.5)
    add_python(repo, "fast", 2.0)
    with NaiadProcess(repo, "--model-load-on-demand=true") as server:  # none mode
        # ready at once: nothing must load before the server can serve
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200
        for name in ("slow", "fast"):
            assert entry(server, name) == [{
                "name": name, "state": "UNAVAILABLE",
                "reason": "not loaded: loads on its first inference request"}]
            assert not ready(server, name)
        assert index(server.base, ready=True) == []
        pool = concurrent.futures.ThreadPoolExecutor(1)
        answer = pool.submit(infer, "http", server, "slow", np.array([1.0], np.float32))
        # while it loads: LOADING in the index, not ready itself, the server still ready
        wait_for(lambda: entry(server, "slow")[0].get("state") == "LOADING", timeout=20,
                 what="slow LOADING")
        assert not ready(server, "slow")
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200
        assert answer.result(timeout=60).tolist() == [2.0]
        pool.shutdown()
        assert entry(server, "slow") == [{"name": "slow", "version": "1", "state": "READY"}]
        assert ready(server, "slow")
        assert not ready(server, "fast")


def _all_waiting(server: NaiadProcess, model: str, count: int, release: Path) -> None:
    """Once ``count`` requests wait for ``model``'s on-demand load, let the load finish
    (``release``: the ``hold_until`` file of its initialize)."""
    wait_for(lambda: metric(scrape(server), "naiad_cold_start_waiting_requests",
                            model=model) == count, timeout=60, what=f"{count} waiting")
    release.write_text("")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_concurrent_first_requests_load_the_model_once(repo, tmp_path, protocol):
    release = tmp_path / "release"
    add_python(repo, "m", 5.0, hold_until=str(release))
    with NaiadProcess(repo, *ON_DEMAND) as server:
        def one(i: int) -> list[float]:
            return infer(protocol, server, "m", np.array([float(i)], np.float32)).tolist()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = pool.map(one, range(16))
            _all_waiting(server, "m", 16, release)
            answers = list(answers)
        assert answers == [[i + 5.0] for i in range(16)]
        samples = scrape(server)
        assert metric(samples, "naiad_model_loads", model="m", outcome="success") == 1
        assert metric(samples, "naiad_cold_start_requests", model="m") == 16
        assert server.output().count("loading 'm' on demand") == 1
        # loaded: the next request is not a cold start
        assert one(20) == [25.0]
        assert metric(scrape(server), "naiad_cold_start_requests", model="m") == 16


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_lazy_load_fails_every_waiter_and_the_next_request_tries_again(
        repo, tmp_path, protocol):
    marker, release = tmp_path / "broken", tmp_path / "release"
    marker.write_text("")
    add_python(repo, "flaky", 3.0, fail_if=str(marker), hold_until=str(release))
    with NaiadProcess(repo, *ON_DEMAND) as server:
        def one(i: int) -> str:
            try:
                infer(protocol, server, "flaky", np.array([float(i)], np.float32))
            except InferenceServerException as exc:
                return f"{exc.status()} {exc.message()}"
            return "ok"

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            errors = pool.map(one, range(8))
            _all_waiting(server, "flaky", 8, release)
            errors = list(errors)
        status = "503" if protocol == "http" else "StatusCode.UNAVAILABLE"
        for text in errors:
            assert text.startswith(status), text
            assert "model 'flaky' failed to load on demand" in text
            assert "initialize failed on purpose" in text
        assert server.output().count("loading 'flaky' on demand") == 1
        [item] = entry(server, "flaky")
        assert item["state"] == "UNAVAILABLE" and "initialize failed on purpose" in item["reason"]
        # a lazily loaded model that failed does not make the server unready
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200
        assert one(9) != "ok"  # still broken: tried again, failed again
        marker.unlink()
        assert infer(protocol, server, "flaky", np.array([1.0], np.float32)).tolist() == [4.0]
        samples = scrape(server)
        assert metric(samples, "naiad_model_loads", model="flaky", outcome="failure") == 2
        assert metric(samples, "naiad_model_loads", model="flaky", outcome="success") == 1
        assert metric(samples, "naiad_cold_start_failures", model="flaky",
                      reason="load_failed") == 9


def test_a_request_waits_no_longer_than_the_timeout(repo):
    add_python(repo, "glacial", 1.0, init_sleep=3.0)
    add_python(repo, "other", 2.0)
    with NaiadProcess(repo, *ON_DEMAND, "--model-load-on-demand-timeout-secs=0.5") as server:
        with pytest.raises(InferenceServerException) as info:
            infer("http", server, "glacial", np.array([1.0], np.float32))
        assert info.value.status() == "503"
        assert "timed out after 0.5 s waiting for model 'glacial' to load" in \
            info.value.message()
        # the load went on: once it is done the model serves
        wait_for(lambda: ready(server, "glacial"), timeout=30, what="glacial ready")
        assert infer("http", server, "glacial", np.array([1.0], np.float32)).tolist() == [2.0]
        assert metric(scrape(server), "naiad_cold_start_failures", model="glacial",
                      reason="timeout") == 1
        # an unknown model is still an unknown model, at once
        with pytest.raises(InferenceServerException) as info:
            infer("http", server, "nosuch", np.array([1.0], np.float32))
        assert "Request for unknown model: 'nosuch' is not found" in info.value.message()


# -- the memory budget --------------------------------------------------------------------


def _budget_repo(repo, pythons: int, onnxs: int) -> dict[str, float]:
    offsets = {}
    for i in range(pythons):
        offsets[f"py{i:02d}"] = float(i)
        add_python(repo, f"py{i:02d}", float(i))
    for i in range(onnxs):
        offsets[f"onnx{i:02d}"] = 100.0 + i
        add_onnx(repo, f"onnx{i:02d}", 100.0 + i)
    return offsets


def test_an_evicted_model_loads_again_with_the_same_answers(repo):
    offsets = _budget_repo(repo, 3, 1)
    add_python(repo, "pinned", 50.0, extra=PIN)
    # room for about three models: the pinned one and two others
    flags = (*ON_DEMAND, "--load-model=pinned", f"--model-memory-limit={int(3.5 * 9 * MIB)}")
    with NaiadProcess(repo, *flags) as server:
        x = np.array([1.0, 0.0, 0.0, 0.0], np.float32)  # (4 values: the ONNX model's shape)
        first = {n: infer("http", server, n, x).tolist() for n in offsets}
        assert first == {n: [1.0 + off, off, off, off] for n, off in offsets.items()}
        evicted = [n for n in offsets if entry(server, n)[0]["state"] == "UNAVAILABLE"]
        assert evicted, index(server.base)
        for n in evicted:
            assert entry(server, n) == [{
                "name": n, "version": "1", "state": "UNAVAILABLE",
                "reason": "unloaded to stay under --model-memory-limit: loads on its next "
                          "inference request"}]
        assert entry(server, "pinned")[0]["state"] == "READY"
        again = {n: infer("grpc", server, n, x).tolist() for n in evicted}
        assert again == {n: first[n] for n in evicted}
        samples = scrape(server)
        for n in evicted:
            assert metric(samples, "naiad_model_evictions", model=n, reason="memory") >= 1
            assert metric(samples, "naiad_model_loads", model=n, outcome="success") == 2
        assert metric(samples, "naiad_model_evictions", model="pinned", reason="memory") == 0
        used = metric(samples, "naiad_model_memory_used_bytes")
        limit = metric(samples, "naiad_model_memory_limit_bytes")
        assert limit == int(3.5 * 9 * MIB) and 0 < used <= limit
        assert metric(samples, "naiad_model_memory_bytes", model="pinned") >= 8 * MIB
        # a pinned model unloaded through the API: the server stays ready, and the
        # model's next request loads it again
        assert call(server.base, "POST", "/v2/repository/models/pinned/unload")[0] == 200
        wait_for(lambda: entry(server, "pinned")[0]["state"] == "UNAVAILABLE", timeout=20,
                 what="pinned unloaded")
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200
        assert infer("http", server, "pinned", x).tolist() == [51.0, 50.0, 50.0, 50.0]


def test_skewed_traffic_over_fifty_models_never_fails_and_stays_under_the_budget(repo):
    """35 python and 15 ONNX models, a budget that fits 10, Zipf-like traffic from HTTP and
    gRPC clients: every request answered right, the server's resident memory never above
    its size without models plus the budget."""
    offsets = _budget_repo(repo, 35, 15)
    names = sorted(offsets)
    budget = 10 * 9 * MIB  # ten models of 8 MiB ballast, with room for what each adds
    with NaiadProcess(repo, *ON_DEMAND, f"--model-memory-limit={budget}") as server:
        x = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
        # warm-up: the frameworks start (the python backend, onnxruntime: the first model of
        # each also pays for that) and the budget fills and turns over once; then what the
        # server holds besides its models is the baseline the budget comes on top of
        for k in range(7):
            infer("http", server, f"py{k + 10:02d}", x)
            infer("grpc", server, f"onnx{k:02d}", x)
        time.sleep(0.2)
        base = server_rss(server) - metric(scrape(server), "naiad_model_memory_used_bytes")
        weights = np.array([1.0 / (k + 1) ** 1.1 for k in range(len(names))])
        order = list(names)
        random.Random(7).shuffle(order)  # popular models of both kinds
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], server_rss(server))
                time.sleep(0.01)

        def client(protocol: str, seed: int, count: int) -> list[str]:
            rng = np.random.default_rng(seed)
            module, conn = triton_client(protocol, server)
            bad = []
            try:
                for name in rng.choice(order, size=count, p=weights / weights.sum()):
                    inp = module.InferInput("IN", [4], "FP32")
                    inp.set_data_from_numpy(x)
                    try:
                        out = conn.infer(str(name), [inp]).as_numpy("OUT").tolist()
                    except InferenceServerException as exc:
                        bad.append(f"{name}: {exc}")
                        continue
                    want = offsets[str(name)]
                    if out != [1.0 + want, want, want, want]:
                        bad.append(f"{name}: {out}")
            finally:
                conn.close()
            return bad

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(client, p, seed, 120)
                    for seed, p in enumerate(("http", "grpc", "http", "grpc"))]
            failures = [b for r in runs for b in r.result(timeout=600)]
        stop.set()
        sampler.join()
        assert failures == []
        samples = scrape(server)
        evictions = sum(v for (n, _), v in samples.items() if n == "naiad_model_evictions")
        assert evictions >= 10  # the budget did its work
        loaded = index(server.base, ready=True)
        assert 7 <= len(loaded) <= 10, loaded  # the budget is used, and it holds
        assert metric(samples, "naiad_model_memory_used_bytes") <= budget
        assert peak[0] - base <= budget, (peak[0] - base) / MIB


# -- what is never unloaded, and idle unloads -----------------------------------------------


def _ensemble(repo) -> None:
    # s1 sleeps IN[1] seconds (OUT = IN - 100, so s2 gets a negative IN[1] and does not)
    add_python(repo, "s1", -100.0)
    add_python(repo, "s2", 150.0)
    write_ensemble(repo, "pipeline", [("IN", "TYPE_FP32", "-1")], [("OUT", "TYPE_FP32", "-1")],
                   [step("s1", {"IN": "IN"}, {"OUT": "mid"}),
                    step("s2", {"IN": "mid"}, {"OUT": "OUT"})])


def test_an_ensemble_loads_its_steps_on_demand(repo):
    _ensemble(repo)
    with NaiadProcess(repo, "--model-load-on-demand=true") as server:
        assert {i["name"]: i["state"] for i in index(server.base)} == {
            "pipeline": "UNAVAILABLE", "s1": "UNAVAILABLE", "s2": "UNAVAILABLE"}
        out = infer("grpc", server, "pipeline", np.array([1.0], np.float32))
        assert out.tolist() == [51.0]
        assert {i["name"]: i["state"] for i in index(server.base)} == {
            "pipeline": "READY", "s1": "READY", "s2": "READY"}
        samples = scrape(server)
        for name in ("pipeline", "s1", "s2"):
            assert metric(samples, "naiad_model_loads", model=name, outcome="success") == 1
        # the request waited for the ensemble; its steps loaded as the ensemble's
        assert metric(samples, "naiad_cold_start_requests", model="pipeline") == 1
        assert metric(samples, "naiad_cold_start_requests", model="s1") == 0


def test_models_in_use_are_never_evicted(repo):
    """A model executing a request and the steps of an ensemble running one stay loaded
    while the budget turns over the other models around them."""
    _ensemble(repo)
    add_python(repo, "busy", 1.0)
    for name in ("x", "y", "z"):
        add_python(repo, name, 2.0)
    # room for four models: the busy one, the two steps, and one more
    flags = (*ON_DEMAND, f"--model-memory-limit={int(4.2 * 9 * MIB)}")
    with NaiadProcess(repo, *flags) as server:
        pool = concurrent.futures.ThreadPoolExecutor(2)
        slow = np.array([1.0, 3.0], np.float32)  # sleeps 3 s in 'busy' and in 's1'
        busy = pool.submit(infer, "http", server, "busy", slow)
        pipeline = pool.submit(infer, "grpc", server, "pipeline", slow)
        wait_for(lambda: all(ready(server, n) for n in ("busy", "s1", "s2", "pipeline")),
                 timeout=30, what="busy and pipeline loaded")
        one = np.array([1.0], np.float32)
        for name in ("x", "y", "z", "x"):  # each needs the room the previous one holds
            assert infer("http", server, name, one).tolist() == [3.0]
        samples = scrape(server)
        assert sum(metric(samples, "naiad_model_evictions", model=n, reason="memory")
                   for n in ("x", "y", "z")) >= 3
        for name in ("busy", "s1", "s2", "pipeline"):
            assert metric(samples, "naiad_model_evictions", model=name, reason="memory") == 0
        assert busy.result(timeout=60).tolist() == [2.0, 4.0]
        assert pipeline.result(timeout=60).tolist() == [51.0, 53.0]
        pool.shutdown()


def test_idle_models_unload_and_pinned_ones_stay(repo):
    add_python(repo, "idle", 1.0)
    add_python(repo, "kept", 2.0, extra=PIN)
    flags = (*ON_DEMAND, "--model-idle-unload-secs=1")
    with NaiadProcess(repo, *flags) as server:
        one = np.array([1.0], np.float32)
        assert infer("http", server, "idle", one).tolist() == [2.0]
        assert infer("http", server, "kept", one).tolist() == [3.0]
        wait_for(lambda: entry(server, "idle")[0]["state"] == "UNAVAILABLE", timeout=20,
                 what="idle unloaded")
        assert entry(server, "idle") == [{
            "name": "idle", "version": "1", "state": "UNAVAILABLE",
            "reason": "unloaded after 1 s without requests: loads on its next inference "
                      "request"}]
        time.sleep(1.5)  # more than the idle time again: the pinned model stays
        assert ready(server, "kept")
        samples = scrape(server)
        assert metric(samples, "naiad_model_evictions", model="idle", reason="idle") == 1
        assert metric(samples, "naiad_model_evictions", model="kept", reason="idle") == 0
        assert infer("grpc", server, "idle", one).tolist() == [2.0]


def test_a_client_that_gives_up_while_its_model_loads_leaves_the_queue(repo, tmp_path):
    release = tmp_path / "release"
    add_python(repo, "sloth", 1.0, hold_until=str(release))  # loads until released
    with NaiadProcess(repo, *ON_DEMAND) as server:
        module, client = triton_client("grpc", server)
        inp = module.InferInput("IN", [1], "FP32")
        inp.set_data_from_numpy(np.array([1.0], np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("sloth", [inp], client_timeout=0.5)
        assert "Deadline" in str(info.value) or "DEADLINE" in str(info.value)
        # the server dropped it from the queue, though the load goes on
        wait_for(lambda: metric(scrape(server), "naiad_cold_start_waiting_requests",
                                model="sloth") == 0, timeout=10, what="queue empty")
        assert not ready(server, "sloth")
        assert entry(server, "sloth")[0].get("state") == "LOADING"
        release.write_text("")
        assert client.infer("sloth", [inp]).as_numpy("OUT").tolist() == [2.0]
        client.close()


def test_openai_requests_load_their_model_on_demand(repo):
    import openai

    from tests.conftest import free_port
    from tests.openai_models import write_mock_lm, write_text_embedder

    write_mock_lm(repo, "bare_lm", tokenizer=False)
    write_text_embedder(repo, "text_embedder")
    port = free_port()
    with NaiadProcess(repo, *ON_DEMAND, "--allow-openai=true", f"--openai-port={port}",
                      "--openai-address=127.0.0.1") as server:
        assert not ready(server, "bare_lm") and not ready(server, "text_embedder")
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                           max_retries=0, timeout=60) as client:
            out = client.completions.create(model="bare_lm", prompt="hi", max_tokens=2)
            assert out.choices[0].text == "w0 w1 "
            vectors = client.embeddings.create(model="text_embedder", input=["a", "b"])
            assert len(vectors.data) == 2
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model="nosuch", prompt="hi", max_tokens=2)
        assert ready(server, "bare_lm") and ready(server, "text_embedder")
        samples = scrape(server)
        assert metric(samples, "naiad_cold_start_requests", model="bare_lm") == 1
        assert metric(samples, "naiad_model_loads", model="text_embedder",
                      outcome="success") == 1


# -- what backends report ----------------------------------------------------------------------


def test_backends_report_what_their_models_hold(repo):
    """onnxruntime (its files per session), torch (parameters and buffers, per instance
    unless weights are shared) and OpenVINO (its constants) report their weights; the
    statistics show them even when versions loaded side by side and their growth could
    not be told apart."""
    import asyncio

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from naiad.server import Server
    from tests.conftest import write_model
    from tests.many_models import ONNX_CONFIG, add_openvino, add_torchscript

    pytest.importorskip("torch")
    pytest.importorskip("openvino")
    add_torchscript(repo, "torch1", 1.0, count=2)
    add_torchscript(repo, "torch_shared", 2.0, count=2)
    with open(repo / "torch_shared" / "config.pbtxt", "a") as f:
        f.write('parameters { key: "ENABLE_WEIGHT_SHARING" value: { string_value: "true" } }\n')
    add_openvino(repo, "vino", 3.0)
    weights = numpy_helper.from_array(np.zeros((MIB // 2, 4), np.float32), "W")  # 8 MiB
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["W"], ["m"], axes=[0], keepdims=0),
         helper.make_node("Add", ["IN", "m"], ["OUT"])], "g",
        [helper.make_tensor_value_info("IN", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, [4])], [weights])
    model_dir = write_model(repo, "onnx8", ONNX_CONFIG.format(name="onnx8", extra=""))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(model_dir / "1" / "model.onnx"))

    async def run() -> dict:
        server = Server(model_repository=str(repo), allow_metrics=False)
        await server.start()  # every model loads at once, side by side
        try:
            out = {}
            for name in ("torch1", "torch_shared", "vino", "onnx8"):
                model = server.get_model(name)
                stats = server.model_statistics(name)["model_stats"][0]
                out[name] = (model.backend_model.memory_bytes(), stats["memory_usage"])
            return out
        finally:
            await server.stop(10)

    got = asyncio.run(run())
    eight = 8 * MIB
    assert 2 * eight <= got["torch1"][0] < 2 * eight + MIB  # two instances, two modules
    assert eight <= got["torch_shared"][0] < eight + MIB
    assert eight <= got["vino"][0] < eight + MIB
    onnx_file = (model_dir / "1" / "model.onnx").stat().st_size
    assert got["onnx8"][0] == onnx_file
    for name, (reported, usage) in got.items():
        assert usage and usage[0]["type"] == "CPU" and usage[0]["byte_size"] >= reported, name
