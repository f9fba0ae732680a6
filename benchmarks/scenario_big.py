"""Scenario "big_tensors": an FP32 identity on 4 MB and 64 MB tensors, naiad vs the reference.

Both servers serve the same python-backend identity model
(``benchmarks/.work/repo_big/identity_fp32``: INPUT0 FP32 [-1] -> OUTPUT0,
the input array handed back as the output) with ``--http-max-input-size``
raised to 256 MB so that a 64 MB tensor and its JSON header fit. Each size
goes over three paths, from ``harness/pyclient.py``:

* ``aiohttp``: HTTP with the binary tensor data extension (input and output
  binary);
* ``grpc-aio``: gRPC ``raw_input_contents`` / ``raw_output_contents``;
* ``aiohttp-shm``: system shared memory for the input and the output (the
  request and response are JSON only).

at concurrency 1 and 4, naiad and the reference interleaved, ``repeats``
times; infer/s, latency, server CPU per request (process and children), and
MB/s of payload (input + output). docs/performance.md says where naiad
copies the payload on each path.
"""

from __future__ import annotations

import statistics

import scenario_clients as sc
from harness.servers import NaiadServer, ReferenceTriton, pin_prefix
from harness.v2 import InferRequest, Tensor, http_infer

SIZES_MB = (4, 64)
CLIENTS = ("aiohttp", "grpc-aio", "aiohttp-shm")
LEVELS = (1, 4)
MAX_INPUT = 256 * 1024 * 1024

CONFIG = """name: "identity_fp32"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

MODEL_PY = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
'''


class _Reference(ReferenceTriton):
    """The reference with extra tritonserver flags."""

    def __init__(self, *a, flags=(), **kw):
        super().__init__(*a, **kw)
        self.flags = list(flags)

    def _launch(self) -> int:
        import subprocess
        from pathlib import Path

        from harness.servers import ServerUnavailable
        ref = Path(__import__("os").environ.get("NAIAD_REF_DIR",
                                                Path.home() / ".cache" / "naiad-reference"))
        self.log_path = ref / f"triton-{self.http_port}.log"
        setup = subprocess.run(["bash", str(self.script), "setup"], capture_output=True,
                               text=True, timeout=900, check=False)
        if setup.returncode != 0:
            raise ServerUnavailable(f"triton.sh setup failed: {setup.stderr[-2000:]}")
        cmd = pin_prefix(self.cpus) + [
            "bash", str(self.script), "start", str(self.repo), str(self.http_port),
            str(self.grpc_port), str(self.metrics_port), *self.flags]
        self.info["cmd"] = cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL, check=False, start_new_session=True)
        out = r.stdout.strip().splitlines()
        if r.returncode != 0 or not out or not out[-1].strip().isdigit():
            raise ServerUnavailable(f"triton.sh start failed (rc {r.returncode}): "
                                    f"{r.stdout[-1000:]} {r.stderr[-1000:]}")
        return int(out[-1].strip())


def write_repo(work):
    repo = work / "repo_big"
    vdir = repo / "identity_fp32" / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    (repo / "identity_fp32" / "config.pbtxt").write_text(CONFIG)
    (vdir / "model.py").write_text(MODEL_PY)
    return repo


def request(mb: int) -> InferRequest:
    n = mb * 1024 * 1024 // 4
    return InferRequest(model="identity_fp32",
                        inputs=[Tensor("INPUT0", "FP32", [n], bytes(n * 4))],
                        outputs=["OUTPUT0"])


def run(ctx, env) -> dict:
    log = env.log
    repeats = getattr(ctx.args, "repeats", None) or (1 if ctx.args.quick else 3)
    repo = write_repo(env.WORK)
    scn = {"description": "FP32 identity on 4 MB and 64 MB tensors over HTTP binary, gRPC raw "
                          "contents and system shared memory",
           "sizes_mb": list(SIZES_MB), "clients": list(CLIENTS), "concurrency": list(LEVELS),
           "repeats": repeats, "servers": {}, "results": [], "summary": []}
    naiad_exe, why = NaiadServer.find_exe(env.REPO_ROOT)
    flags = [f"--http-max-input-size={MAX_INPUT}"]  # naiad only: Triton 2.51 has no such flag
    servers = [NaiadServer(repo, ctx.server_cpus, env.LOGS, naiad_exe, extra_args=flags),
               _Reference(repo, ctx.server_cpus, env.LOGS, env.REFERENCE_SCRIPT)]
    small = InferRequest(model="identity_fp32",
                         inputs=[Tensor.pack("INPUT0", "FP32", [4], [1.0, 2.0, 3.0, 4.0])],
                         outputs=["OUTPUT0"])

    def check(s):
        out = http_infer(s.base_url, small)
        if out["OUTPUT0"].values() != [1.0, 2.0, 3.0, 4.0]:
            raise AssertionError(f"identity answered {out['OUTPUT0'].values()}")

    try:
        running = sc.start_servers(env, scn, servers, naiad_exe, why, ["identity_fp32"], check)
        if not running:
            scn["error"] = "no server available"
            return scn
        for mb in SIZES_MB:
            req = request(mb)
            for client in CLIENTS:
                for c in LEVELS:
                    per: dict[str, list] = {s.name: [] for s in running}
                    for _ in range(repeats):
                        for s in running:
                            row = sc.measure(ctx, env, s, client, req, c, ctx.args.duration)
                            row["size_mb"] = mb
                            if row.get("infer_per_s"):
                                row["payload_mb_per_s"] = round(row["infer_per_s"] * 2 * mb, 1)
                            scn["results"].append(row)
                            per[s.name].append(row)
                            log(f"  {mb} MB" + sc._line(row))
                    summ = {"size_mb": mb, "client": client, "concurrency": c}
                    for name, rows in per.items():
                        good = [r for r in rows if r.get("infer_per_s") is not None]
                        d = {"ok_repeats": len(good)}
                        for k in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_req"):
                            vals = [r[k] for r in good if r.get(k) is not None]
                            if vals:
                                d[k] = round(statistics.median(vals), 3)
                                d[k + "_range"] = [min(vals), max(vals)]
                        fails = [r.get("failure") for r in rows if r.get("failure")]
                        if fails:
                            d["failure"] = fails[0][:300]
                        summ[name] = d
                    n, r = summ.get("naiad", {}), summ.get("reference", {})
                    for k in ("infer_per_s", "server_cpu_us_per_req"):
                        if n.get(k) and r.get(k):
                            summ[f"{k}_naiad_over_reference"] = round(n[k] / r[k], 3)
                    scn["summary"].append(summ)
    finally:
        for s in servers:
            s.stop()
    scn["markdown"] = render(scn)
    return scn


def render(scn: dict) -> list[str]:
    out = ["## Big tensors — FP32 identity, 4 MB and 64 MB", "",
           ("Median of the repeats (range in brackets). Payload per request: the input and "
            "the same-sized output. `aiohttp-shm`: input and output in system shared memory "
            "regions registered once per client slot."), ""]
    if scn.get("error"):
        out += [f"- scenario error: {scn['error']}", ""]
    out += ["| size | path | c | naiad infer/s | reference infer/s | naiad / ref | "
            "naiad p50 ms | ref p50 ms | server CPU ms/req naiad | ref |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ms(d):
        v = d.get("server_cpu_us_per_req")
        return "–" if v is None else f"{v / 1000:.2f}"

    for s in scn.get("summary", []):
        n, r = s.get("naiad", {}), s.get("reference", {})
        out.append(
            f"| {s['size_mb']} MB | {s['client']} | {s['concurrency']} "
            f"| {sc._cell(n, 'infer_per_s', '{:,.1f}')} | {sc._cell(r, 'infer_per_s', '{:,.1f}')} "
            f"| {s.get('infer_per_s_naiad_over_reference', '–')} "
            f"| {n.get('p50_ms', '–')} | {r.get('p50_ms', '–')} | {ms(n)} | {ms(r)} |")
        for name, d in (("naiad", n), ("reference", r)):
            if d.get("failure"):
                out.append(f"|  | ⚠ {name} failed: {d['failure'][:150]} | | | | | | | | |")
    out.append("")
    return out
