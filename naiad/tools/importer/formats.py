"""The model file formats ``naiad import`` knows: which backend serves each, and how.

Every format goes through its backend's auto-complete (``Backend.
auto_complete_config`` via the backend registry), which reads inputs, outputs
and max_batch_size from the file where the format records them. Where it
does not (TorchScript, a python callable) the ``--input``/``--output`` flags
say it, as Triton's pytorch backend also needs a config for TorchScript.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    backend: str
    platform: str  # the platform Triton reports, "" if none
    filename: str  # the file in the version folder
    # files beside the model file that travel with it (extension -> name in the folder)
    companions: tuple[tuple[str, str], ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    # whether the backend's auto-complete can read the tensors from the file
    self_describing: bool = True
    note: str = ""


def _fil_formats() -> tuple[Format, ...]:
    """One format per FIL ``model_type``, under the file name the fil backend reads for it
    (``naiad.backends.fil.MODEL_FILES``: the one table both use)."""
    from naiad.backends.fil import MODEL_FILES

    return tuple(Format(kind, "fil", "", filename, parameters=(("model_type", kind),))
                 for kind, filename in MODEL_FILES.items())


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "onnxruntime", "onnxruntime_onnx", "model.onnx"),
    Format("torchscript", "pytorch", "pytorch_libtorch", "model.pt", self_describing=False,
           note="TorchScript records no tensor types or shapes: give --input and --output "
                "(names INPUT__0/OUTPUT__0 by position, or forward()'s argument names)"),
    Format("torch_export", "pytorch", "", "model.pt2"),
    Format("openvino", "openvino", "", "model.xml", companions=((".bin", "model.bin"),)),
    *_fil_formats(),
    Format("python", "python", "", "model.py", self_describing=False,
           note="a python callable cannot tell its tensors: give --input and --output"),
)}

_EXTENSIONS = {
    ".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
    ".torchscript": "torchscript", ".pt2": "torch_export", ".xml": "openvino",
    ".ubj": "xgboost_ubj", ".json": "xgboost_json", ".txt": "lightgbm",
    ".tl": "treelite_checkpoint",
    # XGBoost's own extensions for any of its formats: the content says which (_xgboost)
    ".model": "xgboost", ".bst": "xgboost",
}


def _xgboost(path: str) -> str:
    """Which XGBoost format a ``.model``/``.bst`` file holds: since XGBoost 2.1 save_model
    writes UBJSON under any extension it does not know; older releases wrote the legacy
    binary format (FIL's ``xgboost``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return "xgboost"
    if head[:1] != b"{":
        return "xgboost"
    return "xgboost_json" if head[1:2] in (b'"', b" ", b"\n", b"\r", b"\t", b"}") else \
        "xgboost_ubj"


class FormatError(Exception):
    pass


def is_callable_spec(source: str) -> bool:
    """'module:function' or 'path/file.py:function' (and not an existing file)."""
    if os.path.exists(source):
        return False
    head, sep, tail = source.rpartition(":")
    return bool(sep and head and tail.isidentifier())


def detect(source: str, explicit: str = "") -> Format:
    if explicit:
        if explicit not in FORMATS:
            raise FormatError(f"unknown --format '{explicit}' (one of {', '.join(FORMATS)})")
        return FORMATS[explicit]
    if is_callable_spec(source):
        return FORMATS["python"]
    if not os.path.exists(source):
        raise FormatError(f"'{source}' is neither a model file nor a module:function")
    ext = os.path.splitext(source)[1].lower()
    name = _EXTENSIONS.get(ext)
    if name == "xgboost":
        name = _xgboost(source)
    if name is None:
        raise FormatError(f"cannot tell the format of '{source}' from its extension: give "
                          f"--format ({', '.join(FORMATS)})")
    return FORMATS[name]
