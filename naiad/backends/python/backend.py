"""The python backend: Triton ``model.py`` files, run in-process.

Each instance of a model is one ``TritonPythonModel`` object; its
``execute`` runs on the instance's worker thread and receives
``pb_utils.InferenceRequest`` objects that wrap the core's requests without
copying. No process boundary, no shared-memory copies: this is where a Python
server beats Triton's stub-process design.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import time

from google.protobuf import json_format

from naiad.backends.base import (
    Backend,
    BackendInstance,
    InstanceSpec,
    ModelLoadContext,
)
from naiad.backends.python import (  # noqa: F401 - bls: serves pb_utils BLS calls
    bls,
    common,
    environments,
    execution,
    isolation,
    pb_utils,
)
from naiad.core import types as core
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.protocol import model_config_pb2 as mc

log = logging.getLogger("naiad.backends.python")

# Models import the API under Triton's name.
sys.modules.setdefault("triton_python_backend_utils", pb_utils)

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
        from naiad.protocol.config_json import config_to_dict

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
        module, cls = common.import_model_file(path, label)
        previous = common.imported.pop(os.path.abspath(path), None)
        if previous is not None:  # imported for a load that did not happen
            common.close_scope(previous[1])
        common.imported[os.path.abspath(path)] = (os.stat(path).st_mtime, module, cls)
        hook = getattr(cls, "auto_complete_config", None)
        if hook is None:
            return None
        from naiad.protocol.config_json import config_to_dict

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


class PythonModel(common.PythonModelBase):
    """One version of a python model, run in-process."""

    def __init__(self, ctx: ModelLoadContext):
        self.module, self.cls = common.import_once(ctx.model_file, f"{ctx.name}_{ctx.version}")
        scope = isolation.scope_of(self.module)
        if scope is not None:
            scope.server = ctx.server  # BLS calls from threads the model starts
        super().__init__(ctx)
        # A model that makes BLS calls blocks in execute while they run: it must
        # never run inline on the submitting thread (which may be the event loop).
        self.uses_bls = common.source_uses_bls(ctx.model_file)

    def create_instance(self, spec: InstanceSpec) -> "PythonInstance":
        return PythonInstance(self, spec)

    def finalize(self) -> None:
        self.answer_open_senders()
        common.close_scope(self.module)  # a later load imports the model's modules afresh


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
        args = model.initialize_args(spec)
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
        finally:
            # the thread (a frontend's, when it ran inline) must not keep the instance,
            # and with it the model's memory, once the model is unloaded
            pb_utils._context.instance = None
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
