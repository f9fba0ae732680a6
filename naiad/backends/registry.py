"""Finds the backend for a model: built-ins, then ``naiad.backends`` entry points.

Backends are imported on first use, so a server that serves only python
models never imports onnxruntime.
"""

from __future__ import annotations

import importlib
import threading
from importlib import metadata

from naiad.backends.base import Backend
from naiad.core.errors import InvalidArgument, Unsupported
from naiad.core.extras import install_hint

_BUILTIN: dict[str, str] = {
    "python": "naiad.backends.python.backend:PythonBackend",
    "onnxruntime": "naiad.backends.onnxruntime:OnnxRuntimeBackend",
    "pytorch": "naiad.backends.pytorch:PyTorchBackend",
    "openvino": "naiad.backends.openvino:OpenVINOBackend",
}

# config "platform" -> backend name (Triton's pairs)
PLATFORM_TO_BACKEND: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "pytorch_torchscript": "pytorch",
    "openvino": "openvino",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "tensorrt_plan": "tensorrt",
}

# backend -> the platform Triton reports for it
BACKEND_TO_PLATFORM: dict[str, str] = {
    "onnxruntime": "onnxruntime_onnx",
    "pytorch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "tensorrt": "tensorrt_plan",
}

# backend -> default model file name (used when the config names none)
DEFAULT_MODEL_FILENAMES: dict[str, str] = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "openvino": "model.xml",
    "tensorflow": "model.savedmodel",
    "tensorrt": "model.plan",
}

# model file name found in a version folder -> backend (auto-detection)
FILE_TO_BACKEND: dict[str, str] = {
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.pt2": "pytorch",
    "model.xml": "openvino",
    "model.py": "python",
    "model.plan": "tensorrt",
    "model.graphdef": "tensorflow",
    "model.savedmodel": "tensorflow",
}

_cache: dict[str, Backend] = {}
_lock = threading.Lock()


def _entry_points() -> dict[str, str]:
    try:
        eps = metadata.entry_points(group="naiad.backends")
    except TypeError:  # python < 3.10 style
        eps = metadata.entry_points().get("naiad.backends", [])  # type: ignore[attr-defined]
    return {ep.name: ep.value for ep in eps}


def get_backend(name: str) -> Backend:
    """The Backend object for ``name``; UNSUPPORTED if none is installed."""
    with _lock:
        backend = _cache.get(name)
        if backend is not None:
            return backend
        target = _BUILTIN.get(name) or _entry_points().get(name)
        if target is None:
            raise Unsupported(f"unable to find backend '{name}'")
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = {"onnxruntime": "onnx", "pytorch": "torch", "openvino": "openvino"}.get(name)
            hint = f" (install it with: {install_hint(extra)})" if extra else ""
            raise Unsupported(f"backend '{name}' is not available: {exc}{hint}") from exc
        backend = getattr(module, attr)()
        _cache[name] = backend
        return backend


def register_backend(backend: Backend) -> None:
    """Register a backend object directly (tests, embedding applications)."""
    if not backend.name:
        raise InvalidArgument("a backend must have a name")
    with _lock:
        _cache[backend.name] = backend
