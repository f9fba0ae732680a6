"""naiad.ray's parts that need no cluster: settings, aggregation, the scaling policy,
the proxies' error translation, the Serve config file, and the command line's checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import yaml

from naiad.ray import aggregate, autoscaling, proxy
from naiad.ray.settings import AppSettings, SettingsError, startup_cpu_instances
from tests.conftest import write_model

ROOT = Path(__file__).resolve().parent.parent
# Ray's own pydantic models warn on import: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- settings --------------------------------------------------------------------------------


def _repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "two", 'name: "two"\nbackend: "python"\n'
                'instance_group [ { kind: KIND_CPU count: 2 } ]\n', {"model.py": ""})
    write_model(tmp_path, "three", 'name: "three"\nbackend: "python"\n'
                'instance_group [ { kind: KIND_CPU count: 1 }, { kind: KIND_CPU count: 2 } ]\n',
                {"model.py": ""})
    write_model(tmp_path, "default", 'name: "default"\nbackend: "python"\n', {"model.py": ""})
    write_model(tmp_path, "ens", 'name: "ens"\nplatform: "ensemble"\n', {})
    return tmp_path


def test_replicas_ask_for_the_cpu_instances_their_startup_models_run(tmp_path):
    repo = _repo(tmp_path)
    # every model loads at startup: 2 + 3 + 1 (Triton's default group), the ensemble none
    assert AppSettings.from_args({"model_repository": str(repo)}).replica_cpus() == 6.0
    explicit = AppSettings.from_args(model_repository=str(repo), server_args=[
        "--model-control-mode=explicit", "--load-model=two"])
    assert explicit.replica_cpus() == 2.0
    # explicit mode with nothing loaded at startup, or a remote repository: 1
    nothing = AppSettings.from_args(model_repository=str(repo),
                                    server_args="--model-control-mode=explicit")
    assert nothing.replica_cpus() == 1.0
    remote = AppSettings.from_args(model_repository="s3://bucket/models")
    assert startup_cpu_instances(remote.server_options()) == 0
    assert remote.replica_cpus() == 1.0
    assert AppSettings.from_args(model_repository=str(repo), num_cpus=0.5).replica_cpus() == 0.5


def test_settings_are_checked_before_anything_is_deployed(tmp_path):
    with pytest.raises(SettingsError, match="model_repository is required"):
        AppSettings.from_args({})
    with pytest.raises(SettingsError, match="unknown naiad Ray application setting"):
        AppSettings.from_args(model_repository="/m", replicas=2)
    with pytest.raises(SettingsError, match="num_replicas"):
        AppSettings.from_args(model_repository="/m", num_replicas="many")
    with pytest.raises(SettingsError, match="autoscale_on"):
        AppSettings.from_args(model_repository="/m", autoscale_on="cpu")
    with pytest.raises(SettingsError, match="server_args: .*model-control-mode"):
        AppSettings.from_args(model_repository="/m", server_args=["--model-control-mode=x"])
    with pytest.raises(SettingsError, match="--load-model"):
        AppSettings.from_args(model_repository="/m", server_args=["--load-model=a"])
    options = AppSettings.from_args(model_repository="/m", server_args=[
        "--exit-timeout-secs=7"]).server_options()
    assert options.exit_timeout_secs == 7
    assert not options.allow_http and not options.allow_grpc  # replicas bind no sockets


def test_autoscaling_configs():
    fixed = AppSettings.from_args(model_repository="/m", num_replicas=3)
    assert fixed.autoscaling_config_dict() is None
    default = AppSettings.from_args(model_repository="/m", num_replicas="auto", max_replicas=6)
    assert default.autoscaling_config_dict() == {
        "min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 2.0}
    queue = AppSettings.from_args(model_repository="/m", num_replicas="auto",
                                  autoscale_on="queue_time", target_queue_time_us=800,
                                  autoscaling_config={"downscale_delay_s": 30})
    config = queue.autoscaling_config_dict()
    assert config["policy"] == {"policy_function": "naiad.ray.autoscaling:QueueTimePolicy",
                                "policy_kwargs": {"target_queue_time_us": 800.0}}
    assert config["downscale_delay_s"] == 30
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig(**config)  # Serve accepts it


def test_serve_config_file_parses_and_builds_the_application():
    from ray.serve.schema import ServeDeploySchema

    import naiad.ray

    data = yaml.safe_load((ROOT / "deploy" / "ray" / "serve-config.yaml").read_text())
    schema = ServeDeploySchema(**data)
    assert schema.grpc_options.grpc_servicer_functions == [proxy.GRPC_SERVICER_FUNCTION]
    (app,) = schema.applications
    assert app.import_path == "naiad.ray:app_builder"
    built = naiad.ray.app_builder(app.args)
    deployment = built._bound_deployment
    assert deployment.name == "naiad"
    assert deployment.ray_actor_options["num_cpus"] == 2.0
    policy = deployment._deployment_config.autoscaling_config.policy
    assert policy.policy_function == "naiad.ray.autoscaling:QueueTimePolicy"


# -- aggregation --------------------------------------------------------------------------------


def _entry(name, version, count, queue_ns, batch=None, last=0):
    return {"name": name, "version": version, "last_inference": last,
            "inference_count": count, "execution_count": count,
            "inference_stats": {"success": {"count": count, "ns": 10 * count},
                                "queue": {"count": count, "ns": queue_ns}},
            "response_stats": {}, "batch_stats": batch or [], "memory_usage": []}


def test_statistics_add_up_over_replicas():
    a = {"model_stats": [_entry("m", "1", 3, 300, [{"batch_size": 1, "compute_infer":
                                                   {"count": 3, "ns": 30}}], last=5),
                         _entry("n", "1", 1, 7)]}
    b = {"model_stats": [_entry("m", "1", 2, 200, [{"batch_size": 1, "compute_infer":
                                                   {"count": 2, "ns": 20}},
                                                  {"batch_size": 4, "compute_infer":
                                                   {"count": 1, "ns": 9}}], last=9)]}
    merged = aggregate.merge_statistics([a, b])["model_stats"]
    m = merged[0]
    assert (m["name"], m["inference_count"], m["last_inference"]) == ("m", 5, 9)
    assert m["inference_stats"]["queue"] == {"count": 5, "ns": 500}
    assert m["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 5, "ns": 50}},
        {"batch_size": 4, "compute_infer": {"count": 1, "ns": 9}}]
    assert merged[1]["name"] == "n" and merged[1]["inference_count"] == 1


PAGE = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="m",version="1"}} {n}
# HELP nv_inference_queue_summary_us Summary of queue time
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us{{model="m",version="1",quantile="0.5"}} 3
nv_inference_queue_summary_us_count{{model="m",version="1"}} {n}
nv_inference_queue_summary_us_sum{{model="m",version="1"}} 30
# HELP nv_cpu_utilization CPU utilization rate
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization {cpu}
"""


def test_metrics_summed_and_labelled_per_replica():
    pages = {"r1": PAGE.format(n=4, cpu=0.2), "r2": PAGE.format(n=6, cpu=0.4)}
    total = aggregate.sum_replicas(pages).decode()
    assert 'nv_inference_request_success{model="m",version="1"} 10\n' in total
    assert "quantile" not in total  # quantiles do not add up
    assert 'nv_inference_queue_summary_us_count{model="m",version="1"} 10' in total
    assert "nv_cpu_utilization 0.3" in total[total.index("# TYPE nv_cpu"):]
    labelled = aggregate.label_replicas(pages).decode()
    assert 'nv_inference_request_success{model="m",version="1",replica="r1"} 4' in labelled
    assert 'nv_inference_request_success{model="m",version="1",replica="r2"} 6' in labelled
    from prometheus_client.parser import text_string_to_metric_families

    assert len(list(text_string_to_metric_families(labelled))) == 3  # still valid text


def test_queue_time_per_request_is_weighted_by_traffic():
    before = {"model_stats": [_entry("busy", "1", 10, 1_000_000), _entry("idle", "1", 0, 0)]}
    after = {"model_stats": [_entry("busy", "1", 14, 1_000_000 + 4 * 300_000_000),
                             _entry("idle", "1", 0, 0)]}
    assert aggregate.queue_us_per_request(before, after) == 300_000.0
    assert aggregate.queue_us_per_request(after, after) is None


# -- the queue-time policy ----------------------------------------------------------------------


def test_queue_time_policy_scales_like_an_hpa():
    assert autoscaling.observed_queue_us({"a": 100.0, "b": 900.0}, {"a": 9, "b": 1}) == 180.0
    assert autoscaling.observed_queue_us({"a": 5.0}, {"a": 0}) is None
    assert autoscaling.desired_replicas(2, 10_000, 5_000) == 4
    assert autoscaling.desired_replicas(2, 5_200, 5_000) == 2  # within the 10% band
    assert autoscaling.desired_replicas(4, 1_000, 5_000) == 1
    assert autoscaling.desired_replicas(3, None, 5_000) == 2  # idle: step down
    policy = autoscaling.QueueTimePolicy(target_queue_time_us=1000)
    ctx = SimpleNamespace(current_num_replicas=1, policy_state={},
                          aggregated_metrics={autoscaling.QUEUE_US: {"r1": 3500.0},
                                              autoscaling.REQUESTS: {"r1": 20.0}})
    desired, state = policy(ctx)
    assert desired == 4 and state["naiad_observed_queue_us"] == 3500.0


# -- the proxies' additions --------------------------------------------------------------------


class _Ctx:
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def set_code(self, code):
        self._code = code

    def set_details(self, details):
        self._details = details


class _FakeServer:
    def __init__(self):
        self.handlers = []

    def add_generic_rpc_handlers(self, handlers):
        self.handlers.extend(handlers)


def _call(service, method, context, request=b""):
    details = SimpleNamespace(method=method, invocation_metadata=())
    handler = service.service(details)
    return asyncio.run(handler.unary_unary(request, context))


def test_grpc_services_register_raw_bytes_and_lost_replicas_answer_unavailable():
    server = _FakeServer()
    proxy.add_inference_services(object(), server)
    inference, health = server.handlers
    assert inference.service_name() == "inference.GRPCInferenceService"
    assert health.service_name() == "grpc.health.v1.Health"
    handler = inference._method_handlers["/inference.GRPCInferenceService/ModelInfer"]
    assert handler.request_deserializer is None and handler.response_serializer is None
    stream = inference._method_handlers["/inference.GRPCInferenceService/ModelStreamInfer"]
    assert stream.request_streaming and stream.response_streaming

    # what Ray's gRPC proxy does: replace each handler with its router, then serve
    async def died(request, context):
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("ray.exceptions.ActorDiedError: The actor died unexpectedly")
        return b""

    async def model_error(request, context):
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("Failed to execute: division by zero")
        return b""

    method = "/inference.GRPCInferenceService/ModelInfer"
    inference._method_handlers[method] = handler._replace(unary_unary=died)
    ctx = _Ctx(None, "")
    _call(inference, method, ctx)
    assert (ctx.code(), ctx.details()) == (grpc.StatusCode.UNAVAILABLE, proxy.REPLICA_LOST)
    inference._method_handlers[method] = handler._replace(unary_unary=model_error)
    ctx = _Ctx(None, "")
    _call(inference, method, ctx)
    assert ctx.code() == grpc.StatusCode.INTERNAL  # a model's own error is left alone
    assert inference.service(SimpleNamespace(method="/x.Y/Z")) is None


def test_http_middleware_answers_503_when_the_proxy_sent_nothing():
    async def silent(scope, receive, send):  # Ray's proxy after losing the replica
        return None

    async def answers(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def run(app):
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(proxy.ReplicaLostMiddleware(app)({"type": "http"}, None, send))
        return sent

    sent = run(silent)
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"]) == {"error": proxy.REPLICA_LOST}
    assert run(answers)[0]["status"] == 500  # an answer that was sent stays as it is
    (middleware,) = proxy.http_middlewares()
    assert middleware.cls is proxy.ReplicaLostMiddleware


# -- the command line ---------------------------------------------------------------------------


def test_naiad_ray_refuses_bad_flags_before_connecting(capsys):
    from naiad.cli import main

    assert main(["ray", "--num-replicas", "0", "--model-repository", "/m"]) == 2
    assert "num_replicas must be at least 1" in capsys.readouterr().err
    assert main(["ray", "--model-repository", "/m", "--model-control-mode=sometimes"]) == 2
    assert "model-control-mode" in capsys.readouterr().err
    assert main(["ray", "--env", "NOEQUALS", "--model-repository", "/m"]) == 2
    assert "--env expects KEY=VALUE" in capsys.readouterr().err
