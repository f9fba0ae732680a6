"""``naiad import``: a model file or a python callable -> a model repository entry.

    naiad import model.onnx --repository models/
    naiad import resnet.onnx --repository models/ --task classification --labels labels.txt
    naiad import mymodule.py:predict --repository models/ \\
        --input X:FP32:-1,4 --output Y:FP32:-1 --max-batch-size 8

See ``core.py`` for the steps and docs/tools/import.md for every format.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from naiad.tools.importer.core import (
    ImportError_,
    ImportOptions,
    ImportResult,
    import_model,
    parse_tensor,
)
from naiad.tools.importer.formats import FORMATS

__all__ = ["ImportError_", "ImportOptions", "ImportResult", "import_model", "main"]


def _kv(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, value


def _setting(text: str) -> tuple[str, str, str]:
    group, _, kv = text.rpartition(",")
    key, value = _kv(kv)
    return group, key, value


def build_parser() -> argparse.ArgumentParser:
    from naiad.tools import tasks

    p = argparse.ArgumentParser(
        prog="naiad import",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a model repository entry for a model file (ONNX, TorchScript, "
                    "torch.export, OpenVINO IR, XGBoost/LightGBM/Treelite) or a python callable "
                    "(module:function), with the config its backend's auto-complete reads from "
                    "the file; --task adds pre/post-processing and an ensemble.",
        epilog="formats: " + ", ".join(f"{n} ({f.backend})" for n, f in FORMATS.items()) +
               "\ntasks: " + ", ".join(f"{t.name} ({t.description})"
                                       for t in tasks.all_tasks().values()))
    p.add_argument("source", help="Model file, or module:function / path/file.py:function.")
    p.add_argument("-r", "--repository", required=True, help="Model repository to write into.")
    p.add_argument("-n", "--name", default="", help="Model name (default: the file's stem).")
    p.add_argument("--version", type=int, default=1, help="Version folder (default 1).")
    p.add_argument("--format", default="", choices=[""] + list(FORMATS),
                   help="Override the format detected from the extension.")
    p.add_argument("--input", action="append", default=[], type=parse_tensor,
                   metavar="NAME:TYPE:DIMS",
                   help="An input the format cannot describe (TorchScript, python), e.g. "
                        "INPUT__0:FP32:3,224,224 (dims without the batch dimension when "
                        "--max-batch-size > 0).")
    p.add_argument("--output", action="append", default=[], type=parse_tensor,
                   metavar="NAME:TYPE:DIMS")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="Default: what auto-complete decides (ONNX: 4 for batchable models).")
    p.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                   help="Leave dynamic batching off for a batchable model.")
    p.add_argument("--instances", type=int, default=1, help="instance_group count.")
    p.add_argument("--kind", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--labels", default="", help="Labels file (one class per line) for "
                   "classification outputs.")
    p.add_argument("--labels-output", default="", help="Which output the labels belong to "
                   "(default: the first).")
    p.add_argument("--backend-config", action="append", default=[], type=_setting,
                   metavar="BACKEND,SETTING=VALUE")
    p.add_argument("--task", default="", choices=[""] + list(tasks.all_tasks()),
                   help="Add the task's pre/post-processing python models and an ensemble "
                        "named NAME (the network becomes NAME_model).")
    p.add_argument("--task-option", action="append", default=[], type=_kv, metavar="KEY=VALUE",
                   help="A task setting (see docs/tools/import.md).")
    p.add_argument("--task-model", action="append", default=[], type=_kv, metavar="ROLE=FILE",
                   help="Further model files a task needs (ocr: rec=..., cls=...).")
    p.add_argument("-f", "--force", action="store_true", help="Replace existing model folders.")
    return p


def main(argv: list[str]) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.getLogger("naiad").addHandler(logging.NullHandler())
    logging.getLogger("naiad").setLevel(logging.ERROR)
    backend_config: dict[str, dict[str, str]] = {}
    for group, key, value in ns.backend_config:
        backend_config.setdefault(group, {})[key] = value
    opts = ImportOptions(
        source=ns.source, repository=ns.repository, name=ns.name, version=ns.version,
        format=ns.format, inputs=ns.input, outputs=ns.output, max_batch_size=ns.max_batch_size,
        dynamic_batching=ns.dynamic_batching, instances=ns.instances, kind=ns.kind,
        labels=ns.labels, labels_output=ns.labels_output, force=ns.force,
        backend_config=backend_config, task=ns.task, task_options=dict(ns.task_option),
        task_models=dict(ns.task_model))
    try:
        result = import_model(opts)
    except ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for name in result.models:
        print(f"wrote {os.path.join(ns.repository, name)}/")
    c = result.config
    shapes = ", ".join(f"{t.name} {_dtype(t.data_type)} {list(t.dims)}" for t in c.input)
    outs = ", ".join(f"{t.name} {_dtype(t.data_type)} {list(t.dims)}" for t in c.output)
    print(f"{c.name}: {c.backend}, max_batch_size {c.max_batch_size}"
          f"{', dynamic batching' if c.HasField('dynamic_batching') else ''}; "
          f"inputs: {shapes}; outputs: {outs}")
    return 0


def _dtype(value: int) -> str:
    from naiad.protocol import model_config_pb2 as mc

    return mc.DataType.Name(value).replace("TYPE_", "")
