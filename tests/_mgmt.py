"""Helpers for the model-management tests: tiny python models, HTTP calls, traffic."""

from __future__ import annotations

import json
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.conftest import write_model

# A python model: OUT = IN + OFFSET. It sleeps IN[1] seconds in execute when
# given, sleeps INIT_SLEEP in initialize, and can fail to initialize. It logs
# initialize/finalize calls (with the instance name) to EVENTS when set.
MODEL_PY = '''
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}
INIT_SLEEP = {init_sleep}
FAIL = {fail}
EVENTS = {events!r}


def _event(text):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(text + "\\n")


class TritonPythonModel:
    def initialize(self, args):
        if INIT_SLEEP:
            time.sleep(INIT_SLEEP)
        if FAIL:
            raise RuntimeError("initialize failed on purpose")
        self.instance = args["model_instance_name"]
        _event("init " + self.instance + " " + args["model_version"])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            if x.shape[0] > 1 and x[1] > 0:
                _event("busy " + self.instance)
                time.sleep(float(x[1]))
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", (x + OFFSET).astype(np.float32))]))
        return out

    def finalize(self):
        _event("fini " + self.instance)
'''

CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
{extra}
'''


def model_py(offset: float = 0.0, init_sleep: float = 0.0, fail: bool = False,
             events: str = "") -> str:
    return MODEL_PY.format(offset=offset, init_sleep=init_sleep, fail=fail, events=events)


def config_text(name: str, count: int = 1, extra: str = "") -> str:
    return CONFIG.format(name=name, count=count, extra=extra)


NOT_ALLOWED_MESSAGE = "explicit model load / unload is not allowed if polling is enabled"

NO_INLINE = 'parameters { key: "NAIAD_INLINE_EXECUTION" value: { string_value: "off" } }'


def add_model(repo: Path, name: str, offset: float = 0.0, versions=(1,), count: int = 1,
              init_sleep: float = 0.0, fail: bool = False, events: str = "",
              extra: str = "", inline: bool = True) -> Path:
    """A test model; ``inline=False`` keeps its executions on its worker threads
    (models that sleep must not run on the submitting thread)."""
    if not inline:
        extra = f"{extra}\n{NO_INLINE}"
    return write_model(repo, name, config_text(name, count, extra),
                       {"model.py": model_py(offset, init_sleep, fail, events)}, versions)


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


def dedent(text: str) -> str:
    return textwrap.dedent(text)
