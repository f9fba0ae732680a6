"""Kubernetes deployment: the Helm chart rendered by Helm itself, every manifest checked
against the Kubernetes schemas, the KServe runtime, the image's entrypoint and health
check, and the autoscaling metric computed from a real naiad's /metrics under a known load.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from naiad.cli import options_from_args
from tests._mgmt import config_text, model_py
from tests.conftest import NaiadProcess, write_model

helm = pytest.importorskip("helm_python")
kv = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "naiad"
KSERVE = ROOT / "deploy" / "kserve"
K8S = kv.latest_version()

# the prometheus-adapter rule's query, with the adapter's placeholders filled for one pod
OUR_QUERY = ("sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m]))"
             " / clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_request_success"
             "{<<.LabelMatchers>>}[1m])), 1e-9)")

VALUE_SETS = {
    "pvc": {"modelRepository": {"pvc": {"claimName": "models"}}},
    "s3-autoscaled": {
        "modelRepository": {"url": "s3://bucket/models", "credentialsSecret": "s3-creds"},
        "server": {"extraArgs": ["--model-control-mode=explicit", "--load-model=add_sub"],
                   "env": [{"name": "OMP_NUM_THREADS", "value": "2"}]},
        "autoscaling": {"enabled": True, "maxReplicas": 8, "targetQueueTimeUs": 2000},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "nodeSelector": {"pool": "cpu"},
    },
}


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    try:
        out = chart.render(values, name="demo", namespace="serving")
    finally:
        chart.close()
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith(".yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def validate_core(doc: dict) -> None:
    """Against the Kubernetes OpenAPI schemas (strict: unknown fields are errors)."""
    kv.validate(doc, K8S, strict=True)


def validate_containers(containers: list[dict]) -> None:
    """Containers embedded in a custom resource, checked as a Pod's."""
    validate_core({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                   "spec": {"containers": containers}})


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_renders_with_helm_and_validates(name):
    docs = render(VALUE_SETS[name])
    kinds = sorted(d["kind"] for d in docs)
    if name == "pvc":
        assert kinds == ["Deployment", "Service"]
    else:
        assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service", "ServiceMonitor"]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: its pod-facing parts are checked below
            continue
        validate_core(doc)
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # the arguments are naiad's (tritonserver's) flags
    options = options_from_args(container["args"])
    assert options.http_port == 8000 and options.grpc_port == 8001 and options.metrics_port == 8002
    assert [p["containerPort"] for p in container["ports"]] == [8000, 8001, 8002]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # loading time
    assert pod["securityContext"]["runAsNonRoot"] is True
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > options.exit_timeout_secs + sleep
    service = by_kind(docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == \
        {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    if name == "pvc":
        assert options.model_repositories == ["/models"]
        assert deployment["spec"]["replicas"] == 1
        volume = next(v for v in pod["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        return
    assert options.model_repositories == ["s3://bucket/models"]
    assert options.model_control_mode == "explicit" and options.load_models == ["add_sub"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "NAIAD_REPOSITORY_CACHE", "value": "/cache"} in container["env"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "naiad_queue_time_per_request_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2000"}
    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    # it selects the Service (by a subset of its labels)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics",
                                             "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "kps"


def test_helm_lint_is_clean_and_unsafe_values_are_refused():
    report = helm.lint(str(CHART), VALUE_SETS["pvc"], strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    chart = helm.Chart.load(str(CHART))
    try:
        with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
            chart.render({**VALUE_SETS["pvc"], "terminationGracePeriodSeconds": 30},
                         name="demo")
        with pytest.raises(helm.HelmRenderError, match="claimName or modelRepository.url"):
            chart.render({}, name="demo")
    finally:
        chart.close()


def test_kserve_runtime_and_inference_service():
    runtime = yaml.safe_load((KSERVE / "cluster-serving-runtime.yaml").read_text())
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ClusterServingRuntime"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert formats == {"triton", "onnx", "pytorch", "openvino", "python"}
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    containers = runtime["spec"]["containers"]
    validate_containers(containers)
    (container,) = containers
    assert container["name"] == "kserve-container"  # the name KServe merges into
    options = options_from_args(container["args"])
    assert options.model_repositories == ["/mnt/models"]  # where KServe puts storageUri
    assert (options.http_port, options.grpc_port) == (8080, 9000)  # KServe's ports
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(
        options.metrics_port)

    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    validate_containers([{"name": "kserve-container", "image": "x",
                          "resources": model["resources"]}])
    validate_core({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": service["metadata"] | {"name": service["metadata"]["name"]}})


# -- the image, outside a container ---------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, argument) pairs of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_naiad_as_a_non_root_user_with_a_health_check(tmp_path):
    steps = _dockerfile()
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    assert all("slim" in arg for w, arg in steps if w == "FROM")
    user = [arg for w, arg in final if w == "USER"]
    assert user and not user[-1].startswith(("0", "root"))
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["naiad"]
    assert any("NAIAD_EXTRAS" in arg for w, arg in steps if w == "ARG")
    assert dict(final)["EXPOSE"].split() == ["8000", "8001", "8002"]
    # the build context holds everything a wheel needs (what the install step builds)
    ignore = (ROOT / ".dockerignore").read_text().split()
    context = [p[1:] for p in ignore if p.startswith("!")]
    for w, arg in steps:
        if w == "COPY" and "--from" not in arg:
            for source in arg.split()[:-1]:
                assert source in context, source
    build = tmp_path / "context"
    build.mkdir()
    for item in context:
        src = ROOT / item
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(build / item)], check=True)
        else:
            (build / item).write_bytes(src.read_bytes())
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "-q", "-w", str(tmp_path / "dist"), str(build)],
                           capture_output=True, text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stderr
    assert list((tmp_path / "dist").glob("naiad-*.whl"))


def test_dockerfile_entrypoint_and_health_check_against_a_running_naiad(tmp_path):
    steps = dict(_dockerfile()[-12:])
    entry = json.loads(steps["ENTRYPOINT"])
    cmd = json.loads(steps["CMD"])
    health = steps["HEALTHCHECK"].split(" CMD ", 1)[1]
    health_argv = json.loads(health)
    repo = tmp_path / "models"
    write_model(repo, "m", config_text("m"), {"model.py": model_py(offset=1.0)})
    # the image's command line with its repository mounted at /models: here, tmp_path
    args = [a.replace("/models", str(repo)) for a in entry[1:] + cmd]
    assert cmd == ["--model-repository=/models"]
    with NaiadProcess([], *args) as server:
        env = dict(os.environ, NAIAD_HEALTH_PORT=str(server.http_port))
        check = subprocess.run([sys.executable] + health_argv[1:], env=env, timeout=30)
        assert check.returncode == 0
        body = urllib.request.urlopen(f"{server.base}/v2/models/m").read()
        assert json.loads(body)["name"] == "m"
    # a server that is gone fails the check
    check = subprocess.run([sys.executable] + health_argv[1:], env=env, timeout=30,
                           capture_output=True)
    assert check.returncode != 0, shlex.join(health_argv)


# -- the autoscaling metric against a real scrape ----------------------------------------------


def _series(text: str, name: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (name, name + "_total"):
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_hpa_queue_time_formula_against_a_scrape_under_a_known_load(tmp_path):
    adapter = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["metricsQuery"] == OUR_QUERY
    assert rule["name"]["as"] == "naiad_queue_time_per_request_us"
    repo = tmp_path / "models"
    # one busy model with one instance, two idle ones loaded beside it
    for name in ("busy", "idle1", "idle2"):
        write_model(repo, name, config_text(name), {"model.py": model_py()})
    with NaiadProcess(repo) as server:
        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics"
                                          ).read().decode()

        sent: list[float] = []

        def infer(x: float, sleep: float) -> None:
            body = json.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [2],
                                           "data": [x, sleep]}]}).encode()
            sent.append(time.monotonic())
            urllib.request.urlopen(urllib.request.Request(
                f"{server.base}/v2/models/busy/infer", data=body), timeout=60).read()

        before = scrape()
        # the known load: 4 requests at once, 0.3 s each, on one instance. They run one
        # after the other, so they wait at least 0, 0.3, 0.6 and 0.9 s: 0.45 s on average
        threads = [threading.Thread(target=infer, args=(float(i), 0.3)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        after = scrape()
        stats = json.loads(urllib.request.urlopen(f"{server.base}/v2/models/busy/stats").read())
    queue = stats["model_stats"][0]["inference_stats"]["queue"]
    assert queue["count"] == 4
    true_mean_us = queue["ns"] / queue["count"] / 1000.0
    # waits can only be longer than the schedule, less how late the threads sent theirs
    late_us = sum(t - min(sent) for t in sent) / len(sent) * 1e6
    assert true_mean_us >= 0.9 * (450_000 - late_us)
    q0, q1 = (_series(t, "nv_inference_queue_duration_us") for t in (before, after))
    s0, s1 = (_series(t, "nv_inference_request_success") for t in (before, after))
    assert len(q1) == 3  # one series per loaded model
    dq = {k: q1[k] - q0.get(k, 0.0) for k in q1}
    ds = {k: s1[k] - s0.get(k, 0.0) for k in s1}
    # this chart's rule: sum over the pod's models, then one division (rate()'s window cancels)
    ours = sum(dq.values()) / max(sum(ds.values()), 1e-9)
    assert abs(ours - true_mean_us) <= 1.0  # microsecond counters vs nanosecond stats
    # Triton's k8s-onprem rule: avg over models of delta(queue) / (1 + delta(success))
    theirs = sum(dq[k] / (1 + ds[k]) for k in dq) / len(dq)
    assert theirs < 0.3 * true_mean_us  # about 1/3 (three models) x 4/5 (the +1)
