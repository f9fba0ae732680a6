#!/usr/bin/env python3
"""How naiad serves gRPC, measured: the designs side by side on the add_sub model.

    python benchmarks/grpc_designs.py [--duration 10] [--concurrency 1,16,64] [--repeat 2]

Servers, all pinned to CPU 0 and driven by the same h2load on CPU 1
(``harness.loadgen.GrpcH2load``, ModelInfer with raw tensors), interleaved per
concurrency level:

* ``native``: naiad's own server core on grpcio's completion queue (the default);
* ``grpcio-sync``: grpcio's public synchronous server, handlers on an elastic
  pool calling ``Model.submit`` directly (``NAIAD_GRPC_SERVER=grpcio``);
* ``grpc-aio``: ``grpc.aio`` on the HTTP event loop, ``await Server.infer`` per
  call (a prototype kept here only for this comparison: ``--serve-aio``);
* ``reference``: the reference Triton 2.51 (python backend) over gRPC.

Results go to ``benchmarks/results/grpc-designs-<stamp>.{json,md}`` and the
Markdown table to stdout; docs/grpc.md quotes them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def serve_aio(argv: list[str]) -> int:
    """naiad with its gRPC frontend replaced by grpc.aio on the HTTP loop (ModelInfer only)."""
    sys.path.insert(0, str(REPO_ROOT))
    import grpc

    from naiad.core.errors import NaiadError, as_naiad_error
    from naiad.frontends import grpc as frontend
    from naiad.protocol import grpc_codec as codec
    from naiad.protocol import grpc_service_pb2 as pb

    class AioFrontend(frontend.GrpcFrontend):
        async def start(self) -> None:
            server = self.server

            async def infer(msg, context):
                try:
                    request, _ = codec.decode_infer_request(msg)
                    response = await server.infer(request)
                    return codec.encode_infer_response(response, request)
                except Exception as exc:
                    err = exc if isinstance(exc, NaiadError) else as_naiad_error(exc)
                    context.set_code(frontend._STATUS[err.kind])
                    context.set_details(err.message)
                    return pb.ModelInferResponse()

            aio = grpc.aio.server(options=self.channel_options())
            aio.add_registered_method_handlers(frontend.SERVICE, {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(
                    infer, request_deserializer=pb.ModelInferRequest.FromString,
                    response_serializer=pb.ModelInferResponse.SerializeToString)})
            self.port = aio.add_insecure_port(f"{self.address}:{self.port}")
            await aio.start()
            self._grpc = aio
            self.kind = "grpc-aio"

        async def stop(self) -> None:
            if self._grpc is not None:
                await self._grpc.stop(1)

    frontend.GrpcFrontend = AioFrontend
    from naiad.cli import main

    return main(argv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--repeat", type=int, default=1, help="measure each level this many times")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--designs", default="native,grpcio-sync,grpc-aio,reference")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    from harness import loadgen, models, report
    from harness.servers import NaiadServer, ReferenceTriton, descendants

    loadgen.ensure_tools(("h2load",))
    work = HERE / ".work"
    repo = models.write_add_sub_repo(work / "repo_add_sub")
    req = models.add_sub_request()
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = args.designs.split(",")
    python = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="naiad-designs-"))

    def wrapper(name: str, env: dict, extra: list[str]) -> str:
        path = tmp / name
        exports = "".join(f"export {k}={v}\n" for k, v in env.items())
        path.write_text(f"#!/bin/sh\ncd {REPO_ROOT}\n{exports}exec {python} {' '.join(extra)} "
                        '"$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        return str(path)

    launchers = {
        "native": wrapper("native", {"NAIAD_GRPC_SERVER": "native"}, ["-m", "naiad"]),
        "grpcio-sync": wrapper("sync", {"NAIAD_GRPC_SERVER": "grpcio"}, ["-m", "naiad"]),
        "grpc-aio": wrapper("aio", {}, [str(HERE / "grpc_designs.py"), "--serve-aio"]),
    }
    servers = []
    for name in wanted:
        if name == "reference":
            s = ReferenceTriton(repo, args.server_cpus, work / "logs",
                                Path(os.environ.get("NAIAD_REFERENCE_SCRIPT") or
                                     REPO_ROOT.parent / "shared" / "reference" / "triton.sh"))
        else:
            s = NaiadServer(repo, args.server_cpus, work / "logs", launchers[name])
            s.name = name
        servers.append(s)
    transport = loadgen.GrpcH2load(args.client_cpus)
    res = {"started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "duration_s": args.duration, "warmup_s": args.warmup, "levels": levels,
           "machine": report.machine_info(None), "tools": loadgen.tool_versions(),
           "servers": {}, "results": []}
    try:
        running = []
        for s in servers:
            try:
                s.start(["add_sub"])
                transport.check(s, req)
                running.append(s)
                res["servers"][s.name] = {"status": "ok", "cmd": s.info.get("cmd")}
            except Exception as e:  # noqa: BLE001 - recorded, the others still run
                res["servers"][s.name] = {"status": "unavailable", "error": str(e)[:2000]}
                print(f"{s.name} unavailable: {str(e)[:300]}", flush=True)
        for c in levels:
            for rep in range(args.repeat):
                for s in running:
                    transport.run(s, req, c, args.warmup)
                    pids = [s.pid] + descendants(s.pid)
                    cpu0 = cpu_seconds(pids)
                    m = transport.run(s, req, c, args.duration).as_dict()
                    cpu = cpu_seconds(pids) - cpu0
                    m.update(server=s.name, repeat=rep,
                             cpu_us_per_request=round(cpu / m["requests"] * 1e6, 1)
                             if m["requests"] else None)
                    res["results"].append(m)
                    print(f"{s.name:<12} c={c:<3} {m['infer_per_s']:>9.1f} infer/s  "
                          f"p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms  "
                          f"server CPU {m['cpu_us_per_request']} us/request"
                          f"{'  ⚠ errors' if m['flagged'] else ''}", flush=True)
    finally:
        for s in servers:
            s.stop()
        transport.close()
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    md = render(res)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (args.results_dir / f"grpc-designs-{stamp}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results_dir / f"grpc-designs-{stamp}.md").write_text(md)
    print()
    print(md)
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def render(res: dict) -> str:
    names = [n for n, st in res["servers"].items() if st.get("status") == "ok"]
    m = res["machine"]
    out = [f"gRPC designs, add_sub ModelInfer (h2load, one request in flight per connection), "
           f"{res['duration_s']} s per measurement; servers on CPU 0, h2load on CPU 1; "
           f"load average {m['loadavg_start'][0]:.2f} at start, "
           f"{m.get('loadavg_end', [0])[0]:.2f} at end.", "",
           "infer/s (p50 / p99 ms) and server CPU per request (all threads and child "
           "processes: Triton's python stub included), the median over "
           f"{max((r['repeat'] for r in res['results']), default=0) + 1} measurement(s).", "",
           "| concurrency | " + " | ".join(n for n in names) + " |",
           "|---:|" + "---:|" * len(names)]

    def median(values):
        values = sorted(values)
        return values[len(values) // 2] if values else None

    for c in res["levels"]:
        cells = []
        for n in names:
            rows = [r for r in res["results"] if r["server"] == n and r["concurrency"] == c]
            if not rows:
                cells.append("–")
                continue
            mid = sorted(rows, key=lambda r: r["infer_per_s"])[len(rows) // 2]
            cpu = median([r["cpu_us_per_request"] for r in rows if r.get("cpu_us_per_request")])
            cells.append(f"{mid['infer_per_s']:,.0f} ({mid['p50_ms']:.2f} / {mid['p99_ms']:.2f}), "
                         f"{cpu if cpu is not None else '–'} µs CPU"
                         + (" ⚠" if mid["flagged"] else ""))
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-aio":
        sys.exit(serve_aio(sys.argv[2:]))
    sys.exit(main())
