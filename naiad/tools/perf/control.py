"""Control calls over the wire: metadata, config, statistics, shared-memory registration.

The same questions asked over HTTP (JSON) or gRPC (naiad's generated stubs of
Triton's ``grpc_service.proto``), answered in one form: the JSON documents of
the HTTP protocol. Works against naiad and against Triton.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import orjson

from naiad.tools.perf import http_wire


class ControlError(Exception):
    pass


class Control:
    """Base: what the profiler asks the server."""

    async def server_metadata(self) -> dict: ...
    async def model_metadata(self, model: str, version: str = "") -> dict: ...
    async def model_config(self, model: str, version: str = "") -> dict: ...
    async def model_stats(self, model: str = "", version: str = "") -> list[dict]: ...
    async def register_system_shm(self, name: str, key: str, size: int,
                                  offset: int = 0) -> None: ...
    async def unregister_system_shm(self, name: str) -> None: ...
    async def close(self) -> None: ...


def _model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    return path


class HttpControl(Control):
    def __init__(self, url: str, headers: list[tuple[str, str]] | None = None,
                 tls=None):
        self.tls_flag, self.host, self.port, self.prefix = http_wire.parse_url(url)
        self.tls = tls
        self.headers = list(headers or [])
        self._conn: http_wire.HttpConnection | None = None
        self._lock = asyncio.Lock()

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else b""
        headers = list(self.headers)
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        request = http_wire.build_request(method, self.host, self.prefix + path, data, headers)
        async with self._lock:
            for attempt in (0, 1):
                if self._conn is None or self._conn.transport is None or \
                        self._conn.transport.is_closing():
                    self._conn = await http_wire.connect(self.host, self.port, self.tls)
                try:
                    status, payload = await http_wire.roundtrip(self._conn, request)
                    break
                except http_wire.HttpError:
                    self._conn = None
                    if attempt:
                        raise
        try:
            doc = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            doc = {"error": payload.decode(errors="replace")}
        if status != 200:
            message = doc.get("error") if isinstance(doc, dict) else None
            raise ControlError(message or f"HTTP {status} for {method} {path}")
        return doc

    async def server_metadata(self) -> dict:
        return await self._call("GET", "/v2")

    async def model_metadata(self, model: str, version: str = "") -> dict:
        return await self._call("GET", _model_path(model, version))

    async def model_config(self, model: str, version: str = "") -> dict:
        return await self._call("GET", _model_path(model, version) + "/config")

    async def model_stats(self, model: str = "", version: str = "") -> list[dict]:
        path = (_model_path(model, version) if model else "/v2/models") + "/stats"
        return list((await self._call("GET", path)).get("model_stats", []))

    async def register_system_shm(self, name: str, key: str, size: int,
                                  offset: int = 0) -> None:
        await self._call("POST", f"/v2/systemsharedmemory/region/{quote(name, safe='')}"
                         "/register", {"key": key, "offset": offset, "byte_size": size})

    async def unregister_system_shm(self, name: str) -> None:
        await self._call("POST", f"/v2/systemsharedmemory/region/{quote(name, safe='')}"
                         "/unregister", {})

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _stat_dict(stat) -> dict:
    """A gRPC ModelStatistics message as the HTTP statistics extension renders it."""
    def duration(d) -> dict:
        return {"count": int(d.count), "ns": int(d.ns)}

    s = stat.inference_stats
    return {
        "name": stat.name, "version": stat.version,
        "last_inference": int(stat.last_inference),
        "inference_count": int(stat.inference_count),
        "execution_count": int(stat.execution_count),
        "inference_stats": {k: duration(getattr(s, k)) for k in (
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
            "cache_hit", "cache_miss")},
    }


class GrpcControl(Control):
    def __init__(self, channel, metadata: list[tuple[str, str]] | None = None):
        from naiad.protocol import grpc_service_pb2 as pb
        from naiad.protocol import grpc_service_pb2_grpc as pbg

        self.pb = pb
        self.channel = channel
        self.stub = pbg.GRPCInferenceServiceStub(channel)
        self.metadata = tuple((k.lower(), v) for k, v in metadata or ())

    async def _call(self, method: str, request):
        import grpc

        try:
            return await getattr(self.stub, method)(request, metadata=self.metadata or None,
                                                    timeout=60)
        except grpc.aio.AioRpcError as exc:
            raise ControlError(exc.details() or str(exc.code())) from None

    async def server_metadata(self) -> dict:
        r = await self._call("ServerMetadata", self.pb.ServerMetadataRequest())
        return {"name": r.name, "version": r.version, "extensions": list(r.extensions)}

    async def model_metadata(self, model: str, version: str = "") -> dict:
        r = await self._call("ModelMetadata",
                             self.pb.ModelMetadataRequest(name=model, version=version))

        def tensors(items):
            return [{"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
                    for t in items]

        return {"name": r.name, "versions": list(r.versions), "platform": r.platform,
                "inputs": tensors(r.inputs), "outputs": tensors(r.outputs)}

    async def model_config(self, model: str, version: str = "") -> dict:
        from naiad.protocol.config_json import config_to_dict

        r = await self._call("ModelConfig",
                             self.pb.ModelConfigRequest(name=model, version=version))
        return config_to_dict(r.config)

    async def model_stats(self, model: str = "", version: str = "") -> list[dict]:
        r = await self._call("ModelStatistics",
                             self.pb.ModelStatisticsRequest(name=model, version=version))
        return [_stat_dict(s) for s in r.model_stats]

    async def register_system_shm(self, name: str, key: str, size: int,
                                  offset: int = 0) -> None:
        await self._call("SystemSharedMemoryRegister", self.pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=size))

    async def unregister_system_shm(self, name: str) -> None:
        await self._call("SystemSharedMemoryUnregister",
                         self.pb.SystemSharedMemoryUnregisterRequest(name=name))

    async def close(self) -> None:
        await self.channel.close()
