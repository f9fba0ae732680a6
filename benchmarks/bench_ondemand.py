#!/usr/bin/env python3
"""Many models on one server: cold starts, and Zipf traffic under a memory limit.

One command (MiniLM needs ``benchmarks/export_minilm.py`` once; it is run if needed):

    .venv/bin/python benchmarks/bench_ondemand.py [--rounds 5] [--duration 20] [--concurrency 8]

1. **Cold start**: the first request to a model that is not loaded, with
   ``--model-load-on-demand=true`` (the model is unloaded through the
   repository API before each round): a python model (add_sub), MiniLM
   (onnxruntime) and MiniLM traced to TorchScript (the pytorch backend,
   ``export_minilm.py --torchscript``; needs ``naiad[torch]``). Beside it, the
   same model's warm requests, the server's own load time
   (``naiad_model_load_duration_seconds``), and what a Triton user scripts
   instead: the repository load API, then the request (naiad, and the
   reference Triton 2.51 for the python model: it serves no ONNX or torch).
2. **Zipf traffic over 100 models**: 100 python models holding 8 MiB each,
   requested with Zipf-distributed popularity (s = 1.1, one seeded sequence
   for both servers) by ``--concurrency`` closed-loop HTTP clients: all 100
   loaded at start (naiad's default) against ``--model-load-on-demand`` with
   ``--model-memory-limit`` fitting 10. Requests/s, latency, cold starts,
   evictions, the server's peak resident memory and its CPU per request.

Servers are pinned to CPU 0 (``taskset``), clients to CPU 1, and the
configurations alternate round by round. Results: the dated
``benchmarks/results/ondemand-<UTC time>.{json,md}`` and ``ondemand-latest.md``.
The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
LOGS = WORK / "logs"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from harness import models  # noqa: E402
from harness.servers import NaiadServer, ReferenceTriton, ServerUnavailable  # noqa: E402
from harness.v2 import InferRequest, Tensor, http_get, http_infer  # noqa: E402

MIB = 1024 * 1024
BALLAST = 8 * MIB
ZIPF_S = 1.1
ON_DEMAND = ["--model-control-mode=explicit", "--model-load-on-demand=true"]

BALLAST_PY = '''import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}


class TritonPythonModel:
    def initialize(self, args):
        self.ballast = np.full({ballast}, 7, dtype=np.uint8)  # written: resident

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x + OFFSET)]))
        return out
'''

BALLAST_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
'''


def log(msg: str) -> None:
    print(f"[ondemand {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _post(base: str, path: str, body: dict | None = None, timeout: float = 300) -> int:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(base + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _metrics(server) -> dict[tuple[str, str], float]:
    """{(sample name, model label): value} from the metrics page (naiad_* only)."""
    code, body = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    out: dict[tuple[str, str], float] = {}
    for line in body.decode().splitlines():
        m = re.match(r'^(naiad_\w+)(?:\{(.*)\})? (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            key = (m.group(1), labels.get("model", ""))
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def _total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _wait_unloaded(base: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(base + "/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        states = [i.get("state") for i in json.loads(body) if i.get("name") == name]
        if states and all(s in ("UNAVAILABLE", None) for s in states):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not unload")


class ExplicitTriton(ReferenceTriton):
    """The reference Triton in explicit mode (nothing loaded at start)."""

    def _launch(self) -> int:
        script = self.script
        wrapper = WORK / "triton-explicit.sh"
        wrapper.write_text(f'#!/usr/bin/env bash\nif [ "$1" = start ]; then exec bash '
                           f'"{script}" "$@" --model-control-mode=explicit; fi\n'
                           f'exec bash "{script}" "$@"\n')
        self.script = wrapper
        try:
            return super()._launch()
        finally:
            self.script = script


# -- 1. cold starts ------------------------------------------------------------------------------


def _cold_repo(args) -> tuple[Path, dict[str, InferRequest]]:
    repo = WORK / "repo_ondemand_cold"
    shutil.rmtree(repo, ignore_errors=True)
    models.write_add_sub_repo(repo)
    requests = {"add_sub": models.add_sub_request()}
    if not args.no_minilm:
        import export_minilm as em

        onnx_path, _ = em.model_paths(em.DEFAULT_REPO)
        if not onnx_path.exists():
            log("MiniLM: exporting to ONNX (export_minilm.py)")
            subprocess.run([sys.executable, str(HERE / "export_minilm.py")], timeout=3600,
                           check=False)
        if onnx_path.exists():
            shutil.copytree(em.DEFAULT_REPO / "minilm", repo / "minilm")
            requests["minilm"] = models.minilm_request()
        else:
            log("MiniLM: not exported; its row is skipped")
    if not args.no_torchscript:
        import importlib.util

        from harness import backend_models as bm

        ts_path = WORK / "minilm_torchscript" / "model.pt"
        if importlib.util.find_spec("torch") is None:
            log("TorchScript: torch is not installed here (pip install -e '.[torch]'); "
                "its row is skipped")
        else:
            if not ts_path.exists():
                log("TorchScript: tracing MiniLM (export_minilm.py --torchscript)")
                subprocess.run([sys.executable, str(HERE / "export_minilm.py"), "--torchscript",
                                str(ts_path)], timeout=3600, check=False)
            if ts_path.exists():
                name = "minilm_torchscript"
                (repo / name / "1").mkdir(parents=True)
                (repo / name / "config.pbtxt").write_text(
                    f'name: "{name}"\n' + bm.CONFIGS[name])
                shutil.copy(ts_path, repo / name / "1" / "model.pt")
                toks = models.minilm_tokens()
                seq = models.MINILM_SEQ
                requests[name] = InferRequest(
                    name, [Tensor.pack(f"INPUT__{i}", "INT64", [1, seq], toks[k])
                           for i, k in enumerate(("input_ids", "attention_mask",
                                                  "token_type_ids"))], ["OUTPUT__0"])
            else:
                log("TorchScript: not traced; its row is skipped")
    return repo, requests


def _time_request(base: str, req: InferRequest) -> float:
    t0 = time.perf_counter()
    http_infer(base, req, timeout=600)
    return time.perf_counter() - t0


def run_cold(args, exe: str) -> dict:
    repo, requests = _cold_repo(args)
    out: dict = {"models": {}, "reference": {}}
    naiad = NaiadServer(repo, args.server_cpus, LOGS, exe, ON_DEMAND, name="naiad-ondemand")
    ref = None
    if not args.no_reference:
        ref = ExplicitTriton(repo, args.server_cpus, LOGS, ROOT.parent / "shared" /
                             "reference" / "triton.sh")
    try:
        naiad.start([])
        out["server"] = naiad.info
        for name, req in requests.items():
            row = {"cold_s": [], "load_api_then_request_s": [], "server_load_s": [],
                   "warm_s": []}
            for _ in range(args.rounds):
                # on demand: the first request loads the model
                before = _metrics(naiad)
                row["cold_s"].append(_time_request(naiad.base_url, req))
                after = _metrics(naiad)
                row["server_load_s"].append(
                    after.get(("naiad_model_load_duration_seconds_sum", name), 0.0) -
                    before.get(("naiad_model_load_duration_seconds_sum", name), 0.0))
                row["warm_s"] += [_time_request(naiad.base_url, req) for _ in range(10)]
                _post(naiad.base_url, f"/v2/repository/models/{name}/unload")
                _wait_unloaded(naiad.base_url, name)
                # scripted: the load API, then the request
                t0 = time.perf_counter()
                assert _post(naiad.base_url, f"/v2/repository/models/{name}/load") == 200
                http_infer(naiad.base_url, req, timeout=600)
                row["load_api_then_request_s"].append(time.perf_counter() - t0)
                _post(naiad.base_url, f"/v2/repository/models/{name}/unload")
                _wait_unloaded(naiad.base_url, name)
            out["models"][name] = row
            log(f"cold start {name}: {statistics.median(row['cold_s']) * 1000:.0f} ms "
                f"(warm {statistics.median(row['warm_s']) * 1000:.1f} ms)")
    finally:
        naiad.stop()
    if ref is not None:
        try:
            ref.start([])
            row = {"load_api_then_request_s": [], "warm_s": []}
            req = requests["add_sub"]
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                code = _post(ref.base_url, "/v2/repository/models/add_sub/load")
                if code != 200:
                    raise RuntimeError(f"reference load answered {code}")
                http_infer(ref.base_url, req, timeout=600)
                row["load_api_then_request_s"].append(time.perf_counter() - t0)
                row["warm_s"] += [_time_request(ref.base_url, req) for _ in range(10)]
                _post(ref.base_url, "/v2/repository/models/add_sub/unload")
                _wait_unloaded(ref.base_url, "add_sub")
            out["reference"]["add_sub"] = row
            out["reference_server"] = ref.info
        except (ServerUnavailable, RuntimeError, OSError) as exc:
            out["reference_error"] = str(exc)[:2000]
            log(f"reference Triton unavailable: {str(exc)[:300]}")
        finally:
            ref.stop()
    return out


# -- 2. Zipf traffic ------------------------------------------------------------------------------


def _zipf_repo(count: int) -> Path:
    repo = WORK / f"repo_ondemand_zipf{count}"
    for i in range(count):
        name = f"m{i:03d}"
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(BALLAST_CONFIG.format(name=name))
        (repo / name / "1" / "model.py").write_text(
            BALLAST_PY.format(offset=float(i), ballast=BALLAST))
    return repo


def _zipf_sequence(count: int, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = [f"m{i:03d}" for i in range(count)]
    rng.shuffle(names)
    weights = [1.0 / (k + 1) ** ZIPF_S for k in range(count)]
    return rng.choices(names, weights=weights, k=n)


async def _closed_loop(base: str, sequence: list[str], concurrency: int, duration: float,
                       warmup: float) -> dict:
    import aiohttp

    bodies = {}
    for name in set(sequence):
        req = InferRequest(name, [Tensor.pack("IN", "FP32", [4], [1.0, 2.0, 3.0, 4.0])],
                           ["OUT"])
        body, hlen = req.http_binary_body()
        bodies[name] = (body, {"Content-Type": "application/octet-stream",
                               "Inference-Header-Content-Length": str(hlen)})
    latencies: list[float] = []
    errors: list[str] = []
    state = {"i": 0, "measuring": False}
    t_start = time.perf_counter()
    end = t_start + warmup + duration
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            while time.perf_counter() < end:
                name = sequence[state["i"] % len(sequence)]
                state["i"] += 1
                body, headers = bodies[name]
                t0 = time.perf_counter()
                async with session.post(f"{base}/v2/models/{name}/infer", data=body,
                                        headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                if state["measuring"]:
                    latencies.append(time.perf_counter() - t0)
                    if not ok:
                        errors.append(f"{name}: HTTP {r.status}")

        async def clock() -> None:
            await asyncio.sleep(warmup)
            state["measuring"] = True
            state["t0"] = time.perf_counter()

        await asyncio.gather(clock(), *[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - state.get("t0", t_start)
    return {"requests": len(latencies), "rate": len(latencies) / elapsed,
            "p50_ms": _pct(latencies, 0.5) * 1000, "p99_ms": _pct(latencies, 0.99) * 1000,
            "errors": len(errors), "first_error": errors[0] if errors else ""}


def _client(args, base: str, sequence_file: Path) -> dict:
    """Run the load in a child pinned to the client CPU (this script may not be)."""
    cmd = ([] if not args.client_cpus else ["taskset", "-c", args.client_cpus]) + [
        sys.executable, str(Path(__file__)), "--client", base, "--sequence", str(sequence_file),
        "--concurrency", str(args.concurrency), "--duration", str(args.duration),
        "--warmup", str(args.warmup)]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=args.duration + args.warmup + 600, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("ONDEMAND_JSON ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"client failed (rc {r.returncode}): {r.stderr[-2000:]}")
    return json.loads(line.split(" ", 1)[1])


def run_zipf(args, exe: str) -> dict:
    repo = _zipf_repo(args.models)
    budget = args.budget * (BALLAST + MIB)  # ten models of 8 MiB, with what each adds
    sequence_file = WORK / "zipf-sequence.json"
    sequence_file.write_text(json.dumps(_zipf_sequence(args.models, 200000, seed=11)))
    configs = {
        "all_loaded": [],
        f"budget_{args.budget}": ON_DEMAND + [f"--model-memory-limit={budget}"],
    }
    out: dict = {"budget_bytes": budget, "models": args.models, "ballast_bytes": BALLAST,
                 "zipf_s": ZIPF_S, "rows": []}
    for rnd in range(args.zipf_rounds):
        for name, flags in configs.items():
            server = NaiadServer(repo, args.server_cpus, LOGS, exe, flags, name=name)
            try:
                t0 = time.monotonic()
                server.start([])
                startup = time.monotonic() - t0
                pid = server.pid
                before = _metrics(server)
                cpu0 = _cpu_seconds(pid)
                peak = [0]
                stop = [False]

                def sample(pid=pid, peak=peak, stop=stop) -> None:
                    while not stop[0]:
                        try:
                            peak[0] = max(peak[0], _rss(pid))
                        except OSError:
                            return
                        time.sleep(0.05)

                import threading

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                res = _client(args, server.base_url, sequence_file)
                stop[0] = True
                sampler.join()
                cpu = _cpu_seconds(pid) - cpu0
                after = _metrics(server)
                row = {"config": name, "round": rnd, "startup_s": startup, **res,
                       "peak_rss_mib": peak[0] / MIB, "end_rss_mib": _rss(pid) / MIB,
                       "server_cpu_ms_per_request": cpu * 1000 / max(1, res["requests"]),
                       "cold_starts": _total(after, "naiad_cold_start_requests") -
                       _total(before, "naiad_cold_start_requests"),
                       "evictions": _total(after, "naiad_model_evictions") -
                       _total(before, "naiad_model_evictions"),
                       "loads": _total(after, "naiad_model_loads") -
                       _total(before, "naiad_model_loads")}
                out["rows"].append(row)
                log(f"zipf {name} round {rnd}: {res['rate']:.0f} req/s, p50 "
                    f"{res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, peak RSS "
                    f"{row['peak_rss_mib']:.0f} MiB, {row['evictions']:.0f} evictions, "
                    f"{res['errors']} errors")
            except (ServerUnavailable, RuntimeError) as exc:
                out["rows"].append({"config": name, "round": rnd, "error": str(exc)[:2000]})
                log(f"zipf {name}: {str(exc)[:300]}")
            finally:
                server.stop()
    return out


# -- report ---------------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}" if values else "–"


def report(res: dict) -> str:
    lines = [f"# Many models on one server: load on demand, {res['started']} (UTC)", "",
             f"Load average {res['load_start']} at start, {res['load_end']} at end. 2-core "
             "machine shared with other developers' jobs: compare within this run.", ""]
    cold = res.get("cold")
    if cold:
        lines += ["## Cold start (first request to a model that is not loaded)", "",
                  f"Median of {res['args']['rounds']} rounds; the model is unloaded through the "
                  "repository API between rounds.", "",
                  "| model | naiad on demand: first request ms | its load (server) ms | "
                  "naiad load API + request ms | reference Triton load API + request ms | "
                  "warm request ms (naiad · reference) |",
                  "|---|---|---|---|---|---|"]
        for name, row in cold["models"].items():
            ref = cold.get("reference", {}).get(name)
            ref_load = _ms(ref["load_api_then_request_s"]) if ref else \
                ("not measured" if name != "add_sub" else "unavailable")
            if name != "add_sub":
                ref_load = "– (python backend only)"
            warm = f"{statistics.median(row['warm_s']) * 1000:.1f}"
            if ref:
                warm += f" · {statistics.median(ref['warm_s']) * 1000:.1f}"
            lines.append(f"| {name} | {_ms(row['cold_s'])} | {_ms(row['server_load_s'])} | "
                         f"{_ms(row['load_api_then_request_s'])} | {ref_load} | {warm} |")
        if "minilm_torchscript" not in cold["models"]:
            lines.append("| minilm_torchscript | not measured (torch not installed, or the "
                         "trace failed) | | | | |")
        lines.append("")
    zipf = res.get("zipf")
    if zipf:
        lines += [f"## Zipf traffic over {zipf['models']} models",
                  "", f"Each model holds {zipf['ballast_bytes'] // MIB} MiB; popularity Zipf "
                  f"s = {zipf['zipf_s']}; {res['args']['concurrency']} closed-loop HTTP "
                  f"clients, {res['args']['duration']} s after {res['args']['warmup']} s "
                  f"warm-up. Budget: --model-memory-limit={zipf['budget_bytes']} "
                  f"({zipf['budget_bytes'] / MIB:.0f} MiB).", "",
                  "| config | round | req/s | p50 ms | p99 ms | errors | cold starts | "
                  "evictions | peak RSS MiB | server CPU ms/req | start-up s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in zipf["rows"]:
            if "error" in r:
                lines.append(f"| {r['config']} | {r['round']} | error: {r['error'][:80]} |"
                             + " |" * 8)
                continue
            lines.append(f"| {r['config']} | {r['round']} | {r['rate']:.0f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
                         f"{r['cold_starts']:.0f} | {r['evictions']:.0f} | "
                         f"{r['peak_rss_mib']:.0f} | {r['server_cpu_ms_per_request']:.2f} | "
                         f"{r['startup_s']:.1f} |")
        ok = [r for r in zipf["rows"] if "error" not in r]
        by = {}
        for r in ok:
            by.setdefault(r["config"], []).append(r)
        if len(by) == 2:
            (a, ra), (b, rb) = list(by.items())
            lines += ["", f"Medians: {b} / {a} requests/s = "
                      f"{statistics.median(x['rate'] for x in rb) / statistics.median(x['rate'] for x in ra):.2f}, "  # noqa: E501
                      f"peak RSS = {statistics.median(x['peak_rss_mib'] for x in rb) / statistics.median(x['peak_rss_mib'] for x in ra):.2f}."]  # noqa: E501
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="cold-start rounds per model")
    p.add_argument("--zipf-rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--budget", type=int, default=10, help="models the memory limit fits")
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--no-minilm", action="store_true")
    p.add_argument("--no-torchscript", action="store_true")
    p.add_argument("--only", choices=("cold", "zipf"))
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--sequence", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:  # the load-generating child
        sequence = json.loads(Path(args.sequence).read_text())
        res = asyncio.run(_closed_loop(args.client, sequence, args.concurrency, args.duration,
                                       args.warmup))
        print("ONDEMAND_JSON " + json.dumps(res), flush=True)
        return 0
    if args.no_pin:
        args.server_cpus = args.client_cpus = None
    exe, why = NaiadServer.find_exe(ROOT)
    if exe is None:
        print(why, file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    res: dict = {"started": started, "args": vars(args), "load_start": os.getloadavg()[0],
                 "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                             "python": sys.version.split()[0]}}
    if args.only in (None, "cold"):
        res["cold"] = run_cold(args, exe)
    if args.only in (None, "zipf"):
        res["zipf"] = run_zipf(args, exe)
    res["load_end"] = os.getloadavg()[0]
    res["load_start"] = round(res["load_start"], 1)
    res["load_end"] = round(res["load_end"], 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ondemand-{started}.json").write_text(json.dumps(res, indent=1))
    text = report(res)
    (RESULTS / f"ondemand-{started}.md").write_text(text)
    (RESULTS / "ondemand-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
