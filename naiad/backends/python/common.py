"""What the in-process and the worker-process python backends share.

Importing a ``model.py`` (each in its own import scope: ``isolation.py``),
telling whether it makes BLS calls, turning a model's exception into the
request's error (``execution.py``), and the model-level delivery path its
response senders use. Worker processes import this module too, without
protobuf.
"""

from __future__ import annotations

import json
import logging
import os

from naiad.backends.base import BackendModel, InstanceSpec, ModelLoadContext
from naiad.backends.python import execution, isolation, pb_utils
from naiad.core import types as core

log = logging.getLogger("naiad.backends.python")


def import_model_file(path: str, label: str):
    """Import a model.py in its own import scope (``isolation``): (module, class)."""
    module, cls, _scope = isolation.import_model_file(path, label)
    return module, cls


def close_scope(module) -> None:
    """Forget the import scope of a model module (a later load imports afresh)."""
    scope = isolation.scope_of(module)
    if scope is not None:
        scope.close()


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


model_error = execution.model_error


# model.py modules imported for auto-complete, handed to the load that follows
# (path -> (mtime, module, class)) so each file is imported once, not twice.
imported: dict[str, tuple[float, object, type]] = {}


def import_once(path: str, label: str):
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = -1.0
    cached = imported.pop(os.path.abspath(path), None)
    if cached is not None:
        if cached[0] == mtime:
            return cached[1], cached[2]
        close_scope(cached[1])
    return import_model_file(path, label)


def iterative_sequence(config) -> bool:
    """``sequence_batching { iterative_sequence: true }``: requests may be rescheduled."""
    return config.HasField("sequence_batching") and config.sequence_batching.iterative_sequence


class PythonModelBase(BackendModel):
    """A python model version (in-process or in worker processes); also the delivery
    path its response senders use."""

    def __init__(self, ctx: ModelLoadContext):
        # (imported here: worker processes import this module without protobuf)
        from naiad.protocol.config_json import config_to_dict

        self.ctx = ctx
        self.name = ctx.name
        self.decoupled = bool(ctx.config.model_transaction_policy.decoupled)
        self.iterative = iterative_sequence(ctx.config)
        self.output_names = [o.name for o in ctx.config.output]
        self.config_json = json.dumps(config_to_dict(ctx.config))
        self.model = None  # the core Model, set by the repository manager
        # response senders of rescheduled requests, until their next execution
        self.kept_senders: dict[int, pb_utils.InferenceResponseSender] = {}
        # response senders not closed yet (pb_utils keeps it)
        self.open_senders: dict[int, pb_utils.InferenceResponseSender] = {}

    request_key = staticmethod(id)

    def answer_open_senders(self) -> None:
        """At unload: what the model never completed is answered (see execution)."""
        execution.answer_open_senders(
            self, f"model '{self.name}' version {self.ctx.version} was unloaded before it "
                  "completed the response")

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
