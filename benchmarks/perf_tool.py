#!/usr/bin/env python3
"""``naiad perf`` checked against the benchmark's load generators, the servers' own
statistics, and its ceiling. One command; results in benchmarks/results/.

    .venv/bin/python benchmarks/perf_tool.py [--duration S] [--concurrency 1,16,64]
                                             [--only ceiling,harness,reference]

* ceiling: the trivial HTTP and gRPC servers (harness/trivial.py, canned
  answers) on CPU 0, naiad perf on CPU 1: its throughput and client CPU per
  request, i.e. how many requests a second one client core can drive.
* harness: naiad serving add_sub on CPU 0; at each level, wrk (HTTP) or h2load
  (gRPC) and naiad perf take turns on CPU 1 for the same duration: infer/s and
  latencies side by side.
* reference: the reference Triton 2.51 serving add_sub on CPU 0 (and naiad, in
  turn): naiad perf's client throughput against the server's own statistics
  (successful requests counted by the statistics extension over the same
  windows).

Every naiad perf run goes through the command's own code (``naiad.tools.perf``)
in a child process pinned with taskset, and reports what it measured as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import loadgen, models
from harness.servers import NaiadServer, ReferenceTriton, ServerUnavailable, free_ports
from harness.v2 import http_infer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
LOGS = WORK / "logs"
RESULTS = HERE / "results"
PY = str(ROOT / ".venv" / "bin" / "python")
REFERENCE_SCRIPT = Path(os.environ.get("NAIAD_REFERENCE_SCRIPT") or
                        ROOT.parent / "shared" / "reference" / "triton.sh")

CHILD = r"""
import io, json, sys
from naiad.tools import perf
o = perf.parse(sys.argv[1:])
run = perf.run(o, out=io.StringIO(), err=io.StringIO())
out = []
for s in run.statuses:
    c, srv = s.client, s.server
    secs = c.duration_ns / 1e9
    out.append({"level": s.level, "infer_per_s": c.infer_per_sec,
                "p50_ms": c.percentile_latency_ns[50] / 1e6,
                "p99_ms": c.percentile_latency_ns[99] / 1e6,
                "avg_ms": c.avg_latency_ns / 1e6, "requests": c.request_count,
                "server_success": srv.success_count,
                "server_infer_per_s": srv.success_count / secs if secs else 0.0,
                "window_s": secs, "client_cores": max(s.client_cores or [0.0]),
                "client_us_per_request": (max(s.client_cores or [0.0]) * secs * 1e6 /
                                          c.request_count) if c.request_count else None})
print("NAIAD_PERF_JSON " + json.dumps(out))
"""


def log(msg: str) -> None:
    print(f"[perf-tool {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def naiad_perf(args: list[str], cpus: str | None) -> list[dict]:
    cmd = (["taskset", "-c", cpus] if cpus else []) + [PY, "-c", CHILD, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("NAIAD_PERF_JSON ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"naiad perf failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return json.loads(line.split(" ", 1)[1])


def perf_args(url: str, protocol: str, c: int, duration: float) -> list[str]:
    window = max(500, int(duration * 1000 / 3 / 1.2))  # three windows ~ the duration
    return ["-m", "add_sub", "-u", url, "-i", protocol, "--concurrency-range", str(c),
            "-p", str(window), "-s", "50", "-r", "10", "--no-progress"]


def scenario_ceiling(a) -> dict:
    out = {"description": "naiad perf against trivial servers (canned answers): client CPU "
                          "per request and the requests/s one client core drives",
           "rows": []}
    procs = {}
    try:
        for kind in ("http", "grpc"):
            (port,) = free_ports(1)
            procs[kind] = (subprocess.Popen(
                (["taskset", "-c", a.server_cpus] if a.server_cpus else []) +
                [PY, "-m", "harness.trivial", kind, str(port)], cwd=str(HERE),
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT), port)
        time.sleep(2.0)
        for c in a.concurrency:
            for kind, (_, port) in procs.items():
                log(f"ceiling {kind} c={c}")
                (row,) = naiad_perf(perf_args(f"127.0.0.1:{port}", kind, c, a.duration),
                                    a.client_cpus)
                us = row["client_us_per_request"]
                out["rows"].append({"transport": kind, "concurrency": c, **row,
                                    "ceiling_per_core": round(1e6 / us) if us else None})
    finally:
        for p, _ in procs.values():
            p.terminate()
            p.wait(timeout=10)
    return out


def scenario_harness(a) -> dict:
    repo = models.write_add_sub_repo(WORK / "repo_add_sub")
    req = models.add_sub_request()
    exe, why = NaiadServer.find_exe(ROOT)
    if not exe:
        return {"error": why}
    server = NaiadServer(repo, a.server_cpus, LOGS, exe)
    out = {"description": "naiad serving add_sub: naiad perf and the benchmark's own load "
                          "generator (wrk for HTTP, h2load for gRPC) in turns, same level, "
                          "same duration, both on the client CPU", "rows": []}
    loadgen.ensure_tools()
    gens = {"http": loadgen.HttpWrk(a.client_cpus), "grpc": loadgen.GrpcH2load(a.client_cpus)}
    try:
        server.start(["add_sub"])
        models.check_add_sub(http_infer(server.base_url, req))
        for tr in ("http", "grpc"):
            url = f"127.0.0.1:{server.http_port if tr == 'http' else server.grpc_port}"
            for c in a.concurrency:
                log(f"harness {tr} c={c}")
                tools, perfs = [], []
                for _ in range(a.rounds):  # in turns, so noise hits both alike
                    tools.append(gens[tr].run(server, req, c, int(a.duration)))
                    perfs.append(naiad_perf(perf_args(url, tr, c, a.duration),
                                            a.client_cpus)[0])
                m = sorted(tools, key=lambda x: x.infer_per_s)[len(tools) // 2]
                p = sorted(perfs, key=lambda x: x["infer_per_s"])[len(perfs) // 2]
                out["rows"].append({
                    "transport": tr, "concurrency": c, "tool": m.tool,
                    "rounds": a.rounds,
                    "tool_all": [t.infer_per_s for t in tools],
                    "perf_all": [round(x["infer_per_s"], 1) for x in perfs],
                    "tool_infer_per_s": m.infer_per_s, "tool_p50_ms": m.p50_ms,
                    "tool_p99_ms": m.p99_ms, "tool_errors": m.errors,
                    "perf_infer_per_s": round(p["infer_per_s"], 2),
                    "perf_p50_ms": round(p["p50_ms"], 3), "perf_p99_ms": round(p["p99_ms"], 3),
                    "perf_client_cores": round(p["client_cores"], 3),
                    "perf_over_tool": round(p["infer_per_s"] / m.infer_per_s, 3)
                    if m.infer_per_s else None})
    finally:
        server.stop()
        for g in gens.values():
            g.close()
    return out


def scenario_reference(a) -> dict:
    repo = models.write_add_sub_repo(WORK / "repo_add_sub")
    req = models.add_sub_request()
    exe, _ = NaiadServer.find_exe(ROOT)
    out = {"description": "naiad perf's client throughput against each server's own "
                          "statistics over the same windows (add_sub)", "rows": [],
           "servers": {}}
    for server in (ReferenceTriton(repo, a.server_cpus, LOGS, REFERENCE_SCRIPT),
                   NaiadServer(repo, a.server_cpus, LOGS, exe)):
        try:
            info = server.start(["add_sub"])
            models.check_add_sub(http_infer(server.base_url, req))
            out["servers"][server.name] = info.get("server_metadata", {})
            for tr in ("http", "grpc"):
                url = f"127.0.0.1:{server.http_port if tr == 'http' else server.grpc_port}"
                for c in a.concurrency:
                    log(f"reference: {server.name} {tr} c={c}")
                    (p,) = naiad_perf(perf_args(url, tr, c, a.duration), a.client_cpus)
                    out["rows"].append({
                        "server": server.name, "transport": tr, "concurrency": c,
                        "perf_infer_per_s": round(p["infer_per_s"], 2),
                        "server_infer_per_s": round(p["server_infer_per_s"], 2),
                        "perf_over_server": round(p["infer_per_s"] / p["server_infer_per_s"], 4)
                        if p["server_infer_per_s"] else None,
                        "p50_ms": round(p["p50_ms"], 3), "p99_ms": round(p["p99_ms"], 3),
                        "client_cores": round(p["client_cores"], 3)})
        except ServerUnavailable as exc:
            out["servers"][server.name] = {"error": str(exc)[:500]}
        finally:
            server.stop()
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# naiad perf — checks ({result['started']})", "",
             f"Machine: {m['cpus']} CPUs, load average at start {m['load_start']}, at end "
             f"{m['load_end']} (shared with other work). Servers on CPU {result['server_cpus']},"
             f" load generators on CPU {result['client_cpus']}; {result['duration_s']:g} s per "
             "measurement.", ""]
    for name in ("ceiling", "harness", "reference"):
        if "error" in result.get(name, {}):
            lines += [f"## {name}: failed", "", "    " + result[name]["error"][-800:], ""]
    if "rows" in result.get("ceiling", {}):
        lines += ["## Ceiling: naiad perf against trivial servers", "",
                  "| transport | concurrency | infer/s | client cores | client µs CPU per "
                  "request | requests/s per client core |", "|---|---:|---:|---:|---:|---:|"]
        for r in result["ceiling"]["rows"]:
            lines.append(f"| {r['transport']} | {r['concurrency']} | {r['infer_per_s']:,.0f} | "
                         f"{r['client_cores']:.2f} | {r['client_us_per_request']:.1f} | "
                         f"{r['ceiling_per_core']:,} |")
        lines.append("")
    if "rows" in result.get("harness", {}):
        lines += ["## naiad perf vs the benchmark's load generator (naiad, add_sub)", "",
                  f"Median of {result['harness']['rows'][0]['rounds']} turns each, taken in "
                  "turns (tool, naiad perf, tool, ...) at each level.", "",
                  "| transport | concurrency | tool | tool infer/s | naiad perf infer/s | perf / "
                  "tool | tool p50 / p99 ms | perf p50 / p99 ms | perf client cores | every turn: "
                  "tool / perf |",
                  "|---|---:|---|---:|---:|---:|---|---|---:|---|"]
        for r in result["harness"]["rows"]:
            lines.append(f"| {r['transport']} | {r['concurrency']} | {r['tool']} | "
                         f"{r['tool_infer_per_s']:,.0f} | {r['perf_infer_per_s']:,.0f} | "
                         f"{r['perf_over_tool']} | {r['tool_p50_ms']:.2f} / "
                         f"{r['tool_p99_ms']:.2f} | {r['perf_p50_ms']:.2f} / "
                         f"{r['perf_p99_ms']:.2f} | {r['perf_client_cores']:.2f} | "
                         f"{', '.join(f'{v:,.0f}' for v in r['tool_all'])} / "
                         f"{', '.join(f'{v:,.0f}' for v in r['perf_all'])} |")
        lines.append("")
    if "rows" in result.get("reference", {}):
        ref = result["reference"]
        lines += ["## naiad perf vs the servers' own statistics (add_sub)", "",
                  "Servers: " + ", ".join(f"{k}: {v}" for k, v in ref["servers"].items()), "",
                  "| server | transport | concurrency | naiad perf infer/s | server statistics "
                  "infer/s | perf / server | p50 / p99 ms | client cores |",
                  "|---|---|---:|---:|---:|---:|---|---:|"]
        for r in ref["rows"]:
            lines.append(f"| {r['server']} | {r['transport']} | {r['concurrency']} | "
                         f"{r['perf_infer_per_s']:,.0f} | {r['server_infer_per_s']:,.0f} | "
                         f"{r['perf_over_server']} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
                         f"{r['client_cores']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--only", default="ceiling,harness,reference")
    p.add_argument("--rounds", type=int, default=3,
                   help="harness: turns of each generator per level (the median is reported)")
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    a = p.parse_args()
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    WORK.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    result = {"started": started.isoformat(timespec="seconds"), "duration_s": a.duration,
              "server_cpus": a.server_cpus, "client_cpus": a.client_cpus,
              "machine": {"cpus": os.cpu_count(), "load_start": os.getloadavg()}}
    for name in a.only.split(","):
        fn = {"ceiling": scenario_ceiling, "harness": scenario_harness,
              "reference": scenario_reference}[name]
        try:
            result[name] = fn(a)
        except Exception as exc:  # noqa: BLE001 - one scenario failing keeps the others
            log(f"{name} failed: {exc}")
            result[name] = {"error": str(exc)[:2000]}
    result["machine"]["load_end"] = os.getloadavg()
    stamp = started.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"perf-tool-{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"perf-tool-{stamp}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
