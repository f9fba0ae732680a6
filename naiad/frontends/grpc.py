"""The gRPC frontend: Triton's ``inference.GRPCInferenceService`` and ``grpc.health.v1``.

Two transports carry the same handlers (``InferenceService``) and stream
logic (``StreamSession``):

* ``grpc_native.NativeServer`` (the default): naiad's own server core on
  grpcio's C layer, one polling thread, ModelInfer handed straight to
  ``Server.submit`` with no thread hop (a cheap python model runs inline on
  the polling thread);
* grpcio's public synchronous server (``NAIAD_GRPC_SERVER=grpcio``, or when
  this grpcio lacks what the native core needs): a handler thread per call on
  an elastic pool (``grpc_pool.ElasticPool``), waiting on a lock the response
  callback releases.

Both run beside the HTTP event loop, not on it; docs/grpc.md has the
measurements behind the choice (``grpc.aio`` on the HTTP loop was slowest).
Everything else is translation: ``protocol/grpc_codec.py`` converts messages,
``naiad.server.Server`` does the work, ``frontends/status.py`` maps error
kinds to status codes, ``frontends/extensions.py`` answers for subsystems not
plugged in. Calls into the asynchronous parts of the core (model load and
unload) run on the server's event loop while the handler waits.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from naiad.core.errors import (
    ErrorKind,
    InvalidArgument,
    NaiadError,
    Unsupported,
    as_naiad_error,
)
from naiad.core.types import InferenceRequest, InferenceResponse, successful
from naiad.frontends import extensions, restrictions
from naiad.frontends.grpc_pool import ElasticPool
from naiad.frontends.status import grpc_status
from naiad.observability.logging import log_grpc_call
from naiad.protocol import grpc_codec as codec
from naiad.protocol import grpc_service_pb2 as pb
from naiad.protocol import health_pb2

log = logging.getLogger("naiad.grpc")

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

# Triton allows messages up to INT32_MAX bytes; grpc's default is 4 MB
MAX_MESSAGE_BYTES = (1 << 31) - 1
# a handler first waits this long for its response before stepping aside in the pool
SHORT_WAIT_S = 0.002
# how often a long wait checks whether the client is still there
CLIENT_CHECK_S = 0.5
# grace period for in-flight RPCs when the server stops
STOP_GRACE_S = 5.0

_STATUS: dict[ErrorKind, grpc.StatusCode] = {kind: grpc_status(kind) for kind in ErrorKind}
_COMPRESSION_LEVELS = {"none": 0, "low": 1, "medium": 2, "high": 3}

# Triton's groups of RPCs for --grpc-restricted-protocol
PROTOCOL_GROUPS: dict[str, tuple[str, ...]] = {
    "health": ("ServerLive", "ServerReady", "ModelReady", "Check", "Watch"),
    "metadata": ("ServerMetadata", "ModelMetadata"),
    "inference": ("ModelInfer", "ModelStreamInfer"),
    "shared-memory": ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
                      "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
                      "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"),
    "model-config": ("ModelConfig",),
    "model-repository": ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
    "statistics": ("ModelStatistics",),
    "trace": ("TraceSetting",),
    "logging": ("LogSettings",),
}


def _fail(context: Any, exc: BaseException, empty: Any) -> Any:
    """Answer an RPC with the error's status code and message (never a traceback)."""
    if not isinstance(exc, NaiadError):
        log.exception("unhandled error in a gRPC handler")
        exc = as_naiad_error(exc)
    context.set_code(_STATUS.get(exc.kind, grpc.StatusCode.UNKNOWN))
    context.set_details(exc.message)
    return empty


class _Waiter:
    """Receives a request's final response on any thread; the handler waits on its lock."""

    __slots__ = ("response", "done", "lock")

    def __init__(self) -> None:
        self.response: InferenceResponse | None = None
        self.done = False
        lock = _thread.allocate_lock()
        lock.acquire()
        self.lock = lock

    def on_response(self, response: InferenceResponse | None, final: bool) -> None:
        if final:
            self.response = response
            self.done = True
            self.lock.release()


def parse_restricted_protocols(entries: list[str]) -> dict[str, tuple[str, str]]:
    """``--grpc-restricted-protocol`` entries as {rpc method name: (metadata key, value)}."""
    by_group = restrictions.parse_restrictions(entries, "--grpc-restricted-protocol",
                                              "protocol")
    return {method: rule for group, rule in by_group.items()
            for method in PROTOCOL_GROUPS[group]}


class InferenceService:
    """The RPC handlers; each translates, calls the core, translates back."""

    def __init__(self, server: Any, pool: ElasticPool, options: Any = None):
        self.server = server
        self.pool = pool
        opts = options if options is not None else server.options
        self.forward = restrictions.compile_forward_pattern(
            getattr(opts, "grpc_header_forward_pattern", "") or "",
            "--grpc-header-forward-pattern")

    # -- helpers ------------------------------------------------------------------------

    def _run_on_loop(self, coro: Any) -> Any:
        """Run a core coroutine on the server's loop; the handler steps aside while it runs."""
        loop = self.server._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise NaiadError("the server is not running")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        with self.pool.waiting():
            return fut.result()

    def _forward_headers(self, request: InferenceRequest, metadata: Any) -> None:
        match = self.forward.search
        for key, value in metadata:
            if match(key) is not None and isinstance(value, str):
                request.parameters[key] = value


    # -- health and metadata ---------------------------------------------------------

    def ServerLive(self, msg, context):
        return pb.ServerLiveResponse(live=self.server.live())

    def ServerReady(self, msg, context):
        return pb.ServerReadyResponse(ready=self.server.ready())

    def ModelReady(self, msg, context):
        try:
            version = codec.parse_version(msg.version)
            return pb.ModelReadyResponse(ready=self.server.model_ready(msg.name, version))
        except Exception as exc:
            return _fail(context, exc, pb.ModelReadyResponse())

    def ServerMetadata(self, msg, context):
        meta = self.server.metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    def ModelMetadata(self, msg, context):
        try:
            meta = self.server.model_metadata(msg.name, codec.parse_version(msg.version))
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())
        except Exception as exc:
            return _fail(context, exc, pb.ModelMetadataResponse())

    def ModelConfig(self, msg, context):
        try:
            config = self.server.model_config(msg.name, codec.parse_version(msg.version))
            return pb.ModelConfigResponse(config=config)
        except Exception as exc:
            return _fail(context, exc, pb.ModelConfigResponse())

    def ModelStatistics(self, msg, context):
        try:
            stats = self.server.model_statistics(msg.name, codec.parse_version(msg.version))
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse(),
                                         ignore_unknown_fields=True)
        except Exception as exc:
            return _fail(context, exc, pb.ModelStatisticsResponse())

    # -- inference ---------------------------------------------------------------------------

    def ModelInfer(self, msg, context):
        server = self.server
        tracer = server.tracer
        received = time.monotonic_ns() if tracer is not None and tracer.active else 0
        trace = request = None
        try:
            extensions.refuse_if_shutting_down(server)
            shm = server.shared_memory
            request, _ = codec.decode_infer_request(msg, shm)
            if self.forward is not None:
                self._forward_headers(request, context.invocation_metadata())
            if received:
                trace = tracer.sample(request, "GRPC", received, received)
            waiter = _Waiter()
            model = server.submit(request, waiter.on_response)
            if not waiter.done and not self._wait(waiter, model, request, context):
                return codec.ModelInferResponse()  # the client is gone
            response = successful(waiter.response, model.name)
            if trace is not None:
                trace.response(response)
                trace.stamp("GRPC_SEND_START")
            return codec.encode_infer_response(response, request, shm)
        except Exception as exc:
            return _fail(context, exc, codec.ModelInferResponse())
        finally:
            if trace is not None:
                trace.stamp("GRPC_SEND_END")  # handed to grpcio, which sends it now
                tracer.finish(trace, request)

    def _wait(self, waiter: _Waiter, model: Any, request: InferenceRequest,
              context: Any) -> bool:
        """Wait for the response; False if the client went away first."""
        lock = waiter.lock
        if lock.acquire(timeout=SHORT_WAIT_S):
            return True
        with self.pool.waiting():
            while not lock.acquire(timeout=CLIENT_CHECK_S):
                if not context.is_active():
                    model.cancel(request)
                    return False
        return True

    def ModelStreamInfer(self, request_iterator, context):
        return _ThreadedStream(self, request_iterator, context).responses()

    # -- repository ----------------------------------------------------------------------------

    def RepositoryIndex(self, msg, context):
        try:
            if msg.repository_name:
                raise Unsupported("'repository_name' specification is not supported")
            index = self.server.repository_index(msg.ready)
            return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse(),
                                         ignore_unknown_fields=True)
        except Exception as exc:
            return _fail(context, exc, pb.RepositoryIndexResponse())

    def RepositoryModelLoad(self, msg, context):
        try:
            if msg.repository_name:
                raise Unsupported("'repository_name' specification is not supported")
            params = codec.repository_load_parameters(msg.parameters)
            self._run_on_loop(self.server.load_model_from_parameters(msg.model_name, params))
            return pb.RepositoryModelLoadResponse()
        except Exception as exc:
            return _fail(context, exc, pb.RepositoryModelLoadResponse())

    def RepositoryModelUnload(self, msg, context):
        try:
            if msg.repository_name:
                raise Unsupported("'repository_name' specification is not supported")
            dependents = codec.unload_dependents(msg.parameters)
            self._run_on_loop(self.server.unload_model(msg.model_name, dependents))
            return pb.RepositoryModelUnloadResponse()
        except Exception as exc:
            return _fail(context, exc, pb.RepositoryModelUnloadResponse())

    # -- shared memory ------------------------------------------------------------------------

    def SystemSharedMemoryStatus(self, msg, context):
        try:
            shm = extensions.system_shared_memory(self.server)
            resp = pb.SystemSharedMemoryStatusResponse()
            for region in shm.status(msg.name):
                r = resp.regions[region["name"]]
                r.name = region["name"]
                r.key = region["key"]
                r.offset = int(region.get("offset", 0))
                r.byte_size = int(region["byte_size"])
            return resp
        except Exception as exc:
            return _fail(context, exc, pb.SystemSharedMemoryStatusResponse())

    def SystemSharedMemoryRegister(self, msg, context):
        try:
            shm = extensions.system_shared_memory(self.server)
            shm.register(msg.name, msg.key, msg.offset, msg.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()
        except Exception as exc:
            return _fail(context, exc, pb.SystemSharedMemoryRegisterResponse())

    def SystemSharedMemoryUnregister(self, msg, context):
        try:
            extensions.system_shared_memory(self.server).unregister(msg.name)
            return pb.SystemSharedMemoryUnregisterResponse()
        except Exception as exc:
            return _fail(context, exc, pb.SystemSharedMemoryUnregisterResponse())

    def CudaSharedMemoryStatus(self, msg, context):
        try:
            resp = pb.CudaSharedMemoryStatusResponse()
            for region in extensions.cuda_shared_memory(self.server).status(msg.name):
                r = resp.regions[region["name"]]
                r.name = region["name"]
                r.device_id = int(region.get("device_id", 0))
                r.byte_size = int(region["byte_size"])
            return resp
        except Exception as exc:
            return _fail(context, exc, pb.CudaSharedMemoryStatusResponse())

    def CudaSharedMemoryRegister(self, msg, context):
        try:
            cuda = extensions.cuda_shared_memory(self.server)
            cuda.register(msg.name, msg.raw_handle, msg.device_id, msg.byte_size)
            return pb.CudaSharedMemoryRegisterResponse()
        except Exception as exc:
            return _fail(context, exc, pb.CudaSharedMemoryRegisterResponse())

    def CudaSharedMemoryUnregister(self, msg, context):
        try:
            extensions.cuda_shared_memory(self.server).unregister(msg.name)
            return pb.CudaSharedMemoryUnregisterResponse()
        except Exception as exc:
            return _fail(context, exc, pb.CudaSharedMemoryUnregisterResponse())

    # -- trace and logging ----------------------------------------------------------------------

    def TraceSetting(self, msg, context):
        try:
            tracer = extensions.tracer(self.server)
            if msg.settings:
                settings = tracer.update_settings(msg.model_name,
                                                  codec.trace_settings_dict(msg.settings))
            else:
                settings = tracer.get_settings(msg.model_name)
            resp = pb.TraceSettingResponse()
            codec.fill_trace_settings(resp.settings, settings)
            return resp
        except Exception as exc:
            return _fail(context, exc, pb.TraceSettingResponse())

    def LogSettings(self, msg, context):
        try:
            settings = extensions.log_settings(self.server)
            if msg.settings:
                current = settings.update(codec.log_settings_dict(msg.settings))
            else:
                current = settings.get()
            resp = pb.LogSettingsResponse()
            codec.fill_log_settings(resp.settings, current)
            return resp
        except Exception as exc:
            return _fail(context, exc, pb.LogSettingsResponse())

    # -- grpc.health.v1 ----------------------------------------------------------------------------

    def Check(self, msg, context):
        status = health_pb2.HealthCheckResponse
        return status(status=status.SERVING if self.server.ready() else status.NOT_SERVING)

    def Watch(self, msg, context):
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("")
        return iter(())


END = object()  # marks the end of a stream's responses


class StreamSession:
    """One ModelStreamInfer call, whatever carries it: submitting, ordering, ending.

    Many requests may be in flight at once. Responses of decoupled models go
    out as they come; those of other models in the order their requests
    arrived, as Triton sends them. A request the server refuses is answered
    with ``error_message`` and the stream stays open. A transport subclass
    feeds requests to ``submit`` and ``end_of_requests`` and sends what
    ``_emit`` receives: a message, a callable making one, or ``END``.
    ``_emit`` is always called with ``lock`` held, so emissions keep their order.
    """

    def __init__(self, service: InferenceService, metadata: Any = ()):
        self.service = service
        self.metadata = metadata
        self.lock = threading.Lock()
        self.in_order: collections.deque = collections.deque()  # [message or None] slots
        self.in_flight: dict[InferenceRequest, Any] = {}  # request -> its model
        self.reading = True
        self.closed = False

    def _emit(self, item: Any) -> None:  # pragma: no cover - transports override
        raise NotImplementedError

    # -- requests in ------------------------------------------------------------------

    def submit(self, msg: Any) -> None:
        service = self.service
        server = service.server
        tracer = server.tracer
        received = time.monotonic_ns() if tracer is not None and tracer.active else 0
        slot = None
        try:
            extensions.refuse_if_shutting_down(server)
            shm = server.shared_memory
            request, empty_final = codec.decode_infer_request(msg, shm)
            if service.forward is not None:
                service._forward_headers(request, self.metadata)
            # decoupled or not decides where responses queue: known before any arrives
            model = server.get_model(request.model_name, request.model_version)
        except Exception as exc:
            err = exc if isinstance(exc, NaiadError) else as_naiad_error(exc)
            self.refuse(err, msg.id)
            return
        decoupled = model.decoupled
        version_text = msg.model_version
        trace = tracer.sample(request, "GRPC", received, received) if received else None
        with self.lock:
            if not decoupled:
                slot = [None]
                self.in_order.append(slot)
            self.in_flight[request] = model

        def on_response(response: InferenceResponse | None, final: bool) -> None:
            if trace is not None:
                if response is not None:
                    trace.response(response)
                if final:
                    tracer.finish(trace, request)
            if response is None and not (final and empty_final):
                if final:
                    self._finished(request, None, None)
                return

            def make() -> Any:
                return codec.stream_response(response, request, version_text, final, shm)

            if final:
                self._finished(request, slot, make)
            else:
                self._deliver(slot, make)

        try:
            server.submit(request, on_response, stream=True)
        except Exception as exc:
            if trace is not None:
                tracer.finish(trace, request)
            err = exc if isinstance(exc, NaiadError) else as_naiad_error(exc)
            with self.lock:
                self.in_flight.pop(request, None)
            self.refuse(err, msg.id, slot, ordered=not decoupled)

    def refuse(self, error: NaiadError, request_id: str, slot: list | None = None,
               ordered: bool = True) -> None:
        """A request refused before it ran: its error (in order unless decoupled)."""
        message = codec.stream_error(error.message, request_id)
        with self.lock:
            if self.closed:
                return
            if not ordered:
                self._emit(message)
            else:
                if slot is None:
                    slot = [None]
                    self.in_order.append(slot)
                slot[0] = message
            self._flush_locked()

    def end_of_requests(self) -> None:
        """The client sent its last request: END follows the last response."""
        with self.lock:
            self.reading = False
            if not self.closed:
                self._flush_locked()

    def abort(self) -> None:
        """Nobody will read the responses: cancel what is in flight, send nothing more."""
        with self.lock:
            self.reading = False
            self.closed = True
            pending = list(self.in_flight.items())
            self.in_flight.clear()
            self.in_order.clear()
        for request, model in pending:
            model.cancel(request)

    # -- responses out ------------------------------------------------------------------

    def _deliver(self, slot: list | None, item: Any) -> None:
        with self.lock:
            if self.closed:
                return
            if slot is None:
                self._emit(item)
            else:
                slot[0] = item
                self._flush_locked()

    def _finished(self, request: InferenceRequest, slot: list | None, item: Any) -> None:
        with self.lock:
            self.in_flight.pop(request, None)
            if self.closed:
                return
            if item is not None:
                if slot is None:
                    self._emit(item)
                else:
                    slot[0] = item
            self._flush_locked()

    def _flush_locked(self) -> None:
        order = self.in_order
        while order and order[0][0] is not None:
            self._emit(order.popleft()[0])
        if not self.reading and not self.in_flight and not order:
            self.closed = True
            self._emit(END)


class _ThreadedStream(StreamSession):
    """A stream on grpcio's own server: a reader thread submits, the RPC's thread writes."""

    def __init__(self, service: InferenceService, requests: Iterator, context: Any):
        super().__init__(service, context.invocation_metadata())
        self.requests = requests
        self.outbox: collections.deque = collections.deque()
        self.ready = threading.Semaphore(0)

    def _emit(self, item: Any) -> None:
        self.outbox.append(item)
        self.ready.release()

    def responses(self) -> Iterator[Any]:
        pool = self.service.pool
        with pool.waiting():
            try:
                pool.submit(self._read)
                while True:
                    self.ready.acquire()
                    with self.lock:
                        item = self.outbox.popleft()
                    if item is END:
                        return
                    yield item if not callable(item) else item()
            finally:
                self.abort()

    def _read(self) -> None:
        with self.service.pool.waiting():
            try:
                for msg in self.requests:
                    if self.closed:
                        break
                    if isinstance(msg, codec.Unparsable):
                        self.refuse(msg.error, "")
                        continue
                    self.submit(msg)
            except Exception as exc:  # the client cancelled or the connection broke
                if not isinstance(exc, grpc.RpcError):
                    log.exception("reading a gRPC stream failed")
                self.abort()
                with self.lock:
                    self._emit(END)  # wake the writer: nothing more will come
            else:
                self.end_of_requests()


class GrpcFrontend:
    """Runs the gRPC service on grpcio's server, beside the HTTP event loop."""

    name = "GRPCInferenceService"

    def __init__(self, server: Any, address: str, port: int, options: Any = None):
        self.server = server
        self.address = address
        self.port = port
        self.options = options if options is not None else server.options
        self.pool: ElasticPool | None = None
        self.service: InferenceService | None = None
        self.kind = ""  # "native" (naiad's core on grpcio's C layer) or "grpcio"
        self._grpc: Any = None

    # -- configuration ------------------------------------------------------------------

    def channel_options(self) -> list[tuple[str, Any]]:
        """grpc channel arguments from tritonserver's --grpc-* options."""
        o = self.options
        args: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", int(bool(o.reuse_grpc_port))),
            ("grpc.keepalive_time_ms", int(o.grpc_keepalive_time)),
            ("grpc.keepalive_timeout_ms", int(o.grpc_keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", int(bool(o.grpc_keepalive_permit_without_calls))),
            ("grpc.http2.max_pings_without_data", int(o.grpc_http2_max_pings_without_data)),
            ("grpc.http2.min_ping_interval_without_data_ms",
             int(o.grpc_http2_min_recv_ping_interval_without_data)),
            ("grpc.http2.max_ping_strikes", int(o.grpc_http2_max_ping_strikes)),
        ]
        if o.grpc_max_connection_age:
            args.append(("grpc.max_connection_age_ms", int(o.grpc_max_connection_age)))
            args.append(("grpc.max_connection_age_grace_ms",
                         int(o.grpc_max_connection_age_grace)))
        level = _COMPRESSION_LEVELS.get(o.grpc_infer_response_compression_level, 0)
        if level:
            args.append(("grpc.default_compression_level", level))
        return args

    def credentials(self) -> Any:
        """TLS server credentials when --grpc-use-ssl is on, else None."""
        o = self.options
        if not (o.grpc_use_ssl or o.grpc_use_ssl_mutual):
            return None

        def read(flag: str, path: str) -> bytes:
            if not path:
                raise InvalidArgument(f"{flag} is required with --grpc-use-ssl")
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise InvalidArgument(f"unable to read {flag} '{path}': {exc.strerror}") from None

        cert = read("--grpc-server-cert", o.grpc_server_cert)
        key = read("--grpc-server-key", o.grpc_server_key)
        root = read("--grpc-root-cert", o.grpc_root_cert) if (
            o.grpc_root_cert or o.grpc_use_ssl_mutual) else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=root,
                                           require_client_auth=bool(o.grpc_use_ssl_mutual))

    def _handlers(self, service: InferenceService,
                  restricted: dict[str, tuple[str, str]]) -> tuple[dict, dict]:
        unary = grpc.unary_unary_rpc_method_handler

        def guard(method: str, fn: Callable) -> Callable:
            rule = restricted.get(method)
            if rule is None:
                return parsed(fn)
            key, value = rule
            detail = restrictions.restricted_message("protocol", key)

            def checked(msg, context):
                for k, v in context.invocation_metadata():
                    if k == key and v == value:
                        return parsed(fn)(msg, context)
                context.abort(grpc.StatusCode.UNAVAILABLE, detail)

            return checked

        def parsed(fn: Callable) -> Callable:
            """A request that did not parse is refused (INVALID_ARGUMENT) before ``fn``."""
            name = fn.__name__

            def call(msg, context):
                if log.isEnabledFor(logging.DEBUG):  # --log-verbose, as Triton's handlers
                    log_grpc_call(log, name)
                if isinstance(msg, codec.Unparsable):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg.error.message)
                return fn(msg, context)

            return call

        def rpc(method: str, req: Any, resp: Any) -> Any:
            return unary(guard(method, getattr(service, method)),
                         request_deserializer=codec.lenient_parser(req),
                         response_serializer=resp.SerializeToString)

        names = [
            ("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse),
            ("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse),
            ("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse),
            ("ServerMetadata", pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            ("ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            ("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse),
            ("ModelConfig", pb.ModelConfigRequest, pb.ModelConfigResponse),
            ("ModelStatistics", pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            ("RepositoryIndex", pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
            ("RepositoryModelLoad", pb.RepositoryModelLoadRequest,
             pb.RepositoryModelLoadResponse),
            ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest,
             pb.RepositoryModelUnloadResponse),
            ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest,
             pb.SystemSharedMemoryStatusResponse),
            ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest,
             pb.SystemSharedMemoryRegisterResponse),
            ("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest,
             pb.SystemSharedMemoryUnregisterResponse),
            ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest,
             pb.CudaSharedMemoryStatusResponse),
            ("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest,
             pb.CudaSharedMemoryRegisterResponse),
            ("CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest,
             pb.CudaSharedMemoryUnregisterResponse),
            ("TraceSetting", pb.TraceSettingRequest, pb.TraceSettingResponse),
            ("LogSettings", pb.LogSettingsRequest, pb.LogSettingsResponse),
        ]
        inference = {name: rpc(name, req, resp) for name, req, resp in names}
        inference["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            guard("ModelStreamInfer", service.ModelStreamInfer),
            request_deserializer=codec.lenient_parser(pb.ModelInferRequest),
            response_serializer=pb.ModelStreamInferResponse.SerializeToString)
        health = {
            "Check": unary(guard("Check", service.Check),
                           request_deserializer=codec.lenient_parser(
                               health_pb2.HealthCheckRequest),
                           response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                guard("Watch", service.Watch),
                request_deserializer=codec.lenient_parser(health_pb2.HealthCheckRequest),
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
        }
        return inference, health

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        from naiad.frontends import grpc_native

        kind = os.environ.get("NAIAD_GRPC_SERVER", "native")
        if kind not in ("native", "grpcio"):
            raise InvalidArgument(f"NAIAD_GRPC_SERVER must be 'native' or 'grpcio', got '{kind}'")
        if kind == "native" and not grpc_native.available():
            log.warning("this grpcio lacks the internal API of naiad's gRPC core: serving with "
                        "grpcio's synchronous server instead (slower)")
            kind = "grpcio"
        threads = int(os.environ.get("NAIAD_GRPC_THREADS", "") or (2 if kind == "native" else 4))
        pool = ElasticPool(core=threads, name="naiad-grpc")
        service = InferenceService(self.server, pool, self.options)
        credentials = self.credentials()
        restricted = parse_restricted_protocols(list(self.options.grpc_restricted_protocol or []))
        host = f"[{self.address}]" if ":" in self.address else self.address
        target = f"{host}:{self.port}"
        if kind == "native":
            native = grpc_native.NativeServer(service, pool, self.channel_options(), credentials,
                                              restricted)
            port = native.add_port(target)
            if not port:
                pool.shutdown(wait=False)
                raise OSError(errno.EADDRINUSE, f"unable to bind {self.address}:{self.port}")
            self.port = port
            native.begin()
            self._grpc = native
            self.pool = pool
            self.service = service
            self.kind = kind
            return
        inference, health = self._handlers(service, restricted)
        server = grpc.server(pool, options=self.channel_options(), maximum_concurrent_rpcs=None)
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(SERVICE, inference)
            server.add_registered_method_handlers(HEALTH_SERVICE, health)
        else:  # pragma: no cover - older grpcio
            server.add_generic_rpc_handlers((
                grpc.method_handlers_generic_handler(SERVICE, inference),
                grpc.method_handlers_generic_handler(HEALTH_SERVICE, health)))
        try:
            if credentials is None:
                port = server.add_insecure_port(target)
            else:
                port = server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            pool.shutdown(wait=False)
            raise OSError(errno.EADDRINUSE,
                          f"unable to bind {self.address}:{self.port}: {exc}") from None
        if not port:
            pool.shutdown(wait=False)
            raise OSError(errno.EADDRINUSE, f"unable to bind {self.address}:{self.port}")
        self.port = port
        server.start()
        self._grpc = server
        self.pool = pool
        self.service = service
        self.kind = kind

    async def stop(self) -> None:
        server, self._grpc = self._grpc, None
        if server is None:
            return
        done = server.stop(STOP_GRACE_S)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, done.wait, STOP_GRACE_S + 5)
        if self.pool is not None:
            self.pool.shutdown(wait=False)
