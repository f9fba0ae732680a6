"""Startup scenario: time from launch to ready with 100 small python models.

Both servers load the same generated repository (``benchmarks/.work/
repo_startup/``: 100 copies of a tiny python model, one KIND_CPU instance
each) in their default mode (load everything at start) with their default
``--model-load-thread-count`` (4). The clock starts just before the server
process is launched and stops at the first ``GET /v2/health/ready`` answered
200 (polled every 20 ms); with strict readiness that means every model is
loaded. Each server is started ``runs`` times, interleaved, pinned like the
other scenarios.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from harness.servers import ServerUnavailable
from harness.v2 import http_get

MODEL_COUNT = 100

MODEL_PY = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x + 1)]))
        return out
'''

CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
'''


def make_repository(work: Path, count: int = MODEL_COUNT) -> Path:
    repo = work / "repo_startup"
    for i in range(count):
        name = f"m{i:03d}"
        vdir = repo / name / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (vdir / "model.py").write_text(MODEL_PY)
    return repo


def time_to_ready(server, timeout: float = 600.0) -> float:
    """Launch ``server`` and return seconds until /v2/health/ready answers 200."""
    t0 = time.monotonic()
    server.pid = server._launch()
    url = server.base_url + "/v2/health/ready"
    while True:
        try:
            code, _ = http_get(url, timeout=2.0)
        except OSError:
            code = None
        if code == 200:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise ServerUnavailable(f"{server.name} not ready after {timeout:.0f}s\n"
                                    f"{server.log_tail()}")
        time.sleep(0.02)


def run_startup(make_naiad, make_reference, work: Path, log, runs: int = 3) -> dict:
    """``make_*``: callables returning a fresh, unstarted server on the given repository."""
    repo = make_repository(work)
    scn: dict = {"models": MODEL_COUNT, "repository": str(repo), "runs": runs,
                 "times_s": {"naiad": [], "reference": []}, "errors": {}}
    for i in range(runs):
        for name, make in (("naiad", make_naiad), ("reference", make_reference)):
            if name in scn["errors"]:
                continue
            server = make(repo)
            try:
                t = time_to_ready(server)
                code, body = http_get(server.base_url + "/v2/models/m099/ready")
                if code != 200:
                    raise ServerUnavailable(f"{name}: ready but m099 is not ({code})")
                scn["times_s"][name].append(round(t, 3))
                log(f"startup {name} run {i + 1}: ready after {t:.2f} s")
            except Exception as e:  # noqa: BLE001 - recorded; the other server still runs
                scn["errors"][name] = str(e)
                log(f"startup {name} failed: {e}")
            finally:
                server.stop()
    for name, times in scn["times_s"].items():
        if times:
            scn[f"{name}_median_s"] = statistics.median(times)
    n, r = scn.get("naiad_median_s"), scn.get("reference_median_s")
    scn["reference_over_naiad"] = round(r / n, 2) if n and r else None
    scn["markdown"] = render(scn)
    return scn


def render(scn: dict) -> list[str]:
    out = [f"## startup — {scn['models']} small python models, launch to ready", "",
           ("Seconds from launching the server process to the first `GET /v2/health/ready` "
            "answered 200 (every model loaded), default model-load-thread-count; "
            f"{scn['runs']} launches each, interleaved."), "",
           "| server | runs (s) | median (s) |", "|---|---|---:|"]
    for name in ("naiad", "reference"):
        times = scn["times_s"].get(name) or []
        med = scn.get(f"{name}_median_s")
        cell = ", ".join(f"{t:.2f}" for t in times) or scn["errors"].get(name, "-")
        out.append(f"| {name} | {cell} | {med:.2f} |" if med is not None else
                   f"| {name} | {cell} | - |")
    if scn.get("reference_over_naiad"):
        out += ["", f"naiad is ready {scn['reference_over_naiad']}x sooner than the reference."]
    out.append("")
    return out
