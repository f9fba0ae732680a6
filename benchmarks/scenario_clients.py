"""Scenario "clients": add_sub with the clients users have, naiad vs the reference Triton.

The add_sub scenario drives the servers with wrk and h2load; users call them
with grpcio (``tritonclient.grpc``/``.aio``) and aiohttp-like clients, whose
own per-call cost changes the picture. This scenario measures, for each client
of ``harness/pyclient.py`` (``grpc-aio``: grpc.aio with tritonclient's
messages and raw contents; ``grpc-stream``: ModelStreamInfer over grpc.aio;
``grpc-aio-mp``: grpc.aio in several client processes; ``aiohttp``: HTTP
binary tensors) at each concurrency level, naiad and the reference
interleaved, ``repeats`` times:

* infer/s and the p50/p99 latency the client saw;
* **server CPU per request**: user + system time of the server process and
  all its descendants (Triton's python-backend stub included) over the
  window, from /proc, divided by the answers;
* **client CPU per request** (all client processes);

and once per server and client at concurrency 1 and 16, the **wire cost per
call** from a loopback capture (``harness/wire.py``: TCP segments with
payload, bare ACKs, payload bytes and HTTP/2 frames by type, each way).

Medians over the repeats are the table's cells, with the range beside them.
On a loaded machine the rates swing (a server whose work sits on one Python
thread gets a smaller share of a contended core than one with many native
threads); CPU per request is the steadier figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path

from harness import models, wire
from harness.servers import NaiadServer, ReferenceTriton, descendants
from harness.v2 import InferRequest, http_infer

CLIENTS = ("grpc-aio", "grpc-stream", "grpc-aio-mp", "aiohttp")
WIRE_CLIENTS = ("grpc-aio", "aiohttp")
WIRE_LEVELS = (1, 16)
WIRE_CALLS = 1000


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every live descendant."""
    total = 0
    for p in [pid] + descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def client_cmd(python: str, cpus: str | None, client: str, port: int, req: InferRequest,
               concurrency: int, duration: float, requests: int = 0,
               procs: int = 1) -> list[str]:
    cmd = ([] if not cpus else ["taskset", "-c", cpus]) + [
        python, "-m", "harness.pyclient", "--client", client, "--port", str(port),
        "--model", req.model, "--concurrency", str(concurrency),
        "--duration", str(duration), "--requests", str(requests), "--procs", str(procs)]
    for t in req.inputs:
        data = t.raw.hex() if len(t.raw) <= 4096 else f"@{len(t.raw)}"
        cmd += ["--input", f"{t.name}:{t.datatype}:{'x'.join(map(str, t.shape))}:{data}"]
    for o in req.outputs:
        cmd += ["--output", o]
    return cmd


def run_client(python: str, cpus: str | None, client: str, port: int, req: InferRequest,
               concurrency: int, duration: float, requests: int = 0, procs: int = 1,
               cwd: Path | None = None) -> dict:
    cmd = client_cmd(python, cpus, client, port, req, concurrency, duration, requests, procs)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, start_new_session=True,
                       timeout=(duration or 600) + 180, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("NAIAD_PYCLIENT_JSON ")),
                None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{client} client failed (rc {r.returncode}): {r.stderr[-1500:]}")
    return json.loads(line.split(" ", 1)[1])


def measure(ctx, env, server, client: str, req: InferRequest, c: int, duration: float,
            procs: int = 1) -> dict:
    """One window: the client's figures plus the server's CPU over it."""
    port = server.http_port if client.startswith("aiohttp") else server.grpc_port
    base = "grpc-aio" if client == "grpc-aio-mp" else client
    py = str(env.PROJECT_PYTHON)
    row = {"server": server.name, "client": client, "concurrency": c}
    try:
        if ctx.args.warmup > 0:
            run_client(py, ctx.client_cpus, base, port, req, c, min(2, ctx.args.warmup),
                       procs=procs, cwd=env.HERE)
        cpu0 = proc_cpu_s(server.pid)
        d = run_client(py, ctx.client_cpus, base, port, req, c, duration, procs=procs,
                       cwd=env.HERE)
        cpu1 = proc_cpu_s(server.pid)
        ok = d["ok"]
        row.update({k: d[k] for k in ("ok", "errors", "first_error", "duration_s",
                                      "infer_per_s", "p50_ms", "p90_ms", "p99_ms",
                                      "mean_ms", "procs")})
        row["server_cpu_us_per_req"] = round((cpu1 - cpu0) * 1e6 / ok, 1) if ok else None
        row["server_cores"] = round((cpu1 - cpu0) / d["duration_s"], 3)
        row["client_cpu_us_per_req"] = round(d["client_cpu_s"] * 1e6 / ok, 1) if ok else None
        row["flagged"] = bool(d["errors"]) or not ok
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        row.update({"infer_per_s": None, "flagged": True, "failure": f"{type(e).__name__}: {e}"})
    return row


def wire_cost(env, ctx, server, client: str, req: InferRequest, c: int) -> dict:
    port = server.http_port if client.startswith("aiohttp") else server.grpc_port
    py = str(env.PROJECT_PYTHON)

    def go():
        return run_client(py, ctx.client_cpus, client, port, req, c, 0, requests=WIRE_CALLS,
                          cwd=env.HERE)

    summary, d = wire.capture(port, go)
    return {"server": server.name, "client": client, "concurrency": c, "calls": d["ok"],
            "total": summary, "per_call": wire.per_call(summary, d["ok"])}


def start_servers(env, scn: dict, servers: list, naiad_exe, why: str, model_names: list[str],
                  check) -> list:
    """Start each server (naiad only when it was found), record its status in
    ``scn["servers"]``; the servers that came up."""
    running = []
    for s in servers:
        if s.name == "naiad" and not naiad_exe:
            scn["servers"]["naiad"] = {"status": "unavailable", "error": why}
            continue
        st = env._start(s, model_names, check)
        scn["servers"][s.name] = st
        if st["status"] == "ok":
            running.append(s)
    return running


def _median_rows(rows: list[dict]) -> dict:
    good = [r for r in rows if r.get("infer_per_s") is not None]
    out = {"repeats": len(rows), "ok_repeats": len(good)}
    for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_req",
              "client_cpu_us_per_req", "server_cores"):
        vals = [r[k] for r in good if r.get(k) is not None]
        if vals:
            out[k] = round(statistics.median(vals), 3)
            out[k + "_range"] = [min(vals), max(vals)]
    return out


def run(ctx, env, repeats: int | None = None) -> dict:
    log = env.log
    repeats = repeats or getattr(ctx.args, "repeats", None) or (1 if ctx.args.quick else 3)
    duration = ctx.args.duration
    repo = models.write_add_sub_repo(env.WORK / "repo_add_sub")
    req = models.add_sub_request()
    mp = max(2, len(ctx.client_cpus.split(",")) if ctx.client_cpus else 2)
    scn = {"description": "add_sub with grpcio (grpc.aio + tritonclient messages) and aiohttp "
                          "clients: infer/s, server and client CPU per request, wire cost",
           "clients": list(CLIENTS), "repeats": repeats, "multiprocess_procs": mp,
           "servers": {}, "results": [], "summary": [], "wire": []}
    naiad_exe, why = NaiadServer.find_exe(env.REPO_ROOT)
    servers = [NaiadServer(repo, ctx.server_cpus, env.LOGS, naiad_exe),
               ReferenceTriton(repo, ctx.server_cpus, env.LOGS, env.REFERENCE_SCRIPT)]

    def check(s):
        models.check_add_sub(http_infer(s.base_url, req))

    try:
        running = start_servers(env, scn, servers, naiad_exe, why, ["add_sub"], check)
        if not running:
            scn["error"] = "no server available"
            return scn
        for client in CLIENTS:
            for c in ctx.args.concurrency:
                procs = mp if client == "grpc-aio-mp" else 1
                if procs > c:
                    continue
                per_server: dict[str, list] = {s.name: [] for s in running}
                for _ in range(repeats):
                    for s in running:
                        row = measure(ctx, env, s, client, req, c, duration, procs)
                        scn["results"].append(row)
                        per_server[s.name].append(row)
                        log(_line(row))
                summary = {"client": client, "concurrency": c}
                for name, rows in per_server.items():
                    summary[name] = _median_rows(rows)
                n, r = summary.get("naiad", {}), summary.get("reference", {})
                for k in ("infer_per_s", "server_cpu_us_per_req", "client_cpu_us_per_req",
                          "p50_ms", "p99_ms"):
                    if n.get(k) and r.get(k):
                        summary[f"{k}_naiad_over_reference"] = round(n[k] / r[k], 3)
                scn["summary"].append(summary)
        why_not = wire.available()
        if why_not:
            scn["wire_error"] = why_not
        else:
            for client in WIRE_CLIENTS:
                for c in WIRE_LEVELS:
                    for s in running:
                        try:
                            w = wire_cost(env, ctx, s, client, req, c)
                        except Exception as e:  # noqa: BLE001
                            w = {"server": s.name, "client": client, "concurrency": c,
                                 "failure": f"{type(e).__name__}: {e}"}
                        scn["wire"].append(w)
                        log(f"  wire {s.name:<9} {client:<9} c={c:<3} "
                            f"{json.dumps(w.get('per_call', w.get('failure')))}")
    finally:
        for s in servers:
            s.stop()
    scn["markdown"] = render(scn)
    return scn


def _line(r: dict) -> str:
    if r.get("infer_per_s") is None:
        return f"  {r['server']:<9} {r['client']:<12} c={r['concurrency']:<3} FAILED " \
               f"{r.get('failure', '')[:300]}"
    return (f"  {r['server']:<9} {r['client']:<12} c={r['concurrency']:<3} "
            f"{r['infer_per_s']:>8.0f} infer/s  p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms  "
            f"server {r['server_cpu_us_per_req']} us/req ({r['server_cores']} cores)  "
            f"client {r['client_cpu_us_per_req']} us/req"
            + (f"  ⚠ {r['errors']} errors {r['first_error'][:100]}" if r.get("flagged") else ""))


def _cell(d: dict, k: str, fmt: str = "{:,.0f}") -> str:
    if d.get(k) is None:
        return "–"
    lo, hi = d.get(k + "_range", [d[k], d[k]])
    if lo == hi:
        return fmt.format(d[k])
    return f"{fmt.format(d[k])} ({fmt.format(lo)}–{fmt.format(hi)})"


def render(scn: dict) -> list[str]:
    out = ["## Real clients — add_sub with grpcio and aiohttp", "",
           ("Each cell is the median of the repeats (range in brackets); servers pinned to "
            "the server CPU, the Python clients (harness/pyclient.py) to the client CPU, "
            "naiad and the reference interleaved per repeat. Server CPU counts every thread "
            "and child process (Triton's python stub included)."), ""]
    if scn.get("error"):
        out += [f"- scenario error: {scn['error']}", ""]
    out += ["| client | c | naiad infer/s | reference infer/s | naiad / ref | "
            "naiad p50 / p99 ms | ref p50 / p99 ms | server CPU µs/req naiad | ref | "
            "naiad / ref | client CPU µs/req naiad | ref |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scn.get("summary", []):
        n, r = s.get("naiad", {}), s.get("reference", {})
        out.append(
            f"| {s['client']} | {s['concurrency']} | {_cell(n, 'infer_per_s')} "
            f"| {_cell(r, 'infer_per_s')} | {s.get('infer_per_s_naiad_over_reference', '–')} "
            f"| {n.get('p50_ms', '–')} / {n.get('p99_ms', '–')} "
            f"| {r.get('p50_ms', '–')} / {r.get('p99_ms', '–')} "
            f"| {_cell(n, 'server_cpu_us_per_req')} | {_cell(r, 'server_cpu_us_per_req')} "
            f"| {s.get('server_cpu_us_per_req_naiad_over_reference', '–')} "
            f"| {_cell(n, 'client_cpu_us_per_req')} | {_cell(r, 'client_cpu_us_per_req')} |")
    if scn.get("wire"):
        out += ["", "Wire cost per call (loopback capture of "
                f"{WIRE_CALLS} calls): TCP segments with payload / bare ACKs / payload bytes, "
                "and HTTP/2 frames, each way.", "",
                "| server | client | c | to server: seg / ack / bytes | frames | "
                "to client: seg / ack / bytes | frames |", "|---|---|---:|---|---|---|---|"]
        for w in scn["wire"]:
            if "per_call" not in w:
                out.append(f"| {w['server']} | {w['client']} | {w['concurrency']} | "
                           f"failed: {w.get('failure', '')[:80]} | | | |")
                continue
            cells = []
            for d in ("to_server", "to_client"):
                p = w["per_call"][d]
                frames = ", ".join(f"{k} {v}" for k, v in p["h2_frames"].items()) or "–"
                cells += [f"{p['segments']} / {p['bare_acks']} / {p['payload_bytes']}", frames]
            out.append(f"| {w['server']} | {w['client']} | {w['concurrency']} | "
                       + " | ".join(cells) + " |")
    if scn.get("wire_error"):
        out.append(f"\n- wire cost not measured: {scn['wire_error']}")
    out.append("")
    return out


if __name__ == "__main__":  # pragma: no cover - run through benchmarks/run.py
    raise SystemExit("run it with: python benchmarks/run.py --only clients")
