"""The python backend: Triton ``model.py`` files, run in-process.

Each instance of a model is one ``TritonPythonModel`` object; its
``execute`` runs on the instance's worker thread and receives
``pb_utils.InferenceRequest`` objects that wrap the core's requests without
copying. No process boundary, no shared-memory copies: this is where a Python
server beats Triton's stub-process design.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import threading
import time

from google.protobuf import json_format

from naiad.backends.base import (
    Backend,
    BackendInstance,
    InstanceSpec,
    ModelLoadContext,
)
from naiad.backends.python import bls, common, pb_utils  # noqa: F401 - bls: serves pb_utils BLS calls
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
        module, cls = common.import_model_file(path, f"{config.name}_{os.path.basename(version_dir)}")
        common.imported[os.path.abspath(path)] = (os.stat(path).st_mtime, module, cls)
        hook = getattr(cls, "auto_complete_config", None)
        if hook is None:
            return
        from naiad.protocol.config_json import config_to_dict

        wrapper = pb_utils.ModelConfig(config_to_dict(config))
        try:
            result = hook(wrapper)
        except Exception as exc:
            raise InvalidArgument(
                f"auto_complete_config of model '{config.name}' failed: {exc}") from None
        completed = (result if result is not None else wrapper).as_dict()
        new = mc.ModelConfig()
        try:
            json_format.ParseDict(completed, new)
        except json_format.ParseError as exc:
            raise InvalidArgument(
                f"auto_complete_config of model '{config.name}' returned an invalid "
                f"configuration: {exc}") from None
        config.CopyFrom(new)

    def load(self, ctx: ModelLoadContext) -> "PythonModel":
        params = ctx.config.parameters
        if "EXECUTION_ENV_PATH" in params:
            log.warning(
                "model '%s': EXECUTION_ENV_PATH is ignored; naiad runs python models in the "
                "server's own environment", ctx.name)
        if "EXECUTION_MODE" in params:
            from naiad.backends.python import process

            if process.execution_mode(ctx.config) == "process":
                return process.load(ctx)  # instances in worker processes
        return PythonModel(ctx)


class PythonModel(common.PythonModelBase):
    """One version of a python model, run in-process."""

    def __init__(self, ctx: ModelLoadContext):
        self.module, self.cls = common.import_once(ctx.model_file, f"{ctx.name}_{ctx.version}")
        super().__init__(ctx)
        # A model that makes BLS calls blocks in execute while they run: it must
        # never run inline on the submitting thread (which may be the event loop).
        self.uses_bls = common.source_uses_bls(ctx.model_file)

    def create_instance(self, spec: InstanceSpec) -> "PythonInstance":
        return PythonInstance(self, spec)


class PythonInstance(BackendInstance):
    def __init__(self, model: PythonModel, spec: InstanceSpec):
        self.model = model
        self.spec = spec
        self.name = spec.name
        ctx = model.ctx
        self.obj = model.cls()
        self._loop: asyncio.AbstractEventLoop | None = None
        args = model.initialize_args(spec)
        pb_utils._context.server = ctx.server
        init = getattr(self.obj, "initialize", None)
        if init is not None:
            try:
                result = init(args)
                if inspect.isawaitable(result):
                    self._run_coroutine(result)
            except NaiadError:
                raise
            except Exception as exc:
                log.exception("initialize of model '%s' failed", ctx.name)
                raise InvalidArgument(
                    f"failed to initialize model instance '{spec.name}': "
                    f"{type(exc).__name__}: {exc}") from None
        self._execute = self.obj.execute
        self._is_async = inspect.iscoroutinefunction(self._execute)
        # async execute runs on the instance's own event loop: never on the server's;
        # a model making BLS calls waits on them inside execute: never inline either
        self.inline_capable = not self._is_async and not model.uses_bls
        # decoupled async models run their executions concurrently on a loop thread
        self._concurrent = self._is_async and model.decoupled
        self._bg_loop: asyncio.AbstractEventLoop | None = None
        self._bg_thread: threading.Thread | None = None

    def _run_coroutine(self, coro):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._bg_loop
        if loop is None:
            loop = self._bg_loop = asyncio.new_event_loop()
            self._bg_thread = threading.Thread(target=loop.run_forever, daemon=True,
                                               name=f"naiad-{self.name}-async")
            self._bg_thread.start()
        return loop

    def _execute_concurrently(self, requests: list[core.InferenceRequest], wrapped) -> None:
        """A decoupled model's async execute: start it and return at once.

        Triton runs a decoupled model's coroutines concurrently; their
        responses go through the response senders whenever they are ready.
        """
        server = self.model.ctx.server
        instance = self

        async def run():
            pb_utils._context.server = server
            pb_utils._context.instance = instance
            return await self._execute(wrapped)

        fut = asyncio.run_coroutine_threadsafe(run(), self._background_loop())
        model = self.model

        def done(f) -> None:
            exc = f.exception()
            if exc is None:
                return
            log.error("model instance '%s' execute failed: %s: %s", self.name,
                      type(exc).__name__, exc)
            err = common.model_error(self.name, exc)
            for r in requests:
                if not r.responded:
                    model.deliver(r, core.InferenceResponse(error=err), True)

        fut.add_done_callback(done)

    def execute(self, requests: list[core.InferenceRequest]):
        model = self.model
        pb_utils._context.server = model.ctx.server
        pb_utils._context.instance = self
        wrap = pb_utils.InferenceRequest._wrap
        wrapped = [wrap(r, model) for r in requests]
        t_in = time.monotonic_ns()
        for r in requests:
            r.compute_input_end_ns = t_in
        if self._concurrent:
            self._execute_concurrently(requests, wrapped)
            return None
        try:
            result = self._execute(wrapped)
            if self._is_async or inspect.isawaitable(result):
                result = self._run_coroutine(result)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            log.error("model instance '%s' execute failed: %s: %s", self.name,
                      type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            raise common.model_error(self.name, exc) from None
        finally:
            # the thread (a frontend's, when it ran inline) must not keep the instance,
            # and with it the model's memory, once the model is unloaded
            pb_utils._context.instance = None
        t_out = time.monotonic_ns()
        for r in requests:
            r.compute_output_start_ns = t_out
        if model.decoupled:
            if result is not None:
                log.warning("decoupled model '%s' returned responses from execute(); they are "
                            "ignored (use the response sender)", model.name)
            return None
        if not isinstance(result, (list, tuple)):
            raise NaiadError(
                f"Failed to process the request(s) for model instance '{self.name}', message: "
                f"execute() must return a list of pb_utils.InferenceResponse, got "
                f"{type(result).__name__}")
        out: list[core.InferenceResponse | None] = []
        for resp in result:
            if resp is None:
                out.append(None)
                continue
            try:
                out.append(pb_utils._response_to_core(resp))
            except Exception as exc:
                out.append(core.InferenceResponse(error=common.model_error(self.name, exc)))
        return out

    def finalize(self) -> None:
        fin = getattr(self.obj, "finalize", None)
        if fin is not None:
            try:
                result = fin()
                if inspect.isawaitable(result):
                    self._run_coroutine(result)
            except Exception:
                log.exception("finalize of model instance '%s' failed", self.name)
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        bg = self._bg_loop
        if bg is not None:
            self._bg_loop = None

            async def drain():  # let executions still running finish (bounded)
                current = asyncio.current_task()
                pending = [t for t in asyncio.all_tasks() if t is not current]
                if pending:
                    await asyncio.wait(pending, timeout=30)

            try:
                asyncio.run_coroutine_threadsafe(drain(), bg).result(timeout=35)
            except Exception:
                log.warning("instance '%s': async executions still running at unload",
                            self.name)
            bg.call_soon_threadsafe(bg.stop)
            if self._bg_thread is not None:
                self._bg_thread.join(timeout=5)
            if not bg.is_running():
                bg.close()

