"""The data plane: the one object every frontend, BLS call and embedding talks to.

Frontends translate their wire to these calls and back; the decisions are
made here, once: the model lookup, the refusal of new inference while
shutting down, the refusal of decoupled models by callers that expect one
response, the retry of a request whose version was retired by a reload
between lookup and submit, health, metadata, statistics and repository
control. It owns the repository manager, the server-wide scheduling context,
the shared-memory registries, the tracer and the metrics.

Two entries, by thread:

* on the event loop: the ``async`` methods (``infer``, ``infer_stream``,
  ``infer_numpy``, ``load_model``, ``load_model_from_parameters``,
  ``unload_model``, ``start``, ``stop``);
* from any other thread: ``submit`` (never blocks; the response arrives
  through the callback on whichever thread produced it) and ``call``
  (runs one of the coroutines above on the loop and waits for its result).

The synchronous queries (``ready``, ``model_metadata``, ``model_statistics``,
...) read immutable snapshots and are safe from any thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np

from naiad.core import datatypes
from naiad.core.errors import InvalidArgument, NaiadError, Unavailable, Unsupported
from naiad.core.handoff import final_response_future
from naiad.core.model import Model
from naiad.core.scheduler import SchedulingContext
from naiad.core.shared_memory import CudaSharedMemoryManager, SystemSharedMemoryManager
from naiad.core.types import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    ResponseCallback,
    Tensor,
    successful,
)
from naiad.observability.metrics import ServerMetrics
from naiad.observability.model_loading import ModelLoadingMetrics
from naiad.observability.tracing import Tracer
from naiad.options import MODE_EXPLICIT, MODE_NONE, MODE_POLL, ServerOptions
from naiad.protocol.config_json import config_to_dict
from naiad.repository.manager import ModelRepositoryManager
from naiad.repository.ondemand import OnDemandLoader, check_on_demand_options
from naiad.repository.overrides import parse_config_override
from naiad.repository.residency import Residency, parse_memory_limit
from naiad.scheduling import make_scheduling_context
from naiad.version import __version__

log = logging.getLogger("naiad.server")

# The protocol extensions this server implements (the metadata endpoint lists
# exactly these; the command line adds "logging").
BASE_EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
]

# new inference is refused from the moment the server starts stopping
SHUTTING_DOWN = "Server is shutting down: new inference requests are not accepted"

# Callers of ``submit`` that run inside requests already accepted: they are
# not refused while the server drains (the requests they serve must finish).
INTERNAL_CALLERS = frozenset({"bls", "ensemble"})

# Triton's texts for a decoupled model called by someone expecting one response
_DECOUPLED_REFUSED = {
    "http": "HTTP end point doesn't support models with decoupled transaction policy",
    "grpc": "ModelInfer RPC doesn't support models with decoupled transaction policy",
    "bls": "Model {name} is using the decoupled. The current BLS request call doesn't "
           "support models using the decoupled transaction policy. Please use "
           "'decoupled=True' argument to the 'exec' or 'async_exec' calls for decoupled "
           "models.'",
}
_BLS_NOT_READY = "Failed for execute the inference request. Model '{name}' is not ready."


class DataPlane:
    """Models, their schedulers and what every frontend asks of them."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.extensions: list[str] = list(BASE_EXTENSIONS)
        self.started = False
        self.shutting_down = False
        self.stopped = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self.poller: Any = None  # the repository poller in poll mode
        self.log_settings: Any = None  # the logging extension (the command line sets it)
        self.shared_memory = SystemSharedMemoryManager()
        self.cuda_shared_memory = CudaSharedMemoryManager()
        self.scheduling: SchedulingContext = make_scheduling_context(
            options, submit=self.submit, on_loop_thread=self.on_loop_thread)
        self.manager = ModelRepositoryManager(options, server=self, scheduling=self.scheduling)
        manager = self.manager

        def model_exists(name: str) -> bool:
            return name in manager.models or name in manager.model_dirs()

        self.tracer = Tracer(options.trace_config, model_exists=model_exists)
        self.metrics = ServerMetrics(self) if options.allow_metrics else None
        # --model-load-on-demand: models load on their first request (None: off)
        self.on_demand: OnDemandLoader | None = None
        if options.model_load_on_demand:
            self.on_demand = self._on_demand_loader()

    def _on_demand_loader(self) -> OnDemandLoader:
        opts = self.options
        loading = ModelLoadingMetrics()
        if self.metrics is not None:
            self.metrics.registry.register(loading)
        pinned = list(opts.load_models) if opts.model_control_mode == MODE_EXPLICIT else []
        try:
            limit = parse_memory_limit(opts.model_memory_limit)
        except InvalidArgument:
            limit = 0  # check() refuses it before anything starts
        residency = Residency(self.manager, limit=limit,
                              idle_secs=opts.model_idle_unload_secs,
                              wait_secs=opts.model_load_on_demand_timeout_secs,
                              pinned=pinned, metrics=loading)
        return OnDemandLoader(self.manager, submit=self.submit, loop=lambda: self.loop,
                              timeout_secs=opts.model_load_on_demand_timeout_secs,
                              pinned=pinned, residency=residency, metrics=loading)

    # -- threads ---------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the data plane runs on; call on that loop's thread."""
        self.loop = loop
        self.loop_thread = threading.get_ident()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def call(self, coro: Coroutine, timeout: float | None = None) -> Any:
        """Run a coroutine (of this data plane, or one built on it) on the event loop from
        any other thread, wait for its result and return it (or raise its exception)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            coro.close()
            raise Unavailable("the server is not running")
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError("DataPlane.call waits for the event loop: not from its own thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # -- lifecycle ---------------------------------------------------------------------------

    async def check(self) -> None:
        """Check the options and that every repository can be read (no model is loaded)."""
        opts = self.options
        if not opts.model_repositories:
            raise InvalidArgument("at least one --model-repository is required")
        if any("://" in r for r in opts.model_repositories):
            await asyncio.get_running_loop().run_in_executor(
                None, self.manager.check_repositories)
        else:
            self.manager.check_repositories()
        mode = opts.model_control_mode
        if mode not in (MODE_NONE, MODE_POLL, MODE_EXPLICIT):
            raise InvalidArgument(f"unexpected value for --model-control-mode: '{mode}'")
        if opts.load_models and mode != MODE_EXPLICIT:
            raise InvalidArgument(
                "--load-model can only be used with --model-control-mode=explicit")
        check_on_demand_options(opts)
        self._checked = True

    async def start(self) -> None:
        """Load the models the control mode asks for; ready once this returns.

        Binds the running loop (``bind_loop``) first. In poll mode the
        repository poller starts afterwards.
        """
        self.bind_loop(asyncio.get_running_loop())
        opts = self.options
        if not getattr(self, "_checked", False):
            await self.check()
        mode = opts.model_control_mode
        if mode == MODE_EXPLICIT:
            names = opts.load_models
            if "*" in names:
                await self.manager.load_all()
            elif names:
                await self.manager.load_all(names)
        elif self.on_demand is None:
            await self.manager.load_all()
        # (none mode with --model-load-on-demand: nothing loads before its first request)
        if self.shutting_down:
            return
        self.started = True
        if self.on_demand is not None:
            self.on_demand.start()
        if mode == MODE_POLL:
            from naiad.repository.poll import RepositoryPoller

            self.poller = RepositoryPoller(self.manager, opts.repository_poll_secs)
            self.poller.start()

    def begin_shutdown(self) -> None:
        """From now on: not ready, and new inference from outside is refused (any thread)."""
        self.shutting_down = True

    async def stop_polling(self) -> None:
        if self.poller is not None:
            await self.poller.stop()

    async def stop(self, timeout: float) -> bool:
        """Unload every model (users before the models they call) within ``timeout``,
        then release shared memory and flush traces. False if time ran out."""
        self.begin_shutdown()
        await self.stop_polling()
        clean = True
        try:
            await asyncio.wait_for(self._unload_everything(), timeout=max(0.1, timeout))
        except asyncio.TimeoutError:
            clean = False
        try:
            self.tracer.close()
        except Exception:
            log.exception("closing the trace output failed")
        self.shared_memory.close()
        self.started = False
        self.stopped = True
        return clean

    async def _unload_everything(self) -> None:
        if self.on_demand is not None:
            await self.on_demand.stop()  # answers the requests waiting for a load
        await self.manager.unload_all()

    # -- health and metadata --------------------------------------------------------------

    def live(self) -> bool:
        """Live from the start until the process exits (draining included)."""
        return not self.stopped

    def ready(self) -> bool:
        """Startup done, not shutting down, and (strict) every wanted model serving."""
        if not self.started or self.shutting_down:
            return False
        if self.options.strict_readiness:
            if self.on_demand is not None:  # lazily loaded models do not count
                return self.on_demand.ready()
            return self.manager.all_ready()
        return True

    def model_ready(self, name: str, version: int = -1) -> bool:
        if self.shutting_down:
            return False
        return self.manager.model_ready(name, version)

    def metadata(self) -> dict:
        return {"name": self.options.server_id, "version": __version__,
                "extensions": list(self.extensions)}

    def model_metadata(self, name: str, version: int = -1) -> dict:
        model = self.manager.get_model(name, version)
        ins, outs = model.io_metadata()
        return {
            "name": name,
            "versions": [str(v) for v in self.manager.ready_versions(name)],
            "platform": model.platform,
            "inputs": ins,
            "outputs": outs,
        }

    def model_config(self, name: str, version: int = -1):
        return self.manager.get_model(name, version).config

    def model_config_dict(self, name: str, version: int = -1) -> dict:
        return config_to_dict(self.manager.get_model(name, version).config)

    def logging_settings(self) -> Any:
        """The logging extension's settings; UNSUPPORTED when none are installed."""
        if self.log_settings is None:
            raise Unsupported("the logging extension is not available")
        return self.log_settings

    # -- inference -----------------------------------------------------------------------------

    def get_model(self, name: str, version: int = -1) -> Model:
        return self.manager.get_model(name, version)

    def refuse_if_shutting_down(self) -> None:
        """Raise UNAVAILABLE once the server is stopping (frontends call it before
        decoding a request, so a refused request costs nothing more)."""
        if self.shutting_down:
            raise Unavailable(SHUTTING_DOWN)

    def submit(self, request: InferenceRequest, on_response: ResponseCallback,
               stream: bool = False, caller: str = "", parent_trace: Any = None) -> Model:
        """Hand a request to its model; every response goes to ``on_response``.

        The any-thread entry: never blocks, and ``on_response(response, final)``
        runs on whichever thread produces each response (the caller's own when
        the model runs inline). ``stream=False`` (one response expected) refuses
        decoupled models with Triton's text for the ``caller`` ("http", "grpc",
        "bls"; default: the request's origin, else "http"). ``caller`` "bls" and
        "ensemble" are calls made inside accepted requests: they are not refused
        while the server drains. A version retired by a reload between lookup
        and submit is retried on its successor. ``parent_trace``: the trace of
        the request this call is made for (an ensemble step, a BLS call with
        ``trace=``); the call gets a child trace. Returns the model; raises
        NaiadError with nothing submitted.
        """
        caller = caller or request.origin or "http"
        if self.shutting_down and caller not in INTERNAL_CALLERS:
            raise Unavailable(SHUTTING_DOWN)
        name = request.model_name
        try:
            model = self.manager.get_model(name, request.model_version)
        except NaiadError:
            if self.on_demand is not None:  # a model not loaded loads now
                pending = self.on_demand.park(request, on_response, stream, caller,
                                              parent_trace)
                if pending is not None:
                    return pending
            if caller == "bls":
                raise NaiadError(_BLS_NOT_READY.format(name=name)) from None
            raise
        if model.decoupled and not stream:
            text = _DECOUPLED_REFUSED.get(caller, _DECOUPLED_REFUSED["http"])
            if caller == "bls":
                raise NaiadError(text.format(name=name))  # INTERNAL, as Triton answers
            raise Unsupported(text)  # HTTP 501, gRPC UNIMPLEMENTED
        request.set_response_callback(on_response)
        child = self.tracer.child(parent_trace, request) if parent_trace is not None else None
        try:
            try:
                model.submit(request)
            except Unavailable:
                if model.accepting:
                    raise
                # the version retired between lookup and submit (a reload): the new one
                # serves; or it was unloaded (evicted), and loads again on demand
                try:
                    model = self.manager.get_model(name, request.model_version)
                except NaiadError:
                    pending = None if self.on_demand is None else self.on_demand.park(
                        request, on_response, stream, caller, parent_trace)
                    if pending is None:
                        raise
                    if child is not None:
                        self.tracer.finish(child, request)
                    return pending
                model.submit(request)
        except NaiadError:
            if child is not None:
                self.tracer.finish(child, request)
            raise
        return model

    async def infer(self, request: InferenceRequest,
                    on_wait: Callable[[Any, InferenceRequest], Any] | None = None,
                    ) -> InferenceResponse:
        """Run one request to completion (on the loop); raises NaiadError if it fails.

        ``on_wait(model, request)``: called only when the request could not be
        answered at once (it queued); it may return an object with ``cancel()``
        that is called when the response arrives (frontends watch for client
        disconnects this way, paying nothing for requests answered inline).
        """
        fut, on_response = final_response_future()
        model = self.submit(request, on_response)
        watcher = on_wait(model, request) if on_wait is not None and not fut.done() else None
        try:
            response = await fut
        except asyncio.CancelledError:
            model.cancel(request)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        return successful(response, model.name)

    async def ensure_loaded(self, name: str) -> None:
        """With --model-load-on-demand, load ``name`` now if it is in a repository and not
        loaded (for frontends that look a model up before they submit); raises NaiadError
        (UNAVAILABLE) if that load fails. Does nothing otherwise."""
        if self.on_demand is not None:
            await self.on_demand.ensure_loaded(name)

    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Every response of a request (several for decoupled models), as they come.

        Errors arrive as responses with ``error`` set; the iterator ends after
        the final one.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_response(response: InferenceResponse | None, final: bool) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (response, final))

        model = self.submit(request, on_response, stream=True)
        try:
            while True:
                response, final = await queue.get()
                if response is not None:
                    yield response
                if final:
                    return
        finally:
            if not request.responded:
                model.cancel(request)

    async def infer_numpy(self, model_name: str, inputs: dict[str, np.ndarray],
                          outputs: list[str] | None = None, version: int = -1,
                          parameters: dict | None = None, request_id: str = "",
                          ) -> dict[str, np.ndarray]:
        """numpy arrays in, numpy arrays out (strings and objects are BYTES)."""
        request = make_request(model_name, inputs, outputs, version, parameters, request_id)
        response = await self.infer(request)
        return {t.name: t.data for t in response.outputs}

    # -- repository -----------------------------------------------------------------------------

    def _check_control(self) -> None:
        if self.shutting_down:
            raise Unavailable("Server not ready")
        if self.options.model_control_mode != MODE_EXPLICIT:
            # Triton's words in both none and poll mode
            raise Unavailable("explicit model load / unload is not allowed if polling is enabled")

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        items = self.manager.index(ready_only)
        if self.on_demand is not None:
            return self.on_demand.index(items)
        return items

    async def load_model(self, name: str, config: Any = None,
                         files: dict[str, bytes] | None = None) -> None:
        self._check_control()
        await self.manager.load_model(name, config_override=config, files=files)

    async def load_model_from_parameters(self, name: str, params: dict) -> None:
        """The repository load API: ``config`` (JSON) and ``file:<path>`` parameters.

        ``file:`` values are the file's bytes: base64 text over HTTP, raw
        bytes over gRPC; both are accepted. Files need ``config`` and make up
        the whole model folder (paths relative to it, e.g. ``file:1/model.py``).
        """
        self._check_control()
        config = None
        files: dict[str, bytes] = {}
        for key, value in params.items():
            if key == "config":
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("utf-8", "replace")
                if not isinstance(value, str):
                    raise InvalidArgument("the 'config' parameter must be a JSON string")
                config = parse_config_override(name, value)
            elif key.startswith("file:"):
                files[key[len("file:"):]] = _file_parameter(key, value)
            else:
                raise InvalidArgument(f"unexpected load parameter '{key}': expected 'config' "
                                      "or 'file:<version>/<path>'")
        if files and config is None:
            raise InvalidArgument(
                "Load parameter 'config' must be specified for model file override")
        await self.manager.load_model(name, config_override=config, files=files or None)

    async def unload_model(self, name: str, unload_dependents: bool = False,
                           wait: bool = False) -> None:
        """The repository unload API: returns once ``name`` takes no new requests.

        Accepted requests finish and the model is finalized in the background
        (as Triton's API does); ``wait=True`` waits for all of that.
        """
        self._check_control()
        await self.manager.unload_model(name, unload_dependents, wait=wait)

    # -- statistics -------------------------------------------------------------------------------

    def model_statistics(self, name: str = "", version: int = -1) -> dict:
        if not name:
            return {"model_stats": [m.stats.as_dict() for m in self.manager.ready_models()]}
        # Triton answers both with INVALID_ARG (HTTP 400) and these messages
        models = self.manager.ready_models(name)
        if not models:
            raise InvalidArgument(f"requested model '{name}' is not available")
        if version >= 0:
            models = [m for m in models if m.version == version]
            if not models:
                raise InvalidArgument(
                    f"requested model version is not available for model '{name}'")
        return {"model_stats": [m.stats.as_dict() for m in models]}


def _file_parameter(key: str, value: Any) -> bytes:
    """A ``file:`` load parameter's bytes: raw (gRPC bytes_param) or base64 text (HTTP)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"parameter '{key}' must be base64 text or bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"parameter '{key}' is not valid base64") from None


def make_request(
    model_name: str,
    inputs: dict[str, Any],
    outputs: list[str] | None = None,
    version: int = -1,
    parameters: dict | None = None,
    request_id: str = "",
) -> InferenceRequest:
    """A core request from numpy arrays (or Tensors)."""
    tensors: dict[str, Tensor] = {}
    for name, value in inputs.items():
        if isinstance(value, Tensor):
            tensors[name] = value
            continue
        arr = np.asarray(value)
        dt = datatypes.wire_from_numpy(arr.dtype)
        if not dt:
            raise InvalidArgument(f"input '{name}' has unsupported dtype {arr.dtype}")
        if dt == "BYTES":
            obj = np.empty(arr.shape, dtype=np.object_)
            flat = obj.reshape(-1)
            for i, item in enumerate(arr.reshape(-1)):
                flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            arr = obj
        tensors[name] = Tensor(name, dt, arr)
    requested = {n: RequestedOutput(n) for n in outputs} if outputs else None
    return InferenceRequest(model_name, tensors, model_version=version, id=request_id,
                            requested_outputs=requested, parameters=dict(parameters or {}))
