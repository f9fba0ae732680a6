"""Scenario "backends": the pytorch, openvino and fil backends served vs in-process.

Models (``harness/backend_models.py``): MiniLM as TorchScript and as OpenVINO IR,
a ResNet-style CNN as TorchScript, a 200-tree XGBoost classifier through fil.
One naiad serves them all from ``benchmarks/.work/repo_backends/`` (pinned to
the server CPU), each twice: without a batcher and with ``dynamic_batching {}``.

For every transport and concurrency level (1, 16, 64 by default):

* the unbatched model: served infer/s against the framework called in-process
  at batch 1 (same file, same single thread, same inputs, same CPU);
* the batched model (levels >= 16): served infer/s, the batch the batcher
  reached (statistics delta), against the framework in-process at that batch.

The in-process rate is measured in a subprocess pinned to the server CPU
(``python -m harness.backend_models --measure``) right after the first
served row that needs it at each concurrency level (reused by the other
transport). The served answer is checked against the in-process one
before measuring.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness import backend_models as bm
from harness.servers import NaiadServer
from harness.v2 import InferRequest, Tensor, http_get

_DT = {"float32": "FP32", "int64": "INT64"}


def _request(name: str, model: str) -> InferRequest:
    feed = bm.inputs(name, 1)
    return InferRequest(model=model, outputs=[bm.OUTPUTS[name]], inputs=[
        Tensor(k, _DT[str(v.dtype)], list(v.shape), v.tobytes()) for k, v in feed.items()])


def _stats(server, model: str) -> dict:
    code, body = http_get(f"{server.base_url}/v2/models/{model}/stats", timeout=30.0)
    if code != 200:
        raise RuntimeError(f"stats of {model}: HTTP {code}")
    return json.loads(body)["model_stats"][0]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(ctx, env) -> dict:
    import export_minilm as em

    log = env.log
    scn = {"description": "pytorch / openvino / fil backends: served vs the framework "
                          "in-process, unbatched and with dynamic batching",
           "models": {n: bm.CONFIGS[n].strip() for n in bm.NAMES},
           "servers": {}, "results": [], "ratios": [], "inprocess": []}
    onnx_path, _ = em.model_paths(em.DEFAULT_REPO)
    ts_path = env.WORK / "minilm_torchscript" / "model.pt"
    if not onnx_path.exists():
        log("backends: exporting MiniLM to ONNX (export_minilm.py)")
        subprocess.run([env.sys.executable, str(env.HERE / "export_minilm.py")], timeout=3600,
                       check=False)
    if not ts_path.exists():
        log("backends: tracing MiniLM to TorchScript (export_minilm.py --torchscript)")
        subprocess.run([env.sys.executable, str(env.HERE / "export_minilm.py"), "--torchscript",
                        str(ts_path)], timeout=3600, check=False)
    py = str(env.PROJECT_PYTHON)
    out = subprocess.run([py, "-m", "harness.backend_models", "--build", str(env.WORK),
                          "--minilm-onnx", str(onnx_path), "--minilm-torchscript", str(ts_path)],
                         capture_output=True, text=True, cwd=env.HERE, timeout=1800)
    if out.returncode != 0:
        scn["error"] = f"building the models failed: {out.stderr[-2000:]}"
        return scn
    repo = Path(out.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    names = [n for n in bm.NAMES if (repo / n / "1" / bm.FILES[n]).exists()]
    missing = sorted(set(bm.NAMES) - set(names))
    if missing:
        scn["missing_models"] = missing
        log(f"backends: models not built (export failed?): {missing}")
    scn["repository"] = str(repo)

    cache: dict[tuple[str, int, int], dict] = {}

    def inprocess(name: str, batch: int, level: int = 0) -> dict:
        """Measured next to the served rows of one concurrency level (the machine is noisy)."""
        if (name, batch, level) not in cache:
            cmd = ([] if not ctx.server_cpus else ["taskset", "-c", ctx.server_cpus]) + [
                py, "-m", "harness.backend_models", "--measure", name, "--repo", str(repo),
                "--batch", str(batch), "--duration", str(ctx.args.duration),
                "--warmup", str(ctx.args.warmup)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=env.HERE,
                               timeout=ctx.args.duration + ctx.args.warmup + 300)
            line = next((x for x in r.stdout.splitlines()
                         if x.startswith("NAIAD_BACKEND_JSON ")), None)
            if line is None:
                raise RuntimeError(f"in-process {name} batch {batch} failed: {r.stderr[-1500:]}")
            cache[(name, batch, level)] = json.loads(line.split(" ", 1)[1])
            d = cache[(name, batch, level)]
            log(f"  in-process {name} batch {batch:<3} {d['infer_per_s']:>9.1f} infer/s "
                f"(p50 {d['p50_ms']} ms per call, {d['cpu_ms_per_infer']} CPU ms per inference)")
        return cache[(name, batch, level)]

    def check(server) -> None:
        for name in names:
            ref = inprocess(name, 1)["first_output"]
            for model in (name, f"{name}_batched"):
                got = env.http_infer(server.base_url, _request(name, model))[bm.OUTPUTS[name]]
                vals = got.values()[:8]
                worst = max(abs(a - b) for a, b in zip(vals, ref))
                if worst > 1e-3:
                    raise AssertionError(f"{model}: served {vals} vs in-process {ref}")

    naiad_exe, nwhy = NaiadServer.find_exe(env.REPO_ROOT)
    models = names + [f"{n}_batched" for n in names]
    server = NaiadServer(repo, ctx.server_cpus, env.LOGS, naiad_exe)
    try:
        if not naiad_exe:
            scn["servers"]["naiad"] = {"status": "unavailable", "error": nwhy}
            return scn
        st = env._start(server, models, check)
        scn["servers"]["naiad"] = st
        if st["status"] != "ok":
            return scn
        for tr in ctx.transports:
            for c in ctx.args.concurrency:
                for name in names:
                    _level(ctx, env, server, tr, c, name, scn, inprocess)
        scn["inprocess"] = [{k: v for k, v in d.items() if k != "first_output"}
                            for _, d in sorted(cache.items())]
    finally:
        server.stop()
    scn["markdown"] = render(scn)
    return scn


def _level(ctx, env, server, tr, c, name, scn, inprocess) -> None:
    variants = [(name, False)] + ([(f"{name}_batched", True)] if c >= 16 else [])
    for model, batched in variants:
        req = _request(name, model)
        before = _stats(server, model)
        cpu0 = _cpu_s(server.pid)
        row = ctx.measure(tr, server, req, c)
        cpu1 = _cpu_s(server.pid)
        after = _stats(server, model)
        # the statistics include the warm-up; the executed batch sizes are the same regime
        n = after["inference_count"] - before["inference_count"]
        e = after["execution_count"] - before["execution_count"]
        mean = round(n / e, 2) if e else None
        row.update({"model": model, "backend_model": name, "batched": batched,
                    "mean_batch": mean,
                    "cpu_ms_per_infer": round((cpu1 - cpu0) * 1e3 / n, 4) if n else None})
        reached = max(1, int(round(mean or 1))) if batched else 1
        ip = inprocess(name, reached, c)
        rate = row.get("infer_per_s")
        ratio = round(rate / ip["infer_per_s"], 3) if rate and ip.get("infer_per_s") else None
        row["inprocess"] = {"batch": reached, "infer_per_s": ip["infer_per_s"],
                            "cpu_ms_per_infer": ip["cpu_ms_per_infer"]}
        row["served_over_inprocess"] = ratio
        scn["results"].append(row)
        scn["ratios"].append({"transport": tr.name, "concurrency": c, "model": model,
                              "reached_batch": mean, "served_over_inprocess": ratio})
        env.log(f"  {model} {tr.name} c={c}: mean batch {mean}, served/in-process {ratio}")


def render(scn: dict) -> list[str]:
    out = ["## Backends — pytorch, openvino, fil: served vs the framework in-process", "",
           ("One naiad (pinned to one CPU) serves MiniLM as TorchScript and as OpenVINO IR, a "
            "ResNet-style CNN as TorchScript and a 200-tree XGBoost model through fil, each "
            "without a batcher and with `dynamic_batching {}`; batch-1 requests over HTTP binary "
            "tensors (wrk) and gRPC (h2load). *In-process* is the framework called directly "
            "on the same CPU with the same threads and inputs, at batch 1 for the unbatched "
            "model and at the batch the batcher reached for the batched one. The machine is "
            "shared: compare within one run."), ""]
    if scn.get("error"):
        out += [f"- scenario error: {scn['error']}", ""]
    out += ["| transport | model | concurrency | infer/s | p50 ms | p99 ms | reached batch "
            "| in-process infer/s (batch) | served / in-process "
            "| CPU ms per inference: served / in-process |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in scn.get("results", []):
        ip = row.get("inprocess") or {}
        out.append(
            f"| {row.get('transport')} | {row.get('model')} | {row.get('concurrency')} "
            f"| {row.get('infer_per_s', '–')} | {row.get('p50_ms', '–')} "
            f"| {row.get('p99_ms', '–')} | {row.get('mean_batch', '–')} "
            f"| {ip.get('infer_per_s', '–')} ({ip.get('batch', '–')}) "
            f"| {row.get('served_over_inprocess', '–')} "
            f"| {row.get('cpu_ms_per_infer', '–')} / {ip.get('cpu_ms_per_infer', '–')} |")
    out.append("")
    return out
