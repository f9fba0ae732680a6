#!/usr/bin/env python3
"""naiad benchmarks: one command, side by side, written to benchmarks/results/.

    python benchmarks/run.py [--quick] [--only add_sub|minilm] [--duration S]

Scenarios (see benchmarks/README.md):

* add_sub: python-backend add_sub over HTTP binary tensors, naiad vs the
  reference Triton 2.51 serving the same generated repository, wrk at
  concurrency 1/16/64. Overhead-bound.
* minilm: all-MiniLM-L6-v2 exported to ONNX (export_minilm.py), served by naiad
  over HTTP binary tensors vs onnxruntime called in-process with the same
  session options. Compute-bound.

Servers are pinned to CPU 0 (taskset; their child processes inherit it), the
load generator to CPU 1, and the servers are interleaved per concurrency level
(naiad c=1, reference c=1, naiad c=16, ...) so that noise on this shared
machine hits both alike. Standard library only: runs from any Python >= 3.10.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

# benchmarks/ is on sys.path as the script's directory
from harness import loadgen, models, pipelines, report
from harness.servers import NaiadServer, ReferenceTriton, ServerUnavailable, pid_alive
from harness.v2 import http_infer

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
LOGS = WORK / "logs"
REFERENCE_SCRIPT = Path(os.environ.get("NAIAD_REFERENCE_SCRIPT") or
                        REPO_ROOT.parent / "shared" / "reference" / "triton.sh")
PROJECT_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
EXPORT_VENV_PYTHON = WORK / "venv-export" / "bin" / "python"

SCENARIOS = ("add_sub", "clients", "big_tensors", "memory", "minilm", "startup",
             "metrics_overhead", "batching", "backends") + tuple(pipelines.RUNNERS)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sigterm(signum, frame):  # make SIGTERM unwind through the finally blocks
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------ helpers

class Ctx:
    def __init__(self, args):
        self.args = args
        self.server_cpus = None if args.no_pin else args.server_cpus
        self.client_cpus = None if args.no_pin else args.client_cpus
        self.transports = []
        for t in args.transport:
            cls = loadgen.TRANSPORTS[t]
            ncl = len(self.client_cpus.split(",")) if self.client_cpus else 1
            self.transports.append(cls(self.client_cpus, max_threads=max(1, ncl)))

    def measure(self, transport, server, req, c, batch=1) -> dict:
        """Warm up, then measure one server at one concurrency; never raises."""
        try:
            if self.args.warmup > 0:
                transport.run(server, req, c, self.args.warmup, batch_size=batch)
            m = transport.run(server, req, c, self.args.duration, batch_size=batch)
            row = {"server": server.name, **m.as_dict()}
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            row = {"server": server.name, "transport": transport.name, "concurrency": c,
                   "infer_per_s": None, "errors": None, "flagged": True,
                   "failure": f"{type(e).__name__}: {e}"}
        if not pid_alive(server.pid or -1):
            row["flagged"] = True
            row["failure"] = (row.get("failure", "") + " server died during the run").strip()
        log(_row_line(row))
        return row


def _row_line(r: dict) -> str:
    if r.get("infer_per_s") is None:
        return f"  {r['server']:<22} {r['transport']} c={r['concurrency']:<3} FAILED " \
               f"{r.get('failure', '')}"
    flag = f"  ⚠ {r['errors']} errors {r.get('error_detail')}" if r.get("flagged") else ""
    return (f"  {r['server']:<22} {r['transport']} c={r['concurrency']:<3} "
            f"{r['infer_per_s']:>9.1f} infer/s  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:7.2f} ms{flag}")


def _start(server, models_, check) -> dict:
    """Start + verify; returns a status dict ('ok' or 'unavailable'/'failed_check')."""
    try:
        info = server.start(models_)
    except (ServerUnavailable, OSError, subprocess.SubprocessError) as e:
        summary = _error_summary(str(e))
        log(f"{server.name} unavailable: {summary}")
        return {**server.info, "status": "unavailable", "error": str(e),
                "error_summary": summary}
    try:
        check(server)
    except Exception as e:  # noqa: BLE001
        log(f"{server.name} failed the correctness check: {e}")
        server.stop()
        return {**server.info, "status": "failed_check", "error": f"{type(e).__name__}: {e}"}
    log(f"{server.name} ready on :{server.http_port} (pid {server.pid}, "
        f"CPUs {info.get('cpus_allowed')}), correctness check passed")
    return {**info, "status": "ok"}


def _error_summary(err: str) -> str:
    """First line, plus the first error line of the log tail (glog 'E....' lines)."""
    lines = err.strip().splitlines() or ["?"]
    logged = [x.strip().lstrip("|").strip() for x in lines[1:]]
    errs = [x for x in logged if x[:1] == "E" and x[1:5].isdigit()] or \
        [x for x in logged if "error" in x.lower()]
    if errs:
        msg = errs[0].split("] ", 1)[-1]
        return f"{lines[0]}: {msg}"
    return lines[0]


def _ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return round(a / b, 3)


# ------------------------------------------------------------------ add_sub

def run_add_sub(ctx: Ctx) -> dict:
    repo = models.write_add_sub_repo(WORK / "repo_add_sub")
    req = models.add_sub_request()
    body, hlen = req.http_binary_body()
    scn = {
        "description": "python-backend add_sub, HTTP binary tensor data extension, wrk",
        "repository": str(repo),
        "request": {"path": req.http_path, "json_header_length": hlen, "body_bytes": len(body),
                    "inputs": "INPUT0, INPUT1 FP32[4] binary",
                    "outputs": "OUTPUT0, OUTPUT1 binary"},
        "servers": {}, "results": [], "ratios": [],
    }
    naiad_exe, why = NaiadServer.find_exe(REPO_ROOT)
    servers = [NaiadServer(repo, ctx.server_cpus, LOGS, naiad_exe),
               ReferenceTriton(repo, ctx.server_cpus, LOGS, REFERENCE_SCRIPT)]

    def check(s):
        models.check_add_sub(http_infer(s.base_url, req))

    running = []
    try:
        for s in servers:
            if s.name == "naiad" and not naiad_exe:
                log(f"naiad unavailable: {why}")
                scn["servers"]["naiad"] = {**s.info, "status": "unavailable", "error": why}
                continue
            st = _start(s, ["add_sub"], check)
            scn["servers"][s.name] = st
            if st["status"] == "ok":
                running.append(s)
        if not running:
            scn["error"] = "no server available"
            return scn
        for tr in ctx.transports:
            for c in ctx.args.concurrency:
                for s in running:
                    scn["results"].append(ctx.measure(tr, s, req, c))
                by = {r["server"]: r for r in scn["results"]
                      if r["transport"] == tr.name and r["concurrency"] == c}
                n, r = by.get("naiad", {}), by.get("reference", {})
                scn["ratios"].append({
                    "transport": tr.name, "concurrency": c,
                    "naiad_over_reference": _ratio(n.get("infer_per_s"), r.get("infer_per_s")),
                    "p50_naiad_over_reference": _ratio(n.get("p50_ms"), r.get("p50_ms")),
                    "p99_naiad_over_reference": _ratio(n.get("p99_ms"), r.get("p99_ms")),
                })
    finally:
        for s in servers:
            s.stop()
    return scn


# ------------------------------------------------------------------ MiniLM

def _ort_python() -> tuple[str | None, str]:
    probe = "import onnxruntime, numpy"
    for cand in (str(PROJECT_PYTHON), sys.executable, str(EXPORT_VENV_PYTHON)):
        if cand and os.path.exists(cand) and subprocess.run(
                [cand, "-c", probe], capture_output=True, check=False).returncode == 0:
            return cand, ""
    return None, "no Python with onnxruntime+numpy (install naiad[onnx] into .venv)"


def _inprocess(ctx: Ctx, py: str, onnx_path: Path, so: dict, duration, warmup,
               batch: int | None = None, seq: int | None = None, mix: str = "") -> dict:
    cmd = ([] if not ctx.server_cpus else ["taskset", "-c", ctx.server_cpus]) + [
        py, "-m", "harness.ort_inprocess", "--model", str(onnx_path),
        "--batch", str(batch or models.MINILM_BATCH), "--seq", str(seq or models.MINILM_SEQ),
        "--intra", str(so["intra_op_threads"]), "--inter", str(so["inter_op_threads"]),
        "--opt-level", so["graph_optimization"],
        "--duration", str(duration), "--warmup", str(warmup)] + (["--mix", mix] if mix else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120,
                       start_new_session=True,
                       check=False, cwd=HERE)
    line = next((x for x in r.stdout.splitlines() if x.startswith("NAIAD_ORT_JSON ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"in-process onnxruntime failed (rc {r.returncode}): "
                           f"{r.stderr[-1500:]}")
    return json.loads(line.split(" ", 1)[1])


def run_minilm(ctx: Ctx) -> dict:
    import export_minilm as em  # benchmarks/export_minilm.py

    scn = {
        "description": "all-MiniLM-L6-v2 ONNX: naiad over HTTP binary tensors vs onnxruntime "
                       "in-process",
        "request": {"batch": models.MINILM_BATCH, "seq": models.MINILM_SEQ,
                    "inputs": "input_ids, attention_mask, token_type_ids INT64 binary",
                    "outputs": "sentence_embedding FP32[1,384] binary"},
        "session_options": dict(em.SESSION_OPTIONS),
        "servers": {}, "results": [], "ratios": [],
    }
    repo = em.DEFAULT_REPO
    onnx_path, _ = em.model_paths(repo)
    log("MiniLM: exporting to ONNX if needed (export_minilm.py)")
    r = subprocess.run([sys.executable, str(HERE / "export_minilm.py"), "--repo", str(repo)],
                       timeout=1800, check=False)
    if r.returncode != 0 or not onnx_path.exists():
        scn["error"] = f"export failed (rc {r.returncode}); run benchmarks/export_minilm.py"
        return scn
    info_file = onnx_path.parent / "export_info.json"
    if info_file.exists():
        scn["export"] = json.loads(info_file.read_text())
    scn["repository"] = str(repo)

    py, why = _ort_python()
    so = em.SESSION_OPTIONS
    baseline_ok = py is not None
    reference_embedding = None
    if baseline_ok:
        try:
            probe = _inprocess(ctx, py, onnx_path, so, duration=0.5, warmup=0)
            reference_embedding = probe["embedding0"]
            scn["servers"]["onnxruntime_inprocess"] = {
                "status": "ok", "python": py, "onnxruntime": probe["onnxruntime"],
                "numpy": probe["numpy"], "cpus_allowed": ctx.server_cpus,
                "session_options": probe["session_options"]}
        except Exception as e:  # noqa: BLE001
            baseline_ok = False
            why = str(e)
    if not baseline_ok:
        log(f"in-process baseline unavailable: {why}")
        scn["servers"]["onnxruntime_inprocess"] = {"status": "unavailable", "error": why}

    req = models.minilm_request()

    def check(s):
        out = http_infer(s.base_url, req)
        t = out.get("sentence_embedding")
        if t is None:
            raise AssertionError(f"sentence_embedding missing ({sorted(out)})")
        if t.datatype != "FP32" or list(t.shape) != [models.MINILM_BATCH, 384]:
            raise AssertionError(f"got {t.datatype}{t.shape}, want FP32[1, 384]")
        if reference_embedding is not None:
            diff = max(abs(a - b) for a, b in zip(t.values()[:384], reference_embedding))
            s.info["max_abs_diff_vs_inprocess"] = diff
            if diff > 1e-4:
                raise AssertionError(f"embedding differs from in-process by {diff}")

    naiad_exe, nwhy = NaiadServer.find_exe(REPO_ROOT)
    naiad = NaiadServer(repo, ctx.server_cpus, LOGS, naiad_exe)
    try:
        if naiad_exe:
            st = _start(naiad, ["minilm"], check)
        else:
            log(f"naiad unavailable: {nwhy}")
            st = {**naiad.info, "status": "unavailable", "error": nwhy}
        scn["servers"]["naiad"] = st
        naiad_ok = st["status"] == "ok"
        for tr in ctx.transports:
            for c in ctx.args.concurrency:
                n = i = None
                if naiad_ok:
                    n = ctx.measure(tr, naiad, req, c, batch=models.MINILM_BATCH)
                    scn["results"].append(n)
                if baseline_ok:
                    try:
                        d = _inprocess(ctx, py, onnx_path, so, ctx.args.duration,
                                       ctx.args.warmup)
                        i = {"server": "onnxruntime_inprocess", "transport": tr.name,
                             "concurrency": c, "in_process_concurrency": 1, "errors": 0,
                             "flagged": False,
                             **{k: d[k] for k in ("requests", "duration_s", "infer_per_s",
                                                  "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                                                  "max_ms", "batch")}}
                    except Exception as e:  # noqa: BLE001
                        i = {"server": "onnxruntime_inprocess", "transport": tr.name,
                             "concurrency": c, "infer_per_s": None, "flagged": True,
                             "failure": str(e)}
                    log(_row_line(i))
                    scn["results"].append(i)
                scn["ratios"].append({
                    "transport": tr.name, "concurrency": c,
                    "naiad_over_inprocess": _ratio((n or {}).get("infer_per_s"),
                                                   (i or {}).get("infer_per_s"))})
    finally:
        naiad.stop()
    return scn


def run_startup(ctx: Ctx) -> dict:
    """100 small python models: launch to ready, naiad vs reference (harness/startup.py)."""
    from harness import startup

    naiad_exe, _ = NaiadServer.find_exe(REPO_ROOT)
    return startup.run_startup(
        lambda repo: NaiadServer(repo, ctx.server_cpus, LOGS, naiad_exe),
        lambda repo: ReferenceTriton(repo, ctx.server_cpus, LOGS, REFERENCE_SCRIPT),
        WORK, log, runs=2 if ctx.args.quick else 3)


# ------------------------------------------------------------------ metrics overhead

def run_metrics_overhead(ctx: Ctx) -> dict:
    from harness import metrics_overhead

    req = models.add_sub_request()
    naiad_exe, why = NaiadServer.find_exe(REPO_ROOT)
    if not naiad_exe:
        return {"error": why}
    return metrics_overhead.run(
        ctx, repo=models.write_add_sub_repo(WORK / "repo_add_sub"), request=req,
        check=lambda s: models.check_add_sub(http_infer(s.base_url, req)), start=_start,
        log=log, logs_dir=LOGS, naiad_exe=naiad_exe, ratio=_ratio)


# ------------------------------------------------------------------ dynamic batching

def run_batching(ctx: Ctx) -> dict:
    import scenario_batching  # benchmarks/scenario_batching.py

    return scenario_batching.run(ctx, sys.modules[__name__])


# ------------------------------------------------------------------ pytorch/openvino/fil

def run_backends(ctx: Ctx) -> dict:
    import scenario_backends  # benchmarks/scenario_backends.py

    return scenario_backends.run(ctx, sys.modules[__name__])


# ------------------------------------------------------------------ real clients, big tensors, memory

def run_clients(ctx: Ctx) -> dict:
    import scenario_clients  # benchmarks/scenario_clients.py

    return scenario_clients.run(ctx, sys.modules[__name__])


def run_big_tensors(ctx: Ctx) -> dict:
    import scenario_big  # benchmarks/scenario_big.py

    return scenario_big.run(ctx, sys.modules[__name__])


def run_memory(ctx: Ctx) -> dict:
    import scenario_memory  # benchmarks/scenario_memory.py

    return scenario_memory.run(ctx, sys.modules[__name__])


# ------------------------------------------------------------------ main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="naiad vs reference Triton benchmarks")
    ap.add_argument("--quick", action="store_true",
                    help="short measurements (4 s after 2 s warm-up) for a smoke run")
    ap.add_argument("--only", choices=SCENARIOS, action="append",
                    help="run only this scenario (repeatable)")
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 15; quick 4)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up before each (default 5; "
                    "quick 2)")
    ap.add_argument("--concurrency", default="1,16,64",
                    help="comma-separated concurrency levels (default 1,16,64)")
    ap.add_argument("--transport", action="append", choices=sorted(loadgen.TRANSPORTS),
                    help="transport(s) to measure (default: http and grpc)")
    ap.add_argument("--server-cpus", default="0", help="taskset CPU list for servers (0)")
    ap.add_argument("--client-cpus", default="1", help="taskset CPU list for wrk (1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--repeats", type=int, help="repeats per cell in the clients and "
                    "big_tensors scenarios (default 3; quick 1)")
    ap.add_argument("--soak", action="store_true",
                    help="memory scenario: add the 10-minute soak at concurrency 64")
    ap.add_argument("--soak-seconds", type=int, default=600, help="length of the soak (600)")
    a = ap.parse_args(argv)
    a.duration = a.duration or (4 if a.quick else 15)
    a.warmup = a.warmup if a.warmup is not None else (2 if a.quick else 5)
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    a.transport = a.transport or ["http", "grpc"]
    a.only = a.only or list(SCENARIOS)
    if not a.no_pin and (os.cpu_count() or 1) < 2:
        print("[bench] fewer than 2 CPUs: running unpinned", file=sys.stderr)
        a.no_pin = True
    return a


def write_results(res: dict, results_dir: Path) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md = report.render_markdown(res)
    stamp = res["started_at"].replace(":", "").replace("-", "")[:15]
    stamp = f"{stamp}{'-quick' if res.get('quick') else ''}"
    paths = []
    for name, text in (("latest.json", json.dumps(res, indent=2) + "\n"), ("latest.md", md),
                       (f"{stamp}.json", json.dumps(res, indent=2) + "\n"), (f"{stamp}.md", md)):
        p = results_dir / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
        paths.append(p)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    loadgen.ensure_tools()
    WORK.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args)
    res = {
        "schema": 1,
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "duration_s": args.duration, "warmup_s": args.warmup,
        "concurrency": args.concurrency, "transports": args.transport,
        "pinning": {"server_cpus": ctx.server_cpus, "client_cpus": ctx.client_cpus,
                    "how": "taskset -c (server children inherit the affinity)"},
        "machine": report.machine_info(str(PROJECT_PYTHON)),
        "tools": loadgen.tool_versions(),
        "scenarios": {},
    }
    log(f"scenarios {args.only}, {args.duration}s measurements after {args.warmup}s warm-up, "
        f"concurrency {args.concurrency}, servers on CPU {ctx.server_cpus}, "
        f"load on CPU {ctx.client_cpus}")
    rc = 0
    try:
        for name in args.only:
            log(f"=== {name} ===")
            try:
                if name in pipelines.RUNNERS:  # harness/pipelines.py
                    res["scenarios"][name] = pipelines.RUNNERS[name](ctx, WORK, LOGS, log)
                else:
                    runner = {"add_sub": run_add_sub, "minilm": run_minilm,
                              "startup": run_startup,
                              "metrics_overhead": run_metrics_overhead,
                              "batching": run_batching, "backends": run_backends,
                              "clients": run_clients, "big_tensors": run_big_tensors,
                              "memory": run_memory}[name]
                    res["scenarios"][name] = runner(ctx)
            except Exception as e:  # noqa: BLE001 - keep the other scenario's numbers
                traceback.print_exc()
                res["scenarios"][name] = {"error": f"{type(e).__name__}: {e}"}
                rc = 1
    finally:
        for t in ctx.transports:
            t.close()
        res["finished_at"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        res["machine"]["loadavg_end"] = list(os.getloadavg())
        paths = write_results(res, args.results_dir)
        log("wrote " + ", ".join(os.path.relpath(p) for p in paths))
    print()
    print(report.render_markdown(res))
    return rc


if __name__ == "__main__":
    sys.exit(main())
