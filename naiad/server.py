"""Server: the one in-process API every frontend calls.

HTTP, gRPC, the metrics endpoint, BLS calls from python models and embedding
applications all go through this object: health, metadata, infer, repository
control, statistics. It owns the repository manager and the frontends'
lifecycle.

Asynchronous by design (the frontends share its event loop); for plain
synchronous code, :class:`naiad.embedded.EmbeddedServer` runs one on a
background thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from naiad import __version__
from naiad.core.errors import (
    InvalidArgument,
    Unavailable,
    Unsupported,
)
from naiad.core.types import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    ResponseCallback,
    Tensor,
    successful,
)
from naiad.options import MODE_EXPLICIT, MODE_NONE, MODE_POLL, ServerOptions
from naiad.protocol import datatypes
from naiad.repository.manager import ModelRepositoryManager

log = logging.getLogger("naiad.server")

# The protocol extensions this server implements; the metadata endpoint lists
# exactly these, so each subsystem adds its name when it is wired in.
BASE_EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
]


def _set_future(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class Server:
    """A naiad server: models, their schedulers, and (optionally) network frontends."""

    def __init__(self, options: ServerOptions | None = None, **kwargs: Any):
        if options is None:
            options = ServerOptions.from_kwargs(**kwargs)
        elif kwargs:
            raise TypeError("pass either ServerOptions or keyword options, not both")
        self.options = options
        self.manager = ModelRepositoryManager(options, server=self)
        self.extensions: list[str] = list(BASE_EXTENSIONS)
        self.frontends: list[Any] = []
        self.started = False
        self.shutting_down = False
        self.stopped = False
        self.start_time = time.time()
        self.poller: Any = None  # the repository poller in poll mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # subsystems later work plugs in (shared memory, metrics, tracing, logging)
        self.shared_memory: Any = None
        self.metrics: Any = None
        self.tracer: Any = None
        from naiad.observability import extensions as _observability

        _observability.install(self)

    # -- lifecycle ---------------------------------------------------------------

    async def check(self) -> None:
        """Check the options and that every repository can be read (no model is loaded).

        ``start`` does this itself; the command line calls it first so that a
        bad repository fails before any port is bound.
        """
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
        self._checked = True

    async def start(self) -> None:
        """Check the repositories and load models as the control mode says.

        The server is ready (``ready()``) only once this returns: every model
        the mode asks for has finished loading (and warming up). In poll mode
        the repository poller starts afterwards.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
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
        else:
            await self.manager.load_all()
        if self.shutting_down:
            return
        self.started = True
        if mode == MODE_POLL:
            from naiad.repository.poll import RepositoryPoller

            self.poller = RepositoryPoller(self.manager, opts.repository_poll_secs)
            self.poller.start()

    async def start_frontends(self) -> None:
        """Bind and start the network endpoints the options allow.

        Raises OSError (with the address) if a port is busy; frontends already
        started are stopped again.
        """
        opts = self.options
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        specs: list[tuple[str, Any]] = []
        if opts.allow_grpc:
            try:
                from naiad.frontends.grpc import GrpcFrontend
            except ImportError:
                log.warning("the gRPC endpoint is not available in this build")
            else:
                specs.append(("grpc", GrpcFrontend(self, opts.grpc_address, opts.grpc_port)))
        if opts.allow_http:
            from naiad.frontends.http import HttpFrontend

            specs.append(("http", HttpFrontend(self, opts.http_address, opts.http_port,
                                               opts.reuse_http_port, opts.http_max_input_size)))
        if opts.allow_openai:
            from naiad.frontends.openai import openai_frontend

            specs.append(("openai", openai_frontend(self)))
        if opts.allow_metrics:
            try:
                from naiad.frontends.metrics import MetricsFrontend
            except ImportError:
                log.warning("the metrics endpoint is not available in this build")
            else:
                specs.append(("metrics", MetricsFrontend(
                    self, opts.effective_metrics_address, opts.metrics_port)))
        try:
            for _, fe in specs:
                try:
                    await fe.start()
                except OSError as exc:  # name the service, as tritonserver does
                    raise OSError(exc.errno, f"failed to start {fe.name}: "
                                             f"{exc.strerror or exc}") from None
                self.frontends.append(fe)
                log.info("Started %s at %s:%d", fe.name, fe.address, fe.port)
        except BaseException:
            for fe in reversed(self.frontends):
                await fe.stop()
            self.frontends.clear()
            raise

    def option_rows(self) -> list[tuple[str, str]]:
        opts = self.options
        rows = [
            ("server_id", opts.server_id),
            ("server_version", __version__),
            ("server_extensions", " ".join(self.extensions)),
        ]
        rows += [(f"model_repository_path[{i}]", r) for i, r in enumerate(opts.model_repositories)]
        rows += [
            ("model_control_mode", f"MODE_{opts.model_control_mode.upper()}"),
            ("strict_model_config", str(int(not opts.auto_complete_config))),
            ("model_config_name", opts.model_config_name),
            ("rate_limit", opts.rate_limit.upper()),
            ("strict_readiness", str(int(opts.strict_readiness))),
            ("exit_timeout", str(opts.exit_timeout_secs)),
        ]
        return rows

    def load_failures(self) -> list[tuple[str, str, str]]:
        return [row for row in self.manager.status_rows() if row[2].startswith("UNAVAILABLE")]

    async def stop(self, timeout: float | None = None) -> bool:
        """Shut down gracefully: drain, close the frontends, unload every model.

        At once the server reports not ready and the frontends refuse new
        inference (UNAVAILABLE); requests already accepted finish, within
        ``timeout`` (default ``--exit-timeout-secs``) in all. Then the
        frontends close and every model drains its queue and is finalized,
        users (ensembles) before the models they call. Returns False if the
        timeout expired with work still in flight.
        """
        if self.stopped:
            return True
        self.shutting_down = True
        loop = asyncio.get_running_loop()
        wait = self.options.exit_timeout_secs if timeout is None else timeout
        deadline = loop.time() + wait
        clean = True
        if self.poller is not None:
            await self.poller.stop()
        for fe in self.frontends:
            drain = getattr(fe, "drain", None)
            if drain is None:
                continue
            try:
                if await drain(max(0.0, deadline - loop.time())) is False:
                    clean = False
            except Exception:
                log.exception("draining %s failed", type(fe).__name__)
        for fe in reversed(self.frontends):
            try:
                await fe.stop()
            except Exception:
                log.exception("stopping %s failed", type(fe).__name__)
        self.frontends.clear()
        try:
            await asyncio.wait_for(self.manager.unload_all(),
                                   timeout=max(0.1, deadline - loop.time()))
        except asyncio.TimeoutError:
            clean = False
        if not clean:
            log.error("Exit timeout of %ss expired with requests still in flight", wait)
        from naiad.observability import extensions as _observability

        _observability.close(self)
        self.started = False
        self.stopped = True
        return clean

    async def __aenter__(self) -> "Server":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- health and metadata ------------------------------------------------------

    def live(self) -> bool:
        """Live from the start until the process exits (draining included)."""
        return not self.stopped

    def ready(self) -> bool:
        """Startup done, not shutting down, and (strict) every wanted model serving."""
        if not self.started or self.shutting_down:
            return False
        if self.options.strict_readiness:
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
        model = self._model_for_info(name, version)
        entry = self.manager.models[name]
        ins, outs = model.io_metadata()
        return {
            "name": name,
            "versions": [str(v) for v in sorted(entry.ready)],
            "platform": model.platform,
            "inputs": ins,
            "outputs": outs,
        }

    def model_config(self, name: str, version: int = -1):
        return self._model_for_info(name, version).config

    def model_config_dict(self, name: str, version: int = -1) -> dict:
        return self._model_for_info(name, version).config_dict()

    def _model_for_info(self, name: str, version: int):
        return self.manager.get_model(name, version)

    # -- inference -------------------------------------------------------------------

    def get_model(self, name: str, version: int = -1):
        return self.manager.get_model(name, version)

    def submit(self, request: InferenceRequest, on_response: ResponseCallback,
               stream: bool = False):
        """Hand a request to its model; every response goes to ``on_response``.

        The synchronous core call under ``infer``/``infer_stream``, also used
        directly by frontends that wait on their own threads (gRPC). A call
        that expects one response (``stream=False``) refuses decoupled models
        with Triton's text; a version retired by a reload between lookup and
        submit is retried on its successor. Returns the model; raises
        NaiadError with nothing submitted.
        """
        model = self.manager.get_model(request.model_name, request.model_version)
        if model.decoupled and not stream:
            # Triton's texts (UNSUPPORTED: HTTP 501, gRPC UNIMPLEMENTED)
            raise Unsupported(
                "ModelInfer RPC doesn't support models with decoupled transaction policy"
                if request.origin == "grpc" else
                "HTTP end point doesn't support models with decoupled transaction policy")
        request.set_response_callback(on_response)
        try:
            model.submit(request)
        except Unavailable:
            if model.accepting:
                raise
            # the version retired between lookup and submit (a reload): the new one serves
            model = self.manager.get_model(request.model_name, request.model_version)
            model.submit(request)
        return model

    async def infer(self, request: InferenceRequest,
                    on_wait: Callable[[Any, InferenceRequest], Any] | None = None,
                    ) -> InferenceResponse:
        """Run one request to completion; raises NaiadError if it fails.

        ``on_wait(model, request)``: called only when the request could not be
        answered at once (it queued); it may return an object with ``cancel()``
        that is called when the response arrives (frontends watch for client
        disconnects this way, paying nothing for requests answered inline).
        """
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.create_future()
        loop_thread = self._loop_thread

        def on_response(response: InferenceResponse | None, final: bool) -> None:
            if final:
                if threading.get_ident() == loop_thread:
                    _set_future(fut, response)  # ran inline on the loop: no wake-up needed
                else:
                    loop.call_soon_threadsafe(_set_future, fut, response)

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

    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Every response of a request (several for decoupled models), as they come.

        Errors arrive as responses with ``error`` set; the iterator ends after
        the final one.
        """
        loop = self._loop or asyncio.get_running_loop()
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

    async def infer_numpy(
        self,
        model_name: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        version: int = -1,
        parameters: dict | None = None,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Convenience: numpy arrays in, numpy arrays out.

        Datatypes follow the arrays' dtypes (strings and objects are BYTES).
        """
        request = make_request(model_name, inputs, outputs, version, parameters, request_id)
        response = await self.infer(request)
        return {t.name: t.data for t in response.outputs}

    async def generate_http(self, name: str, version: int, body: bytes | bytearray,
                            stream: bool, send: Any) -> None:
        """The generate extension (HTTP only): see ``naiad.frontends.generate``."""
        from naiad.frontends import generate

        await generate.serve(self, name, version, body, stream, send)

    # -- repository -----------------------------------------------------------------

    def _check_control(self, action: str) -> None:
        if self.shutting_down:
            raise Unavailable("Server not ready")
        if self.options.model_control_mode != MODE_EXPLICIT:
            # Triton's words in both none and poll mode
            raise Unavailable("explicit model load / unload is not allowed if polling is enabled")

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.manager.index(ready_only)

    async def load_model(self, name: str, config: Any = None,
                         files: dict[str, bytes] | None = None) -> None:
        self._check_control("load")
        await self.manager.load_model(name, config_override=config, files=files)

    async def load_model_from_parameters(self, name: str, params: dict) -> None:
        """The repository load API: ``config`` (JSON) and ``file:<path>`` parameters.

        ``file:`` values are the file's bytes: base64 text over HTTP, raw
        bytes over gRPC; both are accepted. Files need ``config`` and make up
        the whole model folder (paths relative to it, e.g. ``file:1/model.py``).
        """
        self._check_control("load")
        config = None
        files: dict[str, bytes] = {}
        for key, value in params.items():
            if key == "config":
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("utf-8", "replace")
                if not isinstance(value, str):
                    raise InvalidArgument("the 'config' parameter must be a JSON string")
                from naiad.repository.config import parse_config_json

                config = parse_config_json(value)
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
        self._check_control("unload")
        await self.manager.unload_model(name, unload_dependents, wait=wait)

    # -- statistics ---------------------------------------------------------------------

    def model_statistics(self, name: str = "", version: int = -1) -> dict:
        stats = []
        if not name:
            for n in sorted(self.manager.models):
                entry = self.manager.models[n]
                for v in sorted(entry.ready):
                    stats.append(entry.ready[v].stats.as_dict())
            return {"model_stats": stats}
        # Triton answers both with INVALID_ARG (HTTP 400) and these messages
        entry = self.manager.models.get(name)
        if entry is None or not entry.ready:
            raise InvalidArgument(f"requested model '{name}' is not available")
        if version >= 0:
            model = entry.ready.get(version)
            if model is None:
                raise InvalidArgument(
                    f"requested model version is not available for model '{name}'")
            return {"model_stats": [model.stats.as_dict()]}
        return {"model_stats": [entry.ready[v].stats.as_dict() for v in sorted(entry.ready)]}


def _file_parameter(key: str, value: Any) -> bytes:
    """A ``file:`` load parameter's bytes: raw (gRPC bytes_param) or base64 text (HTTP)."""
    import base64
    import binascii

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
