"""Pipeline scenarios: the OCR example end to end, ensemble overhead per step, and
python models in-process vs in worker processes.

Unlike the wrk scenarios these need the project's Python (naiad, tritonclient,
rapidocr-onnxruntime for the OCR models): the harness runs them with
``PROJECT_PYTHON`` (the venv running ``run.py`` if it has them). naiad is started as
``python -m naiad`` from the repository root, so the checkout's own code runs.

* ``ocr``: images/s for the PP-OCR pipeline (examples/ocr) served as an ensemble
  and as a BLS model, at client concurrency 1 and 8 (tritonclient HTTP, one
  thread per in-flight image, pinned to the client CPU), against the same ONNX
  models and the same python pre/post-processing called in one process
  without a server (``ocrlib.InProcessOCR``, the ceiling), on the server's CPU.
* ``ensemble_overhead``: an ensemble of K identity python steps vs the K
  steps called one after another by the client, over the in-process API and
  over HTTP; the difference divided by K is the cost of one ensemble step.
* ``python_isolation``: a CPU-bound python model (pure-Python loop) and a
  trivial one, each with 2 instances, served in-process vs
  ``EXECUTION_MODE: process``, at concurrency 1 and 4; unpinned, since the
  point of worker processes is using more than one core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
ROOT = HERE.parent
OCR_DIR = ROOT / "examples" / "ocr"


def _pin(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


class PyNaiad:
    """naiad from this checkout (``python -m naiad``, cwd = repository root)."""

    def __init__(self, python: str, repo: Path, cpus: str | None, log_dir: Path,
                 flags: list[str] | None = None):
        from .servers import free_ports

        self.python = python
        self.repo = repo
        self.cpus = cpus
        self.flags = flags or []
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"naiad-pipelines-{self.http_port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, models: list[str], timeout: float = 180) -> None:
        from .v2 import http_get

        cmd = _pin(self.cpus) + [
            self.python, "-m", "naiad", f"--model-repository={self.repo}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", *self.flags]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        pending = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"naiad exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"naiad not ready: {self.log_path.read_text()[-2000:]}")
            try:
                code, _ = http_get(f"http://{self.url}{pending[0]}", timeout=2.0)
            except OSError:
                code = None
            if code == 200:
                pending.pop(0)
            else:
                time.sleep(0.25)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _child(python: str, cpus: str | None, args: list[str], timeout: float) -> dict:
    """Run ``python -m harness.pipelines ARGS`` and return the JSON it prints last."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    r = subprocess.run(_pin(cpus) + [python, "-m", "harness.pipelines", *args], env=env,
                       cwd=HERE, capture_output=True, text=True, timeout=timeout, check=False)
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(args[:2])} failed (rc {r.returncode}): "
                           f"{r.stderr[-1500:]}")
    return json.loads(line)


def threaded_closed_loop(call, concurrency: int, warmup: float, duration: float) -> dict:
    """``concurrency`` threads calling ``call()`` back to back for ``warmup + duration``
    seconds; the statistics of the calls that started after the warm-up."""
    import threading

    lat: list[float] = []
    lock = threading.Lock()
    record = [False]
    stop_at = time.monotonic() + warmup + duration

    def worker():
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            call()
            took = time.perf_counter() - t0
            with lock:
                if record[0]:
                    lat.append(took)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    with lock:
        record[0] = True
    t0 = time.monotonic()
    for t in threads:
        t.join()
    return {**_stats(lat, time.monotonic() - t0), "concurrency": concurrency}


def _stats(latencies: list[float], elapsed: float, unit_per_req: int = 1) -> dict:
    lat = sorted(latencies)
    n = len(lat)

    def q(p):
        return round(lat[min(n - 1, int(p * n))] * 1000, 2) if n else None

    return {"requests": n, "per_s": round(n * unit_per_req / elapsed, 2) if elapsed else None,
            "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
            "mean_ms": round(sum(lat) / n * 1000, 2) if n else None}


# ------------------------------------------------------------------ children (own process)

def _loadgen(url: str, model: str, inputs_path: str, concurrency: int, duration: float,
             warmup: float) -> dict:
    """Closed-loop tritonclient HTTP load: ``concurrency`` threads, each one request at a time."""
    import threading

    import numpy as np
    import tritonclient.http as httpclient

    spec = json.loads(Path(inputs_path).read_text())

    def make_inputs():
        out = []
        for name, (dtype, file) in spec.items():
            arr = np.load(file)
            t = httpclient.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    lat: list[float] = []
    errors = [0]
    stop_at = [0.0]
    record = [False]
    lock = threading.Lock()

    def worker():
        client = httpclient.InferenceServerClient(url, network_timeout=300)
        inputs = make_inputs()
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                client.infer(model, inputs)
                ok = True
            except Exception:  # noqa: BLE001
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                if record[0]:
                    if ok:
                        lat.append(dt)
                    else:
                        errors[0] += 1
        client.close()

    stop_at[0] = time.monotonic() + warmup + duration
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    with lock:
        record[0] = True
        lat.clear()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {**_stats(lat, elapsed), "errors": errors[0], "concurrency": concurrency}


def _ocr_inprocess(models: str, image: str, concurrency: int, duration: float,
                   warmup: float) -> dict:
    """The ceiling: the same ONNX models and ocrlib code, no server."""

    sys.path.insert(0, str(ROOT / "naiad" / "tools" / "tasks" / "templates" / "ocr"))
    import ocrlib

    repo = Path(models)
    ocr = ocrlib.InProcessOCR(str(repo / "ocr_det/1/model.onnx"),
                              str(repo / "ocr_cls/1/model.onnx"),
                              str(repo / "ocr_rec/1/model.onnx"),
                              str(repo / "ocr_rec_post/1/ppocr_keys.txt"))
    data = Path(image).read_bytes()
    texts = ocr(data)[0]
    return {**threaded_closed_loop(lambda: ocr(data), concurrency, warmup, duration),
            "texts": texts}


def _ensemble_inprocess(repo: str, steps: list[int], iterations: int) -> dict:
    """Per-request latency of chain_K (ensemble) vs K direct calls, over naiad.Server."""
    import asyncio

    import numpy as np

    from naiad import Server

    x = np.arange(4, dtype=np.float32)

    async def main():
        out = {}
        async with Server(model_repository=repo, exit_timeout_secs=10) as server:
            for k in steps:
                async def ens(k=k):
                    return await server.infer_numpy(f"chain_{k}", {"IN": x})

                async def direct(k=k):
                    v = x
                    for i in range(k):
                        v = (await server.infer_numpy(f"ident_{i}", {"X": v}))["Y"]
                    return v

                for fn in (ens, direct):  # warm-up
                    for _ in range(200):
                        await fn()
                best = {}
                for name, fn in (("ensemble", ens), ("direct", direct)):
                    samples = []
                    for _ in range(5):  # best of 5 rounds against noise
                        t0 = time.perf_counter()
                        for _ in range(iterations):
                            await fn()
                        samples.append((time.perf_counter() - t0) / iterations)
                    best[name] = min(samples) * 1e6
                out[k] = best
        return out

    res = asyncio.run(main())
    return {str(k): {"ensemble_us": round(v["ensemble"], 1), "direct_us": round(v["direct"], 1)}
            for k, v in res.items()}


def _http_chain(url: str, steps: list[int], iterations: int) -> dict:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    x = np.arange(4, dtype=np.float32)

    def call(model, name, v):
        t = httpclient.InferInput(name, [4], "FP32")
        t.set_data_from_numpy(v)
        r = client.infer(model, [t])
        return r.as_numpy("OUT" if name == "IN" else "Y")

    out = {}
    for k in steps:
        def ens(k=k):
            return call(f"chain_{k}", "IN", x)

        def direct(k=k):
            v = x
            for i in range(k):
                v = call(f"ident_{i}", "X", v)
            return v

        best = {}
        for name, fn in (("ensemble", ens), ("direct", direct)):
            for _ in range(100):
                fn()
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(iterations):
                    fn()
                samples.append((time.perf_counter() - t0) / iterations)
            best[name] = round(min(samples) * 1e6, 1)
        out[str(k)] = {"ensemble_us": best["ensemble"], "direct_us": best["direct"]}
    client.close()
    return out


def child_main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "loadgen":
        url, model, inputs, c, d, w = argv[1:7]
        res = _loadgen(url, model, inputs, int(c), float(d), float(w))
    elif kind == "ocr_inprocess":
        models, image, c, d, w = argv[1:6]
        res = _ocr_inprocess(models, image, int(c), float(d), float(w))
    elif kind == "ensemble_inprocess":
        res = _ensemble_inprocess(argv[1], [int(k) for k in argv[2].split(",")], int(argv[3]))
    elif kind == "http_chain":
        res = _http_chain(argv[1], [int(k) for k in argv[2].split(",")], int(argv[3]))
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(res))
    return 0


# ------------------------------------------------------------------ scenarios

def _python_for(names: list[str]) -> tuple[str | None, str]:
    probe = "; ".join(f"import {n}" for n in names)
    for cand in (str(ROOT / ".venv" / "bin" / "python"), sys.executable):
        if os.path.exists(cand) and subprocess.run(
                [cand, "-c", probe], capture_output=True, check=False, cwd=ROOT).returncode == 0:
            return cand, ""
    return None, f"no Python with {', '.join(names)}"


def _render_image(path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=40)
    img = Image.new("RGB", (640, 280), "white")
    draw = ImageDraw.Draw(img)
    for xy, text in (((30, 30), "HELLO NAIAD"), ((30, 130), "inference 2024"),
                     ((360, 200), "Triton")):
        draw.text(xy, text, font=font, fill="black")
    img.save(path)


def run_ocr(ctx, work: Path, log_dir: Path, log) -> dict:
    py, why = _python_for(["naiad", "tritonclient.http", "rapidocr_onnxruntime", "PIL"])
    scn = {"description": "PP-OCR (examples/ocr) end to end: naiad ensemble and BLS over "
                          "HTTP vs the same code in one process", "results": []}
    if py is None:
        scn["error"] = why
        return scn
    repo = work / "repo_ocr"
    subprocess.run([py, str(OCR_DIR / "setup_models.py"), "--output", str(repo)], check=True,
                   capture_output=True, cwd=ROOT)
    image = work / "ocr_words.png"
    subprocess.run([py, "-c", "import sys; sys.path.insert(0, 'benchmarks'); "
                    "from harness.pipelines import _render_image; from pathlib import Path; "
                    f"_render_image(Path({str(image)!r}))"], check=True, cwd=ROOT)
    inputs = work / "ocr_inputs.json"
    npy = work / "ocr_image.npy"
    subprocess.run([py, "-c", "import numpy as np, sys; "
                    f"np.save({str(npy)!r}, np.frombuffer(open({str(image)!r}, 'rb').read(), "
                    "dtype=np.uint8))"], check=True)
    inputs.write_text(json.dumps({"IMAGE": ["UINT8", str(npy)]}))
    levels = [1, 8]
    dur, warm = ctx.args.duration, ctx.args.warmup
    server = PyNaiad(py, repo, ctx.server_cpus, log_dir)
    server.start(["ocr", "ocr_bls"])
    scn["server_cpus"] = ctx.server_cpus
    scn["client_cpus"] = ctx.client_cpus
    rounds = 1 if ctx.args.quick else 3
    scn["rounds"] = rounds
    try:
        for c in levels:
            # the machine is shared: the three paths take turns, round after round, and
            # each reports its best round
            best: dict[str, dict] = {}
            for _ in range(rounds):
                for path in ("naiad ocr", "naiad ocr_bls", "in-process"):
                    if path == "in-process":
                        r = _child(py, ctx.server_cpus, ["ocr_inprocess", str(repo), str(image),
                                                         str(c), str(dur), str(warm)],
                                   dur + warm + 600)
                        scn["texts"] = r.pop("texts", None)
                    else:
                        r = _child(py, ctx.client_cpus, ["loadgen", server.url, path.split()[1],
                                                         str(inputs), str(c), str(dur),
                                                         str(warm)], dur + warm + 600)
                    log(f"  OCR {path:<14} c={c}: {r['per_s']} images/s, p50 {r['p50_ms']} ms"
                        f"{' ERRORS ' + str(r['errors']) if r.get('errors') else ''}")
                    if path not in best or (r["per_s"] or 0) > (best[path]["per_s"] or 0):
                        best[path] = r
            for path, r in best.items():
                scn["results"].append({"server": path, **r})
    finally:
        server.stop()
    return scn


IDENT_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
"""


def _write_chain_repo(repo: Path, steps: list[int]) -> None:
    if repo.exists():
        shutil.rmtree(repo)
    for i in range(max(steps)):
        d = repo / f"ident_{i}"
        (d / "1").mkdir(parents=True)
        (d / "config.pbtxt").write_text(textwrap.dedent(f"""
            name: "ident_{i}"
            backend: "python"
            max_batch_size: 0
            input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """))
        (d / "1" / "model.py").write_text(IDENT_PY)
    for k in steps:
        d = repo / f"chain_{k}"
        (d / "1").mkdir(parents=True)
        stp = []
        for i in range(k):
            src = "IN" if i == 0 else f"t{i}"
            dst = "OUT" if i == k - 1 else f"t{i + 1}"
            stp.append(f'{{ model_name: "ident_{i}" model_version: -1 '
                       f'input_map {{ key: "X" value: "{src}" }} '
                       f'output_map {{ key: "Y" value: "{dst}" }} }}')
        (d / "config.pbtxt").write_text(
            f'name: "chain_{k}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
            'input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            f"ensemble_scheduling {{ step [ {', '.join(stp)} ] }}\n")


def run_ensemble_overhead(ctx, work: Path, log_dir: Path, log) -> dict:
    py, why = _python_for(["naiad", "tritonclient.http"])
    scn = {"description": "ensemble of K identity python steps vs the K steps called "
                          "directly; per-request latency (best of 5 rounds)", "results": {}}
    if py is None:
        scn["error"] = why
        return scn
    steps = [1, 4, 8]
    repo = work / "repo_chain"
    _write_chain_repo(repo, steps)
    iters = 300 if ctx.args.quick else 2000
    r = _child(py, ctx.server_cpus, ["ensemble_inprocess", str(repo),
                                     ",".join(map(str, steps)), str(iters)], 1200)
    scn["results"]["inprocess"] = r
    for k, v in r.items():
        log(f"  ensemble in-process K={k}: ensemble {v['ensemble_us']} us, direct "
            f"{v['direct_us']} us")
    server = PyNaiad(py, repo, ctx.server_cpus, log_dir)
    server.start([f"chain_{k}" for k in steps])
    try:
        r = _child(py, ctx.client_cpus, ["http_chain", server.url, ",".join(map(str, steps)),
                                         str(max(100, iters // 4))], 1200)
    finally:
        server.stop()
    scn["results"]["http"] = r
    for k, v in r.items():
        log(f"  ensemble over HTTP K={k}: ensemble {v['ensemble_us']} us, K direct requests "
            f"{v['direct_us']} us")
    return scn


SPIN_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "N").as_numpy()[0])
            acc = 0
            for i in range(n):  # pure-Python work: holds the GIL
                acc += i * i % 7
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                "ACC", np.array([acc], np.int64))]))
        return out
"""


def run_python_isolation(ctx, work: Path, log_dir: Path, log) -> dict:
    py, why = _python_for(["naiad", "tritonclient.http"])
    scn = {"description": "CPU-bound (pure-Python loop, N=400000) and trivial (N=0) python "
                          "model, 2 instances, in-process vs EXECUTION_MODE process, "
                          "tritonclient HTTP closed loop; server and client unpinned",
           "results": []}
    if py is None:
        scn["error"] = why
        return scn
    repo = work / "repo_isolation"
    if repo.exists():
        shutil.rmtree(repo)
    for name, mode in (("spin_inproc", ""), ("spin_process", "process")):
        d = repo / name
        (d / "1").mkdir(parents=True)
        extra = (f'parameters {{ key: "EXECUTION_MODE" value: {{ string_value: "{mode}" }} }}'
                 if mode else "")
        (d / "config.pbtxt").write_text(textwrap.dedent(f"""
            name: "{name}"
            backend: "python"
            max_batch_size: 0
            input [ {{ name: "N" data_type: TYPE_INT64 dims: [ 1 ] }} ]
            output [ {{ name: "ACC" data_type: TYPE_INT64 dims: [ 1 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 2 }} ]
        """) + extra + "\n")
        (d / "1" / "model.py").write_text(SPIN_PY)
    npy_heavy, npy_light = work / "spin_heavy.npy", work / "spin_light.npy"
    subprocess.run([py, "-c", "import numpy as np; "
                    f"np.save({str(npy_heavy)!r}, np.array([400000], np.int64)); "
                    f"np.save({str(npy_light)!r}, np.array([0], np.int64))"], check=True)
    heavy, light = work / "spin_heavy.json", work / "spin_light.json"
    heavy.write_text(json.dumps({"N": ["INT64", str(npy_heavy)]}))
    light.write_text(json.dumps({"N": ["INT64", str(npy_light)]}))
    server = PyNaiad(py, repo, None, log_dir)
    server.start(["spin_inproc", "spin_process"])
    dur, warm = ctx.args.duration, ctx.args.warmup
    try:
        for load, inputs in (("cpu_bound", heavy), ("trivial", light)):
            for c in (1, 2, 4):
                for model in ("spin_inproc", "spin_process"):
                    r = _child(py, None, ["loadgen", server.url, model, str(inputs), str(c),
                                          str(dur), str(warm)], dur + warm + 600)
                    scn["results"].append({"model": model, "load": load, **r})
                    log(f"  isolation {load:<9} {model:<12} c={c}: {r['per_s']} req/s, p50 "
                        f"{r['p50_ms']} ms")
    finally:
        server.stop()
    return scn


def render(scenarios: dict) -> list[str]:
    """Markdown sections for the pipeline scenarios present in a run."""
    out: list[str] = []
    o = scenarios.get("ocr")
    if o:
        out += ["## OCR pipeline (examples/ocr) — images/s end to end", "",
                ("One 640×280 PNG with three words per request, tritonclient HTTP closed loop "
                 f"(client on CPU {o.get('client_cpus') or 'unpinned'}), server on CPU "
                 f"{o.get('server_cpus') or 'unpinned'}; in-process = the same ONNX models and "
                 "the same `ocrlib` python code with onnxruntime called directly, on the "
                 "server's CPU, with as many threads as the concurrency. Best of "
                 f"{o.get('rounds', 1)} interleaved rounds per path."), ""]
        if o.get("error"):
            out.append(f"- scenario error: {o['error']}")
        out += ["| concurrency | path | images/s | p50 ms | p99 ms | errors |",
                "|---:|---|---:|---:|---:|---:|"]
        for r in o.get("results", []):
            out.append(f"| {r.get('concurrency')} | {r.get('server')} | {r.get('per_s')} | "
                       f"{r.get('p50_ms')} | {r.get('p99_ms')} | {r.get('errors', 0)} |")
        out.append("")
    e = scenarios.get("ensemble_overhead")
    if e:
        out += ["## Ensemble overhead per step", "",
                ("chain_K = an ensemble of K identity python steps; direct = the client "
                 "calls the K steps itself, one after another. Per-request µs, best of 5 "
                 "rounds. Overhead per step = (ensemble − direct) / K for the in-process API "
                 "(what the ensemble scheduler costs beyond the steps), and over HTTP the "
                 "saving of one ensemble request over K requests."), ""]
        if e.get("error"):
            out.append(f"- scenario error: {e['error']}")
        out += ["| K | in-process ensemble µs | in-process direct µs | µs per step "
                "| HTTP ensemble µs | HTTP K requests µs |", "|---:|---:|---:|---:|---:|---:|"]
        ip, hp = e.get("results", {}).get("inprocess", {}), e.get("results", {}).get("http", {})
        for k in sorted(set(ip) | set(hp), key=int):
            a, b = ip.get(k, {}), hp.get(k, {})
            per = (round((a["ensemble_us"] - a["direct_us"]) / int(k), 1)
                   if a.get("ensemble_us") is not None else None)
            out.append(f"| {k} | {a.get('ensemble_us')} | {a.get('direct_us')} | {per} | "
                       f"{b.get('ensemble_us')} | {b.get('direct_us')} |")
        out.append("")
    p = scenarios.get("python_isolation")
    if p:
        out += ["## Python models in-process vs in worker processes", "",
                (p.get("description", "") + "."), ""]
        if p.get("error"):
            out.append(f"- scenario error: {p['error']}")
        out += ["| load | concurrency | in-process req/s | in-process p50 ms "
                "| process req/s | process p50 ms |", "|---|---:|---:|---:|---:|---:|"]
        rows = p.get("results", [])
        seen = []
        for r in rows:
            if (r["load"], r["concurrency"]) not in seen:
                seen.append((r["load"], r["concurrency"]))
        for load, c in seen:
            a = next((r for r in rows if r["load"] == load and r["concurrency"] == c
                      and r["model"] == "spin_inproc"), {})
            b = next((r for r in rows if r["load"] == load and r["concurrency"] == c
                      and r["model"] == "spin_process"), {})
            out.append(f"| {load} | {c} | {a.get('per_s')} | {a.get('p50_ms')} | "
                       f"{b.get('per_s')} | {b.get('p50_ms')} |")
        out.append("")
    return out


RUNNERS = {"ocr": run_ocr, "ensemble_overhead": run_ensemble_overhead,
           "python_isolation": run_python_isolation}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
