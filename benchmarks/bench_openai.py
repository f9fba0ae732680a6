#!/usr/bin/env python3
"""The OpenAI frontend's benchmark: embeddings throughput and streaming generation.

One command (after ``python examples/openai/setup_models.py``):

    .venv/bin/python benchmarks/bench_openai.py [--duration 8] [--warmup 2] [--concurrency 1,8]

1. **Embeddings** (MiniLM, one sentence per request): requests/s and latency
   through ``POST /v1/embeddings`` (text in, base64 vectors out: what the
   ``openai`` client sends by default) against the same model's
   ``POST /v2/models/minilm/infer`` (token ids in, JSON; the client tokenizes
   outside the timed loop) and against onnxruntime in-process (tokenize +
   ``InferenceSession.run``, the model's session options).
2. **Streaming generation** (tiny_lm, 64 tokens max, temperature 0.8, one
   seed per request): time to first token and tokens/s through
   ``/v1/chat/completions`` with ``stream: true`` at each concurrency,
   against the same generation engine (``tinylm.BatchEngine``, the served
   model's code) driven in-process by as many threads.

The server runs pinned to CPU 0 (``taskset``), the HTTP clients (aiohttp, one
event loop) on CPU 1, the in-process baselines in a child pinned to CPU 0.
Server CPU seconds per request come from /proc. Results: the dated
``benchmarks/results/openai-<UTC time>.{json,md}`` and ``openai-latest.md``.
The numbers move with the machine's load: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ROOT / "examples" / "openai" / "models"
RESULTS = HERE / "results"
SENTENCE = "The quick brown fox jumps over the lazy dog while naiad serves the embeddings."
MESSAGES = [{"role": "user", "content": "What light through yonder window breaks?"}]
MAX_TOKENS = 64
TEMPERATURE = 0.8

sys.path.insert(0, str(HERE))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- load loops (aiohttp, closed loop: each worker sends its next request on an answer) ------


async def _closed_loop(concurrency: int, duration: float, warmup: float, one) -> dict:
    import aiohttp

    latencies: list[float] = []
    extra: list[dict] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stop_at = [0.0]
        measuring = [False]

        async def worker(w: int) -> None:
            i = 0
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                info = await one(session, w, i)
                t1 = time.perf_counter()
                if measuring[0] and t1 <= stop_at[0]:
                    latencies.append(t1 - t0)
                    if info:
                        extra.append(info)
                i += 1

        stop_at[0] = time.perf_counter() + warmup
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        measuring[0] = True
        start = time.perf_counter()
        stop_at[0] = start + duration
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "elapsed_s": elapsed,
            "rps": len(latencies) / elapsed, "p50_ms": _pct(latencies, 0.5) * 1e3,
            "p99_ms": _pct(latencies, 0.99) * 1e3, "extra": extra}


def _post_json(url: str, body: str):
    """A worker step that POSTs the same JSON body and checks for 200."""
    async def one(session, w, i):
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            data = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status} {data[:200]!r}")
        return None
    return one


def _embed_openai(base: str):
    body = json.dumps({"model": "minilm", "input": SENTENCE, "encoding_format": "base64"})
    return _post_json(base + "/v1/embeddings", body)


def _embed_v2(base: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODELS / "minilm" / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = tok.encode(SENTENCE).ids
    n = len(ids)
    body = json.dumps({"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, n], "data": ids},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, n], "data": [1] * n},
        {"name": "token_type_ids", "datatype": "INT64", "shape": [1, n], "data": [0] * n}]})
    return _post_json(base + "/v2/models/minilm/infer", body)


def _stream_openai(base: str):
    async def one(session, w, i):
        body = json.dumps({"model": "tiny_lm", "messages": MESSAGES, "stream": True,
                           "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
                           "seed": 1000 * w + i, "stream_options": {"include_usage": True}})
        t0 = time.perf_counter()
        first = None
        last = None
        tokens = 0
        async with session.post(base + "/v1/chat/completions", data=body,
                                headers={"content-type": "application/json"}) as r:
            if r.status != 200:
                raise RuntimeError(f"chat stream: {r.status} {await r.read()!r}")
            async for line in r.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for ch in chunk.get("choices", ()):
                    if ch["delta"].get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
        if first is None:
            return None
        return {"ttft_s": first - t0, "tokens": tokens,
                "decode_s": (last - first) if last and tokens > 1 else None}
    return one


def _summarise_stream(res: dict) -> dict:
    ex = [e for e in res.pop("extra") if e]
    ttft = [e["ttft_s"] for e in ex]
    rates = [(e["tokens"] - 1) / e["decode_s"] for e in ex if e["decode_s"]]
    total_tokens = sum(e["tokens"] for e in ex)
    res.update(ttft_p50_ms=_pct(ttft, 0.5) * 1e3, ttft_p99_ms=_pct(ttft, 0.99) * 1e3,
               tokens_per_s_per_stream=statistics.median(rates) if rates else None,
               tokens_per_s_total=total_tokens / res["elapsed_s"],
               mean_tokens=total_tokens / max(1, len(ex)))
    return res


# -- in-process baselines (a child pinned to the server's CPU) -------------------------------


def inprocess_main(kind: str, concurrency: int, duration: float, warmup: float) -> int:
    import threading

    import numpy as np  # noqa: F401 - the models need it
    from tokenizers import Tokenizer

    results: dict = {}
    if kind == "embed":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(MODELS / "minilm" / "1" / "model.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(MODELS / "minilm" / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()

        def one(w, i):
            ids = np.array([tok.encode(SENTENCE).ids], dtype=np.int64)
            sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                            "token_type_ids": np.zeros_like(ids)})
            return None
    else:
        sys.path.insert(0, str(MODELS / "tiny_lm" / "1"))
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tinylm import BatchEngine, TextStream, TinyGPT, limit_blas_threads

        limit_blas_threads()  # as the served model does
        folder = MODELS / "tiny_lm"
        lm = TinyGPT(folder)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
        prompt = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) \
            .from_string(template).render(messages=MESSAGES, add_generation_prompt=True)
        eos = lm.config.get("eos_id")
        engine = BatchEngine(lm)  # the served model's engine, driven by this process's threads

        def one(w, i):
            t0 = time.perf_counter()
            ids = tok.encode(prompt, add_special_tokens=False).ids
            stream = TextStream(tok)
            state = {"first": None, "last": None, "n": 0}
            done = threading.Event()

            def emit(token, logprobs=None):
                if token is None or isinstance(token, Exception):
                    done.set()
                    return
                state["n"] += 1
                if stream.push(token):
                    now = time.perf_counter()
                    state["first"] = state["first"] or now
                    state["last"] = now

            engine.submit(emit, lambda: False, ids, MAX_TOKENS, eos, temperature=TEMPERATURE,
                          seed=1000 * w + i)
            done.wait()
            if state["first"] is None:
                return None
            return {"ttft_s": state["first"] - t0, "tokens": state["n"],
                    "decode_s": (state["last"] - state["first"]) if state["n"] > 1 else None}

    latencies: list[float] = []
    extra: list = []
    lock = threading.Lock()
    phase = {"stop": time.perf_counter() + warmup, "measure": False}

    def worker(w):
        i = 0
        while time.perf_counter() < phase["stop"]:
            t0 = time.perf_counter()
            info = one(w, i)
            t1 = time.perf_counter()
            if phase["measure"] and t1 <= phase["stop"]:
                with lock:
                    latencies.append(t1 - t0)
                    extra.append(info)
            i += 1

    def run_all():
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run_all()
    phase["measure"] = True
    start = time.perf_counter()
    phase["stop"] = start + duration
    run_all()
    elapsed = time.perf_counter() - start
    results = {"requests": len(latencies), "elapsed_s": elapsed,
               "rps": len(latencies) / elapsed, "p50_ms": _pct(latencies, 0.5) * 1e3,
               "p99_ms": _pct(latencies, 0.99) * 1e3, "extra": extra}
    if kind == "stream":
        results = _summarise_stream(results)
    else:
        results.pop("extra")
    print(json.dumps(results))
    return 0


def _inprocess(kind: str, concurrency: int, duration: float, warmup: float) -> dict:
    cmd = ["taskset", "-c", "0", sys.executable, str(Path(__file__).resolve()), "--inprocess",
           kind, "--concurrency", str(concurrency), "--duration", str(duration),
           "--warmup", str(warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=duration + warmup + 300)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the run ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--only", choices=("embeddings", "streaming"))
    ap.add_argument("--inprocess", choices=("embed", "stream"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.inprocess:
        return inprocess_main(args.inprocess, levels[0], args.duration, args.warmup)
    for need in (MODELS / "minilm" / "1" / "model.onnx", MODELS / "tiny_lm" / "weights.npz"):
        if not need.exists():
            raise SystemExit(f"{need} is missing: run python examples/openai/setup_models.py")
    from harness.servers import NaiadServer, free_ports

    exe, why = NaiadServer.find_exe(ROOT)
    if exe is None:
        raise SystemExit(why)
    (openai_port,) = free_ports(1)
    logs = HERE / ".work" / "logs"
    server = NaiadServer(MODELS, "0", logs, exe,
                         extra_args=["--allow-openai=true", f"--openai-port={openai_port}",
                                     "--openai-address=127.0.0.1"])
    try:
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    report: dict = {"date_utc": stamp, "machine": {
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "python": platform.python_version(), "shared": "2-core machine shared with other "
        "developers' jobs: compare ratios within this run"},
        "duration_s": args.duration, "warmup_s": args.warmup, "embeddings": {}, "streaming": {}}
    server.start(["minilm", "tiny_lm"])
    try:
        v1 = f"http://127.0.0.1:{openai_port}"
        v2 = server.base_url
        for c in levels if args.only != "streaming" else ():
            row = {}
            for name, one in (("openai_v1", _embed_openai(v1)), ("v2_infer", _embed_v2(v2))):
                cpu0 = _cpu_seconds(server.pid)
                res = asyncio.run(_closed_loop(c, args.duration, args.warmup, one))
                res.pop("extra")
                res["server_cpu_ms_per_request"] = (_cpu_seconds(server.pid) - cpu0) * 1e3 / \
                    max(1, res["requests"])
                row[name] = res
            row["onnxruntime_inprocess"] = _inprocess("embed", c, args.duration, args.warmup)
            row["ratio_v1_over_v2"] = row["openai_v1"]["rps"] / row["v2_infer"]["rps"]
            row["ratio_v1_over_inprocess"] = row["openai_v1"]["rps"] / \
                row["onnxruntime_inprocess"]["rps"]
            report["embeddings"][f"c={c}"] = row
            print(f"[bench] embeddings c={c}: /v1 {row['openai_v1']['rps']:.0f}/s, "
                  f"/v2 {row['v2_infer']['rps']:.0f}/s, in-process "
                  f"{row['onnxruntime_inprocess']['rps']:.0f}/s", flush=True)
        for c in levels if args.only != "embeddings" else ():
            cpu0 = _cpu_seconds(server.pid)
            res = _summarise_stream(asyncio.run(_closed_loop(c, args.duration, args.warmup,
                                                             _stream_openai(v1))))
            res["server_cpu_ms_per_request"] = (_cpu_seconds(server.pid) - cpu0) * 1e3 / \
                max(1, res["requests"])
            base = _inprocess("stream", c, args.duration, args.warmup)
            report["streaming"][f"c={c}"] = {
                "openai_stream": res, "inprocess_loop": base,
                "ttft_ratio": res["ttft_p50_ms"] / base["ttft_p50_ms"],
                "tokens_per_s_ratio": res["tokens_per_s_total"] / base["tokens_per_s_total"]}
            print(f"[bench] streaming c={c}: TTFT {res['ttft_p50_ms']:.1f} ms vs "
                  f"{base['ttft_p50_ms']:.1f} ms in-process; {res['tokens_per_s_total']:.0f} "
                  f"vs {base['tokens_per_s_total']:.0f} tokens/s", flush=True)
    finally:
        server.stop()
    report["machine"]["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"openai-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = _markdown(report)
    (RESULTS / f"openai-{stamp}.md").write_text(md)
    (RESULTS / "openai-latest.md").write_text(md)
    print(md)
    return 0


def _markdown(r: dict) -> str:
    lines = [f"# OpenAI frontend benchmark, {r['date_utc']} (UTC)", "",
             f"{r['duration_s']:.0f} s per measurement after {r['warmup_s']:.0f} s warm-up; "
             f"load average {r['machine']['loadavg_start'][0]:.1f} at start, "
             f"{r['machine']['loadavg_end'][0]:.1f} at end. {r['machine']['shared']}.", "",
             "## Embeddings (MiniLM, one sentence per request)", "",
             "| concurrency | /v1/embeddings req/s | /v2 infer req/s | onnxruntime in-process "
             "req/s | /v1 ÷ /v2 | /v1 p50 ms | /v2 p50 ms | server CPU ms/req /v1 · /v2 |",
             "|---|---|---|---|---|---|---|---|"]
    for level, row in r["embeddings"].items():
        a, b, c = row["openai_v1"], row["v2_infer"], row["onnxruntime_inprocess"]
        lines.append(f"| {level[2:]} | {a['rps']:.0f} | {b['rps']:.0f} | {c['rps']:.0f} | "
                     f"{row['ratio_v1_over_v2']:.2f} | {a['p50_ms']:.2f} | {b['p50_ms']:.2f} | "
                     f"{a['server_cpu_ms_per_request']:.2f} · "
                     f"{b['server_cpu_ms_per_request']:.2f} |")
    lines += ["", f"## Streaming generation (tiny_lm, up to {MAX_TOKENS} tokens, "
                  f"temperature {TEMPERATURE})", "",
              "| concurrency | TTFT p50 ms (stream · in-process) | TTFT p99 ms (stream) | "
              "tokens/s total (stream · in-process) | tokens/s per stream (stream · "
              "in-process) | ratio tokens/s |", "|---|---|---|---|---|---|"]
    for level, row in r["streaming"].items():
        a, b = row["openai_stream"], row["inprocess_loop"]
        lines.append(
            f"| {level[2:]} | {a['ttft_p50_ms']:.1f} · {b['ttft_p50_ms']:.1f} | "
            f"{a['ttft_p99_ms']:.1f} | {a['tokens_per_s_total']:.0f} · "
            f"{b['tokens_per_s_total']:.0f} | {a['tokens_per_s_per_stream'] or 0:.0f} · "
            f"{b['tokens_per_s_per_stream'] or 0:.0f} | {row['tokens_per_s_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
