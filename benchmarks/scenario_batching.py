"""Scenario "batching": the dynamic batcher on the compute-heavy MiniLM ONNX model.

One naiad serves the exported MiniLM (export_minilm.py) three times, from
``benchmarks/.work/repo_batching/`` (the ``model.onnx`` is a symlink to the
export; same session options as the minilm scenario):

* ``minilm_unbatched``: no ``dynamic_batching`` (the default scheduler: every
  request executes alone, batch 1);
* ``minilm_batched``: ``dynamic_batching { }`` with max_batch_size 64 (the
  batcher takes whatever is queued when the instance frees up);
* ``minilm_batched8``: the same with max_batch_size 8 (on a CPU, moderate
  batches are where onnxruntime is most efficient per item).

wrk drives each at the requested concurrency levels (64 by default: the
issue's target) with the minilm scenario's request (batch 1 x 128 tokens, HTTP
binary tensors), then with 16-token requests (where a single sequence is too
small to keep the CPU busy, so onnxruntime itself gains from batching). Around each measurement the model's statistics give the
batch sizes the batcher actually executed (inference_count and
execution_count deltas, and the batch_stats histogram). Next to each served
row, onnxruntime is run in-process on the same pinned CPU at the mean batch
size the batcher reached (rounded), and at batch 1: the served rate divided by
the in-process rate at the reached batch size is how close serving gets to
the framework's own speed; the batched rate divided by the unbatched rate is
what batching buys on this hardware.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness import models
from harness.servers import NaiadServer
from harness.v2 import http_get

SEQ_LENGTHS = (models.MINILM_SEQ, 16)
MODELS = {
    "minilm_unbatched": (64, ""),
    "minilm_batched": (64, "dynamic_batching { }"),
    "minilm_batched8": (8, "dynamic_batching { }"),
}
DEFAULT_CONCURRENCY = [64]


def write_repo(work: Path, onnx_path: Path, base_config: str) -> Path:
    repo = work / "repo_batching"
    for name, (mbs, batching) in MODELS.items():
        vdir = repo / name / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        link = vdir / "model.onnx"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(onnx_path.resolve())
        text = base_config.replace('name: "minilm"', f'name: "{name}"')
        text = text.replace("max_batch_size: 64", f"max_batch_size: {mbs}")
        (repo / name / "config.pbtxt").write_text(text + ("\n" + batching + "\n"
                                                          if batching else ""))
    return repo


def _stats(server, model: str) -> dict:
    code, body = http_get(f"{server.base_url}/v2/models/{model}/stats", timeout=30.0)
    if code != 200:
        raise RuntimeError(f"stats of {model}: HTTP {code}")
    return json.loads(body)["model_stats"][0]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batch_delta(before: dict, after: dict) -> dict:
    n = after["inference_count"] - before["inference_count"]
    e = after["execution_count"] - before["execution_count"]
    hist_before = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    hist = {}
    for b in after["batch_stats"]:
        d = b["compute_infer"]["count"] - hist_before.get(b["batch_size"], 0)
        if d:
            hist[b["batch_size"]] = d
    return {"inferences": n, "executions": e, "mean_batch": round(n / e, 2) if e else None,
            "batch_histogram": dict(sorted(hist.items()))}


def run(ctx, env) -> dict:
    """``env`` is benchmarks/run.py (its helpers: log, _start, _inprocess, ...)."""
    import export_minilm as em

    log = env.log
    scn = {"description": "dynamic batching on MiniLM ONNX: batched vs unbatched vs "
                          "onnxruntime in-process at the reached batch size",
           "request": {"batch": models.MINILM_BATCH, "seq": models.MINILM_SEQ},
           "session_options": dict(em.SESSION_OPTIONS),
           "models": {k: {"max_batch_size": v[0], "scheduling": v[1] or "default"}
                      for k, v in MODELS.items()},
           "servers": {}, "results": [], "ratios": []}
    onnx_path, config_path = em.model_paths(em.DEFAULT_REPO)
    if not onnx_path.exists():
        log("batching: exporting MiniLM (export_minilm.py)")
        env.subprocess.run([env.sys.executable, str(env.HERE / "export_minilm.py"), "--repo",
                            str(em.DEFAULT_REPO)], timeout=1800, check=False)
    if not onnx_path.exists() or not config_path.exists():
        scn["error"] = "MiniLM export missing; run benchmarks/export_minilm.py"
        return scn
    repo = write_repo(env.WORK, onnx_path, config_path.read_text())
    scn["repository"] = str(repo)
    py, why = env._ort_python()
    levels = [c for c in ctx.args.concurrency if c >= 16] or DEFAULT_CONCURRENCY
    if ctx.args.concurrency == [1, 16, 64]:  # the run.py default: this scenario is about 64
        levels = DEFAULT_CONCURRENCY
    scn["concurrency"] = levels

    naiad_exe, nwhy = NaiadServer.find_exe(env.REPO_ROOT)
    server = NaiadServer(repo, ctx.server_cpus, env.LOGS, naiad_exe)

    def check(s):
        for name in MODELS:
            req = models.minilm_request()
            req.model = name
            out = env.http_infer(s.base_url, req)
            t = out.get("sentence_embedding")
            if t is None or list(t.shape) != [models.MINILM_BATCH, 384]:
                raise AssertionError(f"{name}: bad sentence_embedding {t and t.shape}")

    inproc_cache: dict[tuple[int, int], dict] = {}

    def inprocess(batch: int, seq: int, mix: str = "") -> dict | None:
        if py is None:
            return None
        if mix:  # a mix of batch sizes is measured each time (not cached)
            return env._inprocess(ctx, py, onnx_path, em.SESSION_OPTIONS, ctx.args.duration,
                                  ctx.args.warmup, seq=seq, mix=mix)
        if (batch, seq) not in inproc_cache:
            d = env._inprocess(ctx, py, onnx_path, em.SESSION_OPTIONS, ctx.args.duration,
                               ctx.args.warmup, batch=batch, seq=seq)
            inproc_cache[(batch, seq)] = d
            log(f"  onnxruntime in-process seq {seq} batch {batch:<3} "
                f"{d['infer_per_s']:>9.1f} infer/s (p50 {d['p50_ms']:.1f} ms per call)")
        return inproc_cache[(batch, seq)]

    try:
        if not naiad_exe:
            scn["servers"]["naiad"] = {"status": "unavailable", "error": nwhy}
            return scn
        st = env._start(server, list(MODELS), check)
        scn["servers"]["naiad"] = st
        if st["status"] != "ok":
            return scn
        if py is None:
            scn["servers"]["onnxruntime_inprocess"] = {"status": "unavailable", "error": why}
        for tr in ctx.transports:
            for seq in SEQ_LENGTHS:
                for c in levels:
                    _measure_level(ctx, env, server, tr, c, seq, scn, inprocess)
        scn["inprocess"] = [{"seq": seq, "batch": b,
                             **{k: d[k] for k in ("infer_per_s", "p50_ms", "p99_ms")}}
                            for (b, seq), d in sorted(inproc_cache.items(),
                                                      key=lambda kv: (-kv[0][1], kv[0][0]))]
    finally:
        server.stop()
    scn["markdown"] = render(scn)
    return scn


def _measure_level(ctx, env, server, tr, c, seq, scn, inprocess) -> None:
    """The three models at one concurrency and sequence length, then the in-process rates."""
    log = env.log
    rows = {}
    for name in MODELS:
        req = models.minilm_request(seq=seq)
        req.model = name
        before_warm = None
        if ctx.args.warmup > 0:
            before_warm = _stats(server, name)
            tr.run(server, req, c, ctx.args.warmup)
        before = _stats(server, name)
        cpu0 = _cpu_s(server.pid)
        row = ctx.measure(tr, server, req, c)
        cpu1 = _cpu_s(server.pid)
        row["model"] = name
        row["seq"] = seq
        row["batching"] = _batch_delta(before, _stats(server, name))
        done = row["batching"]["inferences"]
        # the server's CPU time per inference (everything: HTTP, scheduling, onnxruntime)
        row["cpu_ms_per_infer"] = round((cpu1 - cpu0) * 1e3 / done, 4) if done else None
        if before_warm is not None:
            row["warmup_batching"] = _batch_delta(before_warm, before)
        log(f"  {name} seq {seq}: mean executed batch {row['batching']['mean_batch']}, "
            f"histogram {row['batching']['batch_histogram']}")
        scn["results"].append(row)
        rows[name] = row
    base = inprocess(1, seq)
    ratio = {"transport": tr.name, "concurrency": c, "seq": seq}
    for name, row in rows.items():
        mean = row["batching"]["mean_batch"] or 1
        reached = max(1, int(round(mean)))
        ip = inprocess(reached, seq)
        row["inprocess_at_reached_batch"] = (
            {"batch": reached, **{k: ip.get(k) for k in ("infer_per_s", "p50_ms", "p99_ms",
                                                        "cpu_ms_per_infer")}}
            if ip else None)
        rate = row.get("infer_per_s")
        ratio[f"{name}_over_inprocess_at_reached"] = (
            round(rate / ip["infer_per_s"], 3) if ip and rate else None)
        hist = row["batching"].get("batch_histogram") or {}
        if len(hist) > 1 and ip:
            # the batcher executed a mix of sizes: onnxruntime replays the same mix
            mix = ",".join(f"{b}:{n}" for b, n in sorted(hist.items()))
            try:
                d = inprocess(0, seq, mix)
                row["inprocess_at_served_mix"] = {
                    "mix": mix, **{k: d.get(k) for k in ("infer_per_s", "cpu_ms_per_infer")}}
                ratio[f"{name}_over_inprocess_at_mix"] = (
                    round(rate / d["infer_per_s"], 3) if rate and d.get("infer_per_s") else None)
                served_cpu = row.get("cpu_ms_per_infer")
                ratio[f"{name}_cpu_efficiency_vs_mix"] = (
                    round(d["cpu_ms_per_infer"] / served_cpu, 3)
                    if d.get("cpu_ms_per_infer") and served_cpu else None)
                log(f"  onnxruntime in-process at {name}'s mix of {sum(hist.values())} batches: "
                    f"{d['infer_per_s']:.1f} infer/s, {d['cpu_ms_per_infer']} CPU ms/inference")
            except Exception as e:  # noqa: BLE001
                row["inprocess_at_served_mix"] = {"mix": mix, "failure": str(e)[:300]}
        # CPU efficiency: in-process CPU per inference / served CPU per inference
        served_cpu = row.get("cpu_ms_per_infer")
        ratio[f"{name}_cpu_efficiency_vs_inprocess"] = (
            round(ip["cpu_ms_per_infer"] / served_cpu, 3)
            if ip and ip.get("cpu_ms_per_infer") and served_cpu else None)
        ratio[f"{name}_over_inprocess_batch1"] = (
            round(rate / base["infer_per_s"], 3) if base and rate else None)
    unb = rows["minilm_unbatched"].get("infer_per_s")
    for name in ("minilm_batched", "minilm_batched8"):
        rate = rows[name].get("infer_per_s")
        ratio[f"{name}_over_unbatched"] = round(rate / unb, 3) if unb and rate else None
    scn["ratios"].append(ratio)


def render(scn: dict) -> list[str]:
    out = ["## Dynamic batching — MiniLM ONNX at high concurrency", "",
           ("Same model served three ways by one naiad (batch-1 requests of 128 tokens, then "
            "16, over HTTP binary tensors with wrk and over gRPC with h2load): without a batcher, with `dynamic_batching {}` at "
            "max_batch_size 64, and at max_batch_size 8. *Reached batch* is what the batcher "
            "executed during the measurement (inference_count / execution_count); onnxruntime "
            "in-process is re-measured on the same pinned CPU at that batch size. CPU ms per "
            "inference (the server process's CPU time over the measurement / inferences, and "
            "the same for the in-process loop) is barely moved by other load on a shared "
            "machine, unlike the rates."), ""]
    if scn.get("error"):
        out += [f"- scenario error: {scn['error']}", ""]
    out += ["| transport | tokens | model | concurrency | infer/s | p50 ms | p99 ms | reached batch "
            "| in-process infer/s at that batch | served / in-process "
            "| in-process at the served mix of batch sizes | served / in-process mix "
            "| CPU ms per inference: served / in-process (mix) | vs unbatched |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = {(r["transport"], r["concurrency"], r.get("seq")): r
              for r in scn.get("ratios", [])}
    for row in scn.get("results", []):
        ip = row.get("inprocess_at_reached_batch") or {}
        mixd = row.get("inprocess_at_served_mix") or {}
        mix_cpu = mixd.get("cpu_ms_per_infer")
        r = ratios.get((row.get("transport"), row.get("concurrency"), row.get("seq")), {})
        name = row.get("model")
        vs = r.get(f"{name}_over_unbatched")
        rate = row.get("infer_per_s")
        out.append(
            f"| {row.get('transport', 'http')} | {row.get('seq')} | {name} | {row.get('concurrency')} "
            f"| {rate if rate is not None else '–'} "
            f"| {row.get('p50_ms', '–')} | {row.get('p99_ms', '–')} "
            f"| {row.get('batching', {}).get('mean_batch', '–')} "
            f"| {ip.get('infer_per_s', '–')} (batch {ip.get('batch', '–')}) "
            f"| {r.get(f'{name}_over_inprocess_at_reached', '–')} "
            f"| {mixd.get('infer_per_s', '–')} | {r.get(f'{name}_over_inprocess_at_mix', '–')} "
            f"| {row.get('cpu_ms_per_infer', '–')} / {ip.get('cpu_ms_per_infer', '–')}"
            f"{f' ({mix_cpu})' if mix_cpu else ''} "
            f"| {vs if vs is not None else '–'} |")
    if scn.get("inprocess"):
        out += ["", "onnxruntime in-process, same CPU: " + ", ".join(
            f"{d['seq']} tokens batch {d['batch']}: {d['infer_per_s']} infer/s"
            for d in scn["inprocess"])]
    out.append("")
    return out


if __name__ == "__main__":  # pragma: no cover - run through benchmarks/run.py
    raise SystemExit("run it with: python benchmarks/run.py --only batching")
