"""The python backend: Triton ``model.py`` files, run in-process.

Each instance of a model is one ``TritonPythonModel`` object; its
``execute`` runs on the instance's worker thread and receives
``pb_utils.InferenceRequest`` objects that wrap the core's requests without
copying. No process boundary, no shared-memory copies: this is where a Python
server beats Triton's stub-process design.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time

from google.protobuf import json_format

from naiad.backends.base import (
    Backend,
    BackendInstance,
    BackendModel,
    InstanceSpec,
    ModelLoadContext,
)
from naiad.backends.python import environments, execution, isolation, pb_utils
from naiad.core import types as core
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.protocol import model_config_pb2 as mc

log = logging.getLogger("naiad.backends.python")

# Models import the API under Triton's name.
sys.modules.setdefault("triton_python_backend_utils", pb_utils)

def _import_model_file(path: str, label: str):
    """Import a model.py in its own import scope (``isolation``): (module, class)."""
    module, cls, _scope = isolation.import_model_file(path, label)
    return module, cls


_BLS_MARKERS = ("exec(", "InferenceRequest(", "load_model(", "unload_model(")


def _source_uses_bls(path: str) -> bool:
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


_model_error = execution.model_error


# model.py modules imported for auto-complete, handed to the load that follows
# (path -> (mtime, module, class)) so each file is imported once, not twice.
_imported: dict[str, tuple[float, object, type]] = {}


def _import_once(path: str, label: str):
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = -1.0
    cached = _imported.pop(os.path.abspath(path), None)
    if cached is not None:
        if cached[0] == mtime:
            return cached[1], cached[2]
        _close_scope(cached[1])
    return _import_model_file(path, label)


def _close_scope(module) -> None:
    scope = isolation.scope_of(module)
    if scope is not None:
        scope.close()


class PythonBackend(Backend):
    name = "python"
    default_model_filename = "model.py"
    accepts_mixed_shapes = True

    def auto_complete_config(self, config: mc.ModelConfig, model_dir: str,
                             version_dir: str | None, backend_config: dict[str, str]) -> None:
        if version_dir is None:
            return
        fname = config.default_model_filename or self.default_model_filename
        path = os.path.join(version_dir, fname)
        if not os.path.isfile(path):
            return
        from naiad.repository.config import config_to_dict

        label = f"{config.name}_{os.path.basename(version_dir)}"
        env_path = environments.requested(config)
        if env_path:  # the model's own environment: its import belongs there, not here
            env = environments.prepare(env_path, model_dir, config.name, backend_config)
            completed = environments.auto_complete(env, path, label, config_to_dict(config))
            if completed is None:
                return
        else:
            completed = self._auto_complete_here(config, path, label)
            if completed is None:
                return
        new = mc.ModelConfig()
        try:
            json_format.ParseDict(completed, new)
        except json_format.ParseError as exc:
            raise InvalidArgument(
                f"auto_complete_config of model '{config.name}' returned an invalid "
                f"configuration: {exc}") from None
        config.CopyFrom(new)

    @staticmethod
    def _auto_complete_here(config: mc.ModelConfig, path: str, label: str) -> dict | None:
        module, cls = _import_model_file(path, label)
        previous = _imported.pop(os.path.abspath(path), None)
        if previous is not None:  # imported for a load that did not happen
            _close_scope(previous[1])
        _imported[os.path.abspath(path)] = (os.stat(path).st_mtime, module, cls)
        hook = getattr(cls, "auto_complete_config", None)
        if hook is None:
            return None
        from naiad.repository.config import config_to_dict

        wrapper = pb_utils.ModelConfig(config_to_dict(config))
        try:
            result = hook(wrapper)
        except BaseException as exc:  # noqa: BLE001 - sys.exit() in model code included
            raise InvalidArgument(
                f"auto_complete_config of model '{config.name}' failed: "
                f"{isolation.describe_exception(exc)}") from None
        return (result if result is not None else wrapper).as_dict()

    def load(self, ctx: ModelLoadContext) -> "PythonModel":
        params = ctx.config.parameters
        env_path = environments.requested(ctx.config)
        if env_path or "EXECUTION_MODE" in params:
            from naiad.backends.python import process

            mode = process.execution_mode(ctx.config)
            if env_path:
                if mode == "inprocess" and "EXECUTION_MODE" in params:
                    raise InvalidArgument(
                        f"model '{ctx.name}' sets EXECUTION_ENV_PATH, which runs it in worker "
                        "processes with that environment's Python, and EXECUTION_MODE "
                        f"'{params['EXECUTION_MODE'].string_value}'; drop one of them")
                env = environments.prepare(env_path, ctx.model_dir, ctx.name,
                                           ctx.backend_config)
                return process.load(ctx, env)  # worker processes in the model's environment
            if mode == "process":
                return process.load(ctx)  # instances in worker processes
        return PythonModel(ctx)


def iterative_sequence(config: mc.ModelConfig) -> bool:
    """``sequence_batching { iterative_sequence: true }``: requests may be rescheduled."""
    return config.HasField("sequence_batching") and config.sequence_batching.iterative_sequence


class PythonModel(BackendModel):
    """One version of a python model; also the delivery path its senders use."""

    def __init__(self, ctx: ModelLoadContext):
        self.ctx = ctx
        self.name = ctx.name
        self.module, self.cls = _import_once(ctx.model_file, f"{ctx.name}_{ctx.version}")
        scope = isolation.scope_of(self.module)
        if scope is not None:
            scope.server = ctx.server  # BLS calls from threads the model starts
        self.decoupled = bool(ctx.config.model_transaction_policy.decoupled)
        self.output_names = [o.name for o in ctx.config.output]
        from naiad.repository.config import config_to_dict

        self.config_json = json.dumps(config_to_dict(ctx.config))
        self.model = None  # the core Model, set by the repository manager
        # A model that makes BLS calls blocks in execute while they run: it must
        # never run inline on the submitting thread (which may be the event loop).
        self.uses_bls = _source_uses_bls(ctx.model_file)
        self.iterative = iterative_sequence(ctx.config)
        # response senders of rescheduled requests, until their next execution
        self.kept_senders: dict[int, pb_utils.InferenceResponseSender] = {}
        # response senders not closed yet (pb_utils keeps it)
        self.open_senders: dict[int, pb_utils.InferenceResponseSender] = {}

    request_key = staticmethod(id)

    def create_instance(self, spec: InstanceSpec) -> "PythonInstance":
        return PythonInstance(self, spec)

    def finalize(self) -> None:
        execution.answer_open_senders(
            self, f"model '{self.name}' version {self.ctx.version} was unloaded before it "
                  "completed the response")
        _close_scope(self.module)  # a later load imports the model's modules afresh

    # -- used by pb_utils (response senders) -------------------------------------

    def deliver(self, request: core.InferenceRequest, response: core.InferenceResponse | None,
                final: bool) -> None:
        model = self.model
        if model is not None:
            model.deliver(request, response, final)
        else:  # pragma: no cover - only when used outside a server
            request.respond(response, final)


class PythonInstance(BackendInstance):
    def __init__(self, model: PythonModel, spec: InstanceSpec):
        self.model = model
        self.spec = spec
        self.name = spec.name
        ctx = model.ctx
        server = ctx.server

        def enter() -> None:  # on the loop's thread: BLS calls find the server
            pb_utils._context.server = server
            pb_utils._context.instance = self

        # async models' coroutines: on a loop one thread runs all the time
        self._loop = execution.ModelLoop(spec.name, enter)
        kind = "GPU" if spec.kind == "KIND_GPU" else ("MODEL" if spec.kind == "KIND_MODEL" else "CPU")
        args = {
            "model_config": model.config_json,
            "model_instance_kind": kind,
            "model_instance_name": spec.name,
            "model_instance_device_id": str(spec.device_id),
            "model_repository": ctx.model_dir,
            "model_version": str(ctx.version),
            "model_name": ctx.name,
        }
        pb_utils._context.server = ctx.server
        try:
            self.obj = model.cls()
            init = getattr(self.obj, "initialize", None)
            if init is not None:
                result = init(args)
                if inspect.isawaitable(result):
                    self._run_coroutine(result)
        except NaiadError:
            self._loop.close(drain_s=0)
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit() in initialize included
            self._loop.close(drain_s=0)
            log.error("initialize of model '%s' failed: %s", ctx.name,
                      isolation.describe_exception(exc), exc_info=isinstance(exc, Exception))
            raise InvalidArgument(
                f"failed to initialize model instance '{spec.name}': "
                f"{isolation.describe_exception(exc)}") from None
        self._execute = self.obj.execute
        self._settler = execution.Settler(spec.name, model.name, model.decoupled,
                                          model.iterative, model)
        self._is_async = inspect.iscoroutinefunction(self._execute)
        # async execute runs on the instance's own event loop: never on the server's;
        # a model making BLS calls waits on them inside execute: never inline either
        self.inline_capable = not self._is_async and not model.uses_bls
        # decoupled async models run their executions concurrently on a loop thread
        # (not with iterative sequences: a rescheduled request runs again after
        # its execution, which must end first)
        self._concurrent = self._is_async and model.decoupled and not model.iterative

    def _run_coroutine(self, coro):
        return self._loop.run(coro)

    def _execute_concurrently(self, wrapped: list) -> None:
        """A decoupled model's async execute: start it and return at once.

        Triton runs a decoupled model's coroutines concurrently; their
        responses go through the response senders whenever they are ready.
        """
        settler = self._settler

        def done(ok: bool, value) -> None:
            if ok:
                settler.settle(wrapped, value)
            else:
                settler.settle(wrapped, None, value)

        self._loop.start(self._execute(wrapped), done)

    def execute(self, requests: list[core.InferenceRequest]):
        model = self.model
        pb_utils._context.server = model.ctx.server
        pb_utils._context.instance = self
        wrap = pb_utils.InferenceRequest._wrap
        wrapped = [wrap(r, model) for r in requests]
        kept = model.kept_senders
        if kept:  # rescheduled requests: their senders carry over
            for w in wrapped:
                w._sender = kept.pop(id(w._core), None)
        t_in = time.monotonic_ns()
        for r in requests:
            r.compute_input_end_ns = t_in
        if self._concurrent:
            self._execute_concurrently(wrapped)
            return None
        result = exc = None
        try:
            result = self._execute(wrapped)
            if self._is_async or inspect.isawaitable(result):
                result = self._run_coroutine(result)
        except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt too
            exc = e
        t_out = time.monotonic_ns()
        for r in requests:
            r.compute_output_start_ns = t_out
        responses, again = self._settler.settle(wrapped, result, exc)
        for i in again:
            requests[i].reschedule = True
        return responses

    def finalize(self) -> None:
        fin = getattr(self.obj, "finalize", None)
        if fin is not None:
            try:
                result = fin()
                if inspect.isawaitable(result):
                    self._run_coroutine(result)
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in finalize included
                log.error("finalize of model instance '%s' failed: %s", self.name,
                          isolation.describe_exception(exc), exc_info=isinstance(exc, Exception))
        self._loop.close()
