"""The models of the "backends" scenario: files, configs, inputs, in-process runners.

Run with the project venv (it needs naiad[torch,openvino,fil]):

    cd benchmarks && python -m harness.backend_models --build .work

* ``minilm_torchscript``: all-MiniLM-L6-v2 traced to TorchScript
  (``export_minilm.py --torchscript``), served by the pytorch backend;
* ``minilm_openvino``: the MiniLM ONNX export (``export_minilm.py``) converted to
  OpenVINO IR by ``openvino.convert_model``, served by the openvino backend;
* ``cnn_torchscript``: a ResNet-style CNN built here (random weights, 3x64x64
  input, 4 stages of residual blocks), traced to TorchScript;
* ``xgb_fil``: a 200-tree XGBoost classifier (depth 6, 32 features) trained here
  on generated data, served by the fil backend.

Every model is served twice: ``<name>`` (no batcher: each request executes
alone) and ``<name>_batched`` (``dynamic_batching { }``; max_batch_size 16 for
MiniLM and the CNN, where a batch of 16 already takes ~1 s on one core, 64 for
XGBoost). Both
sides use one intra-op thread and one inter-op thread (or one OpenVINO stream
and thread, or one XGBoost thread), so served vs in-process compares like with
like on the one pinned CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from harness.models import MINILM_SEQ, minilm_tokens

NAMES = ("minilm_torchscript", "minilm_openvino", "cnn_torchscript", "xgb_fil")
MAX_BATCH = 64
BATCHED_MAX = 16  # the batched MiniLM and CNN models' max_batch_size
CNN_SHAPE = (3, 64, 64)
XGB_FEATURES = 32
XGB_TREES = 200

_TS_THREADS = """
parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }
parameters { key: "INTER_OP_THREAD_COUNT" value { string_value: "1" } }
"""
_OV_PROPS = {"INFERENCE_NUM_THREADS": "1", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}

CONFIGS = {
    "minilm_torchscript": """
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "INPUT__0" data_type: TYPE_INT64 dims: [ -1 ] },
        { name: "INPUT__1" data_type: TYPE_INT64 dims: [ -1 ] },
        { name: "INPUT__2" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 384 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
""" + _TS_THREADS,
    "minilm_openvino": """
backend: "openvino"
max_batch_size: 64
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] },
        { name: "token_type_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 384 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
""" + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
              for k, v in _OV_PROPS.items()),
    "cnn_torchscript": """
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, 64, 64 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 100 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
""" + _TS_THREADS,
    "xgb_fil": """
backend: "fil"
max_batch_size: 64
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 32 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "model_type" value { string_value: "xgboost_json" } }
parameters { key: "is_classifier" value { string_value: "true" } }
parameters { key: "predict_proba" value { string_value: "true" } }
parameters { key: "cpu_nthread" value { string_value: "1" } }
""",
}
FILES = {"minilm_torchscript": "model.pt", "minilm_openvino": "model.xml",
         "cnn_torchscript": "model.pt", "xgb_fil": "xgboost.json"}
OUTPUTS = {"minilm_torchscript": "OUTPUT__0", "minilm_openvino": "sentence_embedding",
           "cnn_torchscript": "OUTPUT__0", "xgb_fil": "output__0"}


def inputs(name: str, batch: int) -> dict[str, np.ndarray]:
    """The request tensors (deterministic), as both the client and the baseline use them."""
    if name.startswith("minilm"):
        toks = {k: np.asarray(v, np.int64).reshape(batch, MINILM_SEQ)
                for k, v in minilm_tokens(batch, MINILM_SEQ).items()}
        if name == "minilm_torchscript":
            return {"INPUT__0": toks["input_ids"], "INPUT__1": toks["attention_mask"],
                    "INPUT__2": toks["token_type_ids"]}
        return toks
    rng = np.random.default_rng(1234)
    if name == "cnn_torchscript":
        return {"INPUT__0": rng.standard_normal((batch,) + CNN_SHAPE).astype(np.float32)}
    return {"input__0": rng.standard_normal((batch, XGB_FEATURES)).astype(np.float32)}


# ---------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------


def _resnet_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout)) if stride != 1 or cin != cout
                         else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.down(x))

    class ResNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                      nn.ReLU())
            self.stages = nn.Sequential(Basic(32, 32, 1), Basic(32, 64, 2), Basic(64, 128, 2),
                                        Basic(128, 256, 2))
            self.fc = nn.Linear(256, 100)

        def forward(self, x):
            x = self.stages(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return ResNetish().eval()


def build(work: Path, minilm_onnx: Path, minilm_ts: Path) -> Path:
    """Write <work>/repo_backends; returns it. MiniLM files come from export_minilm.py."""
    repo = work / "repo_backends"
    made = {}
    for name in NAMES:
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        made[name] = repo / name / "1" / FILES[name]
    if not made["cnn_torchscript"].exists():
        import torch

        traced = torch.jit.trace(_resnet_cnn(), torch.zeros((1,) + CNN_SHAPE))
        traced.save(str(made["cnn_torchscript"]))
    if not made["xgb_fil"].exists():
        import xgboost as xgb

        rng = np.random.default_rng(5)
        x = rng.standard_normal((20000, XGB_FEATURES)).astype(np.float32)
        y = ((x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + rng.normal(0, 0.5, len(x)))
             > 0).astype(np.float32)
        booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "eta": 0.1,
                             "nthread": 2}, xgb.DMatrix(x, label=y), num_boost_round=XGB_TREES)
        booster.save_model(str(made["xgb_fil"]))
    if not made["minilm_openvino"].exists() and minilm_onnx.exists():
        import openvino as ov

        ov.save_model(ov.convert_model(str(minilm_onnx)), str(made["minilm_openvino"]),
                      compress_to_fp16=False)
    link = made["minilm_torchscript"]
    if minilm_ts.exists() and not link.exists():
        link.symlink_to(minilm_ts.resolve())
    for name in NAMES:
        if not made[name].exists():  # its export failed or was not run: not served
            import shutil

            shutil.rmtree(repo / name, ignore_errors=True)
            shutil.rmtree(repo / f"{name}_batched", ignore_errors=True)
            continue
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n' + CONFIGS[name])
        bdir = repo / f"{name}_batched" / "1"
        bdir.mkdir(parents=True, exist_ok=True)
        for f in (repo / name / "1").iterdir():
            dst = bdir / f.name
            if not dst.exists() and not dst.is_symlink():
                dst.symlink_to(f.resolve())
        text = CONFIGS[name]
        if name != "xgb_fil":  # a batch of 64 MiniLM sequences is seconds on one core
            text = text.replace(f"max_batch_size: {MAX_BATCH}", f"max_batch_size: {BATCHED_MAX}")
        (repo / f"{name}_batched" / "config.pbtxt").write_text(
            f'name: "{name}_batched"\n' + text + "dynamic_batching { }\n")
    return repo


# ---------------------------------------------------------------------------
# in-process runners: the framework called directly, same threads, same inputs
# ---------------------------------------------------------------------------


def runner(name: str, repo: Path):
    """A callable(feed) -> first output array, set up as the served model is."""
    path = repo / name / "1" / FILES[name]
    if name.endswith("torchscript"):
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(feed):
            with torch.inference_mode():
                args = [torch.from_numpy(feed[k]) for k in sorted(feed)]
                return module(*args).numpy()
        return run_ts
    if name == "minilm_openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", dict(_OV_PROPS))
        request = compiled.create_infer_request()
        port = compiled.output(0)

        def run_ov(feed):
            return np.array(request.infer(feed)[port])
        return run_ov
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})

    def run_xgb(feed):
        return np.asarray(booster.inplace_predict(feed["input__0"])).reshape(-1, 1)
    return run_xgb


def measure(name: str, repo: Path, batch: int, duration: float, warmup: float) -> dict:
    run = runner(name, repo)
    feed = inputs(name, batch)
    first = run(feed)
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        run(feed)
    lat = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        run(feed)
        t2 = time.perf_counter()
        lat.append(t2 - t)
        if t2 - start >= duration:
            break
    elapsed = t2 - start
    cpu = time.process_time() - cpu0
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] * 1e3, 3)

    return {"model": name, "batch": batch, "calls": len(lat),
            "infer_per_s": round(len(lat) * batch / elapsed, 2), "p50_ms": pct(50),
            "p99_ms": pct(99), "cpu_ms_per_infer": round(cpu * 1e3 / (len(lat) * batch), 4),
            "first_output": np.asarray(first, np.float32).reshape(-1)[:8].tolist()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", type=Path, help="write the repository under this work folder")
    ap.add_argument("--minilm-onnx", type=Path)
    ap.add_argument("--minilm-torchscript", type=Path)
    ap.add_argument("--measure", help="model name: run it in-process and print JSON")
    ap.add_argument("--repo", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    a = ap.parse_args()
    if a.build:
        repo = build(a.build, a.minilm_onnx or Path("/nonexistent"),
                     a.minilm_torchscript or Path("/nonexistent"))
        print("NAIAD_BACKENDS_REPO " + str(repo))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = measure(a.measure, a.repo, a.batch, a.duration, a.warmup)
    result["python"] = sys.version.split()[0]
    print("NAIAD_BACKEND_JSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
