"""What naiad adds to Ray Serve's proxies (imported in the proxy actors, not in replicas).

gRPC: ``add_inference_services`` is the function named in Serve's
``grpc_servicer_functions``. It registers ``inference.GRPCInferenceService``
and ``grpc.health.v1.Health`` with every method taking the request as raw
bytes: the proxy needs no naiad protobuf classes (naiad keeps its own in a
private descriptor pool, ``naiad.protocol._pool``) and does not parse or
re-encode tensors; the replica decodes the bytes itself. Ray replaces each
method's handler with its router; the handler object here wraps Ray's so that
a request lost with its replica (Ray answers INTERNAL with the actor's death
notice) ends with UNAVAILABLE, the code clients retry on.

HTTP: ``http_middlewares`` is the callback Serve's proxy calls when
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=naiad.ray.proxy:http_middlewares``
is in its environment (``naiad.ray.serve_options`` puts it there). When a
replica dies with a request in flight, Ray's proxy sends no response at all
and its HTTP server answers a bare 500; the middleware answers 503 with
Triton's JSON error body instead.

Besides the ``naiad`` package itself, only grpc and starlette (both Ray Serve
dependencies) are imported here: no protobuf module of naiad's.
"""

from __future__ import annotations

from typing import Any

import grpc

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

UNARY_METHODS = (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
    "RepositoryModelUnload", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
)
STREAM_METHODS = ("ModelStreamInfer",)
HEALTH_METHODS = ("Check",)
HEALTH_STREAM_METHODS = ("Watch",)

# how Ray describes a request whose replica went away (str of RayActorError and kin)
REPLICA_LOST_MARKERS = (
    "ActorDiedError", "RayActorError", "ActorUnavailableError", "actor died",
    "The actor died", "actor is dead", "Actor is dead", "died unexpectedly",
    "worker died", "Worker died", "owner died", "ObjectLostError",
)
REPLICA_LOST = ("the replica serving this request stopped before it answered "
                "(the request may be retried)")


def replica_lost(details: str | None) -> bool:
    return bool(details) and any(m in details for m in REPLICA_LOST_MARKERS)


def _not_called(request: Any, context: Any) -> Any:  # pragma: no cover - Ray replaces it
    raise NotImplementedError


def _translate(context: Any) -> None:
    try:
        code, details = context.code(), context.details()
    except Exception:  # pragma: no cover - a grpc without code()/details() on aio contexts
        return
    if code == grpc.StatusCode.INTERNAL and replica_lost(
            details.decode("utf-8", "replace") if isinstance(details, bytes) else details):
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details(REPLICA_LOST)


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None and not handler.request_streaming \
            and not handler.response_streaming:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            try:
                return await inner(request, context)
            finally:
                _translate(context)

        return handler._replace(unary_unary=unary_unary)
    if handler.response_streaming and handler.request_streaming:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> Any:
            try:
                async for item in inner_ss(requests, context):
                    yield item
            finally:
                _translate(context)

        return handler._replace(stream_stream=stream_stream)
    if handler.response_streaming:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> Any:
            try:
                async for item in inner_us(request, context):
                    yield item
            finally:
                _translate(context)

        return handler._replace(unary_stream=unary_stream)
    return handler


class _Service(grpc.GenericRpcHandler):
    """A service's method handlers, looked up per call (Ray may replace them first)."""

    def __init__(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]):
        self._name = name
        # the attribute Ray's gRPC server reads and replaces with its routing handlers
        self._method_handlers = {f"/{name}/{method}": h for method, h in handlers.items()}
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    def service_name(self) -> str:
        return self._name

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._method_handlers.get(method)
        if handler is None:
            return None
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _wrap(handler))
            self._wrapped[method] = cached
        return cached[1]


def _handlers(unary: tuple[str, ...], streams: tuple[str, ...],
              bidi: bool) -> dict[str, grpc.RpcMethodHandler]:
    out = {m: grpc.unary_unary_rpc_method_handler(_not_called) for m in unary}
    for m in streams:
        out[m] = (grpc.stream_stream_rpc_method_handler(_not_called) if bidi
                  else grpc.unary_stream_rpc_method_handler(_not_called))
    return out


def add_inference_services(servicer: Any, server: Any) -> None:
    """For Serve's ``grpc_servicer_functions``: Triton's gRPC services, raw bytes in and out."""
    server.add_generic_rpc_handlers(
        (_Service(INFERENCE_SERVICE, _handlers(UNARY_METHODS, STREAM_METHODS, True)),))
    server.add_generic_rpc_handlers(
        (_Service(HEALTH_SERVICE, _handlers(HEALTH_METHODS, HEALTH_STREAM_METHODS, False)),))


GRPC_SERVICER_FUNCTION = "naiad.ray.proxy.add_inference_services"
HTTP_CALLBACK = "naiad.ray.proxy:http_middlewares"


class ReplicaLostMiddleware:
    """A request that ends with no response from Ray's proxy gets Triton's 503 answer."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
        if not started:
            body = b'{"error":"' + REPLICA_LOST.encode() + b'"}'
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def http_middlewares() -> list:
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLostMiddleware)]


__all__ = ["GRPC_SERVICER_FUNCTION", "HTTP_CALLBACK", "add_inference_services",
           "http_middlewares", "replica_lost"]
