"""Real model files for the pytorch, openvino and fil backend tests, built here.

Every builder writes into a folder it is given and returns what the test
needs to compute the expected answer in-process (the torch module, the
OpenVINO compiled model, the trained booster). The frameworks are imported
inside the builders, so importing this module costs nothing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def write_config(model_dir: Path, text: str) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(text))


# ---------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------


def small_cnn(seed: int = 0, classes: int = 10):
    """A ResNet-style CNN (conv-bn-relu stem, one residual block, pool, linear) in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self, ch: int):
            super().__init__()
            self.c1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
            self.b1 = nn.BatchNorm2d(ch)
            self.c2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
            self.b2 = nn.BatchNorm2d(ch)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(x + self.b2(self.c2(y)))

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(8), nn.ReLU())
            self.block = Block(8)
            self.head = nn.Linear(8, classes)

        def forward(self, x):
            x = self.block(self.stem(x))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    model = CNN().eval()
    # non-trivial batch-norm statistics, so a wrong layout shows in the answers
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def torchscript_cnn(version_dir: Path):
    import torch

    model = small_cnn()
    scripted = torch.jit.trace(model, torch.zeros(1, 3, 16, 16))
    version_dir.mkdir(parents=True, exist_ok=True)
    scripted.save(str(version_dir / "model.pt"))
    return model


def torchscript_module(version_dir: Path, module, filename: str = "model.pt"):
    import torch

    scripted = torch.jit.script(module)
    version_dir.mkdir(parents=True, exist_ok=True)
    scripted.save(str(version_dir / filename))
    return scripted


def exported_program(version_dir: Path, max_batch: int = 64):
    """torch.export program (dynamic batch): (x FP32 [B,4], ids INT64 [B,2]) -> (FP32 [B,3], INT64 [B,2])."""
    import torch
    from torch.export import Dim

    torch.manual_seed(1)

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x, ids):
            return torch.tanh(self.lin(x)), ids * 2 + 1

    model = Two().eval()
    batch = Dim("batch", min=1, max=max_batch)
    ep = torch.export.export(model, (torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.int64)),
                             dynamic_shapes={"x": {0: batch}, "ids": {0: batch}})
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(version_dir / "model.pt2"))
    return model


def aoti_package(version_dir: Path):
    """An AOTInductor package: forward(a, b, opts={"scale": s}) -> {"sum", "scaled"} (FP32 [2,3])."""
    import torch

    class Pkg(torch.nn.Module):
        def forward(self, a, b, opts: dict):
            return {"sum": a + b, "scaled": a * opts["scale"]}

    model = Pkg().eval()
    sample = (torch.zeros(2, 3), torch.zeros(2, 3), {"scale": torch.zeros(2, 3)})
    ep = torch.export.export(model, sample)
    version_dir.mkdir(parents=True, exist_ok=True)
    torch._inductor.aoti_compile_and_package(ep, package_path=str(version_dir / "model.pt2"))
    return model


PY_RUNTIME_SOURCE = '''
import torch


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x, y):
        return self.lin(x) + y, x.sum(dim=1, keepdim=True)
'''


def python_runtime(version_dir: Path):
    """model.py (an nn.Module class) + model.pt (its state_dict); returns the module."""
    import torch

    namespace: dict = {}
    exec(compile(PY_RUNTIME_SOURCE, "model.py", "exec"), namespace)
    torch.manual_seed(2)
    model = namespace["Affine"]().eval()
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(PY_RUNTIME_SOURCE)
    torch.save(model.state_dict(), str(version_dir / "model.pt"))
    return model


# ---------------------------------------------------------------------------
# openvino
# ---------------------------------------------------------------------------


def onnx_mlp(path: Path, batch="batch", features: int = 6, hidden: int = 8, out: int = 3,
             seed: int = 3) -> dict[str, np.ndarray]:
    """An ONNX MLP: input FP32 [batch, features] -> logits FP32 [batch, out], probs (softmax)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((features, hidden)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32)
    w2 = rng.standard_normal((hidden, out)).astype(np.float32)
    b2 = rng.standard_normal(out).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w1"], ["h0"]),
         helper.make_node("Add", ["h0", "b1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h2"]),
         helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
         helper.make_node("Add", ["l0", "b2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, out]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, out])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                     numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def openvino_ir(version_dir: Path, onnx_path: Path, static_batch: int | None = None):
    """model.xml + model.bin converted from an ONNX file by openvino.convert_model."""
    import openvino as ov

    kwargs = {}
    if static_batch is not None:
        kwargs["input"] = [static_batch, 6]
    model = ov.convert_model(str(onnx_path), **kwargs)
    version_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(version_dir / "model.xml"), compress_to_fp16=False)
    return model


# ---------------------------------------------------------------------------
# tree models
# ---------------------------------------------------------------------------


def tree_data(n: int = 400, features: int = 8, classes: int = 2, seed: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    score = x[:, 0] * 1.5 - x[:, 1] + 0.5 * x[:, 2] * x[:, 3]
    if classes == 2:
        y = (score > 0).astype(np.float32)
    elif classes > 2:
        y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
        y = y.astype(np.float32)
    else:  # regression
        y = score.astype(np.float32)
    return x, y


def xgboost_model(path: Path, objective: str = "binary:logistic", classes: int = 2,
                  trees: int = 20, features: int = 8):
    import xgboost as xgb

    x, y = tree_data(features=features, classes=classes if objective != "reg:squarederror" else 0)
    params = {"objective": objective, "max_depth": 4, "eta": 0.3, "nthread": 1}
    if objective.startswith("multi:"):
        params["num_class"] = classes
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=trees)
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return booster


def lightgbm_model(path: Path, objective: str = "binary", classes: int = 2, trees: int = 20,
                   features: int = 8):
    import lightgbm as lgb

    x, y = tree_data(features=features, classes=classes if objective != "regression" else 0)
    params = {"objective": objective, "num_leaves": 8, "learning_rate": 0.3, "verbose": -1,
              "num_threads": 1, "min_data_in_leaf": 5}
    if objective == "multiclass":
        params["num_class"] = classes
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=trees)
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return booster


def treelite_forest(path: Path, trees: int = 10, features: int = 8):
    """A scikit-learn random forest (binary classifier) saved as a Treelite checkpoint."""
    import treelite
    from sklearn.ensemble import RandomForestClassifier

    x, y = tree_data(features=features)
    forest = RandomForestClassifier(n_estimators=trees, max_depth=4, random_state=0).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    treelite.sklearn.import_model(forest).serialize(str(path))
    return forest


# ---------------------------------------------------------------------------
# tritonclient helpers: one call over HTTP and over gRPC
# ---------------------------------------------------------------------------


def infer_both(server, model: str, inputs: dict[str, np.ndarray],
               outputs: list[str] | None = None,
               datatypes: dict[str, str] | None = None) -> list[dict[str, np.ndarray]]:
    """Run one request with tritonclient over HTTP and over gRPC; the two answers.

    ``datatypes`` overrides the wire datatype of an input (BF16 from float32).
    """
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    answers = []
    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url=url)
        try:
            ins = []
            for name, arr in inputs.items():
                wire = (datatypes or {}).get(name) or np_to_triton_dtype(arr.dtype)
                inp = module.InferInput(name, list(arr.shape), wire)
                inp.set_data_from_numpy(arr)
                ins.append(inp)
            outs = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
            result = client.infer(model, ins, outputs=outs)
            names = outputs or [o["name"] for o in (
                result.get_response()["outputs"] if module is httpclient
                else [{"name": o.name} for o in result.get_response().outputs])]
            answers.append({n: result.as_numpy(n) for n in names})
        finally:
            client.close()
    return answers


def infer_error(server, model: str, inputs: dict[str, tuple[str, list[int], np.ndarray]],
                protocol: str = "http") -> str:
    """Send a request (name -> (datatype, shape, data)) that must fail; the error message."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    module, url = ((httpclient, server.http_url) if protocol == "http"
                   else (grpcclient, server.grpc_url))
    client = module.InferenceServerClient(url=url)
    try:
        ins = []
        for name, (dtype, shape, data) in inputs.items():
            inp = module.InferInput(name, shape, dtype)
            inp.set_data_from_numpy(data)
            ins.append(inp)
        try:
            client.infer(model, ins)
        except InferenceServerException as exc:
            return str(exc.message())
        raise AssertionError("the request succeeded")
    finally:
        client.close()


def load_without(module: str, repo: Path, model: str) -> tuple[bool, str]:
    """Load a repository in a child process where ``import <module>`` fails; (ready, reason)."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules[{module!r}] = None  # importing it now raises ImportError
from naiad.embedded import EmbeddedServer
with EmbeddedServer(model_repository={str(repo)!r}, exit_on_error=False) as server:
    print(server.model_ready({model!r}))
    print([m.get("reason", "") for m in server.server.repository_index()
           if m["name"] == {model!r}][0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=str(Path(__file__).resolve().parent.parent))
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    return lines[0] == "True", lines[1]
