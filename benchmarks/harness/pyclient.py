"""Load from the clients users have: grpcio (tritonclient's messages) and aiohttp.

Run as a module with the project venv (it needs grpcio, tritonclient and
aiohttp), one JSON line on stdout:

    python -m harness.pyclient --client grpc-aio --port 8001 --model add_sub \
        --input INPUT0:FP32:4:<hex> ... --concurrency 16 --duration 5 [--procs 2]

Clients (each a closed loop: ``concurrency`` requests in flight, the next sent
when one answers):

* ``grpc-aio``: ``grpc.aio`` channel with tritonclient's
  ``GRPCInferenceServiceStub``, ``ModelInferRequest`` with
  ``raw_input_contents`` built once (what ``tritonclient.grpc.aio`` sends,
  without its per-call Python around it).
* ``grpc-stream``: ``ModelStreamInfer`` over ``grpc.aio``: one stream per
  concurrent slot, one request in flight on each.
* ``tritonclient-grpc``: ``tritonclient.grpc.InferenceServerClient.infer``
  from ``concurrency`` threads (the synchronous client with a thread pool).
* ``aiohttp``: ``aiohttp`` POSTs of the binary tensor data extension body (without
  aiohttp's default Accept-Encoding, as tritonclient.http sends them) on
  ``concurrency`` keep-alive connections.
* ``aiohttp-shm``: the same over system shared memory: each slot registers
  an input and an output region (tritonclient.utils.shared_memory), writes
  its inputs there once, and each request names the regions (JSON only);
  the first output's first bytes are read back from its region.

``--procs N`` splits the concurrency over N processes (so that one Python
process is not the bottleneck where there are cores for more). ``--requests
N`` stops after N answers instead of after ``--duration`` (for packet
captures). Reported: answers, errors, the window, latency percentiles and the
client's CPU seconds (user + system of every client process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import threading
import time

CLIENTS = ("grpc-aio", "grpc-stream", "tritonclient-grpc", "aiohttp", "aiohttp-shm")


def _parse_inputs(specs: list[str]) -> list[tuple[str, str, list[int], bytes]]:
    out = []
    for spec in specs:
        name, dtype, shape, data = spec.split(":", 3)
        dims = [int(d) for d in shape.split("x")] if shape else []
        if data.startswith("@"):  # @SIZE: that many zero bytes (big tensors)
            raw = bytes(int(data[1:]))
        else:
            raw = bytes.fromhex(data)
        out.append((name, dtype, dims, raw))
    return out


def _grpc_options() -> list:
    return [("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1)]


def _infer_request(args):
    from tritonclient.grpc import service_pb2 as pb

    msg = pb.ModelInferRequest(model_name=args.model)
    for name, dtype, dims, raw in args.inputs:
        t = msg.inputs.add()
        t.name, t.datatype = name, dtype
        t.shape.extend(dims)
        msg.raw_input_contents.append(raw)
    for name in args.outputs:
        msg.outputs.add().name = name
    return msg


class _Window:
    """Counts answers and latencies inside the measured window."""

    def __init__(self, duration: float, limit: int):
        self.start = time.perf_counter()
        self.end = self.start + duration
        self.limit = limit
        self.lat: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.done = False

    def record(self, t0: float, ok: bool, err: str = "") -> bool:
        now = time.perf_counter()
        if ok:
            self.lat.append(now - t0)
        else:
            self.errors += 1
            self.first_error = self.first_error or err[:300]
        if now >= self.end or (self.limit and len(self.lat) + self.errors >= self.limit):
            self.done = True
        return not self.done


async def _grpc_aio(args, win: _Window) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    msg = _infer_request(args)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}",
                                         options=_grpc_options()) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        await stub.ModelInfer(msg)  # connect outside the window

        async def worker():
            while not win.done:
                t0 = time.perf_counter()
                try:
                    r = await stub.ModelInfer(msg)
                    ok, err = len(r.raw_output_contents) > 0, "no outputs"
                except grpc.aio.AioRpcError as e:
                    ok, err = False, f"{e.code()}: {e.details()}"
                win.record(t0, ok, err)

        win.start = time.perf_counter()
        win.end = win.start + args.duration
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))


async def _grpc_stream(args, win: _Window) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    msg = _infer_request(args)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}",
                                         options=_grpc_options()) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        await stub.ModelInfer(msg)

        async def worker():
            call = stub.ModelStreamInfer()
            while not win.done:
                t0 = time.perf_counter()
                await call.write(msg)
                r = await call.read()
                ok = r is not grpc.aio.EOF and not r.error_message
                win.record(t0, ok, "" if ok else str(getattr(r, "error_message", "EOF")))
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass

        win.start = time.perf_counter()
        win.end = win.start + args.duration
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))


def _tritonclient_grpc(args, win: _Window) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{args.port}")
    inputs = []
    for name, dtype, dims, raw in args.inputs:
        i = grpcclient.InferInput(name, dims, dtype)
        np_dtype = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64,
                    "INT32": np.int32, "UINT8": np.uint8}[dtype]
        i.set_data_from_numpy(np.frombuffer(raw, dtype=np_dtype).reshape(dims))
        inputs.append(i)
    outputs = [grpcclient.InferRequestedOutput(o) for o in args.outputs]
    client.infer(args.model, inputs, outputs=outputs)
    lock = threading.Lock()

    def worker():
        while not win.done:
            t0 = time.perf_counter()
            try:
                client.infer(args.model, inputs, outputs=outputs)
                ok, err = True, ""
            except Exception as e:  # noqa: BLE001 - counted
                ok, err = False, str(e)
            with lock:
                win.record(t0, ok, err)

    win.start = time.perf_counter()
    win.end = win.start + args.duration
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()


async def _aiohttp(args, win: _Window) -> None:
    import aiohttp

    header = {"inputs": [{"name": n, "shape": d, "datatype": t,
                          "parameters": {"binary_data_size": len(r)}}
                         for n, t, d, r in args.inputs],
              "outputs": [{"name": o, "parameters": {"binary_data": True}}
                          for o in args.outputs]}
    js = json.dumps(header, separators=(",", ":")).encode()
    body = js + b"".join(r for *_, r in args.inputs)
    headers = {"Inference-Header-Content-Length": str(len(js)),
               "Content-Type": "application/octet-stream"}
    url = f"http://127.0.0.1:{args.port}/v2/models/{args.model}/infer"
    conn = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=conn, skip_auto_headers=("Accept-Encoding",)) as session:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()

        async def worker():
            while not win.done:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        ok, err = r.status == 200, f"HTTP {r.status}"
                except aiohttp.ClientError as e:
                    ok, err = False, str(e)
                win.record(t0, ok, err)

        win.start = time.perf_counter()
        win.end = win.start + args.duration
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))


async def _aiohttp_shm(args, win: _Window) -> None:
    import aiohttp
    import numpy as np
    import tritonclient.utils.shared_memory as shm

    base = f"http://127.0.0.1:{args.port}"
    url = f"{base}/v2/models/{args.model}/infer"
    tag = f"naiad_bench_{os.getpid()}"
    regions = []

    async def register(session, name, key, size):
        async with session.post(f"{base}/v2/systemsharedmemory/region/{name}/register",
                                json={"key": key, "offset": 0, "byte_size": size}) as r:
            if r.status != 200:
                raise RuntimeError(f"register {name}: HTTP {r.status} {await r.text()}")

    conn = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=conn, skip_auto_headers=("Accept-Encoding",)) as session:
        bodies = []
        try:
            for slot in range(args.concurrency):
                in_size = sum(len(r) for *_, r in args.inputs)
                out_size = in_size  # the identity models answer with what they got
                names = (f"{tag}_in{slot}", f"{tag}_out{slot}")
                h_in = shm.create_shared_memory_region(names[0], "/" + names[0], in_size)
                h_out = shm.create_shared_memory_region(names[1], "/" + names[1], out_size)
                regions += [(names[0], h_in), (names[1], h_out)]
                offset, inputs = 0, []

                for name, dtype, dims, raw in args.inputs:
                    shm.set_shared_memory_region(h_in, [np.frombuffer(raw, dtype=np.uint8)],
                                                 offset=offset)
                    inputs.append({"name": name, "shape": dims, "datatype": dtype,
                                   "parameters": {"shared_memory_region": names[0],
                                                  "shared_memory_offset": offset,
                                                  "shared_memory_byte_size": len(raw)}})
                    offset += len(raw)
                await register(session, names[0], "/" + names[0], in_size)
                await register(session, names[1], "/" + names[1], out_size)
                outputs = [{"name": o, "parameters": {"shared_memory_region": names[1],
                                                      "shared_memory_byte_size": out_size}}
                           for o in args.outputs[:1]]
                bodies.append(json.dumps({"inputs": inputs, "outputs": outputs}).encode())
            async with session.post(url, data=bodies[0]) as r:
                if r.status != 200:
                    raise RuntimeError(f"shm infer: HTTP {r.status} {await r.text()}")

            async def worker(body, h_out):
                while not win.done:
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=body) as r:
                            await r.read()
                            ok, err = r.status == 200, f"HTTP {r.status}"
                        if ok:
                            shm.get_contents_as_numpy(h_out, np.uint8, [16])
                    except aiohttp.ClientError as e:
                        ok, err = False, str(e)
                    win.record(t0, ok, err)

            win.start = time.perf_counter()
            win.end = win.start + args.duration
            await asyncio.gather(*(worker(b, regions[2 * i + 1][1])
                                   for i, b in enumerate(bodies)))
        finally:
            for name, _ in regions:
                try:
                    async with session.post(
                            f"{base}/v2/systemsharedmemory/region/{name}/unregister") as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass
            for _, h in regions:
                shm.destroy_shared_memory_region(h)


def _one_process(args) -> dict:
    win = _Window(args.duration, args.requests)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.client == "tritonclient-grpc":
        _tritonclient_grpc(args, win)
    else:
        runner = asyncio.run
        if args.client.startswith("aiohttp"):  # grpc.aio wants asyncio's own loop
            try:
                import uvloop
                runner = uvloop.run
            except ImportError:
                pass
        coro = {"grpc-aio": _grpc_aio, "grpc-stream": _grpc_stream,
                "aiohttp": _aiohttp, "aiohttp-shm": _aiohttp_shm}[args.client]
        runner(coro(args, win))
    stop = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"lat": win.lat, "errors": win.errors, "first_error": win.first_error,
            "start": win.start, "stop": stop,
            "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)}


def _child(args, q) -> None:
    try:
        q.put(_one_process(args))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put({"failure": f"{type(e).__name__}: {e}"})


def run(args) -> dict:
    if args.procs <= 1:
        parts = [_one_process(args)]
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        per = [args.concurrency // args.procs + (1 if i < args.concurrency % args.procs else 0)
               for i in range(args.procs)]
        procs = []
        for c in per:
            a = argparse.Namespace(**vars(args))
            a.concurrency, a.procs = c, 1
            a.requests = args.requests // args.procs if args.requests else 0
            p = ctx.Process(target=_child, args=(a, q))
            p.start()
            procs.append(p)
        parts = [q.get(timeout=args.duration + 120) for _ in procs]
        for p in procs:
            p.join(30)
        failed = [p["failure"] for p in parts if "failure" in p]
        if failed:
            raise RuntimeError(failed[0])
    lat = sorted(x for p in parts for x in p["lat"])
    window = sum(p["stop"] - p["start"] for p in parts) / len(parts)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 3) if lat else 0.0

    return {"client": args.client, "concurrency": args.concurrency, "procs": args.procs,
            "ok": len(lat), "errors": sum(p["errors"] for p in parts),
            "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
            "duration_s": round(window, 3),
            "infer_per_s": round(len(lat) / window, 2) if window else 0.0,
            "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "mean_ms": round(sum(lat) / len(lat) * 1e3, 3) if lat else 0.0,
            "max_ms": round(lat[-1] * 1e3, 3) if lat else 0.0,
            "client_cpu_s": round(sum(p["cpu_s"] for p in parts), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=CLIENTS, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", action="append", default=[], dest="inputs",
                    help="NAME:DTYPE:DIMxDIM:HEX or NAME:DTYPE:DIMS:@BYTES")
    ap.add_argument("--output", action="append", default=[], dest="outputs")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--procs", type=int, default=1)
    args = ap.parse_args(argv)
    args.inputs = _parse_inputs(args.inputs)
    if args.requests and not args.duration:
        args.duration = 3600.0
    print("NAIAD_PYCLIENT_JSON " + json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
