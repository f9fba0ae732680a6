#!/usr/bin/env python3
"""naiad through Ray Serve's proxies (1 and 2 replicas) against naiad served directly.

    .venv/bin/python benchmarks/ray_scaleout.py                 # add_sub and MiniLM, ~20 min
    .venv/bin/python benchmarks/ray_scaleout.py --only add_sub --duration 5

Both setups run on the same core: naiad directly (``taskset -c 0``) and a
one-node Ray cluster whose every process (GCS, raylet, Serve controller and
proxy, replicas) runs under ``taskset -c 0``, first with Serve's Python
proxies, then in Serve's high-throughput mode (HAProxy in front of replicas
that serve HTTP and gRPC directly); the load generators (wrk for
HTTP, h2load for gRPC, the harness's binary v2 requests) run on core 1.
Setups are interleaved per concurrency level. Besides infer/s and latency
percentiles it records the server side's CPU time per request: naiad's
process tree, or every process of the Ray cluster.

Writes ``benchmarks/results/ray-YYYYMMDDTHHMMSS.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from harness import loadgen, models  # noqa: E402
from harness.servers import NaiadServer  # noqa: E402
from harness.v2 import http_get, http_infer  # noqa: E402

from tests.ray_cluster import RayCluster, free_port  # noqa: E402

WORK = HERE / ".work"
RESULTS = HERE / "results"


def cpu_seconds(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


class RayApp:
    """The Ray side as the harness's load generators see a server."""

    def __init__(self, cluster: RayCluster, repo: Path, name: str):
        self.cluster = cluster
        self.repo = repo
        self.name = name
        self.http_port = free_port()
        self.grpc_port = free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def deploy(self, replicas: int) -> None:
        r = self.cluster.run(
            sys.executable, "-m", "naiad", "ray", "--address", self.cluster.address,
            "--model-repository", str(self.repo), "--num-replicas", str(replicas),
            "--num-cpus", "1", "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port), "--proxy-location", "HeadOnly", timeout=600)
        if r.returncode != 0:
            raise RuntimeError(r.stdout + r.stderr + self.cluster.logs())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # every replica up and ready
            try:
                body = json.loads(http_get(self.base_url + "/v2/ray/replicas")[1])
                states = body["replicas"]
                if len(states) == replicas and all(s["ready"] for s in states):
                    return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{replicas} replicas did not become ready")

    def pids(self) -> set[int]:
        return set().union(*(n.pids() for n in self.cluster.nodes))


def measure(tool, server, req, concurrency, duration, warmup, batch, pids) -> dict:
    tool.run(server, req, concurrency, warmup, batch)  # discarded
    before = cpu_seconds(pids())
    m = tool.run(server, req, concurrency, duration, batch)
    used = cpu_seconds(pids()) - before
    row = m.as_dict()
    row["server"] = server.name
    row["server_cpu_us_per_request"] = round(used / max(m.ok, 1) * 1e6, 1)
    print(f"[ray-bench] {server.name:>8} {tool.name:>4} c={concurrency:<3} "
          f"{m.infer_per_s:9.1f} infer/s  p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  "
          f"cpu {row['server_cpu_us_per_request']:8.1f} us/req  errors {m.errors}", flush=True)
    return row


def scenario(name: str, repo: Path, req, check, batch: int, args, transports) -> dict:
    naiad_exe, why = NaiadServer.find_exe(ROOT)
    if not naiad_exe:
        raise SystemExit(why)
    pin = None if args.no_pin else "0"
    direct = NaiadServer(repo, pin, WORK / "logs", naiad_exe, name="direct")
    direct.start([req.model])
    check(http_infer(direct.base_url, req))
    rows = []
    cleanup: list = []
    try:
        for ingress in args.ingress:
            env = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
            if ingress == "haproxy":
                env.update(haproxy_env())
            cleanup.append(env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE"))
            with RayCluster([2], env=env, pin=pin) as cluster:
                app = RayApp(cluster, repo, "ray-1")
                for replicas in (1, 2):
                    app.deploy(replicas)
                    app.name = f"{'ray' if ingress == 'proxy' else 'hap'}-{replicas}"
                    check(http_infer(app.base_url, req))
                    for c in args.concurrency:
                        for tool in transports:
                            for server, pids in ((direct, lambda: {direct.pid} | set(
                                    loadgen_descendants(direct.pid))), (app, app.pids)):
                                rows.append(measure(tool, server, req, c, args.duration,
                                                    args.warmup, batch, pids))
    finally:
        direct.stop()
        for path in cleanup:
            if path:
                shutil.rmtree(path, ignore_errors=True)
    return {"rows": rows}


def haproxy_env() -> dict:
    """Ray Serve's high-throughput mode: HAProxy in front of replicas serving directly."""
    # HAProxy's admin socket path must stay under 98 characters
    state = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state")}


def loadgen_descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def markdown(result: dict) -> str:
    pinning = ("Server side pinned to core 0, load generators to core 1" if result["pinned"]
               else "Not pinned: servers and load generators share both cores")
    lines = [f"# naiad through Ray Serve vs naiad directly ({result['started']})", "",
             f"Machine: {result['machine']}. {pinning}; the machine is shared with other "
             "work, so compare rows of this run "
             "only. `ray-N`: Serve's Python HTTP/gRPC proxies in front of N naiad replicas; "
             "`hap-N`: Serve's high-throughput mode (RAY_SERVE_ENABLE_HA_PROXY=1, "
             "RAY_SERVE_THROUGHPUT_OPTIMIZED=1: HAProxy in front of replicas that serve "
             "directly); the whole Ray cluster on the server side. `direct`: one naiad process. "
             "Server CPU: every process of the server side (for Ray, the whole cluster, "
             "idle background work included) over the requests answered.", ""]
    for name, sc in result["scenarios"].items():
        lines += [f"## {name}", "",
                  "| server | transport | concurrency | infer/s | p50 ms | p99 ms | "
                  "server CPU µs/request | errors |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sc["rows"]:
            lines.append(f"| {r['server']} | {r['transport']} | {r['concurrency']} | "
                         f"{r['infer_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['server_cpu_us_per_request']:.0f} | {r['errors']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="add_sub,minilm")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--transport", default="http,grpc")
    ap.add_argument("--ingress", default="proxy,haproxy",
                    help="Serve's Python proxies, and/or its HAProxy ingress (direct to replicas)")
    ap.add_argument("--no-pin", action="store_true",
                    help="no taskset: servers and load generators share every core")
    args = ap.parse_args()
    args.ingress = args.ingress.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    loadgen.ensure_tools()
    client = None if args.no_pin else "1"
    tools = {"http": loadgen.HttpWrk(client), "grpc": loadgen.GrpcH2load(client)}
    transports = [tools[t] for t in args.transport.split(",")]
    started = dt.datetime.now(dt.timezone.utc)
    result = {"started": started.isoformat(timespec="seconds"),
              "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
                         "at start",
              "pinned": not args.no_pin,
              "scenarios": {}}
    only = args.only.split(",")
    if "add_sub" in only:
        repo = models.write_add_sub_repo(WORK / "repo_add_sub")
        result["scenarios"]["add_sub"] = scenario(
            "add_sub", repo, models.add_sub_request(), models.check_add_sub, 1, args,
            transports)
    if "minilm" in only:
        repo = WORK / "repo_minilm"
        if not (repo / "minilm" / "1" / "model.onnx").exists():
            subprocess.run([sys.executable, str(HERE / "export_minilm.py")], check=True)

        def check(outputs):
            (t,) = outputs.values()
            assert list(t.shape) == [models.MINILM_BATCH, 384]

        result["scenarios"]["minilm"] = scenario(
            "minilm", repo, models.minilm_request(), check, models.MINILM_BATCH, args,
            transports)
    result["load_average_end"] = os.getloadavg()[0]
    for tool in tools.values():
        tool.close()
    RESULTS.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"ray-{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"ray-{stamp}.md").write_text(markdown(result))
    print(f"[ray-bench] wrote {RESULTS}/ray-{stamp}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
