"""Load generators, one per transport.

A transport turns a transport-neutral :class:`~harness.v2.InferRequest` into
load against one server at one concurrency and returns a :class:`Measurement`.

* ``http``: wrk + ``infer.lua`` (binary tensor data extension).
* ``grpc``: h2load posting one framed ``inference.ModelInferRequest`` (tensors in
  ``raw_input_contents``, built by ``grpc_wire``) to
  ``/inference.GRPCInferenceService/ModelInfer`` with ``content-type:
  application/grpc`` and ``te: trailers``, one request in flight per
  connection. h2load counts HTTP statuses and a gRPC error is an HTTP 200
  without a body, so before a server is measured one request is checked with
  nghttp (grpc-status 0, outputs equal to its HTTP answer) and the size of its
  response body noted; a measurement counts as successful only the responses
  whose bytes arrived (DATA bytes / that size). Latencies come from h2load's
  per-request log.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import grpc_wire
from .v2 import InferRequest, http_infer

LUA = Path(__file__).resolve().parent / "infer.lua"


@dataclass
class Measurement:
    transport: str
    concurrency: int
    duration_s: float
    requests: int            # completed requests (any status)
    ok: int                  # 200 responses
    errors: int              # non-200 + socket errors + timeouts
    infer_per_s: float       # ok responses x batch size / second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    batch_size: int = 1
    client_threads: int = 1
    error_detail: dict = field(default_factory=dict)
    tool: str = ""

    @property
    def flagged(self) -> bool:
        return self.errors > 0 or self.ok == 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flagged"] = self.flagged
        return d


def ensure_tools(need: tuple[str, ...] = ("wrk", "h2load")) -> None:
    """Install wrk / h2load from Debian if missing (they are not pip packages)."""
    pkgs = {"wrk": "wrk", "h2load": "nghttp2-client"}
    missing = [t for t in need if not shutil.which(t)]
    if not missing:
        return
    names = sorted({pkgs[t] for t in missing})
    print(f"[bench] {', '.join(missing)} not found: installing Debian package(s) "
          f"{' '.join(names)} with apt-get (needs root)...", flush=True)
    sudo = [] if _is_root() else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None or not shutil.which("apt-get"):
        raise SystemExit(f"[bench] cannot install {' '.join(names)}: no apt-get/root. "
                         f"Install them yourself: apt-get install -y {' '.join(names)}")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for cmd in (sudo + ["apt-get", "update", "-q"],
                sudo + ["apt-get", "install", "-y", "-q", *names]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"[bench] '{' '.join(cmd)}' failed:\n{r.stdout[-2000:]}"
                             f"{r.stderr[-2000:]}")
    still = [t for t in missing if not shutil.which(t)]
    if still:
        raise SystemExit(f"[bench] still missing after install: {still}")


def _is_root() -> bool:
    import os
    return os.geteuid() == 0


def tool_versions() -> dict:
    out = {}
    for tool, args in (("wrk", ["-v"]), ("h2load", ["--version"])):
        if shutil.which(tool):
            r = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
            text = (r.stdout + r.stderr).strip()
            out[tool] = text.splitlines()[0].split(" Copyright")[0] if text else "?"
    return out


class HttpWrk:
    name = "http"
    tool = "wrk"

    def __init__(self, cpus: str | None, max_threads: int = 1, timeout_s: int = 30):
        self.cpus = cpus
        self.max_threads = max_threads
        self.timeout_s = timeout_s
        self._tmp = Path(tempfile.mkdtemp(prefix="naiad-bench-"))

    def threads_for(self, concurrency: int) -> int:
        # One wrk thread drives many connections (epoll); more threads than
        # pinned client cores only adds context switches.
        return max(1, min(concurrency, self.max_threads))

    def run(self, server, req: InferRequest, concurrency: int, duration_s: int,
            batch_size: int = 1) -> Measurement:
        """Drive ``server`` (a harness.servers.Server: .base_url, .ports) with ``req``."""
        base_url = server.base_url
        body, hlen = req.http_binary_body()
        body_file = self._tmp / f"body-{req.model}.bin"
        body_file.write_bytes(body)
        threads = self.threads_for(concurrency)
        cmd = ([] if not self.cpus else ["taskset", "-c", self.cpus]) + [
            "wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{int(duration_s)}s",
            "--timeout", f"{self.timeout_s}s", "-s", str(LUA), base_url,
            "--", str(body_file), str(hlen), req.http_path]
        r = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True,
                           timeout=duration_s + self.timeout_s + 60, check=False)
        line = next((x for x in r.stdout.splitlines() if x.startswith("NAIAD_WRK_JSON ")), None)
        if r.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed (rc {r.returncode}): {r.stdout[-1500:]} "
                               f"{r.stderr[-1500:]}")
        d = json.loads(line.split(" ", 1)[1])
        dur = d["duration_us"] / 1e6
        sock = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
        ok = d["requests"] - d["non200"]
        return Measurement(
            transport=self.name, concurrency=concurrency, duration_s=round(dur, 3),
            requests=d["requests"], ok=ok, errors=d["non200"] + sock,
            infer_per_s=round(ok * batch_size / dur, 2) if dur else 0.0,
            p50_ms=d["p50_us"] / 1e3, p90_ms=d["p90_us"] / 1e3, p99_ms=d["p99_us"] / 1e3,
            mean_ms=round(d["lat_mean_us"] / 1e3, 3), max_ms=d["lat_max_us"] / 1e3,
            batch_size=batch_size, client_threads=threads, tool=self.tool,
            error_detail={k: d[k] for k in ("non200", "err_connect", "err_read", "err_write",
                                            "err_timeout", "first_error") if d[k]},
        )

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


class GrpcH2load:
    name = "grpc"
    tool = "h2load"

    def __init__(self, cpus: str | None, max_threads: int = 1, timeout_s: int = 30):
        self.cpus = cpus
        self.max_threads = max_threads
        self.timeout_s = timeout_s
        self._tmp = Path(tempfile.mkdtemp(prefix="naiad-bench-grpc-"))
        self._response_bytes: dict[tuple, int] = {}

    def threads_for(self, concurrency: int) -> int:
        return max(1, min(concurrency, self.max_threads))

    def check(self, server, req: InferRequest) -> int:
        """One verified request: grpc-status 0 and the same outputs as over HTTP.

        Returns the size of a successful response body (framed), remembered
        per server and model.
        """
        key = (server.name, server.grpc_port, req.model)
        if key not in self._response_bytes:
            outputs, size = grpc_wire.grpc_infer(server.grpc_port, req)
            expected = http_infer(server.base_url, req)
            for name, want in expected.items():
                got = outputs.get(name)
                if got is None or got.datatype != want.datatype or \
                        list(got.shape) != list(want.shape):
                    raise RuntimeError(f"gRPC output {name} differs from HTTP: {got} vs {want}")
                a, b = got.values(), want.values()
                tol = 1e-5 if want.datatype.startswith("FP") else 0
                if len(a) != len(b) or any(abs(x - y) > tol for x, y in zip(a, b)):
                    raise RuntimeError(f"gRPC output {name} values differ from HTTP")
            self._response_bytes[key] = size
        return self._response_bytes[key]

    def run(self, server, req: InferRequest, concurrency: int, duration_s: int,
            batch_size: int = 1) -> Measurement:
        response_bytes = self.check(server, req)
        body_file = self._tmp / f"body-{req.model}.grpc"
        body_file.write_bytes(grpc_wire.frame(grpc_wire.encode_infer_request(req)))
        log_file = self._tmp / f"log-{server.name}-{concurrency}.tsv"
        threads = self.threads_for(concurrency)
        cmd = ([] if not self.cpus else ["taskset", "-c", self.cpus]) + [
            "h2load", "-c", str(concurrency), "-m", "1", "-t", str(threads),
            "-D", str(int(duration_s)), "-N", str(self.timeout_s), "--log-file", str(log_file),
            "-d", str(body_file)]
        for h in grpc_wire.GRPC_HEADERS:
            cmd += ["-H", h]
        cmd.append(f"http://127.0.0.1:{server.grpc_port}{grpc_wire.GRPC_PATH}")
        r = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True,
                           timeout=duration_s + self.timeout_s + 60, check=False)
        out = r.stdout
        fin = re.search(r"finished in ([\d.]+)(m?s)", out)
        reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        traffic = re.search(r"\((\d+)\) data", out)
        if r.returncode != 0 or not (fin and reqs and traffic):
            raise RuntimeError(f"h2load failed (rc {r.returncode}): {out[-1500:]} "
                               f"{r.stderr[-1500:]}")
        dur = float(fin.group(1)) / (1000.0 if fin.group(2) == "ms" else 1.0)
        _, _, done, succeeded, failed, errored, timeouts = (int(x) for x in reqs.groups())
        ok = min(succeeded, int(traffic.group(1)) // response_bytes)
        lat = sorted(int(line.split("\t")[2]) for line in
                     log_file.read_text().splitlines() if line.count("\t") >= 2)
        log_file.unlink(missing_ok=True)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e3 if lat else 0.0

        detail = {k: v for k, v in (("grpc_errors", succeeded - ok), ("failed", failed),
                                    ("errored", errored), ("timeout", timeouts)) if v}
        return Measurement(
            transport=self.name, concurrency=concurrency, duration_s=round(dur, 3),
            requests=done, ok=ok, errors=(done - ok) + errored,
            infer_per_s=round(ok * batch_size / dur, 2) if dur else 0.0,
            p50_ms=pct(0.50), p90_ms=pct(0.90), p99_ms=pct(0.99),
            mean_ms=round(sum(lat) / len(lat) / 1e3, 3) if lat else 0.0,
            max_ms=lat[-1] / 1e3 if lat else 0.0,
            batch_size=batch_size, client_threads=threads, tool=self.tool,
            error_detail=detail)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


TRANSPORTS = {"http": HttpWrk, "grpc": GrpcH2load}
