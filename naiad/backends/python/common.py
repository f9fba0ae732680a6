"""What the in-process and the worker-process python backends share.

Importing a ``model.py`` (each under its own module name), telling whether it
makes BLS calls, turning a model's exception into the request's error, and
the model-level delivery path its response senders use.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import sys

from naiad.backends.base import BackendModel, InstanceSpec, ModelLoadContext
from naiad.backends.python import pb_utils
from naiad.core import types as core
from naiad.core.errors import ErrorKind, InvalidArgument, NaiadError
from naiad.protocol.config_json import config_to_dict

log = logging.getLogger("naiad.backends.python")

_module_ids = itertools.count()


def import_model_file(path: str, label: str):
    """Import a model.py as a uniquely named module (several models, one process)."""
    if not os.path.isfile(path):
        raise InvalidArgument(f"python model file '{path}' not found")
    folder = os.path.dirname(os.path.abspath(path))
    name = f"_naiad_model_{next(_module_ids)}_{label}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"unable to import python model file '{path}'")
    module = importlib.util.module_from_spec(spec)
    # Helper modules beside model.py import the way they do under Triton.
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except NaiadError:
        raise
    except Exception as exc:
        log.exception("importing '%s' failed", path)
        raise InvalidArgument(
            f"failed to import python model file '{path}': {type(exc).__name__}: {exc}"
        ) from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    if folder not in sys.path:
        sys.path.append(folder)
    cls = getattr(module, "TritonPythonModel", None)
    if cls is None:
        raise InvalidArgument(f"python model file '{path}' does not define class TritonPythonModel")
    return module, cls


_BLS_MARKERS = ("exec(", "InferenceRequest(", "load_model(", "unload_model(")


def source_uses_bls(path: str) -> bool:
    """Whether a model.py (or a helper module beside it) looks like it makes BLS calls."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".py")]
    except OSError:
        names = []
    for name in names or [os.path.basename(path)]:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if any(marker in text for marker in _BLS_MARKERS):
            return True
    return False


def model_error(instance_name: str, exc: BaseException) -> NaiadError:
    if isinstance(exc, NaiadError):
        return exc
    if isinstance(exc, pb_utils.TritonModelException):
        kind = pb_utils.TritonError._KINDS.get(exc.code(), ErrorKind.INTERNAL)
        return NaiadError(exc.message(), kind)
    return NaiadError(
        f"Failed to process the request(s) for model instance '{instance_name}', message: "
        f"{type(exc).__name__}: {exc}"
    )


# model.py modules imported for auto-complete, handed to the load that follows
# (path -> (mtime, module, class)) so each file is imported once, not twice.
imported: dict[str, tuple[float, object, type]] = {}


def import_once(path: str, label: str):
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = -1.0
    cached = imported.pop(os.path.abspath(path), None)
    if cached is not None and cached[0] == mtime:
        return cached[1], cached[2]
    return import_model_file(path, label)


class PythonModelBase(BackendModel):
    """A python model version (in-process or in worker processes); also the delivery
    path its response senders use."""

    def __init__(self, ctx: ModelLoadContext):
        self.ctx = ctx
        self.name = ctx.name
        self.decoupled = bool(ctx.config.model_transaction_policy.decoupled)
        self.output_names = [o.name for o in ctx.config.output]
        self.config_json = json.dumps(config_to_dict(ctx.config))
        self.model = None  # the core Model, set by the repository manager

    def initialize_args(self, spec: InstanceSpec) -> dict[str, str]:
        """The ``args`` an instance's ``initialize`` receives (Triton's keys)."""
        ctx = self.ctx
        kind = {"KIND_GPU": "GPU", "KIND_MODEL": "MODEL"}.get(spec.kind, "CPU")
        return {
            "model_config": self.config_json,
            "model_instance_kind": kind,
            "model_instance_name": spec.name,
            "model_instance_device_id": str(spec.device_id),
            "model_repository": ctx.model_dir,
            "model_version": str(ctx.version),
            "model_name": ctx.name,
        }

    def deliver(self, request: core.InferenceRequest, response: core.InferenceResponse | None,
                final: bool) -> None:
        model = self.model
        if model is not None:
            model.deliver(request, response, final)
        else:  # pragma: no cover - only when used outside a server
            request.respond(response, final)
