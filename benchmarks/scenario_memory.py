"""Scenario "memory": idle memory, and memory over a soak at concurrency 64.

* **idle**: a server's memory once ready and idle (10 s after ready), as
  RSS and PSS summed over the server process and all its descendants (PSS
  shares pages among processes fairly; Triton runs one python stub process
  per model instance, so its RSS sum counts shared libraries many times),
  for naiad with the example repository (``examples/model_repository``:
  python and onnxruntime models; the reference has no onnxruntime backend,
  so it gets the python models of it only) and for both servers with the
  100 small python models of the startup scenario.
* **soak** (``--soak``, ``--soak-seconds``, 600 by default): naiad serving
  add_sub at concurrency 64, alternating HTTP (wrk) and gRPC (h2load) in
  60 s turns, RSS sampled every 5 s. Reported: RSS after one turn of each
  transport (the baseline, once both transports' caches, pools and threads
  have grown), at the end, the maximum, and the drift end / baseline - 1; the
  target is within ±5 %. The drift from the first minute (HTTP only) is
  kept in the data too.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from harness import models, startup
from harness.servers import NaiadServer, ReferenceTriton, descendants

SOAK_TURN_S = 60
SAMPLE_S = 5.0


def memory_kib(pid: int) -> dict:
    """RSS and PSS (KiB) of ``pid`` and its descendants, and how many processes."""
    rss = pss = n = 0
    for p in [pid] + descendants(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
            n += 1
        except OSError:
            pass
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1), "processes": n}


def _python_only(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for m in sorted(src.iterdir()):
        cfg = m / "config.pbtxt"
        if cfg.exists() and 'backend: "python"' in cfg.read_text():
            shutil.copytree(m, dst / m.name)
    return dst


def _idle(env, server, model_names, log) -> dict:
    st = env._start(server, model_names, lambda s: None)
    if st["status"] != "ok":
        return {"status": st["status"], "error": st.get("error_summary") or st.get("error")}
    try:
        time.sleep(10)
        m = memory_kib(server.pid)
        log(f"  idle {server.name:<9} {len(model_names):>3} models: RSS {m['rss_mib']} MiB, "
            f"PSS {m['pss_mib']} MiB in {m['processes']} processes")
        return {"status": "ok", "models": len(model_names), **m}
    finally:
        server.stop()


def run(ctx, env) -> dict:
    log = env.log
    scn = {"description": "idle memory (example repository, 100 python models) and RSS over "
                          "a soak at concurrency 64", "idle": [], "soak": None}
    naiad_exe, why = NaiadServer.find_exe(env.REPO_ROOT)
    if not naiad_exe:
        scn["error"] = why
        return scn
    examples = env.REPO_ROOT / "examples" / "model_repository"
    example_models = sorted(p.name for p in examples.iterdir() if (p / "config.pbtxt").exists())
    py_examples = _python_only(examples, env.WORK / "repo_examples_python")
    hundred = startup.make_repository(env.WORK)
    hundred_models = sorted(p.name for p in hundred.iterdir())
    cases = [
        ("example repository", NaiadServer(examples, ctx.server_cpus, env.LOGS, naiad_exe),
         example_models),
        ("example repository, python models",
         NaiadServer(py_examples, ctx.server_cpus, env.LOGS, naiad_exe),
         sorted(p.name for p in py_examples.iterdir())),
        ("example repository, python models",
         ReferenceTriton(py_examples, ctx.server_cpus, env.LOGS, env.REFERENCE_SCRIPT),
         sorted(p.name for p in py_examples.iterdir())),
        ("100 python models", NaiadServer(hundred, ctx.server_cpus, env.LOGS, naiad_exe),
         hundred_models),
        ("100 python models",
         ReferenceTriton(hundred, ctx.server_cpus, env.LOGS, env.REFERENCE_SCRIPT),
         hundred_models),
    ]
    for label, server, names in cases:
        row = {"repository": label, "server": server.name}
        try:
            row.update(_idle(env, server, names, log))
        except Exception as e:  # noqa: BLE001
            row.update({"status": "failed", "error": f"{type(e).__name__}: {e}"})
            server.stop()
        scn["idle"].append(row)
    if getattr(ctx.args, "soak", False):
        scn["soak"] = soak(ctx, env, naiad_exe, ctx.args.soak_seconds)
    scn["markdown"] = render(scn)
    return scn


def soak(ctx, env, naiad_exe: str, seconds: int) -> dict:
    log = env.log
    repo = models.write_add_sub_repo(env.WORK / "repo_add_sub")
    req = models.add_sub_request()
    server = NaiadServer(repo, ctx.server_cpus, env.LOGS, naiad_exe)
    st = env._start(server, ["add_sub"], lambda s: models.check_add_sub(
        env.http_infer(s.base_url, req)))
    out = {"seconds": seconds, "concurrency": 64, "turn_s": SOAK_TURN_S, "samples": [],
           "turns": []}
    if st["status"] != "ok":
        out["error"] = st.get("error")
        return out
    stop = threading.Event()
    t0 = time.monotonic()

    def sample():
        while not stop.is_set():
            m = memory_kib(server.pid)
            out["samples"].append({"t_s": round(time.monotonic() - t0, 1),
                                   "rss_mib": m["rss_mib"]})
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    by_name = {t.name: t for t in ctx.transports}
    turns = [by_name.get("http"), by_name.get("grpc")]
    turns = [t for t in turns if t is not None] or ctx.transports
    try:
        k = 0
        while time.monotonic() - t0 < seconds:
            tr = turns[k % len(turns)]
            left = seconds - (time.monotonic() - t0)
            m = tr.run(server, req, 64, max(1, int(min(SOAK_TURN_S, left))))
            out["turns"].append({"transport": tr.name, "infer_per_s": m.infer_per_s,
                                 "requests": m.ok, "errors": m.errors})
            log(f"  soak {time.monotonic() - t0:6.0f}s {tr.name:<5} {m.infer_per_s:8.0f} "
                f"infer/s, errors {m.errors}, RSS {out['samples'][-1]['rss_mib']} MiB")
            k += 1
    finally:
        stop.set()
        sampler.join(10)
        server.stop()
    samples = out["samples"]
    # the baseline: once a turn of each transport has run (the first minute is HTTP only)
    warm_s = 2 * SOAK_TURN_S
    base = next((s for s in samples if s["t_s"] >= warm_s), samples[0] if samples else None)
    first_minute = next((s for s in samples if s["t_s"] >= SOAK_TURN_S), base)
    if base and samples:
        rss = [s["rss_mib"] for s in samples if s["t_s"] >= base["t_s"]]
        out.update({"rss_start_mib": samples[0]["rss_mib"], "rss_baseline_mib": base["rss_mib"],
                    "rss_end_mib": samples[-1]["rss_mib"], "rss_max_mib": max(rss),
                    "rss_min_mib": min(rss),
                    "drift": round(samples[-1]["rss_mib"] / base["rss_mib"] - 1, 4),
                    "baseline_s": base["t_s"],
                    "drift_from_first_minute": round(
                        samples[-1]["rss_mib"] / first_minute["rss_mib"] - 1, 4),
                    "requests": sum(t["requests"] for t in out["turns"]),
                    "errors": sum(t["errors"] for t in out["turns"])})
    return out


def render(scn: dict) -> list[str]:
    out = ["## Memory", "", "Idle, 10 s after ready: RSS and PSS summed over the server and its "
           "child processes (Triton: one python stub process per model instance).", "",
           "| repository | server | models | RSS MiB | PSS MiB | processes |",
           "|---|---|---:|---:|---:|---:|"]
    for r in scn.get("idle", []):
        if r.get("status") != "ok":
            out.append(f"| {r['repository']} | {r['server']} | – | – | – | "
                       f"{r.get('status')}: {str(r.get('error'))[:120]} |")
            continue
        out.append(f"| {r['repository']} | {r['server']} | {r['models']} | {r['rss_mib']} | "
                   f"{r['pss_mib']} | {r['processes']} |")
    s = scn.get("soak")
    if s and s.get("rss_baseline_mib"):
        out += ["", f"Soak: naiad, add_sub at concurrency 64 for {s['seconds']} s (HTTP with wrk "
                f"and gRPC with h2load in {s['turn_s']} s turns, ~{s['requests']:,} requests, "
                f"{s['errors']} errors): RSS {s['rss_start_mib']} MiB at start, "
                f"{s['rss_baseline_mib']} MiB after a turn of each transport, "
                f"{s['rss_end_mib']} MiB at "
                f"the end (min {s['rss_min_mib']}, max {s['rss_max_mib']}): drift "
                f"{s['drift'] * 100:+.1f} % (target within ±5 %)."]
    elif s:
        out += ["", f"Soak failed: {s.get('error')}"]
    else:
        out += ["", "Soak not run (`--soak`)."]
    out.append("")
    return out
