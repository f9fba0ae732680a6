"""naiad on a real multi-node Ray cluster: two ``ray start`` nodes on this machine.

The head (1 CPU) and a worker (2 CPUs) are separate ``ray start --block``
processes with their own loopback address, ports and temp dir; ``naiad ray``
deploys the application as a user would; clients are tritonclient's HTTP and
gRPC clients talking to Serve's proxies. Every Ray process the module starts
is stopped by PID at the end (tests/ray_cluster.py).

The tests run in order against one cluster: placement and both protocols,
explicit model control across replicas, a replica killed under traffic,
autoscaling on queue time under a burst, and a repository on a local S3
server.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from naiad.ray.proxy import REPLICA_LOST  # noqa: E402
from tests.conftest import write_model  # noqa: E402
from tests.ray_cluster import RayCluster, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(900)

# OUT = IN + OFFSET, PID = the serving process; sleeps IN[1] seconds when given
MODEL_PY = '''
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            if x.shape[0] > 1 and x[1] > 0:
                time.sleep(float(x[1]))
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", (x + OFFSET).astype(np.float32)),
                pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64))]))
        return out
'''

CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }},
         {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
'''


def expected(x: float, sleep: float, offset: float) -> list[float]:
    return (np.array([x, sleep], dtype=np.float32) + np.float32(offset)).tolist()


def _model(repo: Path, name: str, offset: float) -> None:
    write_model(repo, name, CONFIG.format(name=name),
                {"model.py": MODEL_PY.format(offset=offset)})


class App:
    """The deployed application's endpoints."""

    def __init__(self, cluster: RayCluster, repo: Path):
        self.cluster = cluster
        self.repo = repo
        self.http_port = free_port()
        self.grpc_port = free_port()

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def deploy(self, *flags: str, repository: str | None = None) -> str:
        result = self.cluster.run(
            sys.executable, "-m", "naiad", "ray", "--address", self.cluster.address,
            "--model-repository", repository or str(self.repo), "--http-host", "127.0.0.1",
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--proxy-location", "HeadOnly", "--num-cpus", "1", *flags)
        assert result.returncode == 0, result.stdout + result.stderr + self.cluster.logs()
        return result.stdout

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def replicas(self) -> list[dict]:
        status, body = self.get("/v2/ray/replicas")
        assert status == 200, body
        return json.loads(body)["replicas"]

    def wait_for(self, predicate, timeout: float, what: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while time.monotonic() < deadline:
            try:
                last = self.replicas()
            except (AssertionError, OSError):
                last = []
            if predicate(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; replicas: {last}")


def http_infer(url: str, model: str, x: float, sleep: float = 0.0):
    client = tritonclient_http.InferenceServerClient(url, network_timeout=60)
    try:
        inp = tritonclient_http.InferInput("IN", [2], "FP32")
        inp.set_data_from_numpy(np.array([x, sleep], dtype=np.float32))
        return client.infer(model, [inp])
    finally:
        client.close()


def grpc_infer(client, model: str, x: float, sleep: float = 0.0):
    inp = tritonclient_grpc.InferInput("IN", [2], "FP32")
    inp.set_data_from_numpy(np.array([x, sleep], dtype=np.float32))
    return client.infer(model, [inp], client_timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cache = tmp_path_factory.mktemp("s3cache")
    env = {
        # autoscaling reacts within seconds instead of tens of seconds
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "NAIAD_REPOSITORY_CACHE": str(cache),
    }
    with RayCluster([1, 2], env=env) as c:
        yield c


@pytest.fixture(scope="module")
def app(cluster, tmp_path_factory):
    repo = tmp_path_factory.mktemp("ray_repo")
    _model(repo, "whoami", 1.0)
    _model(repo, "extra", 100.0)
    application = App(cluster, repo)
    out = application.deploy("--num-replicas", "2", "--model-control-mode=explicit",
                             "--load-model=whoami")
    assert "running with 2 replica(s)" in out
    return application


def test_replicas_span_both_nodes_and_serve_tritonclient_http_and_grpc(app, cluster):
    replicas = app.wait_for(lambda r: len(r) == 2 and all(x["ready"] for x in r), 60,
                            "two ready replicas")
    # where each replica runs, from the process trees of the two `ray start` nodes
    nodes = {cluster.node_of(r["pid"]).name for r in replicas}
    assert nodes == {"head", "worker0"}, replicas
    assert {r["node_ip"] for r in replicas} == {"127.0.0.2", "127.0.0.3"}
    assert all(r["models"] == ["whoami"] for r in replicas)
    pids = {r["pid"] for r in replicas}

    client = tritonclient_http.InferenceServerClient(app.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("whoami") and not client.is_model_ready("extra")
    meta = client.get_model_metadata("whoami")
    assert meta["name"] == "whoami" and [o["name"] for o in meta["outputs"]] == ["OUT", "PID"]
    client.close()

    # concurrent traffic over both protocols; every answer checked
    seen: set[int] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        grpc_client = tritonclient_grpc.InferenceServerClient(app.grpc)
        try:
            for i in range(10):
                x = float(index * 100 + i)
                if i % 2:
                    result = grpc_infer(grpc_client, "whoami", x, 0.05)
                else:
                    result = http_infer(app.http, "whoami", x, 0.05)
                assert result.as_numpy("OUT").tolist() == expected(x, 0.05, 1), x
                with lock:
                    seen.add(int(result.as_numpy("PID")[0]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            grpc_client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert seen == pids  # both replicas served

    # ModelStreamInfer through Serve's gRPC proxy (a bidirectional stream)
    import queue

    grpc_client = tritonclient_grpc.InferenceServerClient(app.grpc)
    answers: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(3):
        inp = tritonclient_grpc.InferInput("IN", [2], "FP32")
        inp.set_data_from_numpy(np.array([float(i), 0.0], dtype=np.float32))
        grpc_client.async_stream_infer("whoami", [inp], request_id=str(i))
    streamed = [answers.get(timeout=60) for _ in range(3)]
    grpc_client.stop_stream()
    assert [e for _, e in streamed] == [None] * 3
    assert [r.as_numpy("OUT").tolist() for r, _ in streamed] == [expected(i, 0, 1)
                                                                  for i in range(3)]
    grpc_client.close()

    # statistics and metrics add up over the replicas
    grpc_client = tritonclient_grpc.InferenceServerClient(app.grpc)
    assert grpc_client.is_server_ready()
    stats = grpc_client.get_inference_statistics("whoami", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == 43
    assert int(stats["inference_stats"]["success"]["count"]) == 43
    grpc_client.close()
    status, body = app.get("/v2/models/stats")
    assert status == 200 and json.loads(body)["model_stats"][0]["inference_count"] == 43
    status, text = app.get("/metrics")
    assert status == 200
    assert 'nv_inference_request_success{model="whoami",version="1"} 43' in text.decode()
    status, text = app.get("/metrics/replicas")
    per_replica = [line for line in text.decode().splitlines()
                   if line.startswith('nv_inference_request_success{model="whoami"')]
    assert len(per_replica) == 2
    assert sum(float(line.rsplit(" ", 1)[1]) for line in per_replica) == 43
    assert {line.split('replica="')[1].split('"')[0] for line in per_replica} == \
        {r["replica"] for r in replicas}


def test_model_load_and_unload_apply_to_every_replica(app):
    client = tritonclient_http.InferenceServerClient(app.http)
    client.load_model("extra")
    replicas = app.replicas()
    assert len(replicas) == 2 and all(r["models"] == ["extra", "whoami"] for r in replicas)
    seen = set()
    for i in range(12):  # a few overlapping calls reach both replicas
        results: list = []

        def call(x: float, out: list = results) -> None:
            out.append((x, http_infer(app.http, "extra", x, 0.05)))

        threads = [threading.Thread(target=call, args=(float(i * 10 + k),)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for x, r in results:
            assert r.as_numpy("OUT").tolist() == expected(x, 0.05, 100)
            seen.add(int(r.as_numpy("PID")[0]))
        if len(seen) == 2:
            break
    assert seen == {r["pid"] for r in replicas}

    grpc_client = tritonclient_grpc.InferenceServerClient(app.grpc)
    grpc_client.unload_model("extra")
    assert all(r["models"] == ["whoami"] for r in app.replicas())
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(grpc_client, "extra", 1.0)
    assert "extra" in str(info.value)
    # loaded again over gRPC: a replica that starts later must load it too
    grpc_client.load_model("extra")
    assert all(r["models"] == ["extra", "whoami"] for r in app.replicas())
    # a load that fails on the replicas answers with naiad's error, once
    with pytest.raises(InferenceServerException) as info:
        client.load_model("missing")
    assert "missing" in str(info.value)
    # trace settings reach every replica (each answer comes from whichever replica serves it)
    client.update_trace_settings(settings={"trace_rate": "7"})
    for _ in range(6):
        assert client.get_trace_settings()["trace_rate"] == "7"
    grpc_client.close()
    client.close()


def test_a_replica_killed_under_traffic_fails_only_its_requests_and_is_replaced(app, cluster):
    replicas = app.replicas()
    victim = next(r for r in replicas if cluster.node_of(r["pid"]).name == "worker0")
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def http_loop(index: int) -> None:
        for i in range(40):
            if stop.is_set():
                return
            x = float(index * 1000 + i)
            try:
                r = http_infer(app.http, "whoami", x, 0.3)
                ok = r.as_numpy("OUT").tolist() == expected(x, 0.3, 1)
                result = ("ok", "") if ok else ("wrong", str(r.as_numpy("OUT")))
            except InferenceServerException as exc:
                result = ("http-error", f"{exc.status()} {exc.message()}")
            with lock:
                outcomes.append(result)

    def grpc_loop(index: int) -> None:
        client = tritonclient_grpc.InferenceServerClient(app.grpc)
        try:
            for i in range(40):
                if stop.is_set():
                    return
                x = float(index * 1000 + i)
                try:
                    r = grpc_infer(client, "whoami", x, 0.3)
                    ok = r.as_numpy("OUT").tolist() == expected(x, 0.3, 1)
                    result = ("ok", "") if ok else ("wrong", str(r.as_numpy("OUT")))
                except InferenceServerException as exc:
                    result = ("grpc-error", f"{exc.status()} {exc.message()}")
                with lock:
                    outcomes.append(result)
        finally:
            client.close()

    threads = [threading.Thread(target=http_loop, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=grpc_loop, args=(k + 3,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(120)
    failures = [o for o in outcomes if o[0] != "ok"]
    assert not [o for o in outcomes if o[0] == "wrong"]
    # only requests in flight on the killed replica fail, each with a retryable code
    assert 1 <= len(failures) <= 6, failures
    for kind, text in failures:
        if kind == "http-error":
            assert text == f"503 {REPLICA_LOST}", text
        else:
            assert text == f"StatusCode.UNAVAILABLE {REPLICA_LOST}", text
    # and the next requests succeed (a retry through the proxy works)
    assert http_infer(app.http, "whoami", 7.0).as_numpy("OUT").tolist() == expected(7, 0, 1)
    # Ray starts a replacement, which replays the control calls made before it existed
    replaced = app.wait_for(
        lambda r: len(r) == 2 and victim["pid"] not in {x["pid"] for x in r}
        and all(x["ready"] for x in r), 90, "a replacement replica")
    assert all(r["models"] == ["extra", "whoami"] for r in replaced), replaced


def test_autoscaling_on_queue_time_scales_up_under_a_burst_and_down_after(app):
    app.deploy("--num-replicas", "auto", "--min-replicas", "1", "--max-replicas", "3",
               "--autoscale-on", "queue_time", "--target-queue-time-us", "50000",
               "--upscale-delay-s", "0", "--downscale-delay-s", "2",
               "--look-back-period-s", "2", "--model-control-mode=explicit",
               "--load-model=whoami")
    app.wait_for(lambda r: len(r) == 1, 90, "one replica when idle")
    stop = threading.Event()
    errors: list[BaseException] = []

    def burst(index: int) -> None:
        for i in range(200):  # bounded: at most 200 requests or until told to stop
            if stop.is_set():
                return
            x = float(index * 1000 + i)
            try:
                r = http_infer(app.http, "whoami", x, 0.1)
                assert r.as_numpy("OUT").tolist() == expected(x, 0.1, 1)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    try:
        # six waiting on one instance: ~0.5 s of queue per request, ten times the target
        app.wait_for(lambda r: len(r) >= 2, 60, "a scale-up under the burst")
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    app.wait_for(lambda r: len(r) == 1, 90, "the scale-down after the burst")


def test_a_repository_in_s3_serves_on_every_replica(app, tmp_path):
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1")
        client.create_bucket(Bucket="models")
        local = tmp_path / "src"
        _model(local, "s3model", 7.0)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                client.put_object(Bucket="models", Key=f"repo/{path.relative_to(local)}",
                                  Body=path.read_bytes())
        url = f"s3://127.0.0.1:{port}/models/repo"
        app.deploy("--num-replicas", "2", "--env", "AWS_ACCESS_KEY_ID=testing",
                   "--env", "AWS_SECRET_ACCESS_KEY=testing",
                   "--env", "AWS_DEFAULT_REGION=us-east-1", repository=url)
        replicas = app.wait_for(
            lambda r: len(r) == 2 and all(x["models"] == ["s3model"] for x in r), 90,
            "two replicas serving the S3 repository")
        grpc_client = tritonclient_grpc.InferenceServerClient(app.grpc)
        seen = set()
        for i in range(20):
            r = grpc_infer(grpc_client, "s3model", float(i))
            assert r.as_numpy("OUT").tolist() == expected(i, 0, 7)
            seen.add(int(r.as_numpy("PID")[0]))
        grpc_client.close()
        assert seen <= {r["pid"] for r in replicas}
    finally:
        s3.stop()
