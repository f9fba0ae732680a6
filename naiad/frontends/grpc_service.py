"""The gRPC service both transports serve: the RPC handlers and the stream rules.

``InferenceService`` holds one handler per RPC of Triton's
``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``: each
translates the message (``protocol/grpc_codec.py``), calls the data plane
and translates back; ``frontends/status.py`` maps error kinds to status
codes. ``StreamSession`` is ModelStreamInfer's ordering and final-flag logic.
The transports (``grpc.py``: grpcio's server; ``grpc_native.py``: naiad's
core on grpcio's C layer) import this module and nothing of each other.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from naiad.core.errors import ErrorKind, NaiadError, Unsupported, as_naiad_error
from naiad.core.handoff import ResponseWaiter
from naiad.core.types import InferenceRequest, InferenceResponse, successful
from naiad.frontends import restrictions
from naiad.frontends.grpc_pool import ElasticPool
from naiad.frontends.status import grpc_status
from naiad.observability.logging import log_response_outputs
from naiad.protocol import grpc_codec as codec
from naiad.protocol import grpc_service_pb2 as pb
from naiad.protocol import health_pb2

log = logging.getLogger("naiad.grpc")

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

# a handler first waits this long for its response before stepping aside in the pool
SHORT_WAIT_S = 0.002
# how often a long wait checks whether the client is still there
CLIENT_CHECK_S = 0.5

STATUS: dict[ErrorKind, grpc.StatusCode] = {kind: grpc_status(kind) for kind in ErrorKind}


def _fail(context: Any, exc: BaseException, empty: Any) -> Any:
    """Answer an RPC with the error's status code and message (never a traceback)."""
    if not isinstance(exc, NaiadError):
        log.exception("unhandled error in a gRPC handler")
        exc = as_naiad_error(exc)
    context.set_code(STATUS.get(exc.kind, grpc.StatusCode.UNKNOWN))
    context.set_details(exc.message)
    return empty


def _rpc(empty: Callable[[], Any]) -> Callable:
    """A unary handler whose failure becomes the RPC's status (Triton's table, never a
    traceback) with the empty reply ``empty()``."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def handler(self: Any, msg: Any, context: Any) -> Any:
            try:
                return fn(self, msg, context)
            except Exception as exc:
                return _fail(context, exc, empty())

        return handler

    return wrap


def _region_status(resp: Any, regions: list[dict], **fields: Callable) -> Any:
    """A shared-memory status reply: one entry per registered region, with ``fields``
    (name -> type) read from the registry's description of it."""
    for region in regions:
        entry = resp.regions[region["name"]]
        entry.name = region["name"]
        for field, kind in fields.items():
            setattr(entry, field, kind(region.get(field, 0)))
    return resp


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
        """Run a data-plane coroutine on its loop; the handler steps aside while it runs."""
        with self.pool.waiting():
            return self.server.call(coro)

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

    @_rpc(pb.ModelReadyResponse)
    def ModelReady(self, msg, context):
        version = codec.parse_version(msg.version)
        return pb.ModelReadyResponse(ready=self.server.model_ready(msg.name, version))

    def ServerMetadata(self, msg, context):
        meta = self.server.metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    @_rpc(pb.ModelMetadataResponse)
    def ModelMetadata(self, msg, context):
        meta = self.server.model_metadata(msg.name, codec.parse_version(msg.version))
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    @_rpc(pb.ModelConfigResponse)
    def ModelConfig(self, msg, context):
        config = self.server.model_config(msg.name, codec.parse_version(msg.version))
        return pb.ModelConfigResponse(config=config)

    @_rpc(pb.ModelStatisticsResponse)
    def ModelStatistics(self, msg, context):
        stats = self.server.model_statistics(msg.name, codec.parse_version(msg.version))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(),
                                     ignore_unknown_fields=True)

    # -- inference ---------------------------------------------------------------------------

    @_rpc(codec.ModelInferResponse)
    def ModelInfer(self, msg, context):
        server = self.server
        tracer = server.tracer
        received = time.monotonic_ns() if tracer.active else 0
        trace = request = None
        try:
            server.refuse_if_shutting_down()
            shm = server.shared_memory
            request, _ = codec.decode_infer_request(msg, shm)
            if self.forward is not None:
                self._forward_headers(request, context.invocation_metadata())
            if received:
                trace = tracer.sample(request, "GRPC", received, received)
            waiter = ResponseWaiter()
            model = server.submit(request, waiter)
            if not waiter.done and not self._wait(waiter, model, request, context):
                return codec.ModelInferResponse()  # the client is gone
            response = successful(waiter.response, model.name)
            if trace is not None:
                trace.response(response)
                trace.stamp("GRPC_SEND_START")
            if log.isEnabledFor(logging.DEBUG):  # --log-verbose: a line per output sent
                log_response_outputs(log, response)
            return codec.encode_infer_response(response, request, shm)
        finally:
            if trace is not None:
                trace.stamp("GRPC_SEND_END")  # handed to grpcio, which sends it now
                tracer.finish(trace, request)

    def _wait(self, waiter: ResponseWaiter, model: Any, request: InferenceRequest,
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

    # -- repository ----------------------------------------------------------------------------

    @_rpc(pb.RepositoryIndexResponse)
    def RepositoryIndex(self, msg, context):
        if msg.repository_name:
            raise Unsupported("'repository_name' specification is not supported")
        index = self.server.repository_index(msg.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse(),
                                     ignore_unknown_fields=True)

    @_rpc(pb.RepositoryModelLoadResponse)
    def RepositoryModelLoad(self, msg, context):
        if msg.repository_name:
            raise Unsupported("'repository_name' specification is not supported")
        params = codec.repository_load_parameters(msg.parameters)
        self._run_on_loop(self.server.load_model_from_parameters(msg.model_name, params))
        return pb.RepositoryModelLoadResponse()

    @_rpc(pb.RepositoryModelUnloadResponse)
    def RepositoryModelUnload(self, msg, context):
        if msg.repository_name:
            raise Unsupported("'repository_name' specification is not supported")
        dependents = codec.unload_dependents(msg.parameters)
        self._run_on_loop(self.server.unload_model(msg.model_name, dependents))
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory ------------------------------------------------------------------------

    @_rpc(pb.SystemSharedMemoryStatusResponse)
    def SystemSharedMemoryStatus(self, msg, context):
        return _region_status(pb.SystemSharedMemoryStatusResponse(),
                              self.server.shared_memory.status(msg.name),
                              key=str, offset=int, byte_size=int)

    @_rpc(pb.SystemSharedMemoryRegisterResponse)
    def SystemSharedMemoryRegister(self, msg, context):
        shm = self.server.shared_memory
        shm.register(msg.name, msg.key, msg.offset, msg.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc(pb.SystemSharedMemoryUnregisterResponse)
    def SystemSharedMemoryUnregister(self, msg, context):
        self.server.shared_memory.unregister(msg.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc(pb.CudaSharedMemoryStatusResponse)
    def CudaSharedMemoryStatus(self, msg, context):
        return _region_status(pb.CudaSharedMemoryStatusResponse(),
                              self.server.cuda_shared_memory.status(msg.name),
                              device_id=int, byte_size=int)

    @_rpc(pb.CudaSharedMemoryRegisterResponse)
    def CudaSharedMemoryRegister(self, msg, context):
        cuda = self.server.cuda_shared_memory
        cuda.register(msg.name, msg.raw_handle, msg.device_id, msg.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_rpc(pb.CudaSharedMemoryUnregisterResponse)
    def CudaSharedMemoryUnregister(self, msg, context):
        self.server.cuda_shared_memory.unregister(msg.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- trace and logging ----------------------------------------------------------------------

    @_rpc(pb.TraceSettingResponse)
    def TraceSetting(self, msg, context):
        tracer = self.server.tracer
        if msg.settings:
            settings = tracer.update_settings(msg.model_name,
                                              codec.trace_settings_dict(msg.settings))
        else:
            settings = tracer.get_settings(msg.model_name)
        resp = pb.TraceSettingResponse()
        codec.fill_trace_settings(resp.settings, settings)
        return resp

    @_rpc(pb.LogSettingsResponse)
    def LogSettings(self, msg, context):
        settings = self.server.logging_settings()
        if msg.settings:
            current = settings.update(codec.log_settings_dict(msg.settings))
        else:
            current = settings.get()
        resp = pb.LogSettingsResponse()
        codec.fill_log_settings(resp.settings, current)
        return resp

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
        received = time.monotonic_ns() if tracer.active else 0
        slot = None
        try:
            server.refuse_if_shutting_down()
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
                if response is not None and log.isEnabledFor(logging.DEBUG):
                    log_response_outputs(log, response)  # --log-verbose: per output sent
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


