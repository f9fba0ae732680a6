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

import asyncio
import collections
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from naiad.core.errors import (
    InvalidArgument,
)
from naiad.frontends import restrictions
from naiad.frontends.grpc_pool import ElasticPool
from naiad.frontends.grpc_service import (
    END,
    HEALTH_SERVICE,
    SERVICE,
    InferenceService,
    StreamSession,
)
from naiad.observability.logging import log_grpc_call
from naiad.protocol import grpc_codec as codec
from naiad.protocol import grpc_service_pb2 as pb
from naiad.protocol import health_pb2

log = logging.getLogger("naiad.grpc")

# Triton allows messages up to INT32_MAX bytes; grpc's default is 4 MB
MAX_MESSAGE_BYTES = (1 << 31) - 1
# grace period for in-flight RPCs when the server stops
STOP_GRACE_S = 5.0
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


def parse_restricted_protocols(entries: list[str]) -> dict[str, tuple[str, str]]:
    """``--grpc-restricted-protocol`` entries as {rpc method name: (metadata key, value)}."""
    by_group = restrictions.parse_restrictions(entries, "--grpc-restricted-protocol",
                                              "protocol")
    return {method: rule for group, rule in by_group.items()
            for method in PROTOCOL_GROUPS[group]}


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
            fn = parsed(method, fn)
            rule = restricted.get(method)
            if rule is None:
                return fn
            key, value = rule
            detail = restrictions.restricted_message("protocol", key)

            def checked(msg, context):
                for k, v in context.invocation_metadata():
                    if k == key and v == value:
                        return fn(msg, context)
                context.abort(grpc.StatusCode.UNAVAILABLE, detail)

            return checked

        def parsed(method: str, fn: Callable) -> Callable:
            """A request that did not parse is refused (INVALID_ARGUMENT) before ``fn``."""

            def call(msg, context):
                if log.isEnabledFor(logging.DEBUG):  # --log-verbose, as Triton's handlers
                    log_grpc_call(log, method)
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
            guard("ModelStreamInfer",
                  lambda requests, context: _ThreadedStream(service, requests,
                                                            context).responses()),
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
        server: Any
        if kind == "native":
            server = grpc_native.NativeServer(service, pool, self.channel_options(),
                                              credentials, restricted)
            port = server.add_port(target)
        else:
            inference, health = self._handlers(service, restricted)
            server = grpc.server(pool, options=self.channel_options(),
                                 maximum_concurrent_rpcs=None)
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
        if kind == "native":
            server.begin()
        else:
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
