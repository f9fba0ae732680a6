"""Machine description and the Markdown rendering of a results JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

PROJECT_PACKAGES = ["naiad", "numpy", "onnxruntime", "uvicorn", "uvloop", "httptools",
                    "grpcio", "protobuf", "orjson"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def package_versions(python: str | None, names=PROJECT_PACKAGES) -> dict:
    if not python or not os.path.exists(python):
        return {}
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            f"for n in {names!r}:\n"
            "    try: out[n] = m.version(n)\n"
            "    except Exception: out[n] = None\n"
            "print(json.dumps(out))")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                           check=False)
        return json.loads(r.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def machine_info(project_python: str | None) -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "harness_python": sys.version.split()[0],
        "project_venv": package_versions(project_python),
        "loadavg_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------ Markdown

def _f(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _cell_rate(row):
    if row is None:
        return "–"
    s = _f(row.get("infer_per_s"), 1)
    if row.get("flagged"):
        s += f" ⚠ {row.get('errors', '?')} err"
    return s


def _find(rows, server, transport, c):
    for r in rows:
        if r.get("server") == server and r.get("transport") == transport and \
                r.get("concurrency") == c:
            return r
    return None


def _server_note(name, st):
    if not st:
        return f"- **{name}**: not run"
    if st.get("status") == "ok":
        meta = st.get("server_metadata") or {}
        ver = " ".join(str(meta[k]) for k in ("name", "version") if meta.get(k))
        ver = f" ({ver})" if ver else ""
        extra = st.get("onnxruntime") and f" onnxruntime {st['onnxruntime']}" or ""
        pin = st.get("cpus_allowed")
        pin = f", pinned to CPU {pin}" if pin else ""
        return f"- **{name}**: ok{ver}{extra}{pin}"
    err = st.get("error_summary") or ((st.get("error") or "").strip().splitlines() or [""])[0]
    return f"- **{name}**: {st.get('status')} — {err}"


def render_markdown(res: dict) -> str:
    m = res.get("machine", {})
    pin = res.get("pinning", {})
    out = [
        "# naiad benchmarks",
        "",
        (f"Run {res.get('started_at', '?')}{' (--quick)' if res.get('quick') else ''}: "
        f"{res.get('duration_s')} s per measurement after {res.get('warmup_s')} s warm-up, "
        f"servers interleaved per concurrency level."),
        (f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs, "
        f"{m.get('memory_gib', '?')} GiB; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_start', []))}."),
        (f"Pinning: servers (and their child processes) on CPU "
         f"{pin.get('server_cpus') or 'unpinned'}"
        f", load generator on CPU {pin.get('client_cpus') or 'unpinned'}"
        f" ({'; '.join(res.get('tools', {}).values()) or 'wrk'})."),
        "",
    ]
    sc = res.get("scenarios", {})
    for scn in sc.values():  # scenarios that render themselves
        if isinstance(scn, dict) and scn.get("markdown"):
            out += scn["markdown"]

    a = sc.get("add_sub")
    if a:
        out += ["## add_sub — python backend, HTTP binary tensors and gRPC (overhead-bound)",
                "",
                ("infer/s = successful responses per second; latencies in ms as the load "
                "generator measures them (request sent to response received): wrk for http, "
                "h2load for grpc (ModelInfer with raw_input_contents)."), ""]
        out += [_server_note(k, a.get("servers", {}).get(k)) for k in ("naiad", "reference")]
        if a.get("error"):
            out.append(f"- scenario error: {a['error']}")
        out += ["",
                ("| transport | concurrency | naiad infer/s | naiad p50 | naiad p99 "
                "| reference infer/s | reference p50 | reference p99 | naiad / reference |"),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = a.get("results", [])
        for t, c in _levels(rows):
            n, r = _find(rows, "naiad", t, c), _find(rows, "reference", t, c)
            ratio = _ratio(a, t, c, "naiad_over_reference")
            out.append(f"| {t} | {c} | {_cell_rate(n)} | {_f(n and n.get('p50_ms'), 2)} "
                       f"| {_f(n and n.get('p99_ms'), 2)} | {_cell_rate(r)} "
                       f"| {_f(r and r.get('p50_ms'), 2)} | {_f(r and r.get('p99_ms'), 2)} "
                       f"| {_f(ratio, 2)} |")
        out.append("")

    b = sc.get("minilm")
    if b:
        req = b.get("request", {})
        out += ["## MiniLM-L6-v2 — ONNX on onnxruntime (compute-bound)", "",
                (f"Batch {req.get('batch', '?')} × sequence {req.get('seq', '?')} tokens per "
                "request over HTTP binary tensors or gRPC raw tensors, vs the same ONNX model "
                "called in-process "
                "with the same onnxruntime session options "
                f"({_sessopts(b)}) on the same pinned CPU, back to back (concurrency does not "
                "apply to it: it is re-measured next to each served level)."), ""]
        out += [_server_note(k, b.get("servers", {}).get(k))
                for k in ("naiad", "onnxruntime_inprocess")]
        if b.get("error"):
            out.append(f"- scenario error: {b['error']}")
        out += ["",
                ("| transport | concurrency | naiad infer/s | naiad p50 | naiad p99 "
                "| in-process infer/s | in-process p50 | in-process p99 | naiad / in-process |"),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = b.get("results", [])
        for t, c in _levels(rows):
            n = _find(rows, "naiad", t, c)
            i = _find(rows, "onnxruntime_inprocess", t, c)
            ratio = _ratio(b, t, c, "naiad_over_inprocess")
            out.append(f"| {t} | {c} | {_cell_rate(n)} | {_f(n and n.get('p50_ms'), 2)} "
                       f"| {_f(n and n.get('p99_ms'), 2)} | {_cell_rate(i)} "
                       f"| {_f(i and i.get('p50_ms'), 2)} | {_f(i and i.get('p99_ms'), 2)} "
                       f"| {_f(ratio, 2)} |")
        out.append("")

    from .pipelines import render as render_pipelines

    out += render_pipelines(sc)
    mo = sc.get("metrics_overhead")
    if mo:
        from . import metrics_overhead

        out += metrics_overhead.markdown(mo, _f, _cell_rate, _find)

    out += [("⚠ marks a measurement with errors (non-200 responses, socket errors or timeouts); "
            "its numbers are not comparable. Full data: `latest.json`."), ""]
    return "\n".join(out)


def _levels(rows):
    seen = []
    for r in rows:
        k = (r.get("transport"), r.get("concurrency"))
        if k not in seen:
            seen.append(k)
    return seen


def _ratio(scn, t, c, key):
    for r in scn.get("ratios", []):
        if r.get("transport") == t and r.get("concurrency") == c:
            return r.get(key)
    return None


def _sessopts(b):
    so = (b.get("session_options") or {})
    if not so:
        return "?"
    return (f"intra-op {so.get('intra_op_threads')}, inter-op {so.get('inter_op_threads')}, "
            f"graph optimisation {so.get('graph_optimization')}")
