"""The Ray Serve application: naiad replicas behind Serve's proxies.

One deployment, ``naiad``, N replicas: each replica runs a naiad ``Server``
on the model repository (its data plane, no sockets of its own). HTTP
arrives as ASGI from Serve's HTTP proxy and goes to naiad's ``HttpApp``;
gRPC arrives from Serve's gRPC proxy as raw request bytes, one method per
RPC of ``inference.GRPCInferenceService``, decoded here with naiad's codec
(``ModelInfer`` runs on the replica's event loop; the other RPCs run
naiad's ``InferenceService`` handlers).

Serve routes each request to one replica. Calls that concern the whole
application fan out from the replica that received them to every running
replica with Serve's ``DeploymentHandle.broadcast``: model load/unload,
trace and log settings reach every replica and answer once all have;
statistics and metrics are summed over the replicas; the application is
ready when every replica is. Each replica remembers the last control call
per model (with its time); a replica that starts later (scale-up, a
replacement) collects these from the running ones and replays them before it
serves, so every replica serves the same models.

Everything is reached through public seams: the ``Server`` shell and its
data plane (``server.dataplane``), the HTTP frontend's ASGI app
(``HttpApp``) and the gRPC service both transports share
(``frontends/grpc_service.py``: ``InferenceService``, ``StreamSession``);
nothing here knows naiad's internals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
import ray
from ray import serve

from naiad.core.errors import ErrorKind, NaiadError, Unavailable, Unsupported, as_naiad_error
from naiad.ray import aggregate, autoscaling, proxy
from naiad.ray.settings import AppSettings

log = logging.getLogger("naiad.ray")

NO_REPLICA = "no naiad replica of this application is running"
SHARED_MEMORY_REFUSED = ("shared memory is not available through a Ray cluster: the client "
                         "and the replicas do not share a host")

_REPO_CONTROL = re.compile(r"^/v2/repository/models/([^/]+)/(load|unload)$")
_STATS = re.compile(r"^/v2/models/(?:([^/]+)/(?:versions/([^/]+)/)?)?stats$")
_SETTINGS = re.compile(r"^/v2/(?:models/[^/]+/)?trace/setting$|^/v2/logging$")
_SHM_CHANGE = re.compile(r"^/v2/(system|cuda)sharedmemory/(?:region/[^/]+/)?(register|unregister)$")


def _error_result(exc: BaseException) -> dict:
    err = exc if isinstance(exc, NaiadError) else as_naiad_error(exc)
    return {"ok": False, "kind": err.kind.value, "message": err.message}


def _raise_result(result: dict) -> Any:
    if result.get("ok"):
        return result["value"]
    raise NaiadError(result["message"], ErrorKind(result["kind"]))


# -- a replica -------------------------------------------------------------------------------------


class _Raw:
    """Bytes that Serve's replica can 'serialize' (it calls SerializeToString on results)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return self.data


class _Context:
    """A ServicerContext for running naiad's gRPC handlers off the network."""

    def __init__(self, metadata: Any = ()):
        self.code: Any = None
        self.details = ""
        self._metadata = tuple(metadata or ())

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> Any:
        return self._metadata

    def is_active(self) -> bool:
        return True


class _Collect:
    """An ASGI send() that keeps the response."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list = []
        self.body = bytearray()

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


class _AsgiEntry:
    """The replica's ASGI 3 callable (a bound method would pass for ASGI 2)."""

    def __init__(self, replica: "NaiadReplica"):
        self.replica = replica

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.replica._asgi(scope, receive, send)


class NaiadReplica:
    """One replica: a naiad Server, its HTTP app, its gRPC handlers, its share of control."""

    async def __init__(self, settings: dict):
        from naiad.frontends.grpc import parse_restricted_protocols
        from naiad.frontends.grpc_pool import ElasticPool
        from naiad.frontends.grpc_service import InferenceService
        from naiad.frontends.http import HttpApp
        from naiad.server import Server

        self.settings = AppSettings.from_args(settings)
        options = self.settings.server_options()
        self.options = options
        self.server = Server(options)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.siblings = serve.get_deployment_handle(context.deployment, context.app_name)
        self.pid = os.getpid()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        # model name -> (time, op, args) of the last control call on it
        self.history: dict[str, tuple[float, str, tuple]] = {}
        self._previous_stats: dict | None = None
        await self.server.start()
        failed = self.server.load_failures()
        if failed and options.exit_on_error:
            await self.server.stop(timeout=5)
            raise RuntimeError("failed to load all models: " + "; ".join(
                f"{name} version {version}: {state}" for name, version, state in failed))
        if self.server.metrics is not None:
            self.server.metrics.start()
        # the frontends' pieces take the data plane, as the Server's own frontends do
        self.http = HttpApp(self.server.dataplane, options.http_max_input_size)
        self.pool = ElasticPool(core=2, name="naiad-ray-grpc")
        self.grpc = InferenceService(self.server.dataplane, self.pool, options)
        self.restricted_rpcs = parse_restricted_protocols(list(options.grpc_restricted_protocol))
        await self._replay()
        log.info("naiad replica %s ready on node %s (pid %d)", self.replica_id, self.node_ip,
                 self.pid)

    def __serve_build_asgi_app__(self) -> Callable:
        return _AsgiEntry(self)

    async def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            await server.stop()
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def check_health(self) -> None:
        if not self.server.live():
            raise RuntimeError("the naiad server is not live")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Queue time per request since the last report (for ``QueueTimePolicy``)."""
        now = self.server.model_statistics()
        before, self._previous_stats = self._previous_stats, now
        observed = aggregate.queue_us_per_request(before, now)
        requests = _queue_count(now) - _queue_count(before)
        return {autoscaling.QUEUE_US: float(observed or 0.0),
                autoscaling.REQUESTS: float(max(0, requests))}

    # -- the application's control: every replica ----------------------------------------------

    async def _fan_out(self, method: str, *args: Any) -> list[Any]:
        """``method`` on every running replica; replicas lost meanwhile are left out."""
        try:
            response = self.siblings.broadcast(method, *args)
            results = await response.results_async(return_exceptions=True)
        except Exception as exc:  # no replica is running (this one is still starting)
            log.debug("broadcast %s reached no replica: %s", method, exc)
            return []
        out = []
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a replica did not answer %s: %s", method, result)
                continue
            out.append(result)
        return out

    async def naiad_state(self) -> dict:
        """This replica, for its siblings: where it runs, what it serves, its control history."""
        return {"replica": self.replica_id, "node_id": self.node_id, "node_ip": self.node_ip,
                "pid": self.pid, "ready": self.server.ready(),
                "models": sorted({row["name"] for row in
                                  self.server.repository_index(ready_only=True)}),
                "history": dict(self.history)}

    async def naiad_control(self, op: str, args: tuple, model: str | None = None,
                            stamp: float = 0.0) -> tuple[str, Any]:
        """One replica's part of an application-wide call: (replica id, result)."""
        result = await self._execute(op, args)
        if model is not None:
            self._remember(model, stamp, op, args)
        return self.replica_id, result

    def _remember(self, model: str, stamp: float, op: str, args: tuple) -> None:
        have = self.history.get(model)
        if have is None or have[0] <= stamp:
            self.history[model] = (stamp, op, tuple(args))

    async def _replay(self) -> None:
        """Apply the model control calls the running replicas have seen (in time order)."""
        latest: dict[str, tuple[float, str, tuple]] = {}
        for state in await self._fan_out("naiad_state"):
            for model, entry in state.get("history", {}).items():
                if model not in latest or latest[model][0] < entry[0]:
                    latest[model] = entry
        for model, (stamp, op, args) in sorted(latest.items(), key=lambda kv: kv[1][0]):
            result = await self._execute(op, args)
            self._remember(model, stamp, op, args)
            if not _succeeded(op, result):
                log.warning("replaying %s of model '%s' on a new replica failed: %s", op, model,
                            result)

    async def _everywhere(self, op: str, args: tuple, model: str | None = None
                          ) -> dict[str, Any]:
        answers = await self._fan_out("naiad_control", op, args, model, time.time())
        if not answers:
            raise Unavailable(NO_REPLICA)
        return dict(answers)

    async def ready_everywhere(self) -> bool:
        states = await self._fan_out("naiad_state")
        return bool(states) and all(state["ready"] for state in states)

    async def _execute(self, op: str, args: tuple) -> Any:
        try:
            if op == "http":
                return await self._local_http(*args)
            if op == "grpc":
                return await self._local_grpc(*args)
            if op == "stats":
                return {"ok": True, "value": self.server.model_statistics(*args)}
            if op == "metrics":
                metrics = self.server.metrics
                if metrics is None:
                    raise Unavailable("metrics are disabled (--allow-metrics=false)")
                text = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
                return {"ok": True, "value": text.decode("utf-8")}
            raise Unsupported(f"unknown control operation '{op}'")
        except Exception as exc:
            return _error_result(exc)

    async def _local_http(self, method: str, path: str, headers: list,
                          body: bytes) -> tuple[int, list, bytes]:
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": headers, "root_path": "",
                 "http_version": "1.1", "scheme": "http"}
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the request is local
            return {"type": "http.disconnect"}  # pragma: no cover

        out = _Collect()
        await self.http(scope, receive, out)
        return out.status, out.headers, bytes(out.body)

    async def _local_grpc(self, method: str, request: bytes, metadata: tuple = ()
                          ) -> tuple[str | None, str, bytes]:
        from naiad.protocol import grpc_service_pb2 as pb

        msg = getattr(pb, f"{method}Request").FromString(request)
        ctx = _Context(metadata)
        handler = getattr(self.grpc, method)
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self.pool, handler, msg, ctx)
        code = ctx.code.name if ctx.code is not None and ctx.code.name != "OK" else None
        return code, ctx.details, response.SerializeToString()

    # -- HTTP ---------------------------------------------------------------------------------

    async def _asgi(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            from naiad.frontends.asgi_server import answer_lifespan

            await answer_lifespan(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):] or "/"
            scope = dict(scope, path=path, root_path="")
        method = scope["method"]
        try:
            if method == "GET" and path == "/v2/health/ready":
                if await self._refused(scope, send, "health"):
                    return
                ready = await self.ready_everywhere()
                await _send(send, 200 if ready else 400, b"", b"text/plain")
                return
            if method == "GET" and path in ("/metrics", "/metrics/replicas"):
                await self._metrics(send, per_replica=path.endswith("replicas"))
                return
            if method == "GET" and path == "/v2/ray/replicas":
                if await self._refused(scope, send, "health"):
                    return
                states = await self._fan_out("naiad_state")
                for state in states:
                    state.pop("history", None)
                body = orjson.dumps({"replicas": sorted(states, key=lambda s: s["replica"])})
                await _send(send, 200, body, b"application/json")
                return
            stats = _STATS.match(path)
            if method == "GET" and stats:
                if await self._refused(scope, send, "statistics"):
                    return
                await self._statistics(send, stats.group(1) or "", stats.group(2))
                return
            control = _REPO_CONTROL.match(path)
            if method == "POST" and (control or _SETTINGS.match(path)):
                await self._broadcast_http(scope, receive, send,
                                           control.group(1) if control else None)
                return
            if method == "POST" and _SHM_CHANGE.match(path):
                if await self._refused(scope, send, "shared-memory"):
                    return
                await _send_error(send, Unsupported(SHARED_MEMORY_REFUSED))
                return
        except NaiadError as exc:
            await _send_error(send, exc)
            return
        await self.http(scope, receive, send)

    async def _refused(self, scope: dict, send: Any, group: str) -> bool:
        """--http-restricted-api for the routes answered here (the others: HttpApp checks)."""
        rule = self.http.restricted.get(group)
        if rule is None:
            return False
        from naiad.frontends import restrictions

        key, value = rule
        if (key.encode("latin-1"), value.encode("latin-1")) in [tuple(h) for h in
                                                               scope["headers"]]:
            return False
        body = orjson.dumps({"error": restrictions.restricted_message("API", key)})
        await _send(send, 403, body, b"application/json")
        return True

    async def _statistics(self, send: Any, name: str, version_text: str | None) -> None:
        version = -1
        if version_text is not None:
            if not (version_text.isascii() and version_text.isdigit()):
                await _send(send, 404, b'{"error":"Not Found"}', b"application/json")
                return
            version = int(version_text)
        merged = await self.statistics(name, version)
        await _send(send, 200, orjson.dumps(merged), b"application/json")

    async def statistics(self, name: str = "", version: int = -1) -> dict:
        results = await self._everywhere("stats", (name, version))
        answers = []
        for result in results.values():
            answers.append(_raise_result(result))
        return aggregate.merge_statistics(answers)

    async def _metrics(self, send: Any, per_replica: bool) -> None:
        results = await self._everywhere("metrics", ())
        texts = {rid: _raise_result(r) for rid, r in results.items()}
        body = aggregate.label_replicas(texts) if per_replica else aggregate.sum_replicas(texts)
        await _send(send, 200, body, b"text/plain; version=0.0.4; charset=utf-8")

    async def _broadcast_http(self, scope: dict, receive: Any, send: Any,
                              model: str | None) -> None:
        body = await _read_body(receive, self.options.http_max_input_size)
        if body is None:
            await _send(send, 413, b'{"error":"request body exceeds the limit"}',
                        b"application/json")
            return
        headers = [(bytes(k), bytes(v)) for k, v in scope["headers"]]
        results = await self._everywhere(
            "http", (scope["method"], scope["path"], headers, body), model)
        answers = [r for r in results.values() if isinstance(r, tuple)]
        failed = [r for r in results.values() if not isinstance(r, tuple)]
        if failed and not answers:
            _raise_result(failed[0])
        chosen = next((a for a in answers if not 200 <= a[0] < 300), answers[0])
        status, out_headers, out_body = chosen
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})

    # -- gRPC (one method per RPC; Serve's gRPC proxy calls them by name) ----------------------

    def _grpc_fail(self, grpc_context: Any, exc: BaseException, empty: Any) -> Any:
        from naiad.frontends.status import grpc_status

        err = exc if isinstance(exc, NaiadError) else as_naiad_error(exc)
        if not isinstance(exc, NaiadError):
            log.exception("unhandled error in a gRPC call")
        if grpc_context is not None:
            grpc_context.set_code(grpc_status(err.kind))
            grpc_context.set_details(err.message)
        return empty

    def _grpc_refused(self, method: str, grpc_context: Any) -> bool:
        rule = self.restricted_rpcs.get(method)
        if rule is None:
            return False
        key, value = rule
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else ()
        if any(k == key and v == value for k, v in metadata):
            return False
        import grpc

        from naiad.frontends import restrictions

        grpc_context.set_code(grpc.StatusCode.UNAVAILABLE)
        grpc_context.set_details(restrictions.restricted_message("protocol", key))
        return True

    async def ModelInfer(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        from naiad.protocol import grpc_codec as codec

        if self._grpc_refused("ModelInfer", grpc_context):
            return codec.ModelInferResponse()
        try:
            self.server.dataplane.refuse_if_shutting_down()
            shm = self.server.shared_memory
            req, _ = codec.decode_infer_request(codec.ModelInferRequest.FromString(request), shm)
            forward = self.grpc.forward
            if forward is not None and grpc_context is not None:
                for key, value in grpc_context.invocation_metadata():
                    if forward.search(key) is not None and isinstance(value, str):
                        req.parameters[key] = value
            response = await self.server.infer(req)
            return codec.encode_infer_response(response, req, shm)
        except Exception as exc:
            return self._grpc_fail(grpc_context, exc, codec.ModelInferResponse())

    async def ModelStreamInfer(self, requests: Any, grpc_context: Any = None):  # noqa: N802
        from naiad.frontends.grpc_service import END, StreamSession
        from naiad.protocol import grpc_service_pb2 as pb

        if self._grpc_refused("ModelStreamInfer", grpc_context):
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else ()

        class Session(StreamSession):
            def _emit(self, item: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

        session = Session(self.grpc, metadata)

        async def read() -> None:
            try:
                async for raw in requests:
                    if session.closed:
                        break
                    session.submit(pb.ModelInferRequest.FromString(raw))
            except Exception:
                session.abort()
                with session.lock:
                    session._emit(END)
            else:
                session.end_of_requests()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await queue.get()
                if item is END:
                    return
                yield item() if callable(item) else item
        finally:
            reader.cancel()
            session.abort()

    async def ServerReady(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        from naiad.protocol import grpc_service_pb2 as pb

        if self._grpc_refused("ServerReady", grpc_context):
            return pb.ServerReadyResponse()
        return pb.ServerReadyResponse(ready=await self.ready_everywhere())

    async def Check(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        from naiad.protocol import health_pb2

        status = health_pb2.HealthCheckResponse
        if self._grpc_refused("Check", grpc_context):
            return status()
        ready = await self.ready_everywhere()
        return status(status=status.SERVING if ready else status.NOT_SERVING)

    async def Watch(self, request: bytes, grpc_context: Any = None):  # noqa: N802
        import grpc

        if grpc_context is not None:
            grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            grpc_context.set_details("")
        return
        yield  # pragma: no cover - an empty stream

    async def ModelStatistics(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        from google.protobuf import json_format

        from naiad.protocol import grpc_codec as codec
        from naiad.protocol import grpc_service_pb2 as pb

        if self._grpc_refused("ModelStatistics", grpc_context):
            return pb.ModelStatisticsResponse()
        try:
            msg = pb.ModelStatisticsRequest.FromString(request)
            merged = await self.statistics(msg.name, codec.parse_version(msg.version))
            return json_format.ParseDict(merged, pb.ModelStatisticsResponse(),
                                         ignore_unknown_fields=True)
        except Exception as exc:
            return self._grpc_fail(grpc_context, exc, pb.ModelStatisticsResponse())

    async def _grpc_local(self, method: str, request: bytes, grpc_context: Any) -> Any:
        if self._grpc_refused(method, grpc_context):
            return _Raw(b"")
        metadata = tuple(grpc_context.invocation_metadata()) if grpc_context is not None else ()
        code, details, body = await self._local_grpc(method, request, metadata)
        return self._grpc_answer(grpc_context, code, details, body)

    def _grpc_answer(self, grpc_context: Any, code: str | None, details: str,
                     body: bytes) -> Any:
        if code is not None and grpc_context is not None:
            import grpc

            grpc_context.set_code(getattr(grpc.StatusCode, code))
            grpc_context.set_details(details)
        return _Raw(body)

    async def _grpc_broadcast(self, method: str, request: bytes, grpc_context: Any,
                              model: str | None = None) -> Any:
        if self._grpc_refused(method, grpc_context):
            return _Raw(b"")
        metadata = tuple(grpc_context.invocation_metadata()) if grpc_context is not None else ()
        try:
            results = await self._everywhere("grpc", (method, bytes(request), metadata), model)
            answers = [r for r in results.values() if isinstance(r, tuple)]
            failed = [r for r in results.values() if not isinstance(r, tuple)]
            if failed and not answers:
                _raise_result(failed[0])
        except Exception as exc:
            return self._grpc_fail(grpc_context, exc, _Raw(b""))
        code, details, body = next((a for a in answers if a[0] is not None), answers[0])
        return self._grpc_answer(grpc_context, code, details, body)

    async def RepositoryModelLoad(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        return await self._grpc_broadcast("RepositoryModelLoad", request, grpc_context,
                                          _grpc_model_name("RepositoryModelLoad", request))

    async def RepositoryModelUnload(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        return await self._grpc_broadcast("RepositoryModelUnload", request, grpc_context,
                                          _grpc_model_name("RepositoryModelUnload", request))

    async def TraceSetting(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        if _has_settings("TraceSetting", request):
            return await self._grpc_broadcast("TraceSetting", request, grpc_context)
        return await self._grpc_local("TraceSetting", request, grpc_context)

    async def LogSettings(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802
        if _has_settings("LogSettings", request):
            return await self._grpc_broadcast("LogSettings", request, grpc_context)
        return await self._grpc_local("LogSettings", request, grpc_context)


def _refuse_shared_memory(method: str) -> Callable:
    async def refuse(self: NaiadReplica, request: bytes, grpc_context: Any = None) -> Any:
        if self._grpc_refused(method, grpc_context):
            return _Raw(b"")
        return self._grpc_fail(grpc_context, Unsupported(SHARED_MEMORY_REFUSED), _Raw(b""))

    refuse.__name__ = method
    return refuse


def _answer_locally(method: str) -> Callable:
    async def local(self: NaiadReplica, request: bytes, grpc_context: Any = None) -> Any:
        return await self._grpc_local(method, request, grpc_context)

    local.__name__ = method
    return local


for _method in ("ServerLive", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
                "RepositoryIndex", "SystemSharedMemoryStatus", "CudaSharedMemoryStatus"):
    setattr(NaiadReplica, _method, _answer_locally(_method))
for _method in ("SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"):
    setattr(NaiadReplica, _method, _refuse_shared_memory(_method))


def _grpc_model_name(method: str, request: bytes) -> str | None:
    from naiad.protocol import grpc_service_pb2 as pb

    try:
        return getattr(pb, f"{method}Request").FromString(request).model_name or None
    except Exception:
        return None


def _has_settings(method: str, request: bytes) -> bool:
    from naiad.protocol import grpc_service_pb2 as pb

    try:
        return bool(getattr(pb, f"{method}Request").FromString(request).settings)
    except Exception:
        return False


def _succeeded(op: str, result: Any) -> bool:
    if op == "http":
        return isinstance(result, tuple) and 200 <= result[0] < 300
    if op == "grpc":
        return isinstance(result, tuple) and result[0] is None
    return isinstance(result, dict) and bool(result.get("ok"))


def _queue_count(stats: dict | None) -> int:
    return sum(int(e.get("inference_stats", {}).get("queue", {}).get("count", 0))
               for e in (stats or {}).get("model_stats", []))


async def _read_body(receive: Any, limit: int) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            break
    return bytes(body)


async def _send(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Any, exc: NaiadError) -> None:
    from naiad.frontends.status import http_status

    await _send(send, http_status(exc.kind), orjson.dumps({"error": exc.message}),
                b"application/json")


# -- building the application ----------------------------------------------------------------------


def build_app(args: dict | AppSettings | None = None, **kwargs: Any) -> Any:
    """The Serve application (for ``serve.run``); ``args``: see ``naiad.ray.settings``."""
    settings = args if isinstance(args, AppSettings) else AppSettings.from_args(args, **kwargs)
    actor_options = {"num_cpus": settings.replica_cpus()}
    if settings.env:
        actor_options["runtime_env"] = {"env_vars": {k: str(v) for k, v in settings.env.items()}}
    actor_options.update(settings.ray_actor_options)
    options: dict[str, Any] = {
        "name": settings.deployment_name,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": actor_options,
        "graceful_shutdown_timeout_s": float(settings.server_options().exit_timeout_secs) + 5,
    }
    autoscaling_config = settings.autoscaling_config_dict()
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = settings.num_replicas
    replica = serve.deployment(serve.ingress()(NaiadReplica)).options(**options)
    return replica.bind(_settings_dict(settings))


def app_builder(args: dict) -> Any:
    """``import_path: naiad.ray:app_builder`` in a Serve config file; ``args`` as build_app's."""
    return build_app(args)


def _settings_dict(settings: AppSettings) -> dict:
    import dataclasses

    return dataclasses.asdict(settings)


def serve_options(http_host: str = "0.0.0.0", http_port: int = 8000, grpc_port: int = 9000,
                  proxy_location: str = "EveryNode") -> dict:
    """Keyword arguments for ``serve.start`` that carry naiad's protocols through Serve's proxies.

    The gRPC proxy gets Triton's services (``grpc_servicer_functions``); the
    controller's environment (which its proxies inherit) gets the HTTP
    callback that answers 503 for requests lost with their replica, and, with
    a single proxy (``HeadOnly``), turns off Serve's preference for replicas
    on the proxy's own node (it would keep every request there until that
    replica had ``max_ongoing_requests`` in flight).
    """
    from ray.serve.config import ControllerOptions, HTTPOptions, gRPCOptions

    env = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": proxy.HTTP_CALLBACK}
    if proxy_location == "HeadOnly":
        # one proxy for the whole cluster: it must not keep everything on its own node
        env["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    return {
        "http_options": HTTPOptions(host=http_host, port=http_port),
        "grpc_options": gRPCOptions(port=grpc_port,
                                    grpc_servicer_functions=[proxy.GRPC_SERVICER_FUNCTION]),
        "proxy_location": proxy_location,
        "controller_options": ControllerOptions(runtime_env={"env_vars": env}),
    }


__all__ = ["NaiadReplica", "app_builder", "build_app", "serve_options"]
