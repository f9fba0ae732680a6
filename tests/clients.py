"""The client helpers tests use to talk to a served model.

Raw HTTP with requests (``post``) or the standard library (``call``, ``infer``,
the repository ``index`` and ``states``), one tritonclient request
(``http_infer``), polling (``wait_for``), background traffic with tritonclient
(``Traffic``) and the scheduling probe's async client (``infer_probe``,
``staggered``); the naiad tools run as a user runs them (``naiad_tool``). The
models they talk to are ``tests/models.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import np_to_triton_dtype

NOT_ALLOWED_MESSAGE = "explicit model load / unload is not allowed if polling is enabled"

CHECKOUT = Path(__file__).resolve().parent.parent


def naiad_tool(tool: str, *args: str, check: bool = False,
               timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m naiad <tool> ARGS`` (import, validate, perf, analyze) from the checkout;
    with ``check``, a non-zero exit fails the test with the tool's output."""
    r = subprocess.run([sys.executable, "-m", "naiad", tool, *args], capture_output=True,
                       text=True, timeout=timeout, cwd=str(CHECKOUT))
    if check and r.returncode != 0:
        raise AssertionError(f"naiad {tool} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def call(base: str, method: str, path: str, body=None, timeout: float = 30.0):
    """(status, parsed JSON or None, raw text) for one HTTP call."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read().decode()
        status = e.code
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed, raw


PROTOCOLS = ("http", "grpc")


def triton_client(protocol: str, server):
    """tritonclient's module for ``protocol`` ("http" or "grpc") and a client of ``server``
    (a ``NaiadProcess``): their APIs match, so one test body can drive both."""
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    import tritonclient.grpc as grpcclient

    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def number(message: dict, *path: str) -> int:
    """An integer field of a JSON message, by path; 0 when absent (gRPC's JSON leaves zeros
    out and writes 64-bit integers as strings)."""
    for key in path:
        message = message.get(key, {})
    return int(message or 0)


def post(base: str, path: str, body=b"", timeout: float = 10.0, **kw) -> requests.Response:
    """POST ``body`` (bytes, text, or an object sent as JSON) to ``base + path``."""
    data = body if isinstance(body, (bytes, bytearray, str)) else json.dumps(body)
    return requests.post(base + path, data=data, timeout=timeout, **kw)


def http_infer(url: str, model: str, inputs: dict[str, np.ndarray],
               outputs: list[str] | None = None, timeout: float = 60.0, **kw):
    """One request with tritonclient's HTTP client (datatypes from the arrays' dtypes);
    returns its InferResult (raises InferenceServerException on an error)."""
    client = httpclient.InferenceServerClient(url, network_timeout=timeout)
    try:
        ins = []
        for name, arr in inputs.items():
            inp = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            inp.set_data_from_numpy(arr)
            ins.append(inp)
        requested = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        return client.infer(model, ins, outputs=requested, **kw)
    finally:
        client.close()


def infer_body(values) -> dict:
    values = [float(v) for v in values]
    return {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [len(values)],
                        "data": values}]}


def infer(base: str, model: str, values=(1.0,), version: int | None = None,
          timeout: float = 30.0):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, parsed, raw = call(base, "POST", path, infer_body(values), timeout)
    if status == 200:
        return status, parsed["outputs"][0]["data"][0] - values[0], parsed
    return status, None, parsed if parsed is not None else raw


def index(base: str, ready: bool = False) -> list[dict]:
    status, parsed, raw = call(base, "POST", "/v2/repository/index", {"ready": ready})
    assert status == 200, raw
    return parsed


def states(base: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list] = {}
    for item in index(base):
        out.setdefault(item["name"], []).append((item.get("version", ""), item.get("state", "")))
    return out


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}: last={last!r}")


class Traffic:
    """Several threads sending requests to a model until stopped, with tritonclient.

    Records every outcome: the offset the model answered with (per thread, in
    order) or the error text.
    """

    def __init__(self, url: str, model: str, threads: int = 3):
        self.url = url
        self.model = model
        self.results: list[list[float]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, i: int) -> None:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(self.url, network_timeout=60)
        x = np.array([float(i + 1)], dtype=np.float32)
        inp = httpclient.InferInput("IN", [1], "FP32")
        inp.set_data_from_numpy(x)
        n = 0
        while not self._stop.is_set() and n < 100000:
            n += 1
            try:
                res = client.infer(self.model, [inp])
                self.results[i].append(float(res.as_numpy("OUT")[0] - x[0]))
            except InferenceServerException as exc:
                self.errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - a lost connection is a failure too
                self.errors.append(f"{type(exc).__name__}: {exc}")
        client.close()

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.results)

    def wait_count(self, n: int, timeout: float = 30.0) -> None:
        wait_for(lambda: self.count >= n or self.errors, timeout, what=f"{n} responses")


class Result:
    """One request's outcome as the client saw it."""

    def __init__(self, tag, value=None, batch=None, exec_id=None, instance=None, error=None,
                 status=None, sent=0.0, done=0.0):
        self.tag = tag
        self.value = value
        self.batch = batch
        self.exec_id = exec_id
        self.instance = instance
        self.error = error
        self.status = status
        self.sent = sent
        self.done = done

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.done - self.sent

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Result({self.tag!r}, error={self.status}:{self.error!r})"
        return f"Result({self.tag!r}, batch={self.batch}, exec={self.exec_id})"


async def infer_probe(client: aioclient.InferenceServerClient, model: str, value, tag=None,
                      shape=None, **kwargs) -> Result:
    arr = np.asarray(value, dtype=np.float32)
    if shape is not None:
        arr = arr.reshape(shape)
    elif arr.ndim == 0:
        arr = arr.reshape(1, 1)
    inp = aioclient.InferInput("IN", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    sent = time.monotonic()
    try:
        r = await client.infer(model, [inp], **kwargs)
    except Exception as exc:  # InferenceServerException
        status = exc.status() if hasattr(exc, "status") else None
        message = exc.message() if hasattr(exc, "message") else str(exc)
        return Result(tag if tag is not None else value, error=message, status=status,
                      sent=sent, done=time.monotonic())
    return Result(tag if tag is not None else value, value=r.as_numpy("OUT"),
                  batch=int(r.as_numpy("BATCH").reshape(-1)[0]),
                  exec_id=int(r.as_numpy("EXEC").reshape(-1)[0]),
                  instance=r.as_numpy("INSTANCE").reshape(-1)[0].decode(),
                  sent=sent, done=time.monotonic())


async def staggered(calls, gap: float = 0.03, *, gate_started: Path | None = None,
                    pending: Callable[[], int] | None = None, wait_s: float = 30.0):
    """Start the coroutines ``gap`` seconds apart (so they queue in that order); gather.

    On a loaded machine a gap alone orders nothing; two things make it certain:
    ``gate_started``, a file the first call's model writes as it starts executing (the
    probe model's ``gate_dir`` parameter): the other calls start once it exists, so the
    gate runs alone. ``pending``: reads how many requests wait in the model's queue; each
    of the other calls then starts once the one before it is queued (the count rose) or
    answered (refused), so that they reach the queue in the order given. Each wait is
    bounded by ``wait_s``.
    """
    assert pending is None or gate_started is not None, "pending counts behind a gate"

    async def until(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + wait_s
        while not await asyncio.to_thread(done):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {wait_s} s")
            await asyncio.sleep(0.005)

    if gate_started is not None:
        gate_started.unlink(missing_ok=True)
    tasks = []
    for k, call in enumerate(calls):
        before = await asyncio.to_thread(pending) if k > 0 and pending is not None else 0
        task = asyncio.ensure_future(call)
        tasks.append(task)
        if k == 0 and gate_started is not None:
            await until(lambda task=task: gate_started.exists() or task.done(),
                        f"the gate did not start ({gate_started})")
            assert gate_started.exists(), task.result()
        elif k > 0 and pending is not None:
            await until(lambda task=task, before=before: task.done() or pending() > before,
                        f"request {k} was neither queued nor answered")
        else:
            await asyncio.sleep(gap)
    return await asyncio.gather(*tasks)


def run(coro):
    return asyncio.run(coro)


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """A server's metrics page as {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def pending_requests(server, model: str, version: str = "1") -> int:
    """``nv_inference_pending_request_count``: requests in ``model``'s queue, not executing."""
    return int(metric(scrape(server), "nv_inference_pending_request_count", model=model,
                      version=version))
