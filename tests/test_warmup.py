"""Model warmup: samples run on every instance before the model is READY."""

from __future__ import annotations

import json
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from conftest import NaiadProcess, write_model

RECORDING_MODEL = '''
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.log = config["parameters"]["log"]["string_value"]
        self.sleep = float(config["parameters"]["sleep"]["string_value"])
        self.instance = args["model_instance_name"]

    def execute(self, requests):
        seen = []
        for r in requests:
            item = {}
            for t in r.inputs():
                a = t.as_numpy()
                item[t.name()] = [x.decode() if isinstance(x, bytes) else float(x)
                                  for x in a.reshape(-1)] + [list(a.shape)]
            seen.append(item)
        with open(self.log, "a") as f:
            f.write(json.dumps({"instance": self.instance, "requests": seen}) + "\\n")
        time.sleep(self.sleep)
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if (x == 13).any():
                raise ValueError("warmup boom")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.astype(np.float32))]))
        return out
'''


def _config(name, log, warmup, sleep=0.0, count=2, extra_input=""):
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 3 ] }} {extra_input} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 3 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
parameters {{ key: "log" value: {{ string_value: "{log}" }} }}
parameters {{ key: "sleep" value: {{ string_value: "{sleep}" }} }}
{warmup}
"""


def _read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _index(server):
    req = urllib.request.Request(f"{server.base}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req) as r:
        return {m["name"]: m for m in json.load(r)}


def test_every_instance_runs_every_sample_before_serving(tmp_path):
    repo = tmp_path / "models"
    log = tmp_path / "warm.log"
    warmup = """
model_warmup [
  { name: "zeros" batch_size: 3 count: 2
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } },
  { name: "random" batch_size: 1
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] random_data: true } } }
]"""
    write_model(repo, "warm", _config("warm", log, warmup), {"model.py": RECORDING_MODEL})
    with NaiadProcess(repo) as s:
        with urllib.request.urlopen(f"{s.base}/v2/models/warm/stats") as r:
            stats = json.load(r)["model_stats"][0]
    runs = _read_log(log)
    # two instances x (zeros: 2 iterations + random: 1) executions
    assert len(runs) == 6
    assert sorted({r["instance"] for r in runs}) == ["warm_0_0", "warm_0_1"]
    zero_runs = [r for r in runs if len(r["requests"]) == 3]
    assert len(zero_runs) == 4
    for run in zero_runs:  # batch_size 3 = three requests of batch 1
        assert all(req["X"] == [0.0, 0.0, 0.0, [1, 3]] for req in run["requests"])
    random_runs = [r for r in runs if len(r["requests"]) == 1]
    assert len(random_runs) == 2
    assert all(req["X"][-1] == [1, 3] and any(v != 0 for v in req["X"][:3])
               for run in random_runs for req in run["requests"])
    # warmup executions count in the statistics, as in Triton
    assert stats["execution_count"] == 6 and stats["inference_count"] == 14


def test_model_is_ready_only_after_its_warmup_ran(tmp_path):
    repo = tmp_path / "models"
    log = tmp_path / "warm.log"
    warmup = """model_warmup [ { name: "w" batch_size: 1 count: 3
        inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } } ]"""
    write_model(repo, "slow_warm", _config("slow_warm", log, warmup, sleep=0.4, count=1),
                {"model.py": RECORDING_MODEL})
    with NaiadProcess(repo, "--model-control-mode=explicit") as s:
        seen = []
        done = threading.Event()

        def poll():
            while not done.is_set():
                try:
                    with urllib.request.urlopen(f"{s.base}/v2/models/slow_warm/ready") as r:
                        if r.status == 200:
                            seen.append(len(_read_log(log)))
                            return
                except urllib.error.HTTPError:
                    pass
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        started = time.monotonic()
        req = urllib.request.Request(f"{s.base}/v2/repository/models/slow_warm/load",
                                     data=b"{}", method="POST")
        urllib.request.urlopen(req).close()
        took = time.monotonic() - started
        poller.join(timeout=10)
        done.set()
    assert took > 1.1  # the three 0.4 s warmup runs happened inside the load
    assert seen == [3]  # the first time it was ready, all three had run


def test_warmup_data_files_are_read_from_the_warmup_folder(tmp_path):
    repo = tmp_path / "models"
    log = tmp_path / "warm.log"
    warmup = """model_warmup [ { name: "files" batch_size: 2
        inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] input_data_file: "x.bin" } }
        inputs { key: "S" value: { data_type: TYPE_STRING dims: [ 2 ] input_data_file: "s.bin" } }
    } ]"""
    model_dir = write_model(repo, "filed", _config(
        "filed", log, warmup, count=1,
        extra_input=', { name: "S" data_type: TYPE_STRING dims: [ 2 ] }'),
        {"model.py": RECORDING_MODEL})
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "x.bin").write_bytes(np.array([1.5, -2, 4], np.float32).tobytes())
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"hello", b"naiad"))
    (model_dir / "warmup" / "s.bin").write_bytes(strings)
    with NaiadProcess(repo):
        pass
    (run,) = _read_log(log)
    assert run["requests"] == [{"X": [1.5, -2.0, 4.0, [1, 3]], "S": ["hello", "naiad", [1, 2]]}] * 2


def test_a_failing_warmup_makes_the_model_unavailable_with_the_reason(tmp_path):
    repo = tmp_path / "models"
    log = tmp_path / "warm.log"
    (tmp_path / "x.bin").write_bytes(b"")
    warmup = """model_warmup [ { name: "bad sample" batch_size: 2
        inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] input_data_file: "x.bin" } }
    } ]"""
    model_dir = write_model(repo, "broken", _config("broken", log, warmup, count=1),
                            {"model.py": RECORDING_MODEL})
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "x.bin").write_bytes(np.array([13, 13, 13], np.float32).tobytes())
    write_model(repo, "short", _config("short", log, warmup.replace("bad sample", "short"),
                                       count=1), {"model.py": RECORDING_MODEL})
    (repo / "short" / "warmup").mkdir()
    (repo / "short" / "warmup" / "x.bin").write_bytes(b"\0\0\0\0")
    with NaiadProcess(repo, "--exit-on-error=false", "--strict-readiness=false") as s:
        index = _index(s)
        ready = urllib.request.urlopen(f"{s.base}/v2/health/live").status
    assert ready == 200
    broken = index["broken"]
    assert broken["state"] == "UNAVAILABLE"
    reason = broken["reason"]
    assert reason.startswith("failed to run warmup sample 'bad sample': ")
    assert reason.count("warmup boom") == 2 and reason.endswith("; ")  # one per request
    assert index["short"]["state"] == "UNAVAILABLE"
    assert "warmup setting expects 12 bytes" in index["short"]["reason"]
